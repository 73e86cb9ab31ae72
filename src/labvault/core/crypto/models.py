"""Wrapped keys as stored in the database. Nothing here is usable without the key provider."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, RawBytes, utcnow


class DataKeyRecord(Base):
    """A subject's data key, wrapped. Deleting the row crypto-shreds the subject's data.

    The subject (type and id) is part of the wrapping context, so a wrapped key copied to
    another subject's row does not unwrap.
    """

    __tablename__ = "data_keys"
    __table_args__ = (
        UniqueConstraint("tenant_id", "subject_type", "subject_id"),
        UniqueConstraint("tenant_id", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[uuid.UUID]
    wrapped_key: Mapped[bytes] = mapped_column(RawBytes)
    provider: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class IndexKeyRecord(Base):
    """One tenant's blind-index key for one kind of value and generation, wrapped.

    A tenant holds one generation, or two while ``keys rotate-index`` recomputes its indexes.
    """

    __tablename__ = "index_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "kind", "generation"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    kind: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    wrapped_key: Mapped[bytes] = mapped_column(RawBytes)
    provider: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
