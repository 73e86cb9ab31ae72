"""I3: every read of personal data is recorded in the same transaction, or does not happen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from helpers import leaked, sensitive_values, write_csv
from labvault.appointments.models import Appointment
from labvault.cli import app
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext, AuditUnavailableError, ClientAddressHasher
from labvault.core.audit.models import AuditEvent
from labvault.core.audit.search import search_events
from labvault.core.audit.verify import verify_log
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, get_organization
from labvault.patients.history import access_history, actor_reference
from labvault.patients.models import Patient
from labvault.patients.scope import staff_scope
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository

ORGANIZATION = "Laboratoire Audit"
runner = CliRunner()


@pytest.fixture
def imported(cli_env: Settings, tmp_path: Path) -> list[dict[str, str]]:
    rows = list(synthetic_patient_rows(40, seed=7))
    assert runner.invoke(app, ["init", "--organization", ORGANIZATION]).exit_code == 0
    source = write_csv(tmp_path / "patients.csv", rows)
    result = runner.invoke(app, ["import", "patients", str(source), "--oid", "test"])
    assert result.exit_code == 0, result.output
    return rows


def _events(session: Session, action: AuditAction) -> list[AuditEvent]:
    return list(
        session.scalars(
            select(AuditEvent).where(AuditEvent.action == action.value).order_by(AuditEvent.seq)
        )
    )


def _keyring(runtime: Runtime, session: Session, principal: Principal) -> TenantKeyring:
    tenant = get_organization(session, ORGANIZATION)
    return TenantKeyring(session, runtime.key_provider, tenant.id, principal)


def test_an_import_records_one_creation_per_patient_and_seals_it(
    imported: list[dict[str, str]], runtime: Runtime, tmp_path: Path
) -> None:
    with runtime.sessions() as session:
        created = _events(session, AuditAction.PATIENT_RECORD_CREATE)
        patient_ids = set(session.scalars(select(Patient.id)))
    assert {e.target_id for e in created} == patient_ids
    assert len(created) == len(imported)
    assert {e.actor_id for e in created} == {"system:cli:import-patients"}
    assert len({e.request_id for e in created}) == 1
    assert all(e.seq is not None and e.seal is not None for e in created)

    again = runner.invoke(
        app, ["import", "patients", str(tmp_path / "patients.csv"), "--oid", "test"]
    )
    assert again.exit_code == 0, again.output
    with runtime.sessions() as session:
        assert len(_events(session, AuditAction.PATIENT_RECORD_CREATE)) == len(imported)


def test_patients_find_records_the_search_and_one_read_per_patient(
    imported: list[dict[str, str]], runtime: Runtime
) -> None:
    nir = next(row["nir"] for row in imported if row["nir"])
    result = runner.invoke(app, ["patients", "find", "--nir", nir])
    assert result.exit_code == 0, result.output
    with runtime.sessions() as session:
        searches = _events(session, AuditAction.PATIENT_SEARCH_NIR)
        reads = _events(session, AuditAction.PATIENT_RECORD_READ)
        (patient_id,) = session.scalars(select(Patient.id).where(Patient.id == reads[0].target_id))
        report = verify_log(
            session,
            runtime.audit_log.trusted_keys,
            runtime.audit_log.seal_keys(),
            runtime.audit_log.witness,
        )
    assert len(searches) == 1
    assert searches[0].target_id is None
    # One event per patient opened, not one per decrypted field.
    assert len(reads) == 1
    assert reads[0].target_type == "patient"
    assert reads[0].target_id == patient_id
    assert reads[0].actor_id == "system:cli:patients-find"
    assert reads[0].purpose == "cli:patients-find"
    assert reads[0].request_id == searches[0].request_id
    assert reads[0].seq is not None, "the command seals its events before it exits"
    assert report.ok, report.findings


def test_a_search_that_finds_nobody_is_recorded_too(imported: object, runtime: Runtime) -> None:
    result = runner.invoke(app, ["patients", "find", "--email", "personne@example.org"])
    assert result.exit_code == 1
    with runtime.sessions() as session:
        assert len(_events(session, AuditAction.PATIENT_SEARCH_EMAIL)) == 1
        assert _events(session, AuditAction.PATIENT_RECORD_READ) == []


def test_events_hold_no_personal_value(
    imported: list[dict[str, str]], runtime: Runtime, cli_env: Settings
) -> None:
    for row in imported[:10]:
        if row["email"]:
            runner.invoke(app, ["patients", "find", "--email", row["email"]])
        runner.invoke(
            app,
            [
                "patients", "find", "--name", row["birth_name"],
                "--first-name", row["first_names"].split()[0], "--birth-date", row["birth_date"],
            ],
        )  # fmt: skip
    with runtime.sessions() as session:
        dumped = "\n".join(
            _printable(row) for row in session.execute(text("SELECT * FROM audit_events"))
        )
        assert session.scalar(select(func.count()).select_from(AuditEvent)) > len(imported)
    witness = (cli_env.witness_dir / "checkpoints.jsonl").read_bytes()
    values = sensitive_values(imported)
    assert leaked(dumped.encode(), values) == []
    assert leaked(witness, values) == []


def test_the_event_commits_or_rolls_back_with_the_read(imported: object, runtime: Runtime) -> None:
    with runtime.sessions() as session:
        patient_id = session.scalars(select(Patient.id).limit(1)).one()

    def read_then_fail() -> None:
        with transaction(runtime.sessions) as session:
            keyring = _keyring(runtime, session, SystemPrincipal("t:a"))
            assert PatientRepository(session, keyring).get(patient_id, purpose="test")
            raise RuntimeError("the request failed after the read")

    with pytest.raises(RuntimeError):
        read_then_fail()
    with transaction(runtime.sessions) as session:
        repository = PatientRepository(session, _keyring(runtime, session, SystemPrincipal("t:b")))
        assert repository.get(patient_id, purpose="test") is not None
    with runtime.sessions() as session:
        actors = [e.actor_id for e in _events(session, AuditAction.PATIENT_RECORD_READ)]
    assert actors == ["system:t:b"]


def _break_the_audit_store(runtime: Runtime, backend: str) -> None:
    with runtime.admin_engine.begin() as connection:
        if backend == "sqlite":
            connection.execute(
                text(
                    "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events "
                    "BEGIN SELECT RAISE(ABORT, 'audit store unavailable'); END"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'audit store unavailable'; END $$"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events "
                    "FOR EACH ROW EXECUTE FUNCTION audit_down()"
                )
            )


def test_with_the_audit_store_failing_a_read_fails_and_shows_nothing(
    imported: list[dict[str, str]], runtime: Runtime, backend: str
) -> None:
    row = next(row for row in imported if row["nir"])
    with runtime.sessions() as session:
        patient_id = session.scalars(select(Patient.id).limit(1)).one()
    _break_the_audit_store(runtime, backend)

    result = subprocess.run(
        [sys.executable, "-m", "labvault.cli", "patients", "find", "--nir", row["nir"]],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: the audit log could not record this access")
    assert leaked((result.stdout + result.stderr).encode(), sensitive_values([row])) == []

    opened: list[object] = []

    def read() -> None:
        with transaction(runtime.sessions) as session:
            keyring = _keyring(runtime, session, SystemPrincipal("t:down"))
            opened.append(keyring.open_data_keys("patient", [patient_id], purpose="test"))

    with pytest.raises(AuditUnavailableError):
        read()
    assert opened == [], "no data key may come out when its read cannot be recorded"


def test_the_access_history_shows_role_and_site_never_the_staff_member(
    imported: object, runtime: Runtime
) -> None:
    with transaction(runtime.sessions) as session:
        tenant = get_organization(session, ORGANIZATION)
        site = add_site(
            session,
            tenant,
            name="Site Gambetta",
            address_line="1 place Gambetta",
            postal_code="33000",
            city="Bordeaux",
            opening_hours={},
            sampling_capacity_per_hour=10,
        )
        admin = _keyring(runtime, session, SystemPrincipal("t:admin"))
        staff_id = StaffRepository(session, admin).add(
            first_name="Apolline",
            last_name="Vasseur",
            email="apolline.vasseur@example.org",
            role=StaffRole.BIOLOGIST,
            site_ids=[site.id],
        )
        patient_id = session.scalars(select(Patient.id).limit(1)).one()
        site_id = site.id
    biologist = Principal(PrincipalKind.STAFF, str(staff_id), role="biologist", site_id=site_id)
    hasher = ClientAddressHasher.from_provider(runtime.key_provider)
    with transaction(runtime.sessions) as session:
        tenant = get_organization(session, ORGANIZATION)
        keyring = TenantKeyring(
            session,
            runtime.key_provider,
            tenant.id,
            biologist,
            context=AuditContext(request_id="a" * 32, client_hash=hasher("192.0.2.10")),
        )
        session.add(
            Appointment(
                tenant_id=tenant.id, patient_id=patient_id, site_id=site_id, starts_at=utcnow()
            )
        )
        scope = staff_scope(session, biologist, tenant.id, staff_id)
        assert PatientRepository(session, keyring, scope).get(patient_id, purpose="care")
    with transaction(runtime.sessions) as session:
        history = access_history(
            session, _keyring(runtime, session, SystemPrincipal("t:history")), patient_id
        )
        read_history = [
            e for e in search_events(session, patient=patient_id)
            if e["action"] == AuditAction.PATIENT_HISTORY_READ.value
        ]  # fmt: skip
    labels = [(entry.label, entry.role, entry.site, entry.purpose) for entry in history]
    assert ("Consultation de votre dossier", "Biologiste", "Site Gambetta", "care") in labels
    assert ("Création de votre dossier", None, None, "Enregistrement") in labels
    consult = next(entry for entry in history if entry.role == "Biologiste")
    assert consult.actor == "Professionnel du laboratoire"
    assert consult.actor_reference == actor_reference(str(staff_id))
    shown = repr(history)
    for secret in ("Apolline", "Vasseur", "apolline.vasseur", str(staff_id), "192.0.2.10"):
        assert secret not in shown
    assert len(read_history) == 1, "reading the history is itself recorded"
    assert hasher("192.0.2.10") == hasher(" 192.0.2.10 ") != hasher("192.0.2.11")
    assert "192.0.2.10" not in hasher("192.0.2.10")


def _printable(row: object) -> str:
    """A row as text, binary values in hex: random bytes shown as characters could spell a
    short name by chance."""
    values = tuple(value.hex() if isinstance(value, bytes) else value for value in row)  # type: ignore[attr-defined]
    return repr(values)
