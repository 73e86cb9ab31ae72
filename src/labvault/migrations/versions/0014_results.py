"""Lab results (issue 8): sending systems and their tokens, the intake journal, orders,
reports, observations, shares and the sensitive-exam list, with RLS.

Health values are sealed columns (``details``, ``content``, ``pdf``, ``recipient``); sender
identifiers and tokens are SHA-256 digests. Every new table is tenant-owned and gets the same
``tenant_isolation`` policy as 0008 gives every tenant table.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 04:09:04.087985
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('labvault.tenant_id', true), '')::uuid"
TENANT_TABLES = (
    "sensitive_exam_codes",
    "service_clients",
    "service_client_sites",
    "service_tokens",
    "result_messages",
    "result_orders",
    "result_reports",
    "result_observations",
    "result_shares",
)


def upgrade() -> None:
    op.create_table(
        "sensitive_exam_codes",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("system", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_sensitive_exam_codes_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sensitive_exam_codes")),
        sa.UniqueConstraint(
            "tenant_id",
            "system",
            "code",
            name=op.f("uq_sensitive_exam_codes_tenant_id_system_code"),
        ),
    )
    op.create_table(
        "service_clients",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("scopes", sa.String(length=1000), nullable=False),
        sa.Column("hl7_application", sa.String(length=227), nullable=True),
        sa.Column("hl7_facility", sa.String(length=227), nullable=True),
        sa.Column("default_site_id", sa.Uuid(), nullable=True),
        sa.Column("secret_hash", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_reason", sa.String(length=64), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint("kind IN ('lis', 'fhir')", name=op.f("ck_service_clients_kind_known")),
        sa.ForeignKeyConstraint(
            ["default_site_id"],
            ["sites.id"],
            name=op.f("fk_service_clients_default_site_id_sites"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_service_clients_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_clients")),
        sa.UniqueConstraint(
            "tenant_id",
            "hl7_application",
            "hl7_facility",
            name=op.f("uq_service_clients_tenant_id_hl7_application_hl7_facility"),
        ),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_service_clients_tenant_id_id")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_service_clients_tenant_id_name")),
    )
    op.create_table(
        "result_messages",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.Uuid(), nullable=False),
        sa.Column("dedup_digest", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("queue_reason", sa.String(length=32), nullable=True),
        sa.Column("patient_id", sa.Uuid(), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=128), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint(
            "status IN ('attached', 'queued', 'resolved', 'discarded')",
            name=op.f("ck_result_messages_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "client_id"],
            ["service_clients.tenant_id", "service_clients.id"],
            name=op.f("fk_result_messages_tenant_id_service_clients"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "patient_id"],
            ["patients.tenant_id", "patients.id"],
            name=op.f("fk_result_messages_tenant_id_patients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_result_messages_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_messages")),
        sa.UniqueConstraint(
            "tenant_id",
            "client_id",
            "dedup_digest",
            name=op.f("uq_result_messages_tenant_id_client_id_dedup_digest"),
        ),
    )
    with op.batch_alter_table("result_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_result_messages_tenant_id_status", ["tenant_id", "status"], unique=False
        )

    op.create_table(
        "service_client_sites",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.Uuid(), nullable=False),
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_service_client_sites_site_id_sites"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "client_id"],
            ["service_clients.tenant_id", "service_clients.id"],
            name=op.f("fk_service_client_sites_tenant_id_service_clients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_service_client_sites_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("client_id", "site_id", name=op.f("pk_service_client_sites")),
    )
    op.create_table(
        "service_tokens",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.Uuid(), nullable=False),
        sa.Column("token_digest", sa.LargeBinary(), nullable=False),
        sa.Column("scopes", sa.String(length=1000), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "client_id"],
            ["service_clients.tenant_id", "service_clients.id"],
            name=op.f("fk_service_tokens_tenant_id_service_clients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_service_tokens_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_tokens")),
        sa.UniqueConstraint("token_digest", name=op.f("uq_service_tokens_token_digest")),
    )
    with op.batch_alter_table("service_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_service_tokens_expires_at", ["expires_at"], unique=False)
        batch_op.create_index(
            "ix_service_tokens_tenant_id_client_id", ["tenant_id", "client_id"], unique=False
        )

    op.create_table(
        "result_orders",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.Uuid(), nullable=True),
        sa.Column("order_digest", sa.LargeBinary(), nullable=False),
        sa.Column("site_id", sa.Uuid(), nullable=True),
        sa.Column("appointment_id", sa.Uuid(), nullable=True),
        sa.Column("details", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_result_orders_site_id_sites"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "appointment_id"],
            ["appointments.tenant_id", "appointments.id"],
            name=op.f("fk_result_orders_tenant_id_appointments"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "client_id"],
            ["service_clients.tenant_id", "service_clients.id"],
            name=op.f("fk_result_orders_tenant_id_service_clients"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "patient_id"],
            ["patients.tenant_id", "patients.id"],
            name=op.f("fk_result_orders_tenant_id_patients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_result_orders_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_orders")),
        sa.UniqueConstraint(
            "tenant_id",
            "client_id",
            "order_digest",
            name=op.f("uq_result_orders_tenant_id_client_id_order_digest"),
        ),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_result_orders_tenant_id_id")),
    )
    with op.batch_alter_table("result_orders", schema=None) as batch_op:
        batch_op.create_index(
            "ix_result_orders_tenant_id_patient_id", ["tenant_id", "patient_id"], unique=False
        )
        batch_op.create_index(
            "ix_result_orders_tenant_id_site_id_created_at",
            ["tenant_id", "site_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "result_reports",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("lis_status", sa.String(length=1), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("pdf", sa.LargeBinary(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("validated_by", sa.Uuid(), nullable=True),
        sa.Column("validated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.Uuid(), nullable=True),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint(
            "status IN ('to-validate', 'validated', 'released')",
            name=op.f("ck_result_reports_status_known"),
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_result_reports_version_positive")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "order_id"],
            ["result_orders.tenant_id", "result_orders.id"],
            name=op.f("fk_result_reports_tenant_id_result_orders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "patient_id"],
            ["patients.tenant_id", "patients.id"],
            name=op.f("fk_result_reports_tenant_id_patients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_result_reports_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_reports")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_result_reports_tenant_id_id")),
        sa.UniqueConstraint(
            "tenant_id", "order_id", name=op.f("uq_result_reports_tenant_id_order_id")
        ),
    )
    with op.batch_alter_table("result_reports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_result_reports_tenant_id_patient_id", ["tenant_id", "patient_id"], unique=False
        )
        batch_op.create_index(
            "ix_result_reports_tenant_id_status", ["tenant_id", "status"], unique=False
        )

    op.create_table(
        "result_observations",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("report_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint("position >= 1", name=op.f("ck_result_observations_position_positive")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "patient_id"],
            ["patients.tenant_id", "patients.id"],
            name=op.f("fk_result_observations_tenant_id_patients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "report_id"],
            ["result_reports.tenant_id", "result_reports.id"],
            name=op.f("fk_result_observations_tenant_id_result_reports"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_result_observations_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_observations")),
        sa.UniqueConstraint(
            "tenant_id",
            "report_id",
            "position",
            name=op.f("uq_result_observations_tenant_id_report_id_position"),
        ),
    )
    with op.batch_alter_table("result_observations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_result_observations_tenant_id_patient_id", ["tenant_id", "patient_id"], unique=False
        )

    op.create_table(
        "result_shares",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("report_id", sa.Uuid(), nullable=False),
        sa.Column("token_digest", sa.LargeBinary(), nullable=False),
        sa.Column("recipient", sa.LargeBinary(), nullable=False),
        sa.Column("created_by_account_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("views", sa.Integer(), nullable=False),
        sa.Column("last_viewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "patient_id"],
            ["patients.tenant_id", "patients.id"],
            name=op.f("fk_result_shares_tenant_id_patients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "report_id"],
            ["result_reports.tenant_id", "result_reports.id"],
            name=op.f("fk_result_shares_tenant_id_result_reports"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_result_shares_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_shares")),
        sa.UniqueConstraint("token_digest", name=op.f("uq_result_shares_token_digest")),
    )
    with op.batch_alter_table("result_shares", schema=None) as batch_op:
        batch_op.create_index(
            "ix_result_shares_tenant_id_report_id", ["tenant_id", "report_id"], unique=False
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
    with op.batch_alter_table("result_shares", schema=None) as batch_op:
        batch_op.drop_index("ix_result_shares_tenant_id_report_id")

    op.drop_table("result_shares")
    with op.batch_alter_table("result_observations", schema=None) as batch_op:
        batch_op.drop_index("ix_result_observations_tenant_id_patient_id")

    op.drop_table("result_observations")
    with op.batch_alter_table("result_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_result_reports_tenant_id_status")
        batch_op.drop_index("ix_result_reports_tenant_id_patient_id")

    op.drop_table("result_reports")
    with op.batch_alter_table("result_orders", schema=None) as batch_op:
        batch_op.drop_index("ix_result_orders_tenant_id_site_id_created_at")
        batch_op.drop_index("ix_result_orders_tenant_id_patient_id")

    op.drop_table("result_orders")
    with op.batch_alter_table("service_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_service_tokens_tenant_id_client_id")
        batch_op.drop_index("ix_service_tokens_expires_at")

    op.drop_table("service_tokens")
    op.drop_table("service_client_sites")
    with op.batch_alter_table("result_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_result_messages_tenant_id_status")

    op.drop_table("result_messages")
    op.drop_table("service_clients")
    op.drop_table("sensitive_exam_codes")
