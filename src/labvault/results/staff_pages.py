"""The biologist's French pages: "Résultats à valider" and one report (values, ranges,
flags in words, previous values), its validation form and, for a sensitive result, the
"à communiquer par téléphone" banner and the form that records the call.

No JS; every POST carries the session's CSRF token; a validation without a recent step-up
goes to "Confirmez votre identité" and comes back to the report. Anyone without the
biologist's grant (``result:update``), and any report out of scope or unknown, gets the
same "page introuvable" 404 page.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.callers import Caller, CallerNotFoundError, run_page_as_caller
from labvault.accounts.forms import FormText, redirect_to, render_page
from labvault.accounts.routes import SESSION_COOKIE
from labvault.core.audit.events import AuditedRefusalError
from labvault.results.models import ReportStatus
from labvault.results.review import (
    MAX_CONCLUSION,
    MAX_PHONE_NOTE,
    InvalidReviewInputError,
    ReportView,
    ReviewRefusedError,
)
from labvault.results.staff_routes import review_for

__all__ = ["QUEUE_PATH", "router"]

router = APIRouter(prefix="/biologie/resultats", include_in_schema=False)

QUEUE_PATH: Final = "/biologie/resultats"
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
STATUS_NAMES: Final = {
    ReportStatus.TO_VALIDATE.value: "À valider",
    ReportStatus.VALIDATED.value: "Validé, à communiquer par téléphone",
    ReportStatus.RELEASED.value: "Publié",
}
LIS_STATUS_NAMES: Final = {"P": "partiel", "F": "définitif", "C": "corrigé"}
NOTICES: Final = {
    "publie": "Compte rendu validé et publié : le patient est prévenu et le prescripteur le "
    "reçoit.",
    "telephone": "Compte rendu validé. Communiquez le résultat par téléphone, puis enregistrez "
    "l'appel pour le publier.",
    "appel": "Appel enregistré : le compte rendu est publié.",
}


def _when(value: object) -> str:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return aware.astimezone(PARIS).strftime("%d/%m/%Y %H:%M")
    if isinstance(value, dt.date):
        return value.strftime("%d/%m/%Y")
    return ""


def _csrf(request: Request, caller: Caller) -> str:
    return caller.service.sessions.csrf_token(request.cookies.get(SESSION_COOKIE, ""))


def _report_path(report_id: uuid.UUID) -> str:
    return f"{QUEUE_PATH}/{report_id}"


def _report_page(
    request: Request,
    caller: Caller,
    view: ReportView,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    context: dict[str, Any] = {
        "report": view,
        "patient": view.patient,
        "csrf_token": _csrf(request, caller),
        "statuses": STATUS_NAMES,
        "lis_statuses": LIS_STATUS_NAMES,
        "when": _when,
        "values": values or {},
        "max_conclusion": MAX_CONCLUSION,
        "max_note": MAX_PHONE_NOTE,
        "queue_path": QUEUE_PATH,
    }
    return render_page(
        request,
        "results/staff/compte_rendu.html",
        context,
        errors=errors,
        status=status,
        headers={"Cache-Control": "no-store"},
    )


@router.get("", name="result_review_queue")
def queue_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        items = review_for(caller).queue()
        return render_page(
            request,
            "results/staff/a_valider.html",
            {
                "items": items,
                "statuses": STATUS_NAMES,
                "when": _when,
                "notice": NOTICES.get(request.query_params.get("info", "")),
            },
            headers={"Cache-Control": "no-store"},
        )

    return run_page_as_caller(request, show)


@router.get("/{report_id}", name="result_review_report")
def report_page(report_id: uuid.UUID, request: Request) -> Response:
    def show(caller: Caller) -> Response:
        return _report_page(request, caller, review_for(caller).report(report_id))

    return run_page_as_caller(request, show)


def _refused_page(
    request: Request, report_id: uuid.UUID, field: str, values: dict[str, str]
) -> Any:
    """Show the report again, in a unit of work of its own, with the service's French reason
    (its refusal was rolled back with its event kept); anything else: the 404 page."""

    def refused(refusal: AuditedRefusalError) -> Response:
        if not isinstance(refusal, ReviewRefusedError):
            return run_page_as_caller(_as_get(request), _not_found)

        def again(caller: Caller) -> Response:
            view = review_for(caller).report(report_id)
            return _report_page(
                request, caller, view, errors={field: str(refusal)}, values=values, status=409
            )

        return run_page_as_caller(_as_get(request), again)

    return refused


def _not_found(caller: Caller) -> Response:
    raise CallerNotFoundError


def _as_get(request: Request) -> Request:
    scope = dict(request.scope)
    scope["method"] = "GET"
    return Request(scope)


@router.post("/{report_id}/validation", name="result_review_validate")
def validate(
    report_id: uuid.UUID,
    request: Request,
    version: FormText = "",
    conclusion: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    values = {"conclusion": conclusion[: MAX_CONCLUSION + 1]}

    def act(caller: Caller) -> Response:
        service = review_for(caller)
        try:
            seen = int(version)
        except ValueError:
            seen = 0
        if seen < 1:
            view = service.report(report_id)
            return _report_page(
                request,
                caller,
                view,
                errors={"conclusion": "Rechargez la page du compte rendu, puis validez."},
                values=values,
                status=422,
            )
        try:
            outcome = service.validate(report_id, seen, values["conclusion"] or None)
        except InvalidReviewInputError as error:
            view = service.report(report_id)
            return _report_page(
                request, caller, view, errors={"conclusion": str(error)}, values=values, status=422
            )
        return redirect_to(request, QUEUE_PATH, info="publie" if outcome.released else "telephone")

    return run_page_as_caller(
        request,
        act,
        csrf_token=csrf_token,
        on_refusal=_refused_page(request, report_id, "conclusion", values),
        step_up_return=_report_path(report_id),
    )


@router.post("/{report_id}/appel", name="result_review_phone")
def phone_call(
    report_id: uuid.UUID, request: Request, note: FormText = "", csrf_token: FormText = ""
) -> Response:
    values = {"note": note[: MAX_PHONE_NOTE + 1]}

    def act(caller: Caller) -> Response:
        service = review_for(caller)
        try:
            service.record_phone_call(report_id, values["note"])
        except InvalidReviewInputError as error:
            view = service.report(report_id)
            return _report_page(
                request, caller, view, errors={"note": str(error)}, values=values, status=422
            )
        return redirect_to(request, QUEUE_PATH, info="appel")

    return run_page_as_caller(
        request,
        act,
        csrf_token=csrf_token,
        on_refusal=_refused_page(request, report_id, "note", values),
        step_up_return=_report_path(report_id),
    )
