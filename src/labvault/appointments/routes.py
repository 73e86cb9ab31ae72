"""The booking API under ``/api/v1``: sites, the exam catalog, slot search, holds, bookings,
cancellation, rescheduling and home-visit requests.

Every call runs for the signed-in caller (``labvault.accounts.callers``) through
:class:`BookingService`, which applies the access policy's ``appointment`` resource on the
patient: a patient account acts for its own record and its dependents, the desk for the
patients of its sites. Absent, out of scope and not granted all answer the same 404.
Refusals the user can act on are problem+json with a stable ``code``: 409 ``slot_taken``,
``hold_expired``, ``deadline_passed``, ``too_many_appointments``; 422 ``invalid``,
``not_bookable``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from labvault.accounts.callers import (
    OBJECT_PROBLEMS,
    PROBLEMS,
    Caller,
    CallerNotFoundError,
    CallerRefusedError,
    problem,
    run_as_caller,
)
from labvault.appointments.schemas import (
    DATE_MESSAGE,
    AppointmentOut,
    ExamOut,
    HoldIn,
    HomeVisitIn,
    RescheduleIn,
    SiteOut,
    SlotOut,
    SlotSearchIn,
    parse_date,
)
from labvault.appointments.services import (
    RESOURCE,
    BookingError,
    BookingService,
    UnknownSiteError,
)
from labvault.appointments.views import AppointmentView
from labvault.catalog.services import ExamCatalog
from labvault.core.access.policies import Interaction
from labvault.core.web.problems import problem_response
from labvault.organizations.models import Site
from labvault.schedules.models import SiteSchedule

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["appointments"])

DEFAULT_SEARCH_DAYS = 7
CONFLICTS = frozenset({"slot_taken", "hold_expired", "deadline_passed", "too_many_appointments"})
NO_STORE = {"Cache-Control": "no-store"}

_CONFLICT = problem(
    "`code` says why: `slot_taken` (every box of the slot was just taken: pick another), "
    "`hold_expired` (the hold lapsed and its slot was taken), `deadline_passed` (too close "
    "to the appointment for a patient to change it online), `too_many_appointments` (a "
    "patient account has enough appointments to come for this record or in all)."
)
_INVALID = problem(
    "Invalid input (`errors` per field, or `code` `invalid` / `not_bookable` with a French "
    "`detail`): a slot in the past or not offered, an unknown site or exam, exams that need "
    "no appointment, a bad address. Nothing was written."
)
_HIDDEN = problem(
    "The patient or appointment is absent, out of the caller's scope, or its role may not "
    "book: one answer for every reason."
)
WRITE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    404: _HIDDEN,
    409: _CONFLICT,
    422: _INVALID,
}
OBJECT_WRITE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **OBJECT_PROBLEMS,
    409: _CONFLICT,
    422: _INVALID,
}
LIST_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    404: _HIDDEN,
    422: problem("A malformed `patient_id`, or none given by a staff member."),
}
SLOT_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **OBJECT_PROBLEMS,
    422: problem(
        "Bad dates (AAAA-MM-JJ; `from` after `to`; more than 31 days), no exam, an unknown "
        "exam, or exams that need no appointment (`code` `not_bookable`)."
    ),
}


def _service(caller: Caller) -> BookingService:
    return BookingService(caller.session, caller.keyring(), caller.scope(), caller.runtime.settings)


def _refused(error: BookingError) -> CallerRefusedError:
    status = 409 if error.code in CONFLICTS else 422
    extensions: dict[str, Any] = {"code": error.code}
    if error.field is not None:
        extensions["field"] = error.field
    return CallerRefusedError(
        problem_response(
            status, type_=error.code.replace("_", "-"), detail=error.message, **extensions
        )
    )


def _invalid(detail: str, field: str) -> CallerRefusedError:
    return CallerRefusedError(
        problem_response(422, type_="invalid", detail=detail, code="invalid", field=field)
    )


def _answer(outcome: Any, status: int = 200) -> Response:
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome, status_code=status, headers=NO_STORE)


def _one(view: AppointmentView) -> dict[str, Any]:
    return AppointmentOut.of(view).json_ready()


# --- what can be booked ---------------------------------------------------------------------


@router.get("/sites", response_model=list[SiteOut], responses=PROBLEMS)
def list_sites(request: Request) -> Response:
    """The organization's sites that take appointments (they have a schedule)."""

    def sites(caller: Caller) -> list[dict[str, Any]]:
        rows = caller.session.scalars(
            select(Site)
            .join(
                SiteSchedule,
                (SiteSchedule.site_id == Site.id) & (SiteSchedule.tenant_id == Site.tenant_id),
            )
            .where(Site.tenant_id == caller.tenant_id)
            .order_by(Site.name)
        )
        return [SiteOut.of(site).model_dump(mode="json") for site in rows]

    return _answer(run_as_caller(request, sites))


@router.get("/exams", response_model=list[ExamOut], responses=PROBLEMS)
def list_exams(request: Request) -> Response:
    """The active exam catalog, with each exam's rules and preparation instructions."""

    def exams(caller: Caller) -> list[dict[str, Any]]:
        catalog = ExamCatalog(caller.session, caller.keyring().audit, caller.tenant_id)
        return [ExamOut.of(exam).model_dump(mode="json") for exam in catalog.exams()]

    return _answer(run_as_caller(request, exams))


@router.post("/sites/{site_id}/slots/search", response_model=list[SlotOut], responses=SLOT_PROBLEMS)
def search_slots(site_id: uuid.UUID, body: SlotSearchIn, request: Request) -> Response:
    """Slots a visit for the exams can start at, ``from``..``to`` inclusive (AAAA-MM-JJ,
    default: the next 7 days; at most 31 days). Capacity only. A POST so that the exams stay
    out of URLs and access logs."""
    from_, to, exam = body.from_, body.to, body.exam_ids

    def slots(caller: Caller) -> list[dict[str, Any]]:
        try:
            first = parse_date(from_) if from_ is not None else caller.now.date()
        except ValueError:
            raise _invalid(f"from : {DATE_MESSAGE}.", "from") from None
        try:
            last = (
                parse_date(to) if to is not None else first + dt.timedelta(DEFAULT_SEARCH_DAYS - 1)
            )
        except ValueError:
            raise _invalid(f"to : {DATE_MESSAGE}.", "to") from None
        try:
            found = _service(caller).search_slots(site_id, exam, first, last)
        except UnknownSiteError:
            raise CallerNotFoundError from None
        except BookingError as error:
            raise _refused(error) from None
        return [SlotOut.of(slot).model_dump(mode="json") for slot in found]

    return _answer(run_as_caller(request, slots, object_route=True))


# --- appointments ---------------------------------------------------------------------------


@router.post(
    "/appointments/holds", status_code=201, response_model=AppointmentOut, responses=WRITE_PROBLEMS
)
def hold_slot(body: HoldIn, request: Request) -> Response:
    """Hold a slot for the patient (own record or a dependent's) while the form is finished:
    confirm it before ``hold_expires_at``."""

    def hold(caller: Caller) -> dict[str, Any]:
        try:
            view = _service(caller).hold(
                body.patient_id, body.site_id, body.exam_ids, body.starts_at
            )
        except BookingError as error:
            raise _refused(error) from None
        return _one(view)

    return _answer(run_as_caller(request, hold), 201)


@router.post(
    "/appointments/home-visits",
    status_code=201,
    response_model=AppointmentOut,
    responses=WRITE_PROBLEMS,
)
def request_home_visit(body: HomeVisitIn, request: Request) -> Response:
    """Ask for a home visit (exams that allow home sampling) in a morning or afternoon."""

    def ask(caller: Caller) -> dict[str, Any]:
        try:
            view = _service(caller).request_home_visit(
                body.patient_id,
                body.site_id,
                body.exam_ids,
                body.day,
                body.window,
                body.address.to_view(),
            )
        except BookingError as error:
            raise _refused(error) from None
        return _one(view)

    return _answer(run_as_caller(request, ask), 201)


@router.get("/appointments", response_model=list[AppointmentOut], responses=LIST_PROBLEMS)
def list_appointments(
    request: Request, patient_id: Annotated[uuid.UUID | None, Query()] = None
) -> Response:
    """A patient account: its own and its dependents' appointments (or one record's, with
    ``patient_id``). Staff: one patient's (``patient_id`` required), within their scope."""

    def listing(caller: Caller) -> list[dict[str, Any]]:
        scope = caller.scope()
        if not scope.policy.allows(RESOURCE, Interaction.READ):
            raise CallerNotFoundError
        if patient_id is None:
            if not caller.is_patient:
                raise _invalid("patient_id : obligatoire.", "patient_id")
            wanted = sorted(scope.own_patient_ids)
        else:
            wanted = [patient_id]
        service = _service(caller)
        if patient_id is not None and not service.may_read(patient_id):
            raise CallerNotFoundError
        return [_one(view) for view in service.list_for_patients(wanted)]

    return _answer(run_as_caller(request, listing))


@router.get(
    "/appointments/{appointment_id}", response_model=AppointmentOut, responses=OBJECT_PROBLEMS
)
def read_appointment(appointment_id: uuid.UUID, request: Request) -> Response:
    def read(caller: Caller) -> dict[str, Any]:
        view = _service(caller).get(appointment_id)
        if view is None:
            raise CallerNotFoundError
        return _one(view)

    return _answer(run_as_caller(request, read, object_route=True))


@router.post(
    "/appointments/{appointment_id}/confirm",
    response_model=AppointmentOut,
    responses=OBJECT_WRITE_PROBLEMS,
)
def confirm_appointment(appointment_id: uuid.UUID, request: Request) -> Response:
    """Turn a hold into a booking (409 ``hold_expired`` if it lapsed and the slot is gone)."""

    def confirm(caller: Caller) -> dict[str, Any]:
        try:
            return _one(_service(caller).confirm(appointment_id))
        except BookingError as error:
            raise _refused(error) from None

    return _answer(run_as_caller(request, confirm, object_route=True))


@router.post(
    "/appointments/{appointment_id}/cancel",
    response_model=AppointmentOut,
    responses=OBJECT_WRITE_PROBLEMS,
)
def cancel_appointment(appointment_id: uuid.UUID, request: Request) -> Response:
    """Cancel and free the slot (a patient: until the change deadline)."""

    def cancel(caller: Caller) -> dict[str, Any]:
        try:
            return _one(_service(caller).cancel(appointment_id))
        except BookingError as error:
            raise _refused(error) from None

    return _answer(run_as_caller(request, cancel, object_route=True))


@router.post(
    "/appointments/{appointment_id}/reschedule",
    response_model=AppointmentOut,
    responses=OBJECT_WRITE_PROBLEMS,
)
def reschedule_appointment(
    appointment_id: uuid.UUID, body: RescheduleIn, request: Request
) -> Response:
    """Move to another slot: the new one is taken and the old one freed together, or
    nothing changes (a patient: until the change deadline)."""

    def move(caller: Caller) -> dict[str, Any]:
        try:
            return _one(_service(caller).reschedule(appointment_id, body.starts_at))
        except BookingError as error:
            raise _refused(error) from None

    return _answer(run_as_caller(request, move, object_route=True))
