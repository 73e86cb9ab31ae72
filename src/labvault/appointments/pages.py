"""French pages of the patient portal's appointments (server-rendered, no JS).

``/compte/rendez-vous``: the appointments of the account's own record and its dependents,
with their preparation instructions (shown here only: never sent by email or SMS).
``/compte/rendez-vous/nouveau``: for whom, site and exams; then the compatible slots of a
week (POST, so that no exam lands in a URL); choosing one holds it and leads to the
confirmation step, which shows until when the slot is kept. ``/compte/rendez-vous/{id}/
deplacer`` and ``/annuler`` move or cancel an appointment while it may still change;
``/compte/rendez-vous/domicile`` asks for a home visit.

Every rule lives in :class:`labvault.appointments.services.BookingService`: these pages
translate its French refusals into the form again (nothing written) and its out-of-scope
refusals into the one "page introuvable". Patient accounts only: staff get that 404 too.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, cast

from fastapi import APIRouter, Form, Request
from sqlalchemy import select
from starlette.responses import Response

from labvault.accounts.callers import Caller, CallerNotFoundError, run_page_as_caller
from labvault.accounts.forms import GENERAL, FormText, redirect_to, render_page
from labvault.accounts.linking import PatientLinks, Relationship
from labvault.accounts.routes import SESSION_COOKIE
from labvault.appointments.models import AppointmentKind, AppointmentStatus
from labvault.appointments.services import BookingError, BookingService, SlotTakenError
from labvault.appointments.views import AppointmentView, HomeAddress
from labvault.catalog.models import Exam
from labvault.organizations.models import Site
from labvault.schedules.hours import WEEKDAY_LABELS, WEEKDAYS, OpeningHours, OpeningHoursError
from labvault.schedules.slots import Slot

__all__ = ["APPOINTMENTS_PATH", "router"]

router = APIRouter(prefix="/compte/rendez-vous", include_in_schema=False)

APPOINTMENTS_PATH: Final = "/compte/rendez-vous"
PARIS: Final = zoneinfo.ZoneInfo("Europe/Paris")
FormList = Annotated[list[str], Form()]

MAX_WEEKS: Final = 13
"""How far the week-by-week search goes (the booking horizon is about 90 days)."""
MAX_FIELD: Final = 64
"""Longest id, date or instant a form field may carry (anything longer is refused)."""
MIN_YEAR: Final = 1900
MAX_YEAR: Final = 2999
"""Dates outside these years are refused as malformed (no date arithmetic overflows)."""

NOTICES: Final = {
    "rendez-vous-confirme": "Votre rendez-vous est confirmé.",
    "rendez-vous-deplace": "Votre rendez-vous est déplacé.",
    "rendez-vous-annule": "Votre rendez-vous est annulé.",
    "domicile-demande": "Votre demande de prélèvement à domicile est enregistrée. Le "
    "laboratoire vous confirmera l'heure de passage.",
}
STATUS_LABELS: Final = {
    AppointmentStatus.HELD: "En attente de votre confirmation",
    AppointmentStatus.BOOKED: "Confirmé",
    AppointmentStatus.CHECKED_IN: "Accueilli au laboratoire",
    AppointmentStatus.DONE: "Prélèvement fait",
    AppointmentStatus.NO_SHOW: "Absent",
    AppointmentStatus.CANCELLED: "Annulé",
}
WINDOW_LABELS: Final = {
    "morning": "Le matin (7 h à 12 h)",
    "afternoon": "L'après-midi (13 h à 18 h)",
}
LABELS: Final = {
    "patient_id": "Pour qui",
    "site_id": "Laboratoire",
    "exams": "Examens",
    "starts_at": "Créneau",
    "day": "Jour de la visite",
    "window": "Moment de la journée",
    "line": "Adresse",
    "postal_code": "Code postal",
    "city": "Ville",
    "instructions": "Indications d'accès",
}
_DAY_NAMES: Final = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
_MONTH_NAMES: Final = (
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
_WEEK = re.compile(r"[0-9]{1,2}")
_SERVICE_FIELDS: Final = {"exam_ids": "exams", "site_id": "site_id", "starts_at": "starts_at"}


# --- formatting -----------------------------------------------------------------------------


def french_day(day: dt.date) -> str:
    """``lundi 30 novembre 2026``, whatever the server's locale."""
    return f"{_DAY_NAMES[day.weekday()]} {day.day} {_MONTH_NAMES[day.month - 1]} {day.year}"


def french_time(moment: dt.datetime) -> str:
    """``08:10``, Paris time."""
    return moment.astimezone(PARIS).strftime("%H:%M")


def french_moment(moment: dt.datetime) -> str:
    """``lundi 30 novembre 2026 à 08:10``, Paris time."""
    local = moment.astimezone(PARIS)
    return f"{french_day(local.date())} à {local.strftime('%H:%M')}"


def _aware(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive UTC datetimes."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def site_hours(site: Site) -> list[str]:
    """``["lundi : 07:00 à 12:30, 14:00 à 18:00", ...]``, open days only."""
    try:
        hours = OpeningHours.parse(site.opening_hours or {})
    except OpeningHoursError:
        return []
    lines = []
    for number, key in enumerate(WEEKDAYS):
        intervals = hours.day(number)
        if intervals:
            shown = ", ".join(
                f"{a.strftime('%H:%M')} à {b.strftime('%H:%M')}" for a, b in intervals
            )
            lines.append(f"{WEEKDAY_LABELS[key]} : {shown}")
    return lines


# --- what the pages work with -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """Someone the account books for: its own record ("Vous") or a dependent (first name)."""

    id: uuid.UUID
    label: str


@dataclass
class Portal:
    """The signed-in patient account's booking context, inside its unit of work."""

    caller: Caller
    booking: BookingService
    people: list[Person]
    csrf_token: str

    @property
    def now(self) -> dt.datetime:
        return self.caller.now

    def person(self, patient_id: uuid.UUID) -> Person | None:
        return next((p for p in self.people if p.id == patient_id), None)

    def owns(self, view: AppointmentView | None) -> AppointmentView:
        """``view`` if it is one of the account's people's, else the uniform 404."""
        if view is None or self.person(view.patient_id) is None:
            raise CallerNotFoundError
        return view

    def sites(self) -> list[Site]:
        return list(
            self.caller.session.scalars(
                select(Site).where(Site.tenant_id == self.caller.tenant_id).order_by(Site.name)
            )
        )

    def site(self, site_id: uuid.UUID | None) -> Site | None:
        return next((s for s in self.sites() if s.id == site_id), None)

    def catalog(self) -> list[Exam]:
        """Active exams, by label (the booking form's checkboxes)."""
        return list(
            self.caller.session.scalars(
                select(Exam)
                .where(Exam.tenant_id == self.caller.tenant_id, Exam.active.is_(True))
                .order_by(Exam.label, Exam.code)
            )
        )


def _portal(request: Request, caller: Caller) -> Portal:
    if not caller.is_patient:
        raise CallerNotFoundError
    booking = BookingService(
        caller.session, caller.keyring(), caller.scope(), caller.runtime.settings
    )
    # Only the records the caller's scope reaches today (a dependent come of age drops out).
    reachable = caller.scope().own_patient_ids
    own = caller.account.patient_id
    people = [Person(own, "Vous")] if own is not None else []
    if reachable - {own}:
        # Dependents are told apart by first name: opened (and audited) only when there
        # are some, so that an account acting for itself alone opens nothing to list.
        people = [
            Person(
                record.id,
                "Vous" if record.relationship is Relationship.SELF else record.first_name,
            )
            for record in PatientLinks(caller.service).records(caller.account)
        ]
    token = request.cookies.get(SESSION_COOKIE, "")
    return Portal(
        caller=caller,
        booking=booking,
        people=[p for p in people if p.id in reachable],
        csrf_token=caller.service.sessions.csrf_token(token),
    )


def _page(
    request: Request,
    portal: Portal,
    template: str,
    values: Mapping[str, Any],
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    return render_page(
        request,
        template,
        {"csrf_token": portal.csrf_token, "labels": LABELS, **values},
        errors=errors,
        status=status,
        headers={"Cache-Control": "no-store"},
    )


def _uuid(value: str) -> uuid.UUID | None:
    if not value or len(value) > MAX_FIELD:
        return None
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        return None


def _instant(value: str) -> dt.datetime | None:
    """An aware instant as the slot buttons carry it (ISO 8601 with offset), else None."""
    if not value or len(value) > MAX_FIELD:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    # Years far off overflow when moved to UTC (0001 minus an offset, 9999 plus one).
    if moment.tzinfo is None or not MIN_YEAR <= moment.year <= MAX_YEAR:
        return None
    return moment


def _week(value: str) -> int | None:
    """The week offset of a slot search: 0 (this week) to ``MAX_WEEKS``."""
    if value == "":
        return 0
    if not _WEEK.fullmatch(value) or int(value) > MAX_WEEKS:
        return None
    return int(value)


def _error_of(exc: BookingError) -> dict[str, str]:
    """The service's French message, tied to its form field when the page has one."""
    name = _SERVICE_FIELDS.get(exc.field or "", GENERAL)
    return {name: exc.message}


# --- the list ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shown:
    """One appointment as the list shows it."""

    view: AppointmentView
    person: str
    when: str
    status: str
    exams: list[Exam]
    preparation: list[tuple[str, str]]
    upcoming: bool


def _preparation(exams: Iterable[Exam]) -> list[tuple[str, str]]:
    notes = []
    for exam in exams:
        lines = []
        if exam.fasting_hours:
            lines.append(f"À jeun depuis {exam.fasting_hours} heures.")
        if exam.preparation_text:
            lines.append(exam.preparation_text)
        if lines:
            notes.append((exam.label, " ".join(lines)))
    return notes


def _shown(portal: Portal, views: Sequence[AppointmentView]) -> list[Shown]:
    catalog = {exam.id: exam for exam in portal.booking.exams(e for v in views for e in v.exam_ids)}
    now = portal.now
    shown = []
    for view in views:
        person = portal.person(view.patient_id)
        if person is None:
            continue
        exams = [catalog[e] for e in view.exam_ids if e in catalog]
        end = _aware(view.ends_at or view.starts_at)
        upcoming = end > now and view.status in (
            AppointmentStatus.HELD,
            AppointmentStatus.BOOKED,
            AppointmentStatus.CHECKED_IN,
        )
        when = french_moment(view.starts_at)
        if view.kind is AppointmentKind.HOME:
            start = _aware(view.starts_at).astimezone(PARIS)
            window = "le matin" if start.hour < 12 else "l'après-midi"
            when = f"{french_day(start.date())}, {window} (à domicile)"
        shown.append(
            Shown(
                view=view,
                person=person.label,
                when=when,
                status=STATUS_LABELS[view.status],
                exams=exams,
                preparation=_preparation(exams),
                upcoming=upcoming,
            )
        )
    return shown


@router.get("", name="appointments")
def appointments_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        portal = _portal(request, caller)
        views = portal.booking.list_for_patients([p.id for p in portal.people])
        shown = _shown(portal, views)
        upcoming = [s for s in shown if s.upcoming]
        past = [s for s in reversed(shown) if not s.upcoming]
        info = request.query_params.get("info", "")
        confirmed = _uuid(request.query_params.get("rdv", ""))
        just_booked = next(
            (s for s in upcoming if s.view.id == confirmed and info == "rendez-vous-confirme"),
            None,
        )
        return _page(
            request,
            portal,
            "appointments/liste.html",
            {
                "upcoming": upcoming,
                "past": past,
                "has_records": bool(portal.people),
                "notice": NOTICES.get(info),
                "just_booked": just_booked,
                "deadline_hours": caller.runtime.settings.booking_change_deadline_hours,
            },
        )

    return run_page_as_caller(request, show)


# --- booking: step 1 (for whom, site, exams) and step 2 (slots) -------------------------------


@dataclass
class Choice:
    """What the booking form carries from step to step."""

    patient_id: str = ""
    site_id: str = ""
    exams: list[str] = field(default_factory=list)
    week: str = "0"


@dataclass
class Checked:
    person: Person | None = None
    site: Site | None = None
    exams: list[Exam] = field(default_factory=list)
    week: int = 0
    errors: dict[str, str] = field(default_factory=dict)


def _check_choice(portal: Portal, choice: Choice, *, home: bool = False) -> Checked:
    """Step 1's answers, each checked against what this account may choose."""
    checked = Checked()
    patient_id = _uuid(choice.patient_id)
    checked.person = portal.person(patient_id) if patient_id is not None else None
    if checked.person is None:
        checked.errors["patient_id"] = "Choisissez pour qui est le rendez-vous."
    checked.site = portal.site(_uuid(choice.site_id))
    if checked.site is None:
        checked.errors["site_id"] = "Choisissez un laboratoire de la liste."
    catalog = {str(exam.id): exam for exam in portal.catalog()}
    wanted = list(dict.fromkeys(choice.exams))
    if not wanted:
        checked.errors["exams"] = "Choisissez au moins un examen."
    elif any(value not in catalog for value in wanted):
        checked.errors["exams"] = "Un des examens choisis n'est pas au catalogue."
    else:
        checked.exams = [catalog[value] for value in wanted]
        if home and any(not exam.home_sampling for exam in checked.exams):
            checked.errors["exams"] = "Un des examens choisis ne peut pas être prélevé à domicile."
    week = _week(choice.week)
    if week is None:
        checked.errors[GENERAL] = "Semaine de recherche invalide."
    else:
        checked.week = week
    return checked


def _choice_values(choice: Choice) -> dict[str, Any]:
    return {
        "patient_id": choice.patient_id,
        "site_id": choice.site_id,
        "exams": choice.exams,
        "week": choice.week,
    }


def _step_one(
    request: Request,
    portal: Portal,
    choice: Choice,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    return _page(
        request,
        portal,
        "appointments/nouveau.html",
        {
            "step": 1,
            "people": portal.people,
            "sites": portal.sites(),
            "catalog": portal.catalog(),
            "values": _choice_values(choice),
        },
        errors=errors,
        status=status,
    )


@dataclass(frozen=True, slots=True)
class Day:
    label: str
    slots: list[tuple[str, str]]
    """(value sent back: the slot's UTC instant, label: Paris time)."""


def _days(slots: Sequence[Slot]) -> list[Day]:
    by_day: dict[dt.date, list[tuple[str, str]]] = {}
    for slot in slots:
        start = slot.starts_at.astimezone(dt.UTC)
        local = start.astimezone(PARIS)
        by_day.setdefault(local.date(), []).append((start.isoformat(), local.strftime("%H:%M")))
    return [Day(french_day(day), by_day[day]) for day in sorted(by_day)]


def _week_range(portal: Portal, week: int) -> tuple[dt.date, dt.date]:
    first = portal.now.astimezone(PARIS).date() + dt.timedelta(days=7 * week)
    return first, first + dt.timedelta(days=6)


def _step_two(
    request: Request,
    portal: Portal,
    choice: Choice,
    checked: Checked,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    """The compatible slots of the chosen week, or "sans rendez-vous" with the site's hours."""
    assert checked.site is not None
    assert checked.person is not None
    first, last = _week_range(portal, checked.week)
    context: dict[str, Any] = {
        "step": 2,
        "values": _choice_values(choice),
        "person": checked.person,
        "site": checked.site,
        "exams": checked.exams,
        "week": checked.week,
        "max_weeks": MAX_WEEKS,
        "first_day": french_day(first),
        "last_day": french_day(last),
        "days": [],
        "no_appointment": False,
        "hours": site_hours(checked.site),
    }
    shown_errors = dict(errors or {})
    try:
        slots = portal.booking.search_slots(
            checked.site.id, [exam.id for exam in checked.exams], first, last
        )
    except BookingError as exc:
        if exc.code == "not_bookable":
            context["no_appointment"] = True
        else:
            return _step_one(request, portal, choice, errors=_error_of(exc), status=422)
    else:
        context["days"] = _days(slots)
    return _page(
        request, portal, "appointments/nouveau.html", context, errors=shown_errors, status=status
    )


@router.get("/nouveau", name="appointment_new")
def new_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        portal = _portal(request, caller)
        choice = Choice(patient_id=str(portal.people[0].id) if len(portal.people) == 1 else "")
        return _step_one(request, portal, choice)

    return run_page_as_caller(request, show)


@router.post("/nouveau")
def search_slots(
    request: Request,
    patient_id: FormText = "",
    site_id: FormText = "",
    exams: FormList = [],  # noqa: B006 - FastAPI copies form defaults
    week: FormText = "0",
    back: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    """Step 2 (the week's slots); ``back`` shows step 1 again with the choices kept."""
    choice = Choice(patient_id[:MAX_FIELD], site_id[:MAX_FIELD], exams[:50], week[:8])

    def run(caller: Caller) -> Response:
        portal = _portal(request, caller)
        if back:
            return _step_one(request, portal, choice)
        checked = _check_choice(portal, choice)
        if checked.errors:
            return _step_one(request, portal, choice, errors=checked.errors, status=422)
        return _step_two(request, portal, choice, checked)

    return run_page_as_caller(request, run, csrf_token=csrf_token)


@router.post("/nouveau/creneau")
def hold_slot(
    request: Request,
    patient_id: FormText = "",
    site_id: FormText = "",
    exams: FormList = [],  # noqa: B006 - FastAPI copies form defaults
    week: FormText = "0",
    starts_at: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    """Hold the chosen slot, then the confirmation step; a slot taken meanwhile shows the
    week's slots again with the reason."""
    choice = Choice(patient_id[:MAX_FIELD], site_id[:MAX_FIELD], exams[:50], week[:8])

    def run(caller: Caller) -> Response:
        portal = _portal(request, caller)
        checked = _check_choice(portal, choice)
        if checked.errors:
            return _step_one(request, portal, choice, errors=checked.errors, status=422)
        assert checked.person is not None
        assert checked.site is not None
        moment = _instant(starts_at)
        if moment is None:
            errors = {GENERAL: "Choisissez un créneau de la liste."}
            return _step_two(request, portal, choice, checked, errors=errors, status=422)
        try:
            held = portal.booking.hold(
                checked.person.id, checked.site.id, [exam.id for exam in checked.exams], moment
            )
        except SlotTakenError as exc:
            return _step_two(
                request, portal, choice, checked, errors={GENERAL: exc.message}, status=409
            )
        except BookingError as exc:
            errors = {GENERAL: exc.message}
            return _step_two(request, portal, choice, checked, errors=errors, status=422)
        return redirect_to(request, f"{APPOINTMENTS_PATH}/{held.id}/confirmation")

    return run_page_as_caller(request, run, csrf_token=csrf_token)


# --- booking: step 3 (confirm the hold) -------------------------------------------------------


def _summary(portal: Portal, view: AppointmentView) -> Shown:
    return _shown(portal, [view])[0]


def _confirmation_page(
    request: Request,
    portal: Portal,
    view: AppointmentView,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    expires = view.hold_expires_at
    expired = expires is None or _aware(expires) <= portal.now
    return _page(
        request,
        portal,
        "appointments/confirmation.html",
        {
            "item": _summary(portal, view),
            "held_until": french_time(expires) if expires is not None else None,
            "expired": expired,
        },
        errors=errors,
        status=status,
    )


@router.get("/{appointment_id}/confirmation", name="appointment_confirmation")
def confirmation_page(appointment_id: uuid.UUID, request: Request) -> Response:
    def show(caller: Caller) -> Response:
        portal = _portal(request, caller)
        view = portal.owns(portal.booking.get(appointment_id))
        if view.status is AppointmentStatus.BOOKED:
            return redirect_to(
                request, APPOINTMENTS_PATH, info="rendez-vous-confirme", rdv=str(view.id)
            )
        if view.status is not AppointmentStatus.HELD:
            raise CallerNotFoundError
        return _confirmation_page(request, portal, view)

    return run_page_as_caller(request, show)


@router.post("/{appointment_id}/confirmation")
def confirm(appointment_id: uuid.UUID, request: Request, csrf_token: FormText = "") -> Response:
    def run(caller: Caller) -> Response:
        portal = _portal(request, caller)
        view = portal.owns(portal.booking.get(appointment_id))
        try:
            booked = portal.booking.confirm(view.id)
        except BookingError as exc:
            return _confirmation_page(
                request, portal, view, errors={GENERAL: exc.message}, status=409
            )
        return redirect_to(
            request, APPOINTMENTS_PATH, info="rendez-vous-confirme", rdv=str(booked.id)
        )

    return run_page_as_caller(request, run, csrf_token=csrf_token)


# --- reschedule and cancel --------------------------------------------------------------------


def _reschedule_page(
    request: Request,
    portal: Portal,
    view: AppointmentView,
    week: int,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    first, last = _week_range(portal, week)
    days: list[Day] = []
    shown_errors = dict(errors or {})
    if view.changeable and view.kind is AppointmentKind.SITE:
        try:
            slots = portal.booking.search_slots(view.site_id, list(view.exam_ids), first, last)
        except BookingError as exc:
            shown_errors.setdefault(GENERAL, exc.message)
            status = 422 if status == 200 else status
        else:
            current = _aware(view.starts_at)
            days = _days([s for s in slots if s.starts_at.astimezone(dt.UTC) != current])
    return _page(
        request,
        portal,
        "appointments/deplacer.html",
        {
            "item": _summary(portal, view),
            "days": days,
            "week": week,
            "max_weeks": MAX_WEEKS,
            "first_day": french_day(first),
            "last_day": french_day(last),
            "movable": view.changeable and view.kind is AppointmentKind.SITE,
            "deadline_hours": portal.caller.runtime.settings.booking_change_deadline_hours,
        },
        errors=shown_errors,
        status=status,
    )


@router.get("/{appointment_id}/deplacer", name="appointment_reschedule")
def reschedule_page(appointment_id: uuid.UUID, request: Request) -> Response:
    def show(caller: Caller) -> Response:
        portal = _portal(request, caller)
        view = portal.owns(portal.booking.get(appointment_id))
        week = _week(request.query_params.get("semaine", "0")[:8])
        if week is None:
            errors = {GENERAL: "Semaine de recherche invalide."}
            return _reschedule_page(request, portal, view, 0, errors=errors, status=422)
        return _reschedule_page(request, portal, view, week)

    return run_page_as_caller(request, show)


@router.post("/{appointment_id}/deplacer")
def reschedule(
    appointment_id: uuid.UUID,
    request: Request,
    starts_at: FormText = "",
    week: FormText = "0",
    csrf_token: FormText = "",
) -> Response:
    def run(caller: Caller) -> Response:
        portal = _portal(request, caller)
        view = portal.owns(portal.booking.get(appointment_id))
        shown_week = _week(week[:8]) or 0
        moment = _instant(starts_at)
        if moment is None:
            errors = {GENERAL: "Choisissez un créneau de la liste."}
            return _reschedule_page(request, portal, view, shown_week, errors=errors, status=422)
        try:
            portal.booking.reschedule(view.id, moment)
        except BookingError as exc:
            status = 409 if exc.code in ("slot_taken", "deadline_passed", "hold_expired") else 422
            return _reschedule_page(
                request, portal, view, shown_week, errors={GENERAL: exc.message}, status=status
            )
        return redirect_to(request, APPOINTMENTS_PATH, info="rendez-vous-deplace")

    return run_page_as_caller(request, run, csrf_token=csrf_token)


def _cancel_page(
    request: Request,
    portal: Portal,
    view: AppointmentView,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    return _page(
        request,
        portal,
        "appointments/annuler.html",
        {
            "item": _summary(portal, view),
            "cancellable": view.changeable,
            "deadline_hours": portal.caller.runtime.settings.booking_change_deadline_hours,
        },
        errors=errors,
        status=status,
    )


@router.get("/{appointment_id}/annuler", name="appointment_cancel")
def cancel_page(appointment_id: uuid.UUID, request: Request) -> Response:
    def show(caller: Caller) -> Response:
        portal = _portal(request, caller)
        return _cancel_page(request, portal, portal.owns(portal.booking.get(appointment_id)))

    return run_page_as_caller(request, show)


@router.post("/{appointment_id}/annuler")
def cancel(appointment_id: uuid.UUID, request: Request, csrf_token: FormText = "") -> Response:
    def run(caller: Caller) -> Response:
        portal = _portal(request, caller)
        view = portal.owns(portal.booking.get(appointment_id))
        try:
            portal.booking.cancel(view.id)
        except BookingError as exc:
            return _cancel_page(request, portal, view, errors={GENERAL: exc.message}, status=409)
        return redirect_to(request, APPOINTMENTS_PATH, info="rendez-vous-annule")

    return run_page_as_caller(request, run, csrf_token=csrf_token)


# --- home visits ------------------------------------------------------------------------------


def _home_page(
    request: Request,
    portal: Portal,
    values: Mapping[str, Any],
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    tomorrow = portal.now.astimezone(PARIS).date() + dt.timedelta(days=1)
    return _page(
        request,
        portal,
        "appointments/domicile.html",
        {
            "people": portal.people,
            "sites": portal.sites(),
            "catalog": [exam for exam in portal.catalog() if exam.home_sampling],
            "windows": WINDOW_LABELS,
            "values": dict(values),
            "first_day": tomorrow.isoformat(),
        },
        errors=errors,
        status=status,
    )


@router.get("/domicile", name="appointment_home")
def home_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        portal = _portal(request, caller)
        only = str(portal.people[0].id) if len(portal.people) == 1 else ""
        return _home_page(request, portal, {"patient_id": only, "site_id": "", "exams": []})

    return run_page_as_caller(request, show)


def _day(value: str) -> dt.date | None:
    text = value.strip()
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        return None
    return day if MIN_YEAR <= day.year <= MAX_YEAR else None


@router.post("/domicile")
def request_home_visit(
    request: Request,
    patient_id: FormText = "",
    site_id: FormText = "",
    exams: FormList = [],  # noqa: B006 - FastAPI copies form defaults
    day: FormText = "",
    window: FormText = "",
    line: FormText = "",
    postal_code: FormText = "",
    city: FormText = "",
    instructions: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    choice = Choice(patient_id[:MAX_FIELD], site_id[:MAX_FIELD], exams[:50])
    values = {
        **_choice_values(choice),
        "day": day[:MAX_FIELD],
        "window": window[:16],
        # Bounded for showing the form again; the service refuses what is too long.
        "line": line[:1000],
        "postal_code": postal_code[:100],
        "city": city[:1000],
        "instructions": instructions[:2000],
    }

    def run(caller: Caller) -> Response:
        portal = _portal(request, caller)
        checked = _check_choice(portal, choice, home=True)
        errors = dict(checked.errors)
        chosen_day = _day(day)
        if chosen_day is None:
            errors["day"] = "Indiquez la date de la visite au format AAAA-MM-JJ."
        if window not in WINDOW_LABELS:
            errors["window"] = "Choisissez le matin ou l'après-midi."
        if errors:
            return _home_page(request, portal, values, errors=errors, status=422)
        assert checked.person is not None
        assert checked.site is not None
        assert chosen_day is not None
        address = HomeAddress(
            line=line, postal_code=postal_code, city=city, instructions=instructions
        )
        try:
            portal.booking.request_home_visit(
                checked.person.id,
                checked.site.id,
                [exam.id for exam in checked.exams],
                chosen_day,
                cast(Literal["morning", "afternoon"], window),
                address,
            )
        except BookingError as exc:
            message = {GENERAL: exc.message}
            if exc.field in ("day", "window"):
                message = {exc.field: exc.message}
            return _home_page(request, portal, values, errors=message, status=422)
        return redirect_to(request, APPOINTMENTS_PATH, info="domicile-demande")

    return run_page_as_caller(request, run, csrf_token=csrf_token)
