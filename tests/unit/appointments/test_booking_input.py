"""Booking input rules that need no database: dates and instants as the API takes them,
home addresses, the API bodies' strictness, and errors that carry a stable code."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from labvault.appointments.schemas import HoldIn, HomeVisitIn, parse_date, parse_instant
from labvault.appointments.services import BookingError, SlotTakenError, validate_address
from labvault.appointments.views import HomeAddress

GOOD = HomeAddress("12 rue des Lilas", "75011", "Paris", "Code 1234\n2e étage")


@pytest.mark.parametrize(
    "value", [0, "0", "", " ", "2026-13-01", "2026-02-30", "01/12/2026", "20261201", None, 1.5,
              "0001-01-01", "2026-12-01T09:00", "9999-12-31", "3000-01-01"]
)  # fmt: skip
def test_dates_are_iso_calendar_dates_only(value: object) -> None:
    with pytest.raises(ValueError, match="AAAA-MM-JJ"):
        parse_date(value)


def test_a_good_date() -> None:
    assert parse_date(" 2026-12-01 ") == dt.date(2026, 12, 1)


@pytest.mark.parametrize(
    "value",
    [0, "0", "2026-12-01", "2026-12-01T09:00", "2026-12-01T09:00:00", "demain", None,
     "2026-12-01T25:00:00+01:00", "0001-01-01T00:00:00Z", 1764576000,
     # Years whose move to UTC overflows (a 500 before these were bounded).
     "9999-12-31T23:00:00-05:00", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00",
     "3000-01-01T00:00:00Z"],
)  # fmt: skip
def test_instants_need_their_offset(value: object) -> None:
    with pytest.raises(ValueError, match="fuseau"):
        parse_instant(value)


def test_instants_come_back_in_utc() -> None:
    moment = parse_instant("2026-12-01T09:00:00+01:00")
    assert moment == dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
    assert moment.tzinfo is dt.UTC
    assert parse_instant("2026-12-01T08:00Z") == moment


def test_a_good_address_is_kept_and_trimmed() -> None:
    assert validate_address(HomeAddress(" 12 rue des Lilas ", "75011", "Paris")) == HomeAddress(
        "12 rue des Lilas", "75011", "Paris", ""
    )
    assert validate_address(GOOD) == GOOD
    assert "Lilas" not in repr(GOOD)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"line": ""}, "Adresse : obligatoire"),
        ({"line": "   "}, "Adresse : obligatoire"),
        ({"line": "x" * 201}, "au plus 200"),
        ({"line": "1 rue\nde la Paix"}, "caractère non autorisé"),
        ({"line": "1 rue\u202ede la Paix"}, "caractère non autorisé"),
        ({"postal_code": "7501"}, "5 chiffres"),
        ({"postal_code": "2A004"}, "5 chiffres"),
        ({"postal_code": "750011"}, "au plus 5"),
        ({"postal_code": "\uff17\uff15\uff10\uff11\uff11"}, "5 chiffres"),
        ({"city": ""}, "Ville : obligatoire"),
        ({"instructions": "a\x00b"}, "caractère non autorisé"),
        ({"instructions": "x" * 501}, "au plus 500"),
    ],
)
def test_bad_addresses(changes: dict[str, Any], message: str) -> None:
    fields = {
        "line": GOOD.line,
        "postal_code": GOOD.postal_code,
        "city": GOOD.city,
        "instructions": GOOD.instructions,
        **changes,
    }
    with pytest.raises(BookingError, match=message) as refused:
        validate_address(HomeAddress(**fields))
    assert refused.value.code == "invalid"


def test_errors_carry_a_stable_code() -> None:
    assert SlotTakenError().code == "slot_taken"
    assert str(SlotTakenError()) == "Ce créneau vient d'être pris. Choisissez-en un autre."
    assert BookingError("x", "deadline_passed").code == "deadline_passed"
    assert BookingError("x").code == "invalid"


def test_api_bodies_refuse_unknown_fields_and_loose_types() -> None:
    body = {
        "patient_id": str(uuid.uuid4()),
        "site_id": str(uuid.uuid4()),
        "exam_ids": [str(uuid.uuid4())],
        "starts_at": "2026-12-01T09:00:00+01:00",
    }
    assert HoldIn.model_validate(body).starts_at.tzinfo is dt.UTC
    for changes in ({"extra": 1}, {"exam_ids": []}, {"starts_at": 0}, {"exam_ids": ["0"]}):
        with pytest.raises(ValidationError):
            HoldIn.model_validate({**body, **changes})
    visit = {
        **{k: body[k] for k in ("patient_id", "site_id", "exam_ids")},
        "day": "2026-12-01",
        "window": "morning",
        "address": {"line": "1 rue", "postal_code": "75001", "city": "Paris"},
    }
    assert HomeVisitIn.model_validate(visit).day == dt.date(2026, 12, 1)
    for changes in (
        {"day": 0},
        {"day": "0"},
        {"window": "evening"},
        {"address": {"line": 1, "postal_code": "75001", "city": "Paris"}},
    ):
        with pytest.raises(ValidationError):
            HomeVisitIn.model_validate({**visit, **changes})


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        dt.datetime(3000, 1, 1, tzinfo=dt.UTC),
    ],
)
def test_far_off_instants_are_a_booking_error_not_an_overflow(value: dt.datetime) -> None:
    """The service's own check, for callers that build instants without the API's parser
    (the portal's pages)."""
    from labvault.appointments.services import _aware_utc

    with pytest.raises(BookingError, match="année hors limites"):
        _aware_utc(value)
