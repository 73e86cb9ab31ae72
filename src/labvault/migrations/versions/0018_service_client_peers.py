"""MLLP sender authentication (review of issue 8): each sending system's allow-list of
peer networks, ``service_clients.hl7_peers`` (space-separated CIDRs).

No backfill: a client registered before this revision has none and its MLLP messages are
refused until ``labvault results clients set-peers`` names its addresses (there are no such
clients in production yet).

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30 05:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("service_clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hl7_peers", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("service_clients", schema=None) as batch_op:
        batch_op.drop_column("hl7_peers")
