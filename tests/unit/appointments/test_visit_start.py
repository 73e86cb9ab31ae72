"""Checking one start time (what a hold does) gives the same answer as searching the day.

Booking validates a start with :func:`is_visit_start`, which cuts only the visit's own slots;
slot search lists :func:`compatible_slots` of the whole day. If they ever disagree, a slot
shown in the list could not be held (or one never shown could), so they are compared on
every start of many days: ordinary and DST days in zones with 1 h, 30 min and 2 h shifts,
closures, several opening intervals, exam time windows and visits of several slots.
"""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from labvault.appointments.services import _local_days_of
from labvault.schedules.hours import OpeningHours
from labvault.schedules.slots import (
    Closure,
    ExamRule,
    Schedule,
    compatible_slots,
    generate_slots,
    is_visit_start,
)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# (zone, days around a change of offset): Paris 1 h at 02:00/03:00, New York at 02:00,
# Lord Howe 30 min, Troll 2 h at 01:00/03:00, Santiago at midnight, Apia skipped a day.
ZONES = [
    ("Europe/Paris", [dt.date(2026, 3, 29), dt.date(2026, 10, 25), dt.date(2026, 6, 15)]),
    ("America/New_York", [dt.date(2026, 3, 8), dt.date(2026, 11, 1)]),
    ("Australia/Lord_Howe", [dt.date(2026, 4, 5), dt.date(2026, 10, 4)]),
    ("Antarctica/Troll", [dt.date(2026, 3, 29), dt.date(2026, 10, 25)]),
    ("America/Santiago", [dt.date(2026, 4, 5), dt.date(2026, 9, 6)]),
    ("Pacific/Apia", [dt.date(2011, 12, 29), dt.date(2011, 12, 31)]),
]
HOURS = [
    {day: [["00:00", "23:59"]] for day in DAYS},
    {day: [["01:30", "04:00"], ["07:00", "12:00"], ["14:00", "18:00"]] for day in DAYS},
]
VISITS = [
    [ExamRule(5)],
    [ExamRule(40)],
    [ExamRule(10, dt.time(7), dt.time(10)), ExamRule(15)],
    [ExamRule(5, no_appointment=True)],
]


def _starts(day: dt.date, zone: ZoneInfo) -> list[dt.datetime]:
    """Every 5 minutes of the local day and around it, as UTC instants."""
    first = dt.datetime.combine(day, dt.time(), zone).astimezone(dt.UTC) - dt.timedelta(hours=3)
    return [first + dt.timedelta(minutes=5 * n) for n in range(12 * 30)]


def _expected(
    schedule: Schedule,
    closures: list[Closure],
    start: dt.datetime,
    exams: list[ExamRule],
    now: dt.datetime,
) -> bool:
    day = start.astimezone(ZoneInfo(schedule.timezone)).date()
    slots = generate_slots(schedule, closures, day, day, now)
    return start in {
        slot.starts_at.astimezone(dt.UTC)
        for slot in compatible_slots(slots, exams, schedule.slot_minutes)
    }


@pytest.mark.parametrize(("zone", "days"), ZONES, ids=[zone for zone, _ in ZONES])
def test_checking_a_start_agrees_with_the_day_search(zone: str, days: list[dt.date]) -> None:
    tz = ZoneInfo(zone)
    checked = agreed_yes = 0
    for day, hours, minutes, exams in itertools.product(days, HOURS, (15, 30), VISITS):
        schedule = Schedule(zone, OpeningHours.parse(hours), minutes, 3, 1)
        closures = [Closure(day + dt.timedelta(days=1), day + dt.timedelta(days=1))]
        now = dt.datetime.combine(day, dt.time(8), tz).astimezone(dt.UTC)
        for start in _starts(day, tz):
            expected = _expected(schedule, closures, start, exams, now)
            assert is_visit_start(schedule, closures, start, exams, now) is expected, (
                zone,
                day,
                hours,
                minutes,
                exams,
                start,
            )
            checked += 1
            agreed_yes += expected
    assert agreed_yes > 0  # both answers were exercised
    assert agreed_yes < checked


def test_a_start_is_checked_in_its_site_time_zone_whatever_its_offset() -> None:
    schedule = Schedule("Europe/Paris", OpeningHours.parse(HOURS[1]), 15, 3, 1)
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    nine = dt.datetime(2026, 12, 7, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    exams = [ExamRule(5)]
    assert is_visit_start(schedule, [], nine, exams, now)
    assert is_visit_start(schedule, [], nine.astimezone(ZoneInfo("Asia/Tokyo")), exams, now)
    assert is_visit_start(schedule, [], nine.astimezone(dt.UTC), exams, now)
    assert not is_visit_start(schedule, [], nine + dt.timedelta(minutes=5), exams, now)
    assert not is_visit_start(schedule, [Closure(nine.date(), nine.date())], nine, exams, now)
    assert not is_visit_start(schedule, [], nine, exams, nine)  # not after now
    walk_ins_only = Schedule("Europe/Paris", OpeningHours.parse(HOURS[1]), 15, 2, 2)
    assert not is_visit_start(walk_ins_only, [], nine, exams, now)
    with pytest.raises(ValueError, match="aware"):
        is_visit_start(schedule, [], nine.replace(tzinfo=None), exams, now)


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Etc/GMT+12", "Europe/Paris", "UTC"])
def test_the_closures_read_for_a_start_cover_its_local_day_in_any_zone(zone: str) -> None:
    tz = ZoneInfo(zone)
    for hour in range(0, 24 * 3, 1):
        start = dt.datetime(2026, 12, 6, tzinfo=dt.UTC) + dt.timedelta(hours=hour)
        first, last = _local_days_of(start.astimezone(tz))
        assert first <= start.astimezone(tz).date() <= last
        assert (last - first).days == 2


def test_no_closures_are_read_for_a_start_that_will_be_refused() -> None:
    for value in (dt.datetime(2026, 12, 7, 9), "2026-12-07T09:00", 0, dt.date(2026, 12, 7)):
        first, last = _local_days_of(value)
        assert first > last
    first, last = _local_days_of(dt.datetime.min.replace(tzinfo=dt.UTC))
    assert first > last
