"""Logins per second with Argon2id, and the other costs of a login or a password change.

    python -m bench.passwords [--logins 40] [--repeat 3] [--processes N] [--checks 20000]

Every figure has a baseline measured in the same run:

1. logins/s: ``PasswordHasher.verify`` of the right password against a stored hash, then
   ``needs_rehash`` (what a successful login does), with the production parameters
   (``DEFAULT_PARAMETERS``: Argon2id m=19 MiB, t=2, p=1, OWASP's first configuration), in
   1 process and in N processes (default: every usable core; processes, not threads, as
   uvicorn workers are). All processes start together on a barrier; the rate is all their
   logins over the time from the first start to the last end; CPU is the share of that time
   the processes spent on a CPU (well under 100 %: other programs had the cores, as on a
   shared machine), and logins/CPU-s the rate per second of CPU actually had, which other
   programs change much less. *Baseline*: the same with OWASP's other configuration of "an
   equal level of defense", m=46 MiB, t=1, p=1: the ratio says what our choice costs
   against the alternative. Runs alternate; best of ``--repeat``.
2. failed login and unknown account: a wrong password against a stored hash, and
   ``verify_dummy`` (the path for an account that does not exist), against a successful
   verify, alternating call by call, medians: ratios near 1.00x mean the three cannot be
   told apart by timing (no user enumeration, DESIGN I7).
3. hashing (sign-up, password change, rehash at login), production and baseline parameters.
4. the policy: loading the common-passwords list (first use in a process; the cache is
   cleared between runs), one ``is_common_password`` lookup and one full
   ``check_new_password`` of acceptable passwords, against one Argon2id verify.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import multiprocessing.synchronize
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from queue import Empty

from rich.table import Table

from bench.common import console, exit_cleanly_on_sigterm, machine_table, verdict
from labvault.core.crypto.passwords import (
    DEFAULT_PARAMETERS,
    Argon2Parameters,
    PasswordHasher,
    check_new_password,
    common_passwords,
    is_common_password,
)
from labvault.core.crypto.secret import Secret

PRODUCTION = "production"
BASELINE = "baseline"
BASELINE_PARAMETERS = Argon2Parameters(time_cost=1, memory_cost=47_104, parallelism=1)
PASSWORD = "cheval agrafe pile correcte"
WRONG = "cheval agrafe pile correctE"
# Acceptable passwords (the policy runs every rule on them) and list hits, for step 4.
ACCEPTED = ("cheval agrafe pile correcte", "Tr0ub4dor&3 du matin", "soleil de juin sur Loire")
LISTED = ("motdepasse", "password", "123456", "azerty", "marseille")
Outcome = tuple[float, float, float, str | None]  # start, end, CPU seconds, error


def _login_worker(
    parameters: Argon2Parameters,
    stored: str,
    logins: int,
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[Outcome],
) -> None:
    try:
        hasher = PasswordHasher(parameters)
        password = Secret(PASSWORD)
        barrier.wait()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(logins):
            if not hasher.verify(stored, password) or hasher.needs_rehash(stored):
                raise AssertionError("the stored hash did not verify as a current one")
        results.put((start, time.perf_counter(), time.process_time() - cpu, None))
    except BaseException as exc:
        results.put((0.0, 0.0, 0.0, f"{type(exc).__name__}: {exc}"))
        raise


def time_logins(
    parameters: Argon2Parameters, stored: str, processes: int, logins: int
) -> tuple[float, float]:
    """(logins/s, share of the processes' wall time they spent on a CPU) of ``processes``
    processes doing ``logins`` logins each."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes, timeout=120)
    results: multiprocessing.Queue[Outcome] = context.Queue()
    workers = [
        context.Process(
            target=_login_worker,
            args=(parameters, stored, logins, barrier, results),
            daemon=True,
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes: list[Outcome] = []
    try:
        for _ in workers:
            try:
                outcomes.append(results.get(timeout=600))
            except Empty:
                raise SystemExit(f"logins ({processes} processes): no answer") from None
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.terminate()
    errors = [error for _, _, _, error in outcomes if error is not None]
    if errors:
        raise SystemExit(f"logins ({processes} processes) failed: {errors[0]}")
    start = min(outcome[0] for outcome in outcomes)
    end = max(outcome[1] for outcome in outcomes)
    cpu = sum(outcome[2] for outcome in outcomes)
    return processes * logins / (end - start), cpu / ((end - start) * processes)


@dataclass
class Rates:
    samples: list[float]
    cpu_shares: list[float]

    @property
    def best(self) -> float:
        return max(self.samples)

    @property
    def best_cpu_share(self) -> float:
        """CPU share of the best run: below ~95 %, other programs took the cores."""
        return self.cpu_shares[self.samples.index(self.best)]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def label(name: str, parameters: Argon2Parameters) -> str:
    return (
        f"{name}: m={parameters.memory_cost / 1024:g} MiB, "
        f"t={parameters.time_cost}, p={parameters.parallelism}"
    )


def interleaved_medians(calls: list[Callable[[], object]], runs: int) -> list[float]:
    """Median seconds of each call, alternating call by call so noise hits them alike."""
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for call, times in zip(calls, samples, strict=True):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in samples]


def per_call(call: Callable[[], object], count: int) -> float:
    """Seconds per call over ``count`` calls (best of 3 batches)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(count):
            call()
        best = min(best, (time.perf_counter() - start) / count)
    return best


def bench_logins(
    hashers: dict[str, PasswordHasher], stored: dict[str, str], args: argparse.Namespace
) -> Table:
    counts = sorted({1, args.processes})
    rates: dict[tuple[str, int], Rates] = {
        (name, n): Rates([], []) for name in hashers for n in counts
    }
    for run in range(args.repeat):
        for processes in counts:
            for name, hasher in hashers.items():
                rate, share = time_logins(hasher.parameters, stored[name], processes, args.logins)
                rates[name, processes].samples.append(rate)
                rates[name, processes].cpu_shares.append(share)
                console.print(
                    f"  run {run + 1}/{args.repeat}: {name:<10} {processes} process(es) "
                    f"{rate:8.1f} logins/s, CPU {share:4.0%}"
                )
    table = Table(
        title=(
            f"1. Successful logins (verify + needs_rehash), {args.logins} per process, "
            f"best of {args.repeat} (median)"
        )
    )
    for column in (
        "parameters",
        "processes",
        "logins/s",
        "ms/login",
        "CPU",
        "logins/CPU-s",
        "vs 1 process",
        "vs base",
    ):
        table.add_column(column, justify="right")
    for name, hasher in hashers.items():
        for processes in counts:
            found = rates[name, processes]
            base = rates[BASELINE, processes]
            table.add_row(
                label(name, hasher.parameters),
                str(processes),
                f"[bold]{found.best:,.1f}[/] ({found.median:,.1f})",
                f"{processes * 1000 / found.best:.1f}",
                f"{found.best_cpu_share:.0%}",
                f"{found.best / (found.best_cpu_share * processes):,.1f}",
                f"{found.best / rates[name, 1].best:.2f}x",
                f"{found.best / base.best:.2f}x",
            )
    return table


def bench_failures(hasher: PasswordHasher, stored: str, runs: int) -> Table:
    _ = hasher.dummy_hash  # made once (lazily) before timing, as in a running server
    right, wrong, unknown = interleaved_medians(
        [
            lambda: hasher.verify(stored, Secret(PASSWORD)),
            lambda: hasher.verify(stored, Secret(WRONG)),
            lambda: hasher.verify_dummy(Secret(WRONG)),
        ],
        runs,
    )
    table = Table(title=f"2. Login outcomes, production parameters, median of {runs}, 1 process")
    for column in ("login", "ms", "vs successful login", "indistinguishable (0.8x-1.25x)"):
        table.add_column(column, justify="right")
    for label, seconds in (
        ("right password (verify)", right),
        ("wrong password (verify)", wrong),
        ("unknown account (verify_dummy)", unknown),
    ):
        ratio = seconds / right
        table.add_row(
            label, f"{seconds * 1000:.2f}", f"{ratio:.2f}x", verdict(0.8 <= ratio <= 1.25)
        )
    return table


def bench_hashing(hashers: dict[str, PasswordHasher], runs: int) -> Table:
    names = list(hashers)
    medians = interleaved_medians(
        [partial(hashers[name].hash, Secret(PASSWORD)) for name in names], runs
    )
    seconds = dict(zip(names, medians, strict=True))
    table = Table(title=f"3. Hashing (sign-up, password change, rehash), median of {runs}")
    for column in ("parameters", "ms/hash", "hashes/s, 1 process", "vs base"):
        table.add_column(column, justify="right")
    for name in names:
        table.add_row(
            label(name, hashers[name].parameters),
            f"{seconds[name] * 1000:.2f}",
            f"{1 / seconds[name]:,.1f}",
            f"{seconds[name] / seconds[BASELINE]:.2f}x (time)",
        )
    return table


def bench_policy(hasher: PasswordHasher, stored: str, checks: int, repeat: int) -> Table:
    loads: list[float] = []
    for _ in range(max(repeat, 3)):
        common_passwords.cache_clear()
        gc.collect()
        start = time.perf_counter()
        shipped = common_passwords()
        loads.append(time.perf_counter() - start)
    common_passwords.cache_clear()  # once more, untimed, for the memory it keeps
    gc.collect()
    tracemalloc.start()
    shipped = common_passwords()
    retained = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    verify = interleaved_medians([lambda: hasher.verify(stored, Secret(PASSWORD))], 5)[0]
    hits = [Secret(word) for word in LISTED]
    misses = [Secret(word) for word in ACCEPTED]
    lookup_hit = per_call(lambda: [is_common_password(p) for p in hits], checks // 10) / len(hits)
    lookup_miss = per_call(lambda: [is_common_password(p) for p in misses], checks // 10) / len(
        misses
    )
    context = ("Jean Dupont", "jean.dupont@example.fr")

    def check_all() -> None:
        for password in misses:
            check_new_password(password, context=context)

    full = per_call(check_all, checks // 10) / len(misses)
    table = Table(title="4. Password policy and common-passwords list, 1 process")
    for column in ("step", "time", "vs one Argon2id verify"):
        table.add_column(column, justify="right")
    table.add_row(
        f"load the list ({len(shipped):,} entries, {retained / 2**20:.1f} MiB retained), "
        f"best (median) of {len(loads)}",
        f"{min(loads) * 1000:.1f} ms ({statistics.median(loads) * 1000:.1f} ms)",
        f"{min(loads) / verify:.2f}x",
    )
    table.add_row(
        "is_common_password, on the list",
        f"{lookup_hit * 1e6:.2f} µs",
        f"{lookup_hit / verify:.6f}x",
    )
    table.add_row(
        "is_common_password, not on it",
        f"{lookup_miss * 1e6:.2f} µs",
        f"{lookup_miss / verify:.6f}x",
    )
    table.add_row(
        "check_new_password, accepted (every rule)",
        f"{full * 1e6:.2f} µs",
        f"{full / verify:.6f}x",
    )
    table.add_row("one Argon2id verify (production)", f"{verify * 1000:.2f} ms", "1.00x")
    return table


def main(argv: list[str] | None = None) -> int:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser = argparse.ArgumentParser(prog="python -m bench.passwords", description=__doc__)
    parser.add_argument("--logins", type=int, default=40, help="logins per process per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each login measurement")
    parser.add_argument(
        "--processes", type=int, default=usable or 1, help="processes of the parallel runs"
    )
    parser.add_argument("--checks", type=int, default=20_000, help="policy checks to time")
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    machine = machine_table(())
    machine.add_row(
        "argon2-cffi",
        f"{version('argon2-cffi')} (bindings {version('argon2-cffi-bindings')})",
    )
    console.print(machine)
    started = time.perf_counter()
    hashers = {
        PRODUCTION: PasswordHasher(DEFAULT_PARAMETERS),
        BASELINE: PasswordHasher(BASELINE_PARAMETERS),
    }
    stored = {name: hasher.hash(Secret(PASSWORD)) for name, hasher in hashers.items()}
    console.print(
        f"[bold]1. logins[/] ({args.logins} per process, 1 and {args.processes} processes, "
        f"best of {args.repeat})"
    )
    logins = bench_logins(hashers, stored, args)
    console.print("[bold]2. login outcomes[/], [bold]3. hashing[/], [bold]4. policy[/]")
    failures = bench_failures(hashers[PRODUCTION], stored[PRODUCTION], max(args.logins // 2, 5))
    hashing = bench_hashing(hashers, max(args.logins // 4, 5))
    policy = bench_policy(hashers[PRODUCTION], stored[PRODUCTION], args.checks, args.repeat)
    for table in (logins, failures, hashing, policy):
        console.print(table)
    console.print(
        "Each login holds its Argon2 memory while it runs: "
        f"{DEFAULT_PARAMETERS.memory_cost / 1024:g} MiB (production) per login in progress."
    )
    console.print(f"Total run time {time.perf_counter() - started:.0f} s.")
    console.print("[dim]Benchmarks inform, they do not gate: the exit status is 0 either way.[/]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
