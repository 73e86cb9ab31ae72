"""Break-glass: one staff member opens one patient's file outside the relationship rule.

The staff member names the patient exactly (NIR, or birth name + first name + birth
date: blind-index lookups, nothing decrypted), picks a reason from a closed list and writes
a justification. The grant covers that one patient for a few hours
(``LABVAULT_BREAK_GLASS_HOURS``), is audited with its reason category, raises an alert to
the security officers and waits in their review list. The justification is sealed under
the grant's own data key; reading it is itself audited.

Roles without patient data (organization admin, security officer) cannot break the glass:
their ceiling is not a matter of relationship; nor can samplers (see BREAK_GLASS_ROLES).
"""

from __future__ import annotations

import datetime as dt
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from labvault.core.access.principals import Principal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditedRefusalError
from labvault.core.crypto.keyring import Keyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import utcnow
from labvault.patients.models import Patient
from labvault.patients.nir import Nir
from labvault.patients.services import SUBJECT_TYPE as PATIENT_SUBJECT
from labvault.security.alerts import Alert, AlertSink
from labvault.security.models import (
    GRANT_SUBJECT_TYPE,
    AlertSeverity,
    BreakGlassGrant,
    BreakGlassReason,
)
from labvault.staff.models import StaffMember, StaffRole

TABLE = BreakGlassGrant.__tablename__
DATA_KEYS_TABLE = cast(Table, DataKeyRecord.__table__)
BREAK_GLASS_ROLES = frozenset({StaffRole.RECEPTIONIST.value, StaffRole.BIOLOGIST.value})
"""Roles that search patients and so may name one outside their scope. A sampler works from
the day's schedule: a patient missing from it goes through the reception desk."""
MATCH_LIMIT = 8
"""Matches looked at for one designation: more than one listable is ambiguous anyway, and
a full page means more may hide behind it (it is refused as ambiguous)."""
JUSTIFICATION_MIN = 15
JUSTIFICATION_MAX = 500


class BreakGlassRefusedError(AuditedRefusalError):
    """No grant was made; the message says why, in French, without naming any patient."""


class ReviewOutcome:
    JUSTIFIED = "justified"
    UNJUSTIFIED = "unjustified"
    ALL = frozenset({JUSTIFIED, UNJUSTIFIED})


@dataclass(frozen=True, slots=True)
class PatientDesignation:
    """How the staff member names the patient: a NIR, or the three identity traits."""

    nir: Nir | None = None
    birth_name: str | None = None
    first_name: str | None = None
    birth_date: dt.date | None = None

    def __post_init__(self) -> None:
        traits = (self.birth_name, self.first_name, self.birth_date)
        if self.nir is None and (None in traits or not all(str(t).strip() for t in traits)):
            raise BreakGlassRefusedError(
                "Indiquez le NIR du patient, ou son nom de naissance, son prénom et sa date de "
                "naissance."
            )


@dataclass(frozen=True, slots=True)
class GrantSummary:
    """A grant as the security officers review it: ids, reason and times; no patient data."""

    id: uuid.UUID
    staff_id: uuid.UUID
    patient_id: uuid.UUID
    reason: BreakGlassReason
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    reviewed_at: dt.datetime | None
    review_outcome: str | None


def clean_justification(text: str) -> str:
    cleaned = " ".join(unicodedata.normalize("NFC", text).split())
    if any(unicodedata.category(ch) == "Cc" for ch in cleaned):
        raise BreakGlassRefusedError("La justification contient des caractères non autorisés.")
    if not JUSTIFICATION_MIN <= len(cleaned) <= JUSTIFICATION_MAX:
        raise BreakGlassRefusedError(
            f"La justification doit compter entre {JUSTIFICATION_MIN} et {JUSTIFICATION_MAX} "
            "caractères."
        )
    return cleaned


class BreakGlassService:
    """What one staff member does with break-glass, in the caller's transaction."""

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        *,
        staff_id: uuid.UUID,
        alerts: AlertSink,
        hours: int,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._staff_id = staff_id
        self._alerts = alerts
        self._duration = dt.timedelta(hours=hours)
        self._clock = clock

    @property
    def _principal(self) -> Principal:
        return self._keyring.principal

    def _refuse(self, message: str) -> AuditedRefusalError:
        return self._keyring.audit.refusal(
            BreakGlassRefusedError(message),
            AuditAction.ACCESS_BREAK_GLASS_REFUSED,
            tenant_id=self._keyring.tenant_id,
            target_type="patient",
        )

    def open(
        self, patient: PatientDesignation, reason: BreakGlassReason, justification: str
    ) -> uuid.UUID:
        """Grant access to exactly one patient; returns the patient's id.

        Refused (and audited as refused) for a role without patient data, an inactive
        staff member, a bad justification, or when the designation does not match exactly
        one patient.
        """
        tenant_id = self._keyring.tenant_id
        staff = self._session.get(StaffMember, self._staff_id)
        if (
            staff is None
            or staff.tenant_id != tenant_id
            or not staff.active
            or staff.role not in BREAK_GLASS_ROLES
            or self._principal.role != staff.role
        ):
            raise self._refuse("Votre rôle ne permet pas d'ouvrir un dossier patient.")
        try:
            text = clean_justification(justification)
        except BreakGlassRefusedError as exc:
            raise self._refuse(str(exc)) from None
        indexer = self._keyring.indexer
        if patient.nir is not None:
            match = Patient.nir_index.in_(indexer.nir_candidates(patient.nir.compact))
        else:
            assert patient.birth_name
            assert patient.first_name
            assert patient.birth_date
            match = Patient.name_index.in_(
                indexer.name_birth_date_candidates(
                    patient.birth_name, patient.first_name, patient.birth_date
                )
            )
        matched = list(
            self._session.scalars(
                select(Patient.id).where(Patient.tenant_id == tenant_id, match).limit(MATCH_LIMIT)
            )
        )
        # A search: records no list may show (honey records) are never picked, so a real
        # patient who shares traits with one is still found (nothing is decrypted here).
        found = self._keyring.visible(PATIENT_SUBJECT, matched)
        if len(found) != 1 or len(matched) == MATCH_LIMIT:
            raise self._refuse(
                "Aucun dossier ne correspond exactement. Vérifiez la saisie ou utilisez le NIR."
            )
        patient_id = found[0]
        now = self._clock()
        grant_id = uuid.uuid4()
        keys, key_rows = self._keyring.new_data_keys(GRANT_SUBJECT_TYPE, [grant_id])
        sealed = keys[0].seal_row(TABLE, grant_id, {"justification": text.encode()})
        self._session.execute(insert(DATA_KEYS_TABLE), key_rows)
        self._session.add(
            BreakGlassGrant(
                id=grant_id,
                tenant_id=tenant_id,
                staff_id=self._staff_id,
                patient_id=patient_id,
                reason=reason.value,
                data_key_id=keys[0].id,
                justification=sealed["justification"],
                created_at=now,
                expires_at=now + self._duration,
            )
        )
        self._session.flush()
        self._keyring.audit.record(
            AuditAction.ACCESS_BREAK_GLASS_OPEN,
            tenant_id=tenant_id,
            target_type="patient",
            target_id=patient_id,
            purpose=f"break-glass:{reason.value}",
        )
        self._alerts.raise_alert(
            Alert(
                tenant_id=tenant_id,
                kind="break-glass",
                severity=AlertSeverity.WARNING,
                actor=self._principal,
                target_type="break-glass",
                target_id=grant_id,
            )
        )
        return patient_id

    def end(self, grant_id: uuid.UUID) -> bool:
        """End one of this staff member's own live grants early."""
        grant = self._session.get(BreakGlassGrant, grant_id)
        now = self._clock()
        if (
            grant is None
            or grant.tenant_id != self._keyring.tenant_id
            or grant.staff_id != self._staff_id
            or grant.revoked_at is not None
            or grant.expires_at <= now
        ):
            return False
        grant.revoked_at = now
        self._keyring.audit.record(
            AuditAction.ACCESS_BREAK_GLASS_REVOKE,
            tenant_id=grant.tenant_id,
            target_type="break-glass",
            target_id=grant.id,
        )
        return True


class BreakGlassReview:
    """The security officers' side: the list, the sealed justification, the verdict."""

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        *,
        officer_id: uuid.UUID,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        if keyring.principal.role != StaffRole.SECURITY_OFFICER.value:
            raise PermissionError("break-glass grants are reviewed by security officers")
        self._session = session
        self._keyring = keyring
        self._officer_id = officer_id
        self._clock = clock

    def grants(self, *, unreviewed_only: bool = True, limit: int = 200) -> list[GrantSummary]:
        query = select(BreakGlassGrant).where(BreakGlassGrant.tenant_id == self._keyring.tenant_id)
        if unreviewed_only:
            query = query.where(BreakGlassGrant.reviewed_at.is_(None))
        rows = self._session.scalars(
            query.order_by(BreakGlassGrant.created_at.desc(), BreakGlassGrant.id).limit(limit)
        )
        return [
            GrantSummary(
                g.id,
                g.staff_id,
                g.patient_id,
                BreakGlassReason(g.reason),
                g.created_at,
                g.expires_at,
                g.revoked_at,
                g.reviewed_at,
                g.review_outcome,
            )
            for g in rows
        ]

    def _grant(self, grant_id: uuid.UUID) -> BreakGlassGrant | None:
        grant = self._session.get(BreakGlassGrant, grant_id)
        if grant is None or grant.tenant_id != self._keyring.tenant_id:
            return None
        return grant

    def justification(self, grant_id: uuid.UUID) -> str | None:
        grant = self._grant(grant_id)
        if grant is None:
            return None
        keys = self._keyring.open_data_keys(GRANT_SUBJECT_TYPE, [grant.id], purpose="review")
        opened = keys[grant.id].open_row(TABLE, grant.id, {"justification": grant.justification})
        value = opened["justification"]
        return None if value is None else value.decode()

    def review(self, grant_id: uuid.UUID, outcome: str) -> bool:
        if outcome not in ReviewOutcome.ALL:
            raise ValueError(f"outcome must be one of {sorted(ReviewOutcome.ALL)}")
        grant = self._grant(grant_id)
        if grant is None or grant.reviewed_at is not None:
            return False
        grant.reviewed_at = self._clock()
        grant.reviewed_by = self._officer_id
        grant.review_outcome = outcome
        self._keyring.audit.record(
            AuditAction.ACCESS_BREAK_GLASS_REVIEW,
            tenant_id=grant.tenant_id,
            target_type="break-glass",
            target_id=grant.id,
            purpose=outcome,
        )
        return True
