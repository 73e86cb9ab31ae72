"""Report versions: ``result_report_versions`` and ``result_observation_versions`` keep
every superseded version of a report (a correction or a complement no longer overwrites the
version a biologist validated and the patient was shown).

Only ciphertext goes in, copied verbatim from ``result_reports`` / ``result_observations``
and still bound to those rows' associated data. Both tables are tenant-owned, with
tenant-scoped foreign keys (cascading from the report and the patient) and the same
``tenant_isolation`` policy as every tenant table.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('labvault.tenant_id', true), '')::uuid"
TENANT_TABLES = ("result_report_versions", "result_observation_versions")


def upgrade() -> None:
    op.create_table(
        "result_report_versions",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("report_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("lis_status", sa.String(length=1), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("pdf", sa.LargeBinary(), nullable=True),
        sa.Column("validated_by", sa.Uuid(), nullable=True),
        sa.Column("validated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.Uuid(), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint(
            "status IN ('to-validate', 'validated', 'released')",
            name=op.f("ck_result_report_versions_status_known"),
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_result_report_versions_version_positive")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "patient_id"],
            ["patients.tenant_id", "patients.id"],
            name=op.f("fk_result_report_versions_tenant_id_patients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "report_id"],
            ["result_reports.tenant_id", "result_reports.id"],
            name=op.f("fk_result_report_versions_tenant_id_result_reports"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_result_report_versions_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_report_versions")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_result_report_versions_tenant_id_id")),
        sa.UniqueConstraint(
            "tenant_id",
            "report_id",
            "version",
            name=op.f("uq_result_report_versions_tenant_id_report_id_version"),
        ),
    )
    with op.batch_alter_table("result_report_versions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_result_report_versions_tenant_id_patient_id",
            ["tenant_id", "patient_id"],
            unique=False,
        )

    op.create_table(
        "result_observation_versions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("report_version_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint(
            "position >= 1", name=op.f("ck_result_observation_versions_position_positive")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "patient_id"],
            ["patients.tenant_id", "patients.id"],
            name=op.f("fk_result_observation_versions_tenant_id_patients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "report_version_id"],
            ["result_report_versions.tenant_id", "result_report_versions.id"],
            name=op.f("fk_result_observation_versions_tenant_id_result_report_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_result_observation_versions_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_observation_versions")),
        sa.UniqueConstraint(
            "tenant_id",
            "report_version_id",
            "position",
            name="uq_result_observation_versions_tenant_id_version_position",
        ),
    )
    with op.batch_alter_table("result_observation_versions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_result_observation_versions_tenant_id_patient_id",
            ["tenant_id", "patient_id"],
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
    with op.batch_alter_table("result_observation_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_result_observation_versions_tenant_id_patient_id")
    op.drop_table("result_observation_versions")
    with op.batch_alter_table("result_report_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_result_report_versions_tenant_id_patient_id")
    op.drop_table("result_report_versions")
