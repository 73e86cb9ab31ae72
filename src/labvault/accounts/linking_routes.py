"""The record-link API (``labvault.accounts.linking``): a patient account links its own
record and the minors it acts for (``/api/v1/account/...``), and receptionists link them at
the lab desk (``/api/v1/staff/...``).

Cookies, CSRF tokens, origin checks and error answers are those of
``labvault.accounts.routes``. The link request answers the same (202, same body) whether or
not a record matched, after at least ``LINK_ANSWER_SECONDS``, and its messages are delivered
after the answer is sent: neither the answer, its timing nor a failing mail server tells
whether a record exists. Failed steps are answered after their transaction commits (a wrong
code is counted and audited even though the request fails).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from labvault.accounts.linking import (
    LinkCodeError,
    LinkConflictError,
    LinkForbiddenError,
    LinkNotFoundError,
    PatientLinks,
    Relationship,
    TraitsError,
    parse_traits,
)
from labvault.accounts.models import Account, AccountSession
from labvault.accounts.routes import (
    AUTH_PROBLEMS,
    SESSION_COOKIE,
    Accepted,
    CsrfRefusedError,
    Outbox,
    RequestContext,
    RuntimeDep,
    _accepted,
    csrf_header_ok,
    failure_response,
    guard,
)
from labvault.accounts.services import AuthError, InvalidInputError, PasswordRejected
from labvault.core.runtime import Runtime
from labvault.core.web.problems import problem_response

__all__ = ["LINK_ANSWER_SECONDS", "LINK_REQUESTED", "router"]

router = APIRouter(prefix="/api/v1", tags=["patient links"])
T = TypeVar("T")

LINK_ANSWER_SECONDS = 0.4
"""The least time a link request takes to answer: more than the work when a record matches
(a lookup, two key unwraps, a code), so every answer comes after the same wait."""
LINK_REQUESTED = (
    "Si ces informations correspondent à un dossier du laboratoire, un code vient d'être "
    "envoyé au contact (adresse e-mail) enregistré dans ce dossier ; il est valable 10 "
    "minutes. Sinon, présentez-vous à l'accueil du laboratoire avec une pièce d'identité."
)


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {}}}


_PATIENT_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **AUTH_PROBLEMS,
    401: _problem("Not signed in (or the second factor is not done)."),
    403: _problem("Cross-origin request, missing CSRF token, or not a patient account."),
}
_REQUEST_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **_PATIENT_PROBLEMS,
    409: _problem("The account is already linked to its own record (relationship self)."),
    422: _problem(
        "Invalid traits: `errors` lists each field with a French `detail` and, for the NIR, a "
        "stable `code` (e.g. `bad_key`, `too_short`, `birth_year_mismatch`); a dependent "
        "must be under 18 (`not_a_minor`)."
    ),
    429: _problem("Too many link requests for this account (5 a day) or client; see Retry-After."),
}
_CONFIRM_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **_PATIENT_PROBLEMS,
    409: _problem(
        "The code was right but the record can no longer be linked (linked to another "
        "account meanwhile, no longer a minor...): `detail` says why."
    ),
    422: _problem("Wrong, used or expired code (type `invalid-code`, one answer for all)."),
}
_STAFF_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **AUTH_PROBLEMS,
    401: _problem("Not signed in (or the second factor is not done)."),
    404: _problem(
        "Unknown account or record, wrong or expired code, or a staff role that may not link "
        "records: one answer for every reason."
    ),
    409: _problem("The record or the account is already linked, or the person is not a minor."),
}


class LinkRequest(BaseModel):
    relationship: Literal["self", "parent", "legal-guardian"] = "self"
    """``self``: the account's own record; ``parent``/``legal-guardian``: a minor's."""
    birth_name: str = Field(max_length=300)
    first_names: str = Field(max_length=300)
    birth_date: str = Field(max_length=32, description="YYYY-MM-DD")
    nir: str = Field(max_length=64, description="The NIR, 15 characters with its key")


class LinkCode(BaseModel):
    code: str = Field(max_length=32)


class LinkedRecord(BaseModel):
    patient_id: uuid.UUID
    relationship: Literal["self", "parent", "legal-guardian"]


class DeskCodeAnswer(BaseModel):
    code: str
    expires_at: str


class ActingRecordOut(BaseModel):
    id: uuid.UUID
    relationship: Literal["self", "parent", "legal-guardian"]
    first_name: str
    birth_name_initial: str


class DeskLink(BaseModel):
    patient_id: uuid.UUID
    email: str = Field(max_length=320)
    code: str = Field(max_length=32)
    relationship: Literal["self", "parent", "legal-guardian"] = "self"


class DeskRevocation(BaseModel):
    patient_id: uuid.UUID
    email: str = Field(max_length=320)


def link_failure_response(failure: Exception) -> Response:
    if isinstance(failure, TraitsError):
        errors = [
            {"field": name, "detail": message, "code": failure.codes.get(name)}
            for name, message in failure.errors.items()
        ]
        return problem_response(422, type_="invalid-input", detail=str(failure), errors=errors)
    if isinstance(failure, LinkCodeError):
        return problem_response(422, type_="invalid-code", detail=str(failure))
    if isinstance(failure, LinkConflictError):
        return problem_response(409, type_="link-conflict", detail=str(failure))
    if isinstance(failure, LinkForbiddenError):
        return problem_response(
            403, type_="forbidden", detail="Réservé aux comptes patients connectés."
        )
    if isinstance(failure, LinkNotFoundError):
        return problem_response(404, detail="Aucun rattachement possible avec ces informations.")
    return failure_response(failure)


_EXPECTED = (
    AuthError,
    CsrfRefusedError,
    InvalidInputError,
    PasswordRejected,
    LinkForbiddenError,
    LinkNotFoundError,
)


def _linking(
    context: RequestContext,
    action: Callable[[PatientLinks, AccountSession, Account], T],
    *,
    check_csrf: bool = True,
) -> T | Response:
    """Run ``action`` for the signed-in account, in a transaction that commits even when the
    step fails as expected (a failed attempt stays counted and audited)."""
    token = context.request.cookies.get(SESSION_COOKIE, "")
    failure: Exception | None = None
    result: T | None = None
    with context.unit() as service:
        try:
            found = service.current(token)
            if found is None:
                raise AuthError("Vous n'êtes pas connecté.")
            if check_csrf and not csrf_header_ok(context, service):
                raise CsrfRefusedError
            result = action(PatientLinks(service), *found)
        except _EXPECTED as exc:
            failure = exc
    if failure is not None:
        return link_failure_response(failure)
    return cast(T, result)


# --- the patient's side -----------------------------------------------------------------------


@router.post(
    "/account/patient-links",
    status_code=202,
    response_model=Accepted,
    responses=_REQUEST_PROBLEMS,
)
async def request_link(body: LinkRequest, request: Request, runtime: RuntimeDep) -> Response:
    """Ask to link a record: the account's own (``self``) or a minor's. If the traits and NIR
    match a record that can be linked, a 6-digit code is emailed to the contact ON THE
    RECORD. The same answer, after the same time, whatever happened."""
    started = time.monotonic()
    response = await run_in_threadpool(_request_link, body, request, runtime)
    await asyncio.sleep(max(0.0, LINK_ANSWER_SECONDS - (time.monotonic() - started)))
    return response


def _request_link(body: LinkRequest, request: Request, runtime: Runtime) -> Response:
    if (refused := guard(request)) is not None:
        return refused
    outbox = Outbox(runtime.mailer)
    context = RequestContext(request, runtime, mailer=outbox)

    def ask(links: PatientLinks, record: AccountSession, account: Account) -> None:
        traits = parse_traits(
            body.birth_name,
            body.first_names,
            body.birth_date,
            body.nir,
            today=links.today(),
        )
        links.request_link(
            account, traits, Relationship(body.relationship), client_id=context.client_hash
        )

    outcome = _linking(context, ask)
    if isinstance(outcome, Response):
        return outcome
    response = _accepted(LINK_REQUESTED)
    response.background = BackgroundTask(outbox.deliver)
    return response


@router.post(
    "/account/patient-links/confirm",
    response_model=LinkedRecord,
    responses=_CONFIRM_PROBLEMS,
)
def confirm_link(body: LinkCode, request: Request, runtime: RuntimeDep) -> Response:
    """Enter the code sent to the record's contact: the link is made."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _linking(
        RequestContext(request, runtime),
        lambda links, record, account: links.confirm_link(account, body.code),
    )
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(
        {"patient_id": str(outcome.patient_id), "relationship": outcome.relationship.value}
    )


@router.post(
    "/account/desk-code",
    status_code=201,
    response_model=DeskCodeAnswer,
    responses=_PATIENT_PROBLEMS,
)
def new_desk_code(request: Request, runtime: RuntimeDep) -> Response:
    """A short code to give at the lab desk (30 minutes); the previous one stops working."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _linking(
        RequestContext(request, runtime),
        lambda links, record, account: links.new_desk_code(account),
    )
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(
        {"code": outcome.code.reveal(), "expires_at": outcome.expires_at.isoformat()},
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/account/patients", response_model=list[ActingRecordOut], responses=_PATIENT_PROBLEMS)
def acting_records(request: Request, runtime: RuntimeDep) -> Response:
    """The records this account acts for: its own, then its dependents under 18."""
    outcome = _linking(
        RequestContext(request, runtime),
        lambda links, record, account: links.records(account),
        check_csrf=False,
    )
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(
        [
            {
                "id": str(item.id),
                "relationship": item.relationship.value,
                "first_name": item.first_name,
                "birth_name_initial": item.birth_name_initial,
            }
            for item in outcome
        ],
        headers={"Cache-Control": "no-store"},
    )


@router.delete(
    "/account/dependents/{patient_id}",
    status_code=204,
    responses={**_PATIENT_PROBLEMS, 404: _problem("No such current dependent of this account.")},
)
def remove_dependent(patient_id: uuid.UUID, request: Request, runtime: RuntimeDep) -> Response:
    """Stop acting for a minor's record."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _linking(
        RequestContext(request, runtime),
        lambda links, record, account: links.remove_dependent(account, patient_id),
    )
    if isinstance(outcome, Response):
        return outcome
    if not outcome:
        return problem_response(404, detail="Dossier introuvable.")
    return Response(status_code=204)


# --- the lab desk -----------------------------------------------------------------------------


@router.post(
    "/staff/patient-links",
    status_code=201,
    response_model=LinkedRecord,
    responses=_STAFF_PROBLEMS,
)
def desk_link(body: DeskLink, request: Request, runtime: RuntimeDep) -> Response:
    """A receptionist links a record to the account of ``email``, whose owner is at the desk
    with an identity document (for a minor: the livret de famille or a court decision) and
    gives the desk code shown in their account."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _linking(
        RequestContext(request, runtime),
        lambda links, record, staff: links.desk_link(
            staff,
            patient_id=body.patient_id,
            email=body.email,
            code=body.code,
            relationship=Relationship(body.relationship),
        ),
    )
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(
        {"patient_id": str(outcome.patient_id), "relationship": outcome.relationship.value},
        status_code=201,
    )


@router.post("/staff/dependents/revoke", status_code=204, responses=_STAFF_PROBLEMS)
def staff_revoke_dependent(body: DeskRevocation, request: Request, runtime: RuntimeDep) -> Response:
    """A receptionist ends the right of the account of ``email`` to act for a minor's record."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _linking(
        RequestContext(request, runtime),
        lambda links, record, staff: links.staff_revoke_dependent(
            staff, patient_id=body.patient_id, email=body.email
        ),
    )
    return outcome if isinstance(outcome, Response) else Response(status_code=204)
