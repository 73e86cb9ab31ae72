"""Pre-registration and prescription uploads, for the patient and for the lab's desk.

Everything personal goes through :class:`PatientRepository`: the declaration
(``Preregistration.details``) and the documents' bytes (``PatientDocument.content``) are
sealed under the patient's data key with ``seal_for`` and opened with ``open_for``, so the
access policy decides (``appointment`` for the declaration, ``prescription`` for the
documents) before any key is unwrapped, and every opening is audited by the keyring.

An appointment, a declaration or a document the caller may not reach raises
:class:`PreregistrationNotFoundError`, the same 404 as an absent one for the routes (I7),
with a "denied" event kept in the audit log (I3: an out-of-scope attempt leaves a trace). A
refused input raises :class:`PreregistrationError` (French, nothing written: the route's
unit of work rolls back).

Concurrency: what is checked then written (one declaration per appointment, at most five
documents) is done under a lock on the appointment's row (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite has one writer at a time), and a declaration inserted meanwhile anyway is
caught in a SAVEPOINT and replaced instead (never a 500).
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labvault.appointments.models import (
    Appointment,
    AppointmentStatus,
    PatientDocument,
    Preregistration,
)
from labvault.core.access.policies import Interaction
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditedRefusalError
from labvault.core.config import Settings
from labvault.core.crypto.keyring import Keyring
from labvault.core.db import utcnow
from labvault.patients.nir import Nir
from labvault.patients.scope import AccessScope
from labvault.patients.services import SUBJECT_TYPE, PatientRecord, PatientRepository, SealedItem
from labvault.preregistration.schemas import Declaration, parse_declaration
from labvault.preregistration.sniffing import DocumentRejectedError, MediaType, sniff

__all__ = [
    "DOCUMENTS_TABLE",
    "MAX_DOCUMENTS_PER_APPOINTMENT",
    "OPEN_STATUSES",
    "PREREGISTRATIONS_TABLE",
    "DocumentContent",
    "DocumentInfo",
    "PreregistrationError",
    "PreregistrationNotFoundError",
    "PreregistrationService",
    "Problem",
    "StoredDeclaration",
]

PREREGISTRATIONS_TABLE: Final = "preregistrations"
DOCUMENTS_TABLE: Final = "patient_documents"
DETAILS: Final = "details"
CONTENT: Final = "content"
MAX_DOCUMENTS_PER_APPOINTMENT: Final = 5
OPEN_STATUSES: Final = frozenset({AppointmentStatus.HELD.value, AppointmentStatus.BOOKED.value})
"""A visit can be prepared until it happens (or is cancelled)."""
PREREGISTRATION_RESOURCE: Final = "appointment"
DOCUMENT_RESOURCE: Final = "prescription"
DOCUMENT_KIND: Final = "prescription"
SAVE_PURPOSE: Final = "preregistration"
READ_PURPOSE: Final = "preregistration-read"
UPLOAD_PURPOSE: Final = "prescription-upload"
DOCUMENT_PURPOSE: Final = "prescription-read"
DELETE_PURPOSE: Final = "prescription-delete"
APPOINTMENT_TARGET: Final = "appointment"
DOCUMENT_TARGET: Final = "document"
LATEST_DECLARATIONS: Final = 5
"""How many of a patient's latest declarations are looked at for a NIR already given."""
# Traits compared with the record: a difference is kept as declared for the desk.
COMPARED_TRAITS: Final = (
    "birth_name",
    "used_name",
    "first_names",
    "birth_date",
    "sex",
    "birth_place_code",
    "nir",
)


class Problem(enum.StrEnum):
    """Why a request is refused; the routes map each to a status."""

    INVALID = "invalid-input"
    CLOSED = "appointment-closed"
    TOO_MANY = "too-many-documents"
    TOO_LARGE = "content-too-large"
    UNSUPPORTED = "unsupported-media-type"
    NO_CONSENT = "consent-required"


class PreregistrationError(ValueError):
    """A refused input; ``str()`` is French and names no personal value."""

    def __init__(
        self, problem: Problem, message: str, errors: dict[str, str] | None = None
    ) -> None:
        self.problem = problem
        self.errors = dict(errors or {})
        super().__init__(message)


class PreregistrationNotFoundError(AuditedRefusalError, LookupError):
    """Absent or out of the caller's scope: one answer (404), a "denied" event recorded."""


@dataclass(frozen=True, slots=True, repr=False)
class StoredDeclaration:
    appointment_id: uuid.UUID
    patient_id: uuid.UUID
    declaration: Declaration
    updated_at: dt.datetime

    def __repr__(self) -> str:
        return f"StoredDeclaration(appointment={self.appointment_id})"


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """A document as listed: nothing personal, no content."""

    id: uuid.UUID
    patient_id: uuid.UUID
    appointment_id: uuid.UUID | None
    media_type: str
    size_bytes: int
    consent_at: dt.datetime
    created_at: dt.datetime
    delete_after: dt.datetime | None


@dataclass(frozen=True, slots=True, repr=False)
class DocumentContent:
    info: DocumentInfo
    content: bytes

    def __repr__(self) -> str:
        return f"DocumentContent({self.info.id})"


def _info(row: PatientDocument) -> DocumentInfo:
    return DocumentInfo(
        id=row.id,
        patient_id=row.patient_id,
        appointment_id=row.appointment_id,
        media_type=row.media_type,
        size_bytes=row.size_bytes,
        consent_at=row.consent_at,
        created_at=row.created_at,
        delete_after=row.delete_after,
    )


def _utc(value: dt.datetime) -> dt.datetime:
    """SQLite gives naive datetimes back: they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class PreregistrationService:
    """Pre-registrations and documents of one tenant, as the caller's scope allows."""

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        scope: AccessScope,
        settings: Settings,
        *,
        now: dt.datetime | None = None,
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._scope = scope
        self._settings = settings
        self._repository = PatientRepository(session, keyring, scope)
        self._now = now or utcnow()

    @property
    def tenant_id(self) -> uuid.UUID:
        return self._keyring.tenant_id

    # -- appointments -----------------------------------------------------------------------

    def refused(
        self, action: AuditAction, target_type: str, target_id: uuid.UUID, purpose: str
    ) -> PreregistrationNotFoundError:
        """The uniform "not found", carrying its "denied" event (written after the rollback
        of the unit of work by ``audited_transaction``)."""
        error = self._keyring.audit.refusal(
            PreregistrationNotFoundError("not found"),
            action,
            tenant_id=self.tenant_id,
            target_type=target_type,
            target_id=target_id,
            purpose=purpose,
        )
        assert isinstance(error, PreregistrationNotFoundError)
        return error

    def appointment(
        self,
        appointment_id: uuid.UUID,
        resource: str,
        interaction: Interaction,
        *,
        lock: bool = False,
    ) -> Appointment | None:
        """The appointment when its patient is in the caller's scope for ``interaction`` on
        ``resource``; ``None`` when absent or out of scope (nothing decrypted). ``lock``
        takes the row lock that serializes writes for one appointment."""
        query = select(Appointment).where(
            Appointment.tenant_id == self.tenant_id, Appointment.id == appointment_id
        )
        if lock:
            query = query.with_for_update()
        row = self._session.scalars(query).one_or_none()
        if row is None:
            return None
        if row.patient_id not in self._repository.in_scope_ids(
            [row.patient_id], resource, interaction
        ):
            return None
        return row

    def require_appointment(
        self,
        appointment_id: uuid.UUID,
        resource: str,
        interaction: Interaction,
        *,
        action: AuditAction,
        purpose: str,
        lock: bool = False,
    ) -> Appointment:
        """:meth:`appointment`, or the audited uniform refusal."""
        row = self.appointment(appointment_id, resource, interaction, lock=lock)
        if row is None:
            raise self.refused(action, APPOINTMENT_TARGET, appointment_id, purpose)
        return row

    def _open_appointment(
        self,
        appointment_id: uuid.UUID,
        resource: str,
        interaction: Interaction,
        *,
        action: AuditAction,
        purpose: str,
    ) -> Appointment:
        """The appointment, locked, still open for preparation; else the audited 404 or a
        CLOSED refusal."""
        row = self.require_appointment(
            appointment_id, resource, interaction, action=action, purpose=purpose, lock=True
        )
        if row.status not in OPEN_STATUSES:
            raise PreregistrationError(
                Problem.CLOSED,
                "Ce rendez-vous est passé ou annulé : il ne peut plus être préparé en ligne.",
            )
        if row.status == AppointmentStatus.HELD.value:
            expires = row.hold_expires_at
            if expires is not None and _utc(expires) <= self._now:
                raise PreregistrationError(
                    Problem.CLOSED,
                    "La réservation de ce créneau a expiré : reprenez la prise de rendez-vous.",
                )
        return row

    def reveals_preregistrations(self) -> bool:
        """A pre-registration carries INS traits, the NIR and insurance details: only roles
        whose policy reveals the patient's INS fields read it (not the sampler, who reads
        identity only, although today's appointments are theirs)."""
        return "ins_number" in self._scope.policy.fields("patient", Interaction.READ)

    def record_of(self, patient_id: uuid.UUID) -> PatientRecord | None:
        """The patient's record as the caller may read it (to prefill the form)."""
        return self._repository.get(patient_id, purpose=READ_PURPOSE)

    # -- the declaration --------------------------------------------------------------------

    def read(self, appointment_id: uuid.UUID) -> StoredDeclaration | None:
        """The appointment's pre-registration, or ``None`` when there is none yet; the
        audited 404 when the appointment is absent or its pre-registration not the caller's
        to read."""
        appointment = self.appointment(appointment_id, PREREGISTRATION_RESOURCE, Interaction.READ)
        if appointment is None or not self.reveals_preregistrations():
            raise self.refused(
                AuditAction.PATIENT_RECORD_READ, APPOINTMENT_TARGET, appointment_id, READ_PURPOSE
            )
        return self._stored(appointment)

    def _row_of(self, appointment_id: uuid.UUID, *, lock: bool = False) -> Preregistration | None:
        query = select(Preregistration).where(
            Preregistration.tenant_id == self.tenant_id,
            Preregistration.appointment_id == appointment_id,
        )
        if lock:
            query = query.with_for_update()
        return self._session.scalars(query).one_or_none()

    def _stored(self, appointment: Appointment) -> StoredDeclaration | None:
        """The appointment's declaration, opened (the caller's scope was checked)."""
        row = self._row_of(appointment.id)
        if row is None:
            return None
        opened = self._repository.open_for(
            PREREGISTRATION_RESOURCE,
            [SealedItem(row.patient_id, PREREGISTRATIONS_TABLE, row.id, {DETAILS: row.details})],
            purpose=READ_PURPOSE,
        )
        blob = opened.get(row.id, {}).get(DETAILS)
        if blob is None:
            return None
        return StoredDeclaration(
            appointment.id, row.patient_id, Declaration.from_sealed(blob), _utc(row.updated_at)
        )

    def declared_nir(self, patient_id: uuid.UUID, record: PatientRecord | None) -> str | None:
        """The NIR the lab knows for the patient, as the patient may be told: the record's,
        else the one last declared in a pre-registration (kept there, as declared, when
        another record of the lab carries it: see :meth:`declare`)."""
        if record is not None and record.ins_number:
            return record.ins_number
        rows = list(
            self._session.scalars(
                select(Preregistration)
                .where(
                    Preregistration.tenant_id == self.tenant_id,
                    Preregistration.patient_id == patient_id,
                )
                .order_by(Preregistration.updated_at.desc(), Preregistration.id)
                .limit(LATEST_DECLARATIONS)
            )
        )
        if not rows:
            return None
        opened = self._repository.open_for(
            PREREGISTRATION_RESOURCE,
            [
                SealedItem(row.patient_id, PREREGISTRATIONS_TABLE, row.id, {DETAILS: row.details})
                for row in rows
            ],
            purpose=READ_PURPOSE,
        )
        for row in rows:
            blob = opened.get(row.id, {}).get(DETAILS)
            if blob is None:
                continue
            nir = Declaration.from_sealed(blob).nir
            if nir is not None:
                return nir.compact
        return None

    def declare(
        self, appointment_id: uuid.UUID, raw: Mapping[str, Any], *, today: dt.date
    ) -> StoredDeclaration:
        """Check and store (or replace) the appointment's pre-registration; the audited 404
        when the appointment is absent or not the caller's to update. Raises
        :class:`PreregistrationError` (``errors`` per field) before writing anything.

        The NIR may be left out when one is known (the previous declaration's, the record's,
        or the patient's last declared one): the declaration then carries it. Third-party
        payment needs one. Traits are compared with the record (the NIR with the known one):
        what differs is noted for the desk and the record is not changed, except to fill what
        it lacks (:meth:`PatientRepository.complete_identity`). A declared NIR is kept in
        the declaration as declared; the record gains it only when no other record of the lab
        carries it, and the answer is the same either way (a patient may not learn which
        NIRs belong to the lab's patients); the desk sees the declared NIR.
        """
        appointment = self._open_appointment(
            appointment_id,
            PREREGISTRATION_RESOURCE,
            Interaction.UPDATE,
            action=AuditAction.PATIENT_PREREGISTRATION_UPDATE,
            purpose=SAVE_PURPOSE,
        )
        patient_id = appointment.patient_id
        record = self._repository.get(patient_id, purpose=SAVE_PURPOSE)
        previous = self._stored(appointment)
        previous_nir = previous.declaration.nir if previous else None
        known_nir = self.declared_nir(patient_id, record)
        checked, errors = parse_declaration(
            raw, today=today, nir_known=previous_nir is not None or known_nir is not None
        )
        if checked is None:
            raise PreregistrationError(
                Problem.INVALID, "Certaines informations ne sont pas valides.", errors
            )
        if checked.nir is None:
            kept = previous_nir or (Nir.parse(known_nir) if known_nir else None)
            checked = replace(checked, nir=kept)
        differs = (
            _differences(checked, record, known_nir) if record is not None else COMPARED_TRAITS
        )
        self._repository.complete_identity(
            patient_id,
            nir=checked.nir,
            used_name=checked.used_name,
            birth_place_code=checked.birth_place_code,
            purpose=SAVE_PURPOSE,
        )
        declared = replace(checked, differs_from_record=tuple(differs))
        now = self._now
        existing = self._row_of(appointment.id, lock=True)
        if existing is None and not self._insert_declaration(appointment, declared, now):
            # Inserted meanwhile by a concurrent request (UNIQUE per appointment): replace it.
            existing = self._row_of(appointment.id, lock=True)
            if existing is None:  # pragma: no cover - the unique row was there a moment ago
                raise PreregistrationError(
                    Problem.CLOSED, "Ce pré-enregistrement vient de changer : réessayez."
                )
        if existing is not None:
            existing.details = self._seal_declaration(patient_id, existing.id, declared)
            existing.third_party_payment = declared.third_party_payment
            existing.updated_at = now
        self._session.flush()
        self._keyring.audit.record(
            AuditAction.PATIENT_PREREGISTRATION_UPDATE,
            tenant_id=self.tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=patient_id,
            purpose=SAVE_PURPOSE,
        )
        return StoredDeclaration(appointment.id, patient_id, declared, now)

    def _seal_declaration(
        self, patient_id: uuid.UUID, row_id: uuid.UUID, declared: Declaration
    ) -> bytes:
        sealed = self._repository.seal_for(
            patient_id,
            PREREGISTRATION_RESOURCE,
            Interaction.UPDATE,
            SealedItem(patient_id, PREREGISTRATIONS_TABLE, row_id, {DETAILS: declared.to_sealed()}),
            purpose=SAVE_PURPOSE,
        )
        blob = sealed.get(DETAILS) if sealed is not None else None
        if blob is None:  # scope checked above: cannot happen
            raise PreregistrationError(Problem.INVALID, "Pré-enregistrement impossible.")
        return blob

    def _insert_declaration(
        self, appointment: Appointment, declared: Declaration, now: dt.datetime
    ) -> bool:
        """Insert the appointment's first declaration in a SAVEPOINT; ``False`` when a
        concurrent request inserted one first (the unique constraint refused this one)."""
        row_id = uuid.uuid4()
        row = Preregistration(
            id=row_id,
            tenant_id=self.tenant_id,
            appointment_id=appointment.id,
            patient_id=appointment.patient_id,
            details=self._seal_declaration(appointment.patient_id, row_id, declared),
            third_party_payment=declared.third_party_payment,
            created_at=now,
            updated_at=now,
        )
        try:
            with self._session.begin_nested():
                self._session.add(row)
                self._session.flush()
        except IntegrityError:
            return False
        return True

    # -- documents --------------------------------------------------------------------------

    def upload(
        self,
        appointment_id: uuid.UUID,
        content: bytes,
        *,
        consent: bool,
        account_id: uuid.UUID | None,
    ) -> DocumentInfo | None:
        """Store a prescription for the appointment, sealed; the audited 404 when the
        appointment is absent or not the caller's. The type is sniffed from ``content``
        only. The appointment's row stays locked from here to the commit, so two uploads
        cannot both pass the five-documents check."""
        appointment = self._open_appointment(
            appointment_id,
            DOCUMENT_RESOURCE,
            Interaction.CREATE,
            action=AuditAction.PATIENT_DOCUMENT_UPLOAD,
            purpose=UPLOAD_PURPOSE,
        )
        if len(content) > self._settings.prescription_max_bytes:
            raise PreregistrationError(Problem.TOO_LARGE, too_large(self._settings))
        if not consent:
            raise PreregistrationError(
                Problem.NO_CONSENT,
                "Cochez la case pour accepter de partager ce document avec le laboratoire : "
                "sans votre accord, il n'est pas enregistré.",
                {"consent": "Votre accord est nécessaire pour déposer ce document."},
            )
        try:
            media_type = sniff(content)
        except DocumentRejectedError as rejected:
            problem = (
                Problem.UNSUPPORTED if rejected.reason == "unsupported-type" else (Problem.INVALID)
            )
            raise PreregistrationError(problem, str(rejected), {"file": str(rejected)}) from None
        if self._count_documents(appointment.id) >= MAX_DOCUMENTS_PER_APPOINTMENT:
            raise PreregistrationError(
                Problem.TOO_MANY,
                f"Ce rendez-vous a déjà {MAX_DOCUMENTS_PER_APPOINTMENT} documents : supprimez-en "
                "un avant d'en déposer un autre.",
            )
        document_id = uuid.uuid4()
        patient_id = appointment.patient_id
        sealed = self._repository.seal_for(
            patient_id,
            DOCUMENT_RESOURCE,
            Interaction.CREATE,
            SealedItem(patient_id, DOCUMENTS_TABLE, document_id, {CONTENT: content}),
            purpose=UPLOAD_PURPOSE,
        )
        if sealed is None or sealed[CONTENT] is None:  # scope checked above: cannot happen
            return None
        visit_end = _utc(appointment.ends_at or appointment.starts_at)
        now = utcnow()
        row = PatientDocument(
            id=document_id,
            tenant_id=self.tenant_id,
            patient_id=patient_id,
            appointment_id=appointment.id,
            kind=DOCUMENT_KIND,
            media_type=MediaType(media_type).value,
            size_bytes=len(content),
            content=sealed[CONTENT],
            consent_at=now,
            uploaded_by_account_id=account_id,
            delete_after=visit_end + dt.timedelta(days=self._settings.prescription_retention_days),
            created_at=now,
        )
        self._session.add(row)
        self._session.flush()
        self._keyring.audit.record(
            AuditAction.PATIENT_DOCUMENT_UPLOAD,
            tenant_id=self.tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=patient_id,
            purpose=UPLOAD_PURPOSE,
        )
        return _info(row)

    def _count_documents(self, appointment_id: uuid.UUID) -> int:
        """How many documents the appointment has (call with its row locked)."""
        count = self._session.scalar(
            select(func.count(PatientDocument.id)).where(
                PatientDocument.tenant_id == self.tenant_id,
                PatientDocument.appointment_id == appointment_id,
            )
        )
        return int(count or 0)

    def documents_of_patient(self, patient_id: uuid.UUID) -> list[DocumentInfo]:
        """The patient's documents (no content), newest first; the audited 404 out of
        scope."""
        if patient_id not in self._repository.in_scope_ids(
            [patient_id], DOCUMENT_RESOURCE, Interaction.READ
        ):
            raise self.refused(
                AuditAction.PATIENT_DOCUMENT_READ, SUBJECT_TYPE, patient_id, DOCUMENT_PURPOSE
            )
        return self._documents([patient_id], None)

    def documents_of_appointment(self, appointment: Appointment) -> list[DocumentInfo]:
        return self._documents([appointment.patient_id], appointment.id)

    def documents_of_patients(self, patient_ids: list[uuid.UUID]) -> list[DocumentInfo]:
        """The documents of those of ``patient_ids`` in scope (a patient and dependents)."""
        allowed = self._repository.in_scope_ids(patient_ids, DOCUMENT_RESOURCE, Interaction.READ)
        return self._documents(sorted(allowed), None) if allowed else []

    def _documents(
        self, patient_ids: list[uuid.UUID], appointment_id: uuid.UUID | None
    ) -> list[DocumentInfo]:
        query = select(PatientDocument).where(
            PatientDocument.tenant_id == self.tenant_id,
            PatientDocument.patient_id.in_(patient_ids),
        )
        if appointment_id is not None:
            query = query.where(PatientDocument.appointment_id == appointment_id)
        rows = self._session.scalars(
            query.order_by(PatientDocument.created_at.desc(), PatientDocument.id)
        )
        return [_info(row) for row in rows]

    def open_document(self, document_id: uuid.UUID) -> DocumentContent:
        """The document's bytes, audited; the audited 404 when absent or out of scope."""
        row = self._session.scalars(
            select(PatientDocument).where(
                PatientDocument.tenant_id == self.tenant_id, PatientDocument.id == document_id
            )
        ).one_or_none()
        content = None
        if row is not None:
            opened = self._repository.open_for(
                DOCUMENT_RESOURCE,
                [SealedItem(row.patient_id, DOCUMENTS_TABLE, row.id, {CONTENT: row.content})],
                purpose=DOCUMENT_PURPOSE,
            )
            content = opened.get(row.id, {}).get(CONTENT)
        if row is None or content is None:
            raise self.refused(
                AuditAction.PATIENT_DOCUMENT_READ, DOCUMENT_TARGET, document_id, DOCUMENT_PURPOSE
            )
        self._keyring.audit.record(
            AuditAction.PATIENT_DOCUMENT_READ,
            tenant_id=self.tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=row.patient_id,
            purpose=DOCUMENT_PURPOSE,
        )
        return DocumentContent(_info(row), content)

    def delete_document(self, document_id: uuid.UUID) -> bool:
        """Delete a document the caller may create documents for (the patient's own
        uploads); the audited 404 when absent or out of scope."""
        row = self._session.scalars(
            select(PatientDocument).where(
                PatientDocument.tenant_id == self.tenant_id, PatientDocument.id == document_id
            )
        ).one_or_none()
        if row is None or row.patient_id not in self._repository.in_scope_ids(
            [row.patient_id], DOCUMENT_RESOURCE, Interaction.CREATE
        ):
            raise self.refused(
                AuditAction.PATIENT_DOCUMENT_DELETE, DOCUMENT_TARGET, document_id, DELETE_PURPOSE
            )
        patient_id = row.patient_id
        self._session.delete(row)
        self._session.flush()
        self._keyring.audit.record(
            AuditAction.PATIENT_DOCUMENT_DELETE,
            tenant_id=self.tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=patient_id,
            purpose=DELETE_PURPOSE,
        )
        return True


def too_large(settings: Settings) -> str:
    limit = settings.prescription_max_bytes
    if limit >= 1024 * 1024:
        size = f"{limit / (1024 * 1024):g} Mo"
    else:
        size = f"{max(1, limit // 1024)} ko"
    return f"Ce fichier est trop lourd : {size} au plus. Réduisez sa taille ou prenez une photo."


def _differences(
    declared: Declaration, record: PatientRecord, known_nir: str | None
) -> tuple[str, ...]:
    """Traits declared differently from the record (compared after normalising case and
    spacing; a trait the record lacks is not a difference). The NIR is compared with the
    known one (the record's, else the last declared: the same whether or not the record
    could take it)."""

    def norm(value: object) -> str:
        return " ".join(str(value).split()).casefold()

    pairs: dict[str, tuple[object, object]] = {
        "birth_name": (declared.birth_name, record.birth_name),
        "used_name": (declared.used_name, record.used_name),
        "first_names": (declared.first_names, record.first_names),
        "birth_date": (declared.birth_date, record.birth_date),
        "sex": (declared.sex, record.sex),
        "birth_place_code": (declared.birth_place_code, record.birth_place_code),
        "nir": (declared.nir.compact if declared.nir else None, known_nir),
    }
    return tuple(
        name
        for name, (mine, theirs) in pairs.items()
        if mine is not None and theirs is not None and norm(mine) != norm(theirs)
    )
