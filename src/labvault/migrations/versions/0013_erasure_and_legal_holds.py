"""Erasure by crypto-shredding and legal holds (issue 7), with RLS.

``patients`` gains its erasure tombstone (``erased_at``, who erased it as the audit log names
principals, and who asked: ``patient``/``staff``/``cli``) and ``data_key_id`` becomes nullable:
erasing a record deletes its ``data_keys`` row, which the foreign key would otherwise forbid.
The sealed columns stay; nothing can open them any more. ``legal_holds``: a record that must
be kept (a closed list of reasons, an optional last day); a new tenant table with the same
``tenant_isolation`` policy as 0008 gives every tenant table. No personal value in either.

SQLite cannot drop a NOT NULL constraint with ALTER TABLE, and rebuilding ``patients`` (what
Alembic's batch mode does) would fire the ON DELETE CASCADE of every table pointing at it
when the old table is dropped: migrations run inside a transaction, where
``PRAGMA foreign_keys=OFF`` is a no-op. So the constraint is removed from the stored schema
text instead, the procedure SQLite documents for removing a NOT NULL constraint
(https://www.sqlite.org/lang_altertable.html, "otheralter"): the data on disk is unchanged.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 02:00:00.000000
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_TENANT = "NULLIF(current_setting('labvault.tenant_id', true), '')::uuid"
_DATA_KEY_ID_NOT_NULL = re.compile(r"(\bdata_key_id [A-Z]+(?:\(\d+\))?) NOT NULL")
_DATA_KEY_ID_NULLABLE = re.compile(r"(\bdata_key_id [A-Z]+(?:\(\d+\))?)(,)")


def upgrade() -> None:
    for column in (
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("erased_by_kind", sa.String(length=16), nullable=True),
        sa.Column("erased_by_id", sa.String(length=128), nullable=True),
        sa.Column("erasure_requested_by", sa.String(length=8), nullable=True),
    ):
        op.add_column("patients", column)
    if op.get_bind().dialect.name == "sqlite":
        _rewrite_patients_schema(_DATA_KEY_ID_NOT_NULL, r"\1")
    else:
        op.alter_column("patients", "data_key_id", existing_type=sa.Uuid(), nullable=True)

    op.create_table(
        "legal_holds",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("until", sa.Date(), nullable=True),
        sa.Column("placed_by", sa.String(length=128), nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_by", sa.String(length=128), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint(
            "reason IN ('lab-report-retention', 'litigation', 'authority-request')",
            name=op.f("ck_legal_holds_reason_known"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "patient_id"],
            ["patients.tenant_id", "patients.id"],
            name=op.f("fk_legal_holds_tenant_id_patients"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["organizations.id"],
            name=op.f("fk_legal_holds_tenant_id_organizations"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_holds")),
    )
    op.create_index(
        "ix_legal_holds_tenant_id_patient_id", "legal_holds", ["tenant_id", "patient_id"]
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE legal_holds ENABLE ROW LEVEL SECURITY")
        op.execute(
            "CREATE POLICY tenant_isolation ON legal_holds FOR ALL "
            f"USING (tenant_id = {CURRENT_TENANT}) WITH CHECK (tenant_id = {CURRENT_TENANT})"
        )


def downgrade() -> None:
    bind = op.get_bind()
    erased = bind.execute(sa.text("SELECT count(*) FROM patients WHERE data_key_id IS NULL"))
    if erased.scalar_one():
        raise RuntimeError(
            "erased patient records exist: their data keys are destroyed, so data_key_id "
            "cannot become NOT NULL again; this migration cannot be undone"
        )
    if bind.dialect.name == "postgresql":
        op.execute("DROP POLICY IF EXISTS tenant_isolation ON legal_holds")
    op.drop_index("ix_legal_holds_tenant_id_patient_id", table_name="legal_holds")
    op.drop_table("legal_holds")
    if bind.dialect.name == "sqlite":
        _rewrite_patients_schema(_DATA_KEY_ID_NULLABLE, r"\1 NOT NULL\2")
    else:
        op.alter_column("patients", "data_key_id", existing_type=sa.Uuid(), nullable=False)
    # Plain ALTER TABLE DROP COLUMN (SQLite >= 3.35): never a rebuild of patients.
    for column in ("erasure_requested_by", "erased_by_id", "erased_by_kind", "erased_at"):
        op.drop_column("patients", column)


def _rewrite_patients_schema(pattern: re.Pattern[str], replacement: str) -> None:
    """Edit the stored CREATE TABLE of ``patients`` (SQLite only; see the module docstring)."""
    bind = op.get_bind()
    sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'patients'"
    ).scalar_one()
    rewritten, count = pattern.subn(replacement, sql, count=1)
    if count != 1:
        raise RuntimeError("patients.data_key_id is not declared as this migration expects")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    try:
        bind.exec_driver_sql(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'patients'",
            (rewritten,),
        )
        bind.exec_driver_sql(f"PRAGMA schema_version={int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema=OFF")
    problems = bind.exec_driver_sql("PRAGMA quick_check").scalars().all()
    if problems != ["ok"]:
        raise RuntimeError("the SQLite schema check failed after editing patients")
