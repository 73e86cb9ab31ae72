"""Site schedules and closures as stored. Opening hours stay on ``sites.opening_hours``."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, utcnow

MIN_SLOT_MINUTES = 5
MAX_SLOT_MINUTES = 240
MAX_BOXES = 50


class SiteSchedule(HasRandomId, Base):
    """How a site samples: boxes per slot, slot length, boxes kept for walk-ins.

    Walk-in capacity is a number of boxes reserved in every slot: bookings use
    ``sampling_boxes - walk_in_boxes``; the walk-in boxes are never offered online.
    """

    __tablename__ = "site_schedules"
    __table_args__ = (
        UniqueConstraint("tenant_id", "site_id"),
        ForeignKeyConstraint(
            ["tenant_id", "site_id"], ["sites.tenant_id", "sites.id"], ondelete="CASCADE"
        ),
        CheckConstraint(
            f"slot_minutes BETWEEN {MIN_SLOT_MINUTES} AND {MAX_SLOT_MINUTES}",
            name="slot_minutes_range",
        ),
        CheckConstraint(f"sampling_boxes BETWEEN 1 AND {MAX_BOXES}", name="boxes_range"),
        CheckConstraint(
            "walk_in_boxes >= 0 AND walk_in_boxes <= sampling_boxes", name="walk_in_within_boxes"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    site_id: Mapped[uuid.UUID]
    slot_minutes: Mapped[int] = mapped_column(Integer)
    sampling_boxes: Mapped[int] = mapped_column(Integer)
    walk_in_boxes: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SiteClosure(HasRandomId, Base):
    """Whole local days, ``starts_on`` to ``ends_on`` inclusive, with the lab's reason."""

    __tablename__ = "site_closures"
    __table_args__ = (
        Index("ix_site_closures_tenant_id_site_id_starts_on", "tenant_id", "site_id", "starts_on"),
        ForeignKeyConstraint(
            ["tenant_id", "site_id"], ["sites.tenant_id", "sites.id"], ondelete="CASCADE"
        ),
        CheckConstraint("starts_on <= ends_on", name="dates_ordered"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    site_id: Mapped[uuid.UUID]
    starts_on: Mapped[dt.date]
    ends_on: Mapped[dt.date]
    reason: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
