"""The cost of one rate-limit check, on memory storage and on Redis, against baselines.

    python -m bench.ratelimit [--checks 20000] [--redis-checks 5000] [--repeat 5]
                              [--redis-url redis://127.0.0.1:6379/0]

For each storage, per repetition, alternately (a fresh limiter, or a fresh key prefix on
Redis, per repetition):

- ``hit`` allowed: ``LimitsRateLimiter.hit`` on a "10/minute" rule, rotating over
  ``checks / 5`` hashed identifiers so that every hit is allowed (the common login case);
- ``hit`` denied: the same rule on one identifier whose budget is spent;
- ``test``: the read-only check;
- the baseline: memory, a plain ``dict`` increment under a ``threading.Lock`` on the same
  key strings; Redis, a raw redis-py ``INCR`` round trip on a key under the same prefix,
  with the same client settings (one connection, loopback).

Figures are µs per check (best and median of ``--repeat``) and the ratio of the best to the
baseline's best. On Redis, "round trips" counts the EVALSHA and INCR calls the server saw
per check (``INFO commandstats``; other clients of a shared server add to it): a ``hit`` is
two Lua scripts, the atomic acquire and then the window's state. Keys are deleted at the
end; Redis unreachable: only the memory figures are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, cast

import redis
from rich.table import Table

from bench.common import console, exit_cleanly_on_sigterm, machine_table
from labvault.core.ratelimit import (
    DEFAULT_SOCKET_TIMEOUT,
    KEY_PREFIX,
    LimitsRateLimiter,
    RateRule,
    hashed_identifier,
)

RULE = RateRule("bench:check", "10/minute")
ID_KEY = b"bench-ratelimit-identifier-key!!"
WARMUP = 200


@dataclass
class Samples:
    """µs per check of each repetition, and server commands per check (Redis)."""

    us: list[float] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.us)

    @property
    def median(self) -> float:
        return statistics.median(self.us)


def _time(calls: int, once: Callable[[int], object]) -> float:
    """µs per call of ``once(i)`` for i in range(calls)."""
    start = time.perf_counter_ns()
    for i in range(calls):
        once(i)
    return (time.perf_counter_ns() - start) / calls / 1000


def _identifiers(count: int) -> list[str]:
    return [hashed_identifier(ID_KEY, f"user-{i}@example.com") for i in range(count)]


def _checks(
    limiter: LimitsRateLimiter, identifiers: list[str]
) -> dict[str, Callable[[int], object]]:
    """The timed calls; ``identifiers[0]`` is the one whose budget is spent."""
    fresh = identifiers[1:] or identifiers
    return {
        "hit allowed": lambda i: limiter.hit(RULE, fresh[i % len(fresh)]),
        "hit denied": lambda i: limiter.hit(RULE, identifiers[0]),
        "test": lambda i: limiter.test(RULE, identifiers[i % len(identifiers)]),
    }


def _measure(
    storage_url: str,
    checks: int,
    repeat: int,
    baseline: Callable[[str, list[str]], Callable[[int], object]],
    commands: Callable[[], int] | None,
    cleanup: Callable[[str], None],
) -> dict[str, Samples]:
    results = {name: Samples() for name in ("baseline", "hit allowed", "hit denied", "test")}
    identifiers = _identifiers(checks // 5 + 2)  # [0] is spent; the others get <= 5 hits
    for _ in range(repeat):
        prefix = f"{KEY_PREFIX}bench:{uuid.uuid4().hex[:12]}:"
        limiter = LimitsRateLimiter(storage_url, key_prefix=prefix)
        try:
            spent = identifiers[0]
            for _ in range(RULE.amount):
                limiter.hit(RULE, spent)
            # Warm-up on other keys (connections, script cache), then the timed runs.
            for i in range(WARMUP):
                limiter.test(RULE, identifiers[i % len(identifiers)])
            keys = [limiter.storage_key(RULE, who) for who in identifiers]
            ways = {"baseline": baseline(prefix, keys), **_checks(limiter, identifiers)}
            for name, way in ways.items():
                before = commands() if commands else 0
                results[name].us.append(_time(checks, way))
                if commands:
                    results[name].commands.append((commands() - before) / checks)
        finally:
            cleanup(prefix)
            limiter.close()
    return results


def _memory_baseline(prefix: str, keys: list[str]) -> Callable[[int], object]:
    lock = threading.Lock()
    counts: dict[str, int] = {}

    def once(i: int) -> None:
        key = keys[i % len(keys)]
        with lock:
            counts[key] = counts.get(key, 0) + 1

    return once


def _table(title: str, results: dict[str, Samples], unit: str, with_commands: bool) -> Table:
    table = Table(title=title)
    for column in ("check", f"µs/{unit} best", "median", "checks/s (best)", "ratio to baseline"):
        table.add_column(column, justify="right")
    if with_commands:
        table.add_column("round trips/check", justify="right")
    base = results["baseline"].best
    for name, samples in results.items():
        row = [
            name,
            f"{samples.best:.2f}",
            f"{samples.median:.2f}",
            f"{1e6 / samples.best:,.0f}",
            f"{samples.best / base:.1f}x",
        ]
        if with_commands:
            row.append(f"{statistics.median(samples.commands):.2f}")
        table.add_row(*row)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__)
    parser.add_argument("--checks", type=int, default=20_000, help="per run, memory storage")
    parser.add_argument("--redis-checks", type=int, default=5_000, help="per run, Redis")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("LABVAULT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()

    machine = machine_table(())
    machine.add_row("limits", version("limits"))
    machine.add_row("redis-py", version("redis"))
    client = redis.Redis.from_url(
        args.redis_url,
        socket_timeout=DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout=DEFAULT_SOCKET_TIMEOUT,
    )
    try:
        server = cast("dict[str, Any]", client.info("server"))
        machine.add_row("Redis server", f"{server['redis_version']} at {args.redis_url}")
        redis_up = True
    except redis.RedisError as exc:
        machine.add_row("Redis server", f"unreachable ({type(exc).__name__})")
        redis_up = False
    console.print(machine)

    memory = _measure(
        "memory://",
        args.checks,
        args.repeat,
        _memory_baseline,
        commands=None,
        cleanup=lambda prefix: None,
    )
    console.print(
        _table(
            f"Memory storage: {args.checks:,} checks per run, best of {args.repeat} "
            "(baseline: dict increment under a lock)",
            memory,
            "check",
            with_commands=False,
        )
    )
    if not redis_up:
        console.print("[yellow]Redis unreachable: no Redis figures.[/]")
        client.close()
        return 0

    def redis_baseline(prefix: str, keys: list[str]) -> Callable[[int], object]:
        counter = f"{prefix}baseline"
        return lambda i: client.incr(counter)

    def commands() -> int:
        """Round trips seen by the server: EVALSHA (limits' scripts), INCR (sent as INCRBY)."""
        stats = cast("dict[str, dict[str, int]]", client.info("commandstats"))
        names = ("evalsha", "incr", "incrby")
        return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names)

    def cleanup(prefix: str) -> None:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)

    try:
        on_redis = _measure(
            args.redis_url,
            args.redis_checks,
            args.repeat,
            redis_baseline,
            commands=commands,
            cleanup=cleanup,
        )
    finally:
        client.close()
    console.print(
        _table(
            f"Redis storage: {args.redis_checks:,} checks per run, best of {args.repeat} "
            "(baseline: one raw redis-py INCR round trip)",
            on_redis,
            "check",
            with_commands=True,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
