"""French pages of the security officers: "Accès exceptionnels" (break-glass grants, their
justification, the review buttons) and "Alertes" (with acknowledgement).

No JS; every POST carries the session's CSRF token. Anyone but a security officer gets the
"page introuvable" 404 page. Grants and alerts name patients and staff by id only.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from typing import Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.callers import Caller, CallerNotFoundError, run_page_as_caller
from labvault.accounts.forms import FormText, redirect_to, render_page
from labvault.accounts.routes import SESSION_COOKIE
from labvault.security.alerts import KIND_LABELS
from labvault.security.breakglass import ReviewOutcome
from labvault.security.console import acknowledge_alert, alerts, is_security_officer, review_of
from labvault.security.routes import review_list

__all__ = ["ALERTS_PATH", "GRANTS_PATH", "router"]

router = APIRouter(prefix="/securite", include_in_schema=False)

GRANTS_PATH: Final = "/securite/acces-exceptionnels"
ALERTS_PATH: Final = "/securite/alertes"
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
REASON_NAMES: Final = {
    "emergency": "Urgence",
    "walk-in": "Patient à l'accueil sans rendez-vous",
    "continuity": "Continuité des soins",
    "patient-request": "Demande du patient",
}
OUTCOME_NAMES: Final = {"justified": "Justifié", "unjustified": "Injustifié"}
NOTICES: Final = {
    "examine": "Votre avis est enregistré.",
    "deja-examine": "Cet accès avait déjà été examiné.",
    "alerte-vue": "L'alerte est marquée comme prise en compte.",
}


def _officer(caller: Caller) -> None:
    if not is_security_officer(caller):
        raise CallerNotFoundError


def _csrf(request: Request, caller: Caller) -> str:
    return caller.service.sessions.csrf_token(request.cookies.get(SESSION_COOKIE, ""))


def _when(value: object) -> str:
    if not isinstance(value, dt.datetime):
        return ""
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return aware.astimezone(PARIS).strftime("%d/%m/%Y %H:%M")


@router.get("/acces-exceptionnels", name="security_grants")
def grants_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        found = review_list(caller)
        return render_page(
            request,
            "securite/acces.html",
            {
                "grants": found,
                "csrf_token": _csrf(request, caller),
                "reasons": REASON_NAMES,
                "outcomes": OUTCOME_NAMES,
                "when": _when,
                "notice": NOTICES.get(request.query_params.get("info", "")),
            },
            headers={"Cache-Control": "no-store"},
        )

    return run_page_as_caller(request, show)


@router.get("/acces-exceptionnels/{grant_id}", name="security_grant")
def grant_page(grant_id: uuid.UUID, request: Request) -> Response:
    def show(caller: Caller) -> Response:
        review = review_of(caller)
        grant = next((g for g in review.grants(unreviewed_only=False) if g.id == grant_id), None)
        if grant is None:
            raise CallerNotFoundError
        text = review.justification(grant_id)
        return render_page(
            request,
            "securite/acces_detail.html",
            {
                "grant": grant,
                "justification": text,
                "csrf_token": _csrf(request, caller),
                "reasons": REASON_NAMES,
                "outcomes": OUTCOME_NAMES,
                "when": _when,
            },
            headers={"Cache-Control": "no-store"},
        )

    return run_page_as_caller(request, show)


@router.post("/acces-exceptionnels/{grant_id}/avis")
def review_grant(
    grant_id: uuid.UUID, request: Request, outcome: FormText = "", csrf_token: FormText = ""
) -> Response:
    def review(caller: Caller) -> Response:
        reviewer = review_of(caller)
        if outcome not in ReviewOutcome.ALL:
            raise CallerNotFoundError
        if not any(g.id == grant_id for g in reviewer.grants(unreviewed_only=False)):
            raise CallerNotFoundError
        done = reviewer.review(grant_id, outcome)
        return redirect_to(request, GRANTS_PATH, info="examine" if done else "deja-examine")

    return run_page_as_caller(request, review, csrf_token=csrf_token)


@router.get("/alertes", name="security_alerts")
def alerts_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        _officer(caller)
        return render_page(
            request,
            "securite/alertes.html",
            {
                "alerts": alerts(caller),
                "csrf_token": _csrf(request, caller),
                "kinds": KIND_LABELS,
                "when": _when,
                "notice": NOTICES.get(request.query_params.get("info", "")),
            },
            headers={"Cache-Control": "no-store"},
        )

    return run_page_as_caller(request, show)


@router.post("/alertes/{alert_id}/prise-en-compte")
def acknowledge(alert_id: uuid.UUID, request: Request, csrf_token: FormText = "") -> Response:
    def ack(caller: Caller) -> Response:
        if acknowledge_alert(caller, alert_id) is None:
            raise CallerNotFoundError
        return redirect_to(request, ALERTS_PATH, info="alerte-vue")

    return run_page_as_caller(request, ack, csrf_token=csrf_token)
