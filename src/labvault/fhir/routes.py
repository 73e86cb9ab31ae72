"""HTTP routes of the FHIR R4 API under ``/fhir/R4``.

- ``GET /fhir/R4/metadata``: the CapabilityStatement (public, no data).
- ``POST /fhir/R4/auth/token``: OAuth2 client credentials (form fields or HTTP Basic);
  answers RFC 6749 §5.1/§5.2 JSON, never cached.
- ``GET /fhir/R4/<Type>/<id>``, ``GET /fhir/R4/<Type>?...`` and
  ``POST /fhir/R4/<Type>/_search`` (form body: the criteria stay out of URLs and logs) for
  each type of :data:`labvault.fhir.capability.TYPES`, with a bearer token.

Every data route authenticates by bearer token only (a session cookie means nothing here);
no token or a bad one is 401 with ``WWW-Authenticate``, a missing scope 403, anything
absent or out of reach 404; all as OperationOutcome in ``application/fhir+json``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from labvault.core.access.decrypt import DecryptDeniedError
from labvault.core.audit.events import AuditContext, AuditedRefusalError, audited_transaction
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.crypto.secret import Secret
from labvault.core.db import utcnow
from labvault.core.runtime import Runtime
from labvault.core.web.request_context import request_id_of
from labvault.fhir import capability
from labvault.fhir.oauth import OAuthError, ServiceCaller, TokenService, basic_credentials
from labvault.fhir.outcome import (
    FHIR_JSON,
    NO_STORE,
    fhir_response,
    insufficient_scope,
    not_found,
    outcome_response,
    unauthenticated,
)
from labvault.fhir.services import (
    FhirInputError,
    FhirReader,
    NotGrantedError,
    ScopeRefusedError,
    SearchPage,
    parse_id,
)
from labvault.organizations.services import get_organization
from labvault.patients.scope import service_scope, window_from
from labvault.results.intake import IngestOutcome, IngestRejectedError, OrderDigester
from labvault.security.budgets import BudgetUnavailableError
from labvault.security.guard import GUARD_REFUSALS

__all__ = ["PREFIX", "router"]

PREFIX: Final = "/fhir/R4"
MAX_FORM_BYTES: Final = 8 * 1024
FORM: Final = "application/x-www-form-urlencoded"
ACCEPTED: Final = frozenset({FHIR_JSON, "application/json", "*/*", "application/*"})
FORMATS: Final = frozenset({"json", FHIR_JSON, "application/json"})

router = APIRouter(prefix=PREFIX, include_in_schema=False)

_hasher: PasswordHasher | None = None


def _password_hasher() -> PasswordHasher:
    global _hasher  # one hasher per process; its dummy hash is made once
    if _hasher is None:
        _hasher = PasswordHasher()
        _hasher.dummy_hash  # noqa: B018
    return _hasher


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def base_url(runtime: Runtime) -> str:
    return runtime.settings.public_url.rstrip("/") + PREFIX


def _audit_context(request: Request, runtime: Runtime) -> AuditContext:
    host = request.client.host if request.client else "unknown"
    return AuditContext(
        request_id=request_id_of(request), client_hash=runtime.client_address_hasher(host)
    )


# --- metadata --------------------------------------------------------------------------------


@router.get("/metadata")
def metadata(request: Request) -> Response:
    """The CapabilityStatement: public, the same for everybody."""
    runtime = _runtime(request)
    return fhir_response(
        capability.capability_statement(base_url(runtime), "2026-11-30"),
        headers={"Cache-Control": "no-cache"},
    )


# --- OAuth2 token ----------------------------------------------------------------------------


def _oauth_error(error: OAuthError) -> JSONResponse:
    headers = dict(NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="labvault-fhir"'
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(error.retry_after + 0.999)))
    return JSONResponse(
        {"error": error.error, "error_description": error.description},
        status_code=error.status,
        headers=headers,
    )


def _invalid_request(description: str) -> JSONResponse:
    return _oauth_error(OAuthError("invalid_request", 400, description))


class _BodyTooLargeError(Exception):
    """The body (declared or received) passes the route's limit."""


async def _capped_body(request: Request, limit: int) -> bytes:
    """The body, read in chunks and given up as soon as it passes ``limit`` (declared by
    Content-Length or received): a large body is never held in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isascii() or not declared.isdigit()):
        raise _BodyTooLargeError
    if declared is not None and int(declared) > limit:
        raise _BodyTooLargeError
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


async def _form(request: Request) -> dict[str, str] | None:
    """A small urlencoded body as a dict; ``None`` if it is not one, or repeats a field."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
        return None
    try:
        body = await _capped_body(request, MAX_FORM_BYTES)
    except _BodyTooLargeError:
        return None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    fields = dict(pairs)
    return fields if len(fields) == len(pairs) else None


@router.post("/auth/token")
async def token(request: Request) -> Response:
    """RFC 6749 §4.4: ``grant_type=client_credentials``, the client's credentials (form
    fields or HTTP Basic, not both) and an optional ``scope``."""
    fields = await _form(request)
    if fields is None:
        return _invalid_request("Send an application/x-www-form-urlencoded body, each field once.")
    if fields.get("grant_type") != "client_credentials":
        if "grant_type" not in fields:
            return _invalid_request("grant_type is required.")
        return _oauth_error(
            OAuthError("unsupported_grant_type", 400, "Only client_credentials is supported.")
        )
    basic = request.headers.get("authorization")
    in_body = "client_id" in fields or "client_secret" in fields
    if basic and in_body:
        return _invalid_request("Authenticate with one method only.")
    credentials = (
        basic_credentials(basic)
        if basic
        else (fields.get("client_id", ""), fields.get("client_secret", ""))
    )
    if credentials is None or not credentials[0] or not credentials[1]:
        return _oauth_error(OAuthError("invalid_client", 401, "Client authentication failed."))
    client_id, secret = credentials
    runtime = _runtime(request)
    context = _audit_context(request, runtime)
    return await _in_thread(
        lambda: _issue(runtime, context, client_id, Secret(secret), fields.get("scope"))
    )


async def _in_thread(work: Callable[[], Response]) -> Response:
    return await run_in_threadpool(work)


def _issue(
    runtime: Runtime, context: AuditContext, client_id: str, secret: Secret[str], scope: str | None
) -> Response:
    failure: OAuthError | None = None
    with audited_transaction(runtime.sessions) as session:
        tenant = get_organization(session, runtime.settings.organization).id
        service = TokenService(
            session,
            tenant,
            limiter=runtime.rate_limiter,
            hasher=_password_hasher(),
            lifetime=dt.timedelta(minutes=runtime.settings.fhir_token_minutes),
            context=context,
        )
        try:
            issued = service.issue(
                client_id, secret, scope, address_key=context.client_hash or "unknown-address"
            )
        except OAuthError as error:
            failure = error  # the refusal's audit event commits with the unit
    if failure is not None:
        return _oauth_error(failure)
    return JSONResponse(
        {
            "access_token": issued.token.reveal(),
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": issued.scope,
        },
        headers=NO_STORE,
    )


# --- bearer-authenticated reads and searches ---------------------------------------------------


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _accepts_json(request: Request) -> bool:
    accept = request.headers.get("accept")
    if not accept:
        return True
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(types & ACCEPTED)


def _token_is_live(runtime: Runtime, context: AuditContext, token_text: str) -> bool:
    """Whether the bearer token authenticates a client (read-only): checked before a body is
    read, so an anonymous caller cannot make the server read or parse anything big."""
    with audited_transaction(runtime.sessions) as session:
        tenant = get_organization(session, runtime.settings.organization).id
        tokens = TokenService(
            session,
            tenant,
            limiter=runtime.rate_limiter,
            hasher=_password_hasher(),
            lifetime=dt.timedelta(minutes=runtime.settings.fhir_token_minutes),
            context=context,
        )
        return tokens.authenticate(token_text) is not None


async def _authenticated_first(request: Request) -> Response | None:
    """``None`` when the bearer token is live; else the 401 to answer, body unread."""
    token_text = _bearer(request)
    if token_text is None:
        return unauthenticated()
    runtime = _runtime(request)
    context = _audit_context(request, runtime)
    if not await run_in_threadpool(_token_is_live, runtime, context, token_text):
        return unauthenticated("invalid_token")
    return None


def run_as_service(request: Request, action: Callable[[FhirReader], Response]) -> Response:
    """Run ``action`` for the client behind the bearer token, in one audited unit of work."""
    if not _accepts_json(request):
        return outcome_response(406, "This server answers application/fhir+json only.")
    token_text = _bearer(request)
    if token_text is None:
        return unauthenticated()
    runtime = _runtime(request)
    context = _audit_context(request, runtime)
    answer: Response | None = None
    try:
        with audited_transaction(runtime.sessions) as session:
            tenant = get_organization(session, runtime.settings.organization).id
            tokens = TokenService(
                session,
                tenant,
                limiter=runtime.rate_limiter,
                hasher=_password_hasher(),
                lifetime=dt.timedelta(minutes=runtime.settings.fhir_token_minutes),
                context=context,
            )
            caller = tokens.authenticate(token_text)
            if caller is None:
                return unauthenticated("invalid_token")
            answer = _answer(runtime, session, context, caller, action)
    except IngestRejectedError as rejected:
        # The result store refused a pushed result (recorded, nothing written).
        return outcome_response(
            422, f"The result was refused: expected {rejected.error.expected}.", code="processing"
        )
    except GUARD_REFUSALS:
        # The exfiltration guard (read budgets): nothing was decrypted; the answer names no
        # patient, count or window, as the rest of the application's.
        return outcome_response(
            429,
            "This client has opened too many patient files; the security officers have been "
            "alerted.",
            code="throttled",
        )
    except BudgetUnavailableError:
        return outcome_response(
            503, "The service is unavailable; try again later.", code="transient"
        )
    except DecryptDeniedError:
        return outcome_response(403, "This read was refused by the security guard.")
    except AuditedRefusalError:
        # A repository refused an interaction the policy does not grant to this kind of
        # client (its events are kept): the same answer as a missing scope, minus the scope.
        return outcome_response(403, "This client may not use this interaction.")
    assert answer is not None
    return answer


def _answer(
    runtime: Runtime,
    session: Any,
    context: AuditContext,
    caller: ServiceCaller,
    action: Callable[[FhirReader], Response],
) -> Response:
    now = utcnow()
    scope = service_scope(
        session,
        caller.principal,
        caller.tenant_id,
        caller.client_id,
        window=window_from(runtime.settings),
        now=now,
    )
    keyring = TenantKeyring(
        session, runtime.key_provider, caller.tenant_id, caller.principal, context=context
    )
    reader = FhirReader(
        session,
        keyring,
        scope,
        caller,
        now=now,
        orders=OrderDigester.from_provider(runtime.key_provider, caller.tenant_id),
        horizon_days=runtime.settings.booking_horizon_days,
    )
    try:
        return action(reader)
    except ScopeRefusedError as refused:
        return insufficient_scope(refused.scope)
    except NotGrantedError:
        return outcome_response(403, "This client may not use this interaction.")
    except FhirInputError as error:
        return outcome_response(400, str(error))


def _params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise FhirInputError("each search parameter at most once")
        params[name] = value
    fmt = params.pop("_format", None)
    if fmt is not None and fmt not in FORMATS:
        raise FhirInputError("_format: json only")
    return params


def bundle(page: SearchPage, kind: str, base: str) -> dict[str, Any]:
    def link(relation: str, offset: int) -> dict[str, str]:
        query = urlencode({**page.params, "_count": page.count, "_offset": offset})
        return {"relation": relation, "url": f"{base}/{kind}?{query}"}

    links = [link("self", page.offset)]
    if page.offset + page.count < page.total and page.count:
        links.append(link("next", page.offset + page.count))
    if page.offset > 0:
        links.append(link("previous", max(0, page.offset - page.count)))
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "total": page.total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/{kind}/{resource['id']}",
                "resource": resource,
                "search": {"mode": "match"},
            }
            for resource in page.resources
        ],
    }


ReadMethod = Callable[[FhirReader, uuid.UUID], dict[str, Any] | None]
SlotRead = Callable[[FhirReader, str], dict[str, Any] | None]
SearchMethod = Callable[[FhirReader, Mapping[str, str]], SearchPage]

_READERS: Final[dict[str, tuple[ReadMethod | SlotRead, SearchMethod]]] = {
    "Patient": (FhirReader.patient, FhirReader.search_patients),
    "Location": (FhirReader.location, FhirReader.search_locations),
    "Schedule": (FhirReader.schedule, FhirReader.search_schedules),
    "Slot": (FhirReader.slot, FhirReader.search_slots),
    "Appointment": (FhirReader.appointment, FhirReader.search_appointments),
    "ServiceRequest": (FhirReader.service_request, FhirReader.search_service_requests),
    "DiagnosticReport": (FhirReader.diagnostic_report, FhirReader.search_diagnostic_reports),
    "Observation": (FhirReader.observation, FhirReader.search_observations),
    "DocumentReference": (FhirReader.document_reference, FhirReader.search_document_references),
}


def _read_route(kind: str, read: ReadMethod | SlotRead) -> Callable[[Request, str], Response]:
    def read_resource(request: Request, resource_id: str) -> Response:
        def action(reader: FhirReader) -> Response:
            reader.require(kind, "r")
            found: dict[str, Any] | None
            if kind == "Slot":  # computed: its id is its schedule and start, not a UUID
                found = read(reader, resource_id[:64])  # type: ignore[arg-type]
            else:
                wanted = parse_id(resource_id)
                found = read(reader, wanted) if wanted is not None else None  # type: ignore[arg-type]
            return not_found() if found is None else fhir_response(found)

        return run_as_service(request, action)

    read_resource.__name__ = f"read_{kind.lower()}"
    return read_resource


def _search(
    request: Request, kind: str, search: SearchMethod, pairs: list[tuple[str, str]]
) -> Response:
    def action(reader: FhirReader) -> Response:
        reader.require(kind, "s")
        page = search(reader, _params(pairs))
        return fhir_response(bundle(page, kind, base_url(_runtime(request))))

    return run_as_service(request, action)


def _search_route(kind: str, search: SearchMethod) -> Callable[[Request], Response]:
    def search_resources(request: Request) -> Response:
        if "identifier" in request.query_params:
            # An identifier is an INS (a NIR): in a URL it lands in proxy and server logs.
            return outcome_response(
                400,
                f"Search by identifier with POST {PREFIX}/{kind}/_search "
                "(application/x-www-form-urlencoded body), never in the URL.",
            )
        return _search(request, kind, search, list(request.query_params.multi_items()))

    search_resources.__name__ = f"search_{kind.lower()}"
    return search_resources


def _post_search_route(kind: str, search: SearchMethod) -> Callable[[Request], Any]:
    async def post_search(request: Request) -> Response:
        refused = await _authenticated_first(request)
        if refused is not None:
            return refused
        try:
            body = await _capped_body(request, MAX_FORM_BYTES)
        except _BodyTooLargeError:
            return outcome_response(413, "The search is too long.")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and media != FORM:
            return outcome_response(415, "Send the criteria as application/x-www-form-urlencoded.")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            return outcome_response(400, "The search body is not a form.")
        if request.query_params:
            return outcome_response(400, "Put every criterion in the body.")
        return await _in_thread(lambda: _search(request, kind, search, pairs))

    post_search.__name__ = f"post_search_{kind.lower()}"
    return post_search


for _kind, (_read, _search_method) in _READERS.items():
    router.add_api_route(f"/{_kind}", _search_route(_kind, _search_method), methods=["GET"])
    router.add_api_route(
        f"/{_kind}/_search", _post_search_route(_kind, _search_method), methods=["POST"]
    )
    router.add_api_route(f"/{_kind}/{{resource_id}}", _read_route(_kind, _read), methods=["GET"])


# --- results pushed by laboratory systems --------------------------------------------------------

MAX_BUNDLE_BYTES: Final = 16 * 1024 * 1024
JSON_TYPES: Final = frozenset({FHIR_JSON, "application/json"})


@router.post("")
async def push_results(request: Request) -> Response:
    """A transaction or batch Bundle of DiagnosticReports and Observations for one patient
    (see ``labvault.fhir.bundle``), stored all or nothing."""
    refused = await _authenticated_first(request)
    if refused is not None:
        return refused
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        return outcome_response(415, "Send application/fhir+json.")
    try:
        body = await _capped_body(request, MAX_BUNDLE_BYTES)
    except _BodyTooLargeError:
        return outcome_response(413, "The bundle is too large.")
    # Parsing up to 16 MiB takes a while: off the event loop, which serves everyone.
    document = await run_in_threadpool(_json_document, body)
    if document is None:
        return outcome_response(400, "The body is not JSON.")
    if not isinstance(document, dict):
        return outcome_response(400, "The body is not a Bundle.")

    def action(reader: FhirReader) -> Response:
        outcome = reader.writer().push(document, now=utcnow())
        return _pushed(outcome)

    return await _in_thread(lambda: run_as_service(request, action))


def _json_document(body: bytes) -> object:
    """The parsed body, ``None`` if it is not JSON (a JSON ``null`` is no Bundle either)."""
    try:
        parsed: object = json.loads(body, parse_float=Decimal)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return parsed


def _pushed(outcome: IngestOutcome) -> Response:
    """The same answer whether the result was attached, queued or already received: telling
    them apart would tell the sender whether a person is a patient of the laboratory."""
    del outcome
    return outcome_response(
        202,
        "Received: the result will be processed.",
        code="informational",
        severity="information",
    )


# --- anything else under /fhir/R4 ----------------------------------------------------------------

UNKNOWN_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")


@router.api_route("/{path:path}", methods=list(UNKNOWN_METHODS))
def unknown(path: str) -> Response:
    """An interaction this server does not offer: an OperationOutcome, not the HTML page of
    the rest of the site (registered last, so every real route matches first)."""
    return outcome_response(404, "This server offers no such interaction; see /fhir/R4/metadata.")
