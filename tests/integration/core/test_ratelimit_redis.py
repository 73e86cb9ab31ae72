"""Rate limits on a real Redis: one budget shared by separate processes, failing closed.

Each test writes under its own key prefix (``labvault:rl:test:<random>:``) and deletes its
keys afterwards. The server is ``LABVAULT_TEST_REDIS_URL`` (default 127.0.0.1:6379, db 0);
"Redis down" is a closed loopback port, a killed private ``redis-server``, or a socket that
accepts and never answers.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import require_component
from labvault.core.config import Settings
from labvault.core.ratelimit import (
    KEY_PREFIX,
    UNAVAILABLE_RETRY_AFTER,
    LimitsRateLimiter,
    RateDecision,
    RateLimiterUnavailable,
    RateRule,
    hashed_identifier,
)
from labvault.core.runtime import Runtime

REDIS_URL = os.environ.get("LABVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ID_KEY = b"integration-test-identifier-key!"


def ident() -> str:
    return uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: connecting to it is refused


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        require_component(f"Redis is not reachable at {REDIS_URL}: {type(exc).__name__}")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"{KEY_PREFIX}test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def limiter(prefix: str) -> Iterator[LimitsRateLimiter]:
    limiter = LimitsRateLimiter(REDIS_URL, key_prefix=prefix)
    yield limiter
    limiter.close()


# --- two app processes, one budget ---------------------------------------------------------


def _hit_many(
    storage_url: str,
    prefix: str,
    rule_name: str,
    limit: str,
    identifier: str,
    attempts: int,
    start: Barrier,
    results: multiprocessing.Queue[tuple[int, int]],
) -> None:
    """An app process: builds its own limiter from the URL, then hits the same rule."""
    limiter = LimitsRateLimiter(storage_url, key_prefix=prefix)
    rule = RateRule(rule_name, limit)
    start.wait(timeout=60)
    allowed = sum(limiter.hit(rule, identifier).allowed for _ in range(attempts))
    limiter.close()
    results.put((os.getpid(), allowed))


def _run_two_processes(storage_url: str, prefix: str, limit: int, attempts: int) -> list[int]:
    context = multiprocessing.get_context("spawn")  # fresh interpreters, nothing inherited
    start = context.Barrier(2)
    results: multiprocessing.Queue[tuple[int, int]] = context.Queue()
    identifier = hashed_identifier(ID_KEY, "alice@example.com")
    rule = ("test:shared", f"{limit}/minute")
    workers = [
        context.Process(
            target=_hit_many,
            args=(storage_url, prefix, *rule, identifier, attempts, start, results),
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        reports = [results.get(timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0, 0]
    pids = {pid for pid, _ in reports}
    assert len(pids) == 2
    assert os.getpid() not in pids
    return [allowed for _, allowed in reports]


@pytest.mark.redis
def test_two_processes_share_one_budget(
    prefix: str, limiter: LimitsRateLimiter, redis_client: redis.Redis
) -> None:
    limit, attempts = 50, 60
    allowed = _run_two_processes(REDIS_URL, prefix, limit, attempts)
    assert sum(allowed) == limit  # exactly: not 2 x 50, not fewer
    rule = RateRule("test:shared", f"{limit}/minute")
    identifier = hashed_identifier(ID_KEY, "alice@example.com")
    # this (third) process sees the same exhausted budget
    peek = limiter.test(rule, identifier)
    assert not peek.allowed
    assert 0 < peek.retry_after <= 60
    key = limiter.storage_key(rule, identifier)
    assert redis_client.llen(key) == limit
    assert 0 < redis_client.ttl(key) <= 60


def test_memory_storage_is_not_shared_between_processes() -> None:
    """The contrast that shows the Redis test above can fail: memory gives each its budget."""
    allowed = _run_two_processes("memory://", KEY_PREFIX, limit=50, attempts=60)
    assert allowed == [50, 50]


@pytest.mark.redis
def test_limiters_of_two_runtimes_share_the_budget(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    settings = Settings(data_dir=tmp_path / "var", ratelimit_storage=REDIS_URL)
    first, second = Runtime(settings), Runtime(settings)
    rule, who = RateRule(f"test:runtime-{ident()[:8]}", "3/minute"), ident()
    try:
        decisions = [runtime.rate_limiter.hit(rule, who) for runtime in (first, second) * 2]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        key = f"labvault:rl:{rule.name}/{who}/3/1/minute"
        assert redis_client.exists(key) == 1
        first.rate_limiter.reset(rule, who)
        assert redis_client.exists(key) == 0
        assert second.rate_limiter.hit(rule, who).allowed
    finally:
        first.rate_limiter.reset(rule, who)
        first.close()
        second.close()


@pytest.mark.redis
def test_keys_hold_no_personal_data_and_expire(
    limiter: LimitsRateLimiter, prefix: str, redis_client: redis.Redis
) -> None:
    email, address = "alice.martin@example.com", "203.0.113.7"
    account, client = hashed_identifier(ID_KEY, email), hashed_identifier(ID_KEY, address)
    rules = [RateRule("login:account:minute", "10/minute"), RateRule("login:client", "30/hour")]
    limiter.hit(rules[0], account)
    limiter.hit(rules[1], client)
    limiter.hit(rules[1], client, account)
    keys = sorted(k.decode() for k in redis_client.scan_iter(match=f"{prefix}*"))
    assert keys == sorted(
        [
            limiter.storage_key(rules[0], account),
            limiter.storage_key(rules[1], client),
            limiter.storage_key(rules[1], client, account),
        ]
    )
    for key in keys:
        stored = " ".join(v.decode() for v in redis_client.lrange(key, 0, -1))
        for secret in (email, "alice", "martin", address):
            assert secret not in key
            assert secret not in stored
        assert 0 < redis_client.ttl(key) <= 3600
    limiter.reset(rules[1], client)
    assert redis_client.exists(limiter.storage_key(rules[1], client)) == 0
    assert redis_client.exists(limiter.storage_key(rules[1], client, account)) == 1


# --- Redis down: fail closed, quickly -------------------------------------------------------


def _assert_fails_closed(limiter: LimitsRateLimiter, rounds: int = 20) -> None:
    rule = RateRule("test:down", "1000/minute")
    who = ident()
    for _ in range(rounds):
        with pytest.raises(RateLimiterUnavailable, match="unavailable") as caught:
            limiter.hit(rule, who)
        assert isinstance(caught.value.__cause__, redis.RedisError)
        denial = limiter.hit_or_deny(rule, who)
        assert denial == RateDecision(
            allowed=False, retry_after=UNAVAILABLE_RETRY_AFTER, remaining=0
        )
    with pytest.raises(RateLimiterUnavailable):
        limiter.test(rule, who)
    with pytest.raises(RateLimiterUnavailable):
        limiter.reset(rule, who)


@pytest.mark.redis
def test_closed_port_fails_closed() -> None:
    limiter = LimitsRateLimiter(f"redis://127.0.0.1:{free_port()}/0")
    started = time.perf_counter()
    _assert_fails_closed(limiter)
    assert time.perf_counter() - started < 5  # refused at once, no retry loop with backoff
    limiter.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts (and restarts) a throw-away redis-server on a free port; killed at the end."""
    executable = shutil.which("redis-server")
    if executable is None:
        require_component("redis-server is not installed")
    assert executable is not None
    port = free_port()
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process = subprocess.Popen(
            [executable, *options, "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        probe = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        probe.close()
        return process

    start.port = port  # type: ignore[attr-defined]
    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.mark.redis
def test_redis_dying_mid_way_fails_closed_then_recovers(
    private_redis: Callable[[], subprocess.Popen[bytes]],
) -> None:
    server = private_redis()
    port: int = private_redis.port  # type: ignore[attr-defined]
    limiter = LimitsRateLimiter(f"redis://127.0.0.1:{port}/0")
    rule, who = RateRule("test:dying", "5/minute"), ident()
    try:
        assert [limiter.hit(rule, who).allowed for _ in range(2)] == [True, True]
        server.kill()  # pooled connections now point at a dead server
        server.wait(timeout=10)
        _assert_fails_closed(limiter)
        private_redis()  # back, empty (no persistence): the limiter reconnects by itself
        assert limiter.hit(rule, who) == RateDecision(allowed=True, retry_after=0.0, remaining=4)
    finally:
        limiter.close()


def _bounded(call: Callable[[], Any], limit: float) -> tuple[BaseException | None, float]:
    """Runs ``call`` in a thread; a hang becomes a test failure instead of a stuck run."""
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.put(exc)
        else:
            outcome.put(None)

    started = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        pytest.fail(f"the rate-limit check still runs after {limit} s: no timeout applied")
    return outcome.get_nowait(), time.perf_counter() - started


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never answers a command."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@pytest.fixture
def full_backlog_server() -> Iterator[int]:
    """A port whose accept queue is full: new connections are never established."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port: int = server.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        yield port
        for filler in fillers:
            filler.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("query", "expected"),
    [("", 0.5), ("?socket_timeout=0.1&socket_connect_timeout=0.1", 0.1)],
    ids=["default-timeout", "timeout-from-url"],
)
def test_a_silent_redis_does_not_hang_the_check(
    silent_server: int, query: str, expected: float
) -> None:
    limiter = LimitsRateLimiter(f"redis://127.0.0.1:{silent_server}/0{query}")
    rule, who = RateRule("test:silent", "10/minute"), ident()
    error, elapsed = _bounded(lambda: limiter.hit(rule, who), limit=10)
    assert isinstance(error, RateLimiterUnavailable)
    assert isinstance(error.__cause__, redis.TimeoutError)
    assert expected * 0.8 <= elapsed < expected + 1.0

    decisions: list[RateDecision] = []
    error, elapsed = _bounded(lambda: decisions.append(limiter.hit_or_deny(rule, who)), limit=10)
    assert error is None
    assert not decisions[0].allowed
    assert elapsed < expected + 1.0
    limiter.close()


@pytest.mark.redis
def test_connect_timeout_applies_when_the_server_cannot_accept(full_backlog_server: int) -> None:
    # A long command timeout, a short connect timeout: the connect timeout is what bounds it.
    url = f"redis://127.0.0.1:{full_backlog_server}/0?socket_timeout=30&socket_connect_timeout=0.2"
    limiter = LimitsRateLimiter(url)
    error, elapsed = _bounded(lambda: limiter.hit(RateRule("test:accept", "1/minute")), limit=10)
    assert isinstance(error, RateLimiterUnavailable)
    assert isinstance(error.__cause__, redis.TimeoutError)
    assert elapsed < 1.5
    limiter.close()
