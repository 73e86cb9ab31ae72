"""Blind-index key rotation while the platform runs: every lookup answers throughout."""

from __future__ import annotations

import datetime as dt
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from helpers import CHEAP_HASHER, leaked, write_csv
from labvault.accounts.invitations import StaffAccountService
from labvault.accounts.models import Account, AccountKind
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.index_rotation import (
    OWNERS,
    IndexRotation,
    Reindexable,
    RotationRunningError,
)
from labvault.core.crypto.keyring import IndexKeysChangedError, TenantKeyring
from labvault.core.crypto.models import IndexKeyRecord
from labvault.core.crypto.reindex import REINDEX_PURPOSE
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization
from labvault.patients.models import Patient
from labvault.patients.nir import Nir
from labvault.patients.schemas import ContactUpdate, PatientInput
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows
from labvault.security.alerts import AlertDispatcher, DatabaseAlertSink
from labvault.security.breakglass import BreakGlassService, PatientDesignation
from labvault.security.models import BreakGlassReason
from labvault.staff.models import StaffMember, StaffRole
from labvault.staff.services import StaffRepository

PASSWORD = "une phrase de passe assez longue"
BUILDER = Principal(PrincipalKind.SYSTEM, "system:test-rotation")
JUSTIFICATION = "Appel du Dr Martin : valeur critique de potassium à confirmer"
OWNER_OF = dict(OWNERS)


def _nir(sex: str, born: dt.date, order: str) -> str:
    body = f"{sex}{born.year % 100:02d}{born.month:02d}75123{order}"
    return body + f"{97 - int(body) % 97:02d}"


def _person(number: int, birth_name: str, first_names: str, sex: str) -> PatientInput:
    born = dt.date(1960 + number, 1 + number, 10 + number)
    return PatientInput(
        birth_name=birth_name,
        first_names=first_names,
        birth_date=born,
        sex=sex,
        nir=_nir("2" if sex == "F" else "1", born, f"{number + 1:03d}"),
        email=f"{first_names.split()[0].lower()}.{birth_name.lower()}@patients.example.org",
        phone=f"06 12 34 56 7{number}",
    )


PEOPLE = {
    "first": _person(0, "Durandeau", "Camille Aurore", "F"),
    "second": _person(1, "Quintard", "Basile", "M"),
    "third": _person(2, "Lemarechal", "Josiane", "F"),
    "fourth": _person(3, "Berthelot", "Noel", "M"),
}
STAFF_EMAILS = ("agent.un@rotation.example.org", "agent.deux@rotation.example.org")
ACCOUNT_EMAILS = ("compte.un@rotation.example.org", "compte.deux@rotation.example.org")


@dataclass
class Lab:
    runtime: Runtime
    tenant: uuid.UUID
    site: uuid.UUID
    sessions: sessionmaker[Session]
    patients: dict[str, uuid.UUID]
    staff: dict[str, uuid.UUID]
    """Staff member ids by email."""
    staff_accounts: dict[str, uuid.UUID]
    patient_accounts: dict[str, uuid.UUID]

    def keyring(self, session: Session, principal: Principal | None = None) -> TenantKeyring:
        return TenantKeyring(
            session,
            self.runtime.key_provider,
            self.tenant,
            principal or SystemPrincipal("test:rotation"),
        )

    def rotation(self, batch_size: int = 500) -> IndexRotation:
        return IndexRotation(
            self.sessions, self.runtime.key_provider, self.tenant, batch_size=batch_size
        )

    @contextmanager
    def patients_repository(self) -> Iterator[PatientRepository]:
        with transaction(self.sessions) as session:
            yield PatientRepository(session, self.keyring(session))

    @contextmanager
    def accounts(self) -> Iterator[StaffAccountService]:
        with transaction(self.sessions) as session:
            yield StaffAccountService(
                session,
                tenant_id=self.tenant,
                provider=self.runtime.key_provider,
                mailer=self.runtime.mailer,
                limiter=self.runtime.rate_limiter,
                settings=self.runtime.settings,
                hasher=CHEAP_HASHER,
            )

    def migrate(self, owner: str, ids: Sequence[uuid.UUID]) -> int:
        """One batch of the job on chosen rows: what a half-done rotation has done."""
        with transaction(self.sessions) as session:
            rows: Reindexable = OWNER_OF[owner](session, self.keyring(session))
            return rows.apply_reindex(rows.plan_reindex(ids))

    def generations(self, model: Any, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        with self.sessions() as session:
            rows = session.execute(
                select(model.id, model.index_generation).where(model.id.in_(ids))
            ).all()
        return {row_id: generation for row_id, generation in rows}


@pytest.fixture
def lab(runtime: Runtime) -> Lab:
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Labo Rotation")
        tenant = organization.id
        site = add_site(
            session,
            organization,
            name="Centre",
            address_line="1 rue de la Paix",
            postal_code="75002",
            city="Paris",
            opening_hours={},
            sampling_capacity_per_hour=12,
        ).id
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("t:setup"))
        created = PatientRepository(session, keyring).register_many(list(PEOPLE.values()))
        patients = {name: created.created[i] for i, name in enumerate(PEOPLE)}
        staff = {
            email: StaffRepository(session, keyring).add(
                first_name="Camille",
                last_name=f"Agent{number}",
                email=email,
                role=StaffRole.RECEPTIONIST,
                site_ids=[site],
            )
            for number, email in enumerate(STAFF_EMAILS)
        }
    lab = Lab(runtime, tenant, site, runtime.tenant_sessions(tenant), patients, staff, {}, {})
    with lab.accounts() as service:
        for email in STAFF_EMAILS:
            account = service.provision_staff_account(
                email, Secret(PASSWORD), security_phrase=None, by=BUILDER
            )
            lab.staff_accounts[email] = account.id
        for email in ACCOUNT_EMAILS:
            account = service.provision(
                email, Secret(PASSWORD), kind=AccountKind.PATIENT, security_phrase=None, by=BUILDER
            )
            lab.patient_accounts[email] = account.id
    return lab


def _found_patients(lab: Lab, person: PatientInput) -> list[set[uuid.UUID]]:
    """The ids each kind of patient lookup finds for ``person``."""
    assert person.nir is not None
    assert person.email is not None
    assert person.phone is not None
    with lab.patients_repository() as patients:
        searches = [
            patients.find_by_nir(person.nir, purpose="test"),
            patients.find_by_email(person.email, purpose="test"),
            patients.find_by_phone(person.phone, purpose="test"),
            patients.find_by_name(
                person.birth_name, person.first_names, person.birth_date, purpose="test"
            ),
        ]
    return [{record.id for record in found} for found in searches]


def _logs_in(lab: Lab, email: str, kind: AccountKind) -> bool:
    with lab.accounts() as service:
        pending = service.login(
            email, Secret(PASSWORD), client_id=uuid.uuid4().hex, client_hash=None, kind=kind
        )
    return bool(pending.token.reveal())


def _break_glass(lab: Lab, designation: PatientDesignation) -> uuid.UUID:
    principal = Principal(
        PrincipalKind.STAFF, str(uuid.uuid4()), role=StaffRole.RECEPTIONIST.value, site_id=lab.site
    )
    with transaction(lab.sessions) as session:
        keyring = lab.keyring(session, principal)
        service = BreakGlassService(
            session,
            keyring,
            staff_id=lab.staff[STAFF_EMAILS[0]],
            alerts=AlertDispatcher([DatabaseAlertSink(session, keyring.audit)]),
            hours=4,
        )
        return service.open(designation, BreakGlassReason.EMERGENCY, JUSTIFICATION)


def _half_done(lab: Lab) -> None:
    """Generation 2 exists; "first" and "second", one staff member and one account of each
    kind are moved to it; the others are still on generation 1."""
    assert lab.rotation().start() == 2
    assert lab.migrate("patients", [lab.patients["first"], lab.patients["second"]]) == 2
    assert lab.migrate("staff_members", [lab.staff[STAFF_EMAILS[0]]]) == 1
    moved_accounts = [lab.staff_accounts[STAFF_EMAILS[0]], lab.patient_accounts[ACCOUNT_EMAILS[0]]]
    assert lab.migrate("accounts", moved_accounts) == 2


def test_every_lookup_finds_moved_and_unmoved_records_during_a_rotation(lab: Lab) -> None:
    _half_done(lab)
    ids = list(lab.patients.values())
    assert lab.generations(Patient, ids) == {
        lab.patients["first"]: 2,
        lab.patients["second"]: 2,
        lab.patients["third"]: 1,
        lab.patients["fourth"]: 1,
    }
    assert set(lab.generations(StaffMember, list(lab.staff.values())).values()) == {1, 2}
    accounts = [*lab.staff_accounts.values(), *lab.patient_accounts.values()]
    assert sorted(lab.generations(Account, accounts).values()) == [1, 1, 2, 2]
    for name, person in PEOPLE.items():
        assert _found_patients(lab, person) == [{lab.patients[name]}] * 4, name
    for email in STAFF_EMAILS:
        assert _logs_in(lab, email, AccountKind.STAFF), email
    for email in ACCOUNT_EMAILS:
        assert _logs_in(lab, email, AccountKind.PATIENT), email
    for name in ("first", "third"):
        assert _break_glass(lab, PatientDesignation(nir=PEOPLE[name].nir)) == lab.patients[name]
    for name in ("second", "fourth"):
        person = PEOPLE[name]
        designation = PatientDesignation(
            birth_name=person.birth_name,
            first_name=person.first_names,
            birth_date=person.birth_date,
        )
        assert _break_glass(lab, designation) == lab.patients[name]


def test_writes_during_a_rotation_use_the_new_generation_and_see_the_old_one(lab: Lab) -> None:
    _half_done(lab)
    newcomer = _person(5, "Nouvelarrivee", "Ines", "F")
    with lab.patients_repository() as patients:
        result = patients.register_many([newcomer, PEOPLE["third"], PEOPLE["first"]])
    assert set(result.existing) == {1, 2}, "a record on either generation is already known"
    assert result.existing == {1: lab.patients["third"], 2: lab.patients["first"]}
    new_id = result.created[0]
    assert lab.generations(Patient, [new_id]) == {new_id: 2}
    assert _found_patients(lab, newcomer) == [{new_id}] * 4
    with lab.accounts() as service:
        account = service.provision(
            "compte.trois@rotation.example.org",
            Secret(PASSWORD),
            kind=AccountKind.PATIENT,
            security_phrase=None,
            by=BUILDER,
        )
        assert account.index_generation == 2
    assert _logs_in(lab, "compte.trois@rotation.example.org", AccountKind.PATIENT)


def test_a_nir_carried_by_a_record_not_yet_moved_is_taken(lab: Lab) -> None:
    _half_done(lab)
    behind = PEOPLE["third"]
    assert behind.nir is not None
    twin = behind.model_copy(
        update={"birth_name": "Autrenom", "nir": None, "email": None, "phone": None}
    )
    with lab.patients_repository() as patients:
        twin_id = patients.register_many([twin]).created[0]
    with lab.patients_repository() as patients:
        filled = patients.complete_identity(twin_id, nir=behind.nir, purpose="test")
    assert "ins_number" not in filled
    free = Nir.parse(_nir("2", behind.birth_date, "999"))
    with lab.patients_repository() as patients:
        filled = patients.complete_identity(twin_id, nir=free, purpose="test")
    assert "ins_number" in filled, "the control: a free NIR is written"
    assert lab.generations(Patient, [twin_id]) == {twin_id: 2}
    with lab.patients_repository() as patients:
        assert [r.id for r in patients.find_by_nir(free, purpose="test")] == [twin_id]


def test_an_edit_between_the_jobs_read_and_write_is_not_overwritten(lab: Lab) -> None:
    assert lab.rotation().start() == 2
    target = lab.patients["second"]
    with transaction(lab.sessions) as session:
        plans = OWNER_OF["patients"](session, lab.keyring(session)).plan_reindex([target])
    assert len(plans) == 1
    with lab.patients_repository() as patients:
        update = ContactUpdate(email="nouvelle.adresse@patients.example.org")
        assert patients.update_contact(target, update, purpose="test") is not None
    with transaction(lab.sessions) as session:
        assert OWNER_OF["patients"](session, lab.keyring(session)).apply_reindex(plans) == 0
    with lab.patients_repository() as patients:
        found = patients.find_by_email("nouvelle.adresse@patients.example.org", purpose="test")
        assert [r.id for r in found] == [target]
        old_email = PEOPLE["second"].email
        assert old_email is not None
        assert patients.find_by_email(old_email, purpose="test") == []
    assert lab.generations(Patient, [target]) == {target: 2}


def _events(lab: Lab, *actions: AuditAction) -> list[AuditEvent]:
    with lab.sessions() as session:
        query = select(AuditEvent).where(AuditEvent.tenant_id == lab.tenant)
        if actions:
            query = query.where(AuditEvent.action.in_([a.value for a in actions]))
        return list(session.scalars(query))


def test_a_completed_rotation_deletes_the_old_keys_and_a_rerun_does_nothing(lab: Lab) -> None:
    rotation = lab.rotation(batch_size=2)
    assert rotation.start() == 2
    with pytest.raises(RotationRunningError, match="already running"):
        rotation.start()
    rows = len(PEOPLE) + len(STAFF_EMAILS) + len(STAFF_EMAILS) + len(ACCOUNT_EMAILS)
    assert rotation.pending() == rows
    assert rotation.run_batches(max_batches=1) == 2
    assert rotation.pending() == rows - 2
    assert not rotation.complete(), "rows still need the old keys"
    assert rotation.generations() == [1, 2]

    totals: list[int] = []
    batches: list[int] = []
    report = rotation.resume(on_total=totals.append, on_batch=batches.append)
    assert (report.generation, report.moved, report.completed, report.remaining) == (
        2,
        rows - 2,
        True,
        0,
    )
    assert totals == [rows - 2]
    assert sum(batches) == rows - 2
    assert max(batches) <= 2
    with lab.sessions() as session:
        held = session.execute(
            select(IndexKeyRecord.kind, IndexKeyRecord.generation).where(
                IndexKeyRecord.tenant_id == lab.tenant
            )
        ).all()
    assert {generation for _, generation in held} == {2}
    assert len(held) == 5
    for name, person in PEOPLE.items():
        assert _found_patients(lab, person) == [{lab.patients[name]}] * 4, name
    assert _logs_in(lab, STAFF_EMAILS[1], AccountKind.STAFF)
    assert _logs_in(lab, ACCOUNT_EMAILS[1], AccountKind.PATIENT)

    before = len(_events(lab))
    again = rotation.resume()
    assert (again.moved, again.completed, again.remaining, again.started) == (0, False, 0, False)
    assert len(_events(lab)) == before, "a rerun records nothing"
    assert rotation.generations() == [2]

    rotate = _events(lab, AuditAction.KEYS_INDEX_ROTATE)
    complete = _events(lab, AuditAction.KEYS_INDEX_COMPLETE)
    assert [(e.target_id, e.actor_id) for e in rotate + complete] == [
        (lab.tenant, "system:cli:keys-rotate-index")
    ] * 2
    reads = [e for e in _events(lab) if e.purpose == REINDEX_PURPOSE]
    expected = {
        *lab.patients.values(),
        *lab.staff.values(),
        *lab.staff_accounts.values(),
        *lab.patient_accounts.values(),
    }
    assert sorted(str(e.target_id) for e in reads) == sorted(str(i) for i in expected)


def test_audit_events_of_a_rotation_carry_no_personal_value(lab: Lab) -> None:
    lab.rotation(batch_size=3).run()
    personal = (
        {
            value
            for person in PEOPLE.values()
            for value in (
                person.birth_name,
                person.first_names,
                person.email,
                person.phone,
                person.nir.compact if person.nir else None,
            )
            if value
        }
        | set(STAFF_EMAILS)
        | set(ACCOUNT_EMAILS)
    )
    rows = [
        repr([getattr(event, column.key) for column in AuditEvent.__table__.columns])
        for event in _events(lab)
    ]
    assert rows, "the rotation was audited"
    assert leaked("\n".join(rows).encode(), personal) == []


def test_run_starts_a_new_rotation_after_a_completed_one(lab: Lab) -> None:
    first = lab.rotation().run()
    assert (first.generation, first.started, first.completed) == (2, True, True)
    second = lab.rotation().run()
    assert (second.generation, second.started, second.completed) == (3, True, True)
    assert lab.rotation().generations() == [3]
    for name, person in PEOPLE.items():
        assert _found_patients(lab, person) == [{lab.patients[name]}] * 4, name


def test_an_erased_record_moves_without_being_decrypted(lab: Lab) -> None:
    target = lab.patients["fourth"]
    with transaction(lab.sessions) as session:
        PatientRepository(session, lab.keyring(session)).shred(
            target, requested_by="cli", now=dt.datetime.now(dt.UTC)
        )
    report = lab.rotation().run()
    assert report.completed
    assert lab.generations(Patient, [target]) == {target: 2}
    reads = [e for e in _events(lab) if e.purpose == REINDEX_PURPOSE]
    assert target not in {e.target_id for e in reads}


NEWCOMER = _person(5, "Valladier", "Odile", "F")


def _register(lab: Lab, session: Session, keyring: TenantKeyring, nirless: uuid.UUID) -> object:
    return PatientRepository(session, keyring).register_many([NEWCOMER])


def _contact(lab: Lab, session: Session, keyring: TenantKeyring, nirless: uuid.UUID) -> object:
    update = ContactUpdate(email="encore.une@patients.example.org")
    repository = PatientRepository(session, keyring)
    return repository.update_contact(lab.patients["third"], update, purpose="test")


def _claim(lab: Lab, session: Session, keyring: TenantKeyring, nirless: uuid.UUID) -> object:
    repository = PatientRepository(session, keyring)
    assert NEWCOMER.nir is not None
    return repository.complete_identity(nirless, nir=NEWCOMER.nir, purpose="test")


def _staff_member(lab: Lab, session: Session, keyring: TenantKeyring, nirless: uuid.UUID) -> object:
    return StaffRepository(session, keyring).add(
        first_name="Camille",
        last_name="Nouvelle",
        email="agent.trois@rotation.example.org",
        role=StaffRole.RECEPTIONIST,
        site_ids=[lab.site],
    )


STALE_WRITES = {
    "registration": _register,
    "contact-update": _contact,
    "nir-claim": _claim,
    "staff-member": _staff_member,
}


def _rows(lab: Lab) -> tuple[object, ...]:
    with lab.sessions() as session:
        return (
            session.execute(
                select(
                    Patient.id, Patient.nir_index, Patient.email_index, Patient.updated_at
                ).order_by(Patient.id)
            ).all(),
            session.execute(select(StaffMember.id).order_by(StaffMember.id)).all(),
        )


def _write_with_keys_loaded_before_the_rotation(lab: Lab, write: str, nirless: uuid.UUID) -> None:
    with transaction(lab.sessions) as session:
        keyring = lab.keyring(session)
        assert keyring.indexer.generations == (1,)  # loaded now, as a request would
        assert lab.rotation().start() == 2
        STALE_WRITES[write](lab, session, keyring, nirless)


@pytest.mark.parametrize("write", sorted(STALE_WRITES), ids=sorted(STALE_WRITES))
def test_a_write_with_index_keys_loaded_before_a_rotation_started_is_refused(
    lab: Lab, write: str
) -> None:
    """Its digests are the old generation's, its duplicate checks too: refused, nothing
    written, the message says to run it again."""
    with transaction(lab.sessions) as session:
        keyring = lab.keyring(session)
        nirless = (
            PatientRepository(session, keyring)
            .register_many(
                [NEWCOMER.model_copy(update={"nir": None, "ins_oid": None, "birth_name": "Autre"})]
            )
            .created[0]
        )
    before = _rows(lab)
    with pytest.raises(IndexKeysChangedError, match=r"index keys changed.*run it again"):
        _write_with_keys_loaded_before_the_rotation(lab, write, nirless)
    assert _rows(lab) == before


# SQLite serialises writers: the rotation cannot start under an open writer there.
@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.pg)])
def test_complete_waits_for_a_writer_and_keeps_the_old_keys_if_it_left_rows_behind(
    lab: Lab,
) -> None:
    """A writer checked its generations (and locked them FOR SHARE) before the rotation
    started, then committed after the batches ran: ``complete`` must not retire the keys
    its rows still need. Before the fix it deleted them: the new row was unfindable."""
    rotation = lab.rotation()
    outcome: list[bool] = []
    with lab.sessions() as writer:
        created = PatientRepository(writer, lab.keyring(writer)).register_many([NEWCOMER])
        newcomer = created.created[0]
        assert rotation.start() == 2
        rotation.run_batches()
        completing = threading.Thread(target=lambda: outcome.append(rotation.complete()))
        completing.start()
        completing.join(timeout=1.0)
        assert completing.is_alive(), "complete() did not wait for the writer"
        writer.commit()
    completing.join(timeout=30)
    assert outcome == [False]
    assert rotation.generations() == [1, 2]
    report = rotation.resume()
    assert (report.completed, report.remaining) == (True, 0)
    assert _found_patients(lab, NEWCOMER) == [{newcomer}] * 4


def test_an_import_interrupted_by_a_rotation_exits_2_and_a_rerun_completes(
    lab: Lab, cli_env: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The import's workers index with the keys it loaded at its start; a rotation starting
    meanwhile makes its next batch refuse (exit status 2, a clear message); run again, the
    import completes (what was stored is found as already present)."""
    import labvault.cli as cli

    rows = list(synthetic_patient_rows(5, seed=31))
    source = write_csv(tmp_path / "patients.csv", rows)
    command = ["import", "patients", str(source), "--oid", "test", "--workers", "0"]
    command += ["--organization", "Labo Rotation", "--batch-size", "2"]
    real_import = cli.import_patients

    def import_after_a_rotation_started(*args: Any, **kwargs: Any) -> Any:
        lab.rotation().start()
        return real_import(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(cli, "import_patients", import_after_a_rotation_started)
        patched.setattr(sys, "argv", ["labvault", *command])
        with pytest.raises(SystemExit) as exited:
            cli.main()
    assert exited.value.code == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "index keys changed during this operation" in error
    assert "run it again" in error

    again = CliRunner().invoke(cli.app, command)
    assert again.exit_code == 0, again.output
    assert "5 rows: 5 imported, 0 already present" in again.output
    assert lab.rotation().resume().completed
    with lab.patients_repository() as patients:
        for row in rows:
            found = patients.find_by_nir(Nir.parse(row["nir"]), purpose="test")
            assert len(found) == 1


def test_an_account_created_with_index_keys_loaded_before_a_rotation_started_is_refused(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The account service loads the index keys and writes the email index in one call:
    a rotation starting between the two (here: when the account's data key is made, after
    the index was computed) makes the creation refuse, nothing written."""
    original = TenantKeyring.new_data_keys

    def rotation_starts_meanwhile(self: TenantKeyring, subject_type: str, ids: Any) -> Any:
        if subject_type == "account":
            lab.rotation().start()
        return original(self, subject_type, ids)

    monkeypatch.setattr(TenantKeyring, "new_data_keys", rotation_starts_meanwhile)
    with pytest.raises(IndexKeysChangedError), lab.accounts() as service:
        service.provision(
            "compte.trois@rotation.example.org",
            Secret(PASSWORD),
            kind=AccountKind.PATIENT,
            security_phrase=None,
            by=BUILDER,
        )
    with lab.sessions() as session:
        accounts = session.scalars(select(Account.id).where(Account.tenant_id == lab.tenant))
        assert set(accounts) == {*lab.staff_accounts.values(), *lab.patient_accounts.values()}
