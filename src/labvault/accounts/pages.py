"""French server-rendered authentication pages under ``/compte``, on ``AccountService``.

Sign-up (``/compte/inscription``), proof of the address (``/compte/confirmation``), login
(``/compte/connexion``), the second factor (``/compte/second-facteur``) and the security
settings (``/compte/securite``: sessions, authenticator app, recovery codes, logout).

Every form works without JavaScript: POST, then a 303 redirect to a GET page (a notice
named by a fixed keyword in the query string, never a personal value), or the form again
with French errors tied to their fields (``aria-describedby``, ``aria-invalid``, focus on the
first error). Secrets shown once (a new authenticator secret, new recovery codes) are shown
in the answer to the POST itself, never put in a URL; every page is ``no-store`` (the
security headers middleware says so for every non-static answer).

Every POST is refused from another origin, and must carry the CSRF token of its form in the
hidden field ``csrf_token``: for a session (the pending one of the second-factor step, or a
signed-in one) the session's own token (``SessionStore.csrf_token``); before any session, the
same HMAC of a random value kept in a ``__Host-`` form cookie (login CSRF).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final
from zoneinfo import ZoneInfo

import segno
from fastapi import APIRouter, Request
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.responses import Response

from labvault.accounts.forms import (
    EXPIRED_FORM,
    FORM_COOKIE,
    GENERAL,
    MAX_PHRASE,
    NOTICES,
    AnonymousForm,
    FormText,
    Unit,
    anonymous_page,
    attempt_anonymous,
    check_code,
    check_email,
    check_password,
    error_page,
    form_csrf_ok,
    headers_of,
    notice_of,
    open_unit,
    redirect_to,
    refuse_cross_site,
    render_page,
    runtime_of,
    status_of,
    throttled_headers,
)
from labvault.accounts.models import Account, AccountKind, RecoveryCode, TotpCredential
from labvault.accounts.routes import (
    SESSION_COOKIE,
    RequestContext,
    clear_session_cookie,
    set_session_cookie,
)
from labvault.accounts.services import (
    AuthError,
    PasswordRejected,
    ThrottledError,
    TotpEnrolment,
)
from labvault.accounts.stepup import StepUp, StepUpRequired
from labvault.accounts.webauthn import PasskeyPanel
from labvault.core.contact import parse_email
from labvault.core.crypto.secret import Secret
from labvault.staff.models import StaffRole

__all__ = [
    "FORM_COOKIE",
    "METHOD_NAMES",
    "STEP_UP_PAGE",
    "Shown",
    "SignedInAction",
    "back_to_login",
    "paris_moment",
    "pending_state",
    "qr_svg",
    "render_second_factor",
    "router",
    "signed_in_post",
    "step_up_redirect",
    "stepped_up",
]

router = APIRouter(prefix="/compte", include_in_schema=False)

PARIS = ZoneInfo("Europe/Paris")

_METHODS: Final = ("totp", "email", "recovery")
METHOD_NAMES: Final = {
    "email": "code reçu par e-mail",
    "totp": "application d'authentification",
    "recovery": "code de secours",
    "webauthn": "clé d'accès",
}

# --- sign-up and proof of the address -------------------------------------------------------


@router.get("/inscription", name="account_sign_up")
def sign_up_page(request: Request) -> Response:
    return anonymous_page(request, "accounts/inscription.html", {"values": {}})


@router.post("/inscription")
def sign_up(
    request: Request,
    email: FormText = "",
    password: FormText = "",
    security_phrase: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    errors: dict[str, str] = {}
    check_email(email, errors)
    check_password(password, errors, missing="Choisissez un mot de passe.")
    if len(security_phrase) > MAX_PHRASE:
        errors["security_phrase"] = "La phrase de sécurité doit faire de 4 à 80 caractères."
    phrase = security_phrase.strip() or None

    def describe(failure: Exception) -> dict[str, str]:
        if isinstance(failure, PasswordRejected):
            return {"password": failure.message}
        if _invalid_email(email):
            return {"email": "Saisissez une adresse e-mail valide, par exemple nom@exemple.fr."}
        if phrase is not None:
            return {"security_phrase": str(failure)}
        return {GENERAL: str(failure)}

    form = AnonymousForm.of(request)
    outcome = attempt_anonymous(
        request,
        form,
        csrf_token,
        errors,
        lambda unit: unit.service.sign_up(
            email,
            Secret(password),
            security_phrase=phrase,
            client_id=unit.context.client_hash,
        ),
        describe,
    )
    if not outcome.errors:
        return redirect_to(request, "/compte/confirmation", info="code-envoye")
    return anonymous_page(
        request,
        "accounts/inscription.html",
        {"values": {"email": email, "security_phrase": security_phrase}},
        errors=outcome.errors,
        status=status_of(outcome, 422),
        headers=headers_of(outcome),
        form=form,
        csrf_token=outcome.csrf_token,
    )


def _invalid_email(email: str) -> bool:
    try:
        parse_email(email)
    except ValueError:
        return True
    return False


@router.get("/confirmation", name="account_confirm_email")
def confirm_email_page(request: Request) -> Response:
    return anonymous_page(
        request, "accounts/confirmation.html", {"values": {}, "notice": notice_of(request)}
    )


@router.post("/confirmation")
def confirm_email(
    request: Request, email: FormText = "", code: FormText = "", csrf_token: FormText = ""
) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    errors: dict[str, str] = {}
    check_email(email, errors)
    check_code(code, errors)
    form = AnonymousForm.of(request)
    outcome = attempt_anonymous(
        request,
        form,
        csrf_token,
        errors,
        lambda unit: unit.service.confirm_email(email, code),
        lambda failure: {"code": str(failure)},
    )
    if not outcome.errors:
        return redirect_to(request, "/compte/connexion", info="adresse-confirmee")
    return anonymous_page(
        request,
        "accounts/confirmation.html",
        {"values": {"email": email}},
        errors=outcome.errors,
        status=status_of(outcome, 422),
        headers=headers_of(outcome),
        form=form,
        csrf_token=outcome.csrf_token,
    )


# --- login ----------------------------------------------------------------------------------


@router.get("/connexion", name="account_login")
def login_page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    form = AnonymousForm.of(request)
    with open_unit(request) as unit:
        signed_in = bool(token) and unit.service.current(token) is not None
        csrf_token = form.token(unit.service)
    if signed_in:
        return redirect_to(request, "/compte/securite")
    return anonymous_page(
        request,
        "accounts/connexion.html",
        {"values": {}, "notice": notice_of(request)},
        form=form,
        csrf_token=csrf_token,
    )


@router.post("/connexion")
def login(
    request: Request, email: FormText = "", password: FormText = "", csrf_token: FormText = ""
) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    errors: dict[str, str] = {}
    check_email(email, errors)
    check_password(password, errors, missing="Saisissez votre mot de passe.")
    tokens: list[tuple[Secret[str], RequestContext]] = []

    def log_in(unit: Unit) -> None:
        pending = unit.service.login(
            email,
            Secret(password),
            client_id=unit.context.client_hash,
            client_hash=unit.context.client_hash,
        )
        tokens.append((pending.token, unit.context))

    form = AnonymousForm.of(request)
    outcome = attempt_anonymous(
        request, form, csrf_token, errors, log_in, lambda failure: {GENERAL: str(failure)}
    )
    if not outcome.errors and tokens:
        response = redirect_to(request, "/compte/second-facteur")
        token, context = tokens[0]
        set_session_cookie(response, token, context)
        return response
    return anonymous_page(
        request,
        "accounts/connexion.html",
        {"values": {"email": email}},
        errors=outcome.errors,
        status=status_of(outcome, 401),
        headers=headers_of(outcome),
        form=form,
        csrf_token=outcome.csrf_token,
    )


# --- second factor --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Factors:
    """What can open a session for an account, and what is on its way (no secret in here)."""

    methods: tuple[str, ...]
    totp_pending: bool
    recovery_left: int


def _factors(session: Session, account: Account) -> _Factors:
    """Read-only: which factors the account has (nothing decrypted, nothing personal)."""
    # A confirmed app and a new one waiting for its first code may both exist.
    totp_confirmed = session.scalar(
        select(TotpCredential.confirmed_at).where(
            TotpCredential.account_id == account.id, TotpCredential.confirmed_at.is_not(None)
        )
    )
    totp_pending = session.scalar(
        select(TotpCredential.id).where(
            TotpCredential.account_id == account.id, TotpCredential.confirmed_at.is_(None)
        )
    )
    recovery_left = (
        session.scalar(
            select(func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.account_id == account.id, RecoveryCode.used_at.is_(None))
        )
        or 0
    )
    methods: list[str] = []
    if totp_confirmed is not None:
        methods.append("totp")
    if account.kind == AccountKind.PATIENT.value:
        methods.append("email")
    if recovery_left:
        methods.append("recovery")
    return _Factors(
        tuple(methods),
        totp_pending=totp_pending is not None,
        recovery_left=int(recovery_left),
    )


@dataclass
class _Pending:
    """The second-factor step of the request's session, or where to send the browser."""

    redirect: Response | None = None
    csrf_token: str = ""
    factors: _Factors | None = None


def back_to_login(request: Request, token: str) -> Response:
    """To the login page; a session that has ended is said so, and its cookie dropped."""
    if not token:
        return redirect_to(request, "/compte/connexion")
    response = redirect_to(request, "/compte/connexion", info="session-expiree")
    clear_session_cookie(response)
    return response


def pending_state(request: Request, unit: Unit, token: str) -> _Pending:
    found = unit.service.pending(token)
    if found is None:
        return _Pending(redirect=back_to_login(request, token))
    record, account = found
    if record.second_factor_at is not None:
        return _Pending(redirect=redirect_to(request, "/compte/securite"))
    factors = _factors(unit.session, account)
    if account.kind == AccountKind.STAFF.value and not unit.service._factors(account):
        # No factor yet: a staff login enrols one first (labvault.accounts.invitations).
        return _Pending(redirect=redirect_to(request, "/compte/activation"))
    return _Pending(
        csrf_token=unit.service.sessions.csrf_token(token),
        factors=replace(factors, methods=unit.service.passkeys.offered(account, factors.methods)),
    )


def render_second_factor(
    request: Request,
    state: _Pending,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    notice: str | None = None,
) -> Response:
    assert state.factors is not None
    code_sent = notice == NOTICES["code-connexion-envoye"]
    return render_page(
        request,
        "accounts/second_facteur.html",
        {
            "csrf_token": state.csrf_token,
            "methods": state.factors.methods,
            "method_names": METHOD_NAMES,
            "code_sent": code_sent,
            "notice": notice,
        },
        errors=errors,
        status=status,
        headers=headers,
        # Once a code is sent, the next thing to do is to type it.
        focus="code-email" if code_sent else None,
    )


@router.get("/second-facteur", name="account_second_factor")
def second_factor_page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    with open_unit(request) as unit:
        state = pending_state(request, unit, token)
    if state.redirect is not None:
        return state.redirect
    return render_second_factor(request, state, notice=notice_of(request))


@router.post("/second-facteur/envoi")
def send_login_code(request: Request, csrf_token: FormText = "") -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    errors: dict[str, str] = {}
    throttled: ThrottledError | None = None
    with open_unit(request) as unit:
        state = pending_state(request, unit, token)
        if state.redirect is None:
            if not form_csrf_ok(unit.service, token, csrf_token):
                errors = {GENERAL: EXPIRED_FORM}
            else:
                try:
                    unit.service.send_login_code(token)
                except ThrottledError as exc:
                    throttled = exc
                    errors = {GENERAL: str(exc)}
                except AuthError:
                    state = _Pending(redirect=back_to_login(request, token))
    if state.redirect is not None:
        return state.redirect
    if not errors:
        return redirect_to(request, "/compte/second-facteur", info="code-connexion-envoye")
    return render_second_factor(
        request,
        state,
        errors=errors,
        status=429 if throttled else 403,
        headers=throttled_headers(throttled) if throttled else None,
    )


@router.post("/second-facteur")
def second_factor(
    request: Request,
    factor: FormText = "",
    code: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    """``factor`` (not ``method``: a field of that name would hide the form's own
    ``method`` property from scripts) is ``totp``, ``email`` or ``recovery``."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    chosen = factor if factor in _METHODS else "email"
    field_name = f"code-{chosen}"
    errors: dict[str, str] = {}
    check_code(code, errors, field_name)
    throttled: ThrottledError | None = None
    status = 422
    opened = None
    context = RequestContext(request, runtime_of(request))
    with open_unit(request, context) as unit:
        state = pending_state(request, unit, token)
        if state.redirect is None:
            if not form_csrf_ok(unit.service, token, csrf_token):
                errors, status = {GENERAL: EXPIRED_FORM}, 403
            elif not errors:
                try:
                    opened = unit.service.second_factor(token, chosen, code)
                except ThrottledError as exc:
                    throttled = exc
                    errors, status = {GENERAL: str(exc)}, 429
                except AuthError as exc:
                    errors, status = {field_name: str(exc)}, 401
                    # The failure may have locked the account, ending the pending session.
                    state = pending_state(request, unit, token)
    if opened is not None:
        response = redirect_to(request, "/compte/securite")
        set_session_cookie(response, opened.token, context)
        return response
    if state.redirect is not None:
        return state.redirect
    assert state.factors is not None
    if field_name in errors and chosen not in state.factors.methods:
        # No such field on the page: the error is the form's.
        errors = {GENERAL: errors[field_name]}
    return render_second_factor(
        request,
        state,
        errors=errors,
        status=status,
        headers=throttled_headers(throttled) if throttled else None,
    )


# --- security settings ----------------------------------------------------------------------


@dataclass(frozen=True)
class _SessionRow:
    id: uuid.UUID
    created_at: str
    last_seen_at: str
    second_factor: str
    current: bool


@dataclass
class _Security:
    """The signed-in state that the security page shows, or where to send the browser."""

    redirect: Response | None = None
    csrf_token: str = ""
    factors: _Factors | None = None
    sessions: list[_SessionRow] = field(default_factory=list)
    account: Account | None = None
    passkeys: PasskeyPanel | None = None
    stepped_up: bool = False


def paris_moment(moment: dt.datetime) -> str:
    local = moment.astimezone(PARIS)
    return f"le {local:%d/%m/%Y} à {local:%H:%M}"


def _security_state(request: Request, unit: Unit, token: str) -> _Security:
    found = unit.service.current(token)
    if found is None:
        if token and unit.service.pending(token) is not None:
            return _Security(redirect=redirect_to(request, "/compte/second-facteur"))
        return _Security(redirect=back_to_login(request, token))
    record, account = found
    rows = [
        _SessionRow(
            id=item.id,
            created_at=paris_moment(item.created_at),
            last_seen_at=paris_moment(item.last_seen_at),
            second_factor=METHOD_NAMES.get(
                item.second_factor or "", "aucun : connexion non terminée"
            ),
            current=item.id == record.id,
        )
        for item in unit.service.sessions.live(account.id)
    ]
    return _Security(
        csrf_token=unit.service.sessions.csrf_token(token),
        factors=_factors(unit.session, account),
        sessions=rows,
        account=account,
        passkeys=unit.service.passkeys.panel(account),
        stepped_up=StepUp(unit.service).is_fresh(record),
    )


def qr_svg(uri: str) -> Markup:
    """The otpauth URI as an inline SVG QR code, made here: no script, no external image."""
    svg = segno.make(uri, error="m").svg_inline(
        scale=4, border=4, dark="#000", light="#fff", svgclass="qr-code", omitsize=False
    )
    labelled = svg.replace(
        "<svg ",
        '<svg role="img" aria-label="QR code à scanner avec votre application '
        "d'authentification\" ",
        1,
    )
    return Markup(labelled)  # noqa: S704 - made by segno from the URI, which it escapes


def _is_staff(state: _Security, *roles: StaffRole) -> bool:
    account = state.account
    return (
        account is not None
        and account.kind == AccountKind.STAFF.value
        and account.role in {role.value for role in roles}
    )


def _security_page(
    request: Request,
    state: _Security,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    notice: str | None = None,
    enrolment: TotpEnrolment | None = None,
    recovery_codes: list[str] | None = None,
) -> Response:
    assert state.factors is not None
    return render_page(
        request,
        "accounts/securite.html",
        {
            "csrf_token": state.csrf_token,
            "factors": state.factors,
            "sessions": state.sessions,
            "notice": notice,
            "enrolment": enrolment,
            "qr_svg": qr_svg(enrolment.uri) if enrolment is not None else None,
            "recovery_codes": recovery_codes,
            "passkeys": state.passkeys,
            "stepped_up": state.stepped_up,
            "is_patient": state.account is not None
            and state.account.kind == AccountKind.PATIENT.value,
            "works_at_desk": state.account is not None
            and state.account.kind == AccountKind.STAFF.value
            and state.account.role in {StaffRole.RECEPTIONIST.value, StaffRole.SAMPLER.value},
            "reviews_results": _is_staff(state, StaffRole.BIOLOGIST),
            "matches_results": _is_staff(state, StaffRole.BIOLOGIST, StaffRole.RECEPTIONIST),
            "watches_security": _is_staff(state, StaffRole.SECURITY_OFFICER),
        },
        errors=errors,
        status=status,
    )


Shown = dict[str, Any]
"""What the security page shows once after a POST: ``errors``, ``status``, ``enrolment``..."""
SignedInAction = Callable[[Unit, Account], Response | Shown]


def signed_in_post(request: Request, csrf_token: str, action: SignedInAction) -> Response:
    """Run ``action`` for the signed-in account once the origin and the CSRF token are right.

    ``action`` answers with a response (a redirect), or with what the security page, shown
    again as it is now, must show once (a new secret, new codes, errors).
    """
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    with open_unit(request) as unit:
        state = _security_state(request, unit, token)
        if state.redirect is not None:
            return state.redirect
        assert state.account is not None
        if not form_csrf_ok(unit.service, token, csrf_token):
            shown: Shown = {"errors": {GENERAL: EXPIRED_FORM}, "status": 403}
        else:
            outcome = action(unit, state.account)
            if isinstance(outcome, Response):
                return outcome
            shown = outcome
            # The page as it is now: a session closed, a factor added, codes replaced...
            state = _security_state(request, unit, token)
    if state.redirect is not None:
        return state.redirect
    return _security_page(request, state, **shown)


@router.get("/securite", name="account_security")
def security_page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    with open_unit(request) as unit:
        state = _security_state(request, unit, token)
    if state.redirect is not None:
        return state.redirect
    return _security_page(request, state, notice=notice_of(request))


STEP_UP_PAGE: Final = "/compte/confirmer-identite"
"""The page that re-proves a second factor (``labvault.accounts.stepup_pages``)."""


def step_up_redirect(request: Request, unit: Unit, suite: str) -> Response | None:
    """``None`` if the request's session has a recent step-up; else a redirect to the page
    that asks for one, then comes back to ``suite`` (a local path). The refusal is audited."""
    found = unit.service.current(request.cookies.get(SESSION_COOKIE, ""))
    if found is None:
        return back_to_login(request, request.cookies.get(SESSION_COOKIE, ""))
    try:
        StepUp(unit.service).require(*found)
    except StepUpRequired:
        return redirect_to(request, STEP_UP_PAGE, suite=suite, info="confirmation-requise")
    return None


def stepped_up(action: SignedInAction, suite: str = "/compte/securite") -> SignedInAction:
    """``action``, once the session has a recent step-up (else the step-up page)."""

    def run(unit: Unit, account: Account) -> Response | Shown:
        return step_up_redirect(unit.context.request, unit, suite) or action(unit, account)

    return run


@router.post("/securite/totp")
def begin_totp(request: Request, csrf_token: FormText = "") -> Response:
    """A new authenticator secret, shown in this answer only (never in a URL); needs a
    recent step-up."""
    return signed_in_post(
        request,
        csrf_token,
        stepped_up(lambda unit, account: {"enrolment": unit.service.begin_totp(account)}),
    )


@router.post("/securite/totp/confirmation")
def confirm_totp(request: Request, code: FormText = "", csrf_token: FormText = "") -> Response:
    errors: dict[str, str] = {}
    check_code(code, errors, "code-totp")

    def confirm(unit: Unit, account: Account) -> Response | Shown:
        if not _factors(unit.session, account).totp_pending:
            # No confirmation field on the page: the error is the form's.
            message = "Aucune application d'authentification n'est en cours de configuration."
            return {"errors": {GENERAL: message}, "status": 422}
        if not errors and unit.service.confirm_totp(account, code):
            return redirect_to(request, "/compte/securite", info="totp-active")
        return {
            "errors": errors or {"code-totp": "Code incorrect ou expiré."},
            "status": 422,
        }

    return signed_in_post(request, csrf_token, confirm)


@router.post("/securite/codes-de-secours")
def new_recovery_codes(request: Request, csrf_token: FormText = "") -> Response:
    """Ten new recovery codes, shown in this answer only; needs a recent step-up."""
    return signed_in_post(
        request,
        csrf_token,
        stepped_up(
            lambda unit, account: {"recovery_codes": unit.service.new_recovery_codes(account)}
        ),
    )


@router.post("/securite/sessions/revocation")
def revoke_session(
    request: Request, session_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    def revoke(unit: Unit, account: Account) -> Response | Shown:
        try:
            target = uuid.UUID(session_id)
        except ValueError:
            target = None
        if target is not None and unit.service.revoke_session(account, target):
            return redirect_to(request, "/compte/securite", info="session-revoquee")
        return {
            "errors": {GENERAL: "Cette session n'existe pas ou est déjà fermée."},
            "status": 404,
        }

    return signed_in_post(request, csrf_token, revoke)


@router.post("/deconnexion", name="account_logout")
def logout(request: Request, csrf_token: FormText = "") -> Response:
    """Ends the session (signed in, or waiting for its second factor)."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    with open_unit(request) as unit:
        known = unit.service.pending(token) is not None
        allowed = known and form_csrf_ok(unit.service, token, csrf_token)
        if allowed:
            unit.service.logout(token)
    if known and not allowed:
        return error_page(
            request, 403, "Requête refusée", "Ce formulaire a expiré. Revenez à la page précédente."
        )
    response = redirect_to(request, "/compte/connexion", info="deconnexion")
    clear_session_cookie(response)
    return response
