"""Catalog input: LOINC check digits, preparation rules, French errors naming the field."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labvault.catalog.schemas import CatalogError, ExamInput, is_valid_loinc, loinc_check_digit

VALID = {"code": "cort8", "label": "Cortisol  (8 h)", "sampling_minutes": "5"}


@pytest.mark.parametrize(
    "code", ["2345-7", "2160-0", "2143-6", "718-7", "4548-4", "1558-6", "14682-9"]
)
def test_real_loinc_codes_pass_their_check_digit(code: str) -> None:
    assert is_valid_loinc(code)


@pytest.mark.parametrize(
    "code", ["2345-6", "2345", "2345-", "-7", "2345-77", "23a5-7", "\uff12345-7"]
)
def test_wrong_or_malformed_loinc_codes_are_refused(code: str) -> None:
    assert not is_valid_loinc(code)


@given(st.integers(min_value=0, max_value=9_999_999), st.integers(min_value=0, max_value=9))
def test_exactly_one_check_digit_fits_each_number(number: int, digit: int) -> None:
    code = f"{number}-{digit}"
    assert is_valid_loinc(code) == (digit == loinc_check_digit(str(number)))


def test_a_valid_exam_is_normalised() -> None:
    exam = ExamInput.parse(
        {
            **VALID,
            "loinc": " 2143-6 ",
            "window_start": "07:00",
            "window_end": "10:00",
            "fasting_hours": 8,
            "home_sampling": "on",
            "preparation_text": "À jeun depuis 8 h.\r\nVenez avant 10 h.",
        }
    )
    assert exam.code == "CORT8"
    assert exam.label == "Cortisol (8 h)"
    assert exam.sampling_minutes == 5
    assert exam.loinc == "2143-6"
    assert (exam.window_start, exam.window_end) == (dt.time(7), dt.time(10))
    assert exam.home_sampling is True
    assert exam.no_appointment is False
    assert exam.preparation_text == "À jeun depuis 8 h.\nVenez avant 10 h."


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"loinc": "2143-5"}, "loinc", "chiffre de contrôle"),
        ({"loinc": "cortisol"}, "loinc", "format attendu"),
        ({"fasting_hours": 17}, "fasting_hours", "entre 0 et 16"),
        ({"fasting_hours": -1}, "fasting_hours", "entre 0 et 16"),
        ({"fasting_hours": True}, "fasting_hours", "entier"),
        ({"sampling_minutes": 0}, "sampling_minutes", "entre 1 et 240"),
        ({"sampling_minutes": "0"}, "sampling_minutes", "entre 1 et 240"),
        ({"sampling_minutes": 1.5}, "sampling_minutes", "entier"),
        ({"code": "a b"}, "code", "sans espace"),
        ({"code": ""}, "code", "1 à 32"),
        ({"label": "   "}, "label", "obligatoire"),
        ({"label": "x" * 201}, "label", "200"),
        ({"label": "Glyc\u202eémie"}, "label", "non autorisé"),
        ({"preparation_text": "a\x00b"}, "preparation_text", "non autorisé"),
        ({"window_start": "07:00"}, "window_start", "début et la fin"),
        ({"window_start": "10:00", "window_end": "07:00"}, "window_end", "la fin doit suivre"),
        ({"window_start": "7h", "window_end": "10:00"}, "window_start", "HH:MM"),
        ({"window_start": "24:00", "window_end": "10:00"}, "window_start", "HH:MM"),
        ({"home_sampling": "peut-être"}, "home_sampling", "oui ou non"),
    ],
)
def test_bad_input_gives_a_french_error_naming_the_field(
    change: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(CatalogError) as caught:
        ExamInput.parse({**VALID, **change})
    assert caught.value.field == field
    assert fragment in caught.value.message


def test_missing_and_unknown_fields_are_refused() -> None:
    with pytest.raises(CatalogError, match=r"Durée de prélèvement.*obligatoire"):
        ExamInput.parse({"code": "A", "label": "B"})
    with pytest.raises(CatalogError, match="Champ inconnu"):
        ExamInput.parse({**VALID, "price": 12})
