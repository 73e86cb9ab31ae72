"""The command line, run as an operator would: exit codes, messages, files it creates."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from helpers import leaked, sqlite_files
from labvault.accounts.models import Account
from labvault.cli import app
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.demo import DEMO_ORGANIZATION
from labvault.organizations.models import Site
from labvault.organizations.services import get_organization
from labvault.patients.models import Patient
from labvault.patients.scope import staff_scope
from labvault.patients.services import PatientRepository
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository

runner = CliRunner()


def _labvault(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point in a child process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "labvault.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_init_creates_a_private_key_file_and_is_idempotent(tmp_path: Path) -> None:
    env = {"LABVAULT_DATA_DIR": str(tmp_path / "var")}
    first = _labvault(env, "init", "--organization", "Labo Alpha")
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "var" / "keys" / "root.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    before = key_file.read_bytes()
    second = _labvault(env, "init", "--organization", "Labo Alpha")
    assert second.returncode == 0, second.stderr
    assert "already exists" in second.stdout
    assert key_file.read_bytes() == before


def test_a_key_file_readable_by_others_stops_every_command(tmp_path: Path) -> None:
    env = {"LABVAULT_DATA_DIR": str(tmp_path / "var")}
    assert _labvault(env, "init", "--organization", "Labo").returncode == 0
    key_file = tmp_path / "var" / "keys" / "root.key"
    material = key_file.read_text()
    key_file.chmod(0o644)
    result = _labvault(env, "patients", "find", "--email", "a@example.org")
    assert result.returncode == 2
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr
    for line in material.splitlines():
        if '"material"' in line:
            assert line.split('"')[3] not in result.stderr + result.stdout


def test_bad_configuration_is_reported_clearly(tmp_path: Path) -> None:
    result = _labvault(
        {"LABVAULT_DATA_DIR": str(tmp_path), "LABVAULT_DATABASE_URL": "mysql://root@localhost/x"},
        "db",
        "upgrade",
    )
    assert result.returncode == 2
    assert "LABVAULT_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_commands_refuse_an_outdated_schema(tmp_path: Path) -> None:
    env = {"LABVAULT_DATA_DIR": str(tmp_path / "var")}
    result = _labvault(env, "seed", "--patients", "1")
    assert result.returncode == 2
    assert "labvault db upgrade" in result.stderr


def test_demo_seeds_an_encrypted_organization(cli_env: Settings, runtime: Runtime) -> None:
    result = runner.invoke(app, ["demo", "--no-serve", "--patients", "30"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["demo", "--no-serve", "--patients", "30"])
    assert again.exit_code == 0, again.output
    assert "is ready" in again.output
    with transaction(runtime.sessions) as session:
        organization = get_organization(session, DEMO_ORGANIZATION)
        assert session.scalar(select(func.count()).select_from(Patient)) == 30
        assert session.scalar(select(func.count()).select_from(Site)) == 2
        keyring = TenantKeyring(
            session, runtime.key_provider, organization.id, SystemPrincipal("test:demo")
        )
        staff = StaffRepository(session, keyring).list(purpose="test")
    assert {member.role for member in staff} == set(StaffRole)
    assert "(24 booked this week)" in " ".join(result.output.split())
    with transaction(runtime.sessions) as session:
        linked = session.scalar(select(Account.patient_id).where(Account.kind == "patient"))
        desk = session.scalars(select(Account).where(Account.role == "receptionist")).one()
        assert linked is not None
        assert desk.staff_id is not None
        principal = Principal(PrincipalKind.STAFF, str(desk.id), role="receptionist")
        keyring = TenantKeyring(session, runtime.key_provider, organization.id, principal)
        scope = staff_scope(session, principal, organization.id, desk.staff_id)
        booked = PatientRepository(session, keyring, scope).get(linked, purpose="test")
        assert booked is not None, "the demo receptionist reaches the demo patient's record"
    if cli_env.is_sqlite:
        runtime.engine.dispose()
        values = {m.last_name for m in staff if len(m.last_name) >= 5} | {m.email for m in staff}
        for path in sqlite_files(cli_env.sqlalchemy_url):
            assert leaked(path.read_bytes(), values) == []


def test_seed_adds_synthetic_patients(cli_env: Settings, runtime: Runtime) -> None:
    assert runner.invoke(app, ["init", "--organization", "Labo"]).exit_code == 0
    result = runner.invoke(app, ["seed", "--patients", "40", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "Added 40 synthetic patients" in result.output
    with transaction(runtime.sessions) as session:
        oids = set(session.scalars(select(Patient.ins_oid)))
    assert oids == {"1.2.250.1.213.1.4.10"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["patients", "find"], "exactly one of"),
        (["patients", "find", "--nir", "1 23", "--email", "a@b.fr"], "exactly one of"),
        (["patients", "find", "--nir", "295109912611199"], "--nir: "),
        (["patients", "find", "--name", "Dupont"], "--first-name and --birth-date"),
        (
            ["patients", "find", "--name", "Dupont", "--first-name", "A", "--birth-date", "1/2/3"],
            "YYYY-MM-DD",
        ),
        (["import", "patients", "{csv}", "--oid", "fake"], "--oid must be"),
        (["patients", "find", "--phone", "abc"], "--phone is not"),
        (["patients", "find", "--email", "not an email"], "--email is not"),
        (
            ["patients", "find", "--name", "D", "--first-name", "A", "--birth-date", "19800101"],
            "YYYY-MM-DD",
        ),
        (["init", "--organization", "   "], "organization name is 1 to 200 characters"),
    ],
)
def test_bad_options_get_a_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    env = {"LABVAULT_DATA_DIR": str(tmp_path / "var")}
    assert _labvault(env, "init", "--organization", "Labo").returncode == 0
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("birth_name,first_names,birth_date,sex\n", encoding="utf-8")
    result = _labvault(env, *[a.replace("{csv}", str(csv_file)) for a in args])
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "295109912611199" not in result.stderr


def test_organization_names_are_matched_as_they_are_stored(tmp_path: Path) -> None:
    env = {"LABVAULT_DATA_DIR": str(tmp_path / "var")}
    assert _labvault(env, "init", "--organization", "Labo  du   Lac").returncode == 0
    again = _labvault(env, "init", "--organization", " Labo du Lac ")
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout


def test_init_refuses_a_new_key_over_data_wrapped_under_the_old_one(tmp_path: Path) -> None:
    env = {"LABVAULT_DATA_DIR": str(tmp_path / "var")}
    assert _labvault(env, "init", "--organization", "Labo").returncode == 0
    key_file = tmp_path / "var" / "keys" / "root.key"
    key_file.rename(tmp_path / "elsewhere.key")
    for command in (["init"], ["demo", "--no-serve", "--patients", "0"]):
        result = _labvault(env, *command)
        assert result.returncode == 2, result.stdout
        assert "restore the key file" in result.stderr
        assert not key_file.exists()
    moved = {**env, "LABVAULT_KEY_PROVIDER": f"file:{tmp_path / 'elsewhere.key'}"}
    assert _labvault(moved, "init").returncode == 0
