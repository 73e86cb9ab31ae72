"""Bad input gets a precise reason and writes nothing (I6); a failing batch writes nothing."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from helpers import write_csv
from labvault.cli import app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.importer import CsvFileError, ImportReport, import_patients
from labvault.patients.ins import InsOid
from labvault.patients.models import Patient
from labvault.patients.nir import Nir
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows

runner = CliRunner()


def _keyring(runtime: Runtime, tenant: uuid.UUID) -> Callable[[Session], TenantKeyring]:
    principal = SystemPrincipal("test:import")
    return lambda session: TenantKeyring(session, runtime.key_provider, tenant, principal)


def _import(runtime: Runtime, tenant: uuid.UUID, source: Path, **options: Any) -> ImportReport:
    with transaction(runtime.sessions) as session:
        sealer = runtime.sealer_spec(session, tenant)
    return import_patients(
        source,
        sessions=runtime.sessions,
        open_keyring=_keyring(runtime, tenant),
        sealer=sealer,
        ins_oid=InsOid.TEST,
        **options,
    )


def _counts(runtime: Runtime) -> tuple[int, int]:
    with transaction(runtime.sessions) as session:
        return (
            session.scalar(select(func.count()).select_from(Patient)) or 0,
            session.scalar(select(func.count()).select_from(DataKeyRecord)) or 0,
        )


def test_invalid_rows_are_reported_with_row_and_reason_and_valid_ones_imported(
    cli_env: object, runtime: Runtime, tmp_path: Path
) -> None:
    rows = list(synthetic_patient_rows(6, seed=21))
    bad = [
        dict(rows[1], nir=rows[1]["nir"].replace(" ", "")[:-2] + "00"),
        dict(rows[2], birth_date="31/12/1980"),
        dict(rows[3], sex="X", email="not-an-email"),
        dict(rows[4], birth_name=""),
    ]
    source = write_csv(tmp_path / "mixed.csv", [rows[0], *bad, rows[5]])
    assert runner.invoke(app, ["init", "--organization", "Labo"]).exit_code == 0
    result = runner.invoke(app, ["import", "patients", str(source), "--oid", "test"])
    assert result.exit_code == 1
    assert "6 rows: 2 imported, 0 already present, 4 rejected" in result.output
    with (tmp_path / "mixed.csv.rejects.csv").open(encoding="utf-8") as handle:
        rejects = list(csv.DictReader(handle))
    reasons = {(int(r["row"]), r["field"]): r["reason"] for r in rejects}
    assert "control key" in reasons[(3, "nir")]
    assert "YYYY-MM-DD" in reasons[(4, "birth_date")]
    assert (5, "sex") in reasons
    assert "email" in reasons[(5, "email")]
    assert (6, "birth_name") in reasons
    # The reject file is safe at rest: no value from the file is in it.
    text = (tmp_path / "mixed.csv.rejects.csv").read_text(encoding="utf-8")
    for row in bad:
        for value in row.values():
            if len(value) >= 5:
                assert value not in text
    assert _counts(runtime) == (2, 2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"birth_name,first_names,sex\nA,B,M\n", "missing required column(s): birth_date"),
        (
            b"birth_name,first_names,birth_date,sex,shoe_size\n",
            "unknown column(s) at position(s) 5; the first line must be the header row",
        ),
        (b"birth_name,first_names,birth_date,sex,sex\n", "duplicated column(s): sex"),
        (
            "birth_name;first_names;birth_date;sex\nDupont;Zoé;1990-01-01;F\n".encode("latin-1"),
            "not UTF-8",
        ),
    ],
)
def test_file_level_errors_import_nothing(
    runtime: Runtime, tmp_path: Path, content: bytes, message: str
) -> None:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(CsvFileError) as caught:
        _import(runtime, tenant, path)
    assert message in str(caught.value)
    assert _counts(runtime) == (0, 0)


def test_a_file_without_header_row_is_refused_without_echoing_its_first_row(
    cli_env: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    # The first line is a patient, not a header: its values must not reach the error (I5).
    values = {
        "birth_name": "Dupont-Quérel",
        "first_names": "Zoé Margaux",
        "birth_date": "1995-10-01",
        "sex": "F",
        "nir": "2 95 10 99 126 111 93",
        "email": "zoe.quere@example.org",
    }
    source = tmp_path / "no_header.csv"
    source.write_text(",".join(values.values()) + "\n", encoding="utf-8")
    assert runner.invoke(app, ["init", "--organization", "Labo"]).exit_code == 0
    result = subprocess.run(
        [sys.executable, "-m", "labvault.cli", "import", "patients", str(source), "--oid", "test"],
        env={**os.environ, "COLUMNS": "1000"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    # Whitespace-normalised, so that no value can hide behind a line wrap.
    error = " ".join(result.stderr.split())
    assert "unknown column(s) at position(s) 1, 2, 3, 4, 5, 6" in error
    assert "the first line must be the header row" in error
    assert "birth_name, used_name, first_names" in error  # the expected names are listed
    # Lower-cased: header names are compared lower-cased, so a leak would be too.
    output = " ".join((result.stdout + result.stderr).split()).lower()
    nir = values["nir"]
    pieces = [*values.values(), nir.replace(" ", ""), *nir.split()[1:], "quérel", "margaux"]
    for piece in (*pieces, "zoe.quere", "example.org"):
        if len(piece) >= 3:
            assert piece.lower() not in output, piece
    assert _counts(runtime) == (0, 0)


@pytest.mark.parametrize(
    "bad_line",
    ['"Durand,Paul,1980-01-01,M', 'Durand,"Paul"x,1980-01-01,M'],
    ids=["unclosed-quote", "stray-character-after-quote"],
)
def test_malformed_csv_anywhere_refuses_the_whole_file(
    runtime: Runtime, tmp_path: Path, bad_line: str
) -> None:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
    path = tmp_path / "quotes.csv"
    path.write_text(
        "birth_name,first_names,birth_date,sex\n"
        "Martin,Léa,1990-02-03,F\n"
        f"{bad_line}\n"
        "Roux,Jules,1999-09-09,M\n",
        encoding="utf-8",
    )
    # Before the pre-pass, an unclosed quote swallowed the rest of the file into one field:
    # "1 rows: 0 imported, 1 rejected". The second of three data rows is row 3 (header: 1).
    with pytest.raises(CsvFileError) as caught:
        _import(runtime, tenant, path)
    message = str(caught.value)
    assert "row 3: malformed CSV (unbalanced quotes or stray characters)" in message
    assert "nothing was imported" in message
    for value in ("Martin", "Léa", "Durand", "Paul", "Roux", "Jules", "1990-02-03"):
        assert value not in message
    assert _counts(runtime) == (0, 0)


def test_rows_with_wrong_field_count_or_bad_quotes_are_rejected(
    runtime: Runtime, tmp_path: Path
) -> None:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
    path = tmp_path / "ragged.csv"
    path.write_text(
        "birth_name,first_names,birth_date,sex\n"
        "Martin,Léa,1990-02-03,F\n"
        "Durand,Paul,1980-01-01\n"
        "Petit,Anne,1970-05-06,F,extra\n"
        "Roux,Jules,1999-09-09,M\n",
        encoding="utf-8",
    )
    report = _import(runtime, tenant, path)
    assert (report.rows, report.created, report.rejected_rows) == (4, 2, 2)
    assert [(p.row, p.field) for p in report.problems] == [(3, "row"), (4, "row")]
    assert "has 3 fields, the header has 4" in report.problems[0].reason


def test_a_failing_batch_writes_nothing_and_a_rerun_completes(
    runtime: Runtime, tmp_path: Path
) -> None:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
    source = write_csv(tmp_path / "p.csv", synthetic_patient_rows(25, seed=8))
    inserts = 0

    def crash_on_second_patients_insert(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        nonlocal inserts
        if statement.lstrip().upper().startswith("INSERT INTO PATIENTS"):
            inserts += 1
            if inserts == 2:  # after this batch's data keys were inserted
                raise RuntimeError("simulated crash")

    event.listen(runtime.engine, "before_cursor_execute", crash_on_second_patients_insert)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            _import(runtime, tenant, source, batch_size=10)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", crash_on_second_patients_insert)
    assert _counts(runtime) == (10, 10)  # the first batch only; no orphan key, no half patient
    report = _import(runtime, tenant, source, batch_size=10)
    assert (report.created, report.existing) == (15, 10)
    assert _counts(runtime) == (25, 25)


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_processes_give_the_same_result(
    runtime: Runtime, tmp_path: Path, workers: int
) -> None:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
    rows = list(synthetic_patient_rows(1300, seed=31))
    rows[700] = dict(rows[700], birth_date="1990-02-30")
    source = write_csv(tmp_path / "p.csv", rows)
    report = _import(runtime, tenant, source, workers=workers, batch_size=400)
    assert (report.rows, report.created, report.rejected_rows) == (1300, 1299, 1)
    assert [(p.row, p.field) for p in report.problems] == [(702, "birth_date")]
    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("test:read"))
        repository = PatientRepository(session, keyring)
        for row in (rows[0], rows[699], rows[1299]):
            (found,) = repository.find_by_nir(Nir.parse(row["nir"]), purpose="test")
            assert found.birth_name == row["birth_name"]
            assert found.city == row["city"]


def test_a_missing_key_file_stops_the_import_before_anything_is_written(
    runtime: Runtime, tmp_path: Path
) -> None:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
    source = write_csv(tmp_path / "p.csv", synthetic_patient_rows(30, seed=2))
    with transaction(runtime.sessions) as session:
        spec = runtime.sealer_spec(session, tenant)
        spec = dataclasses.replace(
            spec,
            key_provider=dataclasses.replace(spec.key_provider, spec=f"file:{tmp_path}/no.key"),
        )
    with pytest.raises(KeyProviderError, match="labvault init"):
        import_patients(
            source, sessions=runtime.sessions, open_keyring=_keyring(runtime, tenant),
            sealer=spec, workers=2,
        )  # fmt: skip
    assert _counts(runtime) == (0, 0)
