"""The retention job (``labvault retention run``): what booking leaves behind, removed once
it has served, per organization, idempotently, audited with counts only.

1. Expired holds: an appointment still ``held`` after ``hold_expires_at`` was never
   booked; its row goes, and its slot claims with it (cascade). Slot claims that a race
   left behind are deleted too, so that they cannot block a box for ever: the claims of an
   appointment no longer held, booked or checked in (cancelled, missed, done), and a
   hold's claims past their own ``expires_at``.
2. Prescriptions (``patient_documents``) past ``delete_after`` (the visit plus
   ``LABVAULT_PRESCRIPTION_RETENTION_DAYS``, set at upload) are deleted: one
   ``patient:document:delete`` event each, purpose ``retention``, in the patient's access
   history. ``delete_after`` is not moved when the visit is: a document linked to an
   appointment therefore also waits until that appointment's visit (as it is now) plus
   the retention period has passed, and is never deleted while its appointment is still
   to come; its ``delete_after`` is then moved to that date, so that the patient's list
   shows when it will really go. A document of an appointment being anonymised (below) that has no
   ``delete_after`` goes with it: nothing outlives the appointment's retention.
3. Appointments whose visit (``ends_at``, else ``starts_at``) is older than
   ``LABVAULT_APPOINTMENT_RETENTION_DAYS``: their pre-registration is deleted, their sealed
   exams and home address are set to NULL and ``anonymised_at`` is set. The row stays: site,
   time, status and box are the lab's planning and statistics, nothing personal is sealed
   in it any more (its ``patient_id`` is a random id; the record itself is kept by law).

Then one ``retention:run:complete`` event per organization, target the organization, its
purpose holding the counts (``retention/h:1/d:2/p:1/a:3/c:0``: holds, documents,
pre-registrations, appointments, claims). A dry run counts the
same rows and changes nothing, not even the log. Nothing is decrypted: rows are selected
by dates and ids only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from sqlalchemy import ColumnElement, Result, Select, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from labvault.appointments.models import (
    Appointment,
    AppointmentStatus,
    PatientDocument,
    Preregistration,
    SlotClaim,
)
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext, AuditTrail

__all__ = ["JOB", "PURPOSE", "RetentionReport", "RetentionSettings", "run_retention"]

JOB = "job:retention"
PURPOSE = "retention"
ORGANIZATION_TARGET = "organization"
PURPOSE_COUNT_CAP = 99_999_999
PATIENT_TARGET = "patient"


ACTIVE_STATUSES = (
    AppointmentStatus.HELD.value,
    AppointmentStatus.BOOKED.value,
    AppointmentStatus.CHECKED_IN.value,
)
"""The statuses whose slot claims stand (a hold only until its claims expire)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionSettings:
    appointment_retention_days: int
    prescription_retention_days: int = 30


@dataclasses.dataclass(slots=True)
class RetentionReport:
    """How many rows were (or, in a dry run, would be) purged or anonymised."""

    holds: int = 0
    documents: int = 0
    preregistrations: int = 0
    appointments: int = 0
    claims: int = 0

    def add(self, other: RetentionReport) -> None:
        for item in dataclasses.fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    @property
    def total(self) -> int:
        return self.holds + self.documents + self.preregistrations + self.appointments + self.claims

    def purpose(self) -> str:
        """The counts as an audit token (no personal data: numbers), short enough for the
        log's 64-character purpose column: ``retention/h:<holds>/d:<documents>/
        p:<pre-registrations>/a:<appointments>/c:<claims>``, each count capped at
        99,999,999 (more in one run would be shown as that)."""

        def capped(value: int) -> int:
            return min(value, PURPOSE_COUNT_CAP)

        return (
            f"{PURPOSE}/h:{capped(self.holds)}/d:{capped(self.documents)}"
            f"/p:{capped(self.preregistrations)}/a:{capped(self.appointments)}"
            f"/c:{capped(self.claims)}"
        )


def _expired_holds(tenant_id: uuid.UUID, now: dt.datetime) -> ColumnElement[bool]:
    return and_(
        Appointment.tenant_id == tenant_id,
        Appointment.status == AppointmentStatus.HELD.value,
        Appointment.hold_expires_at.is_not(None),
        Appointment.hold_expires_at < now,
    )


def _past_retention(tenant_id: uuid.UUID, cutoff: dt.datetime) -> ColumnElement[bool]:
    return and_(
        Appointment.tenant_id == tenant_id,
        Appointment.anonymised_at.is_(None),
        Appointment.status != AppointmentStatus.HELD.value,
        or_(
            and_(Appointment.ends_at.is_not(None), Appointment.ends_at < cutoff),
            and_(Appointment.ends_at.is_(None), Appointment.starts_at < cutoff),
        ),
    )


def _leaked_claims(tenant_id: uuid.UUID, now: dt.datetime) -> ColumnElement[bool]:
    """Claims that hold a box for nothing: their appointment is over or cancelled, or they
    are a live hold's claims past their own expiry. An expired hold's claims are not among
    them: they go with the hold (cascade)."""
    finished = select(Appointment.id).where(
        Appointment.tenant_id == tenant_id, Appointment.status.not_in(ACTIVE_STATUSES)
    )
    live_holds = select(Appointment.id).where(
        Appointment.tenant_id == tenant_id,
        Appointment.status == AppointmentStatus.HELD.value,
        or_(Appointment.hold_expires_at.is_(None), Appointment.hold_expires_at >= now),
    )
    return and_(
        SlotClaim.tenant_id == tenant_id,
        or_(
            SlotClaim.appointment_id.in_(finished),
            and_(
                SlotClaim.expires_at.is_not(None),
                SlotClaim.expires_at < now,
                SlotClaim.appointment_id.in_(live_holds),
            ),
        ),
    )


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite gives naive datetimes back: they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(slots=True)
class _DocumentsDue:
    due: list[tuple[uuid.UUID, uuid.UUID]] = dataclasses.field(default_factory=list)
    """(document id, patient id) to delete now."""
    postponed: list[tuple[uuid.UUID, dt.datetime]] = dataclasses.field(default_factory=list)
    """(document id, new delete_after): past their date, but their visit moved later."""


def _documents_due(
    session: Session,
    tenant_id: uuid.UUID,
    settings: RetentionSettings,
    now: dt.datetime,
    expiring: Select[Any],
) -> _DocumentsDue:
    """The documents to delete now, and those to keep longer (see the module, 2.).

    The candidates are selected by dates in SQL; whether a linked appointment's visit is
    old enough is decided here, on its current times (it may have moved since upload)."""
    keep_after = dt.timedelta(days=settings.prescription_retention_days)
    rows = session.execute(
        select(
            PatientDocument.id,
            PatientDocument.patient_id,
            PatientDocument.delete_after,
            PatientDocument.appointment_id,
            Appointment.starts_at,
            Appointment.ends_at,
            Appointment.status,
        )
        .outerjoin(
            Appointment,
            and_(
                Appointment.tenant_id == PatientDocument.tenant_id,
                Appointment.id == PatientDocument.appointment_id,
            ),
        )
        .where(
            PatientDocument.tenant_id == tenant_id,
            or_(
                and_(
                    PatientDocument.delete_after.is_not(None), PatientDocument.delete_after <= now
                ),
                and_(
                    PatientDocument.delete_after.is_(None),
                    PatientDocument.appointment_id.in_(expiring),
                ),
            ),
        )
        .order_by(PatientDocument.id)
    ).all()
    found = _DocumentsDue()
    for row in rows:
        if row.delete_after is None:  # selected because its appointment is anonymised now
            found.due.append((row.id, row.patient_id))
            continue
        if row.starts_at is None:  # no appointment (any more): the upload's date decides
            found.due.append((row.id, row.patient_id))
            continue
        visit = _utc(row.ends_at or row.starts_at)
        to_come = row.status in ACTIVE_STATUSES and _utc(row.starts_at) > now
        if not to_come and visit + keep_after <= now:
            found.due.append((row.id, row.patient_id))
        else:
            found.postponed.append((row.id, max(visit + keep_after, now + dt.timedelta(days=1))))
    return found


def run_retention(
    session: Session,
    tenant_id: uuid.UUID,
    settings: RetentionSettings,
    *,
    now: dt.datetime,
    dry_run: bool = False,
    context: AuditContext | None = None,
) -> RetentionReport:
    """Apply the retention rules to one organization in the caller's transaction (bound to
    that tenant); the caller commits. Running it again at once finds nothing to do."""
    if now.tzinfo is None:
        raise ValueError("the retention job's instant must be timezone-aware")
    cutoff = now - dt.timedelta(days=settings.appointment_retention_days)
    expiring = select(Appointment.id).where(_past_retention(tenant_id, cutoff))
    found = _documents_due(session, tenant_id, settings, now, expiring)
    documents = found.due
    report = RetentionReport(
        holds=_count(session, select(Appointment.id).where(_expired_holds(tenant_id, now))),
        documents=len(documents),
        preregistrations=_count(
            session,
            select(Preregistration.id).where(
                Preregistration.tenant_id == tenant_id,
                Preregistration.appointment_id.in_(expiring),
            ),
        ),
        appointments=_count(session, expiring),
        claims=_count(session, select(SlotClaim.id).where(_leaked_claims(tenant_id, now))),
    )
    if dry_run:
        return report
    trail = AuditTrail(session, SystemPrincipal(JOB), context)
    for document_id, delete_after in found.postponed:
        session.execute(
            update(PatientDocument)
            .where(PatientDocument.tenant_id == tenant_id, PatientDocument.id == document_id)
            .values(delete_after=delete_after)
            .execution_options(synchronize_session=False)
        )
    if documents:
        session.execute(
            delete(PatientDocument)
            .where(
                PatientDocument.tenant_id == tenant_id,
                PatientDocument.id.in_([document_id for document_id, _ in documents]),
            )
            .execution_options(synchronize_session=False)
        )
        for _, patient_id in documents:
            trail.record(
                AuditAction.PATIENT_DOCUMENT_DELETE,
                tenant_id=tenant_id,
                target_type=PATIENT_TARGET,
                target_id=patient_id,
                purpose=PURPOSE,
            )
    # The counts of the writes themselves: a row added since the counting is counted too.
    report.preregistrations = _rowcount(
        session.execute(
            delete(Preregistration)
            .where(
                Preregistration.tenant_id == tenant_id,
                Preregistration.appointment_id.in_(expiring),
            )
            .execution_options(synchronize_session=False)
        )
    )
    report.appointments = _rowcount(
        session.execute(
            update(Appointment)
            .where(_past_retention(tenant_id, cutoff))
            .values(exams=None, home_address=None, anonymised_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    )
    # Claims, and anything else hanging on the hold, go by cascade.
    report.holds = _rowcount(
        session.execute(
            delete(Appointment)
            .where(_expired_holds(tenant_id, now))
            .execution_options(synchronize_session=False)
        )
    )
    report.claims = _rowcount(
        session.execute(
            delete(SlotClaim)
            .where(_leaked_claims(tenant_id, now))
            .execution_options(synchronize_session=False)
        )
    )
    trail.record(
        AuditAction.RETENTION_RUN_COMPLETE,
        tenant_id=tenant_id,
        target_type=ORGANIZATION_TARGET,
        target_id=tenant_id,
        purpose=report.purpose(),
    )
    return report


def _count(session: Session, query: Select[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def _rowcount(result: Result[Any]) -> int:
    return int(result.rowcount)  # type: ignore[attr-defined]
