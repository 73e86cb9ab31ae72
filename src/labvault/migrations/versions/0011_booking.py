"""Booking, pre-registration, documents and desk identity checks (issue 6), with RLS.

``appointments`` gains what booking needs: kind (site or home), end, walk-in flag, sealed
exams and home address (under the patient's key), the home sampler, who booked, the hold's
expiry, and the times of confirmation, cancellation, check-in, reminder and anonymisation.
``slot_claims``: one row per (slot, box) an appointment occupies, unique, so capacity holds
under any concurrency. ``preregistrations`` (sealed details), ``patient_documents`` (sealed
content, sniffed media type, consent, deletion date) and ``identity_checks`` (sealed document
kind seen at the desk, identity status before and after) are new tenant tables with the same
``tenant_isolation`` policy as 0008 gives every tenant table.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = ("slot_claims", "preregistrations", "patient_documents", "identity_checks")
CURRENT_TENANT = "NULLIF(current_setting('labvault.tenant_id', true), '')::uuid"


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"],
        ["organizations.id"],
        name=op.f(f"fk_{table}_tenant_id_organizations"),
        ondelete="RESTRICT",
    )


def _patient_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id", "patient_id"],
        ["patients.tenant_id", "patients.id"],
        name=op.f(f"fk_{table}_tenant_id_patients"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("kind", sa.String(length=8), nullable=False, server_default="site")
        )
        batch_op.add_column(
            sa.Column("walk_in", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("exams", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("home_address", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("sampler_staff_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("booked_by_account_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("booked_by_staff_id", sa.Uuid(), nullable=True))
        for column in (
            "hold_expires_at",
            "confirmed_at",
            "cancelled_at",
            "checked_in_at",
            "reminder_sent_at",
            "anonymised_at",
        ):
            batch_op.add_column(sa.Column(column, sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_unique_constraint(op.f("uq_appointments_tenant_id_id"), ["tenant_id", "id"])
        batch_op.create_check_constraint(
            op.f("ck_appointments_times_ordered"), "ends_at IS NULL OR ends_at > starts_at"
        )
        batch_op.create_check_constraint(
            op.f("ck_appointments_kind_known"), "kind IN ('site', 'home')"
        )
    op.execute("UPDATE appointments SET updated_at = created_at WHERE updated_at IS NULL")
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.alter_column(
            "updated_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )

    op.create_table(
        "slot_claims",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("box", sa.Integer(), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint("box >= 0", name=op.f("ck_slot_claims_box_positive")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "appointment_id"],
            ["appointments.tenant_id", "appointments.id"],
            name=op.f("fk_slot_claims_tenant_id_appointments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "site_id"],
            ["sites.tenant_id", "sites.id"],
            name=op.f("fk_slot_claims_tenant_id_sites"),
            ondelete="CASCADE",
        ),
        _tenant_fk("slot_claims"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slot_claims")),
        sa.UniqueConstraint(
            "tenant_id",
            "site_id",
            "starts_at",
            "box",
            name=op.f("uq_slot_claims_tenant_id_site_id_starts_at_box"),
        ),
    )
    op.create_index(
        "ix_slot_claims_tenant_id_appointment_id",
        "slot_claims",
        ["tenant_id", "appointment_id"],
    )

    op.create_table(
        "preregistrations",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("details", sa.LargeBinary(), nullable=False),
        sa.Column("third_party_payment", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "appointment_id"],
            ["appointments.tenant_id", "appointments.id"],
            name=op.f("fk_preregistrations_tenant_id_appointments"),
            ondelete="CASCADE",
        ),
        _patient_fk("preregistrations"),
        _tenant_fk("preregistrations"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preregistrations")),
        sa.UniqueConstraint(
            "tenant_id", "appointment_id", name=op.f("uq_preregistrations_tenant_id_appointment_id")
        ),
    )

    op.create_table(
        "patient_documents",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("media_type", sa.String(length=40), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("consent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploaded_by_account_id", sa.Uuid(), nullable=True),
        sa.Column("delete_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint("size_bytes > 0", name=op.f("ck_patient_documents_size_positive")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "appointment_id"],
            ["appointments.tenant_id", "appointments.id"],
            name=op.f("fk_patient_documents_tenant_id_appointments"),
            ondelete="SET NULL",
        ),
        _patient_fk("patient_documents"),
        _tenant_fk("patient_documents"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_documents")),
    )
    op.create_index(
        "ix_patient_documents_tenant_id_patient_id",
        "patient_documents",
        ["tenant_id", "patient_id"],
    )
    op.create_index("ix_patient_documents_delete_after", "patient_documents", ["delete_after"])

    op.create_table(
        "identity_checks",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=True),
        sa.Column("staff_id", sa.Uuid(), nullable=False),
        sa.Column("document_kind", sa.LargeBinary(), nullable=False),
        sa.Column("status_before", sa.String(length=8), nullable=False),
        sa.Column("status_after", sa.String(length=8), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        _patient_fk("identity_checks"),
        _tenant_fk("identity_checks"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_checks")),
    )
    op.create_index(
        "ix_identity_checks_tenant_id_patient_id", "identity_checks", ["tenant_id", "patient_id"]
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
    op.drop_index("ix_identity_checks_tenant_id_patient_id", table_name="identity_checks")
    op.drop_table("identity_checks")
    op.drop_index("ix_patient_documents_delete_after", table_name="patient_documents")
    op.drop_index("ix_patient_documents_tenant_id_patient_id", table_name="patient_documents")
    op.drop_table("patient_documents")
    op.drop_table("preregistrations")
    op.drop_index("ix_slot_claims_tenant_id_appointment_id", table_name="slot_claims")
    op.drop_table("slot_claims")
    with op.batch_alter_table("appointments", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_appointments_kind_known"), type_="check")
        batch_op.drop_constraint(op.f("ck_appointments_times_ordered"), type_="check")
        batch_op.drop_constraint(op.f("uq_appointments_tenant_id_id"), type_="unique")
        for column in (
            "updated_at",
            "anonymised_at",
            "reminder_sent_at",
            "checked_in_at",
            "cancelled_at",
            "confirmed_at",
            "hold_expires_at",
            "booked_by_staff_id",
            "booked_by_account_id",
            "sampler_staff_id",
            "home_address",
            "exams",
            "walk_in",
            "kind",
            "ends_at",
        ):
            batch_op.drop_column(column)
