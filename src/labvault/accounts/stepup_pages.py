"""The French page "Confirmez votre identité" (``/compte/confirmer-identite``): a signed-in
session re-proves a second factor (``labvault.accounts.stepup``), then goes back to
``suite``.

``suite`` is a LOCAL path of this application only (:func:`local_path`): an absolute URL,
a scheme-relative ``//host``, a backslash (which browsers read as a slash), a control
character or anything that is not a plain path is replaced by the security page, so the page
cannot be used to send anyone to another site (open redirect).
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.forms import (
    EXPIRED_FORM,
    GENERAL,
    MAX_CODE,
    FormText,
    Unit,
    app_url,
    check_code,
    form_csrf_ok,
    notice_of,
    open_unit,
    redirect_to,
    refuse_cross_site,
    render_page,
    throttled_headers,
)
from labvault.accounts.models import Account, AccountSession
from labvault.accounts.pages import METHOD_NAMES, STEP_UP_PAGE, back_to_login
from labvault.accounts.routes import SESSION_COOKIE
from labvault.accounts.services import ThrottledError
from labvault.accounts.stepup import StepUp, StepUpFailedError
from labvault.accounts.webauthn import METHOD as PASSKEY

__all__ = ["DEFAULT_NEXT", "local_path", "router"]

router = APIRouter(prefix="/compte", include_in_schema=False)

DEFAULT_NEXT: Final = "/compte/securite"
MAX_NEXT: Final = 512
TEMPLATE: Final = "accounts/confirmer_identite.html"
_FORM_METHODS: Final = ("totp", "email", "recovery")
_NEEDS_SCRIPT = (
    "Votre navigateur doit exécuter JavaScript pour utiliser une clé d'accès. Activez-le, "
    "ou choisissez un autre moyen."
)


def local_path(value: str | None) -> str:
    """``value`` if it is a path of this site (``/compte/...``, with an optional query);
    otherwise :data:`DEFAULT_NEXT`."""
    if not value or len(value) > MAX_NEXT or not value.isascii() or not value.isprintable():
        return DEFAULT_NEXT
    if not value.startswith("/") or value.startswith("//") or "\\" in value or " " in value:
        return DEFAULT_NEXT
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.fragment or not parts.path.startswith("/"):
        return DEFAULT_NEXT
    if parts.path.startswith("//") or "/../" in f"{parts.path}/" or STEP_UP_PAGE in parts.path:
        return DEFAULT_NEXT
    return value


def _signed_in(request: Request, unit: Unit) -> tuple[AccountSession, Account] | Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    found = unit.service.current(token)
    if found is None:
        if token and unit.service.pending(token) is not None:
            return redirect_to(request, "/compte/second-facteur")
        return back_to_login(request, token)
    return found


def _page(
    request: Request,
    unit: Unit,
    record: AccountSession,
    account: Account,
    suite: str,
    **shown: Any,
) -> dict[str, Any]:
    step_up = StepUp(unit.service)
    methods = step_up.methods(account)
    if PASSKEY in methods and unit.service.passkeys.relying_party is None:
        methods = tuple(method for method in methods if method != PASSKEY)
    return {
        "csrf_token": unit.service.sessions.csrf_token(request.cookies.get(SESSION_COOKIE, "")),
        "methods": methods,
        "method_names": METHOD_NAMES,
        "suite": suite,
        "next_url": app_url(request, suite),
        "fresh": step_up.is_fresh(record),
        "code_sent": False,
        **shown,
    }


def _show(request: Request, values: dict[str, Any], **options: Any) -> Response:
    return render_page(request, TEMPLATE, {"notice": None, **values}, **options)


@router.get("/confirmer-identite", name="account_step_up")
def step_up_page(request: Request) -> Response:
    suite = local_path(request.query_params.get("suite"))
    with open_unit(request) as unit:
        found = _signed_in(request, unit)
        if isinstance(found, Response):
            return found
        values = _page(request, unit, *found, suite)
    code_sent = request.query_params.get("info") == "code-confirmation-envoye"
    return _show(
        request,
        {**values, "notice": notice_of(request), "code_sent": code_sent},
        focus="code-email" if code_sent else None,
    )


@router.post("/confirmer-identite/envoi")
def send_code(request: Request, suite: FormText = "", csrf_token: FormText = "") -> Response:
    """Email a step-up code (patients), then show the page again to type it."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    target = local_path(suite)
    errors: dict[str, str] = {}
    options: dict[str, Any] = {}
    with open_unit(request) as unit:
        found = _signed_in(request, unit)
        if isinstance(found, Response):
            return found
        if not form_csrf_ok(unit.service, request.cookies.get(SESSION_COOKIE, ""), csrf_token):
            errors, options["status"] = {GENERAL: EXPIRED_FORM}, 403
        else:
            try:
                StepUp(unit.service).send_email_code(found[1])
            except ThrottledError as exc:
                errors = {GENERAL: str(exc)}
                options.update(status=429, headers=throttled_headers(exc))
            except StepUpFailedError:
                errors = {GENERAL: "Ce moyen n'est pas proposé pour votre compte."}
                options["status"] = 422
        values = _page(request, unit, *found, target)
    if not errors:
        return redirect_to(request, STEP_UP_PAGE, suite=target, info="code-confirmation-envoye")
    return _show(request, values, errors=errors, **options)


@router.post("/confirmer-identite")
def step_up(
    request: Request,
    factor: FormText = "",
    code: FormText = "",
    suite: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    """Check the code of ``factor`` (``totp``, ``email``, ``recovery``); on success, back to
    ``suite``. A passkey is proved by the page's script through the API."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    target = local_path(suite)
    chosen = factor if factor in (*_FORM_METHODS, PASSKEY) else "email"
    field_name = f"code-{chosen}"
    errors: dict[str, str] = {}
    if chosen == PASSKEY:
        errors[GENERAL] = _NEEDS_SCRIPT
    else:
        check_code(code, errors, field_name)
    options: dict[str, Any] = {"status": 422}
    with open_unit(request) as unit:
        found = _signed_in(request, unit)
        if isinstance(found, Response):
            return found
        record, account = found
        if not form_csrf_ok(unit.service, request.cookies.get(SESSION_COOKIE, ""), csrf_token):
            errors, options["status"] = {GENERAL: EXPIRED_FORM}, 403
        elif not errors:
            try:
                StepUp(unit.service).verify(record, account, chosen, code[:MAX_CODE])
            except ThrottledError as exc:
                errors = {GENERAL: str(exc)}
                options.update(status=429, headers=throttled_headers(exc))
            except StepUpFailedError as exc:
                errors = {field_name: str(exc)}
        values = _page(request, unit, record, account, target)
    if not errors:
        if "?" in target:
            return redirect_to(request, target)
        return redirect_to(request, target, info="identite-confirmee")
    if field_name in errors and chosen not in values["methods"]:
        errors = {GENERAL: errors[field_name]}  # no such field on the page
    return _show(request, values, errors=errors, **options)
