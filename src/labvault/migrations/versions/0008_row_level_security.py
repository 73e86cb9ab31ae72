"""PostgreSQL row-level security: a transaction sees and writes only its own tenant's rows.

Every table with a ``tenant_id`` gets a policy comparing it with the transaction-local
setting ``labvault.tenant_id`` (set by ``labvault.core.tenancy``); a transaction that did
not set it sees and writes nothing. ``audit_events`` is append-only for the application:
a tenant reads and appends its own events; the audit log's maintenance scope
(``labvault.scope = 'audit-log'``) reads every tenant's events, appends system events (no
tenant), and may only number events that are still pending.

RLS is ENABLEd, not FORCEd: the schema owner (migrations, ``labvault db grant``, new
organizations) is not restricted, and the application connects as another role, which is
(see docs/deployment.md). SQLite: nothing to do.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = (
    "sites",
    "data_keys",
    "index_keys",
    "patients",
    "staff_members",
    "staff_sites",
    "accounts",
    "account_sessions",
    "one_time_codes",
    "totp_credentials",
    "recovery_codes",
    "known_devices",
    "webauthn_credentials",
    "account_dependents",
    "appointments",
    "break_glass_grants",
    "security_alerts",
)
CURRENT_TENANT = "NULLIF(current_setting('labvault.tenant_id', true), '')::uuid"
AUDIT_SCOPE = "current_setting('labvault.scope', true) = 'audit-log'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} FOR ALL "
            f"USING (tenant_id = {CURRENT_TENANT}) WITH CHECK (tenant_id = {CURRENT_TENANT})"
        )
    op.execute("ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON audit_events FOR SELECT "
        f"USING (tenant_id = {CURRENT_TENANT})"
    )
    op.execute(
        "CREATE POLICY tenant_append ON audit_events FOR INSERT "
        f"WITH CHECK (tenant_id = {CURRENT_TENANT})"
    )
    op.execute(f"CREATE POLICY audit_log_read ON audit_events FOR SELECT USING ({AUDIT_SCOPE})")
    op.execute(
        "CREATE POLICY audit_log_append ON audit_events FOR INSERT "
        f"WITH CHECK (tenant_id IS NULL AND {AUDIT_SCOPE})"
    )
    op.execute(
        "CREATE POLICY audit_log_sequence ON audit_events FOR UPDATE "
        f"USING (seq IS NULL AND {AUDIT_SCOPE}) WITH CHECK ({AUDIT_SCOPE})"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for policy in (
        "tenant_isolation",
        "tenant_append",
        "audit_log_read",
        "audit_log_append",
        "audit_log_sequence",
    ):
        op.execute(f"DROP POLICY IF EXISTS {policy} ON audit_events")
    op.execute("ALTER TABLE audit_events DISABLE ROW LEVEL SECURITY")
    for table in reversed(TENANT_TABLES):
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
