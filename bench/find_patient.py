"""``find_by_nir`` latency with many patients stored, against an undecrypted baseline.

    python -m bench.find_patient [--patients 1000000] [--backend sqlite] [--lookups 2000]
                                 [--db PATH] [--keep PATH]

Seeds ``--patients`` synthetic patients through the real encrypted path
(``register_records`` with worker processes, batches of ``--batch-size`` in one transaction each),
then times, for ``--lookups`` random existing patients, alternately:

- ``find_by_nir``: one short transaction with a fresh ``TenantKeyring``, as one CLI call or
  one request does it (read and unwrap the index keys, HMAC the NIR, select by blind index,
  read and unwrap one data key, decrypt the row);
- the baseline: the same transaction pattern around a primary-key ``SELECT`` of the same
  patient row through the ORM, without any key or decryption.

``--keep PATH`` keeps the seeded SQLite database at PATH and its (synthetic-data) root key
at PATH.key; ``--db PATH`` reuses them and skips seeding.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from sqlalchemy import func, select, text

from bench.common import (
    BACKENDS,
    console,
    create_bench_organization,
    exit_cleanly_on_sigterm,
    fresh_database,
    machine_table,
    open_runtime,
    percentiles,
    verdict,
)
from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import get_organization
from labvault.patients.bulk import register_records
from labvault.patients.ins import InsOid
from labvault.patients.models import Patient
from labvault.patients.nir import Nir
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows

TARGET_MS = 5.0  # `patients find --nir` with 1,000,000 patients stored (from the issue)
PURPOSE = "bench:find-patient"
WARMUP = 50


def key_file_for(db: Path) -> Path:
    return db.with_name(db.name + ".key")


@contextmanager
def database(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[str, Path, bool]]:
    """(URL, key file, needs seeding) for the run; cleaned up afterwards unless kept."""
    if args.db is not None:
        db = args.db.resolve()
        if not db.exists() or not key_file_for(db).exists():
            raise SystemExit(f"--db: expected {db} and its key file {key_file_for(db)}")
        yield f"sqlite:///{db}", key_file_for(db), False
        return
    key_file = FileKeyProvider.create(workdir / "keys" / "root.key").path
    with fresh_database(args.backend, workdir) as url:
        yield url, key_file, True
        if args.keep is not None:
            kept = args.keep.resolve()
            source = Path(url.removeprefix("sqlite:///"))
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, kept)
            shutil.copy2(key_file, key_file_for(kept))
            console.print(f"Kept the seeded database at {kept} (root key: {key_file_for(kept)}).")


def _batched(items: Iterator[PatientInput], size: int) -> Iterator[list[PatientInput]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def seed(
    runtime: Runtime, tenant_id: uuid.UUID, count: int, batch_size: int, seed: int, workers: int
) -> None:
    principal = SystemPrincipal("bench:seed")
    provider = runtime.key_provider
    start = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with runtime.sessions() as session:
        sealer = runtime.sealer_spec(session, tenant_id)
    rows = synthetic_patient_rows(count, seed=seed)
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("Seeding (encrypted)", total=count)
        report = register_records(
            ((number + 2, row) for number, row in enumerate(rows)),
            sessions=runtime.sessions,
            open_keyring=lambda session: TenantKeyring(session, provider, tenant_id, principal),
            sealer=sealer,
            workers=workers,
            ins_oid=InsOid.TEST,
            batch_size=batch_size,
            on_batch=lambda stored: progress.advance(task, stored),
        )
    created = report.created
    total = time.perf_counter() - start
    console.print(
        f"Seeded {created:,} patients in {total:.1f} s: {count / total:,.0f} patients/s "
        f"({workers} worker process(es) validating and sealing, this one storing)."
    )


def sample(
    runtime: Runtime, tenant_id: uuid.UUID, count: int, rng: random.Random
) -> list[tuple[uuid.UUID, Nir]]:
    """``count`` random stored patients with a NIR, and their NIRs (untimed, decrypted)."""
    with runtime.sessions() as session:
        ids = list(
            session.scalars(
                select(Patient.id)
                .where(Patient.tenant_id == tenant_id, Patient.nir_index.is_not(None))
                .order_by(Patient.id)
            )
        )
    chosen = rng.sample(ids, min(count, len(ids)))
    principal = SystemPrincipal("bench:sample")
    found: list[tuple[uuid.UUID, Nir]] = []
    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant_id, principal)
        repository = PatientRepository(session, keyring)
        for patient_id in chosen:
            record = repository.get(patient_id, purpose=PURPOSE)
            nir = record.nir if record is not None else None
            if nir is None:
                raise SystemExit("a sampled patient has no readable NIR")
            found.append((patient_id, nir))
    return found


def time_find(runtime: Runtime, tenant_id: uuid.UUID, patient_id: uuid.UUID, nir: Nir) -> float:
    principal = SystemPrincipal("bench:find-patient")
    start = time.perf_counter()
    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant_id, principal)
        found = PatientRepository(session, keyring).find_by_nir(nir, purpose=PURPOSE)
    elapsed = time.perf_counter() - start
    if [record.id for record in found] != [patient_id]:
        raise SystemExit("find_by_nir did not return exactly the expected patient")
    return elapsed


def time_baseline(runtime: Runtime, tenant_id: uuid.UUID, patient_id: uuid.UUID) -> float:
    start = time.perf_counter()
    with transaction(runtime.sessions) as session:
        row = session.scalars(
            select(Patient).where(Patient.tenant_id == tenant_id, Patient.id == patient_id)
        ).one()
    elapsed = time.perf_counter() - start
    if row.id != patient_id:
        raise SystemExit("the baseline read another row")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.find_patient", description=__doc__)
    parser.add_argument("--patients", type=int, default=1_000_000, help="patients to seed")
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    parser.add_argument("--lookups", type=int, default=2000, help="timed lookups of each kind")
    parser.add_argument("--batch-size", type=int, default=5000, help="patients per transaction")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic patients")
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 1),
        help="seeding worker processes (default: one per core but one, as the CLI)",
    )
    parser.add_argument("--db", type=Path, help="reuse this seeded SQLite file (and PATH.key)")
    parser.add_argument("--keep", type=Path, help="keep the seeded SQLite file at PATH")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    if (args.db or args.keep) and args.backend != "sqlite":
        parser.error("--db and --keep are for the sqlite backend")
    if args.db and args.keep:
        parser.error("--db reuses a kept database; --keep makes one: give one of them")

    console.print(machine_table((args.backend,)))
    rng = random.Random(args.seed)  # which patients to look up: not a secret
    with (
        tempfile.TemporaryDirectory(prefix="labvault-bench-") as tmp,
        database(args, Path(tmp)) as (url, key_file, needs_seeding),
    ):
        runtime = open_runtime(url, key_file=key_file)
        try:
            if needs_seeding:
                tenant_id = create_bench_organization(runtime)
                seed(runtime, tenant_id, args.patients, args.batch_size, args.seed, args.workers)
                if args.backend == "postgresql":  # as autovacuum would, before real traffic
                    with runtime.engine.connect() as connection:
                        connection.execute(text("ANALYZE"))
                        connection.commit()
            else:
                with transaction(runtime.sessions) as session:
                    tenant_id = get_organization(session).id
            with runtime.sessions() as session:
                stored = session.execute(
                    select(func.count()).select_from(Patient).where(Patient.tenant_id == tenant_id)
                ).scalar_one()
            console.print(f"{stored:,} patients stored ({args.backend}).")
            targets = sample(runtime, tenant_id, args.lookups + WARMUP, rng)
            warmup, timed = targets[:WARMUP], targets[WARMUP:]
            for patient_id, nir in warmup:
                time_find(runtime, tenant_id, patient_id, nir)
                time_baseline(runtime, tenant_id, patient_id)
            finds: list[float] = []
            baselines: list[float] = []
            gc.collect()
            for patient_id, nir in timed:
                finds.append(time_find(runtime, tenant_id, patient_id, nir))
                baselines.append(time_baseline(runtime, tenant_id, patient_id))
        finally:
            runtime.close()

    find, base = percentiles(finds), percentiles(baselines)
    table = Table(
        title=f"Lookup latency, {stored:,} patients stored, {len(finds):,} lookups each (ms)"
    )
    for column in ("Operation", "p50", "p95", "p99", "mean"):
        table.add_column(column, justify="left" if column == "Operation" else "right")
    for name, stats in (("find_by_nir (decrypt)", find), ("PK SELECT (baseline)", base)):
        table.add_row(
            name, *(f"{v * 1000:.3f}" for v in (stats.p50, stats.p95, stats.p99, stats.mean))
        )
    table.add_row(
        "[bold]ratio find/baseline[/]",
        *(
            f"{a / b:.2f}x"
            for a, b in (
                (find.p50, base.p50),
                (find.p95, base.p95),
                (find.p99, base.p99),
                (find.mean, base.mean),
            )
        ),
    )
    console.print(table)
    p95_ms = find.p95 * 1000
    console.print(
        f"Target: find by NIR under {TARGET_MS:.0f} ms with 1,000,000 patients stored "
        f"(judged on p95, in-process): {p95_ms:.2f} ms with {stored:,} stored "
        f"{verdict(p95_ms < TARGET_MS)}"
        + ("" if stored >= 1_000_000 else " [yellow](fewer than 1,000,000 stored)[/]")
    )
    console.print("[dim]Benchmarks inform, they do not gate: the exit status is 0 either way.[/]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
