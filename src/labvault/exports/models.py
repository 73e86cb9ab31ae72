"""Export records: who exported what, when, and the keyed digests of the fingerprint rows.

The fingerprint rows themselves are never stored: only HMACs of their normalised identities
(under a per-tenant key from the key provider), so the table says nothing about anyone and
a leaked copy can still be matched to its export.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, RawBytes, utcnow

__all__ = ["ExportRecord"]


class ExportRecord(HasRandomId, Base):
    """One export handed to a person (``recipient_account_id``: the account that downloaded
    it; ``staff_id``: the staff member behind it). ``fingerprint_digests``: the
    concatenated 16-byte digests of its fingerprint rows."""

    __tablename__ = "export_records"
    __table_args__ = (Index("ix_export_records_tenant_created", "tenant_id", "created_at"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    kind: Mapped[str] = mapped_column(String(48))
    staff_id: Mapped[uuid.UUID | None]
    recipient_account_id: Mapped[uuid.UUID]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    row_count: Mapped[int] = mapped_column(Integer)
    fingerprint_count: Mapped[int] = mapped_column(Integer)
    fingerprint_digests: Mapped[bytes] = mapped_column(RawBytes)
