"""The lab desk (accueil) as a service: what receptionists and samplers do during the day.

- The day's schedule of one of the staff member's sites: booked visits by time, with the
  patient's name, birth date and identity status (opened through ``PatientRepository``, in
  the staff member's scope), whether a pre-registration and a prescription came in. Holds
  (unconfirmed bookings) are not shown.
- Days and times are the site's own (``Site.timezone``, Europe/Paris by default): the day's
  schedule and rounds, "today" for a check-in or an identity check, are the site's local day.
- Status changes at the desk: check-in (booked -> checked in, on the day), no-show (booked
  -> no show, once the start time has passed), done (checked in -> done). A change that does
  not apply is refused with a French message and changes nothing.
- Identity check: the receptionist records the kind of document seen, for a visit of today
  at the site that is booked, checked in or done (not a cancelled, missed or other day's
  one). Only a national identity card, a passport or a residence permit raise the INS
  identity status (PROV -> VALI, RECUP -> QUAL); a driving licence or a health card (carte
  Vitale) does not. The kind is stored sealed under the patient's key ("titre de séjour"
  says the patient is a foreign national).
- Home-sampling rounds: the day's home visits of a site with their sealed address opened
  for the staff member, a sampler of that site assigned by a receptionist; a sampler sees
  their own round.

Walk-ins: the rule.

A patient who walks in has no appointment, so they are outside the receptionist's
relationship scope and ordinary searches do not find them; a walk-in pulls them into it. So
that a desk account (stolen or curious) cannot be used to pull patients into its scope in
bulk, nor to learn whether a person or a NIR is a patient of the lab:

1. Receptionists only, and only at one of their own sites (another site: the uniform 404,
   before any search).
2. The receptionist types the traits read from the identity document in front of them
   (birth name, first given name, birth date, and the NIR when the patient has a carte
   Vitale). Input checks that do not depend on the database (the sex and the NIR's
   agreement with it, to create a record) are answered before any search.
3. Lookups are limited per staff member: :data:`WALK_IN_HOURLY_LIMIT` an hour and
   :data:`WALK_IN_DAILY_LIMIT` per Paris day (whatever the site's zone, so that switching
   sites cannot add days). The lookup over the daily limit is refused and raises a security
   alert (kind :data:`WALK_IN_ALERT`, once per staff member and day) for the security
   officers. A limiter that cannot answer refuses (fail closed).
4. An exact match through the blind indexes (the narrow ``IdentityVerification`` path, every
   search and opening audited as the receptionist) must find exactly one record; found by
   NIR, the record must also bear the typed traits. Then a walk-in appointment is created at
   the site (checked in, now, no slot claim: walk-ins use the walk-in boxes), audited, and
   from then on the patient is in scope.
5. A record is created (identity status PROV) only when the receptionist asks for it and no
   record matches: not by these traits, and not by this NIR.
6. Every other outcome of the lookup or the creation (no match, several matches, the NIR
   known with other traits, a record already there) gets ONE answer,
   :class:`WalkInNotFoundError` (same message, same field, same status), and nothing is
   written but the audit of the search.

Every change is audited in the same transaction, against the patient (their access
history shows it). Anything unknown, of another site, or out of scope is the same
:class:`DeskNotFoundError` (a 404 for routes), recorded as a denied attempt.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from labvault.accounts.services import InvalidInputError
from labvault.appointments.models import (
    Appointment,
    AppointmentKind,
    AppointmentStatus,
    PatientDocument,
    Preregistration,
)
from labvault.core.access.policies import Interaction
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditedRefusalError
from labvault.core.crypto.keyring import Keyring
from labvault.core.crypto.normalize import normalize_name
from labvault.core.db import utcnow
from labvault.core.ratelimit import RateLimiter, RateLimiterUnavailable, RateRule
from labvault.organizations.models import Site
from labvault.patients.ins import IdentityStatus, Sex
from labvault.patients.nir import Nir
from labvault.patients.schemas import PatientInput
from labvault.patients.scope import AccessScope, IdentityVerification
from labvault.patients.services import (
    SUBJECT_TYPE,
    IdentityCheckOutcome,
    PatientRecord,
    PatientRepository,
    SealedItem,
)
from labvault.security.alerts import Alert, AlertSink, DatabaseAlertSink
from labvault.security.models import AlertSeverity, SecurityAlert
from labvault.staff.models import ENCRYPTED_FIELDS as STAFF_FIELDS
from labvault.staff.models import StaffMember, StaffRole, StaffSite

__all__ = [
    "DOCUMENT_LABELS",
    "STATUS_LABELS",
    "DeskConflictError",
    "DeskInputError",
    "DeskNotFoundError",
    "DeskService",
    "DocumentKind",
    "RoundRow",
    "SamplerChoice",
    "ScheduleRow",
    "SiteChoice",
    "WalkIn",
    "WalkInNotFoundError",
    "local_day",
    "paris_day",
    "parse_day",
    "site_zone",
]

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
SCHEDULE_PURPOSE: Final = "desk-schedule"
IDENTITY_PURPOSE: Final = "desk-identity-check"
WALK_IN_PURPOSE: Final = "desk-walk-in"
ROUND_PURPOSE: Final = "desk-round"
APPOINTMENT: Final = "appointment"
PATIENT: Final = "patient"
ASSIGNING_ROLES: Final = frozenset({StaffRole.RECEPTIONIST.value})
"""Who assigns samplers to home visits (samplers may update today's visits, not assign)."""
WALK_IN_HOURLY_LIMIT: Final = 10
WALK_IN_DAILY_LIMIT: Final = 20
WALK_IN_PER_STAFF_HOUR: Final = RateRule("desk-walk-in-staff", f"{WALK_IN_HOURLY_LIMIT}/hour")
WALK_IN_PER_STAFF_DAY: Final = RateRule("desk-walk-in-staff-day", f"{WALK_IN_DAILY_LIMIT}/2 days")
"""Keyed by staff member *and* Paris date: the window (48 h, longer than any day, DST
included) only expires the key, so the count is exactly per Paris day."""
WALK_IN_ALERT: Final = "desk-walk-in-limit"
MAX_NAME: Final = 100

STATUS_LABELS: Final[Mapping[str, str]] = {
    AppointmentStatus.HELD.value: "en cours de réservation",
    AppointmentStatus.BOOKED.value: "réservé",
    AppointmentStatus.CHECKED_IN.value: "arrivé",
    AppointmentStatus.DONE.value: "prélevé",
    AppointmentStatus.NO_SHOW.value: "absent",
    AppointmentStatus.CANCELLED.value: "annulé",
}


class DocumentKind(enum.StrEnum):
    """The kinds of documents a desk may be shown."""

    NATIONAL_ID = "cni"
    PASSPORT = "passeport"
    RESIDENCE_PERMIT = "titre_sejour"
    DRIVING_LICENCE = "permis_conduire"
    HEALTH_CARD = "carte_vitale"


VALID_DOCUMENTS: Final = frozenset(
    {DocumentKind.NATIONAL_ID, DocumentKind.PASSPORT, DocumentKind.RESIDENCE_PERMIT}
)
"""The documents that prove an identity for the INS (référentiel national d'identitovigilance)."""

IDENTITY_CHECK_STATUSES: Final = frozenset(
    {AppointmentStatus.BOOKED, AppointmentStatus.CHECKED_IN, AppointmentStatus.DONE}
)
"""The visits an identity check may be recorded for (and only on their day, at the site)."""

DOCUMENT_LABELS: Final[Mapping[str, str]] = {
    DocumentKind.NATIONAL_ID.value: "Carte nationale d'identité",
    DocumentKind.PASSPORT.value: "Passeport",
    DocumentKind.RESIDENCE_PERMIT.value: "Titre de séjour",
    DocumentKind.DRIVING_LICENCE.value: "Permis de conduire",
    DocumentKind.HEALTH_CARD.value: "Carte Vitale",
}

NOT_AN_IDENTITY_DOCUMENT: Final = (
    "Ce document ne permet pas de valider l'identité : seuls la carte nationale d'identité, "
    "le passeport ou le titre de séjour comptent. L'identité n'a pas été modifiée."
)
WALK_IN_NO_MATCH: Final = (
    "Le passage n'a pas pu être enregistré avec ces informations. Vérifiez-les sur la pièce "
    "d'identité. Si le patient n'a pas encore de dossier au laboratoire, vous pouvez en créer "
    "un ; si cela ne convient pas non plus, adressez-vous au référent en identitovigilance."
)
"""The one answer to every refusal of a walk-in lookup or creation (see the module's rule)."""
TOO_MANY_THIS_HOUR: Final = (
    "Trop de recherches de dossiers sans rendez-vous en peu de temps. Réessayez dans une heure."
)
TOO_MANY_TODAY: Final = (
    "Trop de recherches de dossiers sans rendez-vous aujourd'hui : la limite quotidienne est "
    "atteinte et l'équipe sécurité a été prévenue. Enregistrez les patients sans rendez-vous "
    "depuis un autre poste ou demain."
)
LIMITER_DOWN: Final = (
    "La recherche de dossiers est momentanément indisponible. Réessayez dans quelques minutes."
)
IDENTITY_NOT_TODAY: Final = (
    "La pièce d'identité s'enregistre pour un rendez-vous d'aujourd'hui sur ce site, réservé, "
    "arrivé ou prélevé."
)


# --- errors -----------------------------------------------------------------------------------


class DeskNotFoundError(AuditedRefusalError, LookupError):
    """Unknown, of another site, out of scope or not granted: one answer (404)."""


class DeskInputError(InvalidInputError):
    """Input that cannot be used as given: a French message, by field when it is one's."""

    code = "invalid"

    def __init__(self, message: str, field: str = "formulaire") -> None:
        super().__init__(message)
        self.field = field


class DeskConflictError(DeskInputError):
    """A status change that does not apply to the appointment as it is now (409)."""

    code = "conflict"


class WalkInNotFoundError(DeskInputError):
    """Every refusal of a walk-in lookup or creation: one message, field and status."""

    code = "no_unique_match"

    def __init__(self) -> None:
        super().__init__(WALK_IN_NO_MATCH)


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteChoice:
    id: uuid.UUID
    name: str
    timezone: str = "Europe/Paris"

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return site_zone(self.timezone)


@dataclass(frozen=True, slots=True, repr=False)
class ScheduleRow:
    """One line of the day's schedule. Its repr shows ids only."""

    appointment_id: uuid.UUID
    patient_id: uuid.UUID
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    status: AppointmentStatus
    kind: AppointmentKind
    walk_in: bool
    birth_name: str
    used_name: str | None
    first_names: str
    birth_date: dt.date | None
    identity_status: IdentityStatus | None
    preregistered: bool
    prescription: bool
    can_check_in: bool
    can_no_show: bool
    can_finish: bool
    can_check_identity: bool = False

    def __repr__(self) -> str:
        return f"ScheduleRow(appointment={self.appointment_id}, status={self.status.value})"

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[self.status.value]


@dataclass(frozen=True, slots=True, repr=False)
class RoundRow:
    """One home visit of a round, with its address opened for the staff member."""

    appointment_id: uuid.UUID
    patient_id: uuid.UUID
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    status: AppointmentStatus
    birth_name: str
    first_names: str
    address_line: str
    postal_code: str
    city: str
    instructions: str
    sampler_staff_id: uuid.UUID | None

    def __repr__(self) -> str:
        return f"RoundRow(appointment={self.appointment_id}, status={self.status.value})"

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[self.status.value]


@dataclass(frozen=True, slots=True, repr=False)
class SamplerChoice:
    id: uuid.UUID
    name: str

    def __repr__(self) -> str:
        return f"SamplerChoice(id={self.id})"


@dataclass(frozen=True, slots=True)
class WalkIn:
    appointment_id: uuid.UUID
    patient_id: uuid.UUID
    created_record: bool


@dataclass(frozen=True, slots=True)
class StatusChange:
    appointment_id: uuid.UUID
    patient_id: uuid.UUID
    status: AppointmentStatus


# --- days -------------------------------------------------------------------------------------


def site_zone(name: str | None) -> zoneinfo.ZoneInfo:
    """A site's time zone; an unknown or empty name falls back to Europe/Paris."""
    try:
        return zoneinfo.ZoneInfo(name) if name else PARIS
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, KeyError):
        return PARIS


def local_day(moment: dt.datetime, zone: dt.tzinfo) -> dt.date:
    return moment.astimezone(zone).date()


def paris_day(moment: dt.datetime) -> dt.date:
    return local_day(moment, PARIS)


def parse_day(text: str | None, *, today: dt.date) -> dt.date:
    """``YYYY-MM-DD`` only (no "0", no timestamps), within a year of today; empty: today."""
    if text is None or not text.strip():
        return today
    value = text.strip()
    day: dt.date | None = None
    if (
        len(value) == 10
        and value[4] == "-"
        and value[7] == "-"
        and value.replace("-", "").isdigit()
    ):
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            day = None
    if day is None:
        raise DeskInputError("Saisissez un jour réel, au format AAAA-MM-JJ.", "jour")
    if abs((day - today).days) > 366:
        raise DeskInputError("Choisissez un jour à moins d'un an d'aujourd'hui.", "jour")
    return day


def _day_bounds(day: dt.date, zone: dt.tzinfo = PARIS) -> tuple[dt.datetime, dt.datetime]:
    """The UTC instants a local day starts and ends at (23, 24 or 25 hours long)."""
    start = dt.datetime.combine(day, dt.time(), zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


# --- the service ------------------------------------------------------------------------------


class DeskService:
    """The desk of one staff member (``scope``: their role's policy and their sites), in the
    caller's transaction. ``limiter`` throttles walk-in lookups (``None``: not throttled);
    ``alerts`` receives the alert of a reached daily limit (default: the security page's
    table, in this transaction)."""

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        scope: AccessScope,
        *,
        limiter: RateLimiter | None = None,
        alerts: AlertSink | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        if scope.principal != keyring.principal or scope.tenant_id != keyring.tenant_id:
            raise ValueError("the scope is another principal's or tenant's")
        self._session = session
        self._keyring = keyring
        self._scope = scope
        self._limiter = limiter
        self._alerts = alerts or DatabaseAlertSink(session, keyring.audit)
        self._clock = clock
        self._tenant_id = keyring.tenant_id
        self._repository = PatientRepository(session, keyring, scope)

    # -- plumbing --------------------------------------------------------------------------

    @property
    def role(self) -> str | None:
        return self._scope.principal.role

    def now(self) -> dt.datetime:
        return self._clock()

    def today(self, site: SiteChoice | None = None) -> dt.date:
        """Today at the site (its own time zone), Paris without a site."""
        return local_day(self.now(), site.zone if site is not None else PARIS)

    def _zone_of(self, site_id: uuid.UUID) -> zoneinfo.ZoneInfo:
        for site in self.sites():
            if site.id == site_id:
                return site.zone
        return PARIS

    def allows(self, resource: str, interaction: Interaction) -> bool:
        return self._scope.staff_id is not None and self._scope.policy.allows(resource, interaction)

    def _refused(
        self,
        action: AuditAction,
        target_type: str,
        target_id: uuid.UUID | None,
        purpose: str = SCHEDULE_PURPOSE,
    ) -> DeskNotFoundError:
        return self._keyring.audit.refusal(
            DeskNotFoundError("not found"),
            action,
            tenant_id=self._tenant_id,
            target_type=target_type,
            target_id=target_id,
            purpose=purpose,
        )  # type: ignore[return-value]

    def _require(
        self, resource: str, interaction: Interaction, action: AuditAction, purpose: str
    ) -> None:
        if not self.allows(resource, interaction):
            raise self._refused(action, resource, None, purpose)

    def _record(self, action: AuditAction, patient_id: uuid.UUID, purpose: str) -> None:
        self._keyring.audit.record(
            action,
            tenant_id=self._tenant_id,
            target_type=PATIENT,
            target_id=patient_id,
            purpose=purpose,
        )

    # -- sites -----------------------------------------------------------------------------

    def sites(self) -> list[SiteChoice]:
        """The staff member's sites, by name."""
        if not self._scope.site_ids:
            return []
        rows = self._session.execute(
            select(Site.id, Site.name, Site.timezone)
            .where(Site.tenant_id == self._tenant_id, Site.id.in_(sorted(self._scope.site_ids)))
            .order_by(Site.name, Site.id)
        )
        return [SiteChoice(site_id, name, zone or "Europe/Paris") for site_id, name, zone in rows]

    def site(
        self,
        site_id: uuid.UUID | None,
        action: AuditAction = AuditAction.PATIENT_RECORD_READ,
    ) -> SiteChoice:
        """One of the staff member's sites (``None``: the first), else ``DeskNotFoundError``."""
        sites = self.sites()
        if site_id is None and sites:
            return sites[0]
        for site in sites:
            if site.id == site_id:
                return site
        raise self._refused(action, "site", site_id)

    # -- the day's schedule ----------------------------------------------------------------

    def schedule(self, site_id: uuid.UUID, day: dt.date) -> list[ScheduleRow]:
        """The day's visits at the site (not holds, not home visits), by time; only the
        patients the staff member may read (a sampler: today's). ``day`` is the site's."""
        self._require(
            APPOINTMENT, Interaction.READ, AuditAction.PATIENT_RECORD_READ, SCHEDULE_PURPOSE
        )
        site = self.site(site_id)
        zone = site.zone
        start, end = _day_bounds(day, zone)
        appointments = list(
            self._session.scalars(
                select(Appointment)
                .where(
                    Appointment.tenant_id == self._tenant_id,
                    Appointment.site_id == site_id,
                    Appointment.starts_at >= start,
                    Appointment.starts_at < end,
                    Appointment.status != AppointmentStatus.HELD.value,
                    Appointment.kind == AppointmentKind.SITE.value,
                )
                .order_by(Appointment.starts_at, Appointment.id)
            )
        )
        allowed = self._repository.in_scope_ids(
            [a.patient_id for a in appointments], APPOINTMENT, Interaction.READ
        )
        appointments = self._listable(a for a in appointments if a.patient_id in allowed)
        records = {
            r.id: r
            for r in self._repository.get_many(
                [a.patient_id for a in appointments], purpose=SCHEDULE_PURPOSE
            )
        }
        ids = [a.id for a in appointments]
        preregistered = self._appointments_with(Preregistration, ids)
        prescribed = self._appointments_with(PatientDocument, ids)
        may_update = self.allows(APPOINTMENT, Interaction.UPDATE)
        may_check_identity = self.allows(PATIENT, Interaction.UPDATE)
        now = self.now()
        today = local_day(now, zone)
        rows = []
        for appointment in appointments:
            record = records.get(appointment.patient_id)
            if record is None:
                continue
            status = AppointmentStatus(appointment.status)
            is_today = local_day(appointment.starts_at, zone) == today
            rows.append(
                ScheduleRow(
                    appointment_id=appointment.id,
                    patient_id=appointment.patient_id,
                    starts_at=appointment.starts_at,
                    ends_at=appointment.ends_at,
                    status=status,
                    kind=AppointmentKind(appointment.kind),
                    walk_in=appointment.walk_in,
                    birth_name=record.birth_name or "",
                    used_name=record.used_name,
                    first_names=record.first_names or "",
                    birth_date=record.birth_date,
                    identity_status=record.identity_status,
                    preregistered=appointment.id in preregistered,
                    prescription=appointment.id in prescribed,
                    can_check_in=may_update and status is AppointmentStatus.BOOKED and is_today,
                    can_no_show=may_update
                    and status is AppointmentStatus.BOOKED
                    and appointment.starts_at <= now,
                    can_finish=may_update and status is AppointmentStatus.CHECKED_IN,
                    can_check_identity=may_check_identity
                    and status in IDENTITY_CHECK_STATUSES
                    and is_today,
                )
            )
        return rows

    def _listable(self, appointments: Iterable[Appointment]) -> list[Appointment]:
        """``appointments`` without those of records no list may show (honey records),
        before anything is decrypted: a list never opens them, a read by id still does."""
        rows = list(appointments)
        shown = set(self._keyring.visible(SUBJECT_TYPE, [a.patient_id for a in rows]))
        return [a for a in rows if a.patient_id in shown]

    def _appointments_with(
        self, model: type[Preregistration] | type[PatientDocument], ids: Sequence[uuid.UUID]
    ) -> frozenset[uuid.UUID]:
        """Which of the appointments have a row of ``model`` (nothing opened)."""
        if not ids:
            return frozenset()
        found = self._session.scalars(
            select(model.appointment_id).where(
                model.tenant_id == self._tenant_id, model.appointment_id.in_(sorted(ids))
            )
        )
        return frozenset(found_id for found_id in found if found_id is not None)

    # -- status changes --------------------------------------------------------------------

    def _appointment(
        self,
        appointment_id: uuid.UUID,
        resource: str,
        interaction: Interaction,
        action: AuditAction,
        purpose: str = SCHEDULE_PURPOSE,
    ) -> Appointment:
        """The appointment, at one of the staff member's sites, not a hold, its patient in
        scope for ``resource``/``interaction``; else the audited uniform refusal."""
        if not self.allows(resource, interaction) or not self._scope.site_ids:
            raise self._refused(action, APPOINTMENT, appointment_id, purpose)
        appointment = self._session.scalars(
            select(Appointment)
            .where(
                Appointment.tenant_id == self._tenant_id,
                Appointment.id == appointment_id,
                Appointment.site_id.in_(sorted(self._scope.site_ids)),
                Appointment.status != AppointmentStatus.HELD.value,
            )
            .with_for_update()
        ).one_or_none()
        if appointment is None or appointment.patient_id not in self._repository.in_scope_ids(
            [appointment.patient_id], resource, interaction
        ):
            raise self._refused(action, APPOINTMENT, appointment_id, purpose)
        return appointment

    def _move(
        self,
        appointment: Appointment,
        expected: AppointmentStatus,
        new: AppointmentStatus,
        action: AuditAction,
        **values: object,
    ) -> StatusChange:
        """``expected`` -> ``new`` in one conditional UPDATE: two desks clicking at once
        cannot both succeed."""
        now = self.now()
        moved = self._session.execute(
            update(Appointment)
            .where(
                Appointment.tenant_id == self._tenant_id,
                Appointment.id == appointment.id,
                Appointment.status == expected.value,
            )
            .values(status=new.value, updated_at=now, **values)
            .execution_options(synchronize_session=False)
        )
        if getattr(moved, "rowcount", 0) != 1:
            raise DeskConflictError(
                "Ce rendez-vous vient d'être modifié par quelqu'un d'autre. Rechargez la page."
            )
        self._session.expire(appointment)
        self._record(action, appointment.patient_id, SCHEDULE_PURPOSE)
        return StatusChange(appointment.id, appointment.patient_id, new)

    @staticmethod
    def _status_refusal(status: AppointmentStatus, wanted: str) -> DeskConflictError:
        return DeskConflictError(
            f"Impossible de {wanted} : ce rendez-vous est « {STATUS_LABELS[status.value]} »."
        )

    def check_in(self, appointment_id: uuid.UUID) -> StatusChange:
        """Booked -> checked in, on the appointment's day (the site's local day)."""
        action = AuditAction.APPOINTMENT_DESK_CHECK_IN
        appointment = self._appointment(appointment_id, APPOINTMENT, Interaction.UPDATE, action)
        status = AppointmentStatus(appointment.status)
        if status is not AppointmentStatus.BOOKED:
            raise self._status_refusal(status, "enregistrer l'arrivée")
        zone = self._zone_of(appointment.site_id)
        if local_day(appointment.starts_at, zone) != local_day(self.now(), zone):
            raise DeskConflictError(
                "Ce rendez-vous n'est pas aujourd'hui : l'arrivée s'enregistre le jour même."
            )
        now = self.now()
        return self._move(
            appointment, status, AppointmentStatus.CHECKED_IN, action, checked_in_at=now
        )

    def no_show(self, appointment_id: uuid.UUID) -> StatusChange:
        """Booked -> no show, once the start time has passed (an instant: no time zone)."""
        action = AuditAction.APPOINTMENT_DESK_NO_SHOW
        appointment = self._appointment(appointment_id, APPOINTMENT, Interaction.UPDATE, action)
        status = AppointmentStatus(appointment.status)
        if status is not AppointmentStatus.BOOKED:
            raise self._status_refusal(status, "noter l'absence")
        if appointment.starts_at > self.now():
            raise DeskConflictError(
                "Un patient ne peut être noté absent qu'une fois l'heure du rendez-vous passée."
            )
        return self._move(appointment, status, AppointmentStatus.NO_SHOW, action)

    def finish(self, appointment_id: uuid.UUID) -> StatusChange:
        """Checked in -> done (the sampling is over)."""
        action = AuditAction.APPOINTMENT_DESK_DONE
        appointment = self._appointment(appointment_id, APPOINTMENT, Interaction.UPDATE, action)
        status = AppointmentStatus(appointment.status)
        if status is not AppointmentStatus.CHECKED_IN:
            raise self._status_refusal(status, "noter le prélèvement comme fait")
        return self._move(appointment, status, AppointmentStatus.DONE, action)

    # -- identity check --------------------------------------------------------------------

    def identity_check(self, appointment_id: uuid.UUID, document_kind: str) -> IdentityCheckOutcome:
        """Record the document seen for the appointment's patient and raise their identity
        status. Only for a visit of today at its site that is booked, checked in or done
        (else a conflict); a document that does not prove an identity is refused. Refused:
        nothing written."""
        action = AuditAction.PATIENT_IDENTITY_CHECK
        appointment = self._appointment(
            appointment_id, PATIENT, Interaction.UPDATE, action, IDENTITY_PURPOSE
        )
        zone = self._zone_of(appointment.site_id)
        is_today = local_day(appointment.starts_at, zone) == local_day(self.now(), zone)
        if AppointmentStatus(appointment.status) not in IDENTITY_CHECK_STATUSES or not is_today:
            raise DeskConflictError(IDENTITY_NOT_TODAY)
        try:
            kind = DocumentKind(document_kind)
        except ValueError:
            raise DeskInputError(
                "Choisissez le document d'identité présenté.", "document_kind"
            ) from None
        if kind not in VALID_DOCUMENTS:
            raise DeskInputError(NOT_AN_IDENTITY_DOCUMENT, "document_kind")
        if self._scope.staff_id is None:  # pragma: no cover - allows() checked it
            raise self._refused(action, APPOINTMENT, appointment_id, IDENTITY_PURPOSE)
        outcome = self._repository.record_identity_check(
            appointment.patient_id,
            kind.value,
            staff_id=self._scope.staff_id,
            appointment_id=appointment.id,
            purpose=IDENTITY_PURPOSE,
        )
        if outcome is None:
            raise self._refused(action, APPOINTMENT, appointment_id, IDENTITY_PURPOSE)
        return outcome

    # -- walk-ins --------------------------------------------------------------------------

    def walk_in(
        self,
        site_id: uuid.UUID | None,
        *,
        birth_name: str,
        first_name: str,
        birth_date: dt.date,
        nir: Nir | None,
        create: bool = False,
        sex: Sex | None = None,
    ) -> WalkIn:
        """Register a patient who walks in (see the module's rule). ``create``: no record
        matches and the receptionist registers a new one (``sex`` required) from the traits.
        Every refusal of the lookup or the creation is :class:`WalkInNotFoundError`."""
        action = AuditAction.APPOINTMENT_DESK_WALK_IN
        self._require(APPOINTMENT, Interaction.CREATE, action, WALK_IN_PURPOSE)
        site = self.site(site_id, action)
        person: PatientInput | None = None
        if create:
            # Answered from the input alone, before any search: the same for everyone.
            if sex is None:
                raise DeskInputError("Indiquez le sexe du patient pour créer son dossier.", "sex")
            person = _new_patient(birth_name, first_name, birth_date, nir, sex)
        self._throttle()
        fields = frozenset({"birth_name", "first_names", "birth_date"})
        verifier = PatientRepository(self._session, self._keyring, IdentityVerification(fields))
        if nir is not None:
            found = [
                record
                for record in verifier.find_by_nir(nir, purpose=WALK_IN_PURPOSE)
                if _same_person(record, birth_name, first_name, birth_date)
            ]
        else:
            found = verifier.find_by_name(
                birth_name, first_name, birth_date, purpose=WALK_IN_PURPOSE
            )
        now = self.now()
        if person is not None:
            if found:
                raise WalkInNotFoundError
            # Nothing is inserted when a record is already known (by NIR or by traits).
            result = self._repository.register_many([person], purpose=WALK_IN_PURPOSE)
            if result.existing or not result.created:
                raise WalkInNotFoundError
            patient_id = result.created[0]
            created = True
        elif len(found) != 1:
            raise WalkInNotFoundError
        else:
            patient_id = found[0].id
            created = False
            start, end = _day_bounds(local_day(now, site.zone), site.zone)
            already = self._session.scalar(
                select(Appointment.id).where(
                    Appointment.tenant_id == self._tenant_id,
                    Appointment.patient_id == patient_id,
                    Appointment.site_id == site.id,
                    Appointment.starts_at >= start,
                    Appointment.starts_at < end,
                    Appointment.status.in_(
                        [AppointmentStatus.BOOKED.value, AppointmentStatus.CHECKED_IN.value]
                    ),
                )
            )
            if already is not None:
                raise DeskConflictError(
                    "Ce patient a déjà un rendez-vous aujourd'hui sur ce site : enregistrez son "
                    "arrivée depuis le planning."
                )
        appointment = Appointment(
            id=uuid.uuid4(),
            tenant_id=self._tenant_id,
            patient_id=patient_id,
            site_id=site.id,
            starts_at=now,
            status=AppointmentStatus.CHECKED_IN.value,
            kind=AppointmentKind.SITE.value,
            walk_in=True,
            booked_by_staff_id=self._scope.staff_id,
            confirmed_at=now,
            checked_in_at=now,
            created_at=now,
            updated_at=now,
        )
        self._session.add(appointment)
        self._session.flush()
        self._record(action, patient_id, WALK_IN_PURPOSE)
        return WalkIn(appointment.id, patient_id, created)

    def _throttle(self) -> None:
        """Count one walk-in lookup against the hourly and the daily (Paris day) limits of
        the staff member; the daily one, once reached, raises an alert. Fails closed."""
        if self._limiter is None or self._scope.staff_id is None:
            return
        staff = self._scope.staff_id.hex
        day = paris_day(self.now())
        try:
            hourly = self._limiter.hit(WALK_IN_PER_STAFF_HOUR, staff)
            if not hourly.allowed:
                raise DeskInputError(TOO_MANY_THIS_HOUR)
            daily = self._limiter.hit(WALK_IN_PER_STAFF_DAY, f"{staff}-{day:%Y%m%d}")
        except RateLimiterUnavailable:
            raise DeskInputError(LIMITER_DOWN) from None
        if not daily.allowed:
            self._alert_daily_limit(day)
            raise DeskInputError(TOO_MANY_TODAY)

    def _alert_daily_limit(self, day: dt.date) -> None:
        """One alert per staff member and Paris day, however often they retry after it."""
        principal = self._keyring.principal
        since, _ = _day_bounds(day)
        raised = self._session.scalar(
            select(SecurityAlert.id)
            .where(
                SecurityAlert.tenant_id == self._tenant_id,
                SecurityAlert.kind == WALK_IN_ALERT,
                SecurityAlert.actor_id == principal.id,
                SecurityAlert.created_at >= since,
            )
            .limit(1)
        )
        if raised is not None:
            return
        self._alerts.raise_alert(
            Alert(
                tenant_id=self._tenant_id,
                kind=WALK_IN_ALERT,
                severity=AlertSeverity.WARNING,
                actor=principal,
                target_type="staff",
                target_id=self._scope.staff_id,
            )
        )

    # -- home-sampling rounds --------------------------------------------------------------

    def round(self, site_id: uuid.UUID, day: dt.date) -> list[RoundRow]:
        """The day's home visits of the site (a sampler: only their own), addresses opened.
        ``day`` is the site's."""
        self._require(APPOINTMENT, Interaction.READ, AuditAction.PATIENT_RECORD_READ, ROUND_PURPOSE)
        site = self.site(site_id)
        start, end = _day_bounds(day, site.zone)
        query = select(Appointment).where(
            Appointment.tenant_id == self._tenant_id,
            Appointment.site_id == site_id,
            Appointment.starts_at >= start,
            Appointment.starts_at < end,
            Appointment.kind == AppointmentKind.HOME.value,
            Appointment.status.not_in(
                [AppointmentStatus.HELD.value, AppointmentStatus.CANCELLED.value]
            ),
        )
        if self.role == StaffRole.SAMPLER.value:
            query = query.where(Appointment.sampler_staff_id == self._scope.staff_id)
        visits = list(self._session.scalars(query.order_by(Appointment.starts_at, Appointment.id)))
        allowed = self._repository.in_scope_ids(
            [v.patient_id for v in visits], APPOINTMENT, Interaction.READ
        )
        return self._round_rows(self._listable(v for v in visits if v.patient_id in allowed))

    def _round_rows(self, visits: Sequence[Appointment]) -> list[RoundRow]:
        """The rows of ``visits`` (in the caller's scope), names and addresses opened."""
        records = {
            r.id: r
            for r in self._repository.get_many(
                [v.patient_id for v in visits], purpose=ROUND_PURPOSE
            )
        }
        opened = self._repository.open_for(
            APPOINTMENT,
            [
                SealedItem(v.patient_id, "appointments", v.id, {"home_address": v.home_address})
                for v in visits
                if v.home_address is not None
            ],
            purpose=ROUND_PURPOSE,
        )
        rows = []
        for visit in visits:
            record = records.get(visit.patient_id)
            if record is None:
                continue
            address = _address(opened.get(visit.id, {}).get("home_address"))
            rows.append(
                RoundRow(
                    appointment_id=visit.id,
                    patient_id=visit.patient_id,
                    starts_at=visit.starts_at,
                    ends_at=visit.ends_at,
                    status=AppointmentStatus(visit.status),
                    birth_name=record.birth_name or "",
                    first_names=record.first_names or "",
                    address_line=address.get("line", ""),
                    postal_code=address.get("postal_code", ""),
                    city=address.get("city", ""),
                    instructions=address.get("instructions", ""),
                    sampler_staff_id=visit.sampler_staff_id,
                )
            )
        return rows

    def samplers(self, site_id: uuid.UUID) -> list[SamplerChoice]:
        """The active samplers of the site, by name (their names opened for the desk)."""
        self.site(site_id)
        members = list(self._session.scalars(self._samplers_of(site_id)))
        if not members:
            return []
        keys = self._keyring.open_data_keys("staff", [m.id for m in members], ROUND_PURPOSE)
        choices = []
        for member in members:
            opened = keys[member.id].open_row(
                "staff_members",
                member.id,
                {c: getattr(member, c) for c in STAFF_FIELDS if c != "email"},
            )
            name = " ".join(
                (opened.get(c) or b"").decode() for c in ("first_name", "last_name")
            ).strip()
            choices.append(SamplerChoice(member.id, name))
        return sorted(choices, key=lambda c: (normalize_name(c.name), c.id))

    def assign_sampler(self, appointment_id: uuid.UUID, sampler_staff_id: uuid.UUID) -> RoundRow:
        """A receptionist gives a home visit to a sampler of the visit's site."""
        action = AuditAction.APPOINTMENT_HOME_ASSIGN
        if self.role not in ASSIGNING_ROLES:
            raise self._refused(action, APPOINTMENT, appointment_id, ROUND_PURPOSE)
        appointment = self._appointment(
            appointment_id, APPOINTMENT, Interaction.UPDATE, action, ROUND_PURPOSE
        )
        if appointment.kind != AppointmentKind.HOME.value:
            raise DeskConflictError("Ce rendez-vous n'est pas un prélèvement à domicile.")
        status = AppointmentStatus(appointment.status)
        if status is not AppointmentStatus.BOOKED:
            raise self._status_refusal(status, "affecter un préleveur")
        samplers = self._samplers_of(appointment.site_id).with_only_columns(StaffMember.id)
        if sampler_staff_id not in set(self._session.scalars(samplers)):
            raise DeskInputError("Choisissez un préleveur de ce site.", "sampler_staff_id")
        appointment.sampler_staff_id = sampler_staff_id
        appointment.updated_at = self.now()
        self._session.flush()
        self._record(action, appointment.patient_id, ROUND_PURPOSE)
        # By id, not through the round's list: this visit's record is opened as it is.
        rows = self._round_rows([appointment])
        if rows:
            return rows[0]
        raise self._refused(action, APPOINTMENT, appointment_id, ROUND_PURPOSE)

    def _samplers_of(self, site_id: uuid.UUID) -> Select[StaffMember]:
        return (
            select(StaffMember)
            .join(
                StaffSite,
                (StaffSite.staff_id == StaffMember.id)
                & (StaffSite.tenant_id == StaffMember.tenant_id),
            )
            .where(
                StaffMember.tenant_id == self._tenant_id,
                StaffMember.role == StaffRole.SAMPLER.value,
                StaffMember.active.is_(True),
                StaffSite.site_id == site_id,
            )
        )


def _new_patient(
    birth_name: str, first_name: str, birth_date: dt.date, nir: Nir | None, sex: Sex
) -> PatientInput:
    """The record a walk-in would create, checked from the input alone (no search)."""
    try:
        return PatientInput(
            birth_name=birth_name,
            first_names=first_name,
            birth_date=birth_date,
            sex=sex,
            nir=nir,
        )
    except ValueError:
        raise DeskInputError(
            "Ces informations ne permettent pas de créer le dossier : vérifiez le NIR, "
            "le sexe et la date de naissance."
        ) from None


def _same_person(record: PatientRecord, birth_name: str, first_name: str, born: dt.date) -> bool:
    """The record found by NIR also bears the traits on the document: birth name and birth
    date equal, the first name typed one of its given names (normalised)."""
    if record.birth_date != born or not record.birth_name or not record.first_names:
        return False
    given = {normalize_name(part) for part in record.first_names.replace(",", " ").split()}
    return normalize_name(record.birth_name) == normalize_name(birth_name) and (
        normalize_name(first_name) in given
        or normalize_name(first_name) == normalize_name(record.first_names)
    )


def _address(blob: bytes | None) -> dict[str, str]:
    if not blob:
        return {}
    try:
        value = json.loads(blob)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
