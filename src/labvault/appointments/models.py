"""Appointments as stored. An appointment at a site is also what puts a patient in that
site's care: the staff relationship rule (``labvault.patients.scope``) is read from here.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, utcnow


class AppointmentStatus(enum.StrEnum):
    BOOKED = "booked"
    CHECKED_IN = "checked_in"
    DONE = "done"
    NO_SHOW = "no_show"
    CANCELLED = "cancelled"


class Appointment(HasRandomId, Base):
    __tablename__ = "appointments"
    __table_args__ = (
        # The relationship rule asks "which patients have an appointment at these sites
        # around now": by site and time first.
        Index("ix_appointments_tenant_id_site_id_starts_at", "tenant_id", "site_id", "starts_at"),
        Index("ix_appointments_tenant_id_patient_id", "tenant_id", "patient_id"),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "site_id"], ["sites.tenant_id", "sites.id"], ondelete="RESTRICT"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    site_id: Mapped[uuid.UUID]
    starts_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(16), default=AppointmentStatus.BOOKED.value)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
