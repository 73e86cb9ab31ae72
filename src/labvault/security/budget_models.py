"""Read budgets' tables: an organization's limits, and the embedded counter store.

``read_budget_reads`` is a who-read-whom list, so it keeps the minimum: the principal by
kind and id, a keyed digest of the patient id (HMAC under a per-tenant key: the table
alone does not even name the patient), and the time of the last read. Rows older than the
longest window (30 days) are purged as the store goes.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, RawBytes, utcnow


class ReadBudgetLimit(HasRandomId, Base):
    """An organization's own limits for a principal kind and role (``*``: every role)."""

    __tablename__ = "read_budget_limits"
    __table_args__ = (UniqueConstraint("tenant_id", "principal_kind", "role"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    principal_kind: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(32))
    per_hour: Mapped[int] = mapped_column(Integer)
    per_day: Mapped[int] = mapped_column(Integer)
    per_30_days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class ReadBudgetRead(HasRandomId, Base):
    """A principal's last read of one patient (by keyed digest), for the sliding windows."""

    __tablename__ = "read_budget_reads"
    __table_args__ = (
        UniqueConstraint("tenant_id", "principal_key", "subject_digest"),
        Index("ix_read_budget_reads_principal_last", "tenant_id", "principal_key", "last_read_at"),
        Index("ix_read_budget_reads_last_read_at", "last_read_at"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    principal_key: Mapped[str] = mapped_column(String(96))
    subject_digest: Mapped[bytes] = mapped_column(RawBytes)
    last_read_at: Mapped[dt.datetime]
