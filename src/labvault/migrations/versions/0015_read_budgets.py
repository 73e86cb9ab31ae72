"""Exfiltration guard (issue 9): read budgets. An organization's own limits per principal
kind and role, and the embedded counter store (a principal's last read of each patient, by
keyed digest), both tenant-owned with the same ``tenant_isolation`` policy as every tenant
table. Account and service-client locks reuse existing columns (``accounts.status``/
``lock_reason``, ``service_clients.disabled_at``/``disabled_reason``).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 04:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('labvault.tenant_id', true), '')::uuid"
TENANT_TABLES = ("read_budget_limits", "read_budget_reads")


def upgrade() -> None:
    op.create_table(
        "read_budget_limits",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("principal_kind", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("per_hour", sa.Integer(), nullable=False),
        sa.Column("per_day", sa.Integer(), nullable=False),
        sa.Column("per_30_days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_read_budget_limits_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_read_budget_limits")),
        sa.UniqueConstraint(
            "tenant_id",
            "principal_kind",
            "role",
            name=op.f("uq_read_budget_limits_tenant_id_principal_kind_role"),
        ),
    )
    op.create_table(
        "read_budget_reads",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("principal_key", sa.String(length=96), nullable=False),
        sa.Column("subject_digest", sa.LargeBinary(), nullable=False),
        sa.Column("last_read_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_read_budget_reads_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_read_budget_reads")),
        sa.UniqueConstraint(
            "tenant_id",
            "principal_key",
            "subject_digest",
            name=op.f("uq_read_budget_reads_tenant_id_principal_key_subject_digest"),
        ),
    )
    with op.batch_alter_table("read_budget_reads", schema=None) as batch_op:
        batch_op.create_index(
            "ix_read_budget_reads_principal_last",
            ["tenant_id", "principal_key", "last_read_at"],
            unique=False,
        )
        batch_op.create_index("ix_read_budget_reads_last_read_at", ["last_read_at"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        for table in TENANT_TABLES:
            op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            op.execute(
                f"CREATE POLICY tenant_isolation ON {table} FOR ALL "
                f"USING (tenant_id = {CURRENT_TENANT}) WITH CHECK (tenant_id = {CURRENT_TENANT})"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in reversed(TENANT_TABLES):
            op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
    with op.batch_alter_table("read_budget_reads", schema=None) as batch_op:
        batch_op.drop_index("ix_read_budget_reads_last_read_at")
        batch_op.drop_index("ix_read_budget_reads_principal_last")
    op.drop_table("read_budget_reads")
    op.drop_table("read_budget_limits")
