"""French patient-portal pages: pre-registration of an appointment and the documents list.

- ``/compte/rendez-vous/{id}/pre-enregistrement``: the form, prefilled with the last
  declaration or the record's traits (the NIR is never written back into the page: a known
  one is shown masked and kept when the field is left empty), and the prescription upload
  (``…/ordonnance``, multipart, consent checkbox).
- ``/compte/documents``: the account's documents (its own and its dependents'), download
  (through ``/api/v1/documents/{id}``, as an attachment) and deletion.

A POST answers with a 303 to the page and a fixed notice keyword, or with the page again and
its French errors (nothing written). Anything absent or not the account's is "page
introuvable" (I7).
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Mapping
from typing import Final

from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from labvault.accounts.callers import Caller, CallerNotFoundError, run_page_as_caller
from labvault.accounts.forms import GENERAL, FormText, redirect_to, refuse_cross_site, render_page
from labvault.accounts.linking import paris_today
from labvault.appointments.models import Appointment
from labvault.core.access.policies import Interaction
from labvault.core.audit.actions import AuditAction
from labvault.organizations.models import Site
from labvault.patients.routes import mask_national_number
from labvault.preregistration.routes import STATUS_OF, is_yes
from labvault.preregistration.schemas import FIELD_LABELS
from labvault.preregistration.services import (
    DOCUMENT_RESOURCE,
    MAX_DOCUMENTS_PER_APPOINTMENT,
    OPEN_STATUSES,
    PREREGISTRATION_RESOURCE,
    READ_PURPOSE,
    UPLOAD_PURPOSE,
    DocumentInfo,
    PreregistrationError,
    PreregistrationService,
    too_large,
)
from labvault.preregistration.uploads import (
    MalformedUploadError,
    UploadTooLargeError,
    read_upload,
)

__all__ = ["DOCUMENTS_PATH", "form_path", "router"]

router = APIRouter(prefix="/compte", include_in_schema=False)

PARIS: Final = zoneinfo.ZoneInfo("Europe/Paris")
DOCUMENTS_PATH: Final = "/compte/documents"
SESSION_COOKIE: Final = "__Host-labvault-session"
FORM_FIELDS: Final = (
    "birth_name",
    "used_name",
    "first_names",
    "birth_date",
    "sex",
    "birth_place_code",
    "nir",
    "insurance_name",
    "insurance_member_number",
    "third_party_payment",
)
LABELS: Final = {
    **FIELD_LABELS,
    "file": "Ordonnance",
    "consent": "Accord de partage",
}
NOTICES: Final = {
    "pre-enregistrement-enregistre": "Votre pré-enregistrement est enregistré. Vous pouvez le "
    "modifier jusqu'au rendez-vous.",
    "ordonnance-deposee": "Votre ordonnance est déposée. Le laboratoire pourra la consulter "
    "pour préparer votre venue.",
    "document-supprime": "Le document a été supprimé.",
}
MEDIA_LABELS: Final = {
    "application/pdf": "PDF",
    "image/jpeg": "Image JPEG",
    "image/png": "Image PNG",
}


def form_path(appointment_id: uuid.UUID) -> str:
    return f"/compte/rendez-vous/{appointment_id}/pre-enregistrement"


def _service(caller: Caller) -> PreregistrationService:
    return PreregistrationService(
        caller.session, caller.keyring(), caller.scope(), caller.runtime.settings, now=caller.now
    )


def _csrf(request: Request, caller: Caller) -> str:
    return caller.service.sessions.csrf_token(request.cookies.get(SESSION_COOKIE, ""))


def _when(value: dt.datetime) -> str:
    local = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(PARIS)
    return local.strftime("%d/%m/%Y à %Hh%M")


def _day(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    local = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(PARIS)
    return local.strftime("%d/%m/%Y")


def _size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} Mo".replace(".", ",")
    return f"{max(1, round(size / 1024))} ko"


def _document_rows(documents: list[DocumentInfo]) -> list[dict[str, str]]:
    return [
        {
            "id": str(info.id),
            "type": MEDIA_LABELS.get(info.media_type, "Document"),
            "size": _size(info.size_bytes),
            "uploaded": _day(info.created_at),
            "delete_after": _day(info.delete_after),
        }
        for info in documents
    ]


def _as_get(request: Request) -> Request:
    scope = dict(request.scope)
    scope["method"] = "GET"
    return Request(scope)


# --- the pre-registration page -------------------------------------------------------------


def _form_page(
    request: Request,
    caller: Caller,
    appointment_id: uuid.UUID,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    consent: bool = False,
) -> Response:
    """The form for an appointment the patient account may update; 404 otherwise."""
    if not caller.is_patient:
        raise CallerNotFoundError
    service = _service(caller)
    appointment = service.require_appointment(
        appointment_id,
        PREREGISTRATION_RESOURCE,
        Interaction.UPDATE,
        action=AuditAction.PATIENT_RECORD_READ,
        purpose=READ_PURPOSE,
    )
    stored = service.read(appointment_id)
    known_nir: str | None = None
    if stored is not None and stored.declaration.nir is not None:
        known_nir = mask_national_number(stored.declaration.nir.compact)
    if values is None and stored is not None:
        values = stored.declaration.form_values()
    if values is None or known_nir is None:
        record = service.record_of(appointment.patient_id)
        if known_nir is None:
            # The record's NIR, else the last declared one: the same page whether or not the
            # record could take a declared NIR (another record may carry it).
            known = service.declared_nir(appointment.patient_id, record)
            known_nir = mask_national_number(known) if known else None
        if values is None:
            values = {
                "birth_name": (record.birth_name or "") if record else "",
                "used_name": (record.used_name or "") if record else "",
                "first_names": (record.first_names or "") if record else "",
                "birth_date": record.birth_date.isoformat() if record and record.birth_date else "",
                "sex": record.sex.value if record and record.sex else "",
                "birth_place_code": (record.birth_place_code or "") if record else "",
            }
    shown = {name: values.get(name, "") for name in FORM_FIELDS}
    shown["nir"] = ""  # never written back into the page
    site_name = caller.session.scalar(
        select(Site.name).where(Site.tenant_id == caller.tenant_id, Site.id == appointment.site_id)
    )
    documents = service.documents_of_appointment(appointment)
    return render_page(
        request,
        "preregistration/formulaire.html",
        {
            "csrf_token": _csrf(request, caller),
            "appointment_id": str(appointment.id),
            "when": _when(appointment.starts_at),
            "site_name": site_name or "",
            "open": appointment.status in OPEN_STATUSES,
            "values": shown,
            "known_nir": known_nir,
            "labels": LABELS,
            "documents": _document_rows(documents),
            "may_upload": len(documents) < MAX_DOCUMENTS_PER_APPOINTMENT,
            "max_documents": MAX_DOCUMENTS_PER_APPOINTMENT,
            "max_size": too_large(caller.runtime.settings).split(" : ", 1)[-1].split(".")[0],
            "consent_checked": consent,
            "notice": NOTICES.get(request.query_params.get("info", "")),
            "differs": stored.declaration.differs_from_record if stored else (),
        },
        errors=errors,
        status=status,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/rendez-vous/{appointment_id}/pre-enregistrement")
def preregistration_page(appointment_id: uuid.UUID, request: Request) -> Response:
    def show(caller: Caller) -> Response:
        return _form_page(request, caller, appointment_id)

    return run_page_as_caller(request, show)


@router.post("/rendez-vous/{appointment_id}/pre-enregistrement")
def save_preregistration(
    appointment_id: uuid.UUID,
    request: Request,
    birth_name: FormText = "",
    used_name: FormText = "",
    first_names: FormText = "",
    birth_date: FormText = "",
    sex: FormText = "",
    birth_place_code: FormText = "",
    nir: FormText = "",
    insurance_name: FormText = "",
    insurance_member_number: FormText = "",
    third_party_payment: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    raw = {
        "birth_name": birth_name[:300],
        "used_name": used_name[:300],
        "first_names": first_names[:300],
        "birth_date": birth_date[:32],
        "sex": sex[:8],
        "birth_place_code": birth_place_code[:16],
        "nir": nir[:64],
        "insurance_name": insurance_name[:300],
        "insurance_member_number": insurance_member_number[:100],
        "third_party_payment": "oui" if is_yes(third_party_payment) else "",
    }

    def save(caller: Caller) -> Response:
        if not caller.is_patient:
            raise CallerNotFoundError
        try:
            # The answer is the same whatever the record took (see ``declare``).
            _service(caller).declare(appointment_id, raw, today=paris_today(caller.now))
        except PreregistrationError as error:
            return _refused(request, caller, appointment_id, raw, error)
        return redirect_to(request, form_path(appointment_id), info="pre-enregistrement-enregistre")

    return run_page_as_caller(
        request, save, csrf_token=csrf_token, step_up_return=form_path(appointment_id)
    )


def _refused(
    request: Request,
    caller: Caller,
    appointment_id: uuid.UUID,
    raw: Mapping[str, str],
    error: PreregistrationError,
) -> Response:
    """The page again with the reasons. The service refused before writing anything, and
    this unit of work only reads from here on."""
    errors = dict(error.errors) or {GENERAL: str(error)}
    return _form_page(
        request, caller, appointment_id, values=raw, errors=errors, status=STATUS_OF[error.problem]
    )


@router.post("/rendez-vous/{appointment_id}/ordonnance")
async def upload_prescription(appointment_id: uuid.UUID, request: Request) -> Response:
    """Multipart upload (``file``, ``consent``, ``csrf_token``), read into memory only up
    to the size limit, and only once the session is known and the appointment is one the
    account may upload for (as the API route does): an anonymous or foreign request gets
    its answer before its body is read."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    allowed: list[bool] = []

    def check(caller: Caller) -> Response:
        if not caller.is_patient:
            raise CallerNotFoundError
        _service(caller).require_appointment(
            appointment_id,
            DOCUMENT_RESOURCE,
            Interaction.CREATE,
            action=AuditAction.PATIENT_DOCUMENT_UPLOAD,
            purpose=UPLOAD_PURPOSE,
        )
        allowed.append(True)
        return Response(status_code=204)

    # As a GET: the CSRF token is in the body, not read yet; it is checked with the upload.
    first = await run_in_threadpool(run_page_as_caller, _as_get(request), check)
    if not allowed:
        return first
    settings = request.app.state.settings
    failure: tuple[int, str] | None = None
    content = b""
    fields: dict[str, str] = {}
    try:
        upload = await read_upload(request, max_file_bytes=settings.prescription_max_bytes)
        fields = upload.fields
        if upload.file is None or not upload.file:
            failure = (422, "Choisissez le fichier de votre ordonnance (il est vide ou absent).")
        else:
            content = upload.file
    except UploadTooLargeError:
        failure = (413, too_large(settings))
    except MalformedUploadError:
        failure = (
            422,
            "Le formulaire envoyé n'est pas valide : choisissez un fichier et réessayez.",
        )
    consent = is_yes(fields.get("consent"))
    if failure is not None:
        status, message = failure

        def again(caller: Caller) -> Response:
            return _form_page(
                request,
                caller,
                appointment_id,
                errors={"file": message},
                status=status,
                consent=consent,
            )

        return await run_in_threadpool(run_page_as_caller, _as_get(request), again)

    def store(caller: Caller) -> Response:
        if not caller.is_patient:
            raise CallerNotFoundError
        try:
            info = _service(caller).upload(
                appointment_id, content, consent=consent, account_id=caller.account.id
            )
        except PreregistrationError as error:
            errors = dict(error.errors) or {GENERAL: str(error)}
            return _form_page(
                request,
                caller,
                appointment_id,
                errors=errors,
                status=STATUS_OF[error.problem],
                consent=consent,
            )
        if info is None:
            raise CallerNotFoundError
        return redirect_to(request, form_path(appointment_id), info="ordonnance-deposee")

    return await run_in_threadpool(
        run_page_as_caller, request, store, csrf_token=fields.get("csrf_token", "")
    )


# --- the documents page ---------------------------------------------------------------------


@router.get("/documents")
def documents_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        if not caller.is_patient:
            raise CallerNotFoundError
        service = _service(caller)
        documents = service.documents_of_patients(sorted(caller.scope().own_patient_ids))
        visits = _visits(caller, [d.appointment_id for d in documents if d.appointment_id])
        rows = _document_rows(documents)
        for row, info in zip(rows, documents, strict=True):
            row["visit"] = visits.get(info.appointment_id, "—") if info.appointment_id else "—"
        return render_page(
            request,
            "preregistration/documents.html",
            {
                "csrf_token": _csrf(request, caller),
                "documents": rows,
                "notice": NOTICES.get(request.query_params.get("info", "")),
            },
            headers={"Cache-Control": "no-store"},
        )

    return run_page_as_caller(request, show)


def _visits(caller: Caller, appointment_ids: list[uuid.UUID]) -> dict[uuid.UUID | None, str]:
    if not appointment_ids:
        return {}
    rows = caller.session.execute(
        select(Appointment.id, Appointment.starts_at).where(
            Appointment.tenant_id == caller.tenant_id,
            Appointment.id.in_(sorted(set(appointment_ids))),
        )
    )
    return {row.id: _when(row.starts_at) for row in rows}


@router.post("/documents/suppression")
def delete_document(
    request: Request, document_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    def delete(caller: Caller) -> Response:
        if not caller.is_patient:
            raise CallerNotFoundError
        try:
            wanted = uuid.UUID(document_id[:64])
        except ValueError:
            raise CallerNotFoundError from None
        service = _service(caller)
        if not service.delete_document(wanted):
            raise CallerNotFoundError
        return redirect_to(request, DOCUMENTS_PATH, info="document-supprime")

    return run_page_as_caller(request, delete, csrf_token=csrf_token)
