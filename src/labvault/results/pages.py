"""French pages of the patient portal's results (server-rendered, no JS).

``/compte/resultats``: the released reports of the account's own record and its dependents'
(date, title, lab site, "Nouveau" until first opened). ``/compte/resultats/{id}``: one
report (values, units, reference ranges, flags in words, the previous values of each
exam as a small table), its PDF (``…/pdf``, an attachment) and its shares with doctors.
``…/partage`` (POST, recent step-up) creates a share and shows its link once, in the answer
itself (never in a URL or a redirect); ``/compte/resultats/partages/arret`` ends one.

Everything lives in :mod:`labvault.results.portal` and :mod:`labvault.results.sharing`;
anything absent, not released or not the account's is the one "page introuvable" (I7),
staff accounts included.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Mapping
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.callers import Caller, CallerNotFoundError, run_page_as_caller
from labvault.accounts.forms import GENERAL, FormText, redirect_to, render_page
from labvault.accounts.linking import PatientLinks, Relationship
from labvault.accounts.routes import SESSION_COOKIE
from labvault.accounts.stepup import StepUp
from labvault.results.portal import ReportDetail, ReportSummary, ResultPortal
from labvault.results.sharing import (
    DURATIONS,
    RECIPIENT_MAX,
    ResultSharing,
    ShareError,
    ShareLine,
)

__all__ = ["RESULTS_PATH", "report_path", "router"]

router = APIRouter(prefix="/compte/resultats", include_in_schema=False)

RESULTS_PATH: Final = "/compte/resultats"
PARIS: Final = zoneinfo.ZoneInfo("Europe/Paris")
MAX_FIELD: Final = 64
NOTICES: Final = {
    "partage-arrete": "Le partage est arrêté : le lien ne fonctionne plus.",
}
LABELS: Final = {
    "recipient": "Nom du médecin",
    "duration": "Durée du partage",
}
PDF_HEADERS: Final = {
    "Content-Disposition": 'attachment; filename="compte-rendu.pdf"',
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}
"""A neutral file name (no exam, no name, no date) and never rendered inline."""
_MONTHS: Final = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)


def report_path(report_id: uuid.UUID) -> str:
    return f"{RESULTS_PATH}/{report_id}"


def french_date(moment: dt.datetime | dt.date | None) -> str:
    """``30 novembre 2026`` (Paris day for an instant), ``—`` when unknown."""
    if moment is None:
        return "—"
    day = moment.astimezone(PARIS).date() if isinstance(moment, dt.datetime) else moment
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


def french_moment(moment: dt.datetime | None) -> str:
    if moment is None:
        return "—"
    local = moment.astimezone(PARIS)
    return f"{french_date(local)} à {local.strftime('%H:%M')}"


def _uuid(value: str) -> uuid.UUID | None:
    if not value or len(value) > MAX_FIELD:
        return None
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        return None


def _patient(caller: Caller) -> None:
    if not caller.is_patient:
        raise CallerNotFoundError


def _csrf(request: Request, caller: Caller) -> str:
    return caller.service.sessions.csrf_token(request.cookies.get(SESSION_COOKIE, ""))


def _people(caller: Caller, reachable: frozenset[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Whose report: "Vous" or a dependent's first name (opened only when there are
    dependents, so that an account acting for itself alone opens nothing for this)."""
    own = caller.account.patient_id
    people = {own: "Vous"} if own is not None else {}
    if reachable - {own}:
        people = {
            record.id: "Vous" if record.relationship is Relationship.SELF else record.first_name
            for record in PatientLinks(caller.service).records(caller.account)
        }
    return {patient_id: label for patient_id, label in people.items() if patient_id in reachable}


def _page(
    request: Request,
    caller: Caller,
    template: str,
    values: Mapping[str, Any],
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    return render_page(
        request,
        template,
        {
            "csrf_token": _csrf(request, caller),
            "labels": LABELS,
            "french_date": french_date,
            "french_moment": french_moment,
            **values,
        },
        errors=errors,
        status=status,
        headers={"Cache-Control": "no-store"},
    )


# --- the list -------------------------------------------------------------------------------


@router.get("", name="results")
def results_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        _patient(caller)
        portal = ResultPortal(caller.session, caller.keyring(), caller.scope())
        reachable = portal.reachable()
        reports: list[ReportSummary] = portal.reports() if reachable else []
        people = _people(caller, reachable)
        return _page(
            request,
            caller,
            "results/patient/liste.html",
            {
                "reports": reports,
                "people": people,
                "several": len(people) > 1,
                "has_records": bool(reachable),
            },
        )

    return run_page_as_caller(request, show)


# --- one report -----------------------------------------------------------------------------


def _detail_page(
    request: Request,
    caller: Caller,
    detail: ReportDetail,
    shares: list[ShareLine],
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    stepped_up: bool = False,
) -> Response:
    people = _people(caller, frozenset({detail.summary.patient_id}))
    return _page(
        request,
        caller,
        "results/patient/detail.html",
        {
            "detail": detail,
            "report": detail.summary,
            "person": people.get(detail.summary.patient_id, ""),
            "shares": shares,
            "durations": [(key, label) for key, (_, label) in DURATIONS.items()],
            "values": values or {"recipient": "", "duration": ""},
            "recipient_max": RECIPIENT_MAX,
            "notice": NOTICES.get(request.query_params.get("info", "")),
            "stepped_up": stepped_up,
        },
        errors=errors,
        status=status,
    )


def _stepped_up(caller: Caller) -> bool:
    """Whether creating a share would pass its step-up now (for the page's hint)."""
    return StepUp(caller.service).is_fresh(caller.record)


@router.get("/{report_id}", name="result")
def result_page(report_id: uuid.UUID, request: Request) -> Response:
    def show(caller: Caller) -> Response:
        _patient(caller)
        keyring, scope = caller.keyring(), caller.scope()
        detail = ResultPortal(caller.session, keyring, scope).report(report_id)
        shares = ResultSharing(caller.session, keyring, scope, now=caller.now).shares(report_id)
        return _detail_page(request, caller, detail, shares, stepped_up=_stepped_up(caller))

    return run_page_as_caller(request, show)


@router.get("/{report_id}/pdf", name="result_pdf")
def result_pdf(report_id: uuid.UUID, request: Request) -> Response:
    def download(caller: Caller) -> Response:
        _patient(caller)
        content = ResultPortal(caller.session, caller.keyring(), caller.scope()).pdf(report_id)
        return Response(content, media_type="application/pdf", headers=PDF_HEADERS)

    return run_page_as_caller(request, download)


# --- shares -----------------------------------------------------------------------------------


@router.post("/{report_id}/partage", name="result_share")
def create_share(
    report_id: uuid.UUID,
    request: Request,
    recipient: FormText = "",
    duration: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    values = {"recipient": recipient[: RECIPIENT_MAX * 2], "duration": duration[:8]}

    def share(caller: Caller) -> Response:
        _patient(caller)
        keyring, scope = caller.keyring(), caller.scope()
        sharing = ResultSharing(caller.session, keyring, scope, now=caller.now)
        sharing.require_report(report_id, "result-share-create")  # the 404 first
        caller.require_step_up()
        try:
            created = sharing.create(
                report_id,
                account_id=caller.account.id,
                recipient=values["recipient"],
                duration=values["duration"],
            )
        except ShareError as error:
            detail = ResultPortal(caller.session, keyring, scope).report(report_id)
            errors = {GENERAL if k == "general" else k: v for k, v in error.errors.items()}
            return _detail_page(
                request,
                caller,
                detail,
                sharing.shares(report_id),
                values=values,
                errors=errors,
                status=422,
                stepped_up=True,
            )
        base = caller.runtime.settings.public_url.rstrip("/")
        return _page(
            request,
            caller,
            "results/patient/partage.html",
            {
                "link": f"{base}{created.path()}",
                "recipient": values["recipient"].strip(),
                "expires_at": created.expires_at,
                "report_url": report_path(report_id),
            },
        )

    return run_page_as_caller(
        request, share, csrf_token=csrf_token, step_up_return=report_path(report_id)
    )


@router.post("/partages/arret", name="result_share_revoke")
def revoke_share(request: Request, share_id: FormText = "", csrf_token: FormText = "") -> Response:
    def revoke(caller: Caller) -> Response:
        _patient(caller)
        wanted = _uuid(share_id)
        if wanted is None:
            raise CallerNotFoundError
        sharing = ResultSharing(caller.session, caller.keyring(), caller.scope(), now=caller.now)
        report_id = sharing.revoke(wanted)
        return redirect_to(request, report_path(report_id), info="partage-arrete")

    return run_page_as_caller(request, revoke, csrf_token=csrf_token)
