"""Exports (issue 9, item 6): ``export_records``, one row per bulk export (kind, staff
member, recipient account, time, row count and the keyed digests of its fingerprint rows),
tenant-owned with the same ``tenant_isolation`` policy as every tenant table.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30 05:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('labvault.tenant_id', true), '')::uuid"
TENANT_TABLES = ("export_records",)


def upgrade() -> None:
    op.create_table(
        "export_records",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=48), nullable=False),
        sa.Column("staff_id", sa.Uuid(), nullable=True),
        sa.Column("recipient_account_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("fingerprint_count", sa.Integer(), nullable=False),
        sa.Column("fingerprint_digests", sa.LargeBinary(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_export_records_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_records")),
    )
    with op.batch_alter_table("export_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_export_records_tenant_created", ["tenant_id", "created_at"], unique=False
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
    with op.batch_alter_table("export_records", schema=None) as batch_op:
        batch_op.drop_index("ix_export_records_tenant_created")
    op.drop_table("export_records")
