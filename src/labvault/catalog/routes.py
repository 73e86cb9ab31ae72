"""The exam catalog API for organization admins, under ``/api/v1/admin/exams``.

Only a fully signed-in organization admin of the organization gets an answer; anyone else
(another role, a patient, nobody) gets the uniform 404 of an address that does not exist
(I7), a signed-in one with a "denied" audit event (:func:`labvault.catalog.services.
require_admin`). Bad input is a 422 problem with the catalog's French message and nothing
written; a code already in the catalog is a 409. Every change is audited by the service.
The helpers here (:func:`admin_call`, :func:`input_error`) are shared with the site
schedule API (``labvault.schedules.routes``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labvault.accounts.callers import (
    OBJECT_PROBLEMS,
    Caller,
    CallerNotFoundError,
    CallerRefusedError,
    problem,
    run_as_caller,
)
from labvault.accounts.models import AccountKind
from labvault.catalog.models import Exam
from labvault.catalog.schemas import CatalogError
from labvault.catalog.services import ExamCatalog, require_admin
from labvault.core.web.problems import problem_response

__all__ = ["ADMIN_PROBLEMS", "admin_call", "input_error", "router"]

router = APIRouter(prefix="/api/v1/admin", tags=["exam catalog administration"])
T = TypeVar("T")

DUPLICATE_CODE = "Ce code d'examen existe déjà dans le catalogue."
PASSKEY_REQUIRED = (
    "Votre rôle exige une clé d'accès : ajoutez-en une depuis la page « Sécurité de votre "
    "compte » avant d'administrer l'organisation."
)

ADMIN_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **OBJECT_PROBLEMS,
    403: problem(
        "Cross-origin request, missing CSRF token, or an admin who must add a passkey first "
        "(type passkey-required)."
    ),
    404: problem(
        "Not an organization admin of this organization (or not signed in), or no such "
        "object: one answer for every reason."
    ),
    422: problem("Invalid input (or a malformed id): the French message; nothing written."),
}
"""The answers of every admin configuration route."""
WRITE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **ADMIN_PROBLEMS,
    409: problem("Already exists (an exam code, an identical closure); nothing written."),
}


class _PasskeyRequiredError(Exception):
    pass


B = TypeVar("B", bound=BaseModel)

RawBody = Annotated[Any, Body()]
"""A JSON body read as is, validated only once the caller is known to be an admin: anyone
else gets the uniform 404 whatever they send (a typed body would answer them 422)."""


def documented(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the route's JSON body."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def parse_body(model: type[B], raw: object) -> B:
    """The admin's body as ``model``; a 422 naming the first bad field otherwise."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])[:60]
        message = f"Requête invalide : champ {where!r}." if where else "Requête invalide."
        raise input_error(message) from None


def input_error(message: str) -> CallerRefusedError:
    """A 422 problem carrying the service's French message (nothing was written)."""
    return CallerRefusedError(problem_response(422, type_="invalid-input", detail=message))


def parse_id(value: str) -> uuid.UUID:
    """A path id: a malformed one is bad input (422), like FastAPI's own UUID check."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise input_error("Identifiant invalide.") from None


def admin_call(
    request: Request,
    target_type: str,
    action: Callable[[Caller], T],
) -> T | Response:
    """Run ``action`` for the request's organization admin; anyone else gets the uniform
    404 (a signed-in staff member or patient with a "denied" audit event)."""
    passkey_missing = False

    def as_admin(caller: Caller) -> T:
        nonlocal passkey_missing
        require_admin(caller.keyring().audit, caller.tenant_id, target_type, None)
        if caller.service.passkeys.enrolment_required(caller.account):
            passkey_missing = True
            raise _PasskeyRequiredError
        return action(caller)

    try:
        return run_as_caller(
            request,
            as_admin,
            object_route=True,
            kinds=frozenset({AccountKind.STAFF, AccountKind.PATIENT}),
        )
    except _PasskeyRequiredError:
        pass
    assert passkey_missing
    return problem_response(403, type_="passkey-required", detail=PASSKEY_REQUIRED)


def json_of(outcome: Any | Response, status: int = 200) -> Response:
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome, status_code=status)


# --- schemas --------------------------------------------------------------------------------


class ExamOut(BaseModel):
    id: uuid.UUID
    code: str
    label: str
    loinc: str | None
    sampling_minutes: int
    home_sampling: bool
    fasting_hours: int
    window_start: str | None = Field(description="HH:MM, site local time")
    window_end: str | None
    no_appointment: bool
    preparation_text: str
    active: bool


class ExamIn(BaseModel):
    """A catalog exam; validated by the catalog (French messages)."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=64)
    label: str = Field(max_length=400)
    sampling_minutes: int | str
    loinc: str | None = Field(default=None, max_length=32)
    home_sampling: bool = False
    fasting_hours: int | str = 0
    window_start: str | None = Field(default=None, max_length=16, description="HH:MM")
    window_end: str | None = Field(default=None, max_length=16, description="HH:MM")
    no_appointment: bool = False
    preparation_text: str = Field(default="", max_length=4000)


class ExamPatch(BaseModel):
    """Only the fields given change; ``active: false`` withdraws the exam from booking."""

    model_config = ConfigDict(extra="forbid")

    code: str | None = Field(default=None, max_length=64)
    label: str | None = Field(default=None, max_length=400)
    sampling_minutes: int | str | None = None
    loinc: str | None = Field(default=None, max_length=32)
    home_sampling: bool | None = None
    fasting_hours: int | str | None = None
    window_start: str | None = Field(default=None, max_length=16)
    window_end: str | None = Field(default=None, max_length=16)
    no_appointment: bool | None = None
    preparation_text: str | None = Field(default=None, max_length=4000)
    active: bool | None = None


def _hhmm(value: dt.time | None) -> str | None:
    return None if value is None else value.strftime("%H:%M")


def exam_values(exam: Exam) -> dict[str, Any]:
    """The exam as the catalog takes it (for a partial update, or a form)."""
    return {
        "code": exam.code,
        "label": exam.label,
        "loinc": exam.loinc,
        "sampling_minutes": exam.sampling_minutes,
        "home_sampling": exam.home_sampling,
        "fasting_hours": exam.fasting_hours,
        "window_start": exam.window_start,
        "window_end": exam.window_end,
        "no_appointment": exam.no_appointment,
        "preparation_text": exam.preparation_text,
    }


def exam_out(exam: Exam) -> dict[str, Any]:
    values = exam_values(exam)
    values["window_start"] = _hhmm(exam.window_start)
    values["window_end"] = _hhmm(exam.window_end)
    return {"id": str(exam.id), **values, "active": exam.active}


def catalog_of(caller: Caller) -> ExamCatalog:
    return ExamCatalog(caller.session, caller.keyring().audit, caller.tenant_id)


def catalog_refusal(error: CatalogError) -> CallerRefusedError:
    if error.message == DUPLICATE_CODE:
        return CallerRefusedError(problem_response(409, type_="duplicate", detail=error.message))
    return input_error(error.message)


# --- routes ---------------------------------------------------------------------------------


@router.get("/exams", response_model=list[ExamOut], responses=ADMIN_PROBLEMS)
def list_exams(request: Request) -> Response:
    """The whole catalog, withdrawn exams included, by code."""
    outcome = admin_call(
        request,
        "exam",
        lambda caller: [exam_out(e) for e in catalog_of(caller).exams(include_inactive=True)],
    )
    return json_of(outcome)


@router.post(
    "/exams",
    status_code=201,
    response_model=ExamOut,
    responses=WRITE_PROBLEMS,
    openapi_extra=documented(ExamIn),
)
def create_exam(request: Request, raw: RawBody = None) -> Response:
    """Add an exam to the catalog (bookable at once)."""

    def create(caller: Caller) -> dict[str, Any]:
        body = parse_body(ExamIn, raw)
        try:
            return exam_out(catalog_of(caller).create(body.model_dump()))
        except CatalogError as error:
            raise catalog_refusal(error) from None

    return json_of(admin_call(request, "exam", create), 201)


@router.patch(
    "/exams/{exam_id}",
    response_model=ExamOut,
    responses=WRITE_PROBLEMS,
    openapi_extra=documented(ExamPatch),
)
def update_exam(exam_id: str, request: Request, raw: RawBody = None) -> Response:
    """Change an exam's fields, or withdraw it from booking (``active: false``) or bring it
    back; exams are never deleted (appointments name them)."""

    def update(caller: Caller) -> dict[str, Any]:
        target = parse_id(exam_id)
        catalog = catalog_of(caller)
        exam = catalog.get(target)
        if exam is None:
            raise CallerNotFoundError
        body = parse_body(ExamPatch, raw)
        changes = body.model_dump(exclude_unset=True)
        active = changes.pop("active", None)
        try:
            if changes:
                exam = catalog.update(exam.id, {**exam_values(exam), **changes})
            if active is not None:
                exam = catalog.set_active(exam.id, bool(active))
        except CatalogError as error:
            raise catalog_refusal(error) from None
        return exam_out(exam)

    return json_of(admin_call(request, "exam", update))
