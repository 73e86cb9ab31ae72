"""Blind-index key generations (issue 7): rotate an index key without downtime.

``index_keys`` gains ``generation``: a tenant holds one generation of keys per kind, two
while ``labvault keys rotate-index`` runs (the old one answers lookups until every row is
recomputed, then it is deleted). ``patients``, ``staff_members`` and ``accounts`` gain
``index_generation``: the generation their blind indexes were computed with, so the job
knows which rows are left. Existing keys and rows are generation 1. RLS is unchanged.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 01:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXED_TABLES = ("patients", "staff_members", "accounts")


def upgrade() -> None:
    with op.batch_alter_table("index_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("generation", sa.Integer(), nullable=False, server_default="1")
        )
        batch_op.drop_constraint(op.f("uq_index_keys_tenant_id_kind"), type_="unique")
        batch_op.create_unique_constraint(
            op.f("uq_index_keys_tenant_id_kind_generation"), ["tenant_id", "kind", "generation"]
        )
    for table in INDEXED_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("index_generation", sa.Integer(), nullable=False, server_default="1")
            )


def downgrade() -> None:
    for table in reversed(INDEXED_TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("index_generation")
    # Only one generation can survive a downgrade: keep each kind's newest key.
    op.execute(
        "DELETE FROM index_keys WHERE generation < "
        "(SELECT MAX(newer.generation) FROM index_keys AS newer "
        "WHERE newer.tenant_id = index_keys.tenant_id AND newer.kind = index_keys.kind)"
    )
    with op.batch_alter_table("index_keys", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_index_keys_tenant_id_kind_generation"), type_="unique")
        batch_op.create_unique_constraint(
            op.f("uq_index_keys_tenant_id_kind"), ["tenant_id", "kind"]
        )
        batch_op.drop_column("generation")
