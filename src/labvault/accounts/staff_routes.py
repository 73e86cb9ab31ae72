"""The staff side of the authentication API under ``/api/v1/auth``: accepting an invitation,
the staff login, the enrolment of the first factor that completes a first login (an
authenticator app, or a passkey for organization admins and security officers: see
``labvault.accounts.invitations``), and the staff password reset request.

The cookies, CSRF tokens, origin checks and error answers are those of
``labvault.accounts.routes``; the second-factor step of a staff account that has a factor is
the shared ``POST /api/v1/auth/login/second-factor``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from labvault.accounts.devices import DEVICE_COOKIE
from labvault.accounts.invitations import StaffAccountService, StaffLogin
from labvault.accounts.models import AccountKind
from labvault.accounts.routes import (
    AUTH_PROBLEMS,
    RESET_ANSWER_SECONDS,
    SESSION_COOKIE,
    Accepted,
    CsrfRefusedError,
    Outbox,
    RequestContext,
    ResetRequest,
    RuntimeDep,
    SignedIn,
    TotpSetup,
    _accepted,
    _hasher,
    csrf_header_ok,
    failure_response,
    guard,
    set_device_cookie,
    set_session_cookie,
)
from labvault.accounts.services import AuthError, InvalidInputError, PasswordRejected
from labvault.accounts.webauthn import PasskeyError
from labvault.accounts.webauthn_routes import RegistrationCredential
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import get_organization

__all__ = ["StaffContext", "router"]

router = APIRouter(prefix="/api/v1/auth", tags=["authentication"])
T = TypeVar("T")


class InvitationAcceptance(BaseModel):
    token: str = Field(max_length=200)
    password: str = Field(max_length=1024)


class StaffCredentials(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class StaffLoginStep(BaseModel):
    second_factor: list[str]
    """Factors that complete this login (``POST /login/second-factor``)."""
    enrol: list[str]
    """When there are none: the factors to enrol first (``/enrolment/...``)."""
    email_code_required: bool
    """Whether enrolling also takes a code emailed by ``POST /enrolment/email-code``."""
    csrf_token: str


class EnrolmentConfirmation(BaseModel):
    code: str = Field(max_length=32)
    email_code: str | None = Field(default=None, max_length=32)


class PasskeyEnrolment(BaseModel):
    credential: RegistrationCredential
    label: str | None = Field(default=None, max_length=200)
    email_code: str | None = Field(default=None, max_length=32)
    """Required when ``email_code_required`` was true (an enrolment started by a login)."""


class StaffContext(RequestContext):
    """The request's context, building the staff account service."""

    def service(self, session: Session) -> StaffAccountService:
        runtime = self.runtime
        return StaffAccountService(
            session,
            tenant_id=get_organization(session, runtime.settings.organization).id,
            provider=runtime.key_provider,
            mailer=self.mailer,
            limiter=runtime.rate_limiter,
            settings=runtime.settings,
            hasher=_hasher(),
            context=self.audit,
            derived=runtime.derived_keys,
        )


def _run(context: StaffContext, action: Callable[[StaffAccountService], T]) -> T | Response:
    """Run ``action`` in a transaction that commits even when the step fails as expected."""
    failure: Exception | None = None
    result: T | None = None
    with transaction(context.runtime.sessions) as session:
        try:
            result = action(context.service(session))
        except PasskeyError as exc:  # a refused passkey: the API's invalid input (422)
            failure = InvalidInputError(str(exc))
        except (AuthError, CsrfRefusedError, InvalidInputError, PasswordRejected) as exc:
            failure = exc
    if failure is not None:
        return failure_response(failure)
    return cast(T, result)


def _pending_answer(service: StaffAccountService, login: StaffLogin) -> dict[str, Any]:
    found = service.pending(login.token.reveal())
    assert found is not None
    return {
        "second_factor": list(login.factors),
        "enrol": list(login.enrol),
        "email_code_required": bool(login.enrol) and service.needs_mailbox_proof(found[0]),
        "csrf_token": service.sessions.csrf_token(login.token.reveal()),
    }


def _pending_response(context: StaffContext, outcome: Any) -> Response:
    if isinstance(outcome, Response):
        return outcome
    login, answer = outcome
    response = JSONResponse(answer)
    set_session_cookie(response, login.token, context)
    return response


@router.post("/invitation/accept", response_model=StaffLoginStep, responses=AUTH_PROBLEMS)
def accept_invitation(
    body: InvitationAcceptance, request: Request, runtime: RuntimeDep
) -> Response:
    """Choose the password with the invitation link's token. The cookie then opens only the
    enrolment of an authenticator app, whose confirmation completes the login."""
    if (refused := guard(request)) is not None:
        return refused
    context = StaffContext(request, runtime)

    def accept(service: StaffAccountService) -> tuple[StaffLogin, dict[str, Any]]:
        login = service.accept_invitation(
            body.token,
            Secret(body.password),
            client_id=context.client_hash,
            client_hash=context.client_hash,
        )
        return login, _pending_answer(service, login)

    return _pending_response(context, _run(context, accept))


@router.post("/staff/login", response_model=StaffLoginStep, responses=AUTH_PROBLEMS)
def staff_login(body: StaffCredentials, request: Request, runtime: RuntimeDep) -> Response:
    """First step of a staff login: the password. The same answers, limits and costs as
    ``/login``; the cookie then opens only the second-factor step (or the enrolment)."""
    if (refused := guard(request)) is not None:
        return refused
    context = StaffContext(request, runtime)

    def log_in(service: StaffAccountService) -> tuple[StaffLogin, dict[str, Any]]:
        login = service.staff_login(
            body.email,
            Secret(body.password),
            client_id=context.client_hash,
            client_hash=context.client_hash,
        )
        return login, _pending_answer(service, login)

    return _pending_response(context, _run(context, log_in))


def _enrolling(
    context: StaffContext, action: Callable[[StaffAccountService, str], T]
) -> T | Response:
    token = context.request.cookies.get(SESSION_COOKIE, "")

    def run(service: StaffAccountService) -> T:
        if not csrf_header_ok(context, service):
            raise CsrfRefusedError
        return action(service, token)

    return _run(context, run)


@router.post("/enrolment/totp", response_model=TotpSetup, responses=AUTH_PROBLEMS)
def begin_enrolment(request: Request, runtime: RuntimeDep) -> Response:
    """A new authenticator secret for the pending first login (shown once)."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _enrolling(
        StaffContext(request, runtime), lambda service, token: service.begin_enrolment(token)
    )
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(
        {"secret": outcome.secret_text, "uri": outcome.uri}, headers={"Cache-Control": "no-store"}
    )


@router.post(
    "/enrolment/email-code", status_code=202, response_model=Accepted, responses=AUTH_PROBLEMS
)
def send_enrolment_code(request: Request, runtime: RuntimeDep) -> Response:
    """Email the code that an enrolment started by a login (not by the invitation) needs."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _enrolling(
        StaffContext(request, runtime), lambda service, token: service.send_enrolment_code(token)
    )
    if isinstance(outcome, Response):
        return outcome
    return _accepted("Un code d'activation vient d'être envoyé à votre adresse.")


@router.post("/enrolment/totp/confirm", response_model=SignedIn, responses=AUTH_PROBLEMS)
def confirm_enrolment(
    body: EnrolmentConfirmation, request: Request, runtime: RuntimeDep
) -> Response:
    """Confirm the authenticator with one of its codes; answers with a NEW session cookie
    (the pending one is revoked): the login is complete."""
    if (refused := guard(request)) is not None:
        return refused
    context = StaffContext(request, runtime)

    def confirm(service: StaffAccountService, token: str) -> tuple[Any, str]:
        opened = service.confirm_enrolment(
            token,
            body.code,
            email_code=body.email_code,
            device=request.cookies.get(DEVICE_COOKIE),
        )
        return opened, service.sessions.csrf_token(opened.token.reveal())

    outcome = _enrolling(context, confirm)
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


def _opened_response(context: StaffContext, outcome: Any) -> Response:
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


_PASSKEY_OPTIONS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "PublicKeyCredentialCreationOptions as JSON (py_webauthn "
        "``options_to_json``), to decode and pass to ``navigator.credentials.create``.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **AUTH_PROBLEMS,
}


@router.post("/enrolment/passkey/options", responses=_PASSKEY_OPTIONS)
def begin_passkey_enrolment(request: Request, runtime: RuntimeDep) -> Response:
    """Options to create the passkey that completes the pending first login of an
    organization admin or a security officer (401 for any other pending login)."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _enrolling(
        StaffContext(request, runtime),
        lambda service, token: service.begin_passkey_enrolment(token),
    )
    if isinstance(outcome, Response):
        return outcome
    return Response(outcome, media_type="application/json", headers={"Cache-Control": "no-store"})


@router.post("/enrolment/passkey", response_model=SignedIn, responses=AUTH_PROBLEMS)
def confirm_passkey_enrolment(
    body: PasskeyEnrolment, request: Request, runtime: RuntimeDep
) -> Response:
    """Keep the passkey the browser created for the last options and complete the login:
    a NEW session cookie (the pending one is revoked). A refused passkey is a 422, a wrong
    emailed code a 401; neither keeps anything."""
    if (refused := guard(request)) is not None:
        return refused
    context = StaffContext(request, runtime)
    credential = body.credential.model_dump(by_alias=True, exclude_none=True)

    def confirm(service: StaffAccountService, token: str) -> tuple[Any, str]:
        opened = service.confirm_passkey_enrolment(
            token,
            credential,
            label=body.label,
            email_code=body.email_code,
            device=request.cookies.get(DEVICE_COOKIE),
        )
        return opened, service.sessions.csrf_token(opened.token.reveal())

    return _opened_response(context, _enrolling(context, confirm))


@router.post(
    "/staff/password-reset", status_code=202, response_model=Accepted, responses=AUTH_PROBLEMS
)
async def request_staff_password_reset(
    body: ResetRequest, request: Request, runtime: RuntimeDep
) -> Response:
    """Email a link to choose a new password to a staff account (``/password-reset`` for
    staff addresses): the same answer, after the same time, whether the address is known,
    unknown or an invitation not accepted yet (which must use its invitation link)."""
    started = time.monotonic()
    response = await run_in_threadpool(_request_staff_password_reset, body, request, runtime)
    await asyncio.sleep(max(0.0, RESET_ANSWER_SECONDS - (time.monotonic() - started)))
    return response


def _request_staff_password_reset(
    body: ResetRequest, request: Request, runtime: Runtime
) -> Response:
    if (refused := guard(request)) is not None:
        return refused
    outbox = Outbox(runtime.mailer)
    context = StaffContext(request, runtime, mailer=outbox)
    outcome = _run(
        context,
        lambda service: service.request_password_reset(
            body.email, client_id=context.client_hash, kind=AccountKind.STAFF
        ),
    )
    if isinstance(outcome, Response):
        return outcome
    response = _accepted(
        "Si un compte professionnel correspond à cette adresse, un lien pour choisir un "
        "nouveau mot de passe vient d'y être envoyé. Il est valable 15 minutes."
    )
    response.background = BackgroundTask(outbox.deliver)
    return response
