"""French pages of the security officers: "Accès exceptionnels" (break-glass grants, their
justification, the review buttons), "Alertes" (with acknowledgement) and "Comptes bloqués"
(principals locked by the exfiltration guard, and their four-eyes unlock).

No JS; every POST carries the session's CSRF token. Anyone but a security officer gets the
"page introuvable" 404 page. Grants and alerts name patients and staff by id only.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from dataclasses import dataclass
from typing import Final

from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.responses import Response

from labvault.accounts.callers import Caller, CallerNotFoundError, run_page_as_caller
from labvault.accounts.forms import FormText, redirect_to, render_page
from labvault.accounts.routes import SESSION_COOKIE
from labvault.security.alerts import KIND_LABELS
from labvault.security.anomalies import ANOMALY_LABELS
from labvault.security.breakglass import ReviewOutcome
from labvault.security.console import (
    AlertSummary,
    acknowledge_alert,
    alerts,
    is_security_officer,
    review_of,
)
from labvault.security.guard_models import AnomalyFinding, UnlockReason
from labvault.security.routes import review_list
from labvault.security.unlock import FourEyesUnlock, UnlockError, UnlockProblem

__all__ = ["ALERTS_PATH", "GRANTS_PATH", "LOCKED_PATH", "router"]

router = APIRouter(prefix="/securite", include_in_schema=False)

GRANTS_PATH: Final = "/securite/acces-exceptionnels"
ALERTS_PATH: Final = "/securite/alertes"
LOCKED_PATH: Final = "/securite/comptes-bloques"
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
    "demande": "Demande enregistrée : un autre responsable de la sécurité doit l'approuver.",
    "debloque": "Le compte est débloqué.",
    "annulee": "La demande de déblocage est retirée.",
}
UNLOCK_ERRORS: Final = {
    UnlockProblem.SAME_OFFICER.value: "Vous avez fait cette demande : un autre responsable de "
    "la sécurité doit l'approuver.",
    UnlockProblem.OWN_ACCOUNT.value: "Vous ne pouvez pas participer au déblocage de votre "
    "propre compte.",
    UnlockProblem.ALREADY_REQUESTED.value: "Une demande de déblocage est déjà en attente pour "
    "ce compte.",
    UnlockProblem.NOT_LOCKED.value: "Ce compte n'est plus bloqué.",
    UnlockProblem.NO_REQUEST.value: "Cette demande n'est plus en attente (approuvée, retirée "
    "ou expirée).",
    "motif": "Choisissez le motif du déblocage.",
}
UNLOCK_REASONS: Final = {
    UnlockReason.FALSE_POSITIVE.value: "Fausse alerte : les consultations étaient légitimes",
    UnlockReason.CREDENTIALS_RENEWED.value: "Identifiants compromis renouvelés",
    UnlockReason.TEST.value: "Exercice ou test prévu du dispositif",
}
PRINCIPAL_KINDS: Final = {
    "staff": "Compte professionnel",
    "patient": "Compte patient",
    "service": "Client de service (API)",
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
        found = alerts(caller)
        return render_page(
            request,
            "securite/alertes.html",
            {
                "alerts": found,
                "findings": _findings(caller, found),
                "figure_names": FIGURE_NAMES,
                "csrf_token": _csrf(request, caller),
                "kinds": {**KIND_LABELS, **ANOMALY_LABELS},
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


FIGURE_NAMES: Final = {
    "patients": "patients distincts",
    "baseline_median": "médiane habituelle par heure d'activité",
    "baseline_hours": "heures d'activité de référence",
    "searches": "recherches",
    "ratio": "dossiers ouverts par recherche",
    "instants": "instants distincts",
    "creation_order": "part dans l'ordre de création",
    "id_order": "part dans l'ordre des identifiants",
    "timing_spread": "écart relatif des intervalles (0 : régulier)",
}


@dataclass(frozen=True, slots=True)
class FindingView:
    window: str
    figures: dict[str, object]


def _findings(caller: Caller, shown: list[AlertSummary]) -> dict[uuid.UUID, FindingView]:
    """The anomaly findings behind the alerts shown: window and counts (no patient)."""
    wanted = [a.target_id for a in shown if a.target_type == "anomaly-finding" and a.target_id]
    if not wanted:
        return {}
    rows = caller.session.scalars(
        select(AnomalyFinding).where(
            AnomalyFinding.tenant_id == caller.tenant_id, AnomalyFinding.id.in_(wanted)
        )
    )
    return {
        row.id: FindingView(f"{_when(row.window_start)} → {_when(row.window_end)}", row.figures)
        for row in rows
    }


def _unlock_of(caller: Caller) -> FourEyesUnlock:
    """The officer's side of the four-eyes unlock; anyone else gets 404."""
    _officer(caller)
    assert caller.staff_id is not None
    return FourEyesUnlock(
        caller.session,
        caller.keyring().audit,
        caller.tenant_id,
        officer_staff_id=caller.staff_id,
        officer_account_id=caller.account.id,
        require_step_up=caller.require_step_up,
        clock=lambda: caller.now,
    )


def _unlock_answer(request: Request, error: UnlockError) -> Response:
    if error.problem is UnlockProblem.NOT_OFFICER:
        raise CallerNotFoundError
    return redirect_to(request, LOCKED_PATH, erreur=error.problem.value)


@router.get("/comptes-bloques", name="security_locked")
def locked_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        unlock = _unlock_of(caller)
        try:
            locked = unlock.locked()
        except UnlockError as error:
            return _unlock_answer(request, error)
        return render_page(
            request,
            "securite/comptes_bloques.html",
            {
                "locked": locked,
                "me": caller.staff_id,
                "csrf_token": _csrf(request, caller),
                "reasons": UNLOCK_REASONS,
                "kinds": PRINCIPAL_KINDS,
                "when": _when,
                "notice": NOTICES.get(request.query_params.get("info", "")),
                "error": UNLOCK_ERRORS.get(request.query_params.get("erreur", "")),
            },
            headers={"Cache-Control": "no-store"},
        )

    return run_page_as_caller(request, show)


@router.post("/comptes-bloques/demande")
def request_unlock(
    request: Request, principal: FormText = "", reason: FormText = "", csrf_token: FormText = ""
) -> Response:
    """First officer: ask, with a reason, after a fresh step-up."""

    def ask(caller: Caller) -> Response:
        unlock = _unlock_of(caller)
        if reason not in UNLOCK_REASONS:
            caller.require_step_up()
            return redirect_to(request, LOCKED_PATH, erreur="motif")
        try:
            unlock.request(principal, UnlockReason(reason))
        except UnlockError as error:
            return _unlock_answer(request, error)
        return redirect_to(request, LOCKED_PATH, info="demande")

    return run_page_as_caller(request, ask, csrf_token=csrf_token, step_up_return=LOCKED_PATH)


def _request_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        return None


@router.post("/comptes-bloques/approbation")
def approve_unlock(
    request: Request, request_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    """Second officer: approve another officer's request, after a fresh step-up."""

    def approve(caller: Caller) -> Response:
        unlock = _unlock_of(caller)
        wanted = _request_id(request_id)
        try:
            if wanted is None:
                caller.require_step_up()
                raise UnlockError(UnlockProblem.NO_REQUEST)
            unlock.approve(wanted)
        except UnlockError as error:
            return _unlock_answer(request, error)
        return redirect_to(request, LOCKED_PATH, info="debloque")

    return run_page_as_caller(request, approve, csrf_token=csrf_token, step_up_return=LOCKED_PATH)


@router.post("/comptes-bloques/annulation")
def cancel_unlock(
    request: Request, request_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    def cancel(caller: Caller) -> Response:
        unlock = _unlock_of(caller)
        wanted = _request_id(request_id)
        try:
            if wanted is None:
                raise UnlockError(UnlockProblem.NO_REQUEST)
            unlock.cancel(wanted)
        except UnlockError as error:
            return _unlock_answer(request, error)
        return redirect_to(request, LOCKED_PATH, info="annulee")

    return run_page_as_caller(request, cancel, csrf_token=csrf_token)
