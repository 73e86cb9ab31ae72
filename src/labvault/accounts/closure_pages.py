"""French pages of the account deletion request (``labvault.accounts.closure``).

``/compte/suppression`` explains what is deleted and what is kept (the laboratory keeps the
patient's record, as the law requires), and asks for the deletion; the POST needs a recent
step-up (else the "Confirmez votre identité" page, which comes back here). Once asked, every
session is revoked and the browser goes to the login page with a notice.

``/compte/suppression/annulation`` is where the emailed cancel link leads: as with the
password-reset link, its token is in the URL fragment, moved into the form by
``static/reset.js`` (or pasted by hand without JavaScript).
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.closure import LINK_INVALID, AccountClosure, StaffSelfDeletionError
from labvault.accounts.forms import (
    GENERAL,
    AnonymousForm,
    FormText,
    Unit,
    anonymous_page,
    attempt_anonymous,
    error_page,
    headers_of,
    open_unit,
    redirect_to,
    refuse_cross_site,
    render_page,
    status_of,
)
from labvault.accounts.models import Account, AccountKind
from labvault.accounts.pages import Shown, signed_in_post, step_up_redirect
from labvault.accounts.routes import SESSION_COOKIE, clear_session_cookie
from labvault.accounts.services import AuthError
from labvault.accounts.stepup import StepUp

__all__ = ["router"]

router = APIRouter(prefix="/compte", include_in_schema=False)

PAGE: Final = "/compte/suppression"
TEMPLATE: Final = "accounts/suppression.html"
CANCEL_TEMPLATE: Final = "accounts/suppression_annulation.html"
MAX_TOKEN: Final = 200
_STAFF_TITLE = "Suppression impossible"
_MISSING_CODE = "Saisissez le code d'annulation : la fin du lien reçu par e-mail, après le signe #."


@router.get("/suppression", name="account_deletion")
def deletion_page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    with open_unit(request) as unit:
        found = unit.service.current(token)
        if found is None:
            return redirect_to(request, "/compte/connexion")
        record, account = found
        if account.kind != AccountKind.PATIENT.value:
            return error_page(request, 403, _STAFF_TITLE, str(StaffSelfDeletionError()))
        values = {
            "csrf_token": unit.service.sessions.csrf_token(token),
            "fresh": StepUp(unit.service).is_fresh(record),
            "grace_days": unit.context.runtime.settings.account_deletion_grace_days,
            "notice": None,
        }
    return render_page(request, TEMPLATE, values)


@router.post("/suppression")
def request_deletion(request: Request, csrf_token: FormText = "") -> Response:
    """Ask for the deletion of the signed-in patient account (needs a recent step-up)."""

    def ask(unit: Unit, account: Account) -> Response | Shown:
        if account.kind != AccountKind.PATIENT.value:
            return error_page(request, 403, _STAFF_TITLE, str(StaffSelfDeletionError()))
        if (step_up := step_up_redirect(request, unit, PAGE)) is not None:
            return step_up
        found = unit.service.current(request.cookies.get(SESSION_COOKIE, ""))
        assert found is not None  # signed_in_post has just found it
        AccountClosure(unit.service).request(*found)
        response = redirect_to(request, "/compte/connexion", info="suppression-demandee")
        clear_session_cookie(response)
        return response

    return signed_in_post(request, csrf_token, ask)


@router.get("/suppression/annulation", name="account_deletion_cancel")
def cancel_page(request: Request) -> Response:
    """The token is in the link's fragment, which the server never sees."""
    return anonymous_page(request, CANCEL_TEMPLATE, {"values": {}})


@router.post("/suppression/annulation")
def cancel(request: Request, token: FormText = "", csrf_token: FormText = "") -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = token.strip()
    errors: dict[str, str] = {}
    if not token:
        errors["token"] = _MISSING_CODE
    elif len(token) > MAX_TOKEN:
        errors["token"] = LINK_INVALID

    def describe(failure: Exception) -> dict[str, str]:
        if isinstance(failure, AuthError):
            return {"token": str(failure)}
        return {GENERAL: str(failure)}

    form = AnonymousForm.of(request)
    outcome = attempt_anonymous(
        request,
        form,
        csrf_token,
        errors,
        lambda unit: AccountClosure(unit.service).cancel(token, client_id=unit.context.client_hash),
        describe,
    )
    if not outcome.errors:
        return redirect_to(request, "/compte/connexion", info="suppression-annulee")
    wrong_link = outcome.errors.get("token") == LINK_INVALID
    return anonymous_page(
        request,
        CANCEL_TEMPLATE,
        {"values": {"token": token if len(token) <= MAX_TOKEN else ""}},
        errors=outcome.errors,
        status=status_of(outcome, 401 if wrong_link else 422),
        headers=headers_of(outcome),
        form=form,
        csrf_token=outcome.csrf_token,
    )
