"""Booking: slot search, hold then confirm, cancel, reschedule, home-visit requests.

Why it is built this way:

- Capacity is the database's job. Every slot a visit occupies is one ``slot_claims`` row on
  one box, and ``UNIQUE (tenant_id, site_id, starts_at, box)`` lets one transaction only
  hold a box. A claimant inserts with ``ON CONFLICT DO NOTHING`` on that constraint and
  keeps the boxes the insert returns, trying the next box for a slot refused (the boxes it
  sees free first); never a count followed by an insert.
- A hold's claims carry its expiry; the next claimant of the same slot deletes expired
  claims before trying the boxes. Confirming a hold turns its claims permanent; if they
  were taken meanwhile, the confirmation is refused (``hold_expired``).
- Every write of a call happens inside one SAVEPOINT: a refusal leaves nothing behind even
  when the caller's unit of work commits what it recorded before the refusal.
- What the appointment says about health (its exams, a home address) is sealed under the
  patient's key through :class:`PatientRepository` only; ids go into audit events, never
  names of exams.
- Authorization is the access policy's ``appointment`` resource on the patient: a record
  out of scope looks exactly like an absent one (an audited refusal, answered 404; a read
  refused leaves a denied event too). For staff, the relationship puts a patient in their
  care, but of that patient's appointments they reach their sites' only, and a
  ``site-today`` grant (the sampler) today's only, which it does not cancel or move here.
- A change of an existing appointment locks its row first (``SELECT ... FOR UPDATE``), so
  two changes of one appointment run one after the other and none leaks a claim.
- A patient account keeps a few appointments to come (per record and in all), counted
  under a per-record advisory lock on PostgreSQL; staff are not limited.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Table, and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from labvault.appointments.models import (
    TABLE,
    Appointment,
    AppointmentKind,
    AppointmentStatus,
    PatientDocument,
    SlotClaim,
)
from labvault.appointments.views import AppointmentView, HomeAddress
from labvault.catalog.models import Exam
from labvault.core.access.policies import Interaction, RecordScope
from labvault.core.access.principals import PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditedRefusalError, Outcome
from labvault.core.config import Settings
from labvault.core.crypto.keyring import Keyring
from labvault.core.db import utcnow
from labvault.organizations.models import Site
from labvault.patients.scope import AccessScope, SystemAccess
from labvault.patients.services import PatientRepository, SealedItem
from labvault.schedules.hours import OpeningHours, OpeningHoursError
from labvault.schedules.models import SiteClosure, SiteSchedule
from labvault.schedules.slots import (
    Closure,
    ExamRule,
    Schedule,
    Slot,
    compatible_slots,
    generate_slots,
    is_visit_start,
    needs_appointment,
    visit_minutes,
)

RESOURCE = "appointment"
TARGET = "appointment"
PURPOSE_BOOKING = "booking"
PURPOSE_VIEW = "appointments"
MAX_EXAMS = 20
MAX_OPEN_HOLDS = 3
"""Unconfirmed, unexpired holds a patient account may have per record at once: they count
among its appointments to come, so :data:`MAX_LIVE_PER_RECORD` (no more) enforces it."""
MAX_LIVE_PER_RECORD = 3
"""Appointments to come (booked, or held and not expired; at a site or at home) a patient
account may have per record: confirming each hold must not let one account take a day's
slots (slot squatting)."""
MAX_LIVE_PER_ACCOUNT = 6
"""The same, across every record the account acts for (its own and its dependents')."""
BOOKING_LOCK_SPACE = 0x6C76_0006
"""First key of the PostgreSQL advisory locks that serialize one record's bookings (the
second key is 32 bits of the patient id)."""
MAX_SEARCH_DAYS = 31
"""A slot search covers at most this many days, both ends included."""
ADDRESS_LINE_MAX = 200
CITY_MAX = 100
INSTRUCTIONS_MAX = 500
POSTAL_CODE = re.compile(r"[0-9]{5}")
HOME_WINDOWS: dict[str, tuple[dt.time, dt.time]] = {
    "morning": (dt.time(7, 0), dt.time(12, 0)),
    "afternoon": (dt.time(13, 0), dt.time(18, 0)),
}
"""Home-visit time windows, in the site's local time."""
LIVE_STATUSES = frozenset({AppointmentStatus.HELD.value, AppointmentStatus.BOOKED.value})
MIN_YEAR, MAX_YEAR = 1900, 2999
"""Instants outside these years are refused: far-off ones overflow in date arithmetic."""
CLAIMS_TABLE = cast(Table, SlotClaim.__table__)
APPOINTMENTS_TABLE = cast(Table, Appointment.__table__)
CLAIM_KEY = ("tenant_id", "site_id", "starts_at", "box")
"""The UNIQUE constraint that makes a box one claim's only (the capacity guarantee)."""
DEADLOCK = "40P01"
"""PostgreSQL's deadlock_detected."""

SLOT_TAKEN_MESSAGE = "Ce créneau vient d'être pris. Choisissez-en un autre."
INSTANT_INVALID = "Heure du rendez-vous invalide"

# The statements of every booking, built once with bound parameters: building a statement
# and its cache key on each call cost more Python time than running it.
_SITE_WITH_SCHEDULE = (
    select(
        Site.id,
        Site.name,
        Site.timezone,
        Site.opening_hours,
        SiteSchedule.slot_minutes,
        SiteSchedule.sampling_boxes,
        SiteSchedule.walk_in_boxes,
        SiteClosure.starts_on,
        SiteClosure.ends_on,
    )
    .join(
        SiteSchedule,
        and_(SiteSchedule.tenant_id == Site.tenant_id, SiteSchedule.site_id == Site.id),
    )
    .outerjoin(
        SiteClosure,
        and_(
            SiteClosure.tenant_id == Site.tenant_id,
            SiteClosure.site_id == Site.id,
            SiteClosure.ends_on >= bindparam("first"),
            SiteClosure.starts_on <= bindparam("last"),
        ),
    )
    .where(Site.tenant_id == bindparam("tenant"), Site.id == bindparam("site"))
)
"""A site, its schedule and its closures overlapping ``first``..``last``: one row per
closure (one with NULL dates when there is none); no row without a schedule."""
_SITE = select(Site.id, Site.name, Site.timezone).where(
    Site.tenant_id == bindparam("tenant"), Site.id == bindparam("site")
)
_SITES = select(Site.id, Site.name, Site.timezone).where(
    Site.tenant_id == bindparam("tenant"), Site.id.in_(bindparam("site_ids", expanding=True))
)
_ACTIVE_EXAMS = select(
    Exam.id,
    Exam.sampling_minutes,
    Exam.window_start,
    Exam.window_end,
    Exam.no_appointment,
    Exam.home_sampling,
).where(
    Exam.tenant_id == bindparam("tenant"),
    Exam.id.in_(bindparam("exam_ids", expanding=True)),
    Exam.active.is_(True),
)
_LIVE_CLAIMS_PER_SLOT = (
    select(SlotClaim.starts_at, func.count())
    .where(
        SlotClaim.tenant_id == bindparam("tenant"),
        SlotClaim.site_id == bindparam("site"),
        SlotClaim.starts_at >= bindparam("start"),
        SlotClaim.starts_at < bindparam("end"),
        or_(SlotClaim.expires_at.is_(None), SlotClaim.expires_at > bindparam("now")),
    )
    .group_by(SlotClaim.starts_at)
)
_CLAIMS_OF_SLOTS = select(SlotClaim.starts_at, SlotClaim.box, SlotClaim.expires_at).where(
    SlotClaim.tenant_id == bindparam("tenant"),
    SlotClaim.site_id == bindparam("site"),
    SlotClaim.starts_at.in_(bindparam("starts", expanding=True)),
)
_DELETE_EXPIRED_CLAIMS = delete(SlotClaim).where(
    SlotClaim.tenant_id == bindparam("tenant"),
    SlotClaim.site_id == bindparam("site"),
    SlotClaim.starts_at.in_(bindparam("starts", expanding=True)),
    SlotClaim.expires_at.is_not(None),
    SlotClaim.expires_at <= bindparam("now"),
)
_CLAIMS_MADE_PERMANENT = (
    update(SlotClaim)
    .where(
        SlotClaim.tenant_id == bindparam("tenant"),
        SlotClaim.appointment_id == bindparam("row_id"),
    )
    .values(expires_at=None)
)
_ROW_WITH_SITE = (
    select(Appointment, Site.name, Site.timezone, SiteSchedule.slot_minutes)
    .join(Site, and_(Site.tenant_id == Appointment.tenant_id, Site.id == Appointment.site_id))
    .outerjoin(
        SiteSchedule,
        and_(
            SiteSchedule.tenant_id == Appointment.tenant_id,
            SiteSchedule.site_id == Appointment.site_id,
        ),
    )
    .where(Appointment.tenant_id == bindparam("tenant"), Appointment.id == bindparam("row_id"))
)
_ROW_WITH_SITE_LOCKED = _ROW_WITH_SITE.with_for_update(of=APPOINTMENTS_TABLE).execution_options(
    populate_existing=True
)
"""The same, the appointment's row locked until the transaction ends (no-op on SQLite, which
serializes writers) and re-read even when the session holds it: two changes of one
appointment run one after the other, the second one seeing the first one's outcome."""
_LIVE_PER_RECORD = (
    select(Appointment.patient_id, func.count())
    .where(
        Appointment.tenant_id == bindparam("tenant"),
        Appointment.patient_id.in_(bindparam("patient_ids", expanding=True)),
        Appointment.starts_at > bindparam("now"),
        Appointment.id != bindparam("except_id"),
        or_(
            Appointment.status == AppointmentStatus.BOOKED.value,
            and_(
                Appointment.status == AppointmentStatus.HELD.value,
                Appointment.hold_expires_at > bindparam("now"),
            ),
        ),
    )
    .group_by(Appointment.patient_id)
)
"""Appointments to come per record (booked, or held and not expired; site and home)."""
_BOOKING_LOCK = text("SELECT pg_advisory_xact_lock(:space, :key)")
_DOCUMENTS_RETENTION = (
    update(PatientDocument)
    .where(
        PatientDocument.tenant_id == bindparam("tenant"),
        PatientDocument.appointment_id == bindparam("row_id"),
    )
    .values(delete_after=bindparam("delete_after"))
)
"""A rescheduled visit's documents are kept until its new end plus the retention period."""

_INSERT_CLAIMS: dict[str, Any] = {
    name: insert_into(CLAIMS_TABLE)
    .on_conflict_do_nothing(index_elements=list(CLAIM_KEY))
    .returning(CLAIMS_TABLE.c.id)
    for name, insert_into in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
"""Per database: insert claims unless their box is held (the constraint decides), returning
the ids of the claims inserted."""

_INSERT_APPOINTMENT = insert(APPOINTMENTS_TABLE)
_UPDATE_APPOINTMENT = update(APPOINTMENTS_TABLE).where(
    APPOINTMENTS_TABLE.c.tenant_id == bindparam("tenant"),
    APPOINTMENTS_TABLE.c.id == bindparam("row_id"),
)
"""Core statements: an appointment written without the ORM's unit of work (SET: the
parameters named after columns)."""

BookingCode = Literal[
    "invalid",
    "slot_taken",
    "deadline_passed",
    "hold_expired",
    "not_bookable",
    "too_many_appointments",
]


class BookingError(ValueError):
    """A booking refused for a reason the user can act on: French message, stable code."""

    code: BookingCode = "invalid"

    def __init__(
        self, message: str, code: BookingCode | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field


class SlotTakenError(BookingError):
    """Every bookable box of (one of) the visit's slots is taken."""

    code: BookingCode = "slot_taken"

    def __init__(self, message: str = SLOT_TAKEN_MESSAGE) -> None:
        super().__init__(message, "slot_taken", "starts_at")


class UnknownSiteError(BookingError):
    """The site is not one of this organization's (or has no schedule): a 404 on its URL."""

    def __init__(self) -> None:
        super().__init__("Site introuvable.", "invalid", "site_id")


class AppointmentNotFoundError(AuditedRefusalError, LookupError):
    """Absent, or the caller may not act on it: answered as the uniform 404."""

    def __init__(self) -> None:
        super().__init__("Rendez-vous introuvable.")


@dataclass(frozen=True, slots=True)
class _SiteRef:
    """What booking needs of a site: read as three columns, not loaded as an ORM object."""

    id: uuid.UUID
    name: str
    timezone: str


@dataclass(frozen=True, slots=True)
class _ExamRef:
    """What booking needs of a catalog exam (read as columns, not loaded as an ORM object)."""

    id: uuid.UUID
    rule: ExamRule
    home_sampling: bool


def _local_days_of(value: object) -> tuple[dt.date, dt.date]:
    """The UTC day of ``value`` and the days either side: its local day in any time zone
    (offsets stay within a day) is among them. An empty range for a value that is not an
    aware datetime (or is out of range): it is refused before closures matter."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        try:
            day = value.astimezone(dt.UTC).date()
            return day - dt.timedelta(days=1), day + dt.timedelta(days=1)
        except (OverflowError, ValueError):
            pass
    return dt.date.max, dt.date.min


def _aware_utc(value: dt.datetime, field: str = "starts_at") -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise BookingError(
            "Heure du rendez-vous invalide : le fuseau horaire est obligatoire.", field=field
        )
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise BookingError(f"{INSTANT_INVALID} : année hors limites.", field=field)
    try:
        moment = value.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        raise BookingError(f"{INSTANT_INVALID} : année hors limites.", field=field) from None
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise BookingError(f"{INSTANT_INVALID} : année hors limites.", field=field)
    return moment


def _clean_text(label: str, value: object, maximum: int, *, required: bool, lines: bool) -> str:
    """Trimmed, NFC text without control or invisible format characters."""
    if not isinstance(value, str):
        raise BookingError(f"{label} : texte attendu.")
    text = unicodedata.normalize("NFC", value.strip())
    if required and not text:
        raise BookingError(f"{label} : obligatoire.")
    if len(text) > maximum:
        raise BookingError(f"{label} : au plus {maximum} caractères.")
    allowed = {"\n"} if lines else set()
    for char in text:
        if char in allowed:
            continue
        if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}:
            raise BookingError(f"{label} : caractère non autorisé.")
    return text


def validate_address(address: HomeAddress) -> HomeAddress:
    """The address as it will be sealed; :class:`BookingError` (French) when it is not one."""
    line = _clean_text("Adresse", address.line, ADDRESS_LINE_MAX, required=True, lines=False)
    postal = _clean_text("Code postal", address.postal_code, 5, required=True, lines=False)
    if not POSTAL_CODE.fullmatch(postal):
        raise BookingError("Code postal : 5 chiffres attendus.")
    city = _clean_text("Ville", address.city, CITY_MAX, required=True, lines=False)
    instructions = _clean_text(
        "Indications d'accès", address.instructions, INSTRUCTIONS_MAX, required=False, lines=True
    )
    return HomeAddress(line=line, postal_code=postal, city=city, instructions=instructions)


class BookingService:
    """Booking for one caller (patient account, staff member or named system job)."""

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        scope: AccessScope | SystemAccess,
        settings: Settings,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._scope = scope
        self._settings = settings
        self._clock = clock
        self._tenant_id = keyring.tenant_id
        self._audit = keyring.audit
        self._repo = PatientRepository(session, keyring, scope)

    # -- reads ---------------------------------------------------------------------------

    def search_slots(
        self,
        site_id: uuid.UUID,
        exam_ids: Sequence[uuid.UUID],
        from_date: dt.date,
        to_date: dt.date,
    ) -> list[Slot]:
        """Slots a visit for ``exam_ids`` can start at, with free boxes; capacity only."""
        if to_date < from_date:
            raise BookingError("La date de fin précède la date de début.", field="to")
        if (to_date - from_date).days >= MAX_SEARCH_DAYS:
            raise BookingError(f"Une recherche couvre au plus {MAX_SEARCH_DAYS} jours.", field="to")
        # Closures of the days asked cover those searched (today onwards, within the horizon).
        site, schedule, closures = self._site_schedule(site_id, from_date, to_date)
        exams = self._exams(exam_ids)
        rules = [exam.rule for exam in exams]
        if not needs_appointment(rules):
            raise BookingError(
                "Ces examens se font sans rendez-vous, aux heures d'ouverture du site.",
                "not_bookable",
                "exam_ids",
            )
        now = self._clock()
        zone = ZoneInfo(schedule.timezone)
        today = now.astimezone(zone).date()
        last_day = (now + dt.timedelta(days=self._settings.booking_horizon_days)).astimezone(zone)
        first, last = max(from_date, today), min(to_date, last_day.date())
        if last < first:
            return []
        taken = self._taken(site.id, first, last, zone, now)
        slots = generate_slots(schedule, closures, first, last, now, taken)
        horizon = now + dt.timedelta(days=self._settings.booking_horizon_days)
        return [
            slot
            for slot in compatible_slots(slots, rules, schedule.slot_minutes)
            if slot.starts_at.astimezone(dt.UTC) <= horizon
        ]

    def may_read(self, patient_id: uuid.UUID) -> bool:
        """Whether the caller may read this patient's appointments (nothing decrypted); a
        "no" is recorded as a denied read, as the 404 it becomes."""
        if self._may(patient_id, Interaction.READ):
            return True
        self._denied("patient", patient_id)
        return False

    def get(self, appointment_id: uuid.UUID) -> AppointmentView | None:
        """The appointment, or None when absent or out of the caller's scope (a staff
        member: at one of its sites, and today for a ``site-today`` grant); a None is
        recorded as a denied read."""
        found = self._row_and_site(appointment_id)
        if (
            found is None
            or not self._may(found[0].patient_id, Interaction.READ)
            or not self._staff_reaches(found[0], Interaction.READ)
        ):
            self._denied(TARGET, appointment_id if isinstance(appointment_id, uuid.UUID) else None)
            return None
        return self._views([found[0]], found[1])[0]

    def list_for_patients(self, patient_ids: Sequence[uuid.UUID]) -> list[AppointmentView]:
        """Appointments of the patients in scope (others silently left out), by start time.

        Holds that expired without being confirmed are left out: they are nobody's plans.
        """
        wanted = list(dict.fromkeys(patient_ids))
        allowed = self._repo.in_scope_ids(wanted, RESOURCE, Interaction.READ)
        for patient_id in wanted:
            if patient_id not in allowed:
                self._denied("patient", patient_id if isinstance(patient_id, uuid.UUID) else None)
        if not allowed:
            return []
        now = self._clock()
        query = select(Appointment).where(
            Appointment.tenant_id == self._tenant_id,
            Appointment.patient_id.in_(sorted(allowed)),
            or_(
                Appointment.status != AppointmentStatus.HELD.value,
                Appointment.hold_expires_at > now,
            ),
        )
        staff = self._staff_limits(Interaction.READ)
        if staff is not None:
            sites, window = staff
            query = query.where(Appointment.site_id.in_(sorted(sites)))
            if window is not None:
                query = query.where(
                    Appointment.starts_at >= window[0], Appointment.starts_at < window[1]
                )
        rows = list(self._session.scalars(query.order_by(Appointment.starts_at, Appointment.id)))
        return self._views(rows)

    def exams(self, exam_ids: Iterable[uuid.UUID]) -> list[Exam]:
        """This organization's catalog rows for ``exam_ids`` (for preparation instructions)."""
        wanted = sorted(set(exam_ids))
        if not wanted:
            return []
        return list(
            self._session.scalars(
                select(Exam)
                .where(Exam.tenant_id == self._tenant_id, Exam.id.in_(wanted))
                .order_by(Exam.code)
            )
        )

    # -- writes --------------------------------------------------------------------------

    def hold(
        self,
        patient_id: uuid.UUID,
        site_id: uuid.UUID,
        exam_ids: Sequence[uuid.UUID],
        starts_at: dt.datetime,
    ) -> AppointmentView:
        """Keep the visit's slots for the patient for ``booking_hold_minutes``."""
        self._require(patient_id, Interaction.CREATE, None)
        site, schedule, closures = self._site_schedule(site_id, *_local_days_of(starts_at))
        self._require_staff_site(site.id, patient_id)
        exams = self._exams(exam_ids)
        now = self._clock()
        starts = self._check_start(schedule, closures, exams, starts_at, now)
        self._check_live_appointments(patient_id, now)
        step = dt.timedelta(minutes=schedule.slot_minutes)
        count = self._slot_count(exams, schedule)
        expires = now + dt.timedelta(minutes=self._settings.booking_hold_minutes)
        appointment_id = uuid.uuid4()
        exam_list = [exam.id for exam in exams]
        with self._all_or_nothing():
            values: dict[str, Any] = {
                "id": appointment_id,
                "tenant_id": self._tenant_id,
                "patient_id": patient_id,
                "site_id": site.id,
                "starts_at": starts,
                "ends_at": starts + step * count,
                "status": AppointmentStatus.HELD.value,
                "kind": AppointmentKind.SITE.value,
                "walk_in": False,
                "hold_expires_at": expires,
                "created_at": now,
                "updated_at": now,
                **self._booked_by(),
            }
            row = Appointment(**values)
            values["exams"] = row.exams = self._seal(row, Interaction.CREATE, exams=exam_list)[
                "exams"
            ]
            self._session.execute(_INSERT_APPOINTMENT, values)
            self._claim_visit(
                site.id,
                [starts + step * index for index in range(count)],
                appointment_id,
                schedule,
                expires,
                now,
            )
            self._audit.record(
                AuditAction.APPOINTMENT_SLOT_HOLD,
                tenant_id=self._tenant_id,
                target_type=TARGET,
                target_id=appointment_id,
                purpose=PURPOSE_BOOKING,
            )
        return self._view(row, site, tuple(exam_list), None, now)

    def confirm(self, appointment_id: uuid.UUID) -> AppointmentView:
        """Turn a hold into a booking (idempotent on a booked appointment)."""
        row, site, slot_minutes = self._existing(appointment_id, Interaction.UPDATE)
        if row.status == AppointmentStatus.BOOKED.value:
            return self._views([row], site)[0]
        if row.status != AppointmentStatus.HELD.value:
            raise BookingError("Ce rendez-vous ne peut plus être confirmé.")
        now = self._clock()
        if row.starts_at <= now:
            raise BookingError("Ce créneau est déjà passé.", "hold_expired", "starts_at")
        if row.hold_expires_at is not None and row.hold_expires_at <= now:
            # An expired hold no longer counts among the record's appointments: confirming
            # it adds one, within the same limits as a new hold.
            self._check_live_appointments(row.patient_id, now, except_id=row.id)
        with self._all_or_nothing():
            # Claims of an expired hold may have been deleted by another claimant; claims
            # still there are made permanent, so nobody may delete them from now on.
            made_permanent = self._session.execute(
                _CLAIMS_MADE_PERMANENT, {"tenant": self._tenant_id, "row_id": row.id}
            )
            kept = cast(CursorResult[Any], made_permanent).rowcount
            if kept < _expected_claims(row, slot_minutes):
                raise BookingError(
                    "Le délai de réservation est dépassé et le créneau a été pris entre-temps. "
                    "Choisissez un autre créneau.",
                    "hold_expired",
                    "starts_at",
                )
            confirmed = {
                "status": AppointmentStatus.BOOKED.value,
                "hold_expires_at": None,
                "confirmed_at": now,
                "updated_at": now,
            }
            self._session.execute(
                _UPDATE_APPOINTMENT, {"tenant": self._tenant_id, "row_id": row.id, **confirmed}
            )
            self._audit.record(
                AuditAction.APPOINTMENT_BOOKING_CONFIRM,
                tenant_id=self._tenant_id,
                target_type=TARGET,
                target_id=row.id,
                purpose=PURPOSE_BOOKING,
            )
        # The session's copy, as now stored (only once the SAVEPOINT is released: a rolled
        # back confirmation leaves it as the database has it).
        for name, value in confirmed.items():
            set_committed_value(row, name, value)
        return self._views([row], site)[0]

    def cancel(self, appointment_id: uuid.UUID) -> AppointmentView:
        """Cancel and free the boxes (patients: not after the change deadline)."""
        row, site, _ = self._existing(appointment_id, Interaction.UPDATE, change=True)
        if row.status not in LIVE_STATUSES:
            raise BookingError("Ce rendez-vous ne peut plus être annulé.")
        now = self._clock()
        self._check_deadline(row, now)
        with self._all_or_nothing():
            self._session.execute(
                delete(SlotClaim).where(
                    SlotClaim.tenant_id == self._tenant_id, SlotClaim.appointment_id == row.id
                )
            )
            row.status = AppointmentStatus.CANCELLED.value
            row.cancelled_at = now
            row.hold_expires_at = None
            row.updated_at = now
            self._session.flush()
            self._audit.record(
                AuditAction.APPOINTMENT_BOOKING_CANCEL,
                tenant_id=self._tenant_id,
                target_type=TARGET,
                target_id=row.id,
                purpose=PURPOSE_BOOKING,
            )
        return self._views([row], site)[0]

    def reschedule(self, appointment_id: uuid.UUID, starts_at: dt.datetime) -> AppointmentView:
        """Move the visit: the new slots are claimed and the old ones released together, or
        nothing changes."""
        row, _, _ = self._existing(appointment_id, Interaction.UPDATE, change=True)
        if row.status not in LIVE_STATUSES or row.kind != AppointmentKind.SITE.value:
            raise BookingError("Ce rendez-vous ne peut pas être déplacé.")
        now = self._clock()
        self._check_deadline(row, now)
        site, schedule, closures = self._site_schedule(row.site_id, *_local_days_of(starts_at))
        exam_ids = self._open_exams(row)
        exams = self._exams(exam_ids)
        starts = self._check_start(schedule, closures, exams, starts_at, now)
        step = dt.timedelta(minutes=schedule.slot_minutes)
        count = self._slot_count(exams, schedule)
        expires = row.hold_expires_at if row.status == AppointmentStatus.HELD.value else None
        if expires is not None and expires <= now:
            raise BookingError(
                "Le délai de réservation est dépassé. Choisissez à nouveau un créneau.",
                "hold_expired",
                "starts_at",
            )
        with self._all_or_nothing():
            self._session.execute(
                delete(SlotClaim).where(
                    SlotClaim.tenant_id == self._tenant_id, SlotClaim.appointment_id == row.id
                )
            )
            self._claim_visit(
                site.id,
                [starts + step * index for index in range(count)],
                row.id,
                schedule,
                expires,
                now,
            )
            row.starts_at = starts
            row.ends_at = starts + step * count
            row.reminder_sent_at = None
            row.updated_at = now
            self._session.flush()
            self._session.execute(
                _DOCUMENTS_RETENTION,
                {
                    "tenant": self._tenant_id,
                    "row_id": row.id,
                    "delete_after": row.ends_at
                    + dt.timedelta(days=self._settings.prescription_retention_days),
                },
            )
            self._audit.record(
                AuditAction.APPOINTMENT_BOOKING_RESCHEDULE,
                tenant_id=self._tenant_id,
                target_type=TARGET,
                target_id=row.id,
                purpose=PURPOSE_BOOKING,
            )
        return self._view(row, site, tuple(exam_ids), None, now)

    def request_home_visit(
        self,
        patient_id: uuid.UUID,
        site_id: uuid.UUID,
        exam_ids: Sequence[uuid.UUID],
        day: dt.date,
        window: Literal["morning", "afternoon"],
        address: HomeAddress,
    ) -> AppointmentView:
        """Ask for a home visit in a time window; the lab assigns a sampler later."""
        self._require(patient_id, Interaction.CREATE, None)
        site = self._site(site_id)
        self._require_staff_site(site.id, patient_id)
        exams = self._exams(exam_ids)
        if any(not exam.home_sampling for exam in exams):
            raise BookingError(
                "Un des examens choisis ne peut pas être prélevé à domicile.",
                "not_bookable",
                "exam_ids",
            )
        if window not in HOME_WINDOWS:
            raise BookingError("Créneau horaire : matin ou après-midi.", field="window")
        if not isinstance(day, dt.date) or isinstance(day, dt.datetime):
            raise BookingError("Date de la visite invalide.", field="day")
        now = self._clock()
        zone = ZoneInfo(site.timezone)
        if day <= now.astimezone(zone).date():
            raise BookingError(
                "La visite à domicile se demande au plus tard la veille.", field="day"
            )
        if day > (now + dt.timedelta(days=self._settings.booking_horizon_days)).date():
            raise BookingError(
                f"On ne peut réserver qu'à {self._settings.booking_horizon_days} jours au plus.",
                field="day",
            )
        opens, closes = HOME_WINDOWS[window]
        starts = dt.datetime.combine(day, opens, zone).astimezone(dt.UTC)
        ends = dt.datetime.combine(day, closes, zone).astimezone(dt.UTC)
        for exam in exams:
            window_start, window_end = exam.rule.window_start, exam.rule.window_end
            if (
                window_start is not None
                and window_end is not None
                and (window_end <= opens or window_start >= closes)
            ):
                raise BookingError(
                    "Un des examens choisis doit être prélevé à une autre heure de la journée.",
                    "not_bookable",
                    "window",
                )
        clean = validate_address(address)
        self._check_live_appointments(patient_id, now)
        exam_list = [exam.id for exam in exams]
        appointment_id = uuid.uuid4()
        with self._all_or_nothing():
            row = Appointment(
                id=appointment_id,
                tenant_id=self._tenant_id,
                patient_id=patient_id,
                site_id=site.id,
                starts_at=starts,
                ends_at=ends,
                status=AppointmentStatus.BOOKED.value,
                kind=AppointmentKind.HOME.value,
                walk_in=False,
                confirmed_at=now,
                created_at=now,
                updated_at=now,
                **self._booked_by(),
            )
            sealed = self._seal(row, Interaction.CREATE, exams=exam_list, address=clean)
            row.exams, row.home_address = sealed["exams"], sealed["home_address"]
            self._session.add(row)
            self._session.flush()
            self._audit.record(
                AuditAction.APPOINTMENT_HOME_REQUEST,
                tenant_id=self._tenant_id,
                target_type=TARGET,
                target_id=appointment_id,
                purpose=PURPOSE_BOOKING,
            )
        return self._view(row, site, tuple(exam_list), clean, now)

    # -- authorization -------------------------------------------------------------------

    def _may(self, patient_id: uuid.UUID, interaction: Interaction) -> bool:
        return patient_id in self._repo.in_scope_ids([patient_id], RESOURCE, interaction)

    def _require(
        self, patient_id: uuid.UUID, interaction: Interaction, appointment_id: uuid.UUID | None
    ) -> None:
        """Refuse (audited, answered 404) unless the policy lets the caller act."""
        if self._may(patient_id, interaction):
            return
        raise self._audit.refusal(
            AppointmentNotFoundError(),
            AuditAction.APPOINTMENT_BOOKING_REFUSED,
            tenant_id=self._tenant_id,
            target_type=TARGET if appointment_id is not None else "patient",
            target_id=appointment_id if appointment_id is not None else patient_id,
            purpose=PURPOSE_BOOKING,
        )

    def _existing(
        self, appointment_id: uuid.UUID, interaction: Interaction, *, change: bool = False
    ) -> tuple[Appointment, _SiteRef, int | None]:
        """The appointment, its site and the site's slot length (None without a schedule),
        read together, its row locked for the change to come; an audited "not found" unless
        the caller may ``interaction`` on it (a staff member: at one of its sites, today
        for a ``site-today`` grant, which may not ``change`` (cancel, move) it here: the
        desk's actions cover a sampler's work)."""
        found = self._row_and_site(appointment_id, lock=True)
        if found is None:
            raise self._refusal(TARGET, appointment_id)
        row = found[0]
        self._require(row.patient_id, interaction, row.id)
        limits = self._staff_limits(interaction)
        if not self._staff_reaches(row, interaction) or (
            change and limits is not None and limits[1] is not None
        ):
            raise self._refusal(TARGET, row.id)
        return found

    def _refusal(self, target_type: str, target_id: uuid.UUID | None) -> AuditedRefusalError:
        return self._audit.refusal(
            AppointmentNotFoundError(),
            AuditAction.APPOINTMENT_BOOKING_REFUSED,
            tenant_id=self._tenant_id,
            target_type=target_type,
            target_id=target_id,
            purpose=PURPOSE_BOOKING,
        )

    def _denied(self, target_type: str, target_id: uuid.UUID | None) -> None:
        """A read refused (answered as absent), recorded in the caller's unit of work."""
        self._audit.record(
            AuditAction.APPOINTMENT_BOOKING_REFUSED,
            tenant_id=self._tenant_id,
            target_type=target_type,
            target_id=target_id,
            purpose=PURPOSE_VIEW,
            outcome=Outcome.DENIED,
        )

    def _staff_limits(
        self, interaction: Interaction
    ) -> tuple[frozenset[uuid.UUID], tuple[dt.datetime, dt.datetime] | None] | None:
        """For a staff caller: its sites, and the day its grant is limited to (``site-today``:
        today in Paris, as its scope measures it), else None; None for anyone else.

        The policy's relationship puts a patient in a staff member's care; what it reaches
        of that patient's appointments is still its sites' (and its day's) only.
        """
        scope = self._scope
        if not isinstance(scope, AccessScope) or scope.principal.kind is not PrincipalKind.STAFF:
            return None
        grant = scope.policy.grant_for(RESOURCE, interaction)
        window = None
        if grant is not None and grant.records is RecordScope.SITE_TODAY:
            window = scope._window(RecordScope.SITE_TODAY)
        return scope.site_ids, window

    def _staff_reaches(self, row: Appointment, interaction: Interaction) -> bool:
        limits = self._staff_limits(interaction)
        if limits is None:
            return True
        sites, window = limits
        if row.site_id not in sites:
            return False
        return window is None or window[0] <= row.starts_at < window[1]

    def _require_staff_site(self, site_id: uuid.UUID, patient_id: uuid.UUID) -> None:
        """A staff member books at one of its sites only (else the same audited 404)."""
        limits = self._staff_limits(Interaction.CREATE)
        if limits is not None and site_id not in limits[0]:
            raise self._refusal("patient", patient_id)

    def _is_patient(self) -> bool:
        return (
            isinstance(self._scope, AccessScope)
            and self._scope.principal.kind is PrincipalKind.PATIENT
        )

    def _check_deadline(self, row: Appointment, now: dt.datetime) -> None:
        if row.starts_at <= now:
            raise BookingError("Ce rendez-vous est déjà passé.", "deadline_passed")
        if (
            self._is_patient()
            and row.status == AppointmentStatus.BOOKED.value
            and row.starts_at - now < self._deadline()
        ):
            hours = self._settings.booking_change_deadline_hours
            raise BookingError(
                f"Un rendez-vous ne peut plus être modifié en ligne moins de {hours} heures "
                "avant. Appelez le laboratoire.",
                "deadline_passed",
            )

    def _check_live_appointments(
        self, patient_id: uuid.UUID, now: dt.datetime, *, except_id: uuid.UUID | None = None
    ) -> None:
        """A patient account has a few appointments to come per record and in all, not a
        day's slots (slot squatting); staff are not limited.

        Counted under a lock, so that bookings running at once cannot each see room for one
        more: on PostgreSQL a transaction-scoped advisory lock per record the account acts
        for, taken in a fixed order (no deadlock). Any booking of a record takes that
        record's lock, so it waits for every other booking counted with it, the record's
        and its account's, even when two accounts (two guardians) share a record. An
        advisory lock, not a row lock: nothing else (sign-in, the desk, pre-registration)
        waits on it. SQLite serializes writers already.
        """
        if not self._is_patient():
            return
        assert isinstance(self._scope, AccessScope)
        records = sorted(self._scope.own_patient_ids | {patient_id})
        if self._session.get_bind().dialect.name == "postgresql":
            for record in records:
                key = int.from_bytes(record.bytes[:4], "big", signed=True)
                self._session.execute(_BOOKING_LOCK, {"space": BOOKING_LOCK_SPACE, "key": key})
        counts: dict[uuid.UUID, int] = {
            record: count
            for record, count in self._session.execute(
                _LIVE_PER_RECORD,
                {
                    "tenant": self._tenant_id,
                    "patient_ids": records,
                    "now": now,
                    "except_id": except_id or uuid.UUID(int=0),
                },
            )
        }
        if counts.get(patient_id, 0) >= MAX_LIVE_PER_RECORD:
            raise BookingError(
                f"Cette personne a déjà {MAX_LIVE_PER_RECORD} rendez-vous à venir. Annulez-en "
                "un ou appelez le laboratoire.",
                "too_many_appointments",
                "patient_id",
            )
        if sum(counts.values()) >= MAX_LIVE_PER_ACCOUNT:
            raise BookingError(
                f"Votre compte a déjà {MAX_LIVE_PER_ACCOUNT} rendez-vous à venir. Annulez-en "
                "un ou appelez le laboratoire.",
                "too_many_appointments",
                "patient_id",
            )

    def _deadline(self) -> dt.timedelta:
        return dt.timedelta(hours=self._settings.booking_change_deadline_hours)

    def _booked_by(self) -> dict[str, uuid.UUID | None]:
        if not isinstance(self._scope, AccessScope):
            return {"booked_by_account_id": None, "booked_by_staff_id": None}
        try:
            account_id: uuid.UUID | None = uuid.UUID(self._scope.principal.id)
        except ValueError:
            account_id = None
        return {"booked_by_account_id": account_id, "booked_by_staff_id": self._scope.staff_id}

    # -- validation ----------------------------------------------------------------------

    def _site(self, site_id: uuid.UUID) -> _SiteRef:
        if not isinstance(site_id, uuid.UUID):
            raise UnknownSiteError
        found = self._session.execute(_SITE, {"tenant": self._tenant_id, "site": site_id}).first()
        if found is None:
            raise UnknownSiteError
        return _SiteRef(found.id, found.name, found.timezone)

    def _site_schedule(
        self, site_id: uuid.UUID, closures_from: dt.date, closures_to: dt.date
    ) -> tuple[_SiteRef, Schedule, list[Closure]]:
        """The site, its schedule and its closures overlapping the given local days, in one
        query; a site without a schedule is unknown here too."""
        if not isinstance(site_id, uuid.UUID):
            raise UnknownSiteError
        rows = self._session.execute(
            _SITE_WITH_SCHEDULE,
            {
                "tenant": self._tenant_id,
                "site": site_id,
                "first": closures_from,
                "last": closures_to,
            },
        ).all()
        if not rows:
            raise UnknownSiteError
        found = rows[0]
        try:
            hours = OpeningHours.parse(found.opening_hours or {})
            schedule = Schedule(
                timezone=found.timezone,
                opening_hours=hours,
                slot_minutes=found.slot_minutes,
                sampling_boxes=found.sampling_boxes,
                walk_in_boxes=found.walk_in_boxes,
            )
        except (OpeningHoursError, ValueError):
            raise UnknownSiteError from None
        closures = [
            Closure(row.starts_on, row.ends_on)
            for row in rows
            if row.starts_on is not None and row.ends_on is not None
        ]
        return _SiteRef(found.id, found.name, found.timezone), schedule, closures

    def _exams(self, exam_ids: Sequence[uuid.UUID]) -> list[_ExamRef]:
        """Active exams of this organization, in the order asked, duplicates dropped."""
        if isinstance(exam_ids, (str, bytes)):
            raise BookingError("Examens : une liste est attendue.", field="exam_ids")
        wanted = list(dict.fromkeys(exam_ids))
        if not wanted:
            raise BookingError("Choisissez au moins un examen.", field="exam_ids")
        if len(wanted) > MAX_EXAMS:
            raise BookingError(f"Au plus {MAX_EXAMS} examens par rendez-vous.", field="exam_ids")
        if any(not isinstance(exam_id, uuid.UUID) for exam_id in wanted):
            raise BookingError("Examen introuvable.", field="exam_ids")
        found = {
            exam.id: _ExamRef(
                exam.id,
                ExamRule(
                    sampling_minutes=exam.sampling_minutes,
                    window_start=exam.window_start,
                    window_end=exam.window_end,
                    no_appointment=exam.no_appointment,
                ),
                exam.home_sampling,
            )
            for exam in self._session.execute(
                _ACTIVE_EXAMS, {"tenant": self._tenant_id, "exam_ids": wanted}
            )
        }
        if len(found) != len(wanted):
            raise BookingError("Examen introuvable.", field="exam_ids")
        return [found[exam_id] for exam_id in wanted]

    def _slot_count(self, exams: Sequence[_ExamRef], schedule: Schedule) -> int:
        minutes = visit_minutes([exam.rule for exam in exams])
        return max(1, math.ceil(minutes / schedule.slot_minutes))

    def _check_start(
        self,
        schedule: Schedule,
        closures: Sequence[Closure],
        exams: Sequence[_ExamRef],
        starts_at: dt.datetime,
        now: dt.datetime,
    ) -> dt.datetime:
        """``starts_at`` in UTC if a visit for ``exams`` may start then (capacity aside)."""
        rules = [exam.rule for exam in exams]
        if not needs_appointment(rules):
            raise BookingError(
                "Ces examens se font sans rendez-vous, aux heures d'ouverture du site.",
                "not_bookable",
                "exam_ids",
            )
        starts = _aware_utc(starts_at)
        if starts <= now:
            raise BookingError("Ce créneau est déjà passé.", field="starts_at")
        if starts > now + dt.timedelta(days=self._settings.booking_horizon_days):
            raise BookingError(
                f"On ne peut réserver qu'à {self._settings.booking_horizon_days} jours au plus.",
                field="starts_at",
            )
        if is_visit_start(schedule, closures, starts, rules, now):
            return starts
        raise BookingError(
            "Ce créneau n'est pas proposé pour ces examens. Choisissez un créneau de la liste.",
            field="starts_at",
        )

    # -- capacity ------------------------------------------------------------------------

    def _taken(
        self, site_id: uuid.UUID, first: dt.date, last: dt.date, zone: ZoneInfo, now: dt.datetime
    ) -> dict[dt.datetime, int]:
        """Live claims per slot start: bookings and holds not yet expired."""
        start = dt.datetime.combine(first, dt.time(), zone).astimezone(dt.UTC)
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), zone).astimezone(dt.UTC)
        rows = self._session.execute(
            _LIVE_CLAIMS_PER_SLOT,
            {
                "tenant": self._tenant_id,
                "site": site_id,
                "start": start,
                "end": end,
                "now": now,
            },
        )
        return {starts_at: count for starts_at, count in rows}

    def _claim_visit(
        self,
        site_id: uuid.UUID,
        starts: Sequence[dt.datetime],
        appointment_id: uuid.UUID,
        schedule: Schedule,
        expires_at: dt.datetime | None,
        now: dt.datetime,
    ) -> None:
        """Take one bookable box in each slot of the visit; :class:`SlotTakenError` if one of
        them has none left.

        The UNIQUE constraint decides: a box is taken by ``INSERT ... ON CONFLICT DO NOTHING``,
        which inserts only if no other claim holds that box, committed or in a transaction
        still running (the insert waits for its outcome). A refused box is a row not
        returned, not an error, so no SAVEPOINT per try. The boxes this transaction sees free
        are tried first, then the others (a claim seen may be gone by then), so each box is
        tried at most once and one insert usually claims the whole visit. Expired holds'
        claims of these slots are deleted first, when there are some.
        """
        slots = {"tenant": self._tenant_id, "site": site_id, "starts": list(starts)}
        seen = self._session.execute(_CLAIMS_OF_SLOTS, slots).all()
        if any(claim.expires_at is not None and claim.expires_at <= now for claim in seen):
            self._session.execute(_DELETE_EXPIRED_CLAIMS, {**slots, "now": now})
        live: dict[dt.datetime, set[int]] = {start: set() for start in starts}
        for claim in seen:
            if claim.expires_at is None or claim.expires_at > now:
                live.setdefault(claim.starts_at, set()).add(claim.box)
        boxes = range(schedule.bookable_boxes)
        tries: dict[dt.datetime, Iterator[int]] = {
            start: iter(
                [box for box in boxes if box not in live[start]]
                + [box for box in boxes if box in live[start]]
            )
            for start in starts
        }
        pending = list(starts)
        while pending:
            batch: dict[uuid.UUID, tuple[dt.datetime, int]] = {}
            for start in pending:
                box = next(tries[start], None)
                if box is None:
                    raise SlotTakenError
                batch[uuid.uuid4()] = (start, box)
            claimed = self._insert_claims(site_id, appointment_id, expires_at, batch)
            pending = [start for claim_id, (start, _) in batch.items() if claim_id not in claimed]

    def _insert_claims(
        self,
        site_id: uuid.UUID,
        appointment_id: uuid.UUID,
        expires_at: dt.datetime | None,
        batch: dict[uuid.UUID, tuple[dt.datetime, int]],
    ) -> set[uuid.UUID]:
        """Insert the claims the constraint lets through; the ids of those inserted."""
        dialect = self._session.get_bind().dialect.name
        if dialect not in _INSERT_CLAIMS:  # pragma: no cover - the databases labvault runs on
            raise NotImplementedError(f"slot claims need INSERT ... ON CONFLICT ({dialect})")
        rows = [
            {
                "id": claim_id,
                "tenant_id": self._tenant_id,
                "site_id": site_id,
                "starts_at": start,
                "box": box,
                "appointment_id": appointment_id,
                "expires_at": expires_at,
            }
            for claim_id, (start, box) in batch.items()
        ]
        try:
            return set(self._session.execute(_INSERT_CLAIMS[dialect], rows).scalars())
        except IntegrityError:
            # Not the box's constraint (that one is ON CONFLICT): as before, the slot is lost.
            raise SlotTakenError from None
        except OperationalError as error:
            # Two movers waiting on each other's boxes (a reschedule frees a box another
            # claimant is queued on while it queues on one of theirs): the server gives
            # up on one of them; for that caller the slot is as good as taken. The call's
            # SAVEPOINT (see _all_or_nothing) then undoes everything it did.
            if getattr(getattr(error, "orig", None), "sqlstate", None) == DEADLOCK:
                raise SlotTakenError from None
            raise

    def _all_or_nothing(self) -> _Savepoint:
        return _Savepoint(self._session)

    # -- sealing -------------------------------------------------------------------------

    def _seal(
        self,
        row: Appointment,
        interaction: Interaction,
        *,
        exams: Sequence[uuid.UUID] | None = None,
        address: HomeAddress | None = None,
    ) -> dict[str, bytes | None]:
        values: dict[str, bytes | None] = {}
        if exams is not None:
            values["exams"] = json.dumps({"exam_ids": [str(e) for e in exams]}).encode()
        if address is not None:
            values["home_address"] = json.dumps(
                {
                    "line": address.line,
                    "postal_code": address.postal_code,
                    "city": address.city,
                    "instructions": address.instructions,
                }
            ).encode()
        sealed = self._repo.seal_for(
            row.patient_id,
            RESOURCE,
            interaction,
            SealedItem(row.patient_id, TABLE, row.id, values),
            purpose=PURPOSE_BOOKING,
        )
        if sealed is None:
            raise self._audit.refusal(
                AppointmentNotFoundError(),
                AuditAction.APPOINTMENT_BOOKING_REFUSED,
                tenant_id=self._tenant_id,
                target_type="patient",
                target_id=row.patient_id,
                purpose=PURPOSE_BOOKING,
            )
        return sealed

    def _open_exams(self, row: Appointment) -> list[uuid.UUID]:
        if row.exams is None:
            return []
        opened = self._repo.open_for(
            RESOURCE,
            [SealedItem(row.patient_id, TABLE, row.id, {"exams": row.exams})],
            purpose=PURPOSE_BOOKING,
        )
        return _exam_ids(opened.get(row.id, {}).get("exams"))

    # -- views ---------------------------------------------------------------------------

    def _views(
        self, rows: Sequence[Appointment], site: _SiteRef | None = None
    ) -> list[AppointmentView]:
        """Views of ``rows``, their sealed parts opened in one batch when readable
        (``site``: the rows' site, when the caller already read it)."""
        if not rows:
            return []
        now = self._clock()
        items = [
            SealedItem(
                row.patient_id,
                TABLE,
                row.id,
                {"exams": row.exams, "home_address": row.home_address},
            )
            for row in rows
            if row.exams is not None or row.home_address is not None
        ]
        opened = self._repo.open_for(RESOURCE, items, purpose=PURPOSE_VIEW) if items else {}
        wanted = sorted({row.site_id for row in rows})
        if site is not None and wanted == [site.id]:
            sites = {site.id: site}
        else:
            sites = {
                found.id: _SiteRef(found.id, found.name, found.timezone)
                for found in self._session.execute(
                    _SITES, {"tenant": self._tenant_id, "site_ids": wanted}
                )
            }
        views = []
        for row in rows:
            plain = opened.get(row.id, {})
            views.append(
                self._view(
                    row,
                    sites[row.site_id],
                    tuple(_exam_ids(plain.get("exams"))),
                    _address(plain.get("home_address")),
                    now,
                )
            )
        return views

    def _view(
        self,
        row: Appointment,
        site: _SiteRef,
        exam_ids: tuple[uuid.UUID, ...],
        address: HomeAddress | None,
        now: dt.datetime,
    ) -> AppointmentView:
        changeable = row.status in LIVE_STATUSES and row.starts_at - now >= self._deadline()
        return AppointmentView(
            id=row.id,
            patient_id=row.patient_id,
            site_id=row.site_id,
            site_name=site.name,
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            status=AppointmentStatus(row.status),
            kind=AppointmentKind(row.kind),
            walk_in=row.walk_in,
            exam_ids=exam_ids,
            home_address=address,
            sampler_staff_id=row.sampler_staff_id,
            hold_expires_at=row.hold_expires_at,
            changeable=changeable,
        )

    def _row_and_site(
        self, appointment_id: uuid.UUID, *, lock: bool = False
    ) -> tuple[Appointment, _SiteRef, int | None] | None:
        """The appointment with its site and the site's slot length, in one query (its row
        locked with ``lock``)."""
        if not isinstance(appointment_id, uuid.UUID):
            return None
        found = self._session.execute(
            _ROW_WITH_SITE_LOCKED if lock else _ROW_WITH_SITE,
            {"tenant": self._tenant_id, "row_id": appointment_id},
        ).first()
        if found is None:
            return None
        row, name, timezone, slot_minutes = found
        return row, _SiteRef(row.site_id, name, timezone), slot_minutes


class _Savepoint:
    """A SAVEPOINT around one call's writes: released on success, rolled back on any error."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def __enter__(self) -> None:
        self._nested = self._session.begin_nested()

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if kind is None:
            self._nested.commit()
        elif self._nested.is_active:
            self._nested.rollback()


def _expected_claims(row: Appointment, slot_minutes: int | None) -> int:
    """How many slots the visit occupies: its length in the site's slot length."""
    if row.ends_at is None or not slot_minutes:
        return 1
    return max(1, round((row.ends_at - row.starts_at) / dt.timedelta(minutes=slot_minutes)))


def _exam_ids(blob: bytes | None) -> list[uuid.UUID]:
    if not blob:
        return []
    data = json.loads(blob)
    return [uuid.UUID(value) for value in data.get("exam_ids", [])]


def _address(blob: bytes | None) -> HomeAddress | None:
    if not blob:
        return None
    data = json.loads(blob)
    return HomeAddress(
        line=str(data.get("line", "")),
        postal_code=str(data.get("postal_code", "")),
        city=str(data.get("city", "")),
        instructions=str(data.get("instructions", "")),
    )
