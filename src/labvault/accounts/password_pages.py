"""French pages to reset a forgotten password and to change it, on ``AccountService``.

``/compte/mot-de-passe/oubli`` asks for the address and always answers the same (invariant
I7): "if there is an account, a link was sent", after the same least time as the API
(``routes.RESET_ANSWER_SECONDS``), the message being delivered once the answer is sent.

``/compte/mot-de-passe/nouveau`` is where the emailed link leads. The link carries its token
in the URL fragment, which browsers send neither to the server nor in ``Referer``: the
page's own script (``static/reset.js``, no inline script under the CSP) moves it into the
form's ``token`` field and removes it from the address bar and the history. Without
JavaScript the same field stays visible, to paste the end of the link into. The form POSTs
the token with the new password, typed twice; a refused password or a mismatch shows the form
again with the token kept in it (the answer is ``no-store``, like every page).

``/compte/securite/mot-de-passe`` changes the password of the signed-in account (a recent
step-up, then current password and new password): every other session is revoked and this
one gets a new token.

Every form works without JavaScript (POST, then a 303 redirect to a GET page with a notice),
carries its CSRF token and is refused from another origin, like the other account pages.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from labvault.accounts import routes
from labvault.accounts.forms import (
    EXPIRED_FORM,
    GENERAL,
    MAX_PASSWORD,
    TOO_LONG,
    AnonymousForm,
    Attempt,
    FormText,
    Unit,
    anonymous_page,
    attempt_anonymous,
    check_email,
    headers_of,
    notice_of,
    open_unit,
    redirect_to,
    refuse_cross_site,
    runtime_of,
    status_of,
)
from labvault.accounts.models import Account, AccountKind, AccountSession
from labvault.accounts.pages import Shown, signed_in_post, stepped_up
from labvault.accounts.routes import (
    SESSION_COOKIE,
    Outbox,
    RequestContext,
    clear_session_cookie,
    set_session_cookie,
)
from labvault.accounts.services import (
    RESET_LINK_INVALID,
    AuthError,
    CurrentPasswordError,
    InvalidInputError,
    PasswordRejected,
    ThrottledError,
)
from labvault.accounts.staff_pages import STAFF_LOGIN_PATH
from labvault.core.crypto.secret import Secret

__all__ = ["MAX_TOKEN", "router"]

router = APIRouter(prefix="/compte", include_in_schema=False)

FORGOT_TEMPLATE: Final = "accounts/mot_de_passe_oubli.html"
RESET_TEMPLATE: Final = "accounts/mot_de_passe_nouveau.html"
MAX_TOKEN: Final = 200
LOGIN_PATH: Final = "/compte/connexion"
"""As the API's ``ResetCompletion.token``: longer is not one of our tokens."""

_INVALID_EMAIL = "Saisissez une adresse e-mail valide, par exemple nom@exemple.fr."
_MISSING_CODE = (
    "Saisissez le code de réinitialisation : la fin du lien reçu par e-mail, après le signe #."
)


# --- forgotten password ---------------------------------------------------------------------


@router.get("/mot-de-passe/oubli", name="account_password_forgotten")
def forgot_password_page(request: Request) -> Response:
    return anonymous_page(request, FORGOT_TEMPLATE, {"values": {}, "notice": notice_of(request)})


@router.post("/mot-de-passe/oubli")
async def forgot_password(
    request: Request, email: FormText = "", csrf_token: FormText = ""
) -> Response:
    """The same answer, after the same least time, whether the address has an account."""
    started = time.monotonic()
    response = await run_in_threadpool(_forgot_password, request, email, csrf_token)
    # Waiting here holds no worker thread.
    await asyncio.sleep(max(0.0, routes.RESET_ANSWER_SECONDS - (time.monotonic() - started)))
    return response


def _forgot_password(request: Request, email: str, csrf_token: str) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    errors: dict[str, str] = {}
    check_email(email, errors)
    outbox = Outbox(runtime_of(request).mailer)
    context = RequestContext(request, runtime_of(request), mailer=outbox)
    form = AnonymousForm.of(request)
    outcome = Attempt(errors=errors)
    with open_unit(request, context) as unit:
        if not form.check(unit.service, csrf_token):
            outcome.errors = {GENERAL: EXPIRED_FORM}
        elif not outcome.errors:
            try:
                unit.service.request_password_reset(email, client_id=context.client_hash)
            except ThrottledError as exc:
                outcome.throttled = exc
                outcome.errors = {GENERAL: str(exc)}
            except InvalidInputError:
                outcome.errors = {"email": _INVALID_EMAIL}
        outcome.csrf_token = form.token(unit.service)
    if not outcome.errors:
        response = redirect_to(request, "/compte/mot-de-passe/oubli", info="lien-envoye")
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


# --- new password from the emailed link -----------------------------------------------------


@router.get("/mot-de-passe/nouveau", name="account_password_reset")
def reset_password_page(request: Request) -> Response:
    """The token is in the link's fragment, which the server never sees: the page's script
    puts it into the form."""
    return anonymous_page(request, RESET_TEMPLATE, {"values": {}})


@router.post("/mot-de-passe/nouveau")
def reset_password(
    request: Request,
    token: FormText = "",
    password: FormText = "",
    password_confirmation: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = token.strip()
    errors: dict[str, str] = {}
    if not token:
        errors["token"] = _MISSING_CODE
    elif len(token) > MAX_TOKEN:
        errors["token"] = RESET_LINK_INVALID
    _check_new_password(password, password_confirmation, errors, "password")

    def describe(failure: Exception) -> dict[str, str]:
        if isinstance(failure, PasswordRejected):
            return {"password": failure.message}
        if isinstance(failure, AuthError):
            return {"token": str(failure)}
        return {GENERAL: str(failure)}

    kinds: list[AccountKind] = []

    def complete(unit: Unit) -> None:
        kinds.append(
            unit.service.complete_password_reset(
                token, Secret(password), client_id=unit.context.client_hash
            )
        )

    form = AnonymousForm.of(request)
    outcome = attempt_anonymous(request, form, csrf_token, errors, complete, describe)
    wrong_link = outcome.errors.get("token") == RESET_LINK_INVALID
    if not outcome.errors:
        # The link's account decides where to log in next (only a valid link gets here).
        login = STAFF_LOGIN_PATH if kinds and kinds[0] is AccountKind.STAFF else LOGIN_PATH
        # Every session of the account was revoked: this browser's too, if it had one.
        response = redirect_to(request, login, info="mot-de-passe-reinitialise")
        if request.cookies.get(SESSION_COOKIE):
            clear_session_cookie(response)
        return response
    # A wrong link keeps its field in error; otherwise the token stays, for the next try.
    return anonymous_page(
        request,
        RESET_TEMPLATE,
        {"values": {"token": token if len(token) <= MAX_TOKEN else ""}},
        errors=outcome.errors,
        status=status_of(outcome, 401 if wrong_link else 422),
        headers=headers_of(outcome),
        form=form,
        csrf_token=outcome.csrf_token,
    )


def _check_new_password(
    password: str, confirmation: str | None, errors: dict[str, str], field_name: str
) -> None:
    """A new password is given, not too long, and typed the same twice (if asked twice)."""
    if not password:
        errors[field_name] = "Choisissez un nouveau mot de passe."
    elif len(password) > MAX_PASSWORD:
        errors[field_name] = TOO_LONG
    elif confirmation is not None and confirmation != password:
        errors[f"{field_name}-confirmation"] = (
            "Les deux mots de passe ne sont pas identiques : saisissez-les à nouveau."
        )


# --- password change, signed in -------------------------------------------------------------


@router.post("/securite/mot-de-passe")
def change_password(
    request: Request,
    current_password: FormText = "",
    new_password: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    errors: dict[str, str] = {}
    if not current_password:
        errors["current-password"] = "Saisissez votre mot de passe actuel."
    elif len(current_password) > MAX_PASSWORD:
        errors["current-password"] = TOO_LONG
    _check_new_password(new_password, None, errors, "new-password")
    token = request.cookies.get(SESSION_COOKIE, "")

    def change(unit: Unit, account: Account) -> Response | Shown:
        if errors:
            return {"errors": errors, "status": 422}
        found = unit.service.current(token)
        assert found is not None  # signed_in_post has just found it
        outcome = _change(unit, found[0], account, current_password, new_password)
        if not isinstance(outcome, Secret):
            return outcome
        response = redirect_to(request, "/compte/securite", info="mot-de-passe-change")
        set_session_cookie(response, outcome, unit.context)
        return response

    return signed_in_post(request, csrf_token, stepped_up(change))


def _change(
    unit: Unit, record: AccountSession, account: Account, current: str, new: str
) -> Shown | Secret[str]:
    """The new session token, or what the security page must show of the failure."""
    try:
        return unit.service.change_password(record, account, Secret(current), Secret(new))
    except ThrottledError as exc:
        return {"errors": {GENERAL: str(exc)}, "status": 429}
    except CurrentPasswordError as exc:
        return {"errors": {"current-password": str(exc)}, "status": 403}
    except PasswordRejected as exc:
        return {"errors": {"new-password": exc.message}, "status": 422}
    except InvalidInputError as exc:
        return {"errors": {"new-password": str(exc)}, "status": 422}
