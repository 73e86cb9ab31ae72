"""Bad input gets a precise reason and writes nothing (I6); a failing batch writes nothing."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from helpers import write_csv
from labvault.cli import app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.importer import CsvFileError, import_patients
from labvault.patients.ins import InsOid
from labvault.patients.models import Patient
from labvault.patients.synthetic import synthetic_patient_rows

runner = CliRunner()


def _keyring(
    runtime: Runtime, tenant: uuid.UUID, provider: KeyProvider | None = None
) -> Callable[[Session], TenantKeyring]:
    principal = SystemPrincipal("test:import")
    return lambda session: TenantKeyring(
        session, provider or runtime.key_provider, tenant, principal
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
        (b"birth_name,first_names,birth_date,sex,shoe_size\n", "unknown column(s): shoe_size"),
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
        import_patients(
            path, sessions=runtime.sessions, open_keyring=_keyring(runtime, tenant),
        )  # fmt: skip
    assert message in str(caught.value)
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
    report = import_patients(
        path, sessions=runtime.sessions, open_keyring=_keyring(runtime, tenant),
    )  # fmt: skip
    assert (report.rows, report.created, report.rejected_rows) == (4, 2, 2)
    assert [(p.row, p.field) for p in report.problems] == [(3, "row"), (4, "row")]
    assert "has 3 fields, the header has 4" in report.problems[0].reason


class _FailingOnSecondBatch:
    """The real provider, failing on its second bulk wrap: simulates a crash mid-import."""

    def __init__(self, inner: KeyProvider) -> None:
        self._inner = inner
        self.calls = 0
        self.name = inner.name

    def wrap(self, material: Secret[bytes], context: str) -> bytes:
        return self._inner.wrap(material, context)

    def unwrap(self, wrapped: bytes, context: str) -> Secret[bytes]:
        return self._inner.unwrap(wrapped, context)

    def wrap_many(self, items: list[tuple[Secret[bytes], str]]) -> list[bytes]:
        self.calls += 1
        if self.calls == 2:
            raise KeyProviderError("provider unavailable")
        return self._inner.wrap_many(items)

    def unwrap_many(self, items: list[tuple[bytes, str]]) -> list[Secret[bytes]]:
        return self._inner.unwrap_many(items)


def test_a_failing_batch_writes_nothing_and_a_rerun_completes(
    runtime: Runtime, tmp_path: Path
) -> None:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
    source = write_csv(tmp_path / "p.csv", synthetic_patient_rows(25, seed=8))
    failing = _FailingOnSecondBatch(runtime.key_provider)
    with pytest.raises(KeyProviderError):
        import_patients(
            source, sessions=runtime.sessions, open_keyring=_keyring(runtime, tenant, failing),
            ins_oid=InsOid.TEST,
            batch_size=10,
        )  # fmt: skip
    assert _counts(runtime) == (10, 10)  # the first batch only; no orphan key, no half patient
    report = import_patients(
        source, sessions=runtime.sessions, open_keyring=_keyring(runtime, tenant), batch_size=10,
    )  # fmt: skip
    assert (report.created, report.existing) == (15, 10)
    assert _counts(runtime) == (25, 25)
