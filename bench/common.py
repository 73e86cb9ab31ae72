"""Shared pieces of the benchmarks: synthetic CSV, fresh databases, machine figures."""

from __future__ import annotations

import csv
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from labvault.core.config import Settings
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.importer import COLUMNS
from labvault.patients.synthetic import synthetic_patient_rows

PG_ADMIN_URL = os.environ.get(
    "LABVAULT_BENCH_PG_ADMIN_URL",
    os.environ.get(
        "LABVAULT_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
)
BACKENDS: tuple[str, ...] = ("sqlite", "postgresql")

# Wide enough for the result tables when the output is a file or a pipe (80 columns otherwise).
console = Console() if sys.stdout.isatty() else Console(width=120)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so temporary files and databases are still removed."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def write_patients_csv(path: Path, count: int, *, seed: int = 0) -> Path:
    """``count`` synthetic patients in the import format (as tests/helpers.write_csv does)."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(synthetic_patient_rows(count, seed=seed))
    return path


def _pg_url(database: str) -> str:
    return make_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False)


@contextmanager
def fresh_database(backend: str, workdir: Path) -> Iterator[str]:
    """The URL of a new, empty, migrated database; removed afterwards.

    SQLite: a file in a new directory under ``workdir``. PostgreSQL: a database named
    ``labvault_bench_<random>`` on the server at ``PG_ADMIN_URL``, dropped afterwards.
    """
    if backend == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix="db-", dir=workdir))
        url = f"sqlite:///{directory / 'labvault.sqlite3'}"
        try:
            _migrate(url)
            yield url
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    if backend != "postgresql":
        raise ValueError(f"unknown backend {backend!r}")
    name = f"labvault_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = _pg_url(name)
            _migrate(url)
            yield url
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _migrate(url: str) -> None:
    runtime = open_runtime(url, key_file=None)
    try:
        upgrade(runtime.engine)
    finally:
        runtime.close()


def open_runtime(url: str, *, key_file: Path | None) -> Runtime:
    """The real runtime wiring (engine settings, key provider) for ``url``."""
    overrides: dict[str, object] = {"database_url": url}
    if key_file is not None:
        overrides["key_provider"] = f"file:{key_file}"
    return Runtime(Settings(**overrides))  # type: ignore[arg-type]


def create_bench_organization(runtime: Runtime, name: str = "Bench lab") -> uuid.UUID:
    with transaction(runtime.sessions) as session:
        return create_organization(session, runtime.key_provider, name).id


def postgres_version() -> str:
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as connection:
            return str(connection.execute(text("SHOW server_version")).scalar_one())
    except Exception as exc:  # the table says why instead of failing the benchmark
        return f"unreachable ({type(exc).__name__})"
    finally:
        engine.dispose()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "unknown"
    return f"{total / 2**30:.1f} GiB"


def machine_table(backends: Sequence[str]) -> Table:
    from cryptography.hazmat.backends.openssl import backend as openssl

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    table = Table(title="Machine", show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value")
    table.add_row("CPU", _cpu_model())
    table.add_row("Cores", f"{os.cpu_count()} logical, {usable} usable by this process")
    table.add_row("Memory", _memory())
    table.add_row("OS", platform.platform())
    table.add_row("Python", f"{platform.python_implementation()} {platform.python_version()}")
    table.add_row("cryptography", f"{version('cryptography')} ({openssl.openssl_version_text()})")
    table.add_row("SQLAlchemy", version("SQLAlchemy"))
    if "sqlite" in backends:
        table.add_row("SQLite", f"{sqlite3.sqlite_version} (files under {tempfile.gettempdir()})")
    if "postgresql" in backends:
        table.add_row("PostgreSQL server", postgres_version())
        table.add_row("psycopg", version("psycopg"))
    return table


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p95: float
    p99: float
    mean: float


def percentiles(samples: Sequence[float]) -> Percentiles:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Percentiles(cuts[49], cuts[94], cuts[98], statistics.fmean(samples))


def verdict(ok: bool) -> str:
    return "[bold green]PASS[/]" if ok else "[bold red]FAIL[/]"
