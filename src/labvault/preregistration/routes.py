"""The pre-registration and document API under ``/api/v1``.

- ``PUT/GET /appointments/{id}/preregistration``: the patient declares identity traits,
  NIR, complementary insurance and third-party payment for one of its (or a dependent's)
  upcoming appointments; the patient and staff granted ``appointment:read`` in scope read it
  (the NIR masked).
- ``POST /appointments/{id}/documents``: a prescription upload (multipart: ``file``,
  ``consent``), streamed into memory up to the size limit, typed from its bytes.
- ``GET/DELETE /documents/{id}``, ``GET /patients/{id}/documents``: download (as an
  attachment, never rendered inline), the patient's deletion, the list.

Everything absent or out of scope is the same 404 (I7), an out-of-scope attempt leaving a
"denied" event in the audit log; bad input is a 422/413/415 problem in French with nothing
written (I6); a concurrent request on the same appointment is serialized, never a 500.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from labvault.accounts.callers import (
    OBJECT_PROBLEMS,
    Caller,
    CallerNotFoundError,
    CallerRefusedError,
    problem,
    run_as_caller,
)
from labvault.accounts.linking import paris_today
from labvault.accounts.models import AccountKind
from labvault.core.access.policies import Interaction
from labvault.core.audit.actions import AuditAction
from labvault.core.web.problems import problem_response
from labvault.patients.routes import mask_national_number
from labvault.preregistration.schemas import DeclarationBody, DeclarationView
from labvault.preregistration.services import (
    DOCUMENT_RESOURCE,
    UPLOAD_PURPOSE,
    DocumentInfo,
    PreregistrationError,
    PreregistrationService,
    Problem,
    StoredDeclaration,
    too_large,
)
from labvault.preregistration.uploads import (
    MalformedUploadError,
    UploadTooLargeError,
    read_upload,
)

__all__ = [
    "DocumentSummary",
    "PreregistrationAnswer",
    "download_headers",
    "is_yes",
    "problem_of",
    "router",
    "service_of",
]

router = APIRouter(prefix="/api/v1", tags=["pre-registration"])

PATIENTS_ONLY: Final = frozenset({AccountKind.PATIENT})
STATUS_OF: Final[dict[Problem, int]] = {
    Problem.INVALID: 422,
    Problem.NO_CONSENT: 422,
    Problem.CLOSED: 409,
    Problem.TOO_MANY: 409,
    Problem.TOO_LARGE: 413,
    Problem.UNSUPPORTED: 415,
}
_YES: Final = frozenset({"true", "on", "oui", "1", "yes"})


class PreregistrationAnswer(BaseModel):
    appointment_id: uuid.UUID
    preregistration: DeclarationView | None = Field(
        description="null until the patient has pre-registered for this appointment."
    )


class DocumentSummary(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    appointment_id: uuid.UUID | None
    media_type: str = Field(description="Sniffed from the content: PDF, JPEG or PNG.")
    size_bytes: int
    consent_at: dt.datetime
    created_at: dt.datetime
    delete_after: dt.datetime | None = Field(
        description="When the retention job deletes it (the visit + the retention period)."
    )


def service_of(caller: Caller) -> PreregistrationService:
    return PreregistrationService(
        caller.session,
        caller.keyring(),
        caller.scope(),
        caller.runtime.settings,
        now=caller.now,
    )


def problem_of(error: PreregistrationError) -> Response:
    extensions: dict[str, Any] = {}
    if error.errors:
        extensions["errors"] = error.errors
    return problem_response(
        STATUS_OF[error.problem], type_=error.problem.value, detail=str(error), **extensions
    )


def is_yes(value: str | None) -> bool:
    return (value or "").strip().lower() in _YES


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def summary(info: DocumentInfo) -> dict[str, Any]:
    return DocumentSummary(
        id=info.id,
        patient_id=info.patient_id,
        appointment_id=info.appointment_id,
        media_type=info.media_type,
        size_bytes=info.size_bytes,
        consent_at=_utc(info.consent_at),
        created_at=_utc(info.created_at),
        delete_after=_utc(info.delete_after) if info.delete_after else None,
    ).model_dump(mode="json")


def view(stored: StoredDeclaration) -> dict[str, Any]:
    declared = stored.declaration
    return DeclarationView(
        appointment_id=str(stored.appointment_id),
        patient_id=str(stored.patient_id),
        birth_name=declared.birth_name,
        used_name=declared.used_name,
        first_names=declared.first_names,
        birth_date=declared.birth_date,
        sex=declared.sex.value,
        birth_place_code=declared.birth_place_code,
        nir=mask_national_number(declared.nir.compact) if declared.nir else None,
        insurance_name=declared.insurance_name,
        insurance_member_number=declared.insurance_member_number,
        third_party_payment=declared.third_party_payment,
        differs_from_record=list(declared.differs_from_record),
        updated_at=_utc(stored.updated_at),
    ).model_dump(mode="json")


def download_headers(info: DocumentInfo) -> dict[str, str]:
    """Never rendered by the browser: an attachment, of the sniffed type, not cached."""
    extension = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}[info.media_type]
    return {
        "Content-Disposition": f'attachment; filename="ordonnance.{extension}"',
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }


def _no_store(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


# --- the declaration ----------------------------------------------------------------------


@router.put(
    "/appointments/{appointment_id}/preregistration",
    response_model=PreregistrationAnswer,
    responses={
        **OBJECT_PROBLEMS,
        409: problem("The appointment is past, cancelled, or its hold expired."),
        422: problem(
            "An invalid value (`errors`: a French reason per field), e.g. an invalid NIR, or "
            "third-party payment asked without a NIR. Nothing is written."
        ),
    },
)
def put_preregistration(
    appointment_id: uuid.UUID, body: DeclarationBody, request: Request
) -> Response:
    """Declare (or replace) the pre-registration of an appointment of the patient account
    (its own or a dependent's). Traits that differ from the record are kept as declared
    for the desk (`differs_from_record`); the record only gains what it lacks (the NIR,
    when no other record carries it: the answer is the same either way)."""
    raw = body.model_dump()

    def save(caller: Caller) -> dict[str, Any]:
        try:
            stored = service_of(caller).declare(appointment_id, raw, today=paris_today(caller.now))
        except PreregistrationError as error:
            raise CallerRefusedError(problem_of(error)) from None
        return {"appointment_id": str(appointment_id), "preregistration": view(stored)}

    outcome = run_as_caller(request, save, object_route=True, kinds=PATIENTS_ONLY)
    return outcome if isinstance(outcome, Response) else _no_store(outcome)


@router.get(
    "/appointments/{appointment_id}/preregistration",
    response_model=PreregistrationAnswer,
    responses=OBJECT_PROBLEMS,
)
def get_preregistration(appointment_id: uuid.UUID, request: Request) -> Response:
    """The appointment's pre-registration (`null` if none yet): for the patient account and
    for staff granted `appointment:read` on the patient (NIR masked; the read is audited)."""

    def read(caller: Caller) -> dict[str, Any]:
        stored = service_of(caller).read(appointment_id)
        return {
            "appointment_id": str(appointment_id),
            "preregistration": view(stored) if stored else None,
        }

    outcome = run_as_caller(request, read, object_route=True)
    return outcome if isinstance(outcome, Response) else _no_store(outcome)


# --- documents ------------------------------------------------------------------------------

UPLOAD_BODY: Final = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "consent"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "PDF, JPEG or PNG; the type is read from the "
                            "content, never from the name or the part's content type.",
                        },
                        "consent": {
                            "type": "string",
                            "description": '"true" (or "on"): the patient agrees to share '
                            "the document with the lab. Required.",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/appointments/{appointment_id}/documents",
    status_code=201,
    response_model=DocumentSummary,
    openapi_extra=UPLOAD_BODY,
    responses={
        **OBJECT_PROBLEMS,
        409: problem(
            "The appointment is past or cancelled, or already has the maximum number of "
            "documents (5)."
        ),
        413: problem("The file is larger than LABVAULT_PRESCRIPTION_MAX_BYTES."),
        415: problem("The content is not a PDF, JPEG or PNG."),
        422: problem(
            "No consent, no file, a malformed body, an empty or damaged file, or a PDF with "
            "active content (JavaScript, launch actions, embedded files)."
        ),
    },
)
async def upload_document(appointment_id: uuid.UUID, request: Request) -> Response:
    """Upload a prescription for an appointment of the patient account, with its consent.
    Stored sealed under the patient's key; deleted automatically after the visit."""

    def check(caller: Caller) -> bool:
        service_of(caller).require_appointment(
            appointment_id,
            DOCUMENT_RESOURCE,
            Interaction.CREATE,
            action=AuditAction.PATIENT_DOCUMENT_UPLOAD,
            purpose=UPLOAD_PURPOSE,
        )
        return True

    allowed = await run_in_threadpool(
        run_as_caller, request, check, object_route=True, kinds=PATIENTS_ONLY
    )
    if isinstance(allowed, Response):
        return allowed
    settings = request.app.state.settings
    try:
        upload = await read_upload(request, max_file_bytes=settings.prescription_max_bytes)
    except UploadTooLargeError:
        return problem_response(413, type_=Problem.TOO_LARGE.value, detail=too_large(settings))
    except MalformedUploadError:
        return problem_response(
            422,
            type_=Problem.INVALID.value,
            detail="Envoyez le fichier dans le champ « file » d'un formulaire multipart.",
        )
    if upload.file is None:
        return problem_response(
            422,
            type_=Problem.INVALID.value,
            detail="Aucun fichier reçu : choisissez le fichier de votre ordonnance.",
            errors={"file": "Choisissez un fichier."},
        )
    content = upload.file
    consent = is_yes(upload.fields.get("consent"))

    def store(caller: Caller) -> dict[str, Any]:
        try:
            info = service_of(caller).upload(
                appointment_id, content, consent=consent, account_id=caller.account.id
            )
        except PreregistrationError as error:
            raise CallerRefusedError(problem_of(error)) from None
        if info is None:
            raise CallerNotFoundError
        return summary(info)

    outcome = await run_in_threadpool(
        run_as_caller, request, store, object_route=True, kinds=PATIENTS_ONLY
    )
    return outcome if isinstance(outcome, Response) else _no_store(outcome, 201)


@router.get(
    "/documents/{document_id}",
    response_class=Response,
    responses={
        **OBJECT_PROBLEMS,
        200: {
            "description": "The document's bytes, as an attachment.",
            "content": {
                "application/pdf": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    },
)
def download_document(document_id: uuid.UUID, request: Request) -> Response:
    """Download a document: the patient (own, dependents) and staff granted
    `prescription:read` in scope. Served as an attachment of the sniffed type; audited."""

    def read(caller: Caller) -> Response:
        opened = service_of(caller).open_document(document_id)
        return Response(
            opened.content,
            media_type=opened.info.media_type,
            headers=download_headers(opened.info),
        )

    outcome = run_as_caller(request, read, object_route=True)
    assert isinstance(outcome, Response)
    return outcome


@router.delete(
    "/documents/{document_id}",
    status_code=204,
    response_class=Response,
    responses={**OBJECT_PROBLEMS, 204: {"description": "Deleted."}},
)
def delete_document(document_id: uuid.UUID, request: Request) -> Response:
    """Delete a document: the patient account (own or a dependent's) only."""

    def delete(caller: Caller) -> Response:
        service_of(caller).delete_document(document_id)
        return Response(status_code=204)

    outcome = run_as_caller(request, delete, object_route=True, kinds=PATIENTS_ONLY)
    assert isinstance(outcome, Response)
    return outcome


@router.get(
    "/patients/{patient_id}/documents",
    response_model=list[DocumentSummary],
    responses=OBJECT_PROBLEMS,
)
def list_documents(patient_id: uuid.UUID, request: Request) -> Response:
    """A patient's documents (no content): the patient account and staff granted
    `prescription:read` in scope."""

    def listing(caller: Caller) -> list[dict[str, Any]]:
        return [summary(info) for info in service_of(caller).documents_of_patient(patient_id)]

    outcome = run_as_caller(request, listing, object_route=True)
    return outcome if isinstance(outcome, Response) else _no_store(outcome)
