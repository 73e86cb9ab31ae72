"""The biologist's JSON API (``/api/v1/results/review``): the reports to validate, one
report with its previous values, validation and the phone call of a sensitive result.

Everything unknown, out of scope or not granted (``result:update``) is the uniform 404 of
object routes (I7). A validation needs a recent step-up (403 ``step_up_required``); a
report that changed since the version the caller names, or that is not in a state to
validate, is 409 with a stable ``code`` (``version_changed``, ``wrong_state``), nothing
written and the refusal audited.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.responses import Response

from labvault.accounts.callers import (
    OBJECT_PROBLEMS,
    STEP_UP_PROBLEMS,
    Caller,
    CallerNotFoundError,
    CallerRefusedError,
    problem,
    run_as_caller,
)
from labvault.accounts.models import AccountKind
from labvault.core.audit.events import AuditedRefusalError
from labvault.core.web.problems import problem_response
from labvault.organizations.models import Organization
from labvault.results.delivery import FileResultDelivery, ResultDelivery
from labvault.results.notify import ResultNotifier
from labvault.results.review import (
    MAX_CONCLUSION,
    MAX_PHONE_NOTE,
    InvalidReviewInputError,
    ObservationView,
    Outcome,
    ReportView,
    ReviewRefusedError,
    ReviewService,
    ValidatedValue,
    ValidatedVersion,
    VersionChangedError,
)

__all__ = ["delivery_for", "review_for", "router"]

router = APIRouter(prefix="/api/v1/results/review", tags=["results"])

STAFF: Final = frozenset({AccountKind.STAFF})
CONFLICT: Final = problem(
    "The report changed since the version named (`code` version_changed) or is not in a "
    "state for this action (`code` wrong_state); nothing was changed."
)


def delivery_for(caller: Caller) -> ResultDelivery:
    """The prescribers' channel of this deployment: the file drop (MSSanté and HPRIM later)."""
    return FileResultDelivery(caller.runtime.settings.resolved_result_drop_dir)


def review_for(caller: Caller) -> ReviewService:
    """The caller's review service: its keyring, scope, step-up and this deployment's
    notifier and delivery. Only staff reach it (others: 404)."""
    if not caller.is_staff:
        raise CallerNotFoundError
    runtime = caller.runtime
    organization = caller.session.scalar(
        select(Organization.name).where(Organization.id == caller.tenant_id)
    )
    name = organization or "votre laboratoire"
    context = caller.context.audit
    return ReviewService(
        caller.session,
        caller.keyring(),
        caller.scope(),
        provider=runtime.key_provider,
        staff_id=caller.staff_id,
        require_step_up=caller.require_step_up,
        delivery=delivery_for(caller),
        notifier=ResultNotifier(
            caller.session,
            runtime.key_provider,
            caller.tenant_id,
            mailer=runtime.mailer,
            organization=name,
            public_url=runtime.settings.public_url,
            context=context,
        ),
        organization=name,
        context=context,
    )


# --- bodies and answers -------------------------------------------------------------------------


class ValidationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="The report version the biologist reviewed.")
    conclusion: str | None = Field(default=None, max_length=MAX_CONCLUSION)


class PhoneCallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(min_length=1, max_length=MAX_PHONE_NOTE)


class QueueEntry(BaseModel):
    report_id: uuid.UUID
    patient_id: uuid.UUID
    patient_name: str
    birth_date: dt.date | None
    received_at: dt.datetime
    status: str
    lis_status: str
    title: str
    phone: bool


class PreviousValueOut(BaseModel):
    value: str
    unit: str
    flags: list[str]
    at: dt.datetime


class ValidatedValueOut(BaseModel):
    """An observation of the last validated version a correction replaced."""

    position: int
    system: str
    code: str
    value: str
    unit: str
    reference_range: str
    flags: list[str]


class ValidatedVersionOut(BaseModel):
    """What a correction replaced: the last validated (or released) version, and its values
    that match none of the current observations."""

    version: int
    status: str
    validated_at: dt.datetime | None
    released_at: dt.datetime | None
    unmatched: list[ValidatedValueOut]


class ObservationOut(BaseModel):
    position: int
    system: str
    code: str
    display: str
    value: str
    unit: str
    reference_range: str
    flags: list[str]
    interpretation: list[str]
    status: str
    previous: PreviousValueOut | None
    validated_before: ValidatedValueOut | None


class ReportOut(BaseModel):
    report_id: uuid.UUID
    patient_id: uuid.UUID
    status: str
    version: int
    lis_status: str
    received_at: dt.datetime
    validated_at: dt.datetime | None
    released_at: dt.datetime | None
    title: str
    conclusion: str
    phone: bool
    observations: list[ObservationOut]
    validated_version: ValidatedVersionOut | None


class OutcomeOut(BaseModel):
    status: str
    released: bool
    notified: bool
    delivered: bool


def _validated_value(value: ValidatedValue | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {
        "position": value.position,
        "system": value.code.system,
        "code": value.code.code,
        "value": value.value,
        "unit": value.unit,
        "reference_range": value.reference_range,
        "flags": list(value.flags),
    }


def _validated_version(version: ValidatedVersion | None) -> dict[str, Any] | None:
    if version is None:
        return None
    return {
        "version": version.version,
        "status": version.status.value,
        "validated_at": version.validated_at,
        "released_at": version.released_at,
        "unmatched": [_validated_value(value) for value in version.unmatched],
    }


def _observation(view: ObservationView) -> dict[str, Any]:
    previous = view.previous
    return {
        "position": view.position,
        "system": view.code.system,
        "code": view.code.code,
        "display": view.code.display,
        "value": view.value,
        "unit": view.unit,
        "reference_range": view.reference_range,
        "flags": list(view.flags),
        "interpretation": list(view.flag_words),
        "status": view.status,
        "previous": None
        if previous is None
        else {
            "value": previous.value,
            "unit": previous.unit,
            "flags": list(previous.flags),
            "at": previous.at,
        },
        "validated_before": _validated_value(view.validated_before),
    }


def _report(view: ReportView) -> dict[str, Any]:
    return {
        "report_id": view.report_id,
        "patient_id": view.patient.id,
        "status": view.status.value,
        "version": view.version,
        "lis_status": view.lis_status,
        "received_at": view.received_at,
        "validated_at": view.validated_at,
        "released_at": view.released_at,
        "title": view.content.title,
        "conclusion": view.content.conclusion,
        "phone": view.phone,
        "observations": [_observation(o) for o in view.observations],
        "validated_version": _validated_version(view.validated_version),
    }


def _outcome(outcome: Outcome) -> dict[str, Any]:
    return {
        "status": outcome.status.value,
        "released": outcome.released,
        "notified": outcome.notified > 0,
        "delivered": outcome.delivered,
    }


def _json(model: type[BaseModel], value: Any) -> Response:
    body = model.model_validate(value).model_dump(mode="json")
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _conflict(refusal: AuditedRefusalError) -> Response:
    if isinstance(refusal, ReviewRefusedError):
        code = "version_changed" if isinstance(refusal, VersionChangedError) else "wrong_state"
        return problem_response(409, type_="conflict", detail=str(refusal), code=code)
    return problem_response(404, detail="Introuvable.")


def _invalid(error: InvalidReviewInputError) -> CallerRefusedError:
    return CallerRefusedError(problem_response(422, type_="invalid-input", detail=str(error)))


# --- routes -------------------------------------------------------------------------------------


@router.get("", response_model=list[QueueEntry], responses=OBJECT_PROBLEMS)
def review_queue(request: Request) -> Response:
    """Reports to validate and validated ones awaiting their phone call, oldest first
    (at most 50), of patients in the biologist's scope."""

    def read(caller: Caller) -> list[dict[str, Any]]:
        return [
            {
                "report_id": item.report_id,
                "patient_id": item.patient_id,
                "patient_name": item.patient_name,
                "birth_date": item.birth_date,
                "received_at": item.received_at,
                "status": item.status.value,
                "lis_status": item.lis_status,
                "title": item.title,
                "phone": item.phone,
            }
            for item in review_for(caller).queue()
        ]

    outcome = run_as_caller(request, read, object_route=True, kinds=STAFF)
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(
        [QueueEntry.model_validate(i).model_dump(mode="json") for i in outcome],
        headers={"Cache-Control": "no-store"},
    )


@router.get("/{report_id}", response_model=ReportOut, responses=OBJECT_PROBLEMS)
def review_report(report_id: uuid.UUID, request: Request) -> Response:
    """One report: values, units, ranges, flags (and in words), previous values."""

    def read(caller: Caller) -> dict[str, Any]:
        return _report(review_for(caller).report(report_id))

    outcome = run_as_caller(request, read, object_route=True, kinds=STAFF)
    if isinstance(outcome, Response):
        return outcome
    return _json(ReportOut, outcome)


@router.post(
    "/{report_id}/validate",
    response_model=OutcomeOut,
    responses={
        **STEP_UP_PROBLEMS,
        409: CONFLICT,
        422: problem("An invalid body; nothing was changed."),
    },
)
def validate_report(report_id: uuid.UUID, body: ValidationRequest, request: Request) -> Response:
    """Validate the version reviewed (step-up required). An online report is released at
    once (patient emailed, prescriber delivered); a sensitive one waits for the phone call."""

    def act(caller: Caller) -> dict[str, Any]:
        try:
            return _outcome(review_for(caller).validate(report_id, body.version, body.conclusion))
        except InvalidReviewInputError as error:
            raise _invalid(error) from None

    outcome = run_as_caller(request, act, object_route=True, kinds=STAFF, on_refusal=_conflict)
    if isinstance(outcome, Response):
        return outcome
    return _json(OutcomeOut, outcome)


@router.post(
    "/{report_id}/phone-call",
    response_model=OutcomeOut,
    responses={
        **STEP_UP_PROBLEMS,
        409: CONFLICT,
        422: problem("An invalid body; nothing was changed."),
    },
)
def record_phone_call(report_id: uuid.UUID, body: PhoneCallRequest, request: Request) -> Response:
    """The sensitive result was given by phone (step-up required): the note is kept
    (sealed) and the report released."""

    def act(caller: Caller) -> dict[str, Any]:
        try:
            return _outcome(review_for(caller).record_phone_call(report_id, body.note))
        except InvalidReviewInputError as error:
            raise _invalid(error) from None

    outcome = run_as_caller(request, act, object_route=True, kinds=STAFF, on_refusal=_conflict)
    if isinstance(outcome, Response):
        return outcome
    return _json(OutcomeOut, outcome)
