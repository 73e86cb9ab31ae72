"""The passkey API under ``/api/v1/auth/webauthn``: options for the browser's
``navigator.credentials.create``/``get`` (py_webauthn's ``options_to_json``), and its answers.

Registration, listing and removal need a signed-in session; authentication needs the
pending session of the password step, and completes the login as
``/api/v1/auth/login/second-factor`` does (a new session cookie, the device cookie). Every
unsafe request is refused from another origin and without the session's ``X-CSRF-Token``,
as in ``labvault.accounts.routes``. Where the service's public URL cannot be a WebAuthn
relying party (an IP address), every operation but the listing answers 409.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from labvault.accounts.devices import DEVICE_COOKIE
from labvault.accounts.models import Account, AccountSession
from labvault.accounts.routes import (
    AUTH_PROBLEMS,
    SESSION_COOKIE,
    STEP_UP_RESPONSES,
    CsrfRefusedError,
    RequestContext,
    RuntimeDep,
    SignedIn,
    _run,
    _signed_in,
    _stepped_up,
    csrf_header_ok,
    guard,
    set_device_cookie,
    set_session_cookie,
)
from labvault.accounts.services import AccountService, AuthError, InvalidInputError
from labvault.accounts.webauthn import METHOD, PasskeyError, PasskeyInfo, relying_party
from labvault.core.runtime import Runtime
from labvault.core.web.problems import problem_response

router = APIRouter(prefix="/api/v1/auth/webauthn", tags=["authentication"])
T = TypeVar("T")

_PROBLEM: dict[str, Any] = {"application/problem+json": {}}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "Passkeys are unavailable: the service's public URL is not a valid "
        "WebAuthn relying party (an IP address, or plain http on a host other than localhost).",
        "content": _PROBLEM,
    }
}
_OPTIONS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "PublicKeyCredential options as JSON (py_webauthn ``options_to_json``), "
        "to decode and pass to the browser.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **AUTH_PROBLEMS,
    **_UNAVAILABLE,
}
_STEPPED_UP_OPTIONS: dict[int | str, dict[str, Any]] = {**_OPTIONS, 403: STEP_UP_RESPONSES[403]}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such passkey of this account.", "content": _PROBLEM}
}

Base64Url = Annotated[str, Field(max_length=65536, pattern=r"^[A-Za-z0-9_-]*={0,2}$")]
CredentialId = Annotated[str, Field(min_length=1, max_length=1400)]


class _BrowserJson(BaseModel):
    """The browser's JSON form of a credential (``PublicKeyCredential.toJSON()``)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class AttestationResponse(_BrowserJson):
    client_data_json: Base64Url = Field(alias="clientDataJSON")
    attestation_object: Base64Url = Field(alias="attestationObject")
    transports: list[Annotated[str, Field(max_length=32)]] | None = Field(
        default=None, max_length=10
    )


class AssertionResponse(_BrowserJson):
    client_data_json: Base64Url = Field(alias="clientDataJSON")
    authenticator_data: Base64Url = Field(alias="authenticatorData")
    signature: Base64Url
    user_handle: Base64Url | None = Field(default=None, alias="userHandle")


class RegistrationCredential(_BrowserJson):
    id: CredentialId
    raw_id: CredentialId = Field(alias="rawId")
    type: Literal["public-key"]
    response: AttestationResponse
    authenticator_attachment: str | None = Field(
        default=None, alias="authenticatorAttachment", max_length=32
    )


class AuthenticationCredential(_BrowserJson):
    id: CredentialId
    raw_id: CredentialId = Field(alias="rawId")
    type: Literal["public-key"]
    response: AssertionResponse
    authenticator_attachment: str | None = Field(
        default=None, alias="authenticatorAttachment", max_length=32
    )


class PasskeyRegistration(BaseModel):
    credential: RegistrationCredential
    label: str | None = Field(default=None, max_length=200)


class PasskeyAuthentication(BaseModel):
    credential: AuthenticationCredential


class Passkey(BaseModel):
    id: uuid.UUID
    label: str
    created_at: str
    last_used_at: str | None
    transports: list[str]


def _passkey(info: PasskeyInfo) -> dict[str, Any]:
    return {
        "id": str(info.id),
        "label": info.label,
        "created_at": info.created_at.isoformat(),
        "last_used_at": None if info.last_used_at is None else info.last_used_at.isoformat(),
        "transports": list(info.transports),
    }


def _refused_or_unavailable(request: Request, runtime: Runtime) -> Response | None:
    if (refused := guard(request)) is not None:
        return refused
    if relying_party(runtime.settings.public_url) is None:
        return problem_response(
            409,
            type_="passkeys-unavailable",
            detail="Les clés d'accès ne sont pas disponibles à cette adresse.",
        )
    return None


def _step(action: Callable[[], T]) -> T:
    """A passkey refusal becomes the API's invalid-input answer (422, committed)."""
    try:
        return action()
    except PasskeyError as exc:
        raise InvalidInputError(str(exc)) from None


def _options(outcome: str | Response) -> Response:
    if isinstance(outcome, Response):
        return outcome
    return Response(outcome, media_type="application/json")


@router.post("/registration/options", responses=_STEPPED_UP_OPTIONS)
def registration_options(request: Request, runtime: RuntimeDep) -> Response:
    """Options to create a passkey for the signed-in account (its passkeys excluded); needs
    a recent step-up (the registration itself is bound to these options' challenge)."""
    if (refused := _refused_or_unavailable(request, runtime)) is not None:
        return refused

    def begin(service: AccountService, record: AccountSession, account: Account) -> str:
        return _step(lambda: service.passkeys.registration_options(account, record.id))

    return _options(_signed_in(RequestContext(request, runtime), _stepped_up(begin)))


@router.post(
    "/registration",
    status_code=201,
    response_model=Passkey,
    responses={**AUTH_PROBLEMS, **_UNAVAILABLE},
)
def register(body: PasskeyRegistration, request: Request, runtime: RuntimeDep) -> Response:
    """Keep the passkey the browser created for the last registration options."""
    if (refused := _refused_or_unavailable(request, runtime)) is not None:
        return refused
    credential = body.credential.model_dump(by_alias=True, exclude_none=True)

    def complete(service: AccountService, record: AccountSession, account: Account) -> PasskeyInfo:
        return _step(lambda: service.passkeys.register(account, record.id, credential, body.label))

    outcome = _signed_in(RequestContext(request, runtime), complete)
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(_passkey(outcome), status_code=201)


@router.get("/credentials", response_model=list[Passkey], responses=AUTH_PROBLEMS)
def list_passkeys(request: Request, runtime: RuntimeDep) -> Response:
    outcome = _signed_in(
        RequestContext(request, runtime),
        lambda service, record, account: [
            _passkey(item) for item in service.passkeys.listing(account)
        ],
        check_csrf=False,
    )
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome)


@router.delete(
    "/credentials/{passkey_id}", status_code=204, responses={**STEP_UP_RESPONSES, **_NOT_FOUND}
)
def delete_passkey(passkey_id: uuid.UUID, request: Request, runtime: RuntimeDep) -> Response:
    """Remove a passkey (not the last one of a role that requires a passkey: 422); needs a
    recent step-up."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _signed_in(
        RequestContext(request, runtime),
        _stepped_up(
            lambda service, record, account: _step(
                lambda: service.passkeys.delete(account, passkey_id)
            )
        ),
    )
    if isinstance(outcome, Response):
        return outcome
    if not outcome:
        return problem_response(404, detail="Clé d'accès inconnue.")
    return Response(status_code=204)


@router.post("/authentication/options", responses=_OPTIONS)
def authentication_options(request: Request, runtime: RuntimeDep) -> Response:
    """Options to prove a passkey, for the login waiting for its second factor."""
    if (refused := _refused_or_unavailable(request, runtime)) is not None:
        return refused
    context = RequestContext(request, runtime)
    token = request.cookies.get(SESSION_COOKIE, "")

    def begin(service: AccountService) -> str:
        if not csrf_header_ok(context, service):
            raise CsrfRefusedError
        found = service.pending(token)
        if found is None or found[0].second_factor_at is not None:
            raise AuthError("Session expirée. Reconnectez-vous.")
        record, account = found
        return _step(lambda: service.passkeys.authentication_options(account, record.id))

    return _options(_run(context, begin))


@router.post(
    "/authentication", response_model=SignedIn, responses={**AUTH_PROBLEMS, **_UNAVAILABLE}
)
def authenticate(body: PasskeyAuthentication, request: Request, runtime: RuntimeDep) -> Response:
    """The second factor by passkey; answers with a NEW session cookie, as
    ``/api/v1/auth/login/second-factor`` does."""
    if (refused := _refused_or_unavailable(request, runtime)) is not None:
        return refused
    context = RequestContext(request, runtime)
    token = request.cookies.get(SESSION_COOKIE, "")
    presented = body.credential.model_dump_json(by_alias=True, exclude_none=True)

    def complete(service: AccountService) -> tuple[Any, str]:
        if not csrf_header_ok(context, service):
            raise CsrfRefusedError
        opened = service.second_factor(
            token, METHOD, presented, device=request.cookies.get(DEVICE_COOKIE)
        )
        return opened, service.sessions.csrf_token(opened.token.reveal())

    outcome = _run(context, complete)
    if isinstance(outcome, Response):
        return outcome
    opened, csrf = outcome
    response = JSONResponse(
        {"account_id": str(opened.account_id), "kind": opened.kind.value, "csrf_token": csrf}
    )
    set_session_cookie(response, opened.token, context)
    if opened.device_token is not None:
        set_device_cookie(response, opened.device_token)
    return response
