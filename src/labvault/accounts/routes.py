"""The authentication API under ``/api/v1/auth``: sign-up, login with a second factor,
sessions and factors. Pages use the same services (``labvault.accounts.pages``).

The session token travels only in a ``__Host-`` cookie (Secure, HttpOnly, SameSite=Strict,
Path=/). Every unsafe method is refused from another origin, and, once there is a session,
without the ``X-CSRF-Token`` header that ``/api/v1/auth/csrf`` and the login steps return.
Failures are answered after their transaction commits: a failed attempt is counted and
audited even though the request fails.

A browser also keeps a long-lived ``__Host-labvault-device`` cookie (same attributes), set
when a login completes, so that a login from a new device can be told to the account's owner.
The password-reset request delivers its message after the answer is sent, and every
answer to it takes at least ``RESET_ANSWER_SECONDS``: it then takes the same time whether or
not an account exists, and a failing mail server cannot show which addresses have one.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal, TypeVar, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from labvault.accounts.devices import DEVICE_COOKIE, DEVICE_COOKIE_MAX_AGE
from labvault.accounts.models import Account, AccountSession
from labvault.accounts.services import (
    AccountService,
    AuthError,
    CurrentPasswordError,
    ForbiddenError,
    InvalidInputError,
    PasswordRejected,
    SecurityLockError,
    ThrottledError,
)
from labvault.accounts.stepup import STEP_UP_REQUIRED, StepUp, StepUpRequired
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.events import AuditContext
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.logging import get_logger
from labvault.core.mail import Mailer, MailerError, OutgoingMessage
from labvault.core.runtime import Runtime
from labvault.core.web.problems import problem_response
from labvault.core.web.request_context import request_id_of
from labvault.organizations.services import get_organization

SESSION_COOKIE = "__Host-labvault-session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RESET_ANSWER_SECONDS = 0.25
"""The least time a reset request takes to answer: more than the work for a known address
(a few database statements and one key unwrap), so both answers come after the same wait."""

router = APIRouter(prefix="/api/v1/auth", tags=["authentication"])
T = TypeVar("T")
_log = get_logger("labvault.accounts")

AUTH_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"application/problem+json": {}}}
    for status, description in (
        (400, "A body that cannot be parsed (not JSON, or not UTF-8)."),
        (401, "Wrong credentials, code or session (one answer for every reason)."),
        (403, "Cross-origin request, missing CSRF token, or wrong current password."),
        (422, "Invalid input, or a password refused by the policy."),
        (429, "Too many attempts; see Retry-After."),
    )
}
STEP_UP_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_PROBLEMS,
    403: {
        "description": "Cross-origin request or missing CSRF token; or, with "
        f'`"reason": "{STEP_UP_REQUIRED}"` (type `.../step-up-required`), a sensitive action '
        "without a recent second-factor proof in this session: re-prove one with "
        "`POST /api/v1/auth/step-up` (or the passkey step-up), then retry. The session itself "
        "is still valid (not 401).",
        "content": {"application/problem+json": {}},
    },
}
"""The responses of the routes that need a recent step-up (``labvault.accounts.stepup``)."""


def _runtime(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


class Credentials(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class SignUp(Credentials):
    security_phrase: str | None = Field(default=None, max_length=200)


class EmailCode(BaseModel):
    email: str = Field(max_length=320)
    code: str = Field(max_length=32)


class SecondFactor(BaseModel):
    method: Literal["email", "totp", "recovery"]
    code: str = Field(max_length=32)


class Code(BaseModel):
    code: str = Field(max_length=32)


class ResetRequest(BaseModel):
    email: str = Field(max_length=320)


class ResetCompletion(BaseModel):
    token: str = Field(max_length=200)
    password: str = Field(max_length=1024)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class Accepted(BaseModel):
    detail: str


class PasswordChanged(BaseModel):
    csrf_token: str


class LoginStep(BaseModel):
    second_factor: list[str]
    csrf_token: str


class SignedIn(BaseModel):
    account_id: uuid.UUID
    kind: str
    csrf_token: str


class SessionInfo(BaseModel):
    id: uuid.UUID
    created_at: str
    last_seen_at: str
    second_factor: str | None
    current: bool


class TotpSetup(BaseModel):
    secret: str
    uri: str


class RecoveryCodes(BaseModel):
    codes: list[str]


class RequestContext:
    """What one request needs to build the service, and its client's keyed hash."""

    def __init__(self, request: Request, runtime: Runtime, mailer: Mailer | None = None) -> None:
        self.request = request
        self.runtime = runtime
        self.mailer = mailer or runtime.mailer
        host = request.client.host if request.client else "unknown"
        self.client_hash = runtime.client_address_hasher(host)
        self.audit = AuditContext(request_id=request_id_of(request), client_hash=self.client_hash)

    def service(self, session: Session) -> AccountService:
        runtime = self.runtime
        return AccountService(
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

    @contextmanager
    def unit(self) -> Iterator[AccountService]:
        with transaction(self.runtime.sessions) as session:
            yield self.service(session)


class CsrfRefusedError(Exception):
    """An unsafe request of a session without its CSRF token."""


class Outbox:
    """A ``Mailer`` that keeps the messages, to deliver them once the answer is sent."""

    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer
        self.messages: list[OutgoingMessage] = []

    def send(self, message: OutgoingMessage) -> None:
        self.messages.append(message)

    def deliver(self) -> None:
        for message in self.messages:
            try:
                self._mailer.send(message)
            except MailerError as exc:  # its text names no recipient (see MailerError)
                _log.error("mail.failed", category=message.category, error=str(exc))
        self.messages.clear()


_HASHER: PasswordHasher | None = None


def _hasher() -> PasswordHasher:
    global _HASHER  # one hasher (its parameters) per process
    if _HASHER is None:
        _HASHER = PasswordHasher()
        # Made now, not on the first login for an unknown address (which would then take
        # two hashes' time, and show it).
        _HASHER.dummy_hash  # noqa: B018
    return _HASHER


def _run(context: RequestContext, action: Callable[[AccountService], T]) -> T | Response:
    """Run ``action`` in a transaction that commits even when the step fails as expected."""
    failure: Exception | None = None
    result: T | None = None
    with context.unit() as service:
        try:
            result = action(service)
        except (
            AuthError,
            CsrfRefusedError,
            InvalidInputError,
            PasswordRejected,
            StepUpRequired,
        ) as exc:
            failure = exc
    if failure is not None:
        return failure_response(failure)
    return cast(T, result)


def failure_response(failure: Exception) -> Response:
    if isinstance(failure, CsrfRefusedError):
        return problem_response(403, type_="csrf", detail="Requête refusée.")
    if isinstance(failure, StepUpRequired):
        return problem_response(
            403, type_="step-up-required", detail=str(failure), reason=STEP_UP_REQUIRED
        )
    if isinstance(failure, CurrentPasswordError):
        return problem_response(403, type_="wrong-password", detail=str(failure))
    if isinstance(failure, ThrottledError):
        # Rounded up: a client that waits exactly this long is not refused again.
        seconds = max(1, math.ceil(failure.retry_after))
        return problem_response(
            429, type_="throttled", detail=str(failure), headers={"Retry-After": str(seconds)}
        )
    if isinstance(failure, AuthError):
        return problem_response(401, type_="authentication-failed", detail=str(failure))
    if isinstance(failure, PasswordRejected):
        return problem_response(
            422, type_="password-rejected", detail=failure.message, code=failure.code
        )
    return problem_response(422, type_="invalid-input", detail=str(failure))


def same_origin(request: Request) -> bool:
    """Browsers send Origin on unsafe requests; a foreign one is refused outright."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in {f"https://{host}", f"http://{host}"}


def guard(request: Request) -> Response | None:
    if request.method not in SAFE_METHODS and not same_origin(request):
        return problem_response(403, type_="cross-origin", detail="Requête refusée.")
    return None


def csrf_header_ok(context: RequestContext, service: AccountService) -> bool:
    token = context.request.cookies.get(SESSION_COOKIE, "")
    return service.sessions.check_csrf(token, context.request.headers.get(CSRF_HEADER))


def set_session_cookie(response: Response, token: Secret[str], context: RequestContext) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token.reveal(),
        secure=True,
        httponly=True,
        samesite="strict",
        path="/",
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, secure=True, httponly=True, samesite="strict", path="/")


def set_device_cookie(response: Response, token: Secret[str]) -> None:
    """The browser's device token, kept for 400 days (pages use it too)."""
    response.set_cookie(
        DEVICE_COOKIE,
        token.reveal(),
        max_age=DEVICE_COOKIE_MAX_AGE,
        secure=True,
        httponly=True,
        samesite="strict",
        path="/",
    )


def _accepted(detail: str, status: int = 202) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


@router.post("/signup", status_code=202, response_model=Accepted, responses=AUTH_PROBLEMS)
def sign_up(body: SignUp, request: Request, runtime: RuntimeDep) -> Response:
    """Create an account; a code is emailed. The same answer whether the address is known."""
    if (refused := guard(request)) is not None:
        return refused
    context = RequestContext(request, runtime)
    outcome = _run(
        context,
        lambda service: service.sign_up(
            body.email,
            Secret(body.password),
            security_phrase=body.security_phrase,
            client_id=context.client_hash,
        ),
    )
    if isinstance(outcome, Response):
        return outcome
    return _accepted("Si cette adresse peut recevoir un compte, un code vient d'y être envoyé.")


@router.post("/signup/confirm", status_code=204, responses=AUTH_PROBLEMS)
def confirm_email(body: EmailCode, request: Request, runtime: RuntimeDep) -> Response:
    if (refused := guard(request)) is not None:
        return refused
    outcome = _run(
        RequestContext(request, runtime),
        lambda service: service.confirm_email(body.email, body.code),
    )
    return outcome if isinstance(outcome, Response) else Response(status_code=204)


@router.post("/login", response_model=LoginStep, responses=AUTH_PROBLEMS)
def login(body: Credentials, request: Request, runtime: RuntimeDep) -> Response:
    """First step: the password. The cookie then opens only the second-factor step."""
    if (refused := guard(request)) is not None:
        return refused
    context = RequestContext(request, runtime)
    with context.unit() as service:
        try:
            pending = service.login(
                body.email,
                Secret(body.password),
                client_id=context.client_hash,
                client_hash=context.client_hash,
            )
            failure: Exception | None = None
            csrf = service.sessions.csrf_token(pending.token.reveal())
        except AuthError as exc:
            failure = exc
    if failure is not None:
        return failure_response(failure)
    response = JSONResponse({"second_factor": list(pending.factors), "csrf_token": csrf})
    set_session_cookie(response, pending.token, context)
    return response


@router.post("/login/email-code", status_code=202, response_model=Accepted, responses=AUTH_PROBLEMS)
def send_login_code(request: Request, runtime: RuntimeDep) -> Response:
    if (refused := guard(request)) is not None:
        return refused
    context = RequestContext(request, runtime)
    token = request.cookies.get(SESSION_COOKIE, "")

    def send(service: AccountService) -> None:
        if not csrf_header_ok(context, service):
            raise CsrfRefusedError
        service.send_login_code(token)

    outcome = _run(context, send)
    if isinstance(outcome, Response):
        return outcome
    return _accepted("Un code de connexion vient d'être envoyé à votre adresse.")


@router.post("/login/second-factor", response_model=SignedIn, responses=AUTH_PROBLEMS)
def second_factor(body: SecondFactor, request: Request, runtime: RuntimeDep) -> Response:
    """Second step; answers with a NEW session cookie (the pending one is revoked)."""
    if (refused := guard(request)) is not None:
        return refused
    context = RequestContext(request, runtime)
    token = request.cookies.get(SESSION_COOKIE, "")

    def complete(service: AccountService) -> tuple[Any, str]:
        if not csrf_header_ok(context, service):
            raise CsrfRefusedError
        opened = service.second_factor(
            token, body.method, body.code, device=request.cookies.get(DEVICE_COOKIE)
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


@router.post("/password-reset", status_code=202, response_model=Accepted, responses=AUTH_PROBLEMS)
async def request_password_reset(
    body: ResetRequest, request: Request, runtime: RuntimeDep
) -> Response:
    """Email a link to choose a new password. The same answer, after the same time, whether
    the address is known or not."""
    started = time.monotonic()
    response = await run_in_threadpool(_request_password_reset, body, request, runtime)
    # Waiting here holds no worker thread.
    await asyncio.sleep(max(0.0, RESET_ANSWER_SECONDS - (time.monotonic() - started)))
    return response


def _request_password_reset(body: ResetRequest, request: Request, runtime: Runtime) -> Response:
    if (refused := guard(request)) is not None:
        return refused
    outbox = Outbox(runtime.mailer)
    context = RequestContext(request, runtime, mailer=outbox)
    outcome = _run(
        context,
        lambda service: service.request_password_reset(body.email, client_id=context.client_hash),
    )
    if isinstance(outcome, Response):
        return outcome
    response = _accepted(
        "Si un compte correspond à cette adresse, un lien pour choisir un nouveau mot de passe "
        "vient d'y être envoyé. Il est valable 15 minutes."
    )
    response.background = BackgroundTask(outbox.deliver)
    return response


@router.post("/password-reset/complete", status_code=204, responses=AUTH_PROBLEMS)
def complete_password_reset(
    body: ResetCompletion, request: Request, runtime: RuntimeDep
) -> Response:
    """Set the new password with the token of the emailed link; every session is revoked."""
    if (refused := guard(request)) is not None:
        return refused
    context = RequestContext(request, runtime)
    outcome = _run(
        context,
        lambda service: service.complete_password_reset(
            body.token, Secret(body.password), client_id=context.client_hash
        ),
    )
    if isinstance(outcome, Response):
        return outcome
    response = Response(status_code=204)
    clear_session_cookie(response)
    return response


def _signed_in(
    context: RequestContext,
    action: Callable[[AccountService, AccountSession, Account], T],
    *,
    check_csrf: bool = True,
) -> T | Response:
    token = context.request.cookies.get(SESSION_COOKIE, "")

    def run(service: AccountService) -> T:
        found = service.current(token)
        if found is None:
            raise AuthError("Vous n'êtes pas connecté.")
        if check_csrf and not csrf_header_ok(context, service):
            raise CsrfRefusedError
        return action(service, *found)

    return _run(context, run)


@router.get("/me", response_model=SignedIn, responses=AUTH_PROBLEMS)
def me(request: Request, runtime: RuntimeDep) -> Response:
    context = RequestContext(request, runtime)
    token = request.cookies.get(SESSION_COOKIE, "")
    outcome = _signed_in(
        context,
        lambda service, record, account: {
            "account_id": str(account.id),
            "kind": account.kind,
            "csrf_token": service.sessions.csrf_token(token),
        },
        check_csrf=False,
    )
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome)


@router.post("/logout", status_code=204, responses=AUTH_PROBLEMS)
def logout(request: Request, runtime: RuntimeDep) -> Response:
    if (refused := guard(request)) is not None:
        return refused
    context = RequestContext(request, runtime)
    token = request.cookies.get(SESSION_COOKIE, "")
    outcome = _signed_in(context, lambda service, record, account: service.logout(token))
    if isinstance(outcome, Response):
        return outcome
    response = Response(status_code=204)
    clear_session_cookie(response)
    return response


@router.post("/password", response_model=PasswordChanged, responses=STEP_UP_RESPONSES)
def change_password(body: PasswordChange, request: Request, runtime: RuntimeDep) -> Response:
    """Change the password (needs a recent step-up, and the current password); the other
    sessions are revoked, this one gets a new cookie."""
    if (refused := guard(request)) is not None:
        return refused
    context = RequestContext(request, runtime)

    def change(
        service: AccountService, record: AccountSession, account: Account
    ) -> tuple[Secret[str], str]:
        StepUp(service).require(record, account)
        token = service.change_password(
            record, account, Secret(body.current_password), Secret(body.new_password)
        )
        return token, service.sessions.csrf_token(token.reveal())

    outcome = _signed_in(context, change)
    if isinstance(outcome, Response):
        return outcome
    token, csrf = outcome
    response = JSONResponse({"csrf_token": csrf})
    set_session_cookie(response, token, context)
    return response


@router.get("/sessions", response_model=list[SessionInfo], responses=AUTH_PROBLEMS)
def list_sessions(request: Request, runtime: RuntimeDep) -> Response:
    context = RequestContext(request, runtime)

    def listing(
        service: AccountService, record: AccountSession, account: Account
    ) -> list[dict[str, Any]]:
        return [
            {
                "id": str(item.id),
                "created_at": item.created_at.isoformat(),
                "last_seen_at": item.last_seen_at.isoformat(),
                "second_factor": item.second_factor,
                "current": item.id == record.id,
            }
            for item in service.sessions.live(account.id)
        ]

    outcome = _signed_in(context, listing, check_csrf=False)
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome)


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    responses={
        **AUTH_PROBLEMS,
        404: {
            "description": "No such live session of this account.",
            "content": {"application/problem+json": {}},
        },
    },
)
def revoke_session(session_id: uuid.UUID, request: Request, runtime: RuntimeDep) -> Response:
    if (refused := guard(request)) is not None:
        return refused
    context = RequestContext(request, runtime)
    outcome = _signed_in(
        context, lambda service, record, account: service.revoke_session(account, session_id)
    )
    if isinstance(outcome, Response):
        return outcome
    if not outcome:
        return problem_response(404, detail="Session inconnue.")
    return Response(status_code=204)


def _stepped_up(
    action: Callable[[AccountService, AccountSession, Account], T],
) -> Callable[[AccountService, AccountSession, Account], T]:
    """``action``, once the session has a recent step-up (else 403 ``step_up_required``)."""

    def run(service: AccountService, record: AccountSession, account: Account) -> T:
        StepUp(service).require(record, account)
        return action(service, record, account)

    return run


@router.post("/totp", response_model=TotpSetup, responses=STEP_UP_RESPONSES)
def begin_totp(request: Request, runtime: RuntimeDep) -> Response:
    """A new authenticator secret (enrol, or replace the current app): needs a step-up."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _signed_in(
        RequestContext(request, runtime),
        _stepped_up(lambda service, record, account: service.begin_totp(account)),
    )
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse({"secret": outcome.secret_text, "uri": outcome.uri})


@router.post("/totp/confirm", status_code=204, responses=AUTH_PROBLEMS)
def confirm_totp(body: Code, request: Request, runtime: RuntimeDep) -> Response:
    if (refused := guard(request)) is not None:
        return refused
    outcome = _signed_in(
        RequestContext(request, runtime),
        lambda service, record, account: service.confirm_totp(account, body.code),
    )
    if isinstance(outcome, Response):
        return outcome
    if not outcome:
        return problem_response(422, type_="invalid-code", detail="Code incorrect.")
    return Response(status_code=204)


@router.post("/recovery-codes", response_model=RecoveryCodes, responses=STEP_UP_RESPONSES)
def recovery_codes(request: Request, runtime: RuntimeDep) -> Response:
    """Ten new recovery codes (the previous ones stop working): needs a step-up."""
    if (refused := guard(request)) is not None:
        return refused
    outcome = _signed_in(
        RequestContext(request, runtime),
        _stepped_up(lambda service, record, account: service.new_recovery_codes(account)),
    )
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse({"codes": outcome}, headers={"Cache-Control": "no-store"})


class Unlocked(BaseModel):
    unlocked: bool


_UNLOCK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **STEP_UP_RESPONSES,
    404: {
        "description": "No such account in this organization, or not allowed (one answer).",
        "content": {"application/problem+json": {}},
    },
}


@router.post("/accounts/{account_id}/unlock", response_model=Unlocked, responses=_UNLOCK_RESPONSES)
def unlock_account(account_id: uuid.UUID, request: Request, runtime: RuntimeDep) -> Response:
    """An organization admin lifts a lockout; ``unlocked`` is false if there was none. Needs
    a recent step-up of the staff session (403 ``step_up_required``).

    An unknown account and a forbidden one get the same 404 (invariant I7).
    """
    if (refused := guard(request)) is not None:
        return refused
    context = RequestContext(request, runtime)

    def unlock(
        service: AccountService, record: AccountSession, admin: Account
    ) -> bool | Response | None:
        if admin.kind != "staff":
            return None
        StepUp(service).require(record, admin)  # before looking at the target (I7)
        target = service.account(account_id)
        if target is None:
            return None
        principal = Principal(PrincipalKind.STAFF, str(admin.id), role=admin.role)
        try:
            return service.unlock(target, principal)
        except ForbiddenError:
            return None
        except SecurityLockError as locked:
            return problem_response(409, type_="security-lock", detail=str(locked))

    outcome = _signed_in(context, unlock)
    if isinstance(outcome, Response):
        return outcome
    if outcome is None:
        return problem_response(404, detail="Compte introuvable.")
    return JSONResponse({"unlocked": outcome})
