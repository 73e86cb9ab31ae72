"""What storing a patient costs SQLite itself, whatever Python does around it.

    python -m bench.sqlite_floor [--patients 50000]

Prepares (untimed) real sealed patients with the real pipeline, then stores the very
same rows into freshly migrated SQLite databases three ways, interleaved:

- ``driver``: ``sqlite3.executemany`` with the values already in storage form: the floor;
- ``core``: SQLAlchemy Core ``insert()`` executemany, as ``store_prepared`` does;
- ``store_prepared``: the repository method itself (duplicate check, then the inserts).

Batches of 2,000 rows, one transaction each, as the importer. The ratios to ``driver``
say how much of an import's storing time is SQLite and how much is Python.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.bulk import prepare_records
from labvault.patients.ins import InsOid
from labvault.patients.services import (
    DATA_KEYS_TABLE,
    PATIENTS_TABLE,
    PatientRepository,
    PreparedPatient,
)
from labvault.patients.synthetic import synthetic_patient_rows

BATCH = 2000
console = Console()


def _runtime(workdir: Path, key_file: Path) -> tuple[Runtime, uuid.UUID]:
    database = workdir / f"{uuid.uuid4().hex}.sqlite3"
    settings = Settings(
        data_dir=workdir, database_url=f"sqlite:///{database}", key_provider=f"file:{key_file}"
    )
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, f"Bench {uuid.uuid4()}").id
    return runtime, tenant


def _prepared(runtime: Runtime, tenant: uuid.UUID, count: int) -> list[PreparedPatient]:
    with transaction(runtime.sessions) as session:
        sealer = runtime.sealer_spec(session, tenant).build()
    records = [(n + 2, row) for n, row in enumerate(synthetic_patient_rows(count, seed=5))]
    outcomes = prepare_records(list(records), sealer, InsOid.TEST)
    return [o for _, o in outcomes if isinstance(o, PreparedPatient)]


def _rows(
    prepared: list[PreparedPatient], tenant: uuid.UUID
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    from labvault.core.db import utcnow

    now = utcnow()
    rows = [{**p.row, "tenant_id": tenant, "created_at": now, "updated_at": now} for p in prepared]
    return rows, [{**p.key_row, "created_at": now} for p in prepared]


def _driver(runtime: Runtime, tenant: uuid.UUID, prepared: list[PreparedPatient]) -> float:
    rows, key_rows = _rows(prepared, tenant)
    dialect = runtime.engine.dialect

    def storage_form(
        table_rows: list[dict[str, object]], table: object
    ) -> tuple[str, list[tuple[object, ...]]]:
        columns = list(table_rows[0])
        types = {c.name: c.type for c in table.columns}  # type: ignore[attr-defined]
        processors = [types[c].bind_processor(dialect) for c in columns]
        values = [
            tuple(p(r[c]) if p else r[c] for c, p in zip(columns, processors, strict=True))
            for r in table_rows
        ]
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) "  # type: ignore[attr-defined]
            f"VALUES ({', '.join('?' * len(columns))})"
        )
        return sql, values

    key_sql, key_values = storage_form(key_rows, DATA_KEYS_TABLE)
    sql, values = storage_form(rows, PATIENTS_TABLE)
    database = runtime.engine.url.database
    assert database
    runtime.engine.dispose()
    connection = sqlite3.connect(database)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "cache_size=-65536",
                   "wal_autocheckpoint=10000", "secure_delete=ON"):  # fmt: skip
        connection.execute(f"PRAGMA {pragma}")
    start = time.perf_counter()
    for i in range(0, len(values), BATCH):
        connection.executemany(key_sql, key_values[i : i + BATCH])
        connection.executemany(sql, values[i : i + BATCH])
        connection.commit()
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed


def _core(runtime: Runtime, tenant: uuid.UUID, prepared: list[PreparedPatient]) -> float:
    rows, key_rows = _rows(prepared, tenant)
    start = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        with transaction(runtime.sessions) as session:
            session.execute(insert(DATA_KEYS_TABLE), key_rows[i : i + BATCH])
            session.execute(insert(PATIENTS_TABLE), rows[i : i + BATCH])
    return time.perf_counter() - start


def _repository(runtime: Runtime, tenant: uuid.UUID, prepared: list[PreparedPatient]) -> float:
    principal = SystemPrincipal("bench:sqlite-floor")
    start = time.perf_counter()
    for i in range(0, len(prepared), BATCH):
        with transaction(runtime.sessions) as session:
            keyring = TenantKeyring(session, runtime.key_provider, tenant, principal)
            PatientRepository(session, keyring).store_prepared(prepared[i : i + BATCH])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sqlite_floor", description=__doc__)
    parser.add_argument("--patients", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    ways: dict[str, Callable[[Runtime, uuid.UUID, list[PreparedPatient]], float]] = {
        "driver": _driver,
        "core": _core,
        "store_prepared": _repository,
    }
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="labvault-floor-") as tmp:
        workdir = Path(tmp)
        key_file = workdir / "keys" / "root.key"
        FileKeyProvider.create(key_file)
        for _ in range(args.repeat):
            for name, way in ways.items():
                runtime, tenant = _runtime(workdir, key_file)
                try:
                    prepared = _prepared(runtime, tenant, args.patients)
                    elapsed = way(runtime, tenant, prepared)
                finally:
                    runtime.close()
                best[name] = min(best.get(name, elapsed), elapsed)
    table = Table(
        title=f"Storing {args.patients:,} sealed patients in SQLite (best of {args.repeat})"
    )
    for column in ("way", "µs/patient", "patients/s", "ratio to driver"):
        table.add_column(column, justify="right")
    for name, elapsed in best.items():
        table.add_row(
            name,
            f"{elapsed / args.patients * 1e6:.1f}",
            f"{args.patients / elapsed:,.0f}",
            f"{elapsed / best['driver']:.2f}x",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
