"""Exfiltration guard (issue 9): honey records. ``honey_sets`` records each planting (when,
by whom, density, population, counts and an attribution label); ``honey_marks`` holds
HMAC(honey key, patient id) per honey patient, so the set cannot be told without the key
(a data key of subject type ``honey-key``, wrapped, in ``data_keys``). The honey patients
themselves are ordinary ``patients`` rows. Both tables are tenant-owned, with the same
``tenant_isolation`` policy as every tenant table.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 05:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('labvault.tenant_id', true), '')::uuid"
TENANT_TABLES = ("honey_sets", "honey_marks")


def upgrade() -> None:
    op.create_table(
        "honey_sets",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("planted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("planted_by", sa.String(length=128), nullable=False),
        sa.Column("density_ppm", sa.Integer(), nullable=False),
        sa.Column("population", sa.Integer(), nullable=False),
        sa.Column("patient_count", sa.Integer(), nullable=False),
        sa.Column("appointment_count", sa.Integer(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_honey_sets_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_honey_sets")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_honey_sets_tenant_id_id")),
    )
    op.create_index("ix_honey_sets_tenant_id_planted_at", "honey_sets", ["tenant_id", "planted_at"])
    op.create_table(
        "honey_marks",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("set_id", sa.Uuid(), nullable=False),
        sa.Column("mark", sa.LargeBinary(length=32), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "set_id"],
            ["honey_sets.tenant_id", "honey_sets.id"],
            name=op.f("fk_honey_marks_tenant_id_honey_sets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_honey_marks_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_honey_marks")),
        sa.UniqueConstraint("tenant_id", "mark", name=op.f("uq_honey_marks_tenant_id_mark")),
    )
    op.create_index("ix_honey_marks_tenant_id_set_id", "honey_marks", ["tenant_id", "set_id"])
    if op.get_bind().dialect.name == "postgresql":
        for table in TENANT_TABLES:
            op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            op.execute(
                f"CREATE POLICY tenant_isolation ON {table} FOR ALL "
                f"USING (tenant_id = {CURRENT_TENANT}) WITH CHECK (tenant_id = {CURRENT_TENANT})"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TENANT_TABLES:
            op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
    op.drop_index("ix_honey_marks_tenant_id_set_id", table_name="honey_marks")
    op.drop_table("honey_marks")
    op.drop_index("ix_honey_sets_tenant_id_planted_at", table_name="honey_sets")
    op.drop_table("honey_sets")
