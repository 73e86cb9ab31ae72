"""What pages and the API show of an appointment, once the caller's policy has been applied.

Views are plain values: building one never decrypts anything by itself. The sealed parts
(exams, home address) are filled by :class:`labvault.appointments.services.BookingService`
only when the caller may read them; otherwise they are empty.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from labvault.appointments.models import AppointmentKind, AppointmentStatus


@dataclass(frozen=True, slots=True, repr=False)
class HomeAddress:
    """Where a home visit takes place (personal data: sealed at rest, never logged)."""

    line: str
    postal_code: str
    city: str
    instructions: str = ""

    def __repr__(self) -> str:
        return "HomeAddress(**********)"


@dataclass(frozen=True, slots=True)
class AppointmentView:
    """An appointment as the caller may see it. Times are aware, in UTC."""

    id: uuid.UUID
    patient_id: uuid.UUID
    site_id: uuid.UUID
    site_name: str
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    status: AppointmentStatus
    kind: AppointmentKind
    walk_in: bool
    exam_ids: tuple[uuid.UUID, ...]
    """Empty when there are none or the caller may not read them."""
    home_address: HomeAddress | None
    sampler_staff_id: uuid.UUID | None
    hold_expires_at: dt.datetime | None
    changeable: bool
    """The patient may still reschedule or cancel it (before the change deadline)."""
