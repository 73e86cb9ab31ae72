"""Patient data access, bound to the acting principal through its keyring.

Personal fields are sealed here on the way in and opened here on the way out; the keys
come from the keyring, whose ``open_data_keys`` is the decrypt choke point.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

from sqlalchemy import ColumnElement, Select, Table, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.orm.attributes import set_committed_value

from labvault.appointments.models import IdentityCheck
from labvault.core.access.policies import Interaction
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.crypto.envelope import FieldKey
from labvault.core.crypto.errors import DecryptionError
from labvault.core.crypto.keyring import (
    DataKeyNotFoundError,
    Indexer,
    Keyring,
    Sealer,
    require_index_generations,
)
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.crypto.reindex import (
    REINDEX_PURPOSE,
    Reindex,
    apply_reindexes,
    count_pending,
    pending_ids,
)
from labvault.core.db import utcnow
from labvault.patients.ins import IdentityStatus, InsOid, Sex
from labvault.patients.models import ENCRYPTED_FIELDS, Patient
from labvault.patients.nir import Nir
from labvault.patients.schemas import ContactUpdate, PatientInput, _check_nir_matches
from labvault.patients.scope import (
    SYSTEM_ACCESS,
    AccessDeniedError,
    AccessScope,
    IdentityVerification,
    SealingFor,
    SystemAccess,
)
from labvault.patients.scope import in_scope as policy_scope

TABLE = Patient.__tablename__
SUBJECT_TYPE = "patient"
DEFAULT_WRITE_PURPOSE = "registration"
MAX_SEARCH_RESULTS = 50
PATIENTS_TABLE = cast(Table, Patient.__table__)
DATA_KEYS_TABLE = cast(Table, DataKeyRecord.__table__)


def in_scope(
    scope: AccessScope | SystemAccess | IdentityVerification | SealingFor,
    patient_id: InstrumentedAttribute[uuid.UUID],
    resource: str,
    interaction: Interaction,
) -> tuple[ColumnElement[bool], frozenset[str] | None]:
    """The policy's condition (``labvault.patients.scope.in_scope``), erased records excluded.

    Every read and write of this repository goes through here, so an erased record (its
    data key destroyed) is absent for everyone, system jobs included: the same "not found"
    as an unknown id, never a decryption error."""
    where, fields = policy_scope(scope, patient_id, resource, interaction)
    return and_(where, Patient.erased_at.is_(None)), fields


@dataclass(frozen=True, slots=True, repr=False)
class PatientRecord:
    """A patient, decrypted as far as the reader's policy allows.

    ``fields`` names the personal fields that were revealed; the others were not even
    decrypted and are ``None``. Its repr shows the id only, so it cannot leak into logs.
    """

    id: uuid.UUID
    fields: frozenset[str]
    birth_name: str | None
    used_name: str | None
    first_names: str | None
    birth_date: dt.date | None
    sex: Sex | None
    birth_place_code: str | None
    ins_number: str | None
    ins_oid: InsOid | None
    identity_status: IdentityStatus | None
    email: str | None
    phone: str | None
    address_line: str | None
    postal_code: str | None
    city: str | None
    created_at: dt.datetime

    def __repr__(self) -> str:
        return f"PatientRecord(id={self.id})"

    @property
    def nir(self) -> Nir | None:
        if self.ins_number is None or self.ins_oid == InsOid.NIA:
            return None
        return Nir.parse(self.ins_number)


@dataclass(slots=True)
class RegistrationResult:
    """What ``register_many`` did with each input, by position in the input sequence."""

    created: dict[int, uuid.UUID] = field(default_factory=dict)
    existing: dict[int, uuid.UUID] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, repr=False)
class PreparedPatient:
    """A patient sealed and indexed, ready to store: the CPU-heavy half of registration.

    Preparing needs keys but no database, so bulk jobs prepare in worker processes and
    store from one writer. Its repr shows nothing (it holds ciphertext and indexes only).
    """

    nir_index: bytes | None
    name_index: bytes
    row: dict[str, object]
    key_row: dict[str, object]
    # Every generation's digests, newest first: duplicates are found during an index rotation.
    nir_candidates: tuple[bytes, ...] = ()
    name_candidates: tuple[bytes, ...] = ()
    # The index-key generations it was indexed with: storing it checks they are still the
    # organization's (``require_index_generations``).
    index_generations: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return "PreparedPatient(...)"


def prepare_patients(inputs: Sequence[PatientInput], sealer: Sealer) -> list[PreparedPatient]:
    """Seal and index ``inputs`` under fresh data keys (one per patient)."""
    indexer = sealer.indexer
    patient_ids = [uuid.uuid4() for _ in inputs]
    keys, key_rows = sealer.new_data_keys(SUBJECT_TYPE, patient_ids)
    prepared = []
    for person, patient_id, key, key_row in zip(inputs, patient_ids, keys, key_rows, strict=True):
        nir_candidates = indexer.nir_candidates(person.nir.compact) if person.nir else ()
        name_candidates = indexer.name_birth_date_candidates(
            person.birth_name, person.first_given_name, person.birth_date
        )
        nir_index = nir_candidates[0] if nir_candidates else None
        name_index = name_candidates[0]
        row: dict[str, object] = dict(_seal_patient(key, patient_id, person))
        row.update(
            id=patient_id,
            data_key_id=key.id,
            ins_oid=person.ins_oid.value if person.ins_oid else None,
            identity_status=person.identity_status.value,
            nir_index=nir_index,
            email_index=indexer.email(person.email) if person.email else None,
            phone_index=indexer.phone(person.phone) if person.phone else None,
            name_index=name_index,
            index_generation=indexer.generation,
        )
        prepared.append(
            PreparedPatient(
                nir_index,
                name_index,
                row,
                key_row,
                nir_candidates,
                name_candidates,
                indexer.generations,
            )
        )
    return prepared


@dataclass(frozen=True, slots=True, repr=False)
class SealedItem:
    """Content of another table sealed under a patient's key: an appointment's exams, a
    prescription's bytes. ``values`` are plaintexts to seal, or blobs to open, by column."""

    patient_id: uuid.UUID
    table: str
    row_id: uuid.UUID
    values: Mapping[str, bytes | None]

    def __repr__(self) -> str:
        return f"SealedItem({self.table}/{self.row_id}, columns={sorted(self.values)})"


RAISED_BY_DOCUMENT: Mapping[IdentityStatus, IdentityStatus] = {
    IdentityStatus.PROV: IdentityStatus.VALI,
    IdentityStatus.RECUP: IdentityStatus.QUAL,
}
"""What seeing a valid identity document makes of an identity status (INS rules)."""


class ErasureState(enum.StrEnum):
    LIVE = "live"
    ERASED = "erased"


@dataclass(frozen=True, slots=True)
class IdentityCheckOutcome:
    check_id: uuid.UUID
    status_before: IdentityStatus
    status_after: IdentityStatus


class RowSealer:
    """Seals rows under one patient's data key and can do nothing else (no ``open``)."""

    __slots__ = ("_key", "patient_id")

    def __init__(self, patient_id: uuid.UUID, key: FieldKey) -> None:
        self.patient_id = patient_id
        self._key = key

    def seal_row(
        self, table: str, row_id: uuid.UUID, values: Mapping[str, bytes | None]
    ) -> dict[str, bytes | None]:
        return self._key.seal_row(table, row_id, values)

    def __repr__(self) -> str:
        return f"RowSealer(patient={self.patient_id})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a sealer holds an unwrapped key and cannot be pickled")


class PatientRepository:
    """Patients of one tenant, as seen by the principal bound to ``keyring``.

    Every read is limited by ``access``: the records in the principal's scope, and of those
    only the fields its policy grants (see ``labvault.patients.scope``); anything else is
    neither selected nor decrypted. A system job omits it and gets every record, which only
    a keyring bound to a named ``SystemPrincipal`` may do.
    """

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        access: AccessScope | SystemAccess | IdentityVerification | SealingFor | None = None,
    ) -> None:
        if access is None:
            if not isinstance(keyring.principal, SystemPrincipal):
                raise AccessDeniedError(
                    "only a named system job reads patients without an access scope"
                )
            access = SYSTEM_ACCESS
        elif isinstance(access, SystemAccess) and not isinstance(
            keyring.principal, SystemPrincipal
        ):
            raise AccessDeniedError("system access is for named system jobs")
        elif isinstance(access, AccessScope) and (
            access.principal != keyring.principal or access.tenant_id != keyring.tenant_id
        ):
            raise AccessDeniedError("the access scope is another principal's or tenant's")
        self._session = session
        self._keyring = keyring
        self._access = access

    # -- writes ---------------------------------------------------------------------------

    def register_many(
        self, inputs: Sequence[PatientInput], *, purpose: str = DEFAULT_WRITE_PURPOSE
    ) -> RegistrationResult:
        """Create the patients that are not already known, in the caller's transaction.

        See :meth:`store_prepared` for what "already known" means.
        """
        if isinstance(self._access, AccessScope):
            self._access.grant(SUBJECT_TYPE, Interaction.CREATE)
        return self.store_prepared(prepare_patients(inputs, self._keyring), purpose=purpose)

    def store_prepared(
        self, prepared: Sequence[PreparedPatient], *, purpose: str = DEFAULT_WRITE_PURPOSE
    ) -> RegistrationResult:
        """Insert the prepared patients that are not already known; positions index ``prepared``.

        A patient is already known when its NIR matches one on file; without a NIR match, when
        birth name, first given name and birth date match a patient whose NIR is not known to
        differ. Duplicates within ``prepared`` are matched the same way. The sealed values of a
        known patient are discarded.
        """
        tenant_id = self._keyring.tenant_id
        if any(p.key_row["tenant_id"] != tenant_id for p in prepared):
            raise ValueError("prepared patients belong to another organization")
        result = RegistrationResult()
        by_nir, by_name = self._existing(
            [c for p in prepared for c in _nir_lookups(p)],
            [c for p in prepared for c in _name_lookups(p)],
        )
        key_rows: list[dict[str, object]] = []
        rows: list[dict[str, object]] = []
        now = utcnow()
        for position, patient in enumerate(prepared):
            nir_index = patient.nir_index
            match = next((by_nir[c] for c in _nir_lookups(patient) if c in by_nir), None)
            if match is None:
                named = (pair for c in _name_lookups(patient) for pair in by_name.get(c, ()))
                for candidate_id, candidate_nir in named:
                    if nir_index is None or candidate_nir is None:
                        match = candidate_id
                        break
            if match is not None:
                result.existing[position] = match
                continue
            patient_id = patient.row["id"]
            assert isinstance(patient_id, uuid.UUID)
            result.created[position] = patient_id
            for candidate in _nir_lookups(patient):
                by_nir[candidate] = patient_id
            for candidate in _name_lookups(patient):
                by_name.setdefault(candidate, []).append((patient_id, nir_index))
            key_rows.append(patient.key_row)
            rows.append(
                {**patient.row, "tenant_id": tenant_id, "created_at": now, "updated_at": now}
            )
        if rows:
            # Core inserts of whole rows: one executemany per batch (the ORM bulk path would
            # split the batch wherever the pattern of empty fields changes).
            self._session.execute(insert(DATA_KEYS_TABLE), key_rows)
            self._session.execute(insert(PATIENTS_TABLE), rows)
            for generations in {p.index_generations for p in prepared}:
                require_index_generations(self._session, tenant_id, generations)
            self._keyring.audit.record_many(
                AuditAction.PATIENT_RECORD_CREATE,
                tenant_id=tenant_id,
                target_type=SUBJECT_TYPE,
                target_ids=list(result.created.values()),
                purpose=purpose,
            )
        return result

    def _existing(
        self, nir_indexes: list[bytes], name_indexes: list[bytes]
    ) -> tuple[dict[bytes, uuid.UUID], dict[bytes, list[tuple[uuid.UUID, bytes | None]]]]:
        tenant_id = self._keyring.tenant_id
        by_nir: dict[bytes, uuid.UUID] = {}
        if nir_indexes:
            for patient_id, nir_index in self._session.execute(
                select(Patient.id, Patient.nir_index).where(
                    Patient.tenant_id == tenant_id,
                    Patient.nir_index.in_(set(nir_indexes)),
                    Patient.erased_at.is_(None),
                )
            ):
                if nir_index is not None:
                    by_nir[nir_index] = patient_id
        by_name: dict[bytes, list[tuple[uuid.UUID, bytes | None]]] = {}
        if name_indexes:
            for patient_id, name_index, nir_index in self._session.execute(
                select(Patient.id, Patient.name_index, Patient.nir_index).where(
                    Patient.tenant_id == tenant_id,
                    Patient.name_index.in_(set(name_indexes)),
                    Patient.erased_at.is_(None),
                )
            ):
                by_name.setdefault(name_index, []).append((patient_id, nir_index))
        if by_name:
            # A honey record is nobody's duplicate: a real patient who shares its traits gets
            # a record of their own (a shared NIR is refused by the unique index anyway).
            candidates = [patient_id for found in by_name.values() for patient_id, _ in found]
            shown = set(self._keyring.visible(SUBJECT_TYPE, candidates))
            by_name = {
                index: kept
                for index, found in by_name.items()
                if (kept := [entry for entry in found if entry[0] in shown])
            }
        return by_nir, by_name

    def update_contact(
        self, patient_id: uuid.UUID, update: ContactUpdate, *, purpose: str
    ) -> PatientRecord | None:
        """Change contact details of a record in scope; ``None`` if absent or out of scope.

        The fields changed must all be granted for update; their blind indexes follow.
        """
        try:
            where, fields = in_scope(self._access, Patient.id, SUBJECT_TYPE, Interaction.UPDATE)
        except AccessDeniedError:
            return None
        changes = update.changes()
        if fields is not None and not set(changes) <= fields:
            return None
        patient = self._locked(patient_id, where)
        if patient is None:
            return None
        key = self._open_keys([patient.id], purpose).get(patient.id)
        if key is None:
            return None
        if key.id != patient.data_key_id:
            raise DecryptionError(f"{TABLE} row {patient.id}: names a data key that is not its own")
        sealed = key.seal_row(
            TABLE, patient.id, {c: None if v is None else v.encode() for c, v in changes.items()}
        )
        # Contact fields are plain strings on the record: the changed values as given.
        updated = dataclasses.replace(_open_patient(key, patient), **dict[str, Any](changes))
        # Every index follows, not just the changed ones: the row moves to the newest
        # index generation as a whole (``keys rotate-index`` then leaves it alone).
        indexer = self._keyring.indexer
        values: dict[str, object] = {**sealed, **_indexes(indexer, updated), "updated_at": utcnow()}
        if not self._write_live(patient, values, indexer):
            return None  # erased meanwhile: as absent
        self._keyring.audit.record(
            AuditAction.PATIENT_CONTACT_UPDATE,
            tenant_id=self._keyring.tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=patient.id,
            purpose=purpose,
        )
        return _open_patient(key, patient, fields)

    def _locked(self, patient_id: uuid.UUID, where: ColumnElement[bool]) -> Patient | None:
        """The live record in scope, locked FOR UPDATE (an erasure waits for this write, or
        this write, on PostgreSQL, finds the record erased and gets ``None``)."""
        return self._session.scalars(
            select(Patient)
            .where(Patient.tenant_id == self._keyring.tenant_id, Patient.id == patient_id, where)
            .with_for_update()
        ).one_or_none()

    def _write_live(
        self, patient: Patient, values: Mapping[str, object], indexer: Indexer | None = None
    ) -> bool:
        """Write ``values`` on the record unless it was erased since it was read (SQLite
        takes no row lock: an erasure may commit between the read and this write); whether
        it was written. ``indexer``: the values hold blind indexes computed with it, which
        must still be the organization's (``require_index_generations``)."""
        result = self._session.execute(
            update(Patient)
            .where(
                Patient.tenant_id == self._keyring.tenant_id,
                Patient.id == patient.id,
                Patient.erased_at.is_(None),
            )
            .values(dict(values))
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return False
        if indexer is not None:
            require_index_generations(self._session, self._keyring.tenant_id, indexer.generations)
        for column, value in values.items():
            set_committed_value(patient, column, value)
        return True

    def _open_keys(
        self, patient_ids: Sequence[uuid.UUID], purpose: str
    ) -> dict[uuid.UUID, FieldKey]:
        """The data keys of ``patient_ids``, leaving out records erased since the caller's
        scope check (their keys are gone: they are absent, never an error)."""
        wanted = list(dict.fromkeys(patient_ids))
        for _ in range(len(wanted) + 1):
            try:
                return self._keyring.open_data_keys(SUBJECT_TYPE, wanted, purpose)
            except DataKeyNotFoundError as gone:
                erased = set(gone.subject_ids)
                wanted = [patient_id for patient_id in wanted if patient_id not in erased]
        return {}

    # -- content sealed under a patient's key, stored in other tables ---------------------

    def in_scope_ids(
        self, patient_ids: Sequence[uuid.UUID], resource: str, interaction: Interaction
    ) -> frozenset[uuid.UUID]:
        """Which of ``patient_ids`` the principal may ``interaction`` on ``resource`` (e.g.
        ``appointment``, ``prescription``), without decrypting anything."""
        if not patient_ids:
            return frozenset()
        try:
            where, _ = in_scope(self._access, Patient.id, resource, interaction)
        except AccessDeniedError:
            return frozenset()
        return frozenset(
            self._session.scalars(
                select(Patient.id).where(
                    Patient.tenant_id == self._keyring.tenant_id,
                    Patient.id.in_(sorted(set(patient_ids))),
                    where,
                )
            )
        )

    def seal_for(
        self,
        patient_id: uuid.UUID,
        resource: str,
        interaction: Interaction,
        item: SealedItem,
        *,
        purpose: str,
    ) -> dict[str, bytes | None] | None:
        """Seal ``item.values`` under the patient's key, bound to ``item``'s table, row and
        columns; ``None`` (nothing sealed, no key opened) when the principal may not
        ``interaction`` on ``resource`` for this patient."""
        if patient_id not in self.in_scope_ids([patient_id], resource, interaction):
            return None
        key = self._open_keys([patient_id], purpose).get(patient_id)
        if key is None:
            return None
        return key.seal_row(item.table, item.row_id, dict(item.values))

    def sealer_for(self, patient_id: uuid.UUID, resource: str, *, purpose: str) -> RowSealer | None:
        """A sealer of new ``resource`` rows for one patient, for a writer that adds many
        rows at once (a lab result: order, report, observations, PDF): one key opening,
        audited once; ``None`` when the principal may not create ``resource`` for this
        patient or the record is erased. It seals only: nothing it gives can decrypt."""
        if patient_id not in self.in_scope_ids([patient_id], resource, Interaction.CREATE):
            return None
        key = self._open_keys([patient_id], purpose).get(patient_id)
        return None if key is None else RowSealer(patient_id, key)

    def open_for(
        self, resource: str, items: Sequence[SealedItem], *, purpose: str
    ) -> dict[uuid.UUID, dict[str, bytes | None]]:
        """Open sealed content of other tables, by row id; rows of patients the principal may
        not read ``resource`` for are left out (their keys are never unwrapped)."""
        allowed = self.in_scope_ids([item.patient_id for item in items], resource, Interaction.READ)
        wanted = [item for item in items if item.patient_id in allowed]
        if not wanted:
            return {}
        keys = self._open_keys([item.patient_id for item in wanted], purpose)
        return {
            item.row_id: keys[item.patient_id].open_row(item.table, item.row_id, dict(item.values))
            for item in wanted
            if item.patient_id in keys
        }

    # -- reads ----------------------------------------------------------------------------

    def get(self, patient_id: uuid.UUID, *, purpose: str) -> PatientRecord | None:
        """The record, or ``None`` when it does not exist *or* is out of scope (same 404)."""
        try:
            where, fields = in_scope(self._access, Patient.id, SUBJECT_TYPE, Interaction.READ)
        except AccessDeniedError:
            return None
        found = self._open(
            select(Patient).where(
                Patient.tenant_id == self._keyring.tenant_id, Patient.id == patient_id, where
            ),
            purpose,
            fields,
        )
        return found[0] if found else None

    def get_many(
        self, patient_ids: Sequence[uuid.UUID], *, purpose: str, listing: bool = False
    ) -> list[PatientRecord]:
        """The records of ``patient_ids`` in scope, in no particular order; others are left out.
        ``listing``: the ids come from a list (a schedule, a queue), so records no list may
        show (honey records) are left out too, before decryption."""
        if not patient_ids:
            return []
        try:
            where, fields = in_scope(self._access, Patient.id, SUBJECT_TYPE, Interaction.READ)
        except AccessDeniedError:
            return []
        query = select(Patient).where(
            Patient.tenant_id == self._keyring.tenant_id,
            Patient.id.in_(sorted(set(patient_ids))),
            where,
        )
        return self._open(query, purpose, fields, listing=listing)

    def exists(self, patient_id: uuid.UUID) -> bool:
        """Whether the record exists and is in scope, without decrypting anything."""
        try:
            where, _ = in_scope(self._access, Patient.id, SUBJECT_TYPE, Interaction.READ)
        except AccessDeniedError:
            return False
        found = self._session.scalar(
            select(Patient.id).where(
                Patient.tenant_id == self._keyring.tenant_id, Patient.id == patient_id, where
            )
        )
        return found is not None

    def find_by_nir(self, nir: Nir, *, purpose: str) -> list[PatientRecord]:
        indexes = self._keyring.indexer.nir_candidates(nir.compact)
        return self._search(AuditAction.PATIENT_SEARCH_NIR, Patient.nir_index.in_(indexes), purpose)

    def find_by_email(self, email: str, *, purpose: str) -> list[PatientRecord]:
        indexes = self._keyring.indexer.email_candidates(email)
        match = Patient.email_index.in_(indexes)
        return self._search(AuditAction.PATIENT_SEARCH_EMAIL, match, purpose)

    def find_by_phone(self, phone: str, *, purpose: str) -> list[PatientRecord]:
        indexes = self._keyring.indexer.phone_candidates(phone)
        match = Patient.phone_index.in_(indexes)
        return self._search(AuditAction.PATIENT_SEARCH_PHONE, match, purpose)

    def find_by_name(
        self, birth_name: str, first_name: str, birth_date: dt.date, *, purpose: str
    ) -> list[PatientRecord]:
        indexer = self._keyring.indexer
        indexes = indexer.name_birth_date_candidates(birth_name, first_name, birth_date)
        match = Patient.name_index.in_(indexes)
        return self._search(AuditAction.PATIENT_SEARCH_NAME, match, purpose)

    def _search(
        self, action: AuditAction, match: ColumnElement[bool], purpose: str
    ) -> list[PatientRecord]:
        """Exact matches in scope. A search is an access even when it finds nothing (who
        looked, not for whom), and one refused outright is recorded as a failure."""
        try:
            where, fields = in_scope(self._access, Patient.id, SUBJECT_TYPE, Interaction.SEARCH)
        except AccessDeniedError as denied:
            raise self._keyring.audit.refusal(
                denied,
                action,
                tenant_id=self._keyring.tenant_id,
                target_type=SUBJECT_TYPE,
                purpose=purpose,
            ) from None
        self._keyring.audit.record(
            action, tenant_id=self._keyring.tenant_id, target_type=SUBJECT_TYPE, purpose=purpose
        )
        query = (
            select(Patient)
            .where(Patient.tenant_id == self._keyring.tenant_id, match, where)
            .order_by(Patient.created_at, Patient.id)
            .limit(MAX_SEARCH_RESULTS)
        )
        return self._open(query, purpose, fields, listing=True)

    def _open(
        self,
        query: Select[Patient],
        purpose: str,
        fields: frozenset[str] | None,
        *,
        listing: bool = False,
    ) -> list[PatientRecord]:
        """Decrypt what ``query`` selects. A ``listing`` (a search, a list) first leaves out
        the records no list may show (honey records), before any key is asked for; a read
        by id does not, so asking for such a record by its id trips its guard."""
        patients = list(self._session.scalars(query))
        if listing:
            shown = set(self._keyring.visible(SUBJECT_TYPE, [p.id for p in patients]))
            patients = [p for p in patients if p.id in shown]
        keys = self._open_keys([p.id for p in patients], purpose)
        return [_open_patient(keys[p.id], p, fields) for p in patients if p.id in keys]

    # -- identity checks at the desk --------------------------------------------------------

    def record_identity_check(
        self,
        patient_id: uuid.UUID,
        document_kind: str,
        *,
        staff_id: uuid.UUID,
        appointment_id: uuid.UUID | None,
        purpose: str,
    ) -> IdentityCheckOutcome | None:
        """A staff member saw an identity document of the patient: raise the identity status
        (PROV->VALI, RECUP->QUAL; VALI and QUAL stay), keep an ``IdentityCheck`` row and audit
        it. ``None`` (nothing written) when the record is absent or the principal may not
        update it. Which documents count is the caller's rule (``labvault.desk``).

        The kind of document is sealed under the patient's key (it can reveal a foreign
        national: "titre de séjour"); read it back with :meth:`open_for` (table
        ``identity_checks``, column ``document_kind``, row = the check's id)."""
        try:
            where, _ = in_scope(self._access, Patient.id, SUBJECT_TYPE, Interaction.UPDATE)
        except AccessDeniedError:
            return None
        patient = self._locked(patient_id, where)
        if patient is None:
            return None
        before = IdentityStatus(patient.identity_status)
        after = RAISED_BY_DOCUMENT.get(before, before)
        now = utcnow()
        check_id = uuid.uuid4()
        key = self._open_keys([patient_id], purpose).get(patient_id)
        if key is None:
            return None
        sealed = key.seal_row(
            "identity_checks", check_id, {"document_kind": document_kind.encode()}
        )["document_kind"]
        assert sealed is not None  # a value was given: never None
        # Written even when the status stays: the conditional write is what tells an
        # erasure committed since the read (the check would be sealed under a dead key).
        raised = {"identity_status": after.value, "updated_at": now} if after is not before else {}
        if not self._write_live(patient, raised or {"updated_at": patient.updated_at}):
            return None
        check = IdentityCheck(
            id=check_id,
            tenant_id=self._keyring.tenant_id,
            patient_id=patient_id,
            appointment_id=appointment_id,
            staff_id=staff_id,
            document_kind=sealed,
            status_before=before.value,
            status_after=after.value,
            checked_at=now,
        )
        self._session.add(check)
        self._session.flush()
        self._keyring.audit.record(
            AuditAction.PATIENT_IDENTITY_CHECK,
            tenant_id=self._keyring.tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=patient_id,
            purpose=purpose,
        )
        return IdentityCheckOutcome(check.id, before, after)

    # -- completing a record from the patient's own declaration (pre-registration) -------

    def complete_identity(
        self,
        patient_id: uuid.UUID,
        *,
        nir: Nir | None = None,
        used_name: str | None = None,
        birth_place_code: str | None = None,
        purpose: str,
    ) -> frozenset[str]:
        """Fill what a record lacks from what its patient declared; return the fields filled.

        The NIR only when the record has none, it agrees with the record's sex and birth date
        and no other record of the tenant has it (its blind index follows); the used name and
        the birth place only when empty and the identity is still PROV or RECUP. A value
        already there is never changed (a different declaration is for the desk to check),
        and a record out of scope or not granted these fields for update is left alone.

        The returned set is for the lab's code only: callers must answer a patient the same
        whether the NIR was taken or not (which NIRs are the lab's patients is not theirs to
        learn). A NIR claimed by another record between the check and the write (the unique
        blind index refuses it) is dropped in a SAVEPOINT, as if it had been taken before.
        For the same reason the ``patient:preregistration:update`` event (shown in the
        patient's access history) is recorded for an attempt to complete the record with a
        NIR, whether the NIR could be taken or not.
        """
        try:
            where, fields = in_scope(self._access, Patient.id, SUBJECT_TYPE, Interaction.UPDATE)
        except AccessDeniedError:
            return frozenset()
        patient = self._locked(patient_id, where)
        if patient is None:
            return frozenset()
        key = self._open_keys([patient.id], purpose).get(patient.id)
        if key is None:
            return frozenset()
        current = _open_patient(key, patient)
        status = IdentityStatus(patient.identity_status)
        changes: dict[str, str] = {}
        if (
            nir is not None
            and current.ins_number is None
            and current.sex is not None
            and current.birth_date is not None
        ):
            try:
                _check_nir_matches(nir, current.sex, current.birth_date)
            except ValueError:
                pass
            else:
                changes["ins_number"] = nir.compact  # if no other record has it: _claim_nir
        if status in (IdentityStatus.PROV, IdentityStatus.RECUP):
            if used_name and current.used_name is None:
                changes["used_name"] = used_name
            if birth_place_code and current.birth_place_code is None:
                changes["birth_place_code"] = birth_place_code
        if fields is not None:
            changes = {c: v for c, v in changes.items() if c in fields}
        declared_nir = changes.pop("ins_number", None)
        if declared_nir is None and not changes:
            return frozenset()
        filled = frozenset(changes)
        if declared_nir is not None and self._claim_nir(key, patient, declared_nir):
            filled |= {"ins_number"}
        if changes:
            sealed = key.seal_row(TABLE, patient.id, {c: v.encode() for c, v in changes.items()})
            if not self._write_live(patient, {**sealed, "updated_at": utcnow()}):
                return frozenset()  # erased meanwhile: nothing to complete
        self._keyring.audit.record(
            AuditAction.PATIENT_PREREGISTRATION_UPDATE,
            tenant_id=self._keyring.tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=patient.id,
            purpose=purpose,
        )
        return filled

    # -- erasure by crypto-shredding (the rules are ``labvault.patients.erasure``'s) -------

    def lock_for_erasure(self, patient_id: uuid.UUID) -> ErasureState | None:
        """Lock the record (FOR UPDATE) and say whether it is live or already erased;
        ``None`` when the tenant has no such record. Named system jobs only; decrypts nothing."""
        self._require_system_access("erase records")
        erased_at = self._session.execute(
            select(Patient.erased_at)
            .where(Patient.tenant_id == self._keyring.tenant_id, Patient.id == patient_id)
            .with_for_update()
        ).one_or_none()
        if erased_at is None:
            return None
        return ErasureState.LIVE if erased_at[0] is None else ErasureState.ERASED

    def mark_erasure_pending(self, patient_id: uuid.UUID, *, requested_by: str) -> None:
        """Remember that erasure was asked while a legal hold kept the record, so that
        ``labvault accounts purge`` erases it once the hold has ended (its owner was told so)."""
        self._require_system_access("erase records")
        self._session.execute(
            update(Patient)
            .where(
                Patient.tenant_id == self._keyring.tenant_id,
                Patient.id == patient_id,
                Patient.erased_at.is_(None),
            )
            .values(erasure_requested_by=requested_by)
            .execution_options(synchronize_session=False)
        )

    def pending_erasures(self) -> list[tuple[uuid.UUID, str]]:
        """Records whose erasure was asked while a legal hold kept them, not yet erased, with
        who asked (an ``ErasureRequester`` value)."""
        self._require_system_access("erase records")
        return [
            (patient_id, str(requested_by))
            for patient_id, requested_by in self._session.execute(
                select(Patient.id, Patient.erasure_requested_by)
                .where(
                    Patient.tenant_id == self._keyring.tenant_id,
                    Patient.erasure_requested_by.is_not(None),
                    Patient.erased_at.is_(None),
                )
                .order_by(Patient.id)
            )
        ]

    def shred(self, patient_id: uuid.UUID, *, requested_by: str, now: dt.datetime) -> None:
        """Destroy the record's data key and blind indexes and write its tombstone.

        The sealed columns stay as they are: without the key nothing opens them, here or in
        any backup once the root key versions that wrapped it are retired. The name index
        gets random bytes (it is NOT NULL: no HMAC output will ever equal them), the others
        NULL, so no lookup (search, registration, break-glass) finds the record again."""
        self._require_system_access("erase records")
        tenant_id, principal = self._keyring.tenant_id, self._keyring.principal
        updated = self._session.execute(
            update(Patient)
            .where(
                Patient.tenant_id == tenant_id,
                Patient.id == patient_id,
                Patient.erased_at.is_(None),
            )
            .values(
                data_key_id=None,
                nir_index=None,
                email_index=None,
                phone_index=None,
                name_index=os.urandom(32),
                erased_at=now,
                erased_by_kind=principal.kind.value,
                erased_by_id=principal.id,
                erasure_requested_by=requested_by,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if getattr(updated, "rowcount", 0) != 1:
            raise LookupError("the record is unknown or already erased")
        self._session.execute(
            delete(DataKeyRecord).where(
                DataKeyRecord.tenant_id == tenant_id,
                DataKeyRecord.subject_type == SUBJECT_TYPE,
                DataKeyRecord.subject_id == patient_id,
            )
        )

    def _require_system_access(self, what: str) -> None:
        if not isinstance(self._access, SystemAccess):
            raise AccessDeniedError(f"only a named system job may {what}")

    # -- blind-index rotation (``labvault keys rotate-index``) ------------------------------

    def pending_reindex(self, *, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
        """Records whose blind indexes predate the newest index generation, in id order."""
        self._require_system_access("re-index records")
        generation = self._keyring.indexer.generation
        tenant_id = self._keyring.tenant_id
        return pending_ids(
            self._session, PATIENTS_TABLE, tenant_id, generation, after=after, limit=limit
        )

    def count_pending_reindex(self) -> int:
        self._require_system_access("re-index records")
        generation = self._keyring.indexer.generation
        return count_pending(self._session, PATIENTS_TABLE, self._keyring.tenant_id, generation)

    def plan_reindex(self, patient_ids: Sequence[uuid.UUID]) -> list[Reindex]:
        """Every blind index of these records recomputed under the newest generation.

        Each record is decrypted (its key opened and audited with purpose
        ``keys:rotate-index``); records already at the newest generation are skipped. A
        record whose data key is gone (erased) has nothing left to index: only its
        generation moves, its index columns are left as they are.
        """
        self._require_system_access("re-index records")
        indexer = self._keyring.indexer
        tenant_id = self._keyring.tenant_id
        patients = list(
            self._session.scalars(
                select(Patient).where(
                    Patient.tenant_id == tenant_id,
                    Patient.id.in_(patient_ids),
                    Patient.index_generation < indexer.generation,
                )
            )
        )
        keyed = set(
            self._session.scalars(
                select(DataKeyRecord.subject_id).where(
                    DataKeyRecord.tenant_id == tenant_id,
                    DataKeyRecord.subject_type == SUBJECT_TYPE,
                    DataKeyRecord.subject_id.in_([p.id for p in patients]),
                )
            )
        )
        # A record erased since the query above has no key left: it is planned as keyless
        # (its changed indexes then keep the plan from applying; a later batch moves it).
        keys = self._open_keys([p.id for p in patients if p.id in keyed], REINDEX_PURPOSE)
        plans = []
        for patient in patients:
            key = keys.get(patient.id)
            new: dict[str, bytes | int | None] = (
                _indexes(indexer, _open_patient(key, patient))
                if key is not None
                else {"index_generation": indexer.generation}
            )
            old = {column: getattr(patient, column) for column in INDEX_COLUMNS}
            plans.append(Reindex(patient.id, patient.index_generation, old, new))
        return plans

    def apply_reindex(self, plans: Sequence[Reindex]) -> int:
        """Write plans back unless the record changed since it was read; records moved."""
        self._require_system_access("re-index records")
        return apply_reindexes(self._session, PATIENTS_TABLE, self._keyring.tenant_id, plans)

    def _nir_taken(self, indexes: Sequence[bytes]) -> bool:
        """Whether a record of the tenant carries the NIR of these blind indexes (one per
        index generation: a record not yet moved to the newest counts too)."""
        return (
            self._session.scalar(
                select(Patient.id)
                .where(
                    Patient.tenant_id == self._keyring.tenant_id,
                    Patient.nir_index.in_(indexes),
                    Patient.erased_at.is_(None),
                )
                .limit(1)
            )
            is not None
        )

    def _claim_nir(self, key: FieldKey, patient: Patient, nir: str) -> bool:
        """Write the NIR and its blind index on ``patient`` in a SAVEPOINT; ``False`` (and
        the record as it was) when another record of the tenant has that NIR, or took it
        meanwhile."""
        indexer = self._keyring.indexer
        if self._nir_taken(indexer.nir_candidates(nir)):
            return False
        blob = key.seal_row(TABLE, patient.id, {"ins_number": nir.encode()})
        claimed = dataclasses.replace(
            _open_patient(key, patient), ins_number=nir, ins_oid=InsOid.NIR
        )
        values: dict[str, object] = {
            "ins_oid": InsOid.NIR.value,
            "ins_number": blob["ins_number"],
            **_indexes(indexer, claimed),
            "updated_at": utcnow(),
        }
        try:
            with self._session.begin_nested():
                return self._write_live(patient, values, indexer)
        except IntegrityError:
            # The savepoint's rollback expired the record: it is read again as committed.
            return False


def _nir_lookups(patient: PreparedPatient) -> tuple[bytes, ...]:
    if patient.nir_candidates:
        return patient.nir_candidates
    return () if patient.nir_index is None else (patient.nir_index,)


def _name_lookups(patient: PreparedPatient) -> tuple[bytes, ...]:
    return patient.name_candidates or (patient.name_index,)


INDEX_COLUMNS = ("nir_index", "email_index", "phone_index", "name_index")


def _indexes(indexer: Indexer, record: PatientRecord) -> dict[str, bytes | int | None]:
    """Every blind index of a fully opened record under the newest generation, and that
    generation: what a row must carry so that ``keys rotate-index`` has nothing to do."""
    if record.birth_name is None or record.first_names is None or record.birth_date is None:
        raise DecryptionError(f"{TABLE} row {record.id}: identity fields missing, cannot index")
    nir = record.nir
    return {
        "nir_index": indexer.nir(nir.compact) if nir else None,
        "email_index": indexer.email(record.email) if record.email else None,
        "phone_index": indexer.phone(record.phone) if record.phone else None,
        "name_index": indexer.name_birth_date(
            record.birth_name, record.first_names, record.birth_date
        ),
        "index_generation": indexer.generation,
    }


def _seal_patient(
    key: FieldKey, patient_id: uuid.UUID, person: PatientInput
) -> dict[str, bytes | None]:
    plain: dict[str, str | None] = {
        "birth_name": person.birth_name,
        "used_name": person.used_name,
        "first_names": person.first_names,
        "birth_date": person.birth_date.isoformat(),
        "sex": person.sex.value,
        "birth_place_code": person.birth_place_code,
        "ins_number": person.nir.compact if person.nir else None,
        "email": person.email,
        "phone": person.phone,
        "address_line": person.address_line,
        "postal_code": person.postal_code,
        "city": person.city,
    }
    return key.seal_row(
        TABLE, patient_id, {c: None if v is None else v.encode() for c, v in plain.items()}
    )


ALL_FIELDS: frozenset[str] = frozenset(ENCRYPTED_FIELDS) | {"ins_oid", "identity_status"}


def _open_patient(
    key: FieldKey, patient: Patient, fields: frozenset[str] | None = None
) -> PatientRecord:
    """Decrypt the granted fields only (``None``: all of them)."""
    if key.id != patient.data_key_id:
        raise DecryptionError(f"{TABLE} row {patient.id}: names a data key that is not its own")
    revealed = ALL_FIELDS if fields is None else ALL_FIELDS & fields
    sealed = [c for c in ENCRYPTED_FIELDS if c in revealed]
    opened = key.open_row(TABLE, patient.id, {c: getattr(patient, c) for c in sealed})
    values = {c: None if v is None else v.decode() for c, v in opened.items()}
    values.update(dict.fromkeys(set(ENCRYPTED_FIELDS) - set(sealed)))
    birth_date, sex = values["birth_date"], values["sex"]
    return PatientRecord(
        id=patient.id,
        fields=revealed,
        birth_name=values["birth_name"],
        used_name=values["used_name"],
        first_names=values["first_names"],
        birth_date=dt.date.fromisoformat(birth_date) if birth_date else None,
        sex=Sex(sex) if sex else None,
        birth_place_code=values["birth_place_code"],
        ins_number=values["ins_number"],
        ins_oid=InsOid(patient.ins_oid) if patient.ins_oid and "ins_oid" in revealed else None,
        identity_status=(
            IdentityStatus(patient.identity_status) if "identity_status" in revealed else None
        ),
        email=values["email"],
        phone=values["phone"],
        address_line=values["address_line"],
        postal_code=values["postal_code"],
        city=values["city"],
        created_at=patient.created_at,
    )
