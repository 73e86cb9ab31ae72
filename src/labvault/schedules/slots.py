"""Bookable slots from a site's schedule: pure functions, no database, no clock of their own.

Rules (the booking layer relies on them):

- Slots are cut in each opening interval from its opening time, every ``slot_minutes``,
  in the site's local wall time; a tail shorter than a slot is not offered.
- DST-safe: a wall time that does not exist (spring forward) is skipped; a wall time that
  exists twice (fall back) is offered once, at its first occurrence (``fold=0``); a slot
  whose real duration is not ``slot_minutes`` (it straddles the change) is skipped.
- Closures are whole local days, ``starts_on`` to ``ends_on`` inclusive: no slot that day.
- Never in the past: a slot is offered only if it starts strictly after ``now``.
- Capacity: ``sampling_boxes - walk_in_boxes`` boxes per slot are bookable; the walk-in
  boxes are never offered here (walk-ins are served from them at the desk). ``taken`` (the
  booking layer's count per slot start) is subtracted; full slots are not returned.
- Compatibility with exams (:func:`compatible_slots`): the visit lasts the sum of the exams'
  sampling durations and occupies ``ceil(duration / slot_minutes)`` consecutive slots
  (at least one) of the same opening interval, each with a free box; the whole visit must
  lie inside every exam's time-of-day window (a morning cortisol 07:00-10:00 is sampled
  within it). Exams marked "no appointment needed" add no constraint of their own; a
  selection made only of them needs no slot (:func:`needs_appointment`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from labvault.schedules.hours import OpeningHours

MAX_RANGE_DAYS = 92
"""A search covers at most about three months; longer asks are refused (ValueError)."""


@dataclass(frozen=True, slots=True)
class Schedule:
    timezone: str
    opening_hours: OpeningHours
    slot_minutes: int
    sampling_boxes: int
    walk_in_boxes: int

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)  # raises on an unknown zone
        if not 5 <= self.slot_minutes <= 240:
            raise ValueError("slot_minutes must be within 5..240")
        if self.sampling_boxes < 0 or not 0 <= self.walk_in_boxes <= self.sampling_boxes:
            raise ValueError("0 <= walk_in_boxes <= sampling_boxes")

    @property
    def bookable_boxes(self) -> int:
        return self.sampling_boxes - self.walk_in_boxes


@dataclass(frozen=True, slots=True)
class Closure:
    starts_on: dt.date
    ends_on: dt.date

    def covers(self, day: dt.date) -> bool:
        return self.starts_on <= day <= self.ends_on


@dataclass(frozen=True, slots=True)
class Slot:
    starts_at: dt.datetime
    """Aware, in the site's time zone (``.astimezone(dt.UTC)`` to store). Compare and
    subtract slots in UTC: Python compares datetimes sharing a tzinfo by wall time."""
    ends_at: dt.datetime
    capacity: int
    """Boxes still free for bookings (walk-in boxes excluded), >= 1."""
    interval: int
    """Index of the opening interval of its day: consecutive slots must share it."""


@dataclass(frozen=True, slots=True)
class ExamRule:
    """What slot search needs from a catalog exam."""

    sampling_minutes: int
    window_start: dt.time | None = None
    window_end: dt.time | None = None
    no_appointment: bool = False


def _days(start: dt.date, end: dt.date) -> Iterable[dt.date]:
    for offset in range((end - start).days + 1):
        yield start + dt.timedelta(days=offset)


def generate_slots(
    schedule: Schedule,
    closures: Sequence[Closure],
    from_date: dt.date,
    to_date: dt.date,
    now: dt.datetime,
    taken: Mapping[dt.datetime, int] | None = None,
) -> list[Slot]:
    """Bookable slots from ``from_date`` to ``to_date`` (local dates, inclusive), sorted."""
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if to_date < from_date:
        return []
    if (to_date - from_date).days >= MAX_RANGE_DAYS:
        raise ValueError(f"a slot search covers at most {MAX_RANGE_DAYS} days")
    if schedule.bookable_boxes <= 0:
        return []
    zone = ZoneInfo(schedule.timezone)
    taken_utc = {key.astimezone(dt.UTC): count for key, count in (taken or {}).items()}
    slots: dict[dt.datetime, Slot] = {}
    for day in _days(from_date, to_date):
        if any(closure.covers(day) for closure in closures):
            continue
        _day_slots(schedule, zone, day, now, taken_utc, slots)
    return [slots[key] for key in sorted(slots)]


def _day_slots(
    schedule: Schedule,
    zone: ZoneInfo,
    day: dt.date,
    now: dt.datetime,
    taken_utc: Mapping[dt.datetime, int],
    slots: dict[dt.datetime, Slot],
    walls: frozenset[dt.datetime] | None = None,
) -> None:
    """Add ``day``'s bookable slots to ``slots`` (by UTC start); with ``walls``, only the slots
    whose local wall-clock start (naive) is one of them.

    Each wall time is resolved once (a slot's end is the next slot's start).
    """
    step = dt.timedelta(minutes=schedule.slot_minutes)
    resolved: dict[dt.datetime, tuple[dt.datetime, dt.datetime] | None] = {}

    def at(wall: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
        """The aware local time and its UTC instant, or None if the wall time does not exist
        (spring forward: it does not come back from UTC as itself)."""
        if wall not in resolved:
            local = wall.replace(tzinfo=zone)
            utc = local.astimezone(dt.UTC)
            exists = utc.astimezone(zone).replace(tzinfo=None) == wall
            resolved[wall] = (local, utc) if exists else None
        return resolved[wall]

    for index, (opens, closes) in enumerate(schedule.opening_hours.day(day.weekday())):
        wall = dt.datetime.combine(day, opens)
        end_wall = dt.datetime.combine(day, closes)
        while wall + step <= end_wall:
            following = wall + step
            if walls is not None and wall not in walls:
                wall = following
                continue
            start, end = at(wall), at(following)
            wall = following
            if start is None or end is None:
                continue
            (start_local, start_utc), (end_local, end_utc) = start, end
            if end_utc - start_utc != step or start_utc <= now:
                continue
            free = schedule.bookable_boxes - max(0, taken_utc.get(start_utc, 0))
            if free <= 0 or start_utc in slots:
                continue
            slots[start_utc] = Slot(start_local, end_local, free, index)


def is_visit_start(
    schedule: Schedule,
    closures: Sequence[Closure],
    starts_at: dt.datetime,
    exams: Sequence[ExamRule],
    now: dt.datetime,
) -> bool:
    """Whether a visit for ``exams`` may start at ``starts_at`` (aware), capacity aside.

    The same answer as looking for it in :func:`compatible_slots` of :func:`generate_slots`
    over its local day, but from the visit's own slots only: booking checks one start time,
    and generating a whole day of slots for it was most of the cost. A slot whose UTC start
    is ``starts_at + k * slot_minutes`` can only have been cut at the wall time that instant
    shows locally (wall times are read at their first occurrence), so only those are cut.
    """
    if starts_at.tzinfo is None or now.tzinfo is None:
        raise ValueError("starts_at and now must be aware datetimes")
    if schedule.bookable_boxes <= 0 or not needs_appointment(exams):
        return False
    zone = ZoneInfo(schedule.timezone)
    day = starts_at.astimezone(zone).date()
    if any(closure.covers(day) for closure in closures):
        return False
    step = dt.timedelta(minutes=schedule.slot_minutes)
    count = max(1, math.ceil(visit_minutes(exams) / schedule.slot_minutes))
    start_utc = starts_at.astimezone(dt.UTC)
    walls = frozenset(
        (start_utc + step * k).astimezone(zone).replace(tzinfo=None, fold=0) for k in range(count)
    )
    slots: dict[dt.datetime, Slot] = {}
    _day_slots(schedule, zone, day, now, {}, slots, walls)
    candidates = [slots[key] for key in sorted(slots)]
    return any(
        slot.starts_at.astimezone(dt.UTC) == start_utc
        for slot in compatible_slots(candidates, exams, schedule.slot_minutes)
    )


def needs_appointment(exams: Sequence[ExamRule]) -> bool:
    """False when every exam is "no appointment needed" (or there is none)."""
    return any(not exam.no_appointment for exam in exams)


def visit_minutes(exams: Sequence[ExamRule]) -> int:
    return sum(max(0, exam.sampling_minutes) for exam in exams)


def compatible_slots(
    slots: Sequence[Slot], exams: Sequence[ExamRule], slot_minutes: int
) -> list[Slot]:
    """The slots a visit for ``exams`` can start at (see the module's rules)."""
    if not needs_appointment(exams):
        return []
    count = max(1, math.ceil(visit_minutes(exams) / slot_minutes))
    span = dt.timedelta(minutes=slot_minutes) * count
    # Each slot with its UTC start and end, converted once.
    timeline = [
        (slot, slot.starts_at.astimezone(dt.UTC), slot.ends_at.astimezone(dt.UTC)) for slot in slots
    ]
    by_start = {entry[1]: entry for entry in timeline}
    result = []
    for entry in timeline:
        slot, start, _ = entry
        last, length = entry, 1
        while length < count:
            following = by_start.get(last[2])
            if following is None or following[0].interval != slot.interval:
                break
            if following[0].starts_at.date() != slot.starts_at.date():
                break
            last, length = following, length + 1
        if length != count:
            continue
        if last[2] - start != span:
            continue
        if all(_within_window(slot.starts_at, last[0].ends_at, exam) for exam in exams):
            result.append(slot)
    return result


def _within_window(start: dt.datetime, end: dt.datetime, exam: ExamRule) -> bool:
    """Local wall times; a visit never crosses midnight (intervals end by 23:59)."""
    if exam.window_start is None or exam.window_end is None:
        return True
    return exam.window_start <= start.time() and end.time() <= exam.window_end
