"""The cost of read budgets: ``BudgetStore.charge`` per backend, and the decrypt path with and
without the guard, in the same run.

    python -m bench.guard [--charges 2000] [--batch 1] [--repeat 3] [--opens 500]
                          [--backend sqlite --backend postgresql] [--redis-url redis://...]

1. ``charge()`` alone: µs per call of one request of ``--batch`` new patients, for the
   memory store, the database store (SQLite side file; PostgreSQL table with its advisory
   lock and row-level security) and Redis (one Lua script), against a baseline that does
   the same bookkeeping with no store (a dict). Calls rotate over 50 principals with a
   large budget so that none is refused (a refusal is cheaper: nothing is written).
2. The decrypt path: ``TenantKeyring.open_data_keys`` of one patient (guards, audit
   event, unwrap with the file key provider) on a real migrated database, with no guard
   and then with a ``BudgetGuard`` on each store; the ratio is guarded / unguarded time.

Figures are best and median of ``--repeat``; ratios are of the best runs. Unreachable
PostgreSQL or Redis: their rows say so and the rest is printed. Always exits 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from rich.table import Table

from bench.common import (
    console,
    create_bench_organization,
    exit_cleanly_on_sigterm,
    fresh_database,
    machine_table,
    open_runtime,
)
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.security.budget_backends import DatabaseBudgetStore, RedisBudgetStore
from labvault.security.budgets import (
    BudgetGuard,
    BudgetLimits,
    BudgetPolicy,
    BudgetStore,
    MemoryBudgetStore,
)

StoreFactory = Callable[[], tuple[BudgetStore | None, uuid.UUID]]
BIG = BudgetLimits(10**7, 10**7, 10**7)
PRINCIPALS = 50
T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)


def _ms(samples: list[float]) -> tuple[float, float]:
    return min(samples), statistics.median(samples)


def _time_charges(store: BudgetStore | None, tenant: uuid.UUID, charges: int, batch: int) -> float:
    """µs per charge; ``None``: the baseline bookkeeping without a store."""
    principals = [f"staff:{uuid.uuid4()}" for _ in range(PRINCIPALS)]
    subjects = [[os.urandom(16) for _ in range(batch)] for _ in range(charges)]
    seen: dict[str, dict[bytes, float]] = {}
    start = time.perf_counter_ns()
    for i in range(charges):
        key = principals[i % PRINCIPALS]
        if store is None:
            reads = seen.setdefault(key, {})
            for subject in subjects[i]:
                reads[subject] = 0.0
        else:
            decision = store.charge(tenant, key, subjects[i], T0, BIG)
            assert decision.allowed
    return (time.perf_counter_ns() - start) / charges / 1000


@contextmanager
def _stores(
    backends: list[str], workdir: Path, redis_url: str
) -> Iterator[dict[str, StoreFactory | str]]:
    """Factories of fresh stores by name (a string: why it is unavailable)."""
    made: dict[str, StoreFactory | str] = {
        "baseline (no store)": lambda: (None, uuid.uuid4()),
        "memory": lambda: (MemoryBudgetStore(), uuid.uuid4()),
    }
    with ExitStack() as stack:
        for backend in backends:
            try:
                url = stack.enter_context(fresh_database(backend, workdir))
            except Exception as exc:  # the table says why
                made[f"database ({backend})"] = f"unavailable ({type(exc).__name__})"
                continue
            key_file = workdir / f"charge-{backend}.key"
            FileKeyProvider.create(key_file)
            runtime = open_runtime(url, key_file=key_file)
            stack.callback(runtime.close)
            made[f"database ({backend})"] = _database_store_factory(runtime)
        try:
            import redis

            redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
            prefix = f"labvault-bench:{uuid.uuid4().hex[:12]}"
            made["redis"] = lambda: (RedisBudgetStore(redis_url, prefix=prefix), uuid.uuid4())
            stack.callback(_drop_redis_keys, redis_url, prefix)
        except Exception as exc:
            made["redis"] = f"unavailable ({type(exc).__name__})"
        yield made


def _database_store_factory(runtime: Runtime) -> StoreFactory:
    tenant = create_bench_organization(runtime)  # the table's tenant must exist
    return lambda: (DatabaseBudgetStore(runtime.engine), tenant)


def _drop_redis_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def charge_table(
    factories: dict[str, StoreFactory | str],
    charges: int,
    batch: int,
    repeat: int,
) -> Table:
    table = Table(title=f"charge(): one request of {batch} new patient(s), {charges} calls")
    for column in ("store", "µs/charge best", "median", "charges/s (best)", "ratio to baseline"):
        table.add_column(column, justify="right")
    base: float | None = None
    for name, factory in factories.items():
        if isinstance(factory, str):
            table.add_row(name, factory, "", "", "")
            continue
        samples = []
        for _ in range(repeat):
            store, tenant = factory()
            try:
                _time_charges(store, tenant, min(100, charges), batch)  # warm-up
                samples.append(_time_charges(store, tenant, charges, batch))
            finally:
                if store is not None:
                    store.close()
        best, median = _ms(samples)
        if base is None:
            base = best
        table.add_row(
            name,
            f"{best:.1f}",
            f"{median:.1f}",
            f"{1e6 / best:,.0f}",
            f"{best / base:.1f}x",
        )
    return table


def _seed(runtime: Runtime, tenant: uuid.UUID, count: int) -> list[uuid.UUID]:
    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(
            session, runtime.key_provider, tenant, SystemPrincipal("bench:seed")
        )
        people = list(synthetic_patients(count, seed=7))
        return list(PatientRepository(session, keyring).register_many(people).created.values())


def _time_opens(
    runtime: Runtime, tenant: uuid.UUID, patients: list[uuid.UUID], guard: BudgetGuard | None
) -> float:
    """µs per ``open_data_keys`` of one patient, one transaction each (a request)."""
    principal = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="receptionist")
    guards = [] if guard is None else [guard]
    start = time.perf_counter_ns()
    for patient in patients:
        with transaction(runtime.sessions) as session:
            keyring = TenantKeyring(session, runtime.key_provider, tenant, principal, guards)
            keyring.open_data_keys("patient", [patient], "care")
    return (time.perf_counter_ns() - start) / len(patients) / 1000


def decrypt_table(backend: str, workdir: Path, redis_url: str, opens: int, repeat: int) -> Table:
    table = Table(title=f"open_data_keys of one patient per request ({backend}), {opens} opens")
    for column in ("guard", "µs/open best", "median", "ratio to no guard"):
        table.add_column(column, justify="right")
    try:
        database = fresh_database(backend, workdir)
        url = database.__enter__()
    except Exception as exc:
        table.add_row("-", f"unavailable ({type(exc).__name__})", "", "")
        return table
    key_file = workdir / f"root-{backend}.key"
    FileKeyProvider.create(key_file)
    runtime = open_runtime(url, key_file=key_file)
    try:
        tenant = create_bench_organization(runtime)
        patients = _seed(runtime, tenant, opens)
        policy = BudgetPolicy({"staff:receptionist": (10**7, 10**7, 10**7)})

        def guarded(store: BudgetStore) -> BudgetGuard:
            guard = BudgetGuard.from_runtime(runtime, store)
            guard.policy = policy
            return guard

        ways: dict[str, Callable[[], BudgetGuard | None] | str] = {
            "none": lambda: None,
            "memory": lambda: guarded(MemoryBudgetStore()),
            "database": lambda: guarded(DatabaseBudgetStore(runtime.engine)),
        }
        try:
            import redis

            redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
            prefix = f"labvault-bench:{uuid.uuid4().hex[:12]}"
            ways["redis"] = lambda: guarded(RedisBudgetStore(redis_url, prefix=prefix))
        except Exception as exc:
            ways["redis"] = f"unavailable ({type(exc).__name__})"
            prefix = ""
        # Interleaved (none, memory, database, redis, none, ...): noise spreads over all.
        samples: dict[str, list[float]] = {n: [] for n, m in ways.items() if not isinstance(m, str)}
        _time_opens(runtime, tenant, patients[:20], None)  # warm-up (connections, caches)
        for _ in range(repeat):
            for name, make in ways.items():
                if isinstance(make, str):
                    continue
                guard = make()
                samples[name].append(_time_opens(runtime, tenant, patients, guard))
                if guard is not None:
                    guard.store.close()
        base = min(samples["none"])
        for name, make in ways.items():
            if isinstance(make, str):
                table.add_row(name, make, "", "")
                continue
            best, median = _ms(samples[name])
            table.add_row(name, f"{best:.0f}", f"{median:.0f}", f"{best / base:.2f}x")
        if prefix:
            _drop_redis_keys(redis_url, prefix)
    finally:
        runtime.close()
        with suppress(Exception):
            database.__exit__(None, None, None)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--charges", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--opens", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", action="append", choices=("sqlite", "postgresql"))
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("LABVAULT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args(argv)
    backends = args.backend or ["sqlite", "postgresql"]
    exit_cleanly_on_sigterm()
    console.print(machine_table(backends))
    with tempfile.TemporaryDirectory(prefix="labvault-bench-guard-") as directory:
        workdir = Path(directory)
        with _stores(backends, workdir, args.redis_url) as factories:
            console.print(charge_table(factories, args.charges, args.batch, args.repeat))
        for backend in backends:
            console.print(decrypt_table(backend, workdir, args.redis_url, args.opens, args.repeat))


if __name__ == "__main__":
    main()
