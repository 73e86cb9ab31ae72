"""The pure parts of the anomaly rules: Paris nights and weekends (DST-safe), order and
timing measures."""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo

from labvault.security.anomalies import (
    AnomalyThresholds,
    _same_direction_share,
    _spread,
    off_hours_periods,
)

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def _paris(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=PARIS)  # type: ignore[misc]


def test_weeknights_and_the_weekend_in_paris_time() -> None:
    start, end = _paris(2026, 11, 24, 12), _paris(2026, 11, 30, 12)  # Tuesday → Monday
    periods = off_hours_periods(start, end, AnomalyThresholds())
    assert [(a.astimezone(PARIS), b.astimezone(PARIS)) for a, b in periods] == [
        (_paris(2026, 11, 24, 20), _paris(2026, 11, 25, 7)),
        (_paris(2026, 11, 25, 20), _paris(2026, 11, 26, 7)),
        (_paris(2026, 11, 26, 20), _paris(2026, 11, 27, 7)),
        (_paris(2026, 11, 27, 20), _paris(2026, 11, 30, 7)),  # Friday evening → Monday
    ]


def test_a_dst_weekend_is_an_hour_shorter_not_shifted() -> None:
    # Clocks go forward on Sunday 29 March 2026 at 02:00.
    periods = off_hours_periods(
        _paris(2026, 3, 28, 12), _paris(2026, 3, 28, 13), AnomalyThresholds()
    )
    assert periods == [
        (dt.datetime(2026, 3, 27, 19, tzinfo=dt.UTC), dt.datetime(2026, 3, 30, 5, tzinfo=dt.UTC))
    ]
    begins, ends = periods[0]
    assert ends - begins == dt.timedelta(hours=58)
    assert ends.astimezone(PARIS).hour == 7


def test_a_working_hour_is_in_no_period() -> None:
    moment = _paris(2026, 12, 2, 10)  # a Wednesday
    assert off_hours_periods(moment, moment + dt.timedelta(hours=1), AnomalyThresholds()) == []


def test_order_share_is_one_for_a_sorted_walk_and_about_half_at_random() -> None:
    values = list(range(50))
    assert _same_direction_share(values) == 1.0
    assert _same_direction_share(values[::-1]) == 1.0
    random.Random(1).shuffle(values)
    assert 0.4 < _same_direction_share(values) < 0.7
    assert _same_direction_share([1]) == 0.0


def test_timing_spread_is_zero_for_a_metronome_and_high_for_a_person() -> None:
    assert _spread([0, 10, 20, 30, 40]) == 0.0
    rng = random.Random(2)
    moments = [0]
    for _ in range(30):
        moments.append(moments[-1] + rng.randint(5, 300))
    spread = _spread(moments)
    assert spread is not None
    assert spread > 0.3
    assert _spread([0, 10]) is None, "one gap says nothing"
    assert _spread([5, 5, 5]) is None, "one instant (a batch) has no timing"
