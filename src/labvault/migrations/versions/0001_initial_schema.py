"""Initial schema: tenants, sites, staff, patients (sealed), wrapped data and index keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 15:26:42.228443
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "organizations",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint("name", name=op.f("uq_organizations_name")),
    )
    op.create_table(
        "data_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("subject_type", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.Uuid(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_data_keys_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_data_keys")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_data_keys_tenant_id_id")),
        sa.UniqueConstraint(
            "tenant_id",
            "subject_type",
            "subject_id",
            name=op.f("uq_data_keys_tenant_id_subject_type_subject_id"),
        ),
    )
    op.create_table(
        "index_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_index_keys_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_index_keys")),
        sa.UniqueConstraint("tenant_id", "kind", name=op.f("uq_index_keys_tenant_id_kind")),
    )
    op.create_table(
        "sites",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("address_line", sa.String(length=300), nullable=False),
        sa.Column("postal_code", sa.String(length=10), nullable=False),
        sa.Column("city", sa.String(length=100), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("opening_hours", sa.JSON(), nullable=False),
        sa.Column("sampling_capacity_per_hour", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint(
            "sampling_capacity_per_hour >= 0", name=op.f("ck_sites_capacity_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_sites_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sites")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_sites_tenant_id_id")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_sites_tenant_id_name")),
    )
    op.create_table(
        "patients",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("data_key_id", sa.Uuid(), nullable=False),
        sa.Column("birth_name", sa.LargeBinary(), nullable=False),
        sa.Column("used_name", sa.LargeBinary(), nullable=True),
        sa.Column("first_names", sa.LargeBinary(), nullable=False),
        sa.Column("birth_date", sa.LargeBinary(), nullable=False),
        sa.Column("sex", sa.LargeBinary(), nullable=False),
        sa.Column("birth_place_code", sa.LargeBinary(), nullable=True),
        sa.Column("ins_number", sa.LargeBinary(), nullable=True),
        sa.Column("email", sa.LargeBinary(), nullable=True),
        sa.Column("phone", sa.LargeBinary(), nullable=True),
        sa.Column("address_line", sa.LargeBinary(), nullable=True),
        sa.Column("postal_code", sa.LargeBinary(), nullable=True),
        sa.Column("city", sa.LargeBinary(), nullable=True),
        sa.Column("ins_oid", sa.String(length=64), nullable=True),
        sa.Column("identity_status", sa.String(length=8), nullable=False),
        sa.Column("nir_index", sa.LargeBinary(length=32), nullable=True),
        sa.Column("email_index", sa.LargeBinary(length=32), nullable=True),
        sa.Column("phone_index", sa.LargeBinary(length=32), nullable=True),
        sa.Column("name_index", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "data_key_id"],
            ["data_keys.tenant_id", "data_keys.id"],
            name=op.f("fk_patients_tenant_id_data_keys"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_patients_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
    )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_index(
            "ix_patients_tenant_id_email_index", ["tenant_id", "email_index"], unique=False
        )
        batch_op.create_index(
            "ix_patients_tenant_id_name_index", ["tenant_id", "name_index"], unique=False
        )
        batch_op.create_index(
            "ix_patients_tenant_id_phone_index", ["tenant_id", "phone_index"], unique=False
        )
        batch_op.create_index(
            "uq_patients_tenant_id_nir_index", ["tenant_id", "nir_index"], unique=True
        )

    op.create_table(
        "staff_members",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("data_key_id", sa.Uuid(), nullable=False),
        sa.Column("first_name", sa.LargeBinary(), nullable=False),
        sa.Column("last_name", sa.LargeBinary(), nullable=False),
        sa.Column("email", sa.LargeBinary(), nullable=False),
        sa.Column("email_index", sa.LargeBinary(length=32), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "data_key_id"],
            ["data_keys.tenant_id", "data_keys.id"],
            name=op.f("fk_staff_members_tenant_id_data_keys"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_staff_members_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_members")),
        sa.UniqueConstraint("tenant_id", "id", name=op.f("uq_staff_members_tenant_id_id")),
    )
    with op.batch_alter_table("staff_members", schema=None) as batch_op:
        batch_op.create_index(
            "uq_staff_members_tenant_id_email_index", ["tenant_id", "email_index"], unique=True
        )

    op.create_table(
        "staff_sites",
        sa.Column("staff_id", sa.Uuid(), nullable=False),
        sa.Column("site_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "site_id"],
            ["sites.tenant_id", "sites.id"],
            name=op.f("fk_staff_sites_tenant_id_sites"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "staff_id"],
            ["staff_members.tenant_id", "staff_members.id"],
            name=op.f("fk_staff_sites_tenant_id_staff_members"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_staff_sites_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("staff_id", "site_id", name=op.f("pk_staff_sites")),
    )
    with op.batch_alter_table("staff_sites", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_staff_sites_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("staff_sites", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_staff_sites_tenant_id"))

    op.drop_table("staff_sites")
    with op.batch_alter_table("staff_members", schema=None) as batch_op:
        batch_op.drop_index("uq_staff_members_tenant_id_email_index")

    op.drop_table("staff_members")
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index("uq_patients_tenant_id_nir_index")
        batch_op.drop_index("ix_patients_tenant_id_phone_index")
        batch_op.drop_index("ix_patients_tenant_id_name_index")
        batch_op.drop_index("ix_patients_tenant_id_email_index")

    op.drop_table("patients")
    op.drop_table("sites")
    op.drop_table("index_keys")
    op.drop_table("data_keys")
    op.drop_table("organizations")
