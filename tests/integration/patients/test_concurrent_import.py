"""Two writers registering the same people: the unique NIR index and one retry keep it clean."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from helpers import write_csv
from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import create_db_engine, transaction
from labvault.core.runtime import Runtime
from labvault.core.tenancy import bind_tenant
from labvault.organizations.services import create_organization
from labvault.patients.bulk import BatchConflictError, to_input
from labvault.patients.importer import ImportReport, import_patients
from labvault.patients.ins import InsOid
from labvault.patients.models import Patient
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows

pytestmark = pytest.mark.pg


@pytest.fixture
def backend() -> str:
    """Concurrent writers need a server: SQLite serialises writers by locking the file."""
    return "postgresql"


def _import(runtime: Runtime, tenant: uuid.UUID, source: Path) -> ImportReport:
    principal = SystemPrincipal("test:import")
    with transaction(runtime.sessions) as session:
        sealer = runtime.sealer_spec(session, tenant)
    return import_patients(
        source,
        sessions=runtime.sessions,
        open_keyring=lambda s: TenantKeyring(s, runtime.key_provider, tenant, principal),
        sealer=sealer,
        ins_oid=InsOid.TEST,
        batch_size=50,
    )


def _count(runtime: Runtime) -> int:
    with transaction(runtime.sessions) as session:
        return session.scalar(select(func.count()).select_from(Patient)) or 0


def _tenant(runtime: Runtime) -> uuid.UUID:
    with transaction(runtime.sessions) as session:
        return create_organization(session, runtime.key_provider, "Labo").id


def _register_elsewhere(runtime: Runtime, tenant: uuid.UUID, rows: list[dict[str, str]]) -> None:
    """Another writer, in its own connection and transaction, registers these people."""
    inputs = [to_input(n, row, InsOid.TEST) for n, row in enumerate(rows, start=2)]
    engine = create_db_engine(runtime.settings.sqlalchemy_url)  # not the importer's engine
    try:
        with Session(engine) as session, session.begin():
            bind_tenant(session, tenant)
            keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("t:o"))
            people = [person for person in inputs if not isinstance(person, list)]
            PatientRepository(session, keyring).register_many(people)
    finally:
        engine.dispose()


def test_a_batch_that_races_another_writer_is_retried_and_counts_them_as_present(
    runtime: Runtime, tmp_path: Path
) -> None:
    tenant = _tenant(runtime)
    rows = list(synthetic_patient_rows(120, seed=12))
    source = write_csv(tmp_path / "p.csv", rows)
    raced = False

    def other_writer_first(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        nonlocal raced
        if not raced and statement.lstrip().upper().startswith("INSERT INTO PATIENTS"):
            raced = True  # between this batch's duplicate check and its insert
            _register_elsewhere(runtime, tenant, rows[60:70])

    event.listen(runtime.engine, "before_cursor_execute", other_writer_first)
    try:
        report = _import(runtime, tenant, source)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", other_writer_first)
    assert raced
    assert (report.created, report.existing) == (110, 10)
    assert _count(runtime) == 120


def test_a_batch_that_keeps_conflicting_stops_with_a_clear_error(
    runtime: Runtime, tmp_path: Path
) -> None:
    tenant = _tenant(runtime)
    rows = list(synthetic_patient_rows(20, seed=13))
    source = write_csv(tmp_path / "p.csv", rows)
    races = iter([rows[0:1], rows[1:2]])

    def other_writer_every_time(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO PATIENTS"):
            batch = next(races, None)
            if batch is not None:
                _register_elsewhere(runtime, tenant, batch)

    event.listen(runtime.engine, "before_cursor_execute", other_writer_every_time)
    try:
        with pytest.raises(BatchConflictError, match="run the same import again") as caught:
            _import(runtime, tenant, source)
    finally:
        event.remove(runtime.engine, "before_cursor_execute", other_writer_every_time)
    for row in rows:
        assert row["nir"].replace(" ", "") not in str(caught.value)
    assert _count(runtime) == 2  # only the other writer's


def test_two_imports_of_the_same_file_at_once_create_each_patient_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    tenant = _tenant(runtime)
    source = write_csv(tmp_path / "p.csv", synthetic_patient_rows(400, seed=14))
    reports: list[ImportReport] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(_import(runtime, tenant, source))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert sorted(r.created + r.existing for r in reports) == [400, 400]
    assert sum(r.created for r in reports) == 400
    assert _count(runtime) == 400
