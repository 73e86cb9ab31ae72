"""PostgreSQL row-level security: the second, database-side wall between tenants (DESIGN I8).

Every test here goes around the application's policy layer on purpose: raw SQL, as the
application's role (``APP_ROLE``: LOGIN, not superuser, not BYPASSRLS, not the owner), with
the transaction bound to one tenant, to none, or to the audit log's scope.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, ProgrammingError
from typer.testing import CliRunner

from helpers import APP_ROLE
from labvault.cli import app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail, AuditUnavailableError
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.db_roles import RoleError, current_role_problems, grant_app_role
from labvault.core.runtime import Runtime
from labvault.core.tenancy import AUDIT_LOG_SCOPE, apply
from labvault.organizations.services import add_site, create_organization
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients

pytestmark = pytest.mark.pg

TENANT_POLICY = (
    "(tenant_id = (NULLIF(current_setting('labvault.tenant_id'::text, true), ''::text))::uuid)"
)
AUDIT_SCOPE = "(current_setting('labvault.scope'::text, true) = 'audit-log'::text)"


@pytest.fixture
def backend() -> str:
    """Row-level security is PostgreSQL's."""
    return "postgresql"


@dataclass(frozen=True)
class Lab:
    tenant_id: uuid.UUID
    site_id: uuid.UUID
    patient_ids: list[uuid.UUID]


def _lab(runtime: Runtime, name: str, patients: int, seed: int) -> Lab:
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, name)
        site = add_site(
            session,
            organization,
            name="Centre",
            address_line="1 place de la Mairie",
            postal_code="69001",
            city="Lyon",
            opening_hours={},
            sampling_capacity_per_hour=4,
        )
        keyring = TenantKeyring(
            session, runtime.key_provider, organization.id, SystemPrincipal("test:rls")
        )
        created = PatientRepository(session, keyring).register_many(
            list(synthetic_patients(patients, seed=seed))
        )
        return Lab(organization.id, site.id, list(created.created.values()))


@pytest.fixture
def labs(runtime: Runtime) -> tuple[Lab, Lab]:
    return _lab(runtime, "Labo A", 3, seed=21), _lab(runtime, "Labo B", 4, seed=22)


def _tenant_tables(connection: Connection) -> list[str]:
    return list(
        connection.execute(
            text(
                "SELECT c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_attribute a ON a.attrelid = c.oid "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') "
                "AND a.attname = 'tenant_id' AND NOT a.attisdropped ORDER BY c.relname"
            )
        ).scalars()
    )


@contextmanager
def _as_app(
    runtime: Runtime, tenant_id: uuid.UUID | None = None, scope: str | None = None
) -> Iterator[Connection]:
    """A raw transaction as the application's role: no ORM, no policy layer."""
    with runtime.engine.begin() as connection:
        apply(connection, tenant_id, scope)
        yield connection


def _count(connection: Connection, table: str, where: str = "TRUE", **params: object) -> int:
    return int(
        connection.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"), params).scalar_one()
    )


def _refused(
    runtime: Runtime,
    statement: str,
    tenant_id: uuid.UUID | None = None,
    scope: str | None = None,
    **params: object,
) -> str:
    """Run ``statement`` as the app role; it must fail. Returns the database's message."""
    with (
        pytest.raises((ProgrammingError, DBAPIError)) as caught,
        _as_app(runtime, tenant_id, scope) as connection,
    ):
        connection.execute(text(statement), params)
    return str(caught.value.orig)


# -- the schema: every tenant table has its policy --------------------------------------------


def test_every_table_with_a_tenant_id_has_row_level_security_and_its_policy(
    runtime: Runtime,
) -> None:
    """A future table with a tenant_id but no policy fails here: add it to a migration as
    0008 does (ENABLE ROW LEVEL SECURITY and the tenant_isolation policy)."""
    with runtime.engine.connect() as connection:
        tables = _tenant_tables(connection)
        assert {"patients", "accounts", "data_keys", "index_keys", "audit_events"} <= set(tables)
        flags = {
            table: (enabled, forced)
            for table, enabled, forced in connection.execute(
                text(
                    "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                    "WHERE relnamespace = 'public'::regnamespace AND relname = ANY(:names)"
                ),
                {"names": tables},
            )
        }
        policies: dict[str, set[tuple[str, str, str | None, str | None]]] = {}
        for table, name, command, using, check in connection.execute(
            text(
                "SELECT tablename, policyname, cmd, qual, with_check FROM pg_policies "
                "WHERE schemaname = 'public' AND permissive = 'PERMISSIVE'"
            )
        ):
            policies.setdefault(table, set()).add((name, command, using, check))
        restrictive = connection.execute(
            text("SELECT count(*) FROM pg_policies WHERE permissive <> 'PERMISSIVE'")
        ).scalar_one()
    assert restrictive == 0
    for table in tables:
        # Enabled, not forced: the owner (migrations) is not restricted; the app role is.
        assert flags[table] == (True, False), f"{table}: row-level security is not enabled"
        if table == "audit_events":
            continue
        assert policies.get(table) == {("tenant_isolation", "ALL", TENANT_POLICY, TENANT_POLICY)}, (
            f"{table}: missing or different tenant_isolation policy"
        )
    assert policies["audit_events"] == {
        ("tenant_isolation", "SELECT", TENANT_POLICY, None),
        ("tenant_append", "INSERT", None, TENANT_POLICY),
        ("audit_log_read", "SELECT", AUDIT_SCOPE, None),
        ("audit_log_append", "INSERT", None, f"((tenant_id IS NULL) AND {AUDIT_SCOPE})"),
        ("audit_log_sequence", "UPDATE", f"((seq IS NULL) AND {AUDIT_SCOPE})", AUDIT_SCOPE),
    }
    # The tenant list is not tenant-owned: the app reads it before it knows its tenant.
    assert "organizations" not in tables


def test_the_app_role_is_neither_superuser_nor_bypassrls_nor_owner(
    runtime: Runtime, settings: Settings
) -> None:
    with runtime.engine.connect() as connection:
        assert connection.execute(text("SELECT current_user")).scalar_one() == APP_ROLE
        row = connection.execute(
            text(
                "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolcanlogin "
                "FROM pg_roles WHERE rolname = current_user"
            )
        ).one()
        assert tuple(row) == (False, False, False, False, True)
        owned = connection.execute(
            text(
                "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                "AND pg_has_role(current_user, relowner, 'USAGE')"
            )
        ).scalar_one()
        assert owned == 0
        assert current_role_problems(connection) == []
    # The check can fail: the owner escapes row-level security, and is named for it.
    with runtime.admin_engine.connect() as connection:
        problems = current_role_problems(connection)
    assert any("superuser" in p for p in problems)
    assert any("owns" in p for p in problems)


def test_grants_refuse_a_role_that_escapes_row_level_security(runtime: Runtime) -> None:
    with runtime.admin_engine.begin() as connection:
        owner = str(connection.execute(text("SELECT current_user")).scalar_one())
        with pytest.raises(RoleError, match="superuser"):
            grant_app_role(connection, owner)
        with pytest.raises(RoleError, match="does not exist"):
            grant_app_role(connection, "labvault_no_such_role")
        with pytest.raises(RoleError, match="plain role name"):
            grant_app_role(connection, 'x"; DROP TABLE patients; --')
        assert grant_app_role(connection, APP_ROLE)  # idempotent


# -- fail closed --------------------------------------------------------------------------------


def test_without_a_tenant_the_app_role_sees_and_writes_nothing(
    runtime: Runtime, labs: tuple[Lab, Lab]
) -> None:
    a, _ = labs
    with runtime.admin_engine.connect() as connection:
        tables = _tenant_tables(connection)
        stored = {table: _count(connection, table) for table in tables}
    assert all(stored[t] > 0 for t in ("patients", "data_keys", "index_keys", "sites"))
    with _as_app(runtime) as connection:
        assert {table: _count(connection, table) for table in tables} == dict.fromkeys(tables, 0)
        # The tenant list itself is readable: it is how the app finds its tenant.
        assert _count(connection, "organizations") == 2
        assert connection.execute(text("UPDATE sites SET name = 'x'")).rowcount == 0
        assert connection.execute(text("DELETE FROM patients")).rowcount == 0
    message = _refused(
        runtime,
        "INSERT INTO sites (id, tenant_id, name, address_line, postal_code, city, "
        "opening_hours, sampling_capacity_per_hour, timezone, created_at) VALUES (:id, "
        ":tenant, 'S', '1 rue', '75001', 'Paris', '{}', 1, 'Europe/Paris', now())",
        id=uuid.uuid4(),
        tenant=a.tenant_id,
    )
    assert "row-level security" in message
    with runtime.admin_engine.connect() as connection:
        assert _count(connection, "patients") == stored["patients"]


# -- one tenant, and only it --------------------------------------------------------------------


def test_with_a_tenant_the_app_role_sees_only_that_tenants_rows(
    runtime: Runtime, labs: tuple[Lab, Lab]
) -> None:
    a, b = labs
    with runtime.admin_engine.connect() as connection:
        tables = _tenant_tables(connection)
    with _as_app(runtime, a.tenant_id) as connection:
        for table in tables:
            assert _count(connection, table, "tenant_id IS DISTINCT FROM :a", a=a.tenant_id) == 0
        assert _count(connection, "patients") == len(a.patient_ids)
        # Asked by id, another tenant's patient does not exist.
        assert _count(connection, "patients", "id = ANY(:ids)", ids=b.patient_ids) == 0
        assert _count(connection, "sites", "id = :id", id=b.site_id) == 0


def test_policy_layer_bypassed_the_orm_still_gets_nothing_of_another_tenant(
    runtime: Runtime, labs: tuple[Lab, Lab]
) -> None:
    """The application's own code path, asked for tenant B while bound to tenant A."""
    a, b = labs
    with transaction(runtime.tenant_sessions(a.tenant_id)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, a.tenant_id, SystemPrincipal("t"))
        repository = PatientRepository(session, keyring)
        assert all(repository.get(pid, purpose="test") is None for pid in b.patient_ids)
        assert repository.get(a.patient_ids[0], purpose="test") is not None


def test_a_tenant_cannot_write_into_another_tenant(runtime: Runtime, labs: tuple[Lab, Lab]) -> None:
    a, b = labs
    insert_site = (
        "INSERT INTO sites (id, tenant_id, name, address_line, postal_code, city, "
        "opening_hours, sampling_capacity_per_hour, timezone, created_at) VALUES (:id, "
        ":tenant, 'S', '1 rue', '75001', 'Paris', '{}', 1, 'Europe/Paris', now())"
    )
    assert "row-level security" in _refused(
        runtime, insert_site, a.tenant_id, id=uuid.uuid4(), tenant=b.tenant_id
    )
    # Moving one's own row to another tenant: refused by WITH CHECK.
    assert "row-level security" in _refused(
        runtime,
        "UPDATE sites SET tenant_id = :b WHERE id = :id",
        a.tenant_id,
        b=b.tenant_id,
        id=a.site_id,
    )
    with _as_app(runtime, a.tenant_id) as connection:
        # Another tenant's rows are not there to update or delete.
        assert (
            connection.execute(
                text("UPDATE sites SET name = 'pris' WHERE id = :id"), {"id": b.site_id}
            ).rowcount
            == 0
        )
        assert (
            connection.execute(
                text("DELETE FROM patients WHERE id = ANY(:ids)"), {"ids": b.patient_ids}
            ).rowcount
            == 0
        )
        # Its own, it may.
        connection.execute(text(insert_site), {"id": uuid.uuid4(), "tenant": a.tenant_id})
    with runtime.admin_engine.connect() as connection:
        assert _count(connection, "patients", "tenant_id = :b", b=b.tenant_id) == len(b.patient_ids)
        assert _count(connection, "sites", "name = 'pris'") == 0
        assert _count(connection, "sites", "tenant_id = :a", a=a.tenant_id) == 2


# -- the audit log ------------------------------------------------------------------------------


def test_the_app_role_appends_to_the_audit_log_and_never_rewrites_it(
    runtime: Runtime, labs: tuple[Lab, Lab]
) -> None:
    a, b = labs
    runtime.audit_log.advance(force_checkpoint=True)  # the registrations' events, sequenced
    with runtime.admin_engine.connect() as connection:
        total = _count(connection, "audit_events")
        of_a = _count(connection, "audit_events", "tenant_id = :a", a=a.tenant_id)
        sequenced = _count(connection, "audit_events", "seq IS NOT NULL")
    assert of_a < total == sequenced
    with _as_app(runtime, a.tenant_id) as connection:
        assert _count(connection, "audit_events") == of_a
    with _as_app(runtime, scope=AUDIT_LOG_SCOPE) as connection:
        assert _count(connection, "audit_events") == total
        # The scope numbers pending events only: sequenced ones are out of its reach.
        assert connection.execute(text("UPDATE audit_events SET seq = seq + 1000")).rowcount == 0
    with _as_app(runtime, a.tenant_id) as connection:
        assert connection.execute(text("UPDATE audit_events SET seal = NULL")).rowcount == 0
    for scope in (None, AUDIT_LOG_SCOPE):
        assert "permission denied" in _refused(
            runtime, "DELETE FROM audit_events", a.tenant_id, scope
        )
        assert "permission denied" in _refused(
            runtime, "UPDATE audit_events SET purpose = 'autre'", a.tenant_id, scope
        )
        assert "permission denied" in _refused(
            runtime, "DELETE FROM audit_checkpoints", scope=scope
        )
        assert "permission denied" in _refused(
            runtime, "UPDATE audit_tree_nodes SET hash = hash", scope=scope
        )
        assert "permission denied" in _refused(runtime, "TRUNCATE audit_events", scope=scope)
    # Tenant A cannot record an event in tenant B's name.
    with (
        pytest.raises(AuditUnavailableError, match="audit log could not record"),
        transaction(runtime.tenant_sessions(a.tenant_id)) as session,
    ):
        AuditTrail(session, SystemPrincipal("t")).record(
            AuditAction.PATIENT_RECORD_READ, tenant_id=b.tenant_id
        )
    with runtime.admin_engine.connect() as connection:
        assert _count(connection, "audit_events") == total
    assert runtime.audit_log.advance(force_checkpoint=True).sequenced == 0


# -- pooled connections -------------------------------------------------------------------------


def test_a_pooled_connection_does_not_carry_a_tenant_into_the_next_transaction(
    runtime: Runtime, labs: tuple[Lab, Lab], settings: Settings
) -> None:
    a, _ = labs
    engine: Engine = create_engine(settings.sqlalchemy_url, pool_size=1, max_overflow=0)
    try:
        runtime_pids = []
        sessions = runtime.tenant_sessions(a.tenant_id)
        sessions.configure(bind=engine)
        with transaction(sessions) as session:
            runtime_pids.append(session.scalar(text("SELECT pg_backend_pid()")))
            assert session.scalar(text("SELECT count(*) FROM patients")) == len(a.patient_ids)

        # A failed transaction bound to A, on the same connection, rolls back its binding too.
        def fail_bound() -> None:
            with transaction(sessions) as session:
                session.execute(text("SELECT 1"))
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            fail_bound()
        with engine.connect() as connection:
            runtime_pids.append(connection.execute(text("SELECT pg_backend_pid()")).scalar())
            assert connection.execute(text("SELECT count(*) FROM patients")).scalar() == 0
            setting = connection.execute(
                text("SELECT current_setting('labvault.tenant_id', true)")
            ).scalar()
            assert setting in (None, "")
        assert runtime_pids[0] == runtime_pids[1]  # the very same server connection
    finally:
        engine.dispose()


def test_the_deployments_sessions_are_bound_to_its_organization(
    runtime: Runtime, labs: tuple[Lab, Lab], settings: Settings
) -> None:
    a, b = labs
    for lab, name in ((a, "Labo A"), (b, "Labo B")):
        served = Runtime(settings.model_copy(update={"organization": name}))
        try:
            with served.sessions() as session:
                assert session.scalar(text("SELECT count(*) FROM patients")) == len(lab.patient_ids)
        finally:
            served.close()
    # Two organizations and none named: a deployment's sessions see no tenant at all.
    unnamed = Runtime(settings)
    try:
        with unnamed.sessions() as session:
            assert session.scalar(text("SELECT count(*) FROM patients")) == 0
    finally:
        unnamed.close()


# -- the command line ---------------------------------------------------------------------------


def test_cli_grants_the_app_role_and_checks_it(cli_env: Settings, runtime: Runtime) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["db", "grant"])
    assert result.exit_code == 0, result.output
    assert APP_ROLE in result.output
    result = runner.invoke(app, ["db", "check-role"])
    assert result.exit_code == 0, result.output
    with runtime.admin_engine.connect() as connection:
        owner = str(connection.execute(text("SELECT current_user")).scalar_one())
    result = runner.invoke(app, ["db", "grant", "--role", owner])
    assert result.exit_code != 0
