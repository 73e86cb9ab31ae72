"""Legal holds: a patient record that must be kept cannot be erased until the hold ends.

A hold names a reason from a closed list (:class:`LegalHoldReason`) and optionally its last
day (Europe/Paris, inclusive); without one it lasts until released. Placing and releasing
are audited against the patient (both show in the patient's access history). Holds are
placed by named system jobs (``labvault patients hold``): the record is locked through
:class:`~labvault.patients.services.PatientRepository`, which is the only code that touches
``patients`` rows.
"""

from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from labvault.core.audit.actions import AuditAction
from labvault.core.crypto.keyring import Keyring
from labvault.core.db import utcnow
from labvault.patients.models import LegalHold, LegalHoldReason
from labvault.patients.services import SUBJECT_TYPE, ErasureState, PatientRepository

__all__ = [
    "HoldNotFoundError",
    "InvalidHoldError",
    "RecordNotFoundError",
    "active_hold",
    "describe_hold",
    "holds_of",
    "local_today",
    "place_hold",
    "release_hold",
]

PARIS = ZoneInfo("Europe/Paris")


class RecordNotFoundError(LookupError):
    """No live record with this id in the organization (unknown, or erased: same answer)."""

    def __init__(self) -> None:
        super().__init__("no patient record with this id in this organization")


class HoldNotFoundError(LookupError):
    def __init__(self) -> None:
        super().__init__("no legal hold with this id in this organization")


class InvalidHoldError(ValueError):
    """A hold that cannot be placed as given (an end date in the past)."""


def local_today(now: dt.datetime) -> dt.date:
    """The day in Europe/Paris: a hold's last day is a French calendar day."""
    return now.astimezone(PARIS).date()


def describe_hold(hold: LegalHold) -> str:
    """Reason and end, nothing else: safe for errors and logs."""
    end = f"until {hold.until.isoformat()}" if hold.until else "until it is released"
    return f"{hold.reason}, {end}"


def place_hold(
    session: Session,
    keyring: Keyring,
    patient_id: uuid.UUID,
    reason: LegalHoldReason,
    until: dt.date | None = None,
    *,
    now: dt.datetime | None = None,
) -> LegalHold:
    """Keep ``patient_id``'s record from erasure; the caller commits.

    Raises :class:`RecordNotFoundError` (unknown or already erased record) and
    :class:`InvalidHoldError` (an end date before today)."""
    now = now or utcnow()
    if until is not None and until < local_today(now):
        raise InvalidHoldError("the hold's last day is in the past")
    if PatientRepository(session, keyring).lock_for_erasure(patient_id) is not ErasureState.LIVE:
        raise RecordNotFoundError
    hold = LegalHold(
        tenant_id=keyring.tenant_id,
        patient_id=patient_id,
        reason=LegalHoldReason(reason).value,
        until=until,
        placed_by=keyring.principal.id,
        placed_at=now,
    )
    session.add(hold)
    session.flush()
    keyring.audit.record(
        AuditAction.PATIENT_LEGAL_HOLD_PLACE,
        tenant_id=keyring.tenant_id,
        target_type=SUBJECT_TYPE,
        target_id=patient_id,
        purpose=f"legal-hold:{hold.reason}",
    )
    return hold


def release_hold(
    session: Session, keyring: Keyring, hold_id: uuid.UUID, *, now: dt.datetime | None = None
) -> tuple[LegalHold, bool]:
    """End a hold now; the hold and whether this call released it (``False``: it already
    was; nothing recorded). Raises :class:`HoldNotFoundError`."""
    hold = session.scalars(
        select(LegalHold)
        .where(LegalHold.tenant_id == keyring.tenant_id, LegalHold.id == hold_id)
        .with_for_update()
    ).one_or_none()
    if hold is None:
        raise HoldNotFoundError
    if hold.released_at is not None:
        return hold, False
    hold.released_at = now or utcnow()
    hold.released_by = keyring.principal.id
    session.flush()
    keyring.audit.record(
        AuditAction.PATIENT_LEGAL_HOLD_RELEASE,
        tenant_id=keyring.tenant_id,
        target_type=SUBJECT_TYPE,
        target_id=hold.patient_id,
        purpose=f"legal-hold:{hold.reason}",
    )
    return hold, True


def holds_of(session: Session, tenant_id: uuid.UUID, patient_id: uuid.UUID) -> list[LegalHold]:
    """Every hold of the record, released ones included, oldest first."""
    return list(
        session.scalars(
            select(LegalHold)
            .where(LegalHold.tenant_id == tenant_id, LegalHold.patient_id == patient_id)
            .order_by(LegalHold.placed_at, LegalHold.id)
        )
    )


def active_hold(
    session: Session, tenant_id: uuid.UUID, patient_id: uuid.UUID, now: dt.datetime
) -> LegalHold | None:
    """The hold that blocks erasure today (the one lasting longest), if any."""
    holds = session.scalars(
        select(LegalHold).where(
            LegalHold.tenant_id == tenant_id,
            LegalHold.patient_id == patient_id,
            LegalHold.released_at.is_(None),
            or_(LegalHold.until.is_(None), LegalHold.until >= local_today(now)),
        )
    ).all()
    if not holds:
        return None
    return max(holds, key=lambda h: (h.until is None, h.until or dt.date.min, h.placed_at))
