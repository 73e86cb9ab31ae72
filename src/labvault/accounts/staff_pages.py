"""French pages of staff accounts under ``/compte``, on ``StaffAccountService``.

The invitation (``/compte/invitation``, the emailed link: its token is in the fragment, which
a small script moves into the form; without scripts the invitee pastes it), the staff login
(``/compte/connexion-professionnel``), its forgotten-password request
(``/compte/connexion-professionnel/mot-de-passe-oublie``: the patients' guarantees, for staff
addresses; the emailed link leads to the shared ``/compte/mot-de-passe/nouveau``) and the
enrolment of the first factor that completes a first login (``/compte/activation``): an
authenticator app, or, for organization admins and security officers, a passkey created by
the browser's WebAuthn API (``/static/webauthn.js``, through the enrolment API of
``staff_routes``; without JavaScript the page says it is needed). The second-factor step
and the security settings are the shared pages (``labvault.accounts.pages``), whose
conventions these follow: POST-redirect-GET, French errors tied to their fields, CSRF tokens
in every form, secrets shown only in the answer to a POST.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from labvault.accounts.devices import DEVICE_COOKIE
from labvault.accounts.forms import (
    EXPIRED_FORM,
    GENERAL,
    MAX_CSRF,
    AnonymousForm,
    Attempt,
    FormText,
    anonymous_page,
    check_code,
    check_email,
    check_password,
    form_csrf_ok,
    headers_of,
    notice_of,
    redirect_to,
    refuse_cross_site,
    render_page,
    runtime_of,
    status_of,
    throttled_headers,
)
from labvault.accounts.invitations import StaffAccountService
from labvault.accounts.models import AccountKind
from labvault.accounts.pages import qr_svg
from labvault.accounts.routes import (
    RESET_ANSWER_SECONDS,
    SESSION_COOKIE,
    Outbox,
    clear_session_cookie,
    set_device_cookie,
    set_session_cookie,
)
from labvault.accounts.services import (
    AuthError,
    InvalidInputError,
    PasswordRejected,
    ThrottledError,
    TotpEnrolment,
)
from labvault.accounts.staff_routes import StaffContext
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.staff.models import StaffRole

__all__ = ["ACTIVATION_PATH", "STAFF_LOGIN_PATH", "router"]

router = APIRouter(prefix="/compte", include_in_schema=False)

STAFF_LOGIN_PATH: Final = "/compte/connexion-professionnel"
ACTIVATION_PATH: Final = "/compte/activation"
MAX_TOKEN = 200
TOKEN_FIELD: Final = "token"  # noqa: S105 - the name of a form field
NOTICES: Final = {
    "code-activation-envoye": "Un code d'activation vient d'être envoyé à votre adresse "
    "e-mail. Il est valable 10 minutes.",
}


@contextmanager
def _staff_unit(
    request: Request, context: StaffContext | None = None
) -> Iterator[tuple[StaffContext, StaffAccountService]]:
    """One transaction, committed on a normal exit (failed steps stay counted and audited)."""
    context = context or StaffContext(request, runtime_of(request))
    with transaction(context.runtime.sessions) as session:
        yield context, context.service(session)


def _staff_notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("info", "")) or notice_of(request)


def _attempt(
    request: Request,
    form: AnonymousForm,
    presented: str,
    errors: dict[str, str],
    action: Callable[[StaffContext, StaffAccountService], None],
    describe: Callable[[Exception], dict[str, str]],
) -> Attempt:
    """As ``pages._attempt_anonymous``, with the staff service."""
    outcome = Attempt(errors=dict(errors))
    with _staff_unit(request) as (context, service):
        if not form.check(service, presented):
            outcome.errors = {GENERAL: EXPIRED_FORM}
        elif not outcome.errors:
            try:
                action(context, service)
            except ThrottledError as exc:
                outcome.throttled = exc
                outcome.errors = {GENERAL: str(exc)}
            except (AuthError, InvalidInputError, PasswordRejected) as exc:
                outcome.errors = describe(exc)
        outcome.csrf_token = form.token(service)
    return outcome


def _after_password(
    request: Request, token: Secret[str], context: StaffContext, enrol: bool
) -> Response:
    response = redirect_to(request, ACTIVATION_PATH if enrol else "/compte/second-facteur")
    set_session_cookie(response, token, context)
    return response


# --- staff login ----------------------------------------------------------------------------


@router.get("/connexion-professionnel", name="staff_login")
def staff_login_page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    form = AnonymousForm.of(request)
    with _staff_unit(request) as (_, service):
        signed_in = bool(token) and service.current(token) is not None
        csrf_token = form.token(service)
    if signed_in:
        return redirect_to(request, "/compte/securite")
    return anonymous_page(
        request,
        "accounts/connexion_professionnel.html",
        {"values": {}, "notice": _staff_notice(request)},
        form=form,
        csrf_token=csrf_token,
    )


@router.post("/connexion-professionnel")
def staff_login(
    request: Request, email: FormText = "", password: FormText = "", csrf_token: FormText = ""
) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    errors: dict[str, str] = {}
    check_email(email, errors)
    check_password(password, errors, missing="Saisissez votre mot de passe.")
    done: list[Response] = []

    def log_in(context: StaffContext, service: StaffAccountService) -> None:
        login = service.staff_login(
            email, Secret(password), client_id=context.client_hash, client_hash=context.client_hash
        )
        done.append(_after_password(request, login.token, context, bool(login.enrol)))

    form = AnonymousForm.of(request)
    outcome = _attempt(
        request, form, csrf_token, errors, log_in, lambda failure: {GENERAL: str(failure)}
    )
    if not outcome.errors and done:
        return done[0]
    return anonymous_page(
        request,
        "accounts/connexion_professionnel.html",
        {"values": {"email": email}},
        errors=outcome.errors,
        status=status_of(outcome, 401),
        headers=headers_of(outcome),
        form=form,
        csrf_token=outcome.csrf_token,
    )


# --- invitation -----------------------------------------------------------------------------


@router.get("/invitation", name="staff_invitation")
def invitation_page(request: Request) -> Response:
    return anonymous_page(request, "accounts/invitation.html", {"values": {}})


@router.post("/invitation")
def accept_invitation(
    request: Request, token: FormText = "", password: FormText = "", csrf_token: FormText = ""
) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = token.strip()
    errors: dict[str, str] = {}
    if not token:
        errors[TOKEN_FIELD] = (
            "Ouvrez le lien reçu par e-mail, ou collez ici ce qui suit « # » dans ce lien."
        )
    elif len(token) > MAX_TOKEN:
        errors[TOKEN_FIELD] = "Ce code d'invitation est trop long : vérifiez-le."
    check_password(password, errors, missing="Choisissez un mot de passe.")
    done: list[Response] = []

    def accept(context: StaffContext, service: StaffAccountService) -> None:
        login = service.accept_invitation(
            token, Secret(password), client_id=context.client_hash, client_hash=context.client_hash
        )
        done.append(_after_password(request, login.token, context, bool(login.enrol)))

    def describe(failure: Exception) -> dict[str, str]:
        if isinstance(failure, PasswordRejected):
            return {"password": failure.message}
        return {GENERAL: str(failure)}

    form = AnonymousForm.of(request)
    outcome = _attempt(request, form, csrf_token, errors, accept, describe)
    if not outcome.errors and done:
        return done[0]
    return anonymous_page(
        request,
        "accounts/invitation.html",
        # The token is kept (in this answer only) so that a refused password can be retried.
        {"values": {"token": token if len(token) <= MAX_TOKEN else ""}},
        errors=outcome.errors,
        status=status_of(outcome, 401 if GENERAL in outcome.errors else 422),
        headers=headers_of(outcome),
        form=form,
        csrf_token=outcome.csrf_token,
    )


# --- enrolment of the authenticator app -----------------------------------------------------


@dataclass
class _Activation:
    """The enrolment step of the request's pending login, or where to send the browser."""

    redirect: Response | None = None
    csrf_token: str = ""
    email_code_required: bool = False
    totp_pending: bool = False
    factor: str = "totp"
    """What this login must enrol: ``totp``, or ``webauthn`` (a passkey)."""
    next_url: str = "/compte/securite"
    passkeys_available: bool = False


def _activation_state(request: Request, service: StaffAccountService, token: str) -> _Activation:
    factor = (service.enrolment_factor(token) if token else None) or "totp"
    found = service.enrolling(token, factor) if token else None
    if found is None:
        if token and service.current(token) is not None:
            return _Activation(redirect=redirect_to(request, "/compte/securite"))
        if token and service.pending(token) is not None:
            return _Activation(redirect=redirect_to(request, "/compte/second-facteur"))
        if not token:
            return _Activation(redirect=redirect_to(request, STAFF_LOGIN_PATH))
        response = redirect_to(request, STAFF_LOGIN_PATH, info="session-expiree")
        clear_session_cookie(response)
        return _Activation(redirect=response)
    record, account = found
    admin = account.role == StaffRole.ORGANIZATION_ADMIN.value
    return _Activation(
        csrf_token=service.sessions.csrf_token(token),
        email_code_required=service.needs_mailbox_proof(record),
        totp_pending=factor == "totp" and service.totp_pending(account),
        factor=factor,
        next_url="/administration/personnel"
        if admin
        else "/compte/securite?info=cle-acces-ajoutee",
        passkeys_available=service.passkeys.relying_party is not None,
    )


def _activation_page(
    request: Request,
    state: _Activation,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    notice: str | None = None,
    enrolment: TotpEnrolment | None = None,
) -> Response:
    code_sent = notice == NOTICES["code-activation-envoye"]
    return render_page(
        request,
        "accounts/activation.html",
        {
            "csrf_token": state.csrf_token,
            "email_code_required": state.email_code_required,
            "totp_pending": state.totp_pending,
            "factor": state.factor,
            "next_url": state.next_url.lstrip("/"),
            "code_sent": code_sent,
            "notice": notice,
            "enrolment": enrolment,
            "qr_svg": qr_svg(enrolment.uri) if enrolment is not None else None,
        },
        errors=errors,
        status=status,
        headers=headers,
        focus=(
            "code-email" if code_sent and (state.totp_pending or state.factor != "totp") else None
        ),
    )


@router.get("/activation", name="staff_activation")
def activation_page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    with _staff_unit(request) as (_, service):
        state = _activation_state(request, service, token)
    if state.redirect is not None:
        return state.redirect
    return _activation_page(request, state, notice=_staff_notice(request))


_Action = Callable[[StaffContext, StaffAccountService, str], Response | dict[str, Any]]


def _activation_post(request: Request, csrf_token: str, action: _Action) -> Response:
    """Run ``action`` for the pending login once the origin and the CSRF token are right;
    it answers with a response, or with what the page, shown again, must show once."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    with _staff_unit(request) as (context, service):
        state = _activation_state(request, service, token)
        if state.redirect is not None:
            return state.redirect
        if len(csrf_token) > MAX_CSRF or not form_csrf_ok(service, token, csrf_token):
            shown: dict[str, Any] = {"errors": {GENERAL: EXPIRED_FORM}, "status": 403}
        else:
            outcome = action(context, service, token)
            if isinstance(outcome, Response):
                return outcome
            shown = outcome
            # The page as it is now (a failure may have locked the account).
            state = _activation_state(request, service, token)
    if state.redirect is not None:
        return state.redirect
    return _activation_page(request, state, **shown)


_PASSKEY_FIRST = (
    "Votre fonction exige une clé d'accès : créez-la avec le bouton « Créer ma clé d'accès »."
)
_NEEDS_SCRIPT = (
    "Votre navigateur doit exécuter JavaScript pour créer une clé d'accès. Activez-le pour ce "
    "site, puis réessayez."
)


@router.post("/activation/cle")
def begin_activation(request: Request, csrf_token: FormText = "") -> Response:
    """A new authenticator secret, shown in this answer only (never in a URL)."""

    def begin(
        context: StaffContext, service: StaffAccountService, token: str
    ) -> Response | dict[str, Any]:
        if _activation_state(request, service, token).factor != "totp":
            return {"errors": {GENERAL: _PASSKEY_FIRST}, "status": 422}
        return {"enrolment": service.begin_enrolment(token)}

    return _activation_post(request, csrf_token, begin)


@router.post("/activation/cle-d-acces")
def passkey_activation(request: Request, csrf_token: FormText = "") -> Response:
    """Reached only without the script, which creates the passkey through the API."""
    return _activation_post(
        request,
        csrf_token,
        lambda context, service, token: {"errors": {GENERAL: _NEEDS_SCRIPT}, "status": 422},
    )


@router.post("/activation/envoi")
def send_activation_code(request: Request, csrf_token: FormText = "") -> Response:
    def send(
        context: StaffContext, service: StaffAccountService, token: str
    ) -> Response | dict[str, Any]:
        try:
            service.send_enrolment_code(token)
        except ThrottledError as exc:
            return {
                "errors": {GENERAL: str(exc)},
                "status": 429,
                "headers": throttled_headers(exc),
            }
        return redirect_to(request, ACTIVATION_PATH, info="code-activation-envoye")

    return _activation_post(request, csrf_token, send)


@router.post("/activation")
def confirm_activation(
    request: Request, code: FormText = "", email_code: FormText = "", csrf_token: FormText = ""
) -> Response:
    errors: dict[str, str] = {}
    check_code(code, errors, "code-totp")

    def confirm(
        context: StaffContext, service: StaffAccountService, token: str
    ) -> Response | dict[str, Any]:
        state = _activation_state(request, service, token)
        if state.factor != "totp":
            return {"errors": {GENERAL: _PASSKEY_FIRST}, "status": 422}
        if not state.totp_pending:
            message = "Configurez d'abord l'application d'authentification."
            return {"errors": {GENERAL: message}, "status": 422}
        if state.email_code_required:
            check_code(email_code, errors, "code-email")
        if errors:
            return {"errors": errors, "status": 422}
        try:
            opened = service.confirm_enrolment(
                token,
                code,
                email_code=email_code or None,
                device=request.cookies.get(DEVICE_COOKIE),
            )
        except ThrottledError as exc:
            return {
                "errors": {GENERAL: str(exc)},
                "status": 429,
                "headers": throttled_headers(exc),
            }
        except AuthError as exc:
            field = "code-totp" if not state.email_code_required else GENERAL
            return {"errors": {field: str(exc)}, "status": 401}
        response = redirect_to(request, "/compte/securite", info="totp-active")
        set_session_cookie(response, opened.token, context)
        if opened.device_token is not None:
            set_device_cookie(response, opened.device_token)
        return response

    return _activation_post(request, csrf_token, confirm)


# --- forgotten password ---------------------------------------------------------------------

FORGOT_PATH: Final = "/compte/connexion-professionnel/mot-de-passe-oublie"
FORGOT_TEMPLATE: Final = "accounts/mot_de_passe_oubli_professionnel.html"


@router.get("/connexion-professionnel/mot-de-passe-oublie", name="staff_password_forgotten")
def staff_forgot_password_page(request: Request) -> Response:
    return anonymous_page(request, FORGOT_TEMPLATE, {"values": {}, "notice": notice_of(request)})


@router.post("/connexion-professionnel/mot-de-passe-oublie")
async def staff_forgot_password(
    request: Request, email: FormText = "", csrf_token: FormText = ""
) -> Response:
    """The same answer, after the same least time, whether the address has a staff account
    (an invitation not accepted yet gets no link: it must use its invitation)."""
    started = time.monotonic()
    response = await run_in_threadpool(_staff_forgot_password, request, email, csrf_token)
    await asyncio.sleep(max(0.0, RESET_ANSWER_SECONDS - (time.monotonic() - started)))
    return response


def _staff_forgot_password(request: Request, email: str, csrf_token: str) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    errors: dict[str, str] = {}
    check_email(email, errors)
    outbox = Outbox(runtime_of(request).mailer)
    context = StaffContext(request, runtime_of(request), mailer=outbox)
    form = AnonymousForm.of(request)
    outcome = Attempt(errors=errors)
    with _staff_unit(request, context) as (_, service):
        if not form.check(service, csrf_token):
            outcome.errors = {GENERAL: EXPIRED_FORM}
        elif not outcome.errors:
            try:
                service.request_password_reset(
                    email, client_id=context.client_hash, kind=AccountKind.STAFF
                )
            except ThrottledError as exc:
                outcome.throttled = exc
                outcome.errors = {GENERAL: str(exc)}
            except InvalidInputError:
                outcome.errors = {
                    "email": "Saisissez une adresse e-mail valide, par exemple nom@exemple.fr."
                }
        outcome.csrf_token = form.token(service)
    if not outcome.errors:
        response = redirect_to(request, FORGOT_PATH, info="lien-envoye")
        # Delivered once the answer is sent: a slow or failing mail server shows nothing.
        response.background = BackgroundTask(outbox.deliver)
        return response
    return anonymous_page(
        request,
        FORGOT_TEMPLATE,
        {"values": {"email": email}},
        errors=outcome.errors,
        status=status_of(outcome, 422),
        headers=headers_of(outcome),
        form=form,
        csrf_token=outcome.csrf_token,
    )
