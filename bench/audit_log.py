"""Audit log throughput: appending, sequencing, verifying and inclusion proofs.

    python -m bench.audit_log [--events 1000000] [--backend both] [--append-events 40000]
                              [--batch-size 500] [--repeat 2] [--proofs 200] [--profile TOP]

Per backend, on fresh migrated databases, with a real key file and a file witness in a
temporary directory; every figure comes with a baseline measured in the same run:

1. append: ``AuditTrail.record_many`` of ``--batch-size`` events per transaction, with 1 and
   4 writer *processes* (each its own engine and sessions; threads would mostly measure the
   GIL, since building and binding the rows is Python), against the same rows inserted with
   a plain Core executemany into a copy of ``audit_events`` without primary key or index;
2. sequence: ``AuditLog.advance(force_checkpoint=True)`` over the events appended in (1),
   against the sequencer's own SQL alone (the same locking UPDATE, the same SELECT of pending
   events, the same UPDATE executemany with constant hashes; no hashing, sealing, tree
   nodes, checkpoints or witness), run first on the same rows and then undone;
3. verify: ``--events`` events seeded with Core executemany in big transactions, sequenced
   with ``advance``, then ``verify_log`` against streaming the same SELECT without hashing;
4. proofs: ``inclusion_proof`` of ``--proofs`` random events at ``--events`` events (JSON
   bytes, hashes, build time against a SELECT of the same event row; check time of
   ``verify_inclusion_proof`` against the checkpoint signature check alone).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import multiprocessing
import multiprocessing.synchronize
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any, cast

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
from sqlalchemy import Column, MetaData, bindparam, func, insert, select, text, update
from sqlalchemy import Table as SqlTable

from bench.common import (
    BACKENDS,
    console,
    exit_cleanly_on_sigterm,
    fresh_database,
    machine_table,
    percentiles,
    verdict,
)
from labvault.core.access.principals import Principal, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.checkpoints import Checkpoint
from labvault.core.audit.events import CANONICAL_COLUMNS, AuditTrail, Outcome
from labvault.core.audit.models import AuditEvent, AuditLogState, to_micros
from labvault.core.audit.proofs import inclusion_proof, verify_inclusion_proof
from labvault.core.audit.sequencer import STATE_ID, AuditLog
from labvault.core.audit.verify import FETCH_SIZE, ParallelScan, verify_log
from labvault.core.audit.witness import AuditWitness
from labvault.core.config import Settings
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime

TARGET_APPEND_PG = 5_000.0  # events/s appended on PostgreSQL (from the issue)
TARGET_VERIFY = 200_000.0  # events/s verified (from the issue)
TARGET_PROOF_BYTES = 2048  # one inclusion proof (from the issue)
PURPOSE = "bench"
ACTION = AuditAction.PATIENT_RECORD_READ
SEED_TRANSACTION = 50_000  # events per transaction when seeding for verify
WRITERS: tuple[int, ...] = (1, 4)
EVENTS = cast(SqlTable, AuditEvent.__table__)
DUMMY_HASH = bytes(32)


# --------------------------------------------------------------------------- set-up


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What a process needs to open the real runtime on one benchmark database."""

    url: str
    key_file: Path
    data_dir: Path
    witness_dir: Path

    def runtime(self) -> Runtime:
        return Runtime(
            Settings(
                data_dir=self.data_dir,
                database_url=self.url,
                key_provider=f"file:{self.key_file}",
                audit_witness_dir=self.witness_dir,
            )
        )


@contextmanager
def bench_database(backend: str, workdir: Path, key_file: Path) -> Iterator[BenchConfig]:
    """A fresh migrated database (dropped afterwards) and its own, empty, witness directory."""
    with fresh_database(backend, workdir) as url:
        tag = uuid.uuid4().hex[:8]
        yield BenchConfig(url, key_file, workdir / "data", workdir / f"witness-{tag}")


def bare_events_table(metadata: MetaData) -> SqlTable:
    """``audit_events``' columns and types, without primary key, constraint or index."""
    return SqlTable(
        "bench_audit_events_bare",
        metadata,
        *(Column(column.name, column.type, nullable=True) for column in EVENTS.columns),
    )


def event_rows(
    principal: Principal, tenant_id: uuid.UUID, targets: Sequence[uuid.UUID], occurred_us: int
) -> list[dict[str, Any]]:
    """The rows ``AuditTrail.record_many`` builds, without its checks."""
    return [
        {
            "id": uuid.uuid4(),
            "occurred_us": occurred_us,
            "tenant_id": tenant_id,
            "actor_kind": principal.kind.value,
            "actor_id": principal.id,
            "actor_role": principal.role,
            "actor_site_id": principal.site_id,
            "action": ACTION.value,
            "target_type": "patient",
            "target_id": target,
            "purpose": PURPOSE,
            "outcome": Outcome.SUCCESS.value,
            "request_id": None,
            "client_hash": None,
        }
        for target in targets
    ]


def vacuum_analyze(runtime: Runtime) -> None:
    """PostgreSQL: what autovacuum would do between bulk phases (untimed); SQLite: nothing."""
    if runtime.engine.dialect.name != "postgresql":
        return
    with runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE audit_events"))


def count_events(runtime: Runtime, *, sequenced: bool | None = None) -> int:
    query = select(func.count()).select_from(AuditEvent)
    if sequenced is True:
        query = query.where(AuditEvent.seq.is_not(None))
    elif sequenced is False:
        query = query.where(AuditEvent.seq.is_(None))
    with runtime.sessions() as session:
        return session.execute(query).scalar_one()


def rate(events: int, seconds: float) -> str:
    return f"{events / seconds:,.0f}/s" if seconds > 0 else "-"


# --------------------------------------------------------------------------- 1. append

AUDIT, BARE = "record_many", "bare executemany"


def _append_worker(
    config: BenchConfig,
    mode: str,
    tenant_id: uuid.UUID,
    batches: int,
    batch_size: int,
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[tuple[int, float, float, str | None]],
    writer: int,
) -> None:
    """One writer process: its own engine and sessions, timed from the common start."""
    try:
        runtime = config.runtime()
        try:
            principal = SystemPrincipal("bench:audit")
            bare = bare_events_table(MetaData())
            with runtime.sessions() as session:  # connect before the clock starts
                session.execute(text("SELECT 1"))
            barrier.wait()
            start = time.perf_counter()
            for _ in range(batches):
                targets = [uuid.uuid4() for _ in range(batch_size)]
                with transaction(runtime.sessions) as session:
                    if mode == AUDIT:
                        AuditTrail(session, principal).record_many(
                            ACTION,
                            tenant_id=tenant_id,
                            target_type="patient",
                            target_ids=targets,
                            purpose=PURPOSE,
                        )
                    else:
                        rows = event_rows(principal, tenant_id, targets, to_micros(utcnow()))
                        session.execute(insert(bare), rows)
            results.put((writer, start, time.perf_counter(), None))
        finally:
            runtime.close()
    except BaseException as exc:
        results.put((writer, 0.0, 0.0, f"{type(exc).__name__}: {exc}"))
        raise


def time_append(
    config: BenchConfig,
    mode: str,
    writers: int,
    total: int,
    batch_size: int,
    tenant_id: uuid.UUID,
) -> tuple[int, float]:
    """(events appended, wall seconds from the first writer's start to the last one's end)."""
    context = multiprocessing.get_context("fork")  # each child opens its own engine
    batches = max(1, total // (writers * batch_size))
    barrier = context.Barrier(writers, timeout=120)
    results: multiprocessing.Queue[tuple[int, float, float, str | None]] = context.Queue()
    processes = [
        context.Process(
            target=_append_worker,
            args=(config, mode, tenant_id, batches, batch_size, barrier, results, writer),
            daemon=True,
        )
        for writer in range(writers)
    ]
    for process in processes:
        process.start()
    outcomes: list[tuple[int, float, float, str | None]] = []
    try:
        for _ in processes:
            try:
                outcomes.append(results.get(timeout=900))
            except Empty:
                raise SystemExit(f"append ({mode}, {writers} writers): no answer") from None
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
    errors = [error for _, _, _, error in outcomes if error is not None]
    if errors:
        raise SystemExit(f"append ({mode}, {writers} writers) failed: {errors[0]}")
    start = min(outcome[1] for outcome in outcomes)
    end = max(outcome[2] for outcome in outcomes)
    return batches * writers * batch_size, end - start


@dataclass
class Best:
    """Best (smallest) seconds over repetitions, for a fixed amount of work."""

    events: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, events: int, seconds: float) -> None:
        self.events = events
        self.seconds.append(seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.events / self.best


@dataclass
class Results:
    """Everything measured on one backend, for the summary table."""

    backend: str
    append: dict[tuple[str, int], Best] = field(default_factory=dict)
    sequence: dict[str, Best] = field(default_factory=dict)
    sequence_witness: float = 0.0
    seed: tuple[int, float] = (0, 0.0)
    advance_big: tuple[int, float, float, int] = (0, 0.0, 0.0, 0)
    verify: dict[str, Best] = field(default_factory=dict)
    proof_bytes: int = 0
    proof_bytes_compact: int = 0
    proof_path_bytes: int = 0
    proof_hashes: int = 0
    proof_hashes_bound: int = 0
    proof_build: list[float] = field(default_factory=list)
    proof_select: list[float] = field(default_factory=list)
    proof_check: list[float] = field(default_factory=list)
    proof_signature: list[float] = field(default_factory=list)


def bench_append(
    config: BenchConfig, results: Results, total: int, batch_size: int, repeat: int
) -> None:
    runtime = config.runtime()
    try:
        bare_events_table(metadata := MetaData())
        metadata.create_all(runtime.engine)
    finally:
        runtime.close()
    tenant_id = uuid.uuid4()
    for round_ in range(repeat):
        for writers in WRITERS:
            for mode in (BARE, AUDIT) if round_ % 2 == 0 else (AUDIT, BARE):
                events, seconds = time_append(config, mode, writers, total, batch_size, tenant_id)
                results.append.setdefault((mode, writers), Best()).add(events, seconds)
                console.print(
                    f"  append {mode:<17} {writers} writer(s): {events:,} events in "
                    f"{seconds:.2f} s, {rate(events, seconds)}"
                )


# --------------------------------------------------------------------------- 2. sequence


def sequence_sql_only(runtime: Runtime, batch: int) -> int:
    """The sequencer's SQL (lock, select pending, update seq/leaf/seal), constant hashes."""
    done = 0
    while True:
        with transaction(runtime.sessions) as session:
            session.execute(
                update(AuditLogState)
                .where(AuditLogState.id == STATE_ID)
                .values(sequenced_us=to_micros(utcnow()))
            )
            pending = session.execute(
                select(AuditEvent.id, *CANONICAL_COLUMNS)
                .where(AuditEvent.seq.is_(None))
                .order_by(AuditEvent.occurred_us, AuditEvent.id)
                .limit(batch)
            ).all()
            if pending:
                session.execute(
                    update(EVENTS)
                    .where(EVENTS.c.id == bindparam("b_id"))
                    .values(
                        seq=bindparam("b_seq"),
                        leaf_hash=bindparam("b_leaf"),
                        seal=bindparam("b_seal"),
                    ),
                    [
                        {"b_id": row[0], "b_seq": seq, "b_leaf": DUMMY_HASH, "b_seal": DUMMY_HASH}
                        for seq, row in enumerate(pending, start=done)
                    ],
                )
        done += len(pending)
        if len(pending) < batch:
            return done


def unsequence(runtime: Runtime) -> None:
    with transaction(runtime.sessions) as session:
        session.execute(update(EVENTS).values(seq=None, leaf_hash=None, seal=None))


@contextmanager
def timed_witness_appends(witness: AuditWitness) -> Iterator[list[float]]:
    """Adds up the seconds spent in ``witness.append`` (read, check, write, fsync)."""
    spent = [0.0]
    original = witness.append

    def append(checkpoint: Checkpoint, consistency_proof: Sequence[bytes]) -> None:
        start = time.perf_counter()
        try:
            original(checkpoint, consistency_proof)
        finally:
            spent[0] += time.perf_counter() - start

    setattr(witness, "append", append)  # noqa: B010 - an instance attribute, removed below
    try:
        yield spent
    finally:
        delattr(witness, "append")


def timed_advance(audit_log: AuditLog) -> tuple[int, float, float, int]:
    """(events sequenced, seconds, of which witness appends, checkpoints signed)."""
    with timed_witness_appends(audit_log.witness) as witness_seconds:
        start = time.perf_counter()
        report = audit_log.advance(force_checkpoint=True)
        seconds = time.perf_counter() - start
    return report.sequenced, seconds, witness_seconds[0], len(report.checkpoints)


def bench_sequence(config: BenchConfig, results: Results) -> None:
    runtime = config.runtime()
    try:
        pending = count_events(runtime, sequenced=False)
        batch = runtime.settings.audit_checkpoint_events
        vacuum_analyze(runtime)
        start = time.perf_counter()
        done = sequence_sql_only(runtime, batch)
        seconds = time.perf_counter() - start
        if done != pending:
            raise SystemExit(f"the SQL-only sequencing saw {done} of {pending} pending events")
        results.sequence.setdefault("sql", Best()).add(done, seconds)
        console.print(f"  sequence SQL only (baseline): {done:,} events in {seconds:.2f} s")
        unsequence(runtime)
        vacuum_analyze(runtime)
        sequenced, seconds, witness, checkpoints = timed_advance(runtime.audit_log)
        if sequenced != pending:
            raise SystemExit(f"advance sequenced {sequenced} of {pending} pending events")
        results.sequence.setdefault("advance", Best()).add(sequenced, seconds)
        results.sequence_witness = witness
        console.print(
            f"  advance: {sequenced:,} events in {seconds:.2f} s ({checkpoints} checkpoints, "
            f"{witness:.2f} s in witness appends)"
        )
    finally:
        runtime.close()


# --------------------------------------------------------------------------- 3. verify


def seed_events(runtime: Runtime, count: int, batch_size: int) -> float:
    """``count`` unsequenced events, ``batch_size`` per instant, big transactions; seconds."""
    principal = SystemPrincipal("bench:audit")
    tenant_id = uuid.uuid4()
    occurred_us = to_micros(utcnow()) - count  # one microsecond apart per record_many call
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    start = time.perf_counter()
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("Seeding events", total=count)
        done = 0
        while done < count:
            size = min(SEED_TRANSACTION, count - done)
            with transaction(runtime.sessions) as session:
                rows: list[dict[str, Any]] = []
                for offset in range(0, size, batch_size):
                    targets = [uuid.uuid4() for _ in range(min(batch_size, size - offset))]
                    rows.extend(event_rows(principal, tenant_id, targets, occurred_us))
                    occurred_us += 1
                session.execute(insert(EVENTS), rows)
            done += size
            progress.advance(task, size)
    return time.perf_counter() - start


def stream_rows(runtime: Runtime) -> int:
    """The verifier's SELECT (same columns, order and fetch size), rows unpacked, no hashing."""
    count = 0
    with runtime.engine.connect() as connection:
        result = connection.execution_options(yield_per=FETCH_SIZE).execute(
            select(AuditEvent.seq, AuditEvent.seal, *CANONICAL_COLUMNS)
            .where(AuditEvent.seq.is_not(None))
            .order_by(AuditEvent.seq)
        )
        for row in result:
            _seq, _seal, *_fields = row
            count += 1
    return count


VERIFY_WORKERS = max(2, os.cpu_count() or 1)


def run_verify(runtime: Runtime, audit_log: AuditLog, workers: int = 0) -> int:
    """``workers`` > 1: ranges of positions checked by that many processes, as the CLI does."""
    parallel = ParallelScan(
        database_url=runtime.settings.sqlalchemy_url,
        key_provider=runtime.key_provider_config,
        workers=workers,
    )
    with runtime.sessions() as session:
        report = verify_log(
            session,
            audit_log.trusted_keys,
            audit_log.seal_keys(),
            audit_log.witness,
            parallel=parallel,
        )
    if not report.ok:
        raise SystemExit(f"verify_log found tampering: {report.findings[0].message}")
    return report.events


def bench_verify(
    runtime: Runtime, results: Results, count: int, batch_size: int, repeat: int, profile: int
) -> None:
    seed_seconds = seed_events(runtime, count, batch_size)
    results.seed = (count, seed_seconds)
    console.print(f"  seeded {count:,} events in {seed_seconds:.1f} s, {rate(count, seed_seconds)}")
    with console.status(f"Sequencing {count:,} events (advance)"):
        results.advance_big = timed_advance(runtime.audit_log)
    sequenced, seconds, witness, checkpoints = results.advance_big
    console.print(
        f"  advance: {sequenced:,} events in {seconds:.1f} s, {rate(sequenced, seconds)} "
        f"({checkpoints} checkpoints, {witness:.1f} s in witness appends)"
    )
    if sequenced != count:
        raise SystemExit(f"advance sequenced {sequenced} of {count} events")
    vacuum_analyze(runtime)
    audit_log = runtime.audit_log
    for round_ in range(repeat):
        order = ["stream", "verify", "verify-parallel"]
        if round_ % 2:
            order.reverse()
        for name in order:
            with console.status(f"{name} {count:,} events"):
                start = time.perf_counter()
                if name == "stream":
                    seen = stream_rows(runtime)
                else:
                    workers = VERIFY_WORKERS if name == "verify-parallel" else 0
                    seen = run_verify(runtime, audit_log, workers)
                seconds = time.perf_counter() - start
            if seen != count:
                raise SystemExit(f"{name} saw {seen} of {count} events")
            results.verify.setdefault(name, Best()).add(seen, seconds)
            console.print(f"  {name:<6}: {seen:,} events in {seconds:.2f} s, {rate(seen, seconds)}")
    if profile:
        console.print(f"[bold]cProfile: verify_log over {count:,} events[/]")
        profiler = cProfile.Profile()
        profiler.enable()
        run_verify(runtime, audit_log)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats(pstats.SortKey.TIME).print_stats(profile)


# --------------------------------------------------------------------------- 4. proofs


def bench_proofs(runtime: Runtime, results: Results, count: int, samples: int) -> None:
    rng = random.Random(1)  # which events to prove: not a secret
    positions = rng.sample(range(count), min(samples, count))
    with runtime.sessions() as session:
        ids = list(session.scalars(select(AuditEvent.id).where(AuditEvent.seq.in_(positions))))
    trusted = runtime.audit_log.trusted_keys
    for event_id in [ids[0], *ids]:  # the first one twice: its first round is a warm-up
        start = time.perf_counter()
        with runtime.sessions() as session:
            document = inclusion_proof(session, event_id)
        build = time.perf_counter() - start
        start = time.perf_counter()
        with runtime.sessions() as session:
            row = session.execute(
                select(AuditEvent.seq, *CANONICAL_COLUMNS).where(AuditEvent.id == event_id)
            ).one()
        select_seconds = time.perf_counter() - start
        start = time.perf_counter()
        verified = verify_inclusion_proof(document, trusted)
        check = time.perf_counter() - start
        start = time.perf_counter()
        trusted.verify(Checkpoint.from_json(document["checkpoint"]))
        signature = time.perf_counter() - start
        if verified.leaf_index != row[0]:
            raise SystemExit("the proof is for another position")
        results.proof_build.append(build)
        results.proof_select.append(select_seconds)
        results.proof_check.append(check)
        results.proof_signature.append(signature)
        as_cli_writes = json.dumps(document, separators=(",", ":")) + "\n"  # `audit proof`
        compact = json.dumps(document, indent=2)
        path_only = json.dumps(document["audit_path"], separators=(",", ":"))
        results.proof_bytes = max(results.proof_bytes, len(as_cli_writes.encode()))
        results.proof_bytes_compact = max(results.proof_bytes_compact, len(compact.encode()))
        results.proof_path_bytes = max(results.proof_path_bytes, len(path_only.encode()))
        results.proof_hashes = max(results.proof_hashes, len(document["audit_path"]))
    for series in (
        results.proof_build,
        results.proof_select,
        results.proof_check,
        results.proof_signature,
    ):
        del series[0]  # the warm-up
    results.proof_hashes_bound = math.ceil(math.log2(count)) if count > 1 else 0


# --------------------------------------------------------------------------- report


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline > 0 else "-"


def summary(all_results: Sequence[Results], args: argparse.Namespace) -> Table:
    table = Table(title="Audit log (best of runs; ratio = labvault time / baseline time)")
    for column in ("Backend", "Measure", "labvault", "Baseline", "Ratio", "Target"):
        table.add_column(column, justify="left" if column in ("Backend", "Measure") else "right")
    for results in all_results:
        b = results.backend
        for writers in WRITERS:
            audit = results.append.get((AUDIT, writers))
            bare = results.append.get((BARE, writers))
            if audit is None or bare is None:
                continue
            target = "-"
            if b == "postgresql":
                target = f">= {TARGET_APPEND_PG:,.0f}/s {verdict(audit.rate >= TARGET_APPEND_PG)}"
            table.add_row(
                b,
                f"append, {writers} writer process(es), {args.batch_size}/txn, events/s",
                f"{audit.rate:,.0f}",
                f"{bare.rate:,.0f} (bare)",
                _ratio(audit.best, bare.best),
                target,
            )
        if "advance" in results.sequence:
            advance, sql = results.sequence["advance"], results.sequence["sql"]
            table.add_row(
                b,
                f"sequence {advance.events:,} (advance), events/s",
                f"{advance.rate:,.0f}",
                f"{sql.rate:,.0f} (SQL only)",
                _ratio(advance.best, sql.best),
                "-",
            )
        for name, label in (
            ("verify", "1 process"),
            ("verify-parallel", f"{VERIFY_WORKERS} worker processes"),
        ):
            if name not in results.verify:
                continue
            ver, stream = results.verify[name], results.verify["stream"]
            table.add_row(
                b,
                f"verify {ver.events:,} events, {label}, events/s",
                f"{ver.rate:,.0f}",
                f"{stream.rate:,.0f} (stream, 1 process)",
                _ratio(ver.best, stream.best),
                f">= {TARGET_VERIFY:,.0f}/s {verdict(ver.rate >= TARGET_VERIFY)}",
            )
        if results.proof_build:
            build, select_ = percentiles(results.proof_build), percentiles(results.proof_select)
            check, sig = percentiles(results.proof_check), percentiles(results.proof_signature)
            table.add_row(
                b,
                "proof size, bytes, as `audit proof` writes it (indented JSON)",
                f"{results.proof_bytes:,} ({results.proof_bytes_compact:,})",
                f"{results.proof_path_bytes:,} (path)",
                _ratio(results.proof_bytes, results.proof_path_bytes),
                f"<= {TARGET_PROOF_BYTES:,} {verdict(results.proof_bytes <= TARGET_PROOF_BYTES)}",
            )
            table.add_row(
                b,
                "proof hashes, most of the samples",
                f"{results.proof_hashes}",
                f"{results.proof_hashes_bound} (ceil log2 n)",
                _ratio(results.proof_hashes, results.proof_hashes_bound),
                "-",
            )
            table.add_row(
                b,
                "proof build p50 / p95, ms",
                f"{build.p50 * 1e3:.2f} / {build.p95 * 1e3:.2f}",
                f"{select_.p50 * 1e3:.2f} / {select_.p95 * 1e3:.2f} (row)",
                _ratio(build.p50, select_.p50),
                "-",
            )
            table.add_row(
                b,
                "proof check p50 / p95, ms",
                f"{check.p50 * 1e3:.3f} / {check.p95 * 1e3:.3f}",
                f"{sig.p50 * 1e3:.3f} / {sig.p95 * 1e3:.3f} (sig)",
                _ratio(check.p50, sig.p50),
                "-",
            )
    return table


# --------------------------------------------------------------------------- main


def run_backend(backend: str, args: argparse.Namespace, workdir: Path, key_file: Path) -> Results:
    results = Results(backend)
    console.rule(f"[bold]{backend}")
    if args.append_events > 0:
        with bench_database(backend, workdir, key_file) as config:
            console.print(
                f"[bold]1. append[/] ({args.append_events:,} events per run, "
                f"{args.batch_size} per transaction, best of {args.repeat})"
            )
            bench_append(config, results, args.append_events, args.batch_size, args.repeat)
            console.print("[bold]2. sequence[/] (the events appended above)")
            bench_sequence(config, results)
    if args.events > 0:
        with bench_database(backend, workdir, key_file) as config:
            console.print(f"[bold]3. verify[/] ({args.events:,} events, best of {args.repeat})")
            runtime = config.runtime()
            try:
                bench_verify(
                    runtime, results, args.events, args.batch_size, args.repeat, args.profile
                )
                console.print(f"[bold]4. proofs[/] ({args.proofs} random events)")
                bench_proofs(runtime, results, args.events, args.proofs)
            finally:
                runtime.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_log", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="events to verify")
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    parser.add_argument(
        "--append-events", type=int, default=40_000, help="events per append run (0: skip 1, 2)"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="events per transaction")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each append and verify")
    parser.add_argument("--proofs", type=int, default=200, help="inclusion proofs to time")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="TOP",
        default=0,
        help="also run verify_log once under cProfile and print TOP functions by tottime",
    )
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    console.print(machine_table(backends))
    all_results: list[Results] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labvault-bench-") as tmp:
        workdir = Path(tmp)
        key_file = FileKeyProvider.create(workdir / "keys" / "root.key").path
        interval = BenchConfig("sqlite://", key_file, workdir, workdir).runtime()
        console.print(
            f"Checkpoint every {interval.settings.audit_checkpoint_events:,} events "
            f"(LABVAULT_AUDIT_CHECKPOINT_EVENTS); file witness and key in {workdir}."
        )
        interval.close()
        for backend in backends:
            all_results.append(run_backend(backend, args, workdir, key_file))
    console.print(summary(all_results, args))
    console.print(f"Total run time {time.perf_counter() - started:.0f} s.")
    console.print("[dim]Benchmarks inform, they do not gate: the exit status is 0 either way.[/]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
