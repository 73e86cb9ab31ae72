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
import math
import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Final, cast
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import segno
from fastapi import APIRouter, Form, Request
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse, Response

from labvault.accounts.models import Account, AccountKind, RecoveryCode, TotpCredential
from labvault.accounts.routes import (
    SESSION_COOKIE,
    _clear_session_cookie,
    _Context,
    _same_origin,
    _set_session_cookie,
)
from labvault.accounts.services import (
    AccountService,
    AuthError,
    InvalidInputError,
    PasswordRejected,
    ThrottledError,
    TotpEnrolment,
)
from labvault.accounts.stepup import StepUp, StepUpRequired
from labvault.accounts.webauthn import PasskeyPanel
from labvault.core.contact import parse_email
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.runtime import Runtime

__all__ = ["FORM_COOKIE", "router"]

router = APIRouter(prefix="/compte", include_in_schema=False)

FORM_COOKIE: Final = "__Host-labvault-form"
"""Random value that binds the CSRF token of the forms shown before any session."""
_FORM_LABEL: Final = "labvault/v1|accounts|anonymous-form|"
_FORM_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
GENERAL: Final = "formulaire"
"""Key of an error about the form as a whole (shown in the summary only)."""

MAX_EMAIL = 320
MAX_PASSWORD = 1024
MAX_PHRASE = 200
MAX_CODE = 32
MAX_CSRF = 128
_TOO_LONG = "Ce mot de passe est trop long."
PARIS = ZoneInfo("Europe/Paris")

FormText = Annotated[str, Form()]

_EXPIRED_FORM = (
    "Ce formulaire a expiré. Vérifiez que les cookies sont autorisés pour ce site, "
    "puis envoyez-le à nouveau."
)
_METHODS: Final = ("totp", "email", "recovery")
_METHOD_NAMES: Final = {
    "email": "code reçu par e-mail",
    "totp": "application d'authentification",
    "recovery": "code de secours",
    "webauthn": "clé d'accès",
}

# Notices shown after a redirect, named by a fixed keyword in the query string.
_NOTICES: Final = {
    "code-envoye": "Si cette adresse peut recevoir un compte, un code de confirmation vient "
    "d'y être envoyé. Il est valable 10 minutes.",
    "adresse-confirmee": "Votre adresse e-mail est confirmée. Vous pouvez vous connecter.",
    "deconnexion": "Vous êtes déconnecté.",
    "session-expiree": "Votre session a expiré. Connectez-vous à nouveau.",
    "code-connexion-envoye": "Un code de connexion vient d'être envoyé à votre adresse "
    "e-mail. Il est valable 10 minutes.",
    "totp-active": "Votre application d'authentification est activée : elle vous sera "
    "proposée à votre prochaine connexion.",
    "session-revoquee": "La session a été fermée.",
    "lien-envoye": "Si un compte correspond à cette adresse, un lien pour choisir un nouveau "
    "mot de passe vient d'y être envoyé. Il est valable 15 minutes et ne sert qu'une fois.",
    "mot-de-passe-reinitialise": "Votre mot de passe est changé et tous vos appareils ont été "
    "déconnectés. Connectez-vous avec votre nouveau mot de passe.",
    "mot-de-passe-change": "Votre mot de passe est changé. Vos autres appareils ont été "
    "déconnectés.",
    "cle-acces-ajoutee": "Votre clé d'accès est enregistrée : elle vous sera proposée à votre "
    "prochaine connexion.",
    "cle-acces-retiree": "La clé d'accès a été retirée de votre compte.",
    "confirmation-requise": "Pour des raisons de sécurité, confirmez votre identité avant "
    "cette action. Vous pourrez ensuite la faire pendant quelques minutes.",
    "code-confirmation-envoye": "Un code de confirmation vient d'être envoyé à votre adresse "
    "e-mail. Il est valable 10 minutes.",
    "identite-confirmee": "Votre identité est confirmée : vous pouvez faire les actions "
    "sensibles pendant quelques minutes.",
    "suppression-demandee": "La suppression de votre compte est demandée et vous avez été "
    "déconnecté de tous vos appareils. Un e-mail vous le confirme, avec un lien pour annuler.",
    "suppression-annulee": "La suppression de votre compte est annulée. Vous pouvez vous "
    "connecter.",
}


# --- plumbing -------------------------------------------------------------------------------


def _runtime(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)


def _templates(request: Request) -> Jinja2Templates:
    return cast(Jinja2Templates, request.app.state.templates)


def _url(request: Request, path: str, **query: str) -> str:
    """A path of this application (no host: nothing breaks behind a TLS proxy)."""
    root_path = str(request.scope.get("root_path", ""))
    suffix = f"?{urlencode(query)}" if query else ""
    return f"{root_path}{path}{suffix}"


def _redirect(request: Request, path: str, **query: str) -> RedirectResponse:
    """POST-redirect-GET: 303, so the browser follows with a GET."""
    return RedirectResponse(_url(request, path, **query), status_code=303)


@dataclass
class _Unit:
    """One transaction: the account service, the database session, the request's context."""

    context: _Context
    session: Session
    service: AccountService


@contextmanager
def _unit(request: Request, context: _Context | None = None) -> Iterator[_Unit]:
    """A transaction that commits on a normal exit, so that a failed step which the service
    counted and audited stays counted: callers catch the expected errors inside it."""
    context = context or _Context(request, _runtime(request))
    with transaction(context.runtime.sessions) as session:
        yield _Unit(context, session, context.service(session))


def _from_this_site(request: Request) -> bool:
    """Whether a form POST comes from one of our own pages.

    Under ``Referrer-Policy: no-referrer`` browsers send ``Origin: null`` with a form
    submission, even a same-origin one, so the API's Origin check cannot decide alone.
    Fetch Metadata can: ``Sec-Fetch-Site`` is set by the browser (no page can forge it) and
    says ``same-origin`` for our own forms. A browser without Fetch Metadata that sends
    ``Origin: null`` is left to the CSRF token (and the SameSite=Strict cookies).
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    if request.headers.get("origin") == "null":
        return True
    return _same_origin(request)


def _refused(request: Request) -> Response | None:
    """Cross-origin POSTs are refused outright, as the API does."""
    if _from_this_site(request):
        return None
    return _error_page(request, 403, "Requête refusée", "Cette demande ne vient pas de ce site.")


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    return _templates(request).TemplateResponse(
        request,
        "error.html",
        {"status": status, "title": title, "message": message, "show_reference": False},
        status_code=status,
    )


def _notice(request: Request) -> str | None:
    return _NOTICES.get(request.query_params.get("info", ""))


def _render(
    request: Request,
    template: str,
    values: Mapping[str, Any],
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    focus: str | None = None,
) -> Response:
    errors = dict(errors or {})
    # Focus goes to the first field in error, or to the summary for an error of the form.
    if errors:
        focus = next((name for name in errors if name != GENERAL), GENERAL)
    context = {"errors": errors, "focus": focus, "notice": None, "general": GENERAL, **values}
    return _templates(request).TemplateResponse(
        request, template, context, status_code=status, headers=headers
    )


def _throttled_headers(failure: ThrottledError) -> dict[str, str]:
    # Rounded up: a browser that waits exactly this long is not refused again.
    return {"Retry-After": str(max(1, math.ceil(failure.retry_after)))}


def _csrf_ok(service: AccountService, bound_to: str, presented: str) -> bool:
    """Whether ``presented`` is the CSRF token bound to ``bound_to`` (a session token, or the
    label and random value of an anonymous form). Anything but a short ASCII string is
    wrong before any comparison (``hmac.compare_digest`` only takes ASCII text)."""
    if not presented or len(presented) > MAX_CSRF or not presented.isascii():
        return False
    return service.sessions.check_csrf(bound_to, presented)


# --- forms before any session ---------------------------------------------------------------


@dataclass
class _AnonymousForm:
    """The random value behind the CSRF token of a form shown before any session."""

    secret: str
    fresh: bool

    @classmethod
    def of(cls, request: Request) -> _AnonymousForm:
        value = request.cookies.get(FORM_COOKIE, "")
        if _FORM_SECRET.fullmatch(value):
            return cls(value, fresh=False)
        return cls(secrets.token_urlsafe(32), fresh=True)

    def token(self, service: AccountService) -> str:
        # A label keeps these tokens apart from those of sessions (made from session tokens).
        return service.sessions.csrf_token(_FORM_LABEL + self.secret)

    def check(self, service: AccountService, presented: str) -> bool:
        return not self.fresh and _csrf_ok(service, _FORM_LABEL + self.secret, presented)

    def attach(self, response: Response) -> Response:
        if self.fresh:
            response.set_cookie(
                FORM_COOKIE, self.secret, secure=True, httponly=True, samesite="strict", path="/"
            )
        return response


def _anonymous_page(
    request: Request,
    template: str,
    values: Mapping[str, Any],
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    form: _AnonymousForm | None = None,
    csrf_token: str | None = None,
) -> Response:
    form = form or _AnonymousForm.of(request)
    if csrf_token is None:
        with _unit(request) as unit:
            csrf_token = form.token(unit.service)
    response = _render(
        request,
        template,
        {"csrf_token": csrf_token, **values},
        errors=errors,
        status=status,
        headers=headers,
    )
    return form.attach(response)


def _check_email(email: str, errors: dict[str, str], field_name: str = "email") -> None:
    if not email.strip():
        errors[field_name] = "Saisissez votre adresse e-mail."
    elif len(email) > MAX_EMAIL:
        errors[field_name] = "Saisissez une adresse e-mail valide, par exemple nom@exemple.fr."


def _check_password(value: str, errors: dict[str, str], *, missing: str) -> None:
    message = missing if not value else _TOO_LONG if len(value) > MAX_PASSWORD else None
    if message is not None:
        errors.update(password=message)


def _check_code(code: str, errors: dict[str, str], field_name: str = "code") -> None:
    if not code.strip():
        errors[field_name] = "Saisissez le code."
    elif len(code) > MAX_CODE:
        errors[field_name] = "Ce code est trop long : vérifiez-le."


@dataclass
class _Attempt:
    """What a POST of an anonymous form came to, decided inside its transaction."""

    errors: dict[str, str] = field(default_factory=dict)
    throttled: ThrottledError | None = None
    csrf_token: str = ""


def _attempt_anonymous(
    request: Request,
    form: _AnonymousForm,
    presented: str,
    errors: dict[str, str],
    action: Callable[[_Unit], None],
    describe: Callable[[Exception], dict[str, str]],
) -> _Attempt:
    """Check the form's CSRF token, then run ``action`` unless the input is already wrong;
    expected failures become form errors and the transaction still commits."""
    outcome = _Attempt(errors=dict(errors))
    with _unit(request) as unit:
        if not form.check(unit.service, presented):
            outcome.errors = {GENERAL: _EXPIRED_FORM}
        elif not outcome.errors:
            try:
                action(unit)
            except ThrottledError as exc:
                outcome.throttled = exc
                outcome.errors = {GENERAL: str(exc)}
            except (AuthError, InvalidInputError, PasswordRejected) as exc:
                outcome.errors = describe(exc)
        outcome.csrf_token = form.token(unit.service)
    return outcome


def _status_of(outcome: _Attempt, failure_status: int) -> int:
    if outcome.throttled is not None:
        return 429
    if outcome.errors.get(GENERAL) == _EXPIRED_FORM:
        return 403
    return failure_status


def _headers_of(outcome: _Attempt) -> dict[str, str] | None:
    return _throttled_headers(outcome.throttled) if outcome.throttled is not None else None


# --- sign-up and proof of the address -------------------------------------------------------


@router.get("/inscription", name="account_sign_up")
def sign_up_page(request: Request) -> Response:
    return _anonymous_page(request, "accounts/inscription.html", {"values": {}})


@router.post("/inscription")
def sign_up(
    request: Request,
    email: FormText = "",
    password: FormText = "",
    security_phrase: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    if (refused := _refused(request)) is not None:
        return refused
    errors: dict[str, str] = {}
    _check_email(email, errors)
    _check_password(password, errors, missing="Choisissez un mot de passe.")
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

    form = _AnonymousForm.of(request)
    outcome = _attempt_anonymous(
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
        return _redirect(request, "/compte/confirmation", info="code-envoye")
    return _anonymous_page(
        request,
        "accounts/inscription.html",
        {"values": {"email": email, "security_phrase": security_phrase}},
        errors=outcome.errors,
        status=_status_of(outcome, 422),
        headers=_headers_of(outcome),
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
    return _anonymous_page(
        request, "accounts/confirmation.html", {"values": {}, "notice": _notice(request)}
    )


@router.post("/confirmation")
def confirm_email(
    request: Request, email: FormText = "", code: FormText = "", csrf_token: FormText = ""
) -> Response:
    if (refused := _refused(request)) is not None:
        return refused
    errors: dict[str, str] = {}
    _check_email(email, errors)
    _check_code(code, errors)
    form = _AnonymousForm.of(request)
    outcome = _attempt_anonymous(
        request,
        form,
        csrf_token,
        errors,
        lambda unit: unit.service.confirm_email(email, code),
        lambda failure: {"code": str(failure)},
    )
    if not outcome.errors:
        return _redirect(request, "/compte/connexion", info="adresse-confirmee")
    return _anonymous_page(
        request,
        "accounts/confirmation.html",
        {"values": {"email": email}},
        errors=outcome.errors,
        status=_status_of(outcome, 422),
        headers=_headers_of(outcome),
        form=form,
        csrf_token=outcome.csrf_token,
    )


# --- login ----------------------------------------------------------------------------------


@router.get("/connexion", name="account_login")
def login_page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    form = _AnonymousForm.of(request)
    with _unit(request) as unit:
        signed_in = bool(token) and unit.service.current(token) is not None
        csrf_token = form.token(unit.service)
    if signed_in:
        return _redirect(request, "/compte/securite")
    return _anonymous_page(
        request,
        "accounts/connexion.html",
        {"values": {}, "notice": _notice(request)},
        form=form,
        csrf_token=csrf_token,
    )


@router.post("/connexion")
def login(
    request: Request, email: FormText = "", password: FormText = "", csrf_token: FormText = ""
) -> Response:
    if (refused := _refused(request)) is not None:
        return refused
    errors: dict[str, str] = {}
    _check_email(email, errors)
    _check_password(password, errors, missing="Saisissez votre mot de passe.")
    tokens: list[tuple[Secret[str], _Context]] = []

    def log_in(unit: _Unit) -> None:
        pending = unit.service.login(
            email,
            Secret(password),
            client_id=unit.context.client_hash,
            client_hash=unit.context.client_hash,
        )
        tokens.append((pending.token, unit.context))

    form = _AnonymousForm.of(request)
    outcome = _attempt_anonymous(
        request, form, csrf_token, errors, log_in, lambda failure: {GENERAL: str(failure)}
    )
    if not outcome.errors and tokens:
        response = _redirect(request, "/compte/second-facteur")
        token, context = tokens[0]
        _set_session_cookie(response, token, context)
        return response
    return _anonymous_page(
        request,
        "accounts/connexion.html",
        {"values": {"email": email}},
        errors=outcome.errors,
        status=_status_of(outcome, 401),
        headers=_headers_of(outcome),
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


def _back_to_login(request: Request, token: str) -> Response:
    """To the login page; a session that has ended is said so, and its cookie dropped."""
    if not token:
        return _redirect(request, "/compte/connexion")
    response = _redirect(request, "/compte/connexion", info="session-expiree")
    _clear_session_cookie(response)
    return response


def _pending_state(request: Request, unit: _Unit, token: str) -> _Pending:
    found = unit.service.pending(token)
    if found is None:
        return _Pending(redirect=_back_to_login(request, token))
    record, account = found
    if record.second_factor_at is not None:
        return _Pending(redirect=_redirect(request, "/compte/securite"))
    factors = _factors(unit.session, account)
    if account.kind == AccountKind.STAFF.value and not unit.service._factors(account):
        # No factor yet: a staff login enrols one first (labvault.accounts.invitations).
        return _Pending(redirect=_redirect(request, "/compte/activation"))
    return _Pending(
        csrf_token=unit.service.sessions.csrf_token(token),
        factors=replace(factors, methods=unit.service.passkeys.offered(account, factors.methods)),
    )


def _second_factor_page(
    request: Request,
    state: _Pending,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    notice: str | None = None,
) -> Response:
    assert state.factors is not None
    code_sent = notice == _NOTICES["code-connexion-envoye"]
    return _render(
        request,
        "accounts/second_facteur.html",
        {
            "csrf_token": state.csrf_token,
            "methods": state.factors.methods,
            "method_names": _METHOD_NAMES,
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
    with _unit(request) as unit:
        state = _pending_state(request, unit, token)
    if state.redirect is not None:
        return state.redirect
    return _second_factor_page(request, state, notice=_notice(request))


@router.post("/second-facteur/envoi")
def send_login_code(request: Request, csrf_token: FormText = "") -> Response:
    if (refused := _refused(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    errors: dict[str, str] = {}
    throttled: ThrottledError | None = None
    with _unit(request) as unit:
        state = _pending_state(request, unit, token)
        if state.redirect is None:
            if not _csrf_ok(unit.service, token, csrf_token):
                errors = {GENERAL: _EXPIRED_FORM}
            else:
                try:
                    unit.service.send_login_code(token)
                except ThrottledError as exc:
                    throttled = exc
                    errors = {GENERAL: str(exc)}
                except AuthError:
                    state = _Pending(redirect=_back_to_login(request, token))
    if state.redirect is not None:
        return state.redirect
    if not errors:
        return _redirect(request, "/compte/second-facteur", info="code-connexion-envoye")
    return _second_factor_page(
        request,
        state,
        errors=errors,
        status=429 if throttled else 403,
        headers=_throttled_headers(throttled) if throttled else None,
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
    if (refused := _refused(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    chosen = factor if factor in _METHODS else "email"
    field_name = f"code-{chosen}"
    errors: dict[str, str] = {}
    _check_code(code, errors, field_name)
    throttled: ThrottledError | None = None
    status = 422
    opened = None
    context = _Context(request, _runtime(request))
    with _unit(request, context) as unit:
        state = _pending_state(request, unit, token)
        if state.redirect is None:
            if not _csrf_ok(unit.service, token, csrf_token):
                errors, status = {GENERAL: _EXPIRED_FORM}, 403
            elif not errors:
                try:
                    opened = unit.service.second_factor(token, chosen, code)
                except ThrottledError as exc:
                    throttled = exc
                    errors, status = {GENERAL: str(exc)}, 429
                except AuthError as exc:
                    errors, status = {field_name: str(exc)}, 401
                    # The failure may have locked the account, ending the pending session.
                    state = _pending_state(request, unit, token)
    if opened is not None:
        response = _redirect(request, "/compte/securite")
        _set_session_cookie(response, opened.token, context)
        return response
    if state.redirect is not None:
        return state.redirect
    assert state.factors is not None
    if field_name in errors and chosen not in state.factors.methods:
        # No such field on the page: the error is the form's.
        errors = {GENERAL: errors[field_name]}
    return _second_factor_page(
        request,
        state,
        errors=errors,
        status=status,
        headers=_throttled_headers(throttled) if throttled else None,
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


def _paris(moment: dt.datetime) -> str:
    local = moment.astimezone(PARIS)
    return f"le {local:%d/%m/%Y} à {local:%H:%M}"


def _security_state(request: Request, unit: _Unit, token: str) -> _Security:
    found = unit.service.current(token)
    if found is None:
        if token and unit.service.pending(token) is not None:
            return _Security(redirect=_redirect(request, "/compte/second-facteur"))
        return _Security(redirect=_back_to_login(request, token))
    record, account = found
    rows = [
        _SessionRow(
            id=item.id,
            created_at=_paris(item.created_at),
            last_seen_at=_paris(item.last_seen_at),
            second_factor=_METHOD_NAMES.get(
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


def _qr_svg(uri: str) -> Markup:
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
    return _render(
        request,
        "accounts/securite.html",
        {
            "csrf_token": state.csrf_token,
            "factors": state.factors,
            "sessions": state.sessions,
            "notice": notice,
            "enrolment": enrolment,
            "qr_svg": _qr_svg(enrolment.uri) if enrolment is not None else None,
            "recovery_codes": recovery_codes,
            "passkeys": state.passkeys,
            "stepped_up": state.stepped_up,
            "is_patient": state.account is not None
            and state.account.kind == AccountKind.PATIENT.value,
        },
        errors=errors,
        status=status,
    )


_Shown = dict[str, Any]
"""What the security page shows once after a POST: ``errors``, ``status``, ``enrolment``..."""
_SignedInAction = Callable[[_Unit, Account], Response | _Shown]


def _signed_in_post(request: Request, csrf_token: str, action: _SignedInAction) -> Response:
    """Run ``action`` for the signed-in account once the origin and the CSRF token are right.

    ``action`` answers with a response (a redirect), or with what the security page, shown
    again as it is now, must show once (a new secret, new codes, errors).
    """
    if (refused := _refused(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    with _unit(request) as unit:
        state = _security_state(request, unit, token)
        if state.redirect is not None:
            return state.redirect
        assert state.account is not None
        if not _csrf_ok(unit.service, token, csrf_token):
            shown: _Shown = {"errors": {GENERAL: _EXPIRED_FORM}, "status": 403}
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
    with _unit(request) as unit:
        state = _security_state(request, unit, token)
    if state.redirect is not None:
        return state.redirect
    return _security_page(request, state, notice=_notice(request))


STEP_UP_PAGE: Final = "/compte/confirmer-identite"
"""The page that re-proves a second factor (``labvault.accounts.stepup_pages``)."""


def _step_up_redirect(request: Request, unit: _Unit, suite: str) -> Response | None:
    """``None`` if the request's session has a recent step-up; else a redirect to the page
    that asks for one, then comes back to ``suite`` (a local path). The refusal is audited."""
    found = unit.service.current(request.cookies.get(SESSION_COOKIE, ""))
    if found is None:
        return _back_to_login(request, request.cookies.get(SESSION_COOKIE, ""))
    try:
        StepUp(unit.service).require(*found)
    except StepUpRequired:
        return _redirect(request, STEP_UP_PAGE, suite=suite, info="confirmation-requise")
    return None


def _stepped_up(action: _SignedInAction, suite: str = "/compte/securite") -> _SignedInAction:
    """``action``, once the session has a recent step-up (else the step-up page)."""

    def run(unit: _Unit, account: Account) -> Response | _Shown:
        return _step_up_redirect(unit.context.request, unit, suite) or action(unit, account)

    return run


@router.post("/securite/totp")
def begin_totp(request: Request, csrf_token: FormText = "") -> Response:
    """A new authenticator secret, shown in this answer only (never in a URL); needs a
    recent step-up."""
    return _signed_in_post(
        request,
        csrf_token,
        _stepped_up(lambda unit, account: {"enrolment": unit.service.begin_totp(account)}),
    )


@router.post("/securite/totp/confirmation")
def confirm_totp(request: Request, code: FormText = "", csrf_token: FormText = "") -> Response:
    errors: dict[str, str] = {}
    _check_code(code, errors, "code-totp")

    def confirm(unit: _Unit, account: Account) -> Response | _Shown:
        if not _factors(unit.session, account).totp_pending:
            # No confirmation field on the page: the error is the form's.
            message = "Aucune application d'authentification n'est en cours de configuration."
            return {"errors": {GENERAL: message}, "status": 422}
        if not errors and unit.service.confirm_totp(account, code):
            return _redirect(request, "/compte/securite", info="totp-active")
        return {
            "errors": errors or {"code-totp": "Code incorrect ou expiré."},
            "status": 422,
        }

    return _signed_in_post(request, csrf_token, confirm)


@router.post("/securite/codes-de-secours")
def new_recovery_codes(request: Request, csrf_token: FormText = "") -> Response:
    """Ten new recovery codes, shown in this answer only; needs a recent step-up."""
    return _signed_in_post(
        request,
        csrf_token,
        _stepped_up(
            lambda unit, account: {"recovery_codes": unit.service.new_recovery_codes(account)}
        ),
    )


@router.post("/securite/sessions/revocation")
def revoke_session(
    request: Request, session_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    def revoke(unit: _Unit, account: Account) -> Response | _Shown:
        try:
            target = uuid.UUID(session_id)
        except ValueError:
            target = None
        if target is not None and unit.service.revoke_session(account, target):
            return _redirect(request, "/compte/securite", info="session-revoquee")
        return {
            "errors": {GENERAL: "Cette session n'existe pas ou est déjà fermée."},
            "status": 404,
        }

    return _signed_in_post(request, csrf_token, revoke)


@router.post("/deconnexion", name="account_logout")
def logout(request: Request, csrf_token: FormText = "") -> Response:
    """Ends the session (signed in, or waiting for its second factor)."""
    if (refused := _refused(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    with _unit(request) as unit:
        known = unit.service.pending(token) is not None
        allowed = known and _csrf_ok(unit.service, token, csrf_token)
        if allowed:
            unit.service.logout(token)
    if known and not allowed:
        return _error_page(
            request, 403, "Requête refusée", "Ce formulaire a expiré. Revenez à la page précédente."
        )
    response = _redirect(request, "/compte/connexion", info="deconnexion")
    _clear_session_cookie(response)
    return response
