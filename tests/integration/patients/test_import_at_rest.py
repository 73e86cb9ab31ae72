"""I1 end to end: imported patients are ciphertext at rest and come back intact."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from helpers import leaked, pg_dump, sensitive_values, sqlite_files, write_csv
from labvault.cli import app
from labvault.cli import console as cli_console
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import get_organization
from labvault.patients.models import Patient
from labvault.patients.nir import Nir
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows

ORGANIZATION = "Laboratoire Test"
runner = CliRunner()


def _repository(runtime: Runtime, session):  # type: ignore[no-untyped-def]
    tenant = get_organization(session, ORGANIZATION)
    keyring = TenantKeyring(
        session, runtime.key_provider, tenant.id, SystemPrincipal("test:verify")
    )
    return PatientRepository(session, keyring)


def _hold_the_wal(database_url: str) -> sqlite3.Connection:
    """A reader in an open read transaction: SQLite can neither checkpoint past its snapshot
    nor reset or delete the WAL, so what the import writes stays in the -wal file to be scanned
    (without it, the CLI's last connection checkpoints and deletes the WAL on closing).
    """
    connection = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
    connection.execute("BEGIN")
    connection.execute("SELECT count(*) FROM organizations").fetchone()
    return connection


def test_imported_patients_are_ciphertext_at_rest_and_read_back_intact(
    cli_env: Settings, runtime: Runtime, tmp_path: Path, backend: str
) -> None:
    rows = list(synthetic_patient_rows(300, seed=42))
    source = write_csv(tmp_path / "patients.csv", rows, delimiter=";")

    result = runner.invoke(app, ["init", "--organization", ORGANIZATION])
    assert result.exit_code == 0, result.output
    reader = _hold_the_wal(cli_env.sqlalchemy_url) if backend == "sqlite" else None
    try:
        result = runner.invoke(app, ["import", "patients", str(source), "--oid", "test"])
        assert result.exit_code == 0, result.output
        assert "300 imported" in result.output

        values = sensitive_values(rows)
        assert len(values) > 1000
        if backend == "sqlite":
            database = Path(make_url(cli_env.sqlalchemy_url).database or "")
            wal = Path(f"{database}-wal")
            # The open read transaction kept the import's pages in the WAL.
            assert wal.exists(), wal
            assert wal.stat().st_size > 0, wal
            files = sqlite_files(cli_env.sqlalchemy_url)
            names = [database.name, wal.name, f"{database.name}-shm"]
            assert [path.name for path in files] == names
            for path in files:
                assert leaked(path.read_bytes(), values) == [], path.name
        else:
            dump = pg_dump(cli_env.sqlalchemy_url)
            assert b"COPY public.patients" in dump
            assert leaked(dump, values) == []
    finally:
        if reader is not None:
            reader.close()

    with transaction(runtime.sessions) as session:
        repository = _repository(runtime, session)
        for row in rows:
            (found,) = repository.find_by_nir(Nir.parse(row["nir"]), purpose="test")
            assert found.birth_name == row["birth_name"]
            assert (found.used_name or "") == row["used_name"]
            assert found.first_names == row["first_names"]
            assert found.birth_date.isoformat() == row["birth_date"]
            assert found.sex.value == row["sex"]
            assert found.birth_place_code == row["birth_place_code"]
            assert found.ins_number == row["nir"].replace(" ", "")
            assert (found.email or "") == row["email"]
            if row["phone"]:
                assert found.phone == "+33" + row["phone"].replace(" ", "")[1:]
            assert found.address_line == row["address"]
            assert (found.postal_code, found.city) == (row["postal_code"], row["city"])
            if row["email"]:
                assert [
                    p.id for p in repository.find_by_email(row["email"].upper(), purpose="t")
                ] == [found.id]


def test_cli_find_prints_the_decrypted_patient(
    cli_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI's console read the terminal's width when it was created: wide enough for the
    # whole table whatever ran before in this process (a test worker has no terminal).
    monkeypatch.setattr(cli_console, "width", 300)
    rows = list(synthetic_patient_rows(5, seed=7))
    source = write_csv(tmp_path / "patients.csv", rows)
    assert runner.invoke(app, ["init", "--organization", ORGANIZATION]).exit_code == 0
    assert runner.invoke(app, ["import", "patients", str(source), "--oid", "test"]).exit_code == 0
    row = rows[3]
    nir = row["nir"].replace(" ", "")
    spaced = " ".join([nir[0], nir[1:3], nir[3:5], nir[5:7], nir[7:10], nir[10:13], nir[13:]])
    for query in (
        ["--nir", spaced],
        ["--nir", nir],
        [
            "--name",
            row["birth_name"].upper(),
            "--first-name",
            row["first_names"].split()[0].lower(),
            "--birth-date",
            row["birth_date"],
        ],
    ):
        result = runner.invoke(app, ["patients", "find", *query], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        assert row["birth_name"] in result.output
        assert spaced in result.output
    result = runner.invoke(app, ["patients", "find", "--nir", "295109912611193"])
    assert result.exit_code == 1
    assert "No matching patient" in result.output


def test_reimporting_the_same_file_creates_no_duplicate(
    cli_env: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    rows = list(synthetic_patient_rows(120, seed=3))
    without_nir = [dict(row, nir="") for row in rows[:20]]
    source = write_csv(tmp_path / "patients.csv", without_nir + rows[20:])
    assert runner.invoke(app, ["init", "--organization", ORGANIZATION]).exit_code == 0
    first = runner.invoke(
        app, ["import", "patients", str(source), "--oid", "test", "--batch-size", "50"]
    )
    assert first.exit_code == 0, first.output
    assert "120 imported" in first.output
    again = runner.invoke(app, ["import", "patients", str(source), "--oid", "test"])
    assert again.exit_code == 0, again.output
    assert "0 imported, 120 already present" in again.output
    # The same people, this time with their NIR: matched on name and birth date.
    enriched = write_csv(tmp_path / "with_nir.csv", rows[:20])
    third = runner.invoke(app, ["import", "patients", str(enriched), "--oid", "test"])
    assert "0 imported, 20 already present" in third.output
    with transaction(runtime.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == 120


def test_duplicates_within_one_file_are_created_once(
    cli_env: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    rows = list(synthetic_patient_rows(10, seed=5))
    respelled = dict(
        rows[0], birth_name=rows[0]["birth_name"].upper(), nir=rows[0]["nir"].replace(" ", "")
    )
    source = write_csv(tmp_path / "patients.csv", [*rows, respelled, rows[1]])
    assert runner.invoke(app, ["init", "--organization", ORGANIZATION]).exit_code == 0
    result = runner.invoke(app, ["import", "patients", str(source), "--oid", "test"])
    assert "10 imported, 2 already present" in result.output, result.output


def test_patient_record_repr_hides_personal_data(
    cli_env: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    rows = list(synthetic_patient_rows(1, seed=9))
    source = write_csv(tmp_path / "patients.csv", rows)
    assert runner.invoke(app, ["init", "--organization", ORGANIZATION]).exit_code == 0
    assert runner.invoke(app, ["import", "patients", str(source), "--oid", "test"]).exit_code == 0
    with transaction(runtime.sessions) as session:
        (found,) = _repository(runtime, session).find_by_nir(Nir.parse(rows[0]["nir"]), purpose="t")
    text = repr(found) + str(found) + f"{found}"
    for field in dataclasses.fields(found):
        value = getattr(found, field.name)
        if isinstance(value, str) and len(value) > 3:
            assert value not in text
