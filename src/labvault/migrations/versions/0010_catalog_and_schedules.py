"""Exam catalog, site schedules and closures (issue 6), with row-level security.

``exams``: each organization's catalog (code unique per organization, LOINC, preparation
rules). ``site_schedules``: sampling boxes, slot length and walk-in boxes per site (opening
hours stay on ``sites.opening_hours``). ``site_closures``: whole-day closures with a reason.
Both point at their site through the tenant-scoped key (tenant_id, site_id). On PostgreSQL
the three tables get the same ``tenant_isolation`` policy as 0008 gives every tenant table.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = ("exams", "site_schedules", "site_closures")
CURRENT_TENANT = "NULLIF(current_setting('labvault.tenant_id', true), '')::uuid"


def upgrade() -> None:
    op.create_table(
        "exams",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("loinc", sa.String(length=10), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("sampling_minutes", sa.Integer(), nullable=False),
        sa.Column("home_sampling", sa.Boolean(), nullable=False),
        sa.Column("fasting_hours", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.Time(), nullable=True),
        sa.Column("window_end", sa.Time(), nullable=True),
        sa.Column("no_appointment", sa.Boolean(), nullable=False),
        sa.Column("preparation_text", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint(
            "(window_start IS NULL AND window_end IS NULL) OR "
            "(window_start IS NOT NULL AND window_end IS NOT NULL AND window_start < window_end)",
            name=op.f("ck_exams_window_ordered"),
        ),
        sa.CheckConstraint(
            "fasting_hours BETWEEN 0 AND 16", name=op.f("ck_exams_fasting_hours_range")
        ),
        sa.CheckConstraint(
            "sampling_minutes BETWEEN 1 AND 240", name=op.f("ck_exams_sampling_minutes_range")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_exams_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exams")),
        sa.UniqueConstraint("tenant_id", "code", name=op.f("uq_exams_tenant_id_code")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_exams_tenant_id_id")),
    )
    op.create_table(
        "site_closures",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("starts_on", sa.Date(), nullable=False),
        sa.Column("ends_on", sa.Date(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint("starts_on <= ends_on", name=op.f("ck_site_closures_dates_ordered")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "site_id"],
            ["sites.tenant_id", "sites.id"],
            name=op.f("fk_site_closures_tenant_id_sites"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_site_closures_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_closures")),
    )
    with op.batch_alter_table("site_closures", schema=None) as batch_op:
        batch_op.create_index(
            "ix_site_closures_tenant_id_site_id_starts_on",
            ["tenant_id", "site_id", "starts_on"],
            unique=False,
        )

    op.create_table(
        "site_schedules",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("slot_minutes", sa.Integer(), nullable=False),
        sa.Column("sampling_boxes", sa.Integer(), nullable=False),
        sa.Column("walk_in_boxes", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint(
            "sampling_boxes BETWEEN 1 AND 50", name=op.f("ck_site_schedules_boxes_range")
        ),
        sa.CheckConstraint(
            "slot_minutes BETWEEN 5 AND 240", name=op.f("ck_site_schedules_slot_minutes_range")
        ),
        sa.CheckConstraint(
            "walk_in_boxes >= 0 AND walk_in_boxes <= sampling_boxes",
            name=op.f("ck_site_schedules_walk_in_within_boxes"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "site_id"],
            ["sites.tenant_id", "sites.id"],
            name=op.f("fk_site_schedules_tenant_id_sites"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_site_schedules_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_schedules")),
        sa.UniqueConstraint(
            "tenant_id", "site_id", name=op.f("uq_site_schedules_tenant_id_site_id")
        ),
    )
    _enable_row_level_security()


def _enable_row_level_security() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
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
    op.drop_table("site_schedules")
    with op.batch_alter_table("site_closures", schema=None) as batch_op:
        batch_op.drop_index("ix_site_closures_tenant_id_site_id_starts_on")

    op.drop_table("site_closures")
    op.drop_table("exams")
