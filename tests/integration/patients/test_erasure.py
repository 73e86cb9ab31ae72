"""Erasure by crypto-shredding and legal holds, through ``labvault patients erase`` and
``patients hold``, on SQLite and PostgreSQL, with the real key file: after erasure the
ciphertext is still in the database but nothing opens it, no search finds the record, the
audit log has the erasure and verifies; a hold refuses erasure with its reason and changes
nothing; released, the record erases."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner, Result

from access_world import World, build_world
from labvault.appointments.models import Appointment, AppointmentStatus, SlotClaim
from labvault.cli import CliError
from labvault.cli import app as cli
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import audited_transaction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.patients.erasure import KeylessKeyring, LegalHoldError, erase_patient
from labvault.patients.holds import RecordNotFoundError, place_hold
from labvault.patients.models import (
    ENCRYPTED_FIELDS,
    ErasureRequester,
    LegalHold,
    LegalHoldReason,
    Patient,
)
from labvault.patients.schemas import PatientInput
from labvault.patients.services import SUBJECT_TYPE, PatientRepository, SealedItem
from labvault.results.models import ReportStatus, ResultReport, ResultShare
from results_portal_world import make_report

runner = CliRunner()
ORG = ["--organization", "Labo Alpha"]
SYSTEM = SystemPrincipal("test:erasure")


@pytest.fixture
def world(cli_env: Settings, runtime: Runtime) -> World:
    return build_world(runtime)


def _patient(world: World) -> tuple[uuid.UUID, PatientInput]:
    """A record with a booked appointment (tomorrow) and every kind of blind index."""
    for name in ("tomorrow", "in_20_days", "today", "in_45_days"):
        person = world.inputs[name]
        if person.nir and person.email and person.phone:
            return world.patients[name], person
    raise AssertionError("the world has no patient with NIR, email and phone")


def _raw(world: World, patient_id: uuid.UUID) -> dict[str, Any]:
    with world.sessions() as session:
        row = session.get(Patient, patient_id)
        assert row is not None
        return {c.key: getattr(row, c.key) for c in Patient.__table__.columns}


def _count(world: World, model: type[object], *where: object) -> int:
    with world.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]


def _events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    with runtime.audit_sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def _find_args(person: PatientInput) -> list[list[str]]:
    assert person.nir
    assert person.email
    assert person.phone
    return [
        ["--nir", person.nir.compact],
        ["--email", person.email],
        ["--phone", person.phone],
        [
            "--name", person.birth_name, "--first-name", person.first_given_name,
            "--birth-date", person.birth_date.isoformat(),
        ],
    ]  # fmt: skip


def _refusal(result: Result) -> str:
    """What the operator sees of a refused command: exit status 2 with a clear message
    (``CliError`` is printed by ``labvault.cli.main``, which the runner bypasses)."""
    assert result.exit_code != 0, result.output
    if isinstance(result.exception, CliError):
        return str(result.exception)
    assert result.exit_code == 2, result.output
    return result.output


def _snapshot(world: World) -> dict[str, object]:
    """Everything an erasure would change, to show that a refused one changed nothing."""
    with world.sessions() as session:
        return {
            "patients": session.execute(
                select(Patient.id, Patient.data_key_id, Patient.nir_index, Patient.name_index)
                .where(Patient.erased_at.is_(None))
                .order_by(Patient.id)
            ).all(),
            "data_keys": session.scalar(select(func.count()).select_from(DataKeyRecord)),
            "appointments": session.execute(
                select(Appointment.id, Appointment.status, Appointment.anonymised_at).order_by(
                    Appointment.id
                )
            ).all(),
            "claims": session.scalar(select(func.count()).select_from(SlotClaim)),
        }


def _claim_a_slot(world: World, patient_id: uuid.UUID) -> uuid.UUID:
    with transaction(world.sessions) as session:
        appointment = session.scalars(
            select(Appointment).where(Appointment.patient_id == patient_id)
        ).one()
        session.add(
            SlotClaim(
                tenant_id=world.tenant,
                site_id=appointment.site_id,
                starts_at=appointment.starts_at,
                box=0,
                appointment_id=appointment.id,
            )
        )
        return appointment.id


def test_erasure_destroys_the_key_keeps_the_ciphertext_and_hides_the_record(
    world: World, runtime: Runtime
) -> None:
    patient_id, person = _patient(world)
    appointment_id = _claim_a_slot(world, patient_id)
    for args in _find_args(person):
        found = runner.invoke(cli, ["patients", "find", *args, *ORG])
        assert found.exit_code == 0, (args, found.output)
    before = _raw(world, patient_id)
    assert _count(world, DataKeyRecord, DataKeyRecord.subject_id == patient_id) == 1

    erased = runner.invoke(cli, ["patients", "erase", str(patient_id), "--yes", *ORG])
    assert erased.exit_code == 0, erased.output
    assert f"Patient record {patient_id} erased" in erased.output
    assert "1 appointment(s) cancelled, 1 slot claim(s) released" in erased.output
    assert person.birth_name not in erased.output

    # The ciphertext is still there, byte for byte; the key is not.
    after = _raw(world, patient_id)
    for column in ENCRYPTED_FIELDS:
        assert after[column] == before[column], column
    for column in ("birth_name", "first_names", "birth_date", "sex"):
        assert after[column], column
    assert _count(world, DataKeyRecord, DataKeyRecord.subject_id == patient_id) == 0
    assert after["data_key_id"] is None
    assert after["nir_index"] is after["email_index"] is after["phone_index"] is None
    assert after["name_index"] != before["name_index"]
    assert after["erased_at"] is not None
    assert after["erasure_requested_by"] == "cli"
    assert after["erased_by_id"] == "system:cli:patients-erase"

    # Nothing in the system opens it: the repository answers "not found", a raw unwrap
    # attempt finds no key.
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, world.tenant, SYSTEM)
        repository = PatientRepository(session, keyring)
        assert repository.get(patient_id, purpose="test") is None
        assert repository.get_many([patient_id], purpose="test") == []
        assert not repository.exists(patient_id)
        item = SealedItem(patient_id, "patients", patient_id, {"birth_name": before["birth_name"]})
        assert repository.open_for(SUBJECT_TYPE, [item], purpose="test") == {}
        with pytest.raises(KeyProviderError, match="not found"):
            keyring.open_data_keys(SUBJECT_TYPE, [patient_id], "test")

    for args in _find_args(person):
        found = runner.invoke(cli, ["patients", "find", *args, *ORG])
        assert found.exit_code == 1, (args, found.output)
        assert "No matching patient." in found.output

    with world.sessions() as session:
        appointment = session.get_one(Appointment, appointment_id)
        assert appointment.status == AppointmentStatus.CANCELLED.value
        assert appointment.anonymised_at is not None
        assert appointment.exams is None
        assert appointment.home_address is None
    assert _count(world, SlotClaim, SlotClaim.appointment_id == appointment_id) == 0

    events = _events(runtime, AuditAction.PATIENT_RECORD_ERASE)
    assert [(e.target_id, e.outcome, e.purpose) for e in events] == [
        (patient_id, "success", "erasure:cli")
    ]
    verified = runner.invoke(cli, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output

    again = runner.invoke(cli, ["patients", "erase", str(patient_id), "--yes", *ORG])
    assert again.exit_code == 0, again.output
    assert "already erased" in again.output
    assert len(_events(runtime, AuditAction.PATIENT_RECORD_ERASE)) == 1
    history = runner.invoke(cli, ["patients", "history", str(patient_id), "--json", *ORG])
    assert history.exit_code == 0, history.output
    assert "patient:record:erase" in history.output


def test_a_legal_hold_refuses_erasure_until_released(world: World, runtime: Runtime) -> None:
    patient_id, person = _patient(world)
    _claim_a_slot(world, patient_id)
    placed = runner.invoke(
        cli,
        [
            "patients", "hold", "place", str(patient_id), "--reason", "lab-report-retention",
            "--until", "2036-11-30", *ORG,
        ],
    )  # fmt: skip
    assert placed.exit_code == 0, placed.output
    with world.sessions() as session:
        hold_id = session.scalars(select(LegalHold.id)).one()
    listed = runner.invoke(cli, ["patients", "holds", str(patient_id), *ORG])
    assert listed.exit_code == 0, listed.output
    assert f"{hold_id}  active" in listed.output

    before = _snapshot(world)
    refused = runner.invoke(cli, ["patients", "erase", str(patient_id), "--yes", *ORG])
    assert refused.exit_code == 1, refused.output
    assert "lab-report-retention" in refused.output
    assert "2036-11-30" in refused.output
    assert person.nir is not None
    assert person.email is not None
    for value in (person.birth_name, person.email, person.nir.compact):
        assert value not in refused.output
    assert _snapshot(world) == before, "a refused erasure changes nothing"
    denied = _events(runtime, AuditAction.PATIENT_RECORD_ERASE)
    assert [(e.target_id, e.outcome) for e in denied] == [(patient_id, "denied")]
    assert len(_events(runtime, AuditAction.PATIENT_LEGAL_HOLD_PLACE)) == 1

    released = runner.invoke(cli, ["patients", "hold", "release", str(hold_id), *ORG])
    assert released.exit_code == 0, released.output
    assert "released" in released.output
    again = runner.invoke(cli, ["patients", "hold", "release", str(hold_id), *ORG])
    assert "already released" in again.output
    assert len(_events(runtime, AuditAction.PATIENT_LEGAL_HOLD_RELEASE)) == 1

    erased = runner.invoke(cli, ["patients", "erase", str(patient_id), "--yes", *ORG])
    assert erased.exit_code == 0, erased.output
    assert _count(world, DataKeyRecord, DataKeyRecord.subject_id == patient_id) == 0
    assert _count(world, LegalHold) == 1, "the hold's record stays, as the audit trail does"
    verified = runner.invoke(cli, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output


def test_a_hold_past_its_last_day_no_longer_blocks(world: World, runtime: Runtime) -> None:
    patient_id, _ = _patient(world)
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    with transaction(world.sessions) as session:
        keyring = KeylessKeyring(session, world.tenant, SYSTEM)
        place_hold(
            session, keyring, patient_id, LegalHoldReason.LITIGATION, dt.date(2026, 12, 1), now=now
        )
    with audited_transaction(world.sessions) as session:
        keyring = KeylessKeyring(session, world.tenant, SYSTEM)
        with pytest.raises(LegalHoldError, match=r"litigation, until 2026-12-01"):
            erase_patient(session, keyring, patient_id, ErasureRequester.STAFF, now=now)
    later = now + dt.timedelta(days=2)
    with transaction(world.sessions) as session:
        keyring = KeylessKeyring(session, world.tenant, SYSTEM)
        report = erase_patient(session, keyring, patient_id, ErasureRequester.STAFF, now=later)
    assert not report.already_erased
    assert _raw(world, patient_id)["erasure_requested_by"] == "staff"


def test_unknown_erased_and_foreign_records_get_one_answer(world: World) -> None:
    patient_id, _ = _patient(world)
    with transaction(world.sessions) as session:
        keyring = KeylessKeyring(session, world.tenant, SYSTEM)
        erase_patient(session, keyring, patient_id, ErasureRequester.CLI)
    answers = set()
    for target in (uuid.uuid4(), world.foreign_patient):
        result = runner.invoke(cli, ["patients", "erase", str(target), "--yes", *ORG])
        answers.add(_refusal(result))
    for target in (uuid.uuid4(), world.foreign_patient, patient_id):
        result = runner.invoke(
            cli, ["patients", "hold", "place", str(target), "--reason", "litigation", *ORG]
        )
        assert "no patient record with this id" in _refusal(result)
    assert len(answers) == 1
    assert _count(world, LegalHold) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reason", "because"], "Invalid value for '--reason'"),
        (["--reason", "litigation", "--until", "1/2/2030"], "YYYY-MM-DD"),
        (["--reason", "litigation", "--until", "2001-01-01"], "in the past"),
    ],
    ids=["unknown-reason", "bad-date", "past-date"],
)
def test_a_bad_hold_is_refused_clearly(world: World, args: list[str], message: str) -> None:
    patient_id, _ = _patient(world)
    result = runner.invoke(cli, ["patients", "hold", "place", str(patient_id), *args, *ORG])
    assert message in _refusal(result)
    assert _count(world, LegalHold) == 0


def test_erase_asks_for_confirmation(world: World) -> None:
    patient_id, _ = _patient(world)
    declined = runner.invoke(cli, ["patients", "erase", str(patient_id), *ORG], input="n\n")
    assert declined.exit_code == 1
    assert _count(world, DataKeyRecord, DataKeyRecord.subject_id == patient_id) == 1
    confirmed = runner.invoke(cli, ["patients", "erase", str(patient_id), *ORG], input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert _count(world, DataKeyRecord, DataKeyRecord.subject_id == patient_id) == 0


def test_only_a_system_job_erases(world: World, runtime: Runtime) -> None:
    from labvault.core.access.principals import Principal, PrincipalKind
    from labvault.patients.scope import AccessDeniedError, staff_scope

    patient_id, _ = _patient(world)
    principal = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="receptionist")
    with transaction(world.sessions) as session:
        keyring = KeylessKeyring(session, world.tenant, principal)
        with pytest.raises(AccessDeniedError):
            erase_patient(session, keyring, patient_id, ErasureRequester.STAFF)
        scope = staff_scope(session, principal, world.tenant, world.staff["receptionist"])
        repository = PatientRepository(session, keyring, scope)
        with pytest.raises(AccessDeniedError):
            repository.shred(patient_id, requested_by="staff", now=dt.datetime.now(dt.UTC))
    with transaction(world.sessions) as session:
        keyring = KeylessKeyring(session, world.tenant, SYSTEM)
        with pytest.raises(RecordNotFoundError):
            erase_patient(session, keyring, world.foreign_patient, ErasureRequester.CLI)
    assert _count(world, DataKeyRecord, DataKeyRecord.subject_id == patient_id) == 1


def test_erasure_stops_the_links_shared_with_doctors(world: World, runtime: Runtime) -> None:
    """A report shared with a doctor is unreadable after erasure; its link must not even
    lead to an unreadable page: the share rows go with the record."""
    patient_id, _ = _patient(world)
    report_id = make_report(
        runtime,
        world.sessions,
        world.tenant,
        patient_id,
        site_id=None,
        status=ReportStatus.TO_VALIDATE,
    )
    with transaction(world.sessions) as session:
        session.add(
            ResultShare(
                tenant_id=world.tenant,
                patient_id=patient_id,
                report_id=report_id,
                token_digest=hashlib.sha256(b"a link").digest(),
                recipient=b"sealed",
                created_by_account_id=uuid.uuid4(),
                expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=7),
            )
        )
    erased = runner.invoke(cli, ["patients", "erase", str(patient_id), "--yes", *ORG])
    assert erased.exit_code == 0, erased.output
    assert _count(world, ResultShare, ResultShare.patient_id == patient_id) == 0
    assert _count(world, ResultReport, ResultReport.id == report_id) == 1, "ciphertext stays"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_erasure_deletes_the_reports_waiting_in_the_drop_directory(
    world: World, runtime: Runtime, tmp_path: Path, backend: str
) -> None:
    """The prescribers' drop files are plaintext: the erased patient's go, others stay."""
    patient_id, _ = _patient(world)
    other_id = next(p for p in world.patients.values() if p != patient_id)
    theirs, others = (
        make_report(runtime, world.sessions, world.tenant, patient, site_id=None)
        for patient in (patient_id, other_id)
    )
    drop = tmp_path / "outbox"
    drop.mkdir()
    files = [drop / f"{theirs}-v1.fhir.json", drop / f"{theirs}-v2.fhir.json"]
    kept = [drop / f"{others}-v1.fhir.json", drop / "README.txt"]
    for path in (*files, *kept):
        path.write_text("{}")
    with transaction(world.sessions) as session:
        keyring = KeylessKeyring(session, world.tenant, SYSTEM)
        report = erase_patient(session, keyring, patient_id, ErasureRequester.CLI, drop_dir=drop)
    assert report.drop_files_deleted == 2
    assert not any(path.exists() for path in files)
    assert all(path.exists() for path in kept)
    with transaction(world.sessions) as session:  # again, and without a directory: no error
        keyring = KeylessKeyring(session, world.tenant, SYSTEM)
        erase_patient(session, keyring, other_id, ErasureRequester.CLI, drop_dir=tmp_path / "x")
