"""Erasure racing other work on the same record, on SQLite and PostgreSQL.

An erasure commits between another transaction's read of the record and its use of it:
a write must not put blind indexes or ciphertexts back on the erased row, a read must
answer "not found" (never a key error, a 500), and the erasure also deletes the patient's
own account with its data key.

The race is made deterministic by a decrypt guard (it runs inside ``open_data_keys``,
after the scope check): it runs the erasure in another thread and waits up to a second
for it. Where the reader holds a row lock (PostgreSQL, FOR UPDATE) the erasure waits for
it instead, which is the point.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from helpers import CHEAP_HASHER
from labvault.accounts.invitations import StaffAccountService
from labvault.accounts.models import Account, AccountDependent, AccountKind
from labvault.core.access.decrypt import DecryptRequest
from labvault.core.access.policies import Interaction
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.erasure import KeylessKeyring, erase_patient
from labvault.patients.ins import IdentityStatus
from labvault.patients.models import ErasureRequester, Patient
from labvault.patients.schemas import ContactUpdate, PatientInput
from labvault.patients.services import SUBJECT_TYPE, PatientRepository, SealedItem
from labvault.patients.synthetic import synthetic_patients

SYSTEM = SystemPrincipal("test:erasure-races")
PASSWORD = "une phrase de passe assez longue"
BUILDER = Principal(PrincipalKind.SYSTEM, "system:test-erasure-races")


def _people() -> list[PatientInput]:
    """Three people with email and phone, no used name, identity PROV; the third has no
    NIR (its own one, ``NIRLESS_NIR``, is for it to declare)."""
    people = []
    for number, person in enumerate(synthetic_patients(12, seed=77)):
        if person.nir and person.email and person.phone:
            people.append(
                person.model_copy(
                    update={
                        "used_name": None,
                        "identity_status": IdentityStatus.PROV,
                        "phone": f"06 11 22 33 {number:02d}",
                    }
                )
            )
    assert len(people) >= 3
    return people[:3]


@dataclass
class Lab:
    runtime: Runtime
    tenant: uuid.UUID
    sessions: sessionmaker[Session]
    people: list[PatientInput]
    ids: list[uuid.UUID]

    def keyring(self, session: Session, *guards: EraseOnOpen) -> TenantKeyring:
        return TenantKeyring(session, self.runtime.key_provider, self.tenant, SYSTEM, guards)

    def erase(self, patient_id: uuid.UUID) -> None:
        with transaction(self.sessions) as session:
            keyring = KeylessKeyring(session, self.tenant, SYSTEM)
            erase_patient(session, keyring, patient_id, ErasureRequester.CLI)

    def row(self, patient_id: uuid.UUID) -> Patient:
        with self.sessions() as session:
            return session.get_one(Patient, patient_id)

    def data_keys(self, subject_id: uuid.UUID) -> int:
        with self.sessions() as session:
            query = select(func.count()).where(DataKeyRecord.subject_id == subject_id)
            return int(session.scalar(query.select_from(DataKeyRecord)) or 0)


@pytest.fixture
def lab(runtime: Runtime) -> Lab:
    people = _people()
    nirless = people[2].model_copy(update={"nir": None, "ins_oid": None})
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo Courses").id
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SYSTEM)
        created = PatientRepository(session, keyring).register_many([*people[:2], nirless])
    ids = [created.created[i] for i in range(3)]
    return Lab(runtime, tenant, runtime.tenant_sessions(tenant), people, ids)


@dataclass
class EraseOnOpen:
    """A decrypt guard that, once armed, erases ``patient_id`` from another thread when its
    key is about to be opened, and waits for that erasure up to ``wait`` seconds."""

    lab: Lab
    patient_id: uuid.UUID
    wait: float = 1.0
    armed: bool = False
    thread: threading.Thread | None = None
    errors: list[BaseException] = field(default_factory=list)

    def before_decrypt(self, request: DecryptRequest) -> None:
        if not self.armed or self.patient_id not in request.subject_ids:
            return
        self.armed = False
        self.thread = threading.Thread(target=self._erase, daemon=True)
        self.thread.start()
        self.thread.join(timeout=self.wait)

    def _erase(self) -> None:
        try:
            self.lab.erase(self.patient_id)
        except BaseException as error:  # reported by finish()
            self.errors.append(error)

    def finish(self) -> None:
        assert self.thread is not None, "the guard never ran the erasure"
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


def _assert_erased_and_unindexed(lab: Lab, patient_id: uuid.UUID, person: PatientInput) -> None:
    row = lab.row(patient_id)
    assert row.erased_at is not None
    assert row.data_key_id is None
    assert (row.nir_index, row.email_index, row.phone_index) == (None, None, None)
    with transaction(lab.sessions) as session:
        indexer = lab.keyring(session).indexer
        name = indexer.name_birth_date_candidates(
            person.birth_name, person.first_given_name, person.birth_date
        )
    assert row.name_index not in name
    assert lab.data_keys(patient_id) == 0


Write = Callable[[PatientRepository, Lab], object]
WRITES: dict[str, tuple[int, Write]] = {
    "contact": (
        0,
        lambda repo, lab: repo.update_contact(
            lab.ids[0], ContactUpdate(email="nouvelle@example.org"), purpose="test"
        ),
    ),
    "completion": (
        0,
        lambda repo, lab: repo.complete_identity(lab.ids[0], used_name="Martel", purpose="test"),
    ),
    "nir-claim": (
        2,
        lambda repo, lab: repo.complete_identity(lab.ids[2], nir=lab.people[2].nir, purpose="t"),
    ),
}


@pytest.mark.parametrize("write", sorted(WRITES), ids=sorted(WRITES))
def test_a_write_racing_an_erasure_puts_nothing_back_on_the_erased_row(
    lab: Lab, write: str
) -> None:
    """Before the fix, ``update_contact`` read the row without a lock and wrote it back by
    id: the erasure's cleared indexes came back, the row findable again."""
    position, run = WRITES[write]
    patient_id = lab.ids[position]
    guard = EraseOnOpen(lab, patient_id)
    with lab.sessions() as session:
        keyring = lab.keyring(session, guard)
        repository = PatientRepository(session, keyring)
        assert repository.get(patient_id, purpose="test") is not None  # its key is now open
        session.commit()
        guard.armed = True
        outcome = run(repository, lab)
        session.commit()
    guard.finish()
    # Either the write went first (PostgreSQL: the erasure waited for its lock), or it saw
    # the record erased and wrote nothing: in both cases the erasure wins in the end.
    if lab.runtime.settings.is_sqlite:  # no row lock: the write saw the erasure
        assert outcome in (None, frozenset())
    else:  # the record was locked FOR UPDATE: the erasure waited for the write
        assert outcome
    _assert_erased_and_unindexed(lab, patient_id, lab.people[position])


Read = Callable[[PatientRepository, Lab], object]
READS: dict[str, tuple[Read, object]] = {
    "get": (lambda repo, lab: repo.get(lab.ids[0], purpose="t"), None),
    "get-many": (
        lambda repo, lab: [r.id for r in repo.get_many(lab.ids[:2], purpose="t")],
        "second",
    ),
    "find": (lambda repo, lab: repo.find_by_email(lab.people[0].email or "", purpose="t"), []),
    "open-for": (
        lambda repo, lab: repo.open_for(
            SUBJECT_TYPE, [SealedItem(lab.ids[0], "patients", lab.ids[0], {})], purpose="t"
        ),
        {},
    ),
    "seal-for": (
        lambda repo, lab: repo.seal_for(
            lab.ids[0],
            SUBJECT_TYPE,
            Interaction.READ,
            SealedItem(lab.ids[0], "patients", lab.ids[0], {"city": b"x"}),
            purpose="t",
        ),
        None,
    ),
}


# SQLite: a search's audit event takes the write lock before the read, so no erasure can
# commit in between; that race exists on PostgreSQL only.
_READ_CASES = [
    *(
        pytest.param(backend, read, id=f"{read}-{backend}", marks=marks)
        for read in sorted(READS)
        if read != "find"
        for backend, marks in (("sqlite", ()), ("postgresql", pytest.mark.pg))
    ),
    pytest.param("postgresql", "find", id="find-postgresql", marks=pytest.mark.pg),
]


@pytest.mark.parametrize(("backend", "read"), _READ_CASES)
def test_a_record_erased_after_the_scope_check_is_not_found_never_a_key_error(
    lab: Lab, read: str
) -> None:
    """Before the fix the key lookup raised KeyProviderError ("data key(s) not found"):
    a 500 for a record that had just become absent."""
    run, expected = READS[read]
    guard = EraseOnOpen(lab, lab.ids[0], armed=True, wait=30)
    with transaction(lab.sessions) as session:
        outcome = run(PatientRepository(session, lab.keyring(session, guard)), lab)
    guard.finish()
    assert outcome == ([lab.ids[1]] if expected == "second" else expected)


def test_a_reindex_plan_skips_a_record_erased_after_it_was_read(lab: Lab) -> None:
    from labvault.core.crypto.index_rotation import IndexRotation

    rotation = IndexRotation(lab.sessions, lab.runtime.key_provider, lab.tenant)
    rotation.start()
    guard = EraseOnOpen(lab, lab.ids[0], armed=True, wait=30)
    with transaction(lab.sessions) as session:
        plans = PatientRepository(session, lab.keyring(session, guard)).plan_reindex(lab.ids)
    guard.finish()
    by_row = {plan.row_id: plan for plan in plans}
    assert set(by_row) == set(lab.ids)
    assert by_row[lab.ids[0]].new == {"index_generation": 2}
    report = rotation.resume()
    assert report.completed
    assert report.remaining == 0


def test_an_erased_row_never_counts_as_a_duplicate_or_a_taken_nir(lab: Lab) -> None:
    """Even with its indexes back (what the write race used to leave), an erased record is
    not "already known": the same person registers anew, its NIR is not "taken"."""
    lab.erase(lab.ids[0])
    person = lab.people[0]
    assert person.nir is not None
    with transaction(lab.sessions) as session:
        indexer = lab.keyring(session).indexer
        session.execute(
            update(Patient)
            .where(Patient.id == lab.ids[0])
            .values(
                nir_index=indexer.nir(person.nir.compact),
                name_index=indexer.name_birth_date(
                    person.birth_name, person.first_given_name, person.birth_date
                ),
            )
        )
    with transaction(lab.sessions) as session:
        repository = PatientRepository(session, lab.keyring(session))
        nirless = person.model_copy(update={"nir": None, "ins_oid": None, "email": None})
        result = repository.register_many([nirless])
        assert not result.existing, "matched the erased record by name"
        assert not repository._nir_taken(indexer.nir_candidates(person.nir.compact))


def _events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    with runtime.audit_sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def test_erasure_deletes_the_patients_own_account_and_keeps_a_guardians(lab: Lab) -> None:
    patient_id = lab.ids[0]
    with transaction(lab.sessions) as session:
        service = StaffAccountService(
            session,
            tenant_id=lab.tenant,
            provider=lab.runtime.key_provider,
            mailer=lab.runtime.mailer,
            limiter=lab.runtime.rate_limiter,
            settings=lab.runtime.settings,
            hasher=CHEAP_HASHER,
        )
        own, guardian = (
            service.provision(
                email, Secret(PASSWORD), kind=AccountKind.PATIENT, security_phrase=None, by=BUILDER
            ).id
            for email in ("moi@example.org", "parent@example.org")
        )
        session.execute(update(Account).where(Account.id == own).values(patient_id=patient_id))
        session.add(
            AccountDependent(
                tenant_id=lab.tenant,
                account_id=guardian,
                patient_id=patient_id,
                relationship="parent",
                verified_by="desk",
            )
        )
    assert lab.data_keys(own) == 1

    with transaction(lab.sessions) as session:
        keyring = KeylessKeyring(session, lab.tenant, SYSTEM)
        report = erase_patient(session, keyring, patient_id, ErasureRequester.CLI)

    assert report.accounts_deleted == 1
    assert report.account_links_removed == 1
    with lab.sessions() as session:
        assert session.get(Account, own) is None
        assert session.get(Account, guardian) is not None
        links = select(func.count()).select_from(AccountDependent)
        assert session.scalar(links.where(AccountDependent.account_id == guardian)) == 0
    assert lab.data_keys(own) == 0, "the account's sealed email must be crypto-shredded"
    assert lab.data_keys(guardian) == 1
    erased = _events(lab.runtime, AuditAction.ACCOUNT_DELETION_ERASE)
    assert [(e.target_id, e.purpose, e.outcome) for e in erased] == [
        (own, "erasure:cli", "success")
    ]
