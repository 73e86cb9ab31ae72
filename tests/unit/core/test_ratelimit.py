"""Rate limits on memory storage: budgets, windows, reset, key isolation, progressive delays."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from limits.errors import StorageError

from labvault.core.config import ConfigurationError, Settings
from labvault.core.ratelimit import (
    IDENTIFIER_PATTERN,
    LOCKOUT_AFTER_FAILURES,
    LOGIN_ACCOUNT_HOUR,
    LOGIN_ACCOUNT_MINUTE,
    LOGIN_CLIENT_MINUTE,
    LOGIN_GLOBAL_SECOND,
    MIN_RETRY_AFTER,
    PROGRESSIVE_DELAY_CAP,
    PROGRESSIVE_DELAY_FREE_FAILURES,
    UNAVAILABLE_RETRY_AFTER,
    LimitsRateLimiter,
    RateDecision,
    RateLimiter,
    RateLimiterUnavailable,
    RateRule,
    hashed_identifier,
    progressive_delay,
)
from labvault.core.runtime import Runtime

KEY = b"k" * 32


def ident() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def limiter() -> Iterator[LimitsRateLimiter]:
    limiter = LimitsRateLimiter("memory://")
    yield limiter
    limiter.close()


def test_the_limit_is_reached_exactly(limiter: LimitsRateLimiter) -> None:
    rule = RateRule("test:exact", "3/minute")
    who = ident()
    decisions = [limiter.hit(rule, who) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0]
    assert [d.retry_after for d in decisions[:3]] == [0.0, 0.0, 0.0]
    for denied in decisions[3:]:
        assert 59.0 < denied.retry_after <= 60.0


def test_test_counts_nothing(limiter: LimitsRateLimiter) -> None:
    rule = RateRule("test:peek", "2/minute")
    who = ident()
    for _ in range(5):
        assert limiter.test(rule, who) == RateDecision(allowed=True, retry_after=0.0, remaining=2)
    limiter.hit(rule, who)
    assert limiter.test(rule, who).remaining == 1
    limiter.hit(rule, who)
    peek = limiter.test(rule, who)
    assert not peek.allowed
    assert peek.remaining == 0
    assert peek.retry_after > 0


def test_denied_hits_do_not_extend_the_wait(limiter: LimitsRateLimiter) -> None:
    rule = RateRule("test:denied", "1/minute")
    who = ident()
    assert limiter.hit(rule, who).allowed
    first = limiter.hit(rule, who)
    time.sleep(0.05)
    later = limiter.hit(rule, who)
    assert not first.allowed
    assert not later.allowed
    assert later.retry_after < first.retry_after  # measured from the granted hit


def test_the_window_moves(limiter: LimitsRateLimiter) -> None:
    rule = RateRule("test:window", "2/second")
    who = ident()
    assert limiter.hit(rule, who).allowed
    time.sleep(0.5)
    assert limiter.hit(rule, who).allowed
    denied = limiter.hit(rule, who)
    assert not denied.allowed
    assert 0 < denied.retry_after <= 0.55  # the first hit leaves the window first
    time.sleep(denied.retry_after + 0.05)
    assert limiter.hit(rule, who).allowed  # one slot back: the first hit expired...
    assert not limiter.hit(rule, who).allowed  # ...but not the second one (moving window)


def test_reset_gives_the_budget_back(limiter: LimitsRateLimiter) -> None:
    rule = RateRule("test:reset", "2/hour")
    who, other = ident(), ident()
    for _ in range(2):
        limiter.hit(rule, who)
        limiter.hit(rule, other)
    assert not limiter.hit(rule, who).allowed
    limiter.reset(rule, who)
    assert limiter.hit(rule, who) == RateDecision(allowed=True, retry_after=0.0, remaining=1)
    assert not limiter.hit(rule, other).allowed  # only the named identifiers are reset


def test_keys_are_independent(limiter: LimitsRateLimiter) -> None:
    rule = RateRule("test:a", "1/minute")
    same_limit_other_name = RateRule("test:b", "1/minute")
    a, b = ident(), ident()
    assert limiter.hit(rule, a).allowed
    assert not limiter.hit(rule, a).allowed
    assert limiter.hit(rule, b).allowed
    assert limiter.hit(same_limit_other_name, a).allowed
    assert limiter.hit(rule, a, b).allowed  # a composite key is its own key
    assert limiter.hit(rule).allowed  # so is the identifier-less (global) key
    assert not limiter.hit(rule).allowed


def test_memory_storage_is_per_limiter() -> None:
    rule = RateRule("test:local", "1/minute")
    who = ident()
    first, second = LimitsRateLimiter("memory://"), LimitsRateLimiter("memory://")
    try:
        assert first.hit(rule, who).allowed
        assert second.hit(rule, who).allowed
    finally:
        first.close()
        second.close()


def test_concurrent_threads_share_the_budget_exactly(limiter: LimitsRateLimiter) -> None:
    rule = RateRule("test:threads", "25/minute")
    who = ident()
    allowed: list[bool] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        results = [limiter.hit(rule, who).allowed for _ in range(10)]
        allowed.extend(results)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allowed) == 80
    assert sum(allowed) == 25


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(min_value=1, max_value=30), attempts=st.integers(0, 60))
def test_allowed_is_min_of_limit_and_attempts(limit: int, attempts: int) -> None:
    limiter = LimitsRateLimiter("memory://")
    try:
        rule = RateRule("test:prop", f"{limit}/hour")
        who = ident()
        decisions = [limiter.hit(rule, who) for _ in range(attempts)]
        assert sum(d.allowed for d in decisions) == min(limit, attempts)
        assert all(d.allowed for d in decisions[:limit])  # allowed first, then denied
        assert all(d.retry_after >= MIN_RETRY_AFTER for d in decisions[limit:])
    finally:
        limiter.close()


@pytest.mark.parametrize(
    "identifier",
    [
        "alice@example.com",
        "203.0.113.7",
        "2001:db8::1",
        "short",
        "a" * 129,
        "has/slash/in/it/0123456789",
        "with space 0123456789",
        "",
    ],
)
def test_identifiers_in_clear_are_refused(limiter: LimitsRateLimiter, identifier: str) -> None:
    rule = RateRule("test:refuse", "1/minute")
    for call in (limiter.hit, limiter.test, limiter.hit_or_deny, limiter.reset):
        with pytest.raises(ValueError, match="opaque tokens") as caught:
            call(rule, identifier)
        if identifier:
            assert identifier not in str(caught.value)
    # nothing was counted for a valid key either
    assert limiter.test(rule, ident()).remaining == 1


def test_hashed_identifier_is_keyed_opaque_and_stable() -> None:
    value = "alice@example.com"
    digest = hashed_identifier(KEY, value)
    assert IDENTIFIER_PATTERN.fullmatch(digest)
    assert digest == hashed_identifier(KEY, value)
    assert digest != hashed_identifier(b"x" * 32, value)
    assert digest != hashed_identifier(KEY, "bob@example.com")
    assert "alice" not in digest
    with pytest.raises(ValueError, match="16 bytes"):
        hashed_identifier(b"short", value)


def test_storage_keys_are_namespaced(limiter: LimitsRateLimiter) -> None:
    who = hashed_identifier(KEY, "203.0.113.7")
    key = limiter.storage_key(LOGIN_CLIENT_MINUTE, who)
    assert key == f"labvault:rl:login:client:minute/{who}/30/1/minute"
    other = LimitsRateLimiter("memory://", key_prefix="tenant-x:rl:")
    assert other.storage_key(LOGIN_CLIENT_MINUTE, who).startswith("tenant-x:rl:login:client:")
    other.close()
    with pytest.raises(ValueError, match="key_prefix"):
        LimitsRateLimiter("memory://", key_prefix="no-colon")


@pytest.mark.parametrize(
    ("name", "limit", "message"),
    [
        ("ok:name", "ten per minute", "not a limit"),
        ("ok:name", "", "not a limit"),
        ("ok:name", "10/minute;50/hour", "exactly one limit"),
        ("ok:name", "0/minute", "at least one"),
        ("Bad Name", "1/minute", "rule name"),
        ("with/slash", "1/minute", "rule name"),
        ("", "1/minute", "rule name"),
    ],
)
def test_bad_rules_are_refused(name: str, limit: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateRule(name, limit)


def test_rules_are_parsed_once() -> None:
    rule = RateRule("test:parsed", "5/15 minutes")
    assert rule.amount == 5
    assert rule.window_seconds == 15 * 60
    assert rule.item.namespace == "test:parsed"
    assert rule == RateRule("test:parsed", "5/15 minutes")


def test_default_login_rules() -> None:
    assert (LOGIN_ACCOUNT_MINUTE.amount, LOGIN_ACCOUNT_MINUTE.window_seconds) == (10, 60)
    assert (LOGIN_ACCOUNT_HOUR.amount, LOGIN_ACCOUNT_HOUR.window_seconds) == (50, 3600)
    assert (LOGIN_CLIENT_MINUTE.amount, LOGIN_CLIENT_MINUTE.window_seconds) == (30, 60)
    assert (LOGIN_GLOBAL_SECOND.amount, LOGIN_GLOBAL_SECOND.window_seconds) == (300, 1)
    names = {r.name for r in (LOGIN_ACCOUNT_MINUTE, LOGIN_ACCOUNT_HOUR, LOGIN_CLIENT_MINUTE)}
    assert len(names | {LOGIN_GLOBAL_SECOND.name}) == 4
    assert LOCKOUT_AFTER_FAILURES == 100  # NIST SP 800-63B: at most 100 consecutive failures


def test_a_decision_has_no_truth_value(limiter: LimitsRateLimiter) -> None:
    decision = limiter.hit(RateRule("test:bool", "1/minute"), ident())
    with pytest.raises(TypeError, match="allowed"):
        bool(decision)
    with pytest.raises(TypeError):
        _ = not decision  # as in "if not limiter.hit(...)": the fail-open mistake this prevents


def test_unknown_storage_scheme_is_a_configuration_error() -> None:
    for url in ("memcached://127.0.0.1:11211", "127.0.0.1:6379", "async+redis://127.0.0.1"):
        with pytest.raises(ConfigurationError, match="LABVAULT_RATELIMIT_STORAGE"):
            LimitsRateLimiter(url)


class _BrokenStrategy:
    """Stands for a storage that fails every call, as a down Redis does."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def hit(self, *args: object) -> bool:
        raise self.error

    def get_window_stats(self, *args: object) -> object:
        raise self.error

    def clear(self, *args: object) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ConnectionError("refused"),
        redis.exceptions.TimeoutError("timed out"),
        redis.exceptions.ReadOnlyError("READONLY"),
        StorageError(redis.exceptions.ConnectionError("wrapped")),
        ConnectionResetError("reset by peer"),
    ],
)
def test_storage_errors_fail_closed(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Every kind of error redis-py raises; the real outage is in the integration tests."""
    limiter = LimitsRateLimiter("redis://127.0.0.1:1/0")  # never contacted here
    monkeypatch.setattr(limiter, "_strategy", _BrokenStrategy(error))
    rule = RateRule("test:broken", "1000/minute")
    for call in (limiter.hit, limiter.test, limiter.reset):
        with pytest.raises(RateLimiterUnavailable, match="unavailable") as caught:
            call(rule, ident())
        assert caught.value.__cause__ is error
    denial = limiter.hit_or_deny(rule, ident())
    assert denial == RateDecision(allowed=False, retry_after=UNAVAILABLE_RETRY_AFTER, remaining=0)
    limiter.close()


def test_unavailable_message_has_no_credentials() -> None:
    limiter = LimitsRateLimiter("redis://user:s3cret@127.0.0.1:1/2?socket_timeout=0.1")
    with pytest.raises(RateLimiterUnavailable) as caught:
        limiter.hit(RateRule("test:creds", "1/minute"), ident())
    assert "s3cret" not in str(caught.value)
    assert "user" not in str(caught.value)
    assert "redis://127.0.0.1:1/2" in str(caught.value)
    assert "s3cret" not in repr(limiter)
    limiter.close()


def test_unexpected_errors_propagate_and_are_not_allowed(
    limiter: LimitsRateLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limiter, "_strategy", _BrokenStrategy(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        limiter.hit_or_deny(RateRule("test:bug", "1/minute"), ident())


def test_runtime_builds_the_configured_limiter(tmp_path: Path) -> None:
    runtime = Runtime(Settings(data_dir=tmp_path / "var"))
    try:
        limiter = runtime.rate_limiter
        assert isinstance(limiter, LimitsRateLimiter)
        assert limiter is runtime.rate_limiter
        checked: RateLimiter = limiter
        assert checked.hit(LOGIN_GLOBAL_SECOND).allowed
    finally:
        runtime.close()


# --- progressive delays -------------------------------------------------------------------


def test_progressive_delay_values() -> None:
    free = PROGRESSIVE_DELAY_FREE_FAILURES
    assert [progressive_delay(n) for n in range(free + 1)] == [0.0] * (free + 1)
    assert [progressive_delay(free + k) for k in range(1, 8)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]
    assert progressive_delay(LOCKOUT_AFTER_FAILURES) == PROGRESSIVE_DELAY_CAP
    assert progressive_delay(10**9) == PROGRESSIVE_DELAY_CAP
    with pytest.raises(ValueError, match=">= 0"):
        progressive_delay(-1)


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6))
def test_progressive_delay_is_monotone_and_capped(a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert 0.0 <= progressive_delay(low) <= progressive_delay(high) <= PROGRESSIVE_DELAY_CAP


@given(st.integers(min_value=0, max_value=200))
def test_progressive_delay_grows_until_the_cap(n: int) -> None:
    now, following = progressive_delay(n), progressive_delay(n + 1)
    if n >= PROGRESSIVE_DELAY_FREE_FAILURES and now < PROGRESSIVE_DELAY_CAP:
        assert following > now  # strictly growing once delays start, until capped
