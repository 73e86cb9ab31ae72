"""The booking API's bodies and answers.

Bodies forbid unknown fields and take strict types: a date given as ``0``, ``"0"`` or
without a time zone is refused (422) with a French message before anything runs. Answers
carry ids, times and statuses; the exams of an appointment appear as catalog ids only when
the caller may read them.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from labvault.appointments.services import MAX_EXAMS, MAX_YEAR, MIN_YEAR
from labvault.appointments.views import AppointmentView, HomeAddress
from labvault.catalog.models import Exam
from labvault.organizations.models import Site
from labvault.schedules.slots import Slot

ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
ISO_INSTANT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
    r"(Z|z|[+-][0-9]{2}:[0-9]{2})"
)
DATE_MESSAGE = "date invalide (AAAA-MM-JJ attendu)"
INSTANT_MESSAGE = (
    "date et heure invalides (AAAA-MM-JJTHH:MM avec le fuseau, par exemple "
    "2026-12-01T09:00:00+01:00)"
)


def parse_date(value: object) -> dt.date:
    """A calendar date written ``AAAA-MM-JJ`` from 1900 to 2999, nothing else (not 0, not
    "0", not a year whose arithmetic overflows)."""
    if isinstance(value, str) and ISO_DATE.fullmatch(value.strip()):
        try:
            day = dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            if MIN_YEAR <= day.year <= MAX_YEAR:
                return day
    raise ValueError(DATE_MESSAGE)


def parse_instant(value: object) -> dt.datetime:
    """An ISO 8601 date and time with its UTC offset, returned in UTC."""
    if isinstance(value, str) and ISO_INSTANT.fullmatch(value.strip()):
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("z", "Z"))
        except ValueError:
            pass
        else:
            # Bounded before moving to UTC: 0001 minus an offset or 9999 plus one overflows.
            if moment.tzinfo is not None and MIN_YEAR <= moment.year <= MAX_YEAR:
                return moment.astimezone(dt.UTC)
    raise ValueError(INSTANT_MESSAGE)


Day = Annotated[dt.date, BeforeValidator(parse_date)]
Instant = Annotated[dt.datetime, BeforeValidator(parse_instant)]
ExamIds = Annotated[list[uuid.UUID], Field(min_length=1, max_length=MAX_EXAMS)]

_STRICT = ConfigDict(extra="forbid")
"""Unknown fields refused; strings must be JSON strings (``StrictStr``), dates see above."""


class HoldIn(BaseModel):
    """Keep a slot while the form is finished; confirm within the hold's time."""

    model_config = _STRICT

    patient_id: uuid.UUID = Field(description="The record booked for (own, or a dependent).")
    site_id: uuid.UUID
    exam_ids: ExamIds
    starts_at: Instant = Field(description="A slot start from the slot search, with its offset.")


class SlotSearchIn(BaseModel):
    """A slot search. In a body, not a query string: the exams someone is about to book are
    health data, and URLs end up in proxy and server access logs (invariant I5)."""

    model_config = _STRICT

    exam_ids: ExamIds
    from_: StrictStr | None = Field(
        default=None,
        alias="from",
        max_length=32,
        description="First day, AAAA-MM-JJ (default: today).",
    )
    to: StrictStr | None = Field(
        default=None, max_length=32, description="Last day, inclusive (default: 7 days)."
    )


class RescheduleIn(BaseModel):
    model_config = _STRICT

    starts_at: Instant


class AddressIn(BaseModel):
    model_config = _STRICT

    line: StrictStr = Field(max_length=200)
    postal_code: StrictStr = Field(max_length=5, description="5 digits.")
    city: StrictStr = Field(max_length=100)
    instructions: StrictStr = Field(default="", max_length=500)

    def to_view(self) -> HomeAddress:
        return HomeAddress(self.line, self.postal_code, self.city, self.instructions)


class HomeVisitIn(BaseModel):
    model_config = _STRICT

    patient_id: uuid.UUID
    site_id: uuid.UUID = Field(description="The site whose sampler comes.")
    exam_ids: ExamIds
    day: Day = Field(description="From tomorrow on (AAAA-MM-JJ).")
    window: Literal["morning", "afternoon"]
    address: AddressIn


class SiteOut(BaseModel):
    id: uuid.UUID
    name: str
    city: str
    timezone: str

    @classmethod
    def of(cls, site: Site) -> SiteOut:
        return cls(id=site.id, name=site.name, city=site.city, timezone=site.timezone)


class ExamOut(BaseModel):
    id: uuid.UUID
    code: str
    label: str
    sampling_minutes: int
    home_sampling: bool
    no_appointment: bool
    fasting_hours: int
    window: list[str] | None = Field(
        description='Time-of-day window, site local time: ["07:00", "10:00"], or null.'
    )
    preparation_text: str

    @classmethod
    def of(cls, exam: Exam) -> ExamOut:
        window = None
        if exam.window_start is not None and exam.window_end is not None:
            window = [exam.window_start.strftime("%H:%M"), exam.window_end.strftime("%H:%M")]
        return cls(
            id=exam.id,
            code=exam.code,
            label=exam.label,
            sampling_minutes=exam.sampling_minutes,
            home_sampling=exam.home_sampling,
            no_appointment=exam.no_appointment,
            fasting_hours=exam.fasting_hours,
            window=window,
            preparation_text=exam.preparation_text,
        )


class SlotOut(BaseModel):
    starts_at: dt.datetime = Field(description="In the site's time zone, with its offset.")
    ends_at: dt.datetime
    capacity: int = Field(description="Boxes still free for bookings.")

    @classmethod
    def of(cls, slot: Slot) -> SlotOut:
        return cls(starts_at=slot.starts_at, ends_at=slot.ends_at, capacity=slot.capacity)


class AddressOut(BaseModel):
    line: str
    postal_code: str
    city: str
    instructions: str


class AppointmentOut(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    site_id: uuid.UUID
    site_name: str
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    status: Literal["held", "booked", "checked_in", "done", "no_show", "cancelled"]
    kind: Literal["site", "home"]
    walk_in: bool
    exam_ids: list[uuid.UUID]
    home_address: AddressOut | None
    sampler_staff_id: uuid.UUID | None
    hold_expires_at: dt.datetime | None
    changeable: bool = Field(description="The patient may still reschedule or cancel it.")

    @classmethod
    def of(cls, view: AppointmentView) -> AppointmentOut:
        address = view.home_address
        return cls(
            id=view.id,
            patient_id=view.patient_id,
            site_id=view.site_id,
            site_name=view.site_name,
            starts_at=view.starts_at,
            ends_at=view.ends_at,
            status=view.status.value,
            kind=view.kind.value,
            walk_in=view.walk_in,
            exam_ids=list(view.exam_ids),
            home_address=None
            if address is None
            else AddressOut(
                line=address.line,
                postal_code=address.postal_code,
                city=address.city,
                instructions=address.instructions,
            ),
            sampler_staff_id=view.sampler_staff_id,
            hold_expires_at=view.hold_expires_at,
            changeable=view.changeable,
        )

    def json_ready(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
