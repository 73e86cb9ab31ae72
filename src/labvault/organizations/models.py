"""A lab group is the tenant; every tenant-owned row carries its ``tenant_id``."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, utcnow


class Organization(HasRandomId, Base):
    __tablename__ = "organizations"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Site(HasRandomId, Base):
    """A sampling site. Its address is the lab's, not personal data, so it is plaintext."""

    __tablename__ = "sites"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        # Target of tenant-scoped foreign keys: a row can only point at its own tenant's site.
        UniqueConstraint("tenant_id", "id"),
        CheckConstraint("sampling_capacity_per_hour >= 0", name="capacity_not_negative"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    name: Mapped[str] = mapped_column(String(200))
    address_line: Mapped[str] = mapped_column(String(300))
    postal_code: Mapped[str] = mapped_column(String(10))
    city: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Paris")
    # {"mon": [["07:00", "12:00"], ["14:00", "18:00"]], ...} in the site's local time.
    opening_hours: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sampling_capacity_per_hour: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
