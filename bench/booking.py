"""Slot search and booking on PostgreSQL with concurrent clients: bookings/s, p50, p99.

    python -m bench.booking [--clients 50] [--processes 1] [--seconds 20]
                            [--baseline-seconds 5] [--days 14] [--patients 200]

On a fresh migrated database of the server the tests use (``LABVAULT_BENCH_PG_ADMIN_URL``,
see ``bench/README.md``), with a real key file, one organization, one site open every day
07:00-19:00 in 5-minute slots with 10 boxes (1 kept for walk-ins), an exam catalog and
``--patients`` patients (setup untimed):

1. baseline: ``--clients`` threads, each in a loop of one transaction inserting one row into
   a plain table (uuid, integer, timestamp; no index but its key), on the same kind of
   engine and pool, for ``--baseline-seconds``;
2. booking: ``--clients`` threads, each acting as a patient account (its own access scope and
   keyring, as the API builds them), in a loop for ``--seconds``: search the slots of one
   random day among the next ``--days`` (one transaction), pick a random slot, hold it
   (one transaction: validation, sealed exams, slot claims, audit), confirm it (one more).
   A slot taken between search and hold counts as a conflict and the client searches again.

Figures: bookings/s (confirmed bookings over the run's wall time), the p50/p99 latency of a
whole booking (search + hold + confirm) and of each step, conflicts; the baseline's
transactions/s and p50/p99; ratios; the client processes' CPU per booking and per baseline
transaction (steadier than rates on a shared machine: it is what one booking costs the
application, whatever else runs). With ``--processes 1`` (the default) the clients are
threads of one process: Python work (sealing, SQLAlchemy) shares one interpreter lock, as
one application worker does. ``--processes N`` spreads the same clients over N processes,
each with its own engine and a pool of its share of the connections, as N application
workers behind a load balancer would; both phases run that way, started together behind one
barrier, and the wall time is from the common start to the last client's end. Compare
figures only between runs on the same machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import multiprocessing.synchronize
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import Empty

from rich.table import Table
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

import labvault.appointments.services as booking_services
from bench.common import (
    console,
    create_bench_organization,
    exit_cleanly_on_sigterm,
    fresh_database,
    machine_table,
    open_runtime,
    percentiles,
)
from labvault.appointments.services import BookingService, SlotTakenError
from labvault.catalog.services import ExamCatalog
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.events import AuditTrail, audited_transaction
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import make_session_factory, transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.core.tenancy import session_info
from labvault.organizations.models import Organization
from labvault.organizations.services import add_site
from labvault.patients.scope import patient_scope
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.schedules.services import SiteScheduleService

SETUP = SystemPrincipal("bench:booking")
HOURS = {day: [["07:00", "19:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
EXAMS = [
    {"code": "GLY", "label": "Glycémie", "sampling_minutes": 5},
    {"code": "NFS", "label": "Numération formule sanguine", "sampling_minutes": 5},
    {"code": "TSH", "label": "TSH", "sampling_minutes": 5},
]


@dataclass
class Timings:
    """Seconds per operation, gathered by every client thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    search: list[float] = field(default_factory=list)
    hold: list[float] = field(default_factory=list)
    confirm: list[float] = field(default_factory=list)
    booking: list[float] = field(default_factory=list)
    conflicts: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cpu: float = 0.0
    """CPU seconds the client processes used in the phase (all their threads)."""

    def merge(self, other: Timings) -> None:
        with self.lock:
            self.search += other.search
            self.hold += other.hold
            self.confirm += other.confirm
            self.booking += other.booking
            self.conflicts += other.conflicts
            self.cpu += other.cpu
            for name, count in other.errors.items():
                self.errors[name] = self.errors.get(name, 0) + count

    def __getstate__(self) -> dict[str, object]:
        """Picklable (sent back by client processes): everything but the lock."""
        return {name: value for name, value in self.__dict__.items() if name != "lock"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()


@dataclass(frozen=True)
class World:
    tenant: uuid.UUID
    site: uuid.UUID
    exams: list[uuid.UUID]
    patients: list[uuid.UUID]


@dataclass(frozen=True)
class Phase:
    """What a client process needs to run its share of one phase (picklable)."""

    kind: str
    """"baseline" or "booking"."""
    url: str
    key_file: str
    world: World
    seconds: float
    days: int


# Each client books again and again for its one patient: lift the anti-squatting caps (a rule
# for patient callers, with its advisory lock kept) so that the run measures bookings, not
# refusals. Set at import, so every client process (``--processes``) gets it.
booking_services.MAX_LIVE_PER_RECORD = 10**9
booking_services.MAX_LIVE_PER_ACCOUNT = 10**9


def _setup(runtime: Runtime, patients: int) -> World:
    tenant = create_bench_organization(runtime)
    sessions = runtime.tenant_sessions(tenant)
    with transaction(sessions) as session:
        organization = session.get(Organization, tenant)
        assert organization is not None
        site = add_site(
            session,
            organization,
            name="Centre",
            address_line="1 rue du Banc",
            postal_code="75001",
            city="Paris",
            opening_hours=HOURS,
            sampling_capacity_per_hour=120,
        ).id
        audit = AuditTrail(session, SETUP)
        SiteScheduleService(session, audit, tenant).set_schedule(
            site, opening_hours=HOURS, slot_minutes=5, sampling_boxes=10, walk_in_boxes=1
        )
        catalog = ExamCatalog(session, audit, tenant)
        exams = [catalog.create(raw).id for raw in EXAMS]
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SETUP)
        created = PatientRepository(session, keyring).register_many(
            list(synthetic_patients(patients, seed=11))
        )
        ids = list(created.created.values())
    return World(tenant, site, exams, ids)


def _run_threads(
    clients: int,
    seconds: float,
    work: Callable[[int, float], None],
    first: int = 0,
    gate: Callable[[], object] | None = None,
) -> float:
    """Start ``clients`` threads together, numbered from ``first``; each runs
    ``work(number, deadline)``. ``gate``: waited on (other processes) once they are all
    ready. Wall time from the start to the last one's end."""
    barrier = threading.Barrier(clients + 1)

    def run(number: int) -> None:
        barrier.wait()
        work(number, time.perf_counter() + seconds)

    threads = [threading.Thread(target=run, args=(first + n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    if gate is not None:
        gate()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def _create_baseline_table(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE IF NOT EXISTS bench_baseline "
                "(id uuid PRIMARY KEY, n integer NOT NULL, at timestamptz NOT NULL)"
            )
        )


def _baseline(
    engine: Engine,
    clients: int,
    seconds: float,
    first: int = 0,
    gate: Callable[[], object] | None = None,
) -> tuple[list[float], float, float]:
    """Latencies, wall time and this process's CPU seconds."""
    latencies: list[float] = []
    lock = threading.Lock()

    def work(number: int, deadline: float) -> None:
        mine: list[float] = []
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            with engine.begin() as connection:
                connection.execute(
                    text("INSERT INTO bench_baseline (id, n, at) VALUES (:id, :n, :at)"),
                    {"id": uuid.uuid4(), "n": number, "at": utcnow()},
                )
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    cpu = time.process_time()
    wall = _run_threads(clients, seconds, work, first, gate)
    return latencies, wall, time.process_time() - cpu


def _bookings(
    runtime: Runtime,
    sessions: sessionmaker[Session],
    world: World,
    clients: int,
    seconds: float,
    days: int,
    first: int = 0,
    gate: Callable[[], object] | None = None,
) -> tuple[Timings, float]:
    timings = Timings()
    today = utcnow().date()

    def work(number: int, deadline: float) -> None:
        rng = random.Random(number)
        patient = world.patients[number % len(world.patients)]
        principal = Principal(
            PrincipalKind.PATIENT, str(uuid.uuid5(uuid.NAMESPACE_URL, str(patient)))
        )
        mine = Timings()

        def service(session: Session) -> BookingService:
            keyring = TenantKeyring(session, runtime.key_provider, world.tenant, principal)
            scope = patient_scope(principal, world.tenant, frozenset({patient}), now=utcnow())
            return BookingService(session, keyring, scope, runtime.settings)

        while time.perf_counter() < deadline:
            exams = rng.sample(world.exams, rng.randint(1, 2))
            day = today + dt.timedelta(days=rng.randint(1, days))
            try:
                began = time.perf_counter()
                with audited_transaction(sessions) as session:
                    slots = service(session).search_slots(world.site, exams, day, day)
                searched = time.perf_counter()
                mine.search.append(searched - began)
                if not slots:
                    continue
                starts = rng.choice(slots).starts_at
                with audited_transaction(sessions) as session:
                    held = service(session).hold(patient, world.site, exams, starts)
                held_at = time.perf_counter()
                mine.hold.append(held_at - searched)
                with audited_transaction(sessions) as session:
                    service(session).confirm(held.id)
                done = time.perf_counter()
                mine.confirm.append(done - held_at)
                mine.booking.append(done - began)
            except SlotTakenError:
                mine.conflicts += 1
            except Exception as error:  # reported, not raised: the other clients go on
                mine.errors[type(error).__name__] = mine.errors.get(type(error).__name__, 0) + 1
        timings.merge(mine)

    cpu = time.process_time()
    wall = _run_threads(clients, seconds, work, first, gate)
    timings.cpu = time.process_time() - cpu
    return timings, wall


def _engine(runtime: Runtime, clients: int) -> Engine:
    return create_engine(
        runtime.settings.sqlalchemy_url,
        pool_size=clients,
        max_overflow=0,
        pool_timeout=120,
        hide_parameters=True,
    )


ProcessResult = tuple[list[float], Timings, float, float, str | None]
"""Baseline latencies, booking timings, wall seconds, baseline CPU seconds, error."""


def _client_process(
    phase: Phase,
    first: int,
    clients: int,
    gate: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[ProcessResult],
) -> None:
    """One client process (an application worker): its own runtime, engine and pool."""
    try:
        runtime = open_runtime(phase.url, key_file=Path(phase.key_file))
        engine = _engine(runtime, clients)
        try:
            if phase.kind == "baseline":
                latencies, wall, cpu = _baseline(engine, clients, phase.seconds, first, gate.wait)
                results.put((latencies, Timings(), wall, cpu, None))
            else:
                sessions = make_session_factory(engine, session_info(phase.world.tenant))
                timings, wall = _bookings(
                    runtime,
                    sessions,
                    phase.world,
                    clients,
                    phase.seconds,
                    phase.days,
                    first,
                    gate.wait,
                )
                results.put(([], timings, wall, 0.0, None))
        finally:
            engine.dispose()
            runtime.close()
    except BaseException as exc:
        results.put(([], Timings(), 0.0, 0.0, f"{type(exc).__name__}: {exc}"))
        raise


def _in_processes(
    phase: Phase, clients: int, processes: int
) -> tuple[list[float], Timings, float, float]:
    """Run ``phase`` with ``clients`` split over ``processes`` processes released together:
    the baseline's latencies, the bookings' timings, the longest process's wall time and the
    baseline's CPU seconds (all processes)."""
    context = multiprocessing.get_context("spawn")  # nothing of this process is inherited
    gate = context.Barrier(processes, timeout=300)
    results: multiprocessing.Queue[ProcessResult] = context.Queue()
    shares = [clients // processes + (n < clients % processes) for n in range(processes)]
    firsts = [sum(shares[:n]) for n in range(processes)]
    workers = [
        context.Process(
            target=_client_process, args=(phase, first, share, gate, results), daemon=True
        )
        for first, share in zip(firsts, shares, strict=True)
    ]
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    timings = Timings()
    walls: list[float] = []
    cpu = 0.0
    try:
        for _ in workers:
            try:
                got, theirs, wall, their_cpu, error = results.get(timeout=phase.seconds + 600)
            except Empty:
                raise SystemExit(f"{phase.kind}: a client process did not answer") from None
            if error is not None:
                raise SystemExit(f"{phase.kind}: a client process failed: {error}")
            latencies += got
            timings.merge(theirs)
            walls.append(wall)
            cpu += their_cpu
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.terminate()
    return latencies, timings, max(walls), cpu


def _ms(samples: list[float]) -> tuple[str, str]:
    if len(samples) < 2:
        return "-", "-"
    cut = percentiles(samples)
    return f"{cut.p50 * 1e3:.1f}", f"{cut.p99 * 1e3:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.booking", description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0, help="booking phase")
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument("--days", type=int, default=14, help="days ahead the clients book")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="client processes (application workers) sharing the clients; 1: threads only",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.processes <= args.clients:
        parser.error("--processes must be between 1 and --clients")
    exit_cleanly_on_sigterm()
    console.print(machine_table(("postgresql",)))

    with tempfile.TemporaryDirectory(prefix="labvault-bench-booking-") as tmp:
        key_file = FileKeyProvider.create(Path(tmp) / "keys" / "root.key").path
        with fresh_database("postgresql", Path(tmp)) as url:
            runtime = open_runtime(url, key_file=key_file)
            engine = _engine(runtime, args.clients)
            try:
                world = _setup(runtime, args.patients)
                _create_baseline_table(engine)
                if args.processes == 1:
                    sessions = make_session_factory(engine, session_info(world.tenant))
                    base, base_wall, base_cpu = _baseline(
                        engine, args.clients, args.baseline_seconds
                    )
                    timings, wall = _bookings(
                        runtime, sessions, world, args.clients, args.seconds, args.days
                    )
                else:
                    engine.dispose()  # the client processes open their own
                    spec = Phase("baseline", url, str(key_file), world, 0.0, args.days)
                    base, _, base_wall, base_cpu = _in_processes(
                        replace(spec, seconds=args.baseline_seconds), args.clients, args.processes
                    )
                    _, timings, wall, _ = _in_processes(
                        replace(spec, kind="booking", seconds=args.seconds),
                        args.clients,
                        args.processes,
                    )
            finally:
                engine.dispose()
                runtime.close()

    booked = len(timings.booking)
    rate = booked / wall if wall else 0.0
    base_rate = len(base) / base_wall if base_wall else 0.0
    table = Table(
        title=f"{args.clients} concurrent clients in {args.processes} process"
        f"{'es' if args.processes > 1 else ''} on PostgreSQL: {booked:,} bookings in "
        f"{wall:.1f} s ({timings.conflicts} slot conflicts"
        + (f", errors {timings.errors}" if timings.errors else "")
        + ")"
    )
    for column in ("operation", "per second", "p50 ms", "p99 ms", "ratio to baseline (rate)"):
        table.add_column(column, justify="right")
    table.add_row("baseline: 1-row INSERT txn", f"{base_rate:,.0f}", *_ms(base), "1.0x")
    table.add_row(
        "booking (search+hold+confirm)",
        f"{rate:,.1f}",
        *_ms(timings.booking),
        f"{base_rate / rate:,.1f}x slower" if rate else "-",
    )
    for name, samples in (
        ("  slot search (1 day)", timings.search),
        ("  hold", timings.hold),
        ("  confirm", timings.confirm),
    ):
        table.add_row(name, "", *_ms(samples), "")
    table.caption = (
        f"CPU of the client process{'es' if args.processes > 1 else ''} (the application's "
        f"side; the server's is not counted): {base_cpu / max(1, len(base)) * 1e3:.2f} ms per "
        f"baseline transaction, {timings.cpu / max(1, booked) * 1e3:.1f} ms per booking"
    )
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
