"""The passkey forms of the French pages (``labvault.accounts.pages``).

Creating or proving a passkey takes the browser's WebAuthn API, hence a script
(``/static/webauthn.js``, which talks to ``labvault.accounts.webauthn_routes``): its forms
are hidden until the script shows them. Should one be sent without the script, the page
comes back saying so. Removing a passkey is an ordinary form, working without JavaScript.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.forms import (
    GENERAL,
    FormText,
    Unit,
    open_unit,
    redirect_to,
    refuse_cross_site,
)
from labvault.accounts.models import Account
from labvault.accounts.pages import (
    Shown,
    pending_state,
    render_second_factor,
    signed_in_post,
    stepped_up,
)
from labvault.accounts.routes import SESSION_COOKIE
from labvault.accounts.webauthn import PasskeyError

__all__ = ["router"]

router = APIRouter(prefix="/compte", include_in_schema=False)

NEEDS_SCRIPT = (
    "Votre navigateur doit exécuter JavaScript pour utiliser une clé d'accès. Activez-le, "
    "ou choisissez un autre moyen."
)


@router.post("/securite/cles-d-acces")
def add_passkey(request: Request, csrf_token: FormText = "") -> Response:
    """Reached only without the script, which creates the passkey through the API."""
    return signed_in_post(
        request,
        csrf_token,
        lambda unit, account: {"errors": {GENERAL: NEEDS_SCRIPT}, "status": 422},
    )


@router.post("/securite/cles-d-acces/suppression")
def delete_passkey(
    request: Request, passkey_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    def delete(unit: Unit, account: Account) -> Response | Shown:
        try:
            target: uuid.UUID | None = uuid.UUID(passkey_id)
        except ValueError:
            target = None
        try:
            if target is not None and unit.service.passkeys.delete(account, target):
                return redirect_to(request, "/compte/securite", info="cle-acces-retiree")
        except PasskeyError as exc:
            return {"errors": {GENERAL: str(exc)}, "status": 409}
        message = "Cette clé d'accès n'existe pas ou a déjà été retirée."
        return {"errors": {GENERAL: message}, "status": 404}

    return signed_in_post(request, csrf_token, stepped_up(delete))


@router.post("/second-facteur/cle-d-acces")
def use_passkey(request: Request) -> Response:
    """Reached only without the script, which proves the passkey through the API."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    with open_unit(request) as unit:
        state = pending_state(request, unit, token)
    if state.redirect is not None:
        return state.redirect
    return render_second_factor(request, state, errors={GENERAL: NEEDS_SCRIPT}, status=422)
