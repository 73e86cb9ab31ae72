"""Exfiltration guard (issue 9): anomaly findings (deduplicated alerts) and four-eyes unlock
requests, both tenant-owned with the same ``tenant_isolation`` policy as every tenant table.

Neither holds a personal value: principals by kind and id, counts, times, closed-list reasons.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30 04:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('labvault.tenant_id', true), '')::uuid"
TENANT_TABLES = ("anomaly_findings", "unlock_requests")


def upgrade() -> None:
    op.create_table(
        "anomaly_findings",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=128), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_anomaly_findings_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_anomaly_findings")),
        sa.UniqueConstraint(
            "tenant_id",
            "rule",
            "actor_id",
            "window_start",
            name=op.f("uq_anomaly_findings_tenant_id_rule_actor_id_window_start"),
        ),
    )
    with op.batch_alter_table("anomaly_findings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_anomaly_findings_tenant_id_actor_id",
            ["tenant_id", "actor_id", "window_end"],
            unique=False,
        )
    op.create_table(
        "unlock_requests",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("principal_kind", sa.String(length=16), nullable=False),
        sa.Column("principal_id", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.Uuid(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_unlock_requests_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unlock_requests")),
    )
    with op.batch_alter_table("unlock_requests", schema=None) as batch_op:
        batch_op.create_index(
            "ix_unlock_requests_tenant_id_principal_id",
            ["tenant_id", "principal_id"],
            unique=False,
        )

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
    with op.batch_alter_table("unlock_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_unlock_requests_tenant_id_principal_id")
    op.drop_table("unlock_requests")
    with op.batch_alter_table("anomaly_findings", schema=None) as batch_op:
        batch_op.drop_index("ix_anomaly_findings_tenant_id_actor_id")
    op.drop_table("anomaly_findings")
