"""Who an account acts for, and how it ends: one account per linked Patient record, the
dependents a guardian acts for, why an account is locked and when its deletion was asked.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 19:05:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lock_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("closing_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            "uq_accounts_tenant_id_patient_id", ["tenant_id", "patient_id"], unique=True
        )

    op.create_table(
        "account_dependents",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("relationship", sa.String(length=16), nullable=False),
        sa.Column("verified_by", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "account_id"],
            ["accounts.tenant_id", "accounts.id"],
            name=op.f("fk_account_dependents_tenant_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_account_dependents_patient_id_patients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_account_dependents_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_dependents")),
    )
    with op.batch_alter_table("account_dependents", schema=None) as batch_op:
        batch_op.create_index(
            "uq_account_dependents_account_id_patient_id",
            ["account_id", "patient_id"],
            unique=True,
        )
        batch_op.create_index(
            "ix_account_dependents_tenant_id_patient_id", ["tenant_id", "patient_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("account_dependents", schema=None) as batch_op:
        batch_op.drop_index("ix_account_dependents_tenant_id_patient_id")
        batch_op.drop_index("uq_account_dependents_account_id_patient_id")
    op.drop_table("account_dependents")

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index("uq_accounts_tenant_id_patient_id")
        batch_op.drop_column("closing_requested_at")
        batch_op.drop_column("lock_reason")
