"""Read budgets in one process: sliding windows, exact counts, whole-batch refusal, threads,
and which limits apply to whom."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest

from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.crypto.secret import Secret
from labvault.security.budgets import (
    ANY_ROLE,
    DAY,
    HOUR,
    MONTH,
    BudgetLimits,
    BudgetPolicy,
    MemoryBudgetStore,
    SubjectDigester,
    parse_budget_key,
    principal_key,
)

T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
TENANT = uuid.uuid4()
LIMITS = BudgetLimits(per_hour=5, per_day=8, per_30_days=12)


def ids(n: int, prefix: str = "p") -> list[bytes]:
    return [f"{prefix}{i:04d}".encode() for i in range(n)]


def test_a_batch_over_the_hourly_budget_is_refused_whole_and_charges_nothing() -> None:
    store = MemoryBudgetStore()
    assert store.charge(TENANT, "staff:a", ids(4), T0, LIMITS).allowed
    refused = store.charge(TENANT, "staff:a", ids(3, "q"), T0, LIMITS)
    assert not refused.allowed
    assert (refused.window, refused.limit, refused.used, refused.asked) == (HOUR, 5, 4, 3)
    # Nothing of the refused batch was charged: exactly one more fits.
    assert store.charge(TENANT, "staff:a", ids(1, "q"), T0, LIMITS).allowed
    assert not store.charge(TENANT, "staff:a", ids(1, "r"), T0, LIMITS).allowed


def test_distinct_patients_count_once_per_window_and_again_after_it() -> None:
    store = MemoryBudgetStore()
    five = ids(5)
    assert store.charge(TENANT, "staff:a", five, T0, LIMITS).allowed
    for minute in range(1, 59):  # re-opening the same files all hour costs nothing
        assert store.charge(
            TENANT, "staff:a", five[:2], T0 + dt.timedelta(minutes=minute), LIMITS
        ).allowed
    assert store.charge(TENANT, "staff:a", five + five, T0, LIMITS).allowed, "duplicates"
    # An hour after their last read, the five leave the hourly window (not the daily one).
    later = T0 + dt.timedelta(minutes=59, seconds=1)
    assert not store.charge(TENANT, "staff:a", ids(1, "n"), later, LIMITS).allowed
    later = T0 + dt.timedelta(hours=1, minutes=59)
    decision = store.charge(TENANT, "staff:a", ids(4, "n"), later, LIMITS)
    assert not decision.allowed
    assert decision.window is DAY, "5 + 4 > 8 a day, though only 4 + 1 in the hour"
    assert store.charge(TENANT, "staff:a", ids(3, "n"), later, LIMITS).allowed


def test_the_30_day_window_and_its_purge() -> None:
    store = MemoryBudgetStore()
    day = dt.timedelta(days=1)
    for d in range(3):
        assert store.charge(TENANT, "staff:a", ids(4, f"d{d}"), T0 + d * day, LIMITS).allowed
    assert not store.charge(TENANT, "staff:a", ids(1, "x"), T0 + 3 * day, LIMITS).allowed
    assert store.charge(TENANT, "staff:a", ids(1, "x"), T0 + 30 * day, LIMITS).allowed
    reads = store._reads[(TENANT, "staff:a")]
    assert len(reads) == 9, "the first day's reads were purged"
    assert MONTH.seconds == 30 * 86400


def test_principals_and_tenants_have_their_own_budgets() -> None:
    store = MemoryBudgetStore()
    assert store.charge(TENANT, "staff:a", ids(5), T0, LIMITS).allowed
    assert store.charge(TENANT, "staff:b", ids(5), T0, LIMITS).allowed
    assert store.charge(uuid.uuid4(), "staff:a", ids(5), T0, LIMITS).allowed
    assert not store.charge(TENANT, "staff:a", ids(1, "z"), T0, LIMITS).allowed


def test_threads_never_get_more_than_the_budget() -> None:
    store = MemoryBudgetStore()
    limits = BudgetLimits(100, 100, 100)
    admitted: list[int] = []
    lock = threading.Lock()

    def scrape(worker: int) -> None:
        for batch in range(40):
            subjects = [f"w{worker}b{batch}s{i}".encode() for i in range(3)]
            if store.charge(TENANT, "service:x", subjects, T0, limits).allowed:
                with lock:
                    admitted.append(len(subjects))

    threads = [threading.Thread(target=scrape, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 99, "33 whole batches of 3 fit in 100, no partial one"


def test_limits_follow_the_role_then_the_kind_then_the_defaults() -> None:
    tenant = uuid.uuid4()
    own = {("staff", "receptionist"): BudgetLimits(10, 20, 30)}
    policy = BudgetPolicy(
        {"staff:sampler": (7, 8, 9), "service": (1, 2, 3)},
        organization_limits=lambda t: own if t == tenant else {},
    )
    receptionist = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="receptionist")
    sampler = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="sampler")
    odd = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="courier")
    patient = Principal(PrincipalKind.PATIENT, str(uuid.uuid4()))
    lis = Principal(PrincipalKind.SERVICE, f"service:{uuid.uuid4()}", role="lis")
    other = Principal(PrincipalKind.SERVICE, f"service:{uuid.uuid4()}", role="printer")
    assert policy.limits_for(tenant, receptionist) == BudgetLimits(10, 20, 30)
    assert policy.limits_for(uuid.uuid4(), receptionist) == BudgetLimits(700, 1400, 14000)
    assert policy.limits_for(tenant, sampler) == BudgetLimits(7, 8, 9)
    assert policy.limits_for(tenant, odd) == BudgetLimits(100, 400, 4000)
    assert policy.limits_for(tenant, patient) == BudgetLimits(20, 40, 200)
    assert policy.limits_for(tenant, lis) == BudgetLimits(5000, 30000, 300000)
    assert policy.limits_for(tenant, other) == BudgetLimits(1, 2, 3)
    assert policy.limits_for(tenant, SystemPrincipal("cli:import")) is None, "jobs are exempt"
    anonymous = Principal(PrincipalKind.ANONYMOUS, "anonymous")
    assert policy.limits_for(tenant, anonymous) == BudgetLimits(0, 0, 0)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("staff:receptionist", (PrincipalKind.STAFF, "receptionist")),
        ("patient", (PrincipalKind.PATIENT, ANY_ROLE)),
        ("service:*", (PrincipalKind.SERVICE, ANY_ROLE)),
    ],
)
def test_budget_keys(key: str, expected: tuple[PrincipalKind, str]) -> None:
    assert parse_budget_key(key) == expected


@pytest.mark.parametrize("key", ["system", "anonymous:x", "nurse", "staff:a b"])
def test_bad_budget_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_budget_key(key)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="per hour"):
        BudgetLimits(10, 5, 100)


def test_digests_are_keyed_per_tenant_and_name_no_patient() -> None:
    digester = SubjectDigester(Secret(b"k" * 32))
    patient = uuid.uuid4()
    (a,) = digester.digests(TENANT, [patient])
    (b,) = digester.digests(uuid.uuid4(), [patient])
    assert a != b
    assert len(a) == 16
    assert patient.bytes not in a
    assert principal_key(Principal(PrincipalKind.SERVICE, "service:abc")) == "service:abc"
    assert principal_key(Principal(PrincipalKind.STAFF, "abc")) == "staff:abc"


def _day(
    store: MemoryBudgetStore, principal: Principal, pages: list[tuple[dt.datetime, list[bytes]]]
) -> list[dt.datetime]:
    """Charge each page of a working day; when it was refused (nothing, for real work)."""
    policy = BudgetPolicy()
    limits = policy.limits_for(TENANT, principal)
    assert limits is not None
    key = principal_key(principal)
    return [at for at, page in pages if not store.charge(TENANT, key, page, at, limits).allowed]


def test_a_busy_sites_working_days_never_trip_the_default_budgets() -> None:
    """A site with 300 visits a day: the receptionist reloads the day's schedule every five
    minutes from 7:00 to 19:00 (all 300 patients each time), looks at tomorrow's twice, and
    opens each patient at check-in; a biologist validates 1,500 reports in lists of 50; a
    family account; an LIS matching a night batch. Twenty working days in a row."""
    store = MemoryBudgetStore()
    receptionist = Principal(PrincipalKind.STAFF, "r", role="receptionist")
    biologist = Principal(PrincipalKind.STAFF, "b", role="biologist")
    family = Principal(PrincipalKind.PATIENT, "f")
    lis = Principal(PrincipalKind.SERVICE, "service:lis", role="lis")
    refused: list[dt.datetime] = []
    for day in range(20):
        morning = T0.replace(hour=6) + dt.timedelta(days=day)
        today = ids(300, f"d{day}-")
        tomorrow = ids(300, f"d{day + 1}-")
        pages = [(morning + dt.timedelta(minutes=5 * i), today) for i in range(144)]
        pages += [(morning + dt.timedelta(hours=h), tomorrow) for h in (4, 10)]
        pages += [(morning + dt.timedelta(minutes=2 * i), [p]) for i, p in enumerate(today)]
        refused += _day(store, receptionist, sorted(pages, key=lambda page: page[0]))
        reports = ids(1500, f"r{day}-")
        refused += _day(
            store,
            biologist,
            [
                (morning + dt.timedelta(minutes=16 * i), reports[50 * i : 50 * i + 50])
                for i in range(30)
            ],
        )
        refused += _day(
            store, family, [(morning + dt.timedelta(hours=h), ids(4, "fam")) for h in range(12)]
        )
        batch = ids(4000, f"n{day}-")
        refused += _day(
            store,
            lis,
            [
                (
                    morning - dt.timedelta(hours=3) + dt.timedelta(minutes=i),
                    batch[100 * i : 100 * i + 100],
                )
                for i in range(40)
            ],
        )
    assert refused == []
