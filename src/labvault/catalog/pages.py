"""French pages for the organization admin's exam catalog, ``/administration/examens``.

The list of every exam (withdrawn ones included), a form to add one, and on each row a form
to change it and a button to withdraw it from booking (or bring it back). Organization
admins only: any other signed-in caller gets the "page introuvable" 404 (with a "denied"
audit event), nobody signed in goes to the login page (``run_page_as_caller``). The
conventions of ``labvault.accounts.admin_pages``: POST-redirect-GET with a notice named by a
keyword, the catalog's French message tied to its field with the form shown again (422)
and nothing written, the session's CSRF token in every form. :func:`admin_page` is shared
with the site schedule pages (``labvault.schedules.pages``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from typing import Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.callers import Caller, CallerNotFoundError, run_page_as_caller
from labvault.accounts.forms import GENERAL, FormText, redirect_to, render_page
from labvault.accounts.routes import SESSION_COOKIE
from labvault.catalog.models import Exam
from labvault.catalog.routes import catalog_of, exam_values
from labvault.catalog.schemas import FIELD_LABELS, CatalogError
from labvault.catalog.services import require_admin

__all__ = ["EXAMS_PATH", "admin_page", "csrf_of", "router"]

router = APIRouter(prefix="/administration", include_in_schema=False)

EXAMS_PATH: Final = "/administration/examens"
TEMPLATE: Final = "administration/examens.html"
MAX_FIELD = 4000

NOTICES: Final = {
    "examen-ajoute": "L'examen a été ajouté au catalogue.",
    "examen-modifie": "L'examen a été modifié.",
    "examen-retire": "L'examen est retiré : il ne peut plus être réservé.",
    "examen-reactive": "L'examen peut de nouveau être réservé.",
}


def admin_page(
    request: Request,
    target_type: str,
    action: Callable[[Caller], Response],
    *,
    csrf_token: str | None = None,
) -> Response:
    """Run ``action`` for the request's organization admin: another signed-in caller gets
    the 404 page (its refusal audited), an admin who must add a passkey first goes to the
    security page."""

    def as_admin(caller: Caller) -> Response:
        require_admin(caller.keyring().audit, caller.tenant_id, target_type, None)
        if caller.service.passkeys.enrolment_required(caller.account):
            return redirect_to(request, "/compte/securite")
        return action(caller)

    return run_page_as_caller(request, as_admin, csrf_token=csrf_token)


def csrf_of(request: Request, caller: Caller) -> str:
    return caller.service.sessions.csrf_token(request.cookies.get(SESSION_COOKIE, ""))


def _form_values(exam: Exam) -> dict[str, str]:
    shown: dict[str, str] = {}
    for name, value in exam_values(exam).items():
        if value is None:
            shown[name] = ""
        elif isinstance(value, bool):
            shown[name] = "on" if value else ""
        elif isinstance(value, dt.time):
            shown[name] = value.strftime("%H:%M")
        else:
            shown[name] = str(value)
    return shown


def _page(
    request: Request,
    caller: Caller,
    *,
    values: Mapping[str, str] | None = None,
    editing: str | None = None,
    edit_values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    notice: str | None = None,
    status: int = 200,
) -> Response:
    exams = catalog_of(caller).exams(include_inactive=True)
    rows = [
        {
            "id": str(exam.id),
            "code": exam.code,
            "label": exam.label,
            "sampling_minutes": exam.sampling_minutes,
            "active": exam.active,
            "values": (
                edit_values
                if editing == str(exam.id) and edit_values is not None
                else _form_values(exam)
            ),
        }
        for exam in exams
    ]
    return render_page(
        request,
        TEMPLATE,
        {
            "csrf_token": csrf_of(request, caller),
            "rows": rows,
            "values": values or {},
            "editing": editing,
            "labels": FIELD_LABELS,
            "notice": notice,
        },
        errors=errors,
        status=status,
    )


def _submitted(
    code: str,
    label: str,
    loinc: str,
    sampling_minutes: str,
    fasting_hours: str,
    window_start: str,
    window_end: str,
    home_sampling: str,
    no_appointment: str,
    preparation_text: str,
) -> dict[str, str]:
    return {
        "code": code[:MAX_FIELD],
        "label": label[:MAX_FIELD],
        "loinc": loinc[:MAX_FIELD],
        "sampling_minutes": sampling_minutes[:MAX_FIELD],
        "fasting_hours": fasting_hours[:MAX_FIELD] or "0",
        "window_start": window_start[:MAX_FIELD],
        "window_end": window_end[:MAX_FIELD],
        "home_sampling": home_sampling[:8],
        "no_appointment": no_appointment[:8],
        "preparation_text": preparation_text[:MAX_FIELD],
    }


def _error(error: CatalogError, prefix: str = "") -> dict[str, str]:
    field = error.field if error.field in FIELD_LABELS else None
    return {f"{prefix}{field}" if field else GENERAL: error.message}


def _exam_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CallerNotFoundError from None


@router.get("/examens", name="exam_administration")
def exams_page(request: Request) -> Response:
    notice = NOTICES.get(request.query_params.get("info", ""))
    return admin_page(request, "exam", lambda caller: _page(request, caller, notice=notice))


@router.post("/examens")
def add_exam(
    request: Request,
    code: FormText = "",
    label: FormText = "",
    loinc: FormText = "",
    sampling_minutes: FormText = "",
    fasting_hours: FormText = "",
    window_start: FormText = "",
    window_end: FormText = "",
    home_sampling: FormText = "",
    no_appointment: FormText = "",
    preparation_text: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    values = _submitted(
        code,
        label,
        loinc,
        sampling_minutes,
        fasting_hours,
        window_start,
        window_end,
        home_sampling,
        no_appointment,
        preparation_text,
    )

    def add(caller: Caller) -> Response:
        try:
            catalog_of(caller).create(values)
        except CatalogError as error:
            return _page(request, caller, values=values, errors=_error(error), status=422)
        return redirect_to(request, EXAMS_PATH, info="examen-ajoute")

    return admin_page(request, "exam", add, csrf_token=csrf_token)


@router.post("/examens/modification")
def edit_exam(
    request: Request,
    exam_id: FormText = "",
    code: FormText = "",
    label: FormText = "",
    loinc: FormText = "",
    sampling_minutes: FormText = "",
    fasting_hours: FormText = "",
    window_start: FormText = "",
    window_end: FormText = "",
    home_sampling: FormText = "",
    no_appointment: FormText = "",
    preparation_text: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    values = _submitted(
        code,
        label,
        loinc,
        sampling_minutes,
        fasting_hours,
        window_start,
        window_end,
        home_sampling,
        no_appointment,
        preparation_text,
    )

    def edit(caller: Caller) -> Response:
        if not exam_id:
            message = "Choisissez l'examen à modifier."
            return _page(request, caller, errors={GENERAL: message}, status=422)
        exam = catalog_of(caller).get(_exam_id(exam_id))
        if exam is None:
            raise CallerNotFoundError
        try:
            catalog_of(caller).update(exam.id, values)
        except CatalogError as error:
            return _page(
                request,
                caller,
                editing=str(exam.id),
                edit_values=values,
                errors=_error(error, f"e-{exam.id}-"),
                status=422,
            )
        return redirect_to(request, EXAMS_PATH, info="examen-modifie")

    return admin_page(request, "exam", edit, csrf_token=csrf_token)


@router.post("/examens/activation")
def toggle_exam(
    request: Request, exam_id: FormText = "", active: FormText = "", csrf_token: FormText = ""
) -> Response:
    def toggle(caller: Caller) -> Response:
        if not exam_id:
            message = "Choisissez l'examen à retirer ou à réactiver."
            return _page(request, caller, errors={GENERAL: message}, status=422)
        exam = catalog_of(caller).get(_exam_id(exam_id))
        if exam is None:
            raise CallerNotFoundError
        wanted = active == "1"
        catalog_of(caller).set_active(exam.id, wanted)
        return redirect_to(
            request, EXAMS_PATH, info="examen-reactive" if wanted else "examen-retire"
        )

    return admin_page(request, "exam", toggle, csrf_token=csrf_token)
