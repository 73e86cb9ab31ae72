"""Slot search and booking on PostgreSQL with concurrent clients: bookings/s, p50, p99.

    python -m bench.booking [--clients 50] [--seconds 20] [--baseline-seconds 5]
                            [--days 14] [--patients 200]

On a fresh migrated database of the server the tests use (``LABVAULT_BENCH_PG_ADMIN_URL``,
see ``bench/README.md``), with a real key file, one organization, one site open every day
07:00-19:00 in 5-minute slots with 10 boxes (1 kept for walk-ins), an exam catalog and
``--patients`` patients (setup untimed):

1. baseline: ``--clients`` threads, each in a loop of one transaction inserting one row into
   a plain table (uuid, integer, timestamp; no index but its key), on the same engine and
   pool, for ``--baseline-seconds``;
2. booking: ``--clients`` threads, each acting as a patient account (its own access scope and
   keyring, as the API builds them), in a loop for ``--seconds``: search the slots of one
   random day among the next ``--days`` (one transaction), pick a random slot, hold it
   (one transaction: validation, sealed exams, slot claims, audit), confirm it (one more).
   A slot taken between search and hold counts as a conflict and the client searches again.

Figures: bookings/s (confirmed bookings over the run's wall time), the p50/p99 latency of a
whole booking (search + hold + confirm) and of each step, conflicts; the baseline's
transactions/s and p50/p99; ratios. Clients are threads of one process: Python work (sealing,
SQLAlchemy) shares one interpreter lock, as one application worker does; the baseline runs
the same way. Compare figures only between runs on the same machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

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


@dataclass(frozen=True)
class World:
    tenant: uuid.UUID
    site: uuid.UUID
    exams: list[uuid.UUID]
    patients: list[uuid.UUID]


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


def _run_threads(clients: int, seconds: float, work: Callable[[int, float], None]) -> float:
    """Start ``clients`` threads together; each runs ``work(number, deadline)``. Wall time."""
    barrier = threading.Barrier(clients + 1)

    def run(number: int) -> None:
        barrier.wait()
        work(number, time.perf_counter() + seconds)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def _baseline(engine: Engine, clients: int, seconds: float) -> tuple[list[float], float]:
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE IF NOT EXISTS bench_baseline "
                "(id uuid PRIMARY KEY, n integer NOT NULL, at timestamptz NOT NULL)"
            )
        )
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

    return latencies, _run_threads(clients, seconds, work)


def _bookings(
    runtime: Runtime,
    sessions: sessionmaker[Session],
    world: World,
    clients: int,
    seconds: float,
    days: int,
) -> tuple[Timings, float]:
    timings = Timings()
    today = utcnow().date()

    def work(number: int, deadline: float) -> None:
        rng = random.Random(number)
        patient = world.patients[number % len(world.patients)]
        principal = Principal(
            PrincipalKind.PATIENT, str(uuid.uuid5(uuid.NAMESPACE_URL, str(patient)))
        )
        search: list[float] = []
        hold: list[float] = []
        confirm: list[float] = []
        booking: list[float] = []
        conflicts = 0
        errors: dict[str, int] = {}

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
                search.append(searched - began)
                if not slots:
                    continue
                starts = rng.choice(slots).starts_at
                with audited_transaction(sessions) as session:
                    held = service(session).hold(patient, world.site, exams, starts)
                held_at = time.perf_counter()
                hold.append(held_at - searched)
                with audited_transaction(sessions) as session:
                    service(session).confirm(held.id)
                done = time.perf_counter()
                confirm.append(done - held_at)
                booking.append(done - began)
            except SlotTakenError:
                conflicts += 1
            except Exception as error:  # reported, not raised: the other clients go on
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
        with timings.lock:
            timings.search += search
            timings.hold += hold
            timings.confirm += confirm
            timings.booking += booking
            timings.conflicts += conflicts
            for name, count in errors.items():
                timings.errors[name] = timings.errors.get(name, 0) + count

    return timings, _run_threads(clients, seconds, work)


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
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    console.print(machine_table(("postgresql",)))

    with tempfile.TemporaryDirectory(prefix="labvault-bench-booking-") as tmp:
        key_file = FileKeyProvider.create(Path(tmp) / "keys" / "root.key").path
        with fresh_database("postgresql", Path(tmp)) as url:
            runtime = open_runtime(url, key_file=key_file)
            engine = create_engine(
                runtime.settings.sqlalchemy_url,
                pool_size=args.clients,
                max_overflow=0,
                pool_timeout=120,
                hide_parameters=True,
            )
            try:
                world = _setup(runtime, args.patients)
                sessions = make_session_factory(engine, session_info(world.tenant))
                base, base_wall = _baseline(engine, args.clients, args.baseline_seconds)
                timings, wall = _bookings(
                    runtime, sessions, world, args.clients, args.seconds, args.days
                )
            finally:
                engine.dispose()
                runtime.close()

    booked = len(timings.booking)
    rate = booked / wall if wall else 0.0
    base_rate = len(base) / base_wall if base_wall else 0.0
    table = Table(
        title=f"{args.clients} concurrent clients on PostgreSQL: {booked:,} bookings in "
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
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
