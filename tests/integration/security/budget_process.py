"""A scraper process for the two-process Redis test: imports the store only (spawn-fast)."""

from __future__ import annotations

import datetime as dt
import uuid
from multiprocessing.queues import Queue

from labvault.security.budget_backends import RedisBudgetStore
from labvault.security.budgets import BudgetLimits

T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)


def scrape(url: str, prefix: str, tenant: str, worker: int, results: Queue[int]) -> None:
    """Charge 40 batches of 2 new patients to one shared principal; report what got in."""
    store = RedisBudgetStore(url, prefix=prefix)
    admitted = 0
    limits = BudgetLimits(50, 50, 50)
    for batch in range(40):
        subjects = [f"proc{worker}b{batch}s{i}".encode() for i in range(2)]
        if store.charge(uuid.UUID(tenant), "staff:shared", subjects, T0, limits).allowed:
            admitted += len(subjects)
    store.close()
    results.put(admitted)
