"""The declaration's rules, each with its French reason, and the sealed format's round trip."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from labvault.patients.ins import Sex
from labvault.patients.nir import NirProblem, compute_key, synthetic_nir
from labvault.preregistration.schemas import NIR_REASONS, Declaration, parse_declaration

TODAY = dt.date(2026, 11, 25)
BORN = dt.date(1984, 5, 17)
NIR = synthetic_nir(random.Random(3), sex=2, birth_date=BORN)
PROVISIONAL = "3" + NIR.compact[1:13] + f"{compute_key('3' + NIR.compact[1:13]):02d}"

VALID = {
    "birth_name": "Martin",
    "used_name": "Durand",
    "first_names": "Léa Marie",
    "birth_date": BORN.isoformat(),
    "sex": "F",
    "birth_place_code": "2a004",
    "nir": NIR.formatted(),
    "insurance_name": "Mutuelle des Lilas",
    "insurance_member_number": "AB-123 456",
    "third_party_payment": True,
}


def errors_of(**changes: object) -> dict[str, str]:
    declared, errors = parse_declaration({**VALID, **changes}, today=TODAY)
    assert declared is None
    assert errors
    return errors


def test_a_valid_declaration_is_normalised() -> None:
    declared, errors = parse_declaration({**VALID, "first_names": "  Léa   Marie "}, today=TODAY)
    assert errors == {}
    assert declared is not None
    assert declared.first_names == "Léa Marie"
    assert declared.birth_place_code == "2A004"
    assert declared.sex is Sex.FEMALE
    assert declared.nir == NIR
    assert declared.third_party_payment is True


@pytest.mark.parametrize("value", ["0", "00", "", "1984-02-30", "17/05/1984", "864000"])
def test_a_birth_date_that_is_not_a_real_date_is_refused(value: str) -> None:
    assert "AAAA-MM-JJ" in errors_of(birth_date=value).get("birth_date", "") or value == ""


def test_dates_given_as_the_number_zero_are_refused() -> None:
    assert "birth_date" in errors_of(birth_date=0)


def test_a_birth_date_in_the_future_or_before_1900_is_refused() -> None:
    assert "futur" in errors_of(birth_date="2027-01-01")["birth_date"]
    assert "1900" in errors_of(birth_date="1899-12-31")["birth_date"]


@pytest.mark.parametrize(
    ("nir", "problem"),
    [
        ("2 84 05 2A 004 123", NirProblem.MISSING_KEY),
        ("1234", NirProblem.TOO_SHORT),
        (NIR.compact[:-2] + f"{(int(NIR.compact[-2:]) % 97) + 1:02d}", NirProblem.BAD_KEY),
        (
            "3" + NIR.compact[1:13] + f"{compute_key('3' + NIR.compact[1:13]):02d}",
            NirProblem.BAD_SEX,
        ),
        (NIR.compact[:-2] + "AB", NirProblem.LETTERS_IN_KEY),
    ],
)
def test_an_invalid_nir_gets_its_precise_reason(nir: str, problem: NirProblem) -> None:
    assert errors_of(nir=nir)["nir"] == NIR_REASONS[problem]


def test_a_nir_that_contradicts_the_declared_sex_or_birth_date_is_refused() -> None:
    assert "sexe" in errors_of(sex="M")["nir"]
    assert "année" in errors_of(birth_date="1985-05-17")["nir"]
    assert "mois" in errors_of(birth_date="1984-06-17")["nir"]


def test_third_party_payment_needs_a_nir_unless_the_lab_has_one() -> None:
    assert "tiers payant" in errors_of(nir="")["nir"]
    declared, errors = parse_declaration({**VALID, "nir": ""}, today=TODAY, nir_known=True)
    assert errors == {}
    assert declared is not None
    assert declared.nir is None
    declared, errors = parse_declaration(
        {**VALID, "nir": "", "third_party_payment": False}, today=TODAY
    )
    assert errors == {}
    assert declared is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("birth_name", ""),
        ("birth_name", "Mar\x00tin"),
        ("birth_name", "Martin2"),
        ("birth_name", "x" * 101),
        ("first_names", "---"),
        ("used_name", "\u202eDurand"),
        ("sex", "X"),
        ("birth_place_code", "7505"),
        ("birth_place_code", "2C004"),
        ("insurance_name", "Mutuelle\x07"),
        ("insurance_name", "M" * 101),
        ("insurance_member_number", "A" * 33),
        ("insurance_member_number", "<script>"),
    ],
)
def test_each_rule_refuses_with_a_reason_and_never_the_value(field: str, value: str) -> None:
    errors = errors_of(**{field: value})
    assert field in errors
    if value.strip():
        assert value not in errors[field]


def test_insurance_needs_both_its_name_and_the_member_number() -> None:
    assert "insurance_member_number" in errors_of(insurance_member_number="")
    assert "insurance_name" in errors_of(insurance_name="")


def test_markup_in_names_is_kept_as_text_for_the_pages_to_escape() -> None:
    declared, errors = parse_declaration(
        {**VALID, "birth_name": "<b>Martin</b>", "nir": ""}, today=TODAY, nir_known=True
    )
    assert errors == {}
    assert declared is not None
    assert declared.birth_name == "<b>Martin</b>"


def test_the_sealed_format_round_trips_and_the_repr_shows_nothing() -> None:
    declared, _ = parse_declaration(VALID, today=TODAY)
    assert declared is not None
    again = Declaration.from_sealed(declared.to_sealed())
    assert again == declared
    assert "Martin" not in repr(declared)
    assert NIR.compact not in repr(declared)
