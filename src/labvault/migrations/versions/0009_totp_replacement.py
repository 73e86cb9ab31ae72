"""TOTP replacement: an account may hold its confirmed authenticator and one new, pending
one at the same time, so that the old app keeps working until the new one is confirmed.

The unique index on ``totp_credentials.account_id`` becomes two partial unique indexes: at
most one confirmed credential and at most one pending credential per account.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONFIRMED = "confirmed_at IS NOT NULL"
_PENDING = "confirmed_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("totp_credentials", schema=None) as batch_op:
        batch_op.drop_index("uq_totp_credentials_account_id")
        batch_op.create_index(
            "uq_totp_credentials_account_id_confirmed",
            ["account_id"],
            unique=True,
            sqlite_where=sa.text(_CONFIRMED),
            postgresql_where=sa.text(_CONFIRMED),
        )
        batch_op.create_index(
            "uq_totp_credentials_account_id_pending",
            ["account_id"],
            unique=True,
            sqlite_where=sa.text(_PENDING),
            postgresql_where=sa.text(_PENDING),
        )


def downgrade() -> None:
    # Keep the confirmed credential of an account that has both (the pending one was never
    # proven), then the single index again.
    op.execute(
        "DELETE FROM totp_credentials WHERE confirmed_at IS NULL AND account_id IN "
        "(SELECT account_id FROM totp_credentials WHERE confirmed_at IS NOT NULL)"
    )
    with op.batch_alter_table("totp_credentials", schema=None) as batch_op:
        batch_op.drop_index("uq_totp_credentials_account_id_pending")
        batch_op.drop_index("uq_totp_credentials_account_id_confirmed")
        batch_op.create_index("uq_totp_credentials_account_id", ["account_id"], unique=True)
