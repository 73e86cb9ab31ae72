"""Opening hours as stored on ``sites.opening_hours``, validated strictly.

``{"mon": [["07:00", "12:00"], ["14:00", "18:00"]], ...}`` in the site's local time: keys
``mon``..``sun`` (a missing day is closed), each a list of ``[opens, closes]`` pairs written
``HH:MM`` (00:00-23:59), ``opens < closes``, sorted, and separated by a gap: two intervals
that touch or overlap are refused (write them as one). Error messages are in French.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_LABELS = {
    "mon": "lundi",
    "tue": "mardi",
    "wed": "mercredi",
    "thu": "jeudi",
    "fri": "vendredi",
    "sat": "samedi",
    "sun": "dimanche",
}
MAX_INTERVALS_PER_DAY = 6
HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


class OpeningHoursError(ValueError):
    """Opening hours that cannot be used; the message is French and names the day."""


def parse_hhmm(value: object) -> dt.time:
    if not isinstance(value, str) or not HHMM.fullmatch(value):
        raise ValueError(f"heure invalide {str(value)[:10]!r} : écrivez HH:MM, de 00:00 à 23:59")
    hours, minutes = value.split(":")
    return dt.time(int(hours), int(minutes))


def _interval(day: str, raw: object) -> tuple[dt.time, dt.time]:
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        raise ValueError(f"{WEEKDAY_LABELS[day]} : chaque plage est [ouverture, fermeture]")
    opens, closes = parse_hhmm(raw[0]), parse_hhmm(raw[1])
    if opens >= closes:
        raise ValueError(
            f"{WEEKDAY_LABELS[day]} : la fermeture ({raw[1]}) doit suivre l'ouverture ({raw[0]})"
        )
    return opens, closes


class OpeningHours(BaseModel):
    """One site's week. Intervals are ``(opens, closes)`` local times."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mon: tuple[tuple[dt.time, dt.time], ...] = Field(default=())
    tue: tuple[tuple[dt.time, dt.time], ...] = Field(default=())
    wed: tuple[tuple[dt.time, dt.time], ...] = Field(default=())
    thu: tuple[tuple[dt.time, dt.time], ...] = Field(default=())
    fri: tuple[tuple[dt.time, dt.time], ...] = Field(default=())
    sat: tuple[tuple[dt.time, dt.time], ...] = Field(default=())
    sun: tuple[tuple[dt.time, dt.time], ...] = Field(default=())

    @field_validator(*WEEKDAYS, mode="before")
    @classmethod
    def _strict_day(cls, value: object, info: Any) -> tuple[tuple[dt.time, dt.time], ...]:
        day = str(info.field_name)
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{WEEKDAY_LABELS[day]} : une liste de plages est attendue")
        if len(value) > MAX_INTERVALS_PER_DAY:
            raise ValueError(
                f"{WEEKDAY_LABELS[day]} : au plus {MAX_INTERVALS_PER_DAY} plages par jour"
            )
        intervals = tuple(_interval(day, raw) for raw in value)
        for before, after in itertools.pairwise(intervals):
            if after[0] <= before[1]:
                raise ValueError(
                    f"{WEEKDAY_LABELS[day]} : les plages doivent être dans l'ordre et séparées "
                    "(deux plages qui se touchent ou se chevauchent n'en font qu'une)"
                )
        return intervals

    @classmethod
    def parse(cls, raw: object) -> OpeningHours:
        """Validate stored or submitted hours; :class:`OpeningHoursError` in French."""
        if not isinstance(raw, dict):
            raise OpeningHoursError("Horaires d'ouverture invalides : un objet par jour attendu.")
        unknown = sorted(str(key) for key in raw if key not in WEEKDAYS)
        if unknown:
            raise OpeningHoursError(
                "Horaires d'ouverture invalides : jour inconnu "
                f"{unknown[0][:10]!r} (lun. à dim. : {', '.join(WEEKDAYS)})."
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            message = str(first.get("ctx", {}).get("error", first["msg"]))
            raise OpeningHoursError(f"Horaires d'ouverture invalides : {message}.") from None

    def day(self, weekday: int) -> tuple[tuple[dt.time, dt.time], ...]:
        """Intervals for ``date.weekday()`` (0 = Monday)."""
        value: tuple[tuple[dt.time, dt.time], ...] = getattr(self, WEEKDAYS[weekday])
        return value

    def to_json(self) -> dict[str, list[list[str]]]:
        """The stored form: only open days, ``HH:MM`` strings."""
        return {
            day: [[opens.strftime("%H:%M"), closes.strftime("%H:%M")] for opens, closes in spans]
            for day in WEEKDAYS
            if (spans := getattr(self, day))
        }
