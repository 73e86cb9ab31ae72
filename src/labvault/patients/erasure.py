"""Erasing a patient record by crypto-shredding.

What :func:`erase_patient` does, in the caller's transaction:

- refuses while a legal hold is active (:class:`LegalHoldError`, audited as denied);
- deletes the record's ``data_keys`` row. Everything sealed under that key stays where it is
  and can no longer be opened by anyone: the record's fields, the identity checks' document
  kinds, every backup copy too once the root key versions that wrapped the key are retired
  (``labvault keys retire``);
- NULLs the NIR, email and phone blind indexes and replaces the name index with random bytes
  (the column is NOT NULL and read by deduplication and break-glass lookups: random bytes
  match nothing and spare every reader a NULL case), so no search finds the record again;
- cancels its held and booked appointments and releases their slot claims; anonymises all its
  appointments as the retention job does (sealed exams and home address set to NULL, the
  planning row stays), so no page even tries to open them;
- deletes the links it gave doctors to its reports (``result_shares``); its orders, reports
  and observations stay sealed under the deleted key (a validated report is under a legal
  hold, so erasure waits for the hold's end anyway);
- with ``drop_dir`` (the prescribers' drop directory, ``LABVAULT_RESULT_DROP_DIR``), deletes
  its reports' documents still waiting there (``<report id>-v<n>.fhir.json``, plaintext by
  design: ``labvault.results.delivery``). They go once the database work is done, before the
  caller commits: a rolled-back erasure leaves the reports for ``labvault results deliver``;
- deletes its pre-registrations and uploaded documents: they are the patient's own
  declarations and files, kept only for the visit; leaving unreadable copies would keep
  storage and nothing of use;
- deletes the patient's own account (the one whose own record it is), with its data key, as
  ``labvault accounts purge`` does (its sealed email and email index would otherwise stay,
  and the account could still sign in), one ``account:deletion:erase`` event each; unlinks
  the record from guardians' accounts (their dependents), which stay;
- writes the tombstone on the row (when, by whom, at whose request) and one
  ``patient:record:erase`` event. No personal value is written anywhere.

Afterwards the record is absent for every reader, system jobs included: the repository
filters erased rows out, so its id answers the same "not found" as an unknown one.
Erasing an erased record again changes nothing and says so.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from labvault.accounts.models import SUBJECT_TYPE as ACCOUNT_SUBJECT_TYPE
from labvault.accounts.models import Account, AccountDependent, AccountKind
from labvault.appointments.models import (
    Appointment,
    AppointmentStatus,
    PatientDocument,
    Preregistration,
    SlotClaim,
)
from labvault.core.access.principals import Principal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext, AuditedRefusalError, AuditTrail, Outcome
from labvault.core.crypto.envelope import FieldKey
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.keyring import Indexer, Keyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import utcnow
from labvault.patients.holds import RecordNotFoundError, active_hold, describe_hold
from labvault.patients.models import ErasureRequester, LegalHold
from labvault.patients.services import SUBJECT_TYPE, ErasureState, PatientRepository
from labvault.results.models import ResultReport, ResultShare

__all__ = [
    "ErasureReport",
    "KeylessKeyring",
    "LegalHoldError",
    "RecordNotFoundError",
    "erase_patient",
    "erase_released",
    "erase_unless_held",
]

_CANCELLABLE = (AppointmentStatus.HELD.value, AppointmentStatus.BOOKED.value)


class LegalHoldError(AuditedRefusalError):
    """The record is under a legal hold: nothing was changed. Names the hold, not the person."""

    def __init__(self, hold: LegalHold) -> None:
        super().__init__(
            f"this record is under a legal hold ({describe_hold(hold)}): it cannot be erased "
            f"before the hold ends or is released (hold {hold.id})"
        )
        self.hold_id = hold.id
        self.reason = hold.reason
        self.until = hold.until


@dataclasses.dataclass(frozen=True, slots=True)
class ErasureReport:
    """What an erasure did, in counts (ids only: safe to print)."""

    patient_id: uuid.UUID
    already_erased: bool = False
    appointments_cancelled: int = 0
    slot_claims_released: int = 0
    appointments_anonymised: int = 0
    preregistrations_deleted: int = 0
    documents_deleted: int = 0
    account_links_removed: int = 0
    shares_deleted: int = 0
    """Links the patient gave doctors to one of its reports: they stop at once."""
    accounts_deleted: int = 0
    """The patient's own account, deleted with its data key (0 or 1)."""
    drop_files_deleted: int = 0
    """Its reports' documents removed from the prescribers' drop directory."""


class KeylessKeyring:
    """A keyring that holds no key, for jobs that must decrypt nothing (erasure, holds).

    Every key operation raises; only the principal and its audit trail are real.
    """

    def __init__(
        self,
        session: Session,
        tenant_id: uuid.UUID,
        principal: Principal,
        context: AuditContext | None = None,
    ) -> None:
        self._tenant_id = tenant_id
        self._principal = principal
        self._audit = AuditTrail(session, principal, context)

    def __repr__(self) -> str:
        return f"KeylessKeyring(tenant={self._tenant_id}, principal={self._principal.id})"

    @property
    def tenant_id(self) -> uuid.UUID:
        return self._tenant_id

    @property
    def principal(self) -> Principal:
        return self._principal

    @property
    def audit(self) -> AuditTrail:
        return self._audit

    @property
    def indexer(self) -> Indexer:
        self._no_keys()

    def new_data_keys(
        self, subject_type: str, subject_ids: Sequence[uuid.UUID]
    ) -> tuple[list[FieldKey], list[dict[str, Any]]]:
        self._no_keys()

    def open_data_keys(
        self, subject_type: str, subject_ids: Sequence[uuid.UUID], purpose: str
    ) -> dict[uuid.UUID, FieldKey]:
        self._no_keys()

    def visible(self, subject_type: str, subject_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        return list(subject_ids)  # it decrypts nothing, so it hides nothing either

    def _no_keys(self) -> NoReturn:
        raise KeyProviderError("this job holds no keys: it neither reads nor writes sealed data")


def erase_patient(
    session: Session,
    keyring: Keyring,
    patient_id: uuid.UUID,
    requested_by: ErasureRequester,
    *,
    now: dt.datetime | None = None,
    drop_dir: Path | None = None,
) -> ErasureReport:
    """Erase the record (see the module docstring); the caller commits.

    Raises :class:`RecordNotFoundError` for an id the organization does not have, and
    :class:`LegalHoldError` while a hold is active: run it in ``audited_transaction`` so
    the refusal's "denied" event is kept while everything else rolls back."""
    outcome = erase_unless_held(
        session, keyring, patient_id, requested_by, now=now, audit=False, drop_dir=drop_dir
    )
    if isinstance(outcome, LegalHold):
        raise keyring.audit.refusal(
            LegalHoldError(outcome),
            AuditAction.PATIENT_RECORD_ERASE,
            tenant_id=keyring.tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=patient_id,
            purpose=_purpose(requested_by),
        )
    return outcome


def erase_unless_held(
    session: Session,
    keyring: Keyring,
    patient_id: uuid.UUID,
    requested_by: ErasureRequester,
    *,
    now: dt.datetime | None = None,
    audit: bool = True,
    drop_dir: Path | None = None,
) -> ErasureReport | LegalHold:
    """Erase the record, or return the active hold that keeps it (nothing changed).

    For batch jobs whose other work must commit (the account purge): a kept record is not
    an error; with ``audit`` its denied ``patient:record:erase`` event is recorded in this
    transaction. Raises :class:`RecordNotFoundError` for an unknown id."""
    now = now or utcnow()
    tenant_id = keyring.tenant_id
    repository = PatientRepository(session, keyring)
    state = repository.lock_for_erasure(patient_id)
    if state is None:
        raise RecordNotFoundError
    if state is ErasureState.ERASED:
        return ErasureReport(patient_id, already_erased=True)
    hold = active_hold(session, tenant_id, patient_id, now)
    if hold is not None:
        repository.mark_erasure_pending(patient_id, requested_by=requested_by.value)
        if audit:
            keyring.audit.record(
                AuditAction.PATIENT_RECORD_ERASE,
                tenant_id=tenant_id,
                target_type=SUBJECT_TYPE,
                target_id=patient_id,
                purpose=_purpose(requested_by),
                outcome=Outcome.DENIED,
            )
        return hold
    deleted = _delete_own_accounts(session, keyring, patient_id, _purpose(requested_by))
    report = dataclasses.replace(
        _clear_related(session, tenant_id, patient_id, now), accounts_deleted=deleted
    )
    repository.shred(patient_id, requested_by=requested_by.value, now=now)
    keyring.audit.record(
        AuditAction.PATIENT_RECORD_ERASE,
        tenant_id=tenant_id,
        target_type=SUBJECT_TYPE,
        target_id=patient_id,
        purpose=_purpose(requested_by),
    )
    if drop_dir is not None:
        report = dataclasses.replace(
            report, drop_files_deleted=_discard_drop_files(session, tenant_id, patient_id, drop_dir)
        )
    return report


def erase_released(
    session: Session,
    keyring: Keyring,
    *,
    now: dt.datetime | None = None,
    drop_dir: Path | None = None,
) -> int:
    """Erase the tenant's records whose erasure was asked while a legal hold kept them and
    whose holds have all ended since; how many. Records still held stay pending, silently
    (their refusal was recorded when the erasure was asked)."""
    now = now or utcnow()
    erased = 0
    for patient_id, requested_by in PatientRepository(session, keyring).pending_erasures():
        outcome = erase_unless_held(
            session,
            keyring,
            patient_id,
            ErasureRequester(requested_by),
            now=now,
            audit=False,
            drop_dir=drop_dir,
        )
        erased += isinstance(outcome, ErasureReport) and not outcome.already_erased
    return erased


def _purpose(requested_by: ErasureRequester) -> str:
    return f"erasure:{requested_by.value}"


def _delete_own_accounts(
    session: Session, keyring: Keyring, patient_id: uuid.UUID, purpose: str
) -> int:
    """Delete the patient accounts whose own record this is, with their data keys (their
    sessions, factors, passkeys, devices and dependents' links cascade); how many."""
    tenant_id = keyring.tenant_id
    owned = session.execute(
        select(Account.id, Account.data_key_id).where(
            Account.tenant_id == tenant_id,
            Account.patient_id == patient_id,
            Account.kind == AccountKind.PATIENT.value,
        )
    ).all()
    for account_id, data_key_id in owned:
        session.execute(
            delete(Account).where(Account.tenant_id == tenant_id, Account.id == account_id)
        )
        session.execute(
            delete(DataKeyRecord).where(
                DataKeyRecord.tenant_id == tenant_id,
                DataKeyRecord.id == data_key_id,
                DataKeyRecord.subject_type == ACCOUNT_SUBJECT_TYPE,
                DataKeyRecord.subject_id == account_id,
            )
        )
        keyring.audit.record(
            AuditAction.ACCOUNT_DELETION_ERASE,
            tenant_id=tenant_id,
            target_type=ACCOUNT_SUBJECT_TYPE,
            target_id=account_id,
            purpose=purpose,
        )
    return len(owned)


def _clear_related(
    session: Session, tenant_id: uuid.UUID, patient_id: uuid.UUID, now: dt.datetime
) -> ErasureReport:
    """Appointments, claims, declarations, documents and account links of the record."""
    theirs = (Appointment.tenant_id == tenant_id, Appointment.patient_id == patient_id)
    appointment_ids = select(Appointment.id).where(*theirs).scalar_subquery()
    claims = session.execute(
        delete(SlotClaim).where(
            SlotClaim.tenant_id == tenant_id, SlotClaim.appointment_id.in_(appointment_ids)
        )
    )
    cancelled = session.execute(
        update(Appointment)
        .where(*theirs, Appointment.status.in_(_CANCELLABLE))
        .values(status=AppointmentStatus.CANCELLED.value, cancelled_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    anonymised = session.execute(
        update(Appointment)
        .where(*theirs, Appointment.anonymised_at.is_(None))
        .values(exams=None, home_address=None, anonymised_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    preregistrations = session.execute(
        delete(Preregistration).where(
            Preregistration.tenant_id == tenant_id, Preregistration.patient_id == patient_id
        )
    )
    documents = session.execute(
        delete(PatientDocument).where(
            PatientDocument.tenant_id == tenant_id, PatientDocument.patient_id == patient_id
        )
    )
    shares = session.execute(
        delete(ResultShare).where(
            ResultShare.tenant_id == tenant_id, ResultShare.patient_id == patient_id
        )
    )
    dependents = session.execute(
        delete(AccountDependent).where(
            AccountDependent.tenant_id == tenant_id, AccountDependent.patient_id == patient_id
        )
    )
    owners = session.execute(
        update(Account)
        .where(Account.tenant_id == tenant_id, Account.patient_id == patient_id)
        .values(patient_id=None)
        .execution_options(synchronize_session=False)
    )
    return ErasureReport(
        patient_id,
        appointments_cancelled=_count(cancelled),
        slot_claims_released=_count(claims),
        appointments_anonymised=_count(anonymised),
        preregistrations_deleted=_count(preregistrations),
        documents_deleted=_count(documents),
        account_links_removed=_count(dependents) + _count(owners),
        shares_deleted=_count(shares),
    )


def _discard_drop_files(
    session: Session, tenant_id: uuid.UUID, patient_id: uuid.UUID, drop_dir: Path
) -> int:
    """Delete the drop-directory documents of the record's reports (plaintext hand-offs to
    prescribers that the gateway has not taken yet)."""
    # Imported here: patients must not load the results' delivery code at import time.
    from labvault.results.delivery import discard_drop_files

    report_ids = session.scalars(
        select(ResultReport.id).where(
            ResultReport.tenant_id == tenant_id, ResultReport.patient_id == patient_id
        )
    ).all()
    return discard_drop_files(drop_dir, report_ids)


def _count(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
