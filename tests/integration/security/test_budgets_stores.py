"""The shared read-budget stores keep the memory store's contract: the database (SQLite side
file, PostgreSQL table with row-level security) and Redis; concurrent charges never admit
more than the budget, and two OS processes on one Redis enforce one budget."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from budget_process import scrape
from sqlalchemy import func, select, text

from conftest import require_component
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.security.budget_backends import DatabaseBudgetStore, RedisBudgetStore
from labvault.security.budget_models import ReadBudgetRead
from labvault.security.budgets import DAY, HOUR, BudgetLimits, BudgetStore

REDIS_URL = os.environ.get("LABVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
LIMITS = BudgetLimits(per_hour=5, per_day=8, per_30_days=12)


def ids(n: int, prefix: str = "p") -> list[bytes]:
    return [f"{prefix}{i:04d}".encode() for i in range(n)]


def _contract(store: BudgetStore, tenant: uuid.UUID) -> None:
    """The same story every store must tell."""
    assert store.charge(tenant, "staff:a", ids(4), T0, LIMITS).allowed
    refused = store.charge(tenant, "staff:a", ids(3, "q"), T0, LIMITS)
    assert (refused.allowed, refused.window, refused.used, refused.asked) == (False, HOUR, 4, 3)
    assert store.charge(tenant, "staff:a", ids(1, "q") + ids(4), T0, LIMITS).allowed
    assert not store.charge(tenant, "staff:a", ids(1, "r"), T0, LIMITS).allowed
    assert store.charge(tenant, "staff:b", ids(5), T0, LIMITS).allowed, "per principal"
    later = T0 + dt.timedelta(hours=1, minutes=1)
    decision = store.charge(tenant, "staff:a", ids(4, "n"), later, LIMITS)
    assert (decision.allowed, decision.window) == (False, DAY)
    assert store.charge(tenant, "staff:a", ids(3, "n"), later, LIMITS).allowed
    month = T0 + dt.timedelta(days=30, minutes=1)
    assert store.charge(tenant, "staff:a", ids(5, "m"), month, LIMITS).allowed, "purged"


def _hammer(store: BudgetStore, tenant: uuid.UUID, workers: int = 6) -> int:
    limits = BudgetLimits(60, 60, 60)
    admitted: list[int] = []
    lock = threading.Lock()

    def scrape(worker: int) -> None:
        for batch in range(15):
            subjects = [f"w{worker}b{batch}s{i}".encode() for i in range(2)]
            if store.charge(tenant, "service:x", subjects, T0, limits).allowed:
                with lock:
                    admitted.append(len(subjects))

    threads = [threading.Thread(target=scrape, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(admitted)


@pytest.fixture
def tenant(runtime: Runtime) -> uuid.UUID:
    with transaction(runtime.sessions) as session:
        return create_organization(session, runtime.key_provider, "Labo Budget").id


def test_the_database_store_keeps_the_contract_and_is_exact_under_concurrency(
    runtime: Runtime, tenant: uuid.UUID, backend: str
) -> None:
    store = DatabaseBudgetStore(runtime.engine)
    try:
        _contract(store, tenant)
        assert _hammer(store, tenant) == 60
        if backend == "sqlite":
            side = Path(str(runtime.engine.url.database)).parent / "budgets.sqlite3"
            assert side.exists()
            assert side.stat().st_mode & 0o777 == 0o600
        else:
            # Row-level security: another tenant's transaction sees none of these rows.
            with runtime.tenant_sessions(uuid.uuid4())() as session:
                assert session.scalar(select(func.count()).select_from(ReadBudgetRead)) == 0
            with runtime.tenant_sessions(tenant)() as session:
                rows = session.scalar(select(func.count()).select_from(ReadBudgetRead))
                assert rows is not None
                assert rows > 60
        assert store.purge(tenant, T0 + dt.timedelta(days=61)) > 0
        assert store.purge(tenant, T0 + dt.timedelta(days=61)) == 0
    finally:
        store.close()


def _principals(runtime: Runtime, store: DatabaseBudgetStore, tenant: uuid.UUID) -> list[str]:
    """Whose reads the store holds (PostgreSQL: through the tenant's row-level security)."""
    query = text("SELECT DISTINCT principal_key FROM read_budget_reads")
    if store.engine is runtime.engine:
        with runtime.tenant_sessions(tenant)() as session:
            return [row[0] for row in session.execute(query)]
    with store.engine.connect() as connection:
        return [row[0] for row in connection.execute(query)]


def test_an_idle_principals_reads_are_purged_after_30_days(
    runtime: Runtime, tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labvault.security import budget_backends

    store = DatabaseBudgetStore(runtime.engine)
    try:
        store.charge(tenant, "staff:gone", ids(3), T0, LIMITS)
        monkeypatch.setattr(budget_backends, "PURGE_TENANT_EVERY", 1)
        store.charge(tenant, "staff:other", ids(1), T0 + dt.timedelta(days=31), LIMITS)
        assert _principals(runtime, store, tenant) == ["staff:other"]
    finally:
        store.close()


def test_the_database_store_holds_no_patient_id(runtime: Runtime, tenant: uuid.UUID) -> None:
    """Digests only: the guard hands the store keyed digests, and the store keeps them."""
    store = DatabaseBudgetStore(runtime.engine)
    try:
        store.charge(tenant, "staff:a", [b"\x01" * 16], T0, LIMITS)
        with store.engine.connect() as connection:
            columns = connection.execute(text("SELECT * FROM read_budget_reads")).keys()
        assert set(columns) == {
            "id",
            "tenant_id",
            "principal_key",
            "subject_digest",
            "last_read_at",
        }
    finally:
        store.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        require_component(f"Redis is not reachable at {REDIS_URL}: {type(exc).__name__}")
    prefix = f"labvault-test:{uuid.uuid4().hex}"
    yield prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.mark.redis
def test_the_redis_store_keeps_the_contract_and_is_exact_under_concurrency(
    redis_prefix: str,
) -> None:
    store = RedisBudgetStore(REDIS_URL, prefix=redis_prefix)
    try:
        _contract(store, uuid.uuid4())
        assert _hammer(store, uuid.uuid4()) == 60
    finally:
        store.close()


@pytest.mark.redis
def test_two_app_processes_on_one_redis_enforce_one_budget(redis_prefix: str) -> None:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[int] = context.Queue()
    tenant = str(uuid.uuid4())
    processes = [
        context.Process(target=scrape, args=(REDIS_URL, redis_prefix, tenant, n, results))
        for n in range(2)
    ]
    for process in processes:
        process.start()
    admitted = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    results.close()
    results.join_thread()
    assert sum(admitted) == 50, admitted
