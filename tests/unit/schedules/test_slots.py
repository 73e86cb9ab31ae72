"""Slot generation: local wall time, DST-safe, closures, never in the past, walk-ins apart."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labvault.schedules.hours import WEEKDAYS, OpeningHours
from labvault.schedules.slots import (
    MAX_RANGE_DAYS,
    Closure,
    ExamRule,
    Schedule,
    Slot,
    compatible_slots,
    generate_slots,
    needs_appointment,
)

PARIS = ZoneInfo("Europe/Paris")
WEEK = {
    day: [["07:00", "12:00"], ["14:00", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")
}
MONDAY = dt.date(2026, 12, 7)
BEFORE = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
SPRING_FORWARD = dt.date(2026, 3, 29)
FALL_BACK = dt.date(2026, 10, 25)


def _schedule(
    hours: object = WEEK, minutes: int = 15, boxes: int = 3, walk_in: int = 1
) -> Schedule:
    return Schedule("Europe/Paris", OpeningHours.parse(hours), minutes, boxes, walk_in)


def _walls(slots: list[Slot]) -> list[str]:
    return [slot.starts_at.strftime("%H:%M") for slot in slots]


def test_a_weekday_is_cut_into_slots_within_each_interval() -> None:
    slots = generate_slots(_schedule(minutes=30), [], MONDAY, MONDAY, BEFORE)
    assert _walls(slots)[:3] == ["07:00", "07:30", "08:00"]
    assert "11:30" in _walls(slots)
    assert "12:00" not in _walls(slots)
    assert "14:00" in _walls(slots)
    assert "18:00" not in _walls(slots)
    assert len(slots) == 10 + 8
    assert {slot.interval for slot in slots} == {0, 1}
    assert all(slot.capacity == 2 for slot in slots)  # 3 boxes, 1 kept for walk-ins
    assert slots[0].starts_at.utcoffset() == dt.timedelta(hours=1)


def test_a_tail_shorter_than_a_slot_is_not_offered() -> None:
    slots = generate_slots(
        _schedule({"mon": [["07:00", "08:50"]]}, minutes=20), [], MONDAY, MONDAY, BEFORE
    )
    assert _walls(slots) == ["07:00", "07:20", "07:40", "08:00", "08:20"]


def test_spring_forward_skips_the_missing_hour() -> None:
    hours = {"sun": [["01:00", "04:00"], ["07:00", "09:00"]]}
    slots = generate_slots(
        _schedule(hours, minutes=30), [], SPRING_FORWARD, SPRING_FORWARD, BEFORE.replace(month=1)
    )
    assert _walls(slots) == ["01:00", "03:00", "03:30", "07:00", "07:30", "08:00", "08:30"]
    assert slots[0].starts_at.utcoffset() == dt.timedelta(hours=1)
    assert slots[1].starts_at.utcoffset() == dt.timedelta(hours=2)
    seven = slots[3].starts_at.astimezone(dt.UTC)
    assert (seven.hour, seven.minute) == (5, 0)  # 07:00 CEST
    for slot in slots:
        assert slot.ends_at.astimezone(dt.UTC) - slot.starts_at.astimezone(dt.UTC) == dt.timedelta(
            minutes=30
        )


def test_fall_back_offers_the_repeated_hour_once() -> None:
    hours = {"sun": [["01:00", "04:00"], ["07:00", "09:00"]]}
    slots = generate_slots(
        _schedule(hours, minutes=30), [], FALL_BACK, FALL_BACK, BEFORE.replace(month=1)
    )
    # 02:30 -> 03:00 lasts 90 minutes in real time (the hour is repeated): not a slot.
    assert _walls(slots) == [
        "01:00",
        "01:30",
        "02:00",
        "03:00",
        "03:30",
        "07:00",
        "07:30",
        "08:00",
        "08:30",
    ]
    starts = [slot.starts_at.astimezone(dt.UTC) for slot in slots]
    assert starts == sorted(set(starts))
    seven = slots[5].starts_at.astimezone(dt.UTC)
    assert (seven.hour, seven.minute) == (6, 0)  # 07:00 CET


def test_closures_cover_whole_days_inclusive() -> None:
    closure = Closure(MONDAY + dt.timedelta(days=1), MONDAY + dt.timedelta(days=2))
    slots = generate_slots(_schedule(), [closure], MONDAY, MONDAY + dt.timedelta(days=3), BEFORE)
    assert {slot.starts_at.date() for slot in slots} == {MONDAY, MONDAY + dt.timedelta(days=3)}


def test_never_in_the_past() -> None:
    now = dt.datetime.combine(MONDAY, dt.time(9, 5), tzinfo=PARIS)
    slots = generate_slots(_schedule(), [], MONDAY, MONDAY, now)
    assert _walls(slots)[0] == "09:15"
    assert generate_slots(_schedule(), [], MONDAY, MONDAY, now + dt.timedelta(days=1)) == []
    with pytest.raises(ValueError, match="aware"):
        generate_slots(_schedule(), [], MONDAY, MONDAY, now.replace(tzinfo=None))


def test_walk_in_boxes_and_bookings_reduce_the_bookable_capacity() -> None:
    first = generate_slots(_schedule(boxes=3, walk_in=1), [], MONDAY, MONDAY, BEFORE)[0]
    taken = {first.starts_at.astimezone(dt.UTC): 1}
    again = generate_slots(_schedule(boxes=3, walk_in=1), [], MONDAY, MONDAY, BEFORE, taken)
    assert again[0].starts_at == first.starts_at
    assert again[0].capacity == 1
    full = generate_slots(
        _schedule(boxes=3, walk_in=1), [], MONDAY, MONDAY, BEFORE, {first.starts_at: 2}
    )
    assert full[0].starts_at != first.starts_at
    assert generate_slots(_schedule(boxes=2, walk_in=2), [], MONDAY, MONDAY, BEFORE) == []


def test_ranges_are_bounded() -> None:
    assert generate_slots(_schedule(), [], MONDAY, MONDAY - dt.timedelta(days=1), BEFORE) == []
    with pytest.raises(ValueError, match="at most"):
        generate_slots(_schedule(), [], MONDAY, MONDAY + dt.timedelta(days=MAX_RANGE_DAYS), BEFORE)


CORTISOL = ExamRule(sampling_minutes=5, window_start=dt.time(7), window_end=dt.time(10))
LONG = ExamRule(sampling_minutes=40)
WALK_IN_ONLY = ExamRule(sampling_minutes=5, no_appointment=True)


def test_a_morning_window_keeps_the_visit_inside_it() -> None:
    slots = generate_slots(_schedule(), [], MONDAY, MONDAY, BEFORE)
    fitting = compatible_slots(slots, [CORTISOL], 15)
    assert _walls(fitting)[0] == "07:00"
    assert _walls(fitting)[-1] == "09:45"
    assert len(fitting) == 12


def test_a_long_visit_needs_consecutive_slots_of_one_interval() -> None:
    slots = generate_slots(_schedule(), [], MONDAY, MONDAY, BEFORE)
    fitting = compatible_slots(slots, [LONG], 15)  # 40 minutes: 3 slots of 15
    walls = _walls(fitting)
    assert "11:15" in walls
    assert "11:30" not in walls
    assert "11:45" not in walls
    assert "17:15" in walls
    assert "17:30" not in walls
    # A full slot in the middle breaks the chain of the slots before it.
    nine = next(slot for slot in slots if _walls([slot]) == ["09:00"])
    partial = [slot for slot in slots if slot is not nine]
    walls = _walls(compatible_slots(partial, [LONG], 15))
    assert "08:30" not in walls
    assert "08:45" not in walls
    assert "08:15" in walls
    # Cortisol and the long exam together: 45 minutes inside 07:00-10:00.
    assert _walls(compatible_slots(slots, [CORTISOL, LONG], 15))[-1] == "09:15"


def test_no_appointment_exams() -> None:
    slots = generate_slots(_schedule(), [], MONDAY, MONDAY, BEFORE)
    assert not needs_appointment([WALK_IN_ONLY])
    assert not needs_appointment([])
    assert compatible_slots(slots, [WALK_IN_ONLY], 15) == []
    assert compatible_slots(slots, [WALK_IN_ONLY, CORTISOL], 15)[-1].starts_at.hour == 9


# -- properties --------------------------------------------------------------------------


@st.composite
def opening_hours(draw: st.DrawFn) -> OpeningHours:
    raw: dict[str, list[list[str]]] = {}
    for day in WEEKDAYS:
        points = sorted(draw(st.sets(st.integers(0, 1439), max_size=12)))
        if len(points) % 2:
            points = points[:-1]
        pairs = [points[i : i + 2] for i in range(0, len(points), 2)]
        raw[day] = [[f"{p // 60:02d}:{p % 60:02d}" for p in pair] for pair in pairs]
    return OpeningHours.parse(raw)


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    boxes = draw(st.integers(1, 50))
    return Schedule(
        timezone=draw(
            st.sampled_from(["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "UTC"])
        ),
        opening_hours=draw(opening_hours()),
        slot_minutes=draw(st.integers(5, 240)),
        sampling_boxes=boxes,
        walk_in_boxes=draw(st.integers(0, boxes)),
    )


days = st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=schedules(),
    start=days,
    length=st.integers(-1, 14),
    now=st.datetimes(dt.datetime(2025, 12, 1), dt.datetime(2028, 1, 31), timezones=st.just(dt.UTC)),
    closures=st.lists(
        st.tuples(days, st.integers(0, 5)).map(
            lambda pair: Closure(pair[0], pair[0] + dt.timedelta(days=pair[1]))
        ),
        max_size=3,
    ),
    taken_share=st.integers(0, 60),
    exams=st.lists(
        st.builds(
            ExamRule,
            sampling_minutes=st.integers(1, 240),
            window_start=st.none()
            | st.times(dt.time(0), dt.time(12)).map(lambda t: t.replace(second=0, microsecond=0)),
            window_end=st.just(dt.time(18)),
            no_appointment=st.booleans(),
        ),
        max_size=3,
    ),
)
def test_slots_respect_the_schedule(
    schedule: Schedule,
    start: dt.date,
    length: int,
    now: dt.datetime,
    closures: list[Closure],
    taken_share: int,
    exams: list[ExamRule],
) -> None:
    end = start + dt.timedelta(days=length)
    baseline = generate_slots(schedule, closures, start, end, now)
    taken = {
        slot.starts_at: (index * taken_share) % (schedule.bookable_boxes + 2)
        for index, slot in enumerate(baseline)
    }
    slots = generate_slots(schedule, closures, start, end, now, taken)
    zone = ZoneInfo(schedule.timezone)
    step = dt.timedelta(minutes=schedule.slot_minutes)
    starts = [slot.starts_at.astimezone(dt.UTC) for slot in slots]
    assert starts == sorted(set(starts))
    for before, after in itertools.pairwise(slots):
        assert before.ends_at.astimezone(dt.UTC) <= after.starts_at.astimezone(dt.UTC)
    for slot in slots:
        local = slot.starts_at.astimezone(zone)
        local_end = slot.ends_at.astimezone(zone)
        assert slot.starts_at > now
        assert start <= local.date() <= end
        assert not any(closure.covers(local.date()) for closure in closures)
        assert local_end.date() == local.date()
        assert slot.ends_at.astimezone(dt.UTC) - slot.starts_at.astimezone(dt.UTC) == step
        assert any(
            opens <= local.time() and local_end.time() <= closes
            for opens, closes in schedule.opening_hours.day(local.weekday())
        )
        assert 1 <= slot.capacity <= schedule.bookable_boxes
        assert slot.capacity == schedule.bookable_boxes - taken.get(slot.starts_at, 0)
    fitting = compatible_slots(slots, exams, schedule.slot_minutes)
    assert set(fitting) <= set(slots)
    for slot in fitting:
        for exam in exams:
            if exam.window_start is not None:
                assert slot.starts_at.astimezone(zone).time() >= exam.window_start
