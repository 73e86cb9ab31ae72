"""The plumbing that every server-rendered form page shares (``/compte``, ``/dossiers``,
``/securite``...), in one place so that each page module does not redo it its own way.

- Every POST is first checked to come from one of our pages (:func:`refuse_cross_site`).
- Every form carries a CSRF token in its hidden field ``csrf_token``
  (:func:`form_csrf_ok`): a session's own token, or, before any session, the HMAC of a random
  value kept in the ``__Host-`` cookie :data:`FORM_COOKIE` (:class:`AnonymousForm`).
- A POST answers with a 303 to a GET page named by a fixed notice keyword
  (:func:`redirect_to`, :data:`NOTICES`), never a personal value in the URL; or with the form
  again and its French errors (:func:`render_page`, :data:`GENERAL` for the form's own).
- The work runs in one transaction that commits even when a step fails
  (:func:`open_unit`), so a failed attempt that the service counted and audited stays counted.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, cast
from urllib.parse import urlencode

from fastapi import Form, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.responses import RedirectResponse, Response

from labvault.accounts.routes import RequestContext, same_origin
from labvault.accounts.services import (
    AccountService,
    AuthError,
    InvalidInputError,
    PasswordRejected,
    ThrottledError,
)
from labvault.core.db import transaction
from labvault.core.runtime import Runtime

__all__ = [
    "EXPIRED_FORM",
    "FORM_COOKIE",
    "GENERAL",
    "MAX_CODE",
    "MAX_CSRF",
    "MAX_EMAIL",
    "MAX_PASSWORD",
    "MAX_PHRASE",
    "NOTICES",
    "TOO_LONG",
    "AnonymousForm",
    "Attempt",
    "FormText",
    "Unit",
    "anonymous_page",
    "app_url",
    "attempt_anonymous",
    "check_code",
    "check_email",
    "check_password",
    "error_page",
    "form_csrf_ok",
    "from_this_site",
    "headers_of",
    "notice_of",
    "open_unit",
    "redirect_to",
    "refuse_cross_site",
    "render_page",
    "runtime_of",
    "status_of",
    "templates_of",
    "throttled_headers",
]

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
TOO_LONG = "Ce mot de passe est trop long."

FormText = Annotated[str, Form()]

EXPIRED_FORM = (
    "Ce formulaire a expiré. Vérifiez que les cookies sont autorisés pour ce site, "
    "puis envoyez-le à nouveau."
)

# Notices shown after a redirect, named by a fixed keyword in the query string.
NOTICES: Final = {
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


def runtime_of(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)


def templates_of(request: Request) -> Jinja2Templates:
    return cast(Jinja2Templates, request.app.state.templates)


def app_url(request: Request, path: str, **query: str) -> str:
    """A path of this application (no host: nothing breaks behind a TLS proxy)."""
    root_path = str(request.scope.get("root_path", ""))
    suffix = f"?{urlencode(query)}" if query else ""
    return f"{root_path}{path}{suffix}"


def redirect_to(request: Request, path: str, **query: str) -> RedirectResponse:
    """POST-redirect-GET: 303, so the browser follows with a GET."""
    return RedirectResponse(app_url(request, path, **query), status_code=303)


@dataclass
class Unit:
    """One transaction: the account service, the database session, the request's context."""

    context: RequestContext
    session: Session
    service: AccountService


@contextmanager
def open_unit(request: Request, context: RequestContext | None = None) -> Iterator[Unit]:
    """A transaction that commits on a normal exit, so that a failed step which the service
    counted and audited stays counted: callers catch the expected errors inside it."""
    context = context or RequestContext(request, runtime_of(request))
    with transaction(context.runtime.sessions) as session:
        yield Unit(context, session, context.service(session))


def from_this_site(request: Request) -> bool:
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
    return same_origin(request)


def refuse_cross_site(request: Request) -> Response | None:
    """Cross-origin POSTs are refused outright, as the API does."""
    if from_this_site(request):
        return None
    return error_page(request, 403, "Requête refusée", "Cette demande ne vient pas de ce site.")


def error_page(request: Request, status: int, title: str, message: str) -> Response:
    """A French error page with no request reference (the refusals the user can fix)."""
    return templates_of(request).TemplateResponse(
        request,
        "error.html",
        {"status": status, "title": title, "message": message, "show_reference": False},
        status_code=status,
    )


def notice_of(request: Request) -> str | None:
    """The notice named by ``?info=`` (a fixed keyword, never a personal value), if any."""
    return NOTICES.get(request.query_params.get("info", ""))


def render_page(
    request: Request,
    template: str,
    values: Mapping[str, Any],
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    focus: str | None = None,
) -> Response:
    """``template`` with the context every form page expects: its errors (first one
    focused), the id of the form-wide error, no notice unless ``values`` gives one."""
    errors = dict(errors or {})
    # Focus goes to the first field in error, or to the summary for an error of the form.
    if errors:
        focus = next((name for name in errors if name != GENERAL), GENERAL)
    context = {"errors": errors, "focus": focus, "notice": None, "general": GENERAL, **values}
    return templates_of(request).TemplateResponse(
        request, template, context, status_code=status, headers=headers
    )


def throttled_headers(failure: ThrottledError) -> dict[str, str]:
    """``Retry-After`` for a throttled attempt."""
    # Rounded up: a browser that waits exactly this long is not refused again.
    return {"Retry-After": str(max(1, math.ceil(failure.retry_after)))}


def form_csrf_ok(service: AccountService, bound_to: str, presented: str) -> bool:
    """Whether ``presented`` is the CSRF token bound to ``bound_to`` (a session token, or the
    label and random value of an anonymous form). Anything but a short ASCII string is
    wrong before any comparison (``hmac.compare_digest`` only takes ASCII text)."""
    if not presented or len(presented) > MAX_CSRF or not presented.isascii():
        return False
    return service.sessions.check_csrf(bound_to, presented)


# --- forms before any session ---------------------------------------------------------------


@dataclass
class AnonymousForm:
    """The random value behind the CSRF token of a form shown before any session."""

    secret: str
    fresh: bool

    @classmethod
    def of(cls, request: Request) -> AnonymousForm:
        value = request.cookies.get(FORM_COOKIE, "")
        if _FORM_SECRET.fullmatch(value):
            return cls(value, fresh=False)
        return cls(secrets.token_urlsafe(32), fresh=True)

    def token(self, service: AccountService) -> str:
        # A label keeps these tokens apart from those of sessions (made from session tokens).
        return service.sessions.csrf_token(_FORM_LABEL + self.secret)

    def check(self, service: AccountService, presented: str) -> bool:
        return not self.fresh and form_csrf_ok(service, _FORM_LABEL + self.secret, presented)

    def attach(self, response: Response) -> Response:
        if self.fresh:
            response.set_cookie(
                FORM_COOKIE, self.secret, secure=True, httponly=True, samesite="strict", path="/"
            )
        return response


def anonymous_page(
    request: Request,
    template: str,
    values: Mapping[str, Any],
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    form: AnonymousForm | None = None,
    csrf_token: str | None = None,
) -> Response:
    form = form or AnonymousForm.of(request)
    if csrf_token is None:
        with open_unit(request) as unit:
            csrf_token = form.token(unit.service)
    response = render_page(
        request,
        template,
        {"csrf_token": csrf_token, **values},
        errors=errors,
        status=status,
        headers=headers,
    )
    return form.attach(response)


def check_email(email: str, errors: dict[str, str], field_name: str = "email") -> None:
    if not email.strip():
        errors[field_name] = "Saisissez votre adresse e-mail."
    elif len(email) > MAX_EMAIL:
        errors[field_name] = "Saisissez une adresse e-mail valide, par exemple nom@exemple.fr."


def check_password(value: str, errors: dict[str, str], *, missing: str) -> None:
    message = missing if not value else TOO_LONG if len(value) > MAX_PASSWORD else None
    if message is not None:
        errors.update(password=message)


def check_code(code: str, errors: dict[str, str], field_name: str = "code") -> None:
    if not code.strip():
        errors[field_name] = "Saisissez le code."
    elif len(code) > MAX_CODE:
        errors[field_name] = "Ce code est trop long : vérifiez-le."


@dataclass
class Attempt:
    """What a POST of an anonymous form came to, decided inside its transaction."""

    errors: dict[str, str] = field(default_factory=dict)
    throttled: ThrottledError | None = None
    csrf_token: str = ""


def attempt_anonymous(
    request: Request,
    form: AnonymousForm,
    presented: str,
    errors: dict[str, str],
    action: Callable[[Unit], None],
    describe: Callable[[Exception], dict[str, str]],
) -> Attempt:
    """Check the form's CSRF token, then run ``action`` unless the input is already wrong;
    expected failures become form errors and the transaction still commits."""
    outcome = Attempt(errors=dict(errors))
    with open_unit(request) as unit:
        if not form.check(unit.service, presented):
            outcome.errors = {GENERAL: EXPIRED_FORM}
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


def status_of(outcome: Attempt, failure_status: int) -> int:
    """429 if throttled, 403 if the form expired, else ``failure_status``."""
    if outcome.throttled is not None:
        return 429
    if outcome.errors.get(GENERAL) == EXPIRED_FORM:
        return 403
    return failure_status


def headers_of(outcome: Attempt) -> dict[str, str] | None:
    """The ``Retry-After`` header of a throttled attempt, else none."""
    return throttled_headers(outcome.throttled) if outcome.throttled is not None else None
