"""Catalog exams as stored. The catalog is the lab's, not personal data: plaintext. An exam
linked to a patient (an appointment) is health data: never put its name in an email or log.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
    Text,
    Time,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, utcnow

MAX_FASTING_HOURS = 16


class Exam(HasRandomId, Base):
    __tablename__ = "exams"
    __table_args__ = (
        UniqueConstraint("tenant_id", "code"),
        UniqueConstraint("tenant_id", "id"),
        CheckConstraint("sampling_minutes BETWEEN 1 AND 240", name="sampling_minutes_range"),
        CheckConstraint(
            f"fasting_hours BETWEEN 0 AND {MAX_FASTING_HOURS}", name="fasting_hours_range"
        ),
        CheckConstraint(
            "(window_start IS NULL AND window_end IS NULL) OR "
            "(window_start IS NOT NULL AND window_end IS NOT NULL AND window_start < window_end)",
            name="window_ordered",
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    code: Mapped[str] = mapped_column(String(32))
    """The organization's own code, unique per organization."""
    loinc: Mapped[str | None] = mapped_column(String(10))
    label: Mapped[str] = mapped_column(String(200))
    sampling_minutes: Mapped[int] = mapped_column(Integer)
    home_sampling: Mapped[bool] = mapped_column(Boolean, default=False)
    fasting_hours: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[dt.time | None] = mapped_column(Time)
    """Time-of-day constraint, site local time: the visit lies within [start, end]."""
    window_end: Mapped[dt.time | None] = mapped_column(Time)
    no_appointment: Mapped[bool] = mapped_column(Boolean, default=False)
    preparation_text: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
