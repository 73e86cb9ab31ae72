"""Opening hours are validated strictly: HH:MM, ordered, separated, known days."""

from __future__ import annotations

import datetime as dt

import pytest

from labvault.demo import OPENING_HOURS
from labvault.schedules.hours import OpeningHours, OpeningHoursError


def test_the_demo_hours_round_trip() -> None:
    hours = OpeningHours.parse(OPENING_HOURS)
    assert hours.to_json() == OPENING_HOURS
    assert hours.day(5) == ((dt.time(8), dt.time(12)),)
    assert hours.day(6) == ()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"mon": [["7:00", "12:00"]]}, "HH:MM"),
        ({"mon": [["07:00", "24:00"]]}, "HH:MM"),
        ({"mon": [["07:60", "12:00"]]}, "HH:MM"),
        ({"mon": [[700, "12:00"]]}, "HH:MM"),
        ({"mon": [["12:00", "07:00"]]}, "doit suivre"),
        ({"mon": [["07:00", "07:00"]]}, "doit suivre"),
        ({"mon": [["14:00", "18:00"], ["07:00", "12:00"]]}, "dans l'ordre"),
        ({"mon": [["07:00", "12:00"], ["11:00", "18:00"]]}, "se chevauchent"),
        ({"mon": [["07:00", "12:00"], ["12:00", "18:00"]]}, "se touchent"),
        ({"mon": [["07:00"]]}, "[ouverture, fermeture]"),
        ({"mon": "07:00-12:00"}, "liste de plages"),
        ({"lundi": [["07:00", "12:00"]]}, "jour inconnu"),
        ({"mon": [[f"0{h}:00", f"0{h}:30"] for h in range(7)]}, "au plus 6"),
        ([["07:00", "12:00"]], "un objet par jour"),
    ],
)
def test_bad_hours_are_refused_in_french(raw: object, fragment: str) -> None:
    with pytest.raises(OpeningHoursError) as caught:
        OpeningHours.parse(raw)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("Horaires d'ouverture invalides")
