"""Honey sets and their membership marks (``labvault.security.honey``).

Neither table names a honey patient: a mark is HMAC-SHA256 under the tenant's honey key
(a data key wrapped by the key provider, never in clear in the database) of a patient id,
so without the key the marks are 32 random-looking bytes each and the set of honey
patients cannot be told from the real ones.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, RawBytes, utcnow


class HoneySet(HasRandomId, Base):
    """One planting: where, when, by whom, how dense, and a label for leak attribution."""

    __tablename__ = "honey_sets"
    __table_args__ = (
        Index("ix_honey_sets_tenant_id_planted_at", "tenant_id", "planted_at"),
        # Target of the marks' tenant-scoped foreign key.
        UniqueConstraint("tenant_id", "id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    label: Mapped[str] = mapped_column(String(64))
    """The operator's attribution label (letters, digits, ``.-_``): never personal."""
    planted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    planted_by: Mapped[str] = mapped_column(String(128))
    """The planting principal's id, as in the audit log."""
    density_ppm: Mapped[int] = mapped_column(Integer)
    """The density asked for, in honey patients per million real ones."""
    population: Mapped[int] = mapped_column(Integer)
    """Live real patients of the tenant when the set was planted."""
    patient_count: Mapped[int] = mapped_column(Integer)
    appointment_count: Mapped[int] = mapped_column(Integer)


class HoneyMark(HasRandomId, Base):
    """HMAC(honey key, patient id) of one honey patient: a membership test, not a list."""

    __tablename__ = "honey_marks"
    __table_args__ = (
        UniqueConstraint("tenant_id", "mark"),
        Index("ix_honey_marks_tenant_id_set_id", "tenant_id", "set_id"),
        ForeignKeyConstraint(
            ["tenant_id", "set_id"], ["honey_sets.tenant_id", "honey_sets.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    set_id: Mapped[uuid.UUID]
    mark: Mapped[bytes] = mapped_column(RawBytes(32))
