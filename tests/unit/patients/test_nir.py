"""The NIR value object: public vectors, every problem code, masking, and properties."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pickle
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from labvault.patients.nir import Nir, NirError, NirProblem, compute_key, synthetic_nir

# A byte-for-byte copy of shared/data/nir_vectors.json, so the repository tests itself.
VECTORS_PATH = Path(__file__).resolve().parents[2] / "data" / "nir_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

# The rules restated independently of the implementation (see the module docstring).
ACCEPTED_MONTHS = [f"{month:02d}" for month in (*range(1, 13), *range(20, 100))]
METROPOLITAN_DEPARTMENTS = [f"{number:02d}" for number in range(1, 97)] + ["2A", "2B"]


def reference_key(body: str) -> int:
    digits = body[:5] + {"2A": "19", "2B": "18"}.get(body[5:7], body[5:7]) + body[7:]
    return 97 - int(digits) % 97


def with_key(body: str) -> str:
    return f"{body}{reference_key(body):02d}"


def without_separators(text: str) -> str:
    return re.sub(r"[\s.\-]", "", text)


def expected_problem(why: str) -> NirProblem:
    by_prefix = {
        "bad key": NirProblem.BAD_KEY,
        "bad department": NirProblem.BAD_DEPARTMENT,
        "16 characters": NirProblem.TOO_LONG,
        "too short": NirProblem.TOO_SHORT,
        "empty": NirProblem.EMPTY,
        "letters in key": NirProblem.LETTERS_IN_KEY,
    }
    for prefix, problem in by_prefix.items():
        if why.startswith(prefix):
            return problem
    raise AssertionError(f"new invalid vector reason {why!r}: map it to a NirProblem here")


def vector_params(kind: str, *, min_length: int = 0) -> list[Any]:
    return [
        pytest.param(vector, id=f"{index}-{vector['source'] or vector.get('why', '')}")
        for index, vector in enumerate(VECTORS[kind])
        if len(vector["input"]) >= min_length
    ]


@st.composite
def valid_compacts(draw: st.DrawFn) -> str:
    """Any NIR the rules accept, built from its fields with an independently computed key."""
    sex = draw(st.sampled_from("12"))
    year = draw(st.integers(0, 99))
    month = draw(st.sampled_from(ACCEPTED_MONTHS))
    place = draw(
        st.one_of(
            st.builds(
                lambda department, commune: f"{department}{commune:03d}",
                st.sampled_from(METROPOLITAN_DEPARTMENTS),
                st.integers(1, 999),
            ),
            st.builds(
                lambda prefix, digit, commune: f"{prefix}{digit}{commune:02d}",
                st.sampled_from(["97", "98"]),
                st.integers(0, 9),
                st.integers(1, 99),
            ),
            st.integers(1, 999).map(lambda country: f"99{country:03d}"),
        )
    )
    order = draw(st.integers(1, 999))
    return with_key(f"{sex}{year:02d}{month}{place}{order:03d}")


def parse_or_error(text: str) -> Nir | NirError:
    """Any other exception escapes and fails the test."""
    try:
        return Nir.parse(text)
    except NirError as error:
        return error


def problem_after_edit(edited: str) -> NirProblem:
    """An edit of digits always breaks the key, unless it broke the 2A/2B department first."""
    department = edited[5:7]
    if department.isdigit() or department in ("2A", "2B"):
        return NirProblem.BAD_KEY
    return NirProblem.BAD_DEPARTMENT


# --- public vectors -------------------------------------------------------------------


@pytest.mark.parametrize("vector", vector_params("valid"))
def test_every_valid_vector_parses_to_its_compact_form(vector: dict[str, str]) -> None:
    nir = Nir.parse(vector["input"])

    assert nir.compact == vector["compact"]
    assert Nir(vector["compact"]) == nir
    assert compute_key(nir.compact[:13]) == int(nir.key)


@pytest.mark.parametrize("vector", vector_params("invalid"))
def test_every_invalid_vector_is_rejected_for_its_stated_reason(vector: dict[str, str]) -> None:
    with pytest.raises(NirError) as caught:
        Nir.parse(vector["input"])

    assert caught.value.problem is expected_problem(vector["why"])


# Inputs of 3 characters or fewer cannot be told apart from the rule text.
@pytest.mark.parametrize("vector", vector_params("invalid", min_length=4))
def test_errors_of_invalid_vectors_do_not_echo_the_value(vector: dict[str, str]) -> None:
    text = vector["input"]
    with pytest.raises(NirError) as caught:
        Nir.parse(text)

    compact = without_separators(text)
    rendered = [str(caught.value), repr(caught.value), *map(str, caught.value.args)]
    for fragment in (text.strip(), compact, compact[-2:]):
        for message in rendered:
            assert fragment not in message


# --- how people type it ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "284052A32102552",
        "2 84 05 2A 321 025 52",
        "2 84 05 2a 321 025 52",
        "  284052a32102552\n",
        "2\u00a084\u00a005\u00a02A\u00a0321\u00a0025\u00a052",
        "2\u202f84\u202f05\u202f2A\u202f321\u202f025\u202f52",
        "2.84.05.2A.321.025.52",
        "2-84-05-2A-321-025-52",
        "2\u201384\u201305\u20132A\u2013321\u2013025\u201352",
        "\t2 84 05 2A . 321 - 025 52 ",
    ],
)
def test_separators_case_and_surrounding_spaces_are_accepted(text: str) -> None:
    assert Nir.parse(text).compact == "284052A32102552"


def test_components_of_a_metropolitan_nir() -> None:
    nir = Nir.parse("2 55 08 14 168 025 38")

    assert (nir.sex_digit, nir.birth_year, nir.birth_month) == ("2", "55", "08")
    assert (nir.department, nir.commune, nir.order, nir.key) == ("14", "168", "025", "38")


def test_components_of_an_overseas_nir_have_a_three_digit_department() -> None:
    nir = Nir.parse("292039712004540")

    assert (nir.department, nir.commune, nir.order, nir.key) == ("971", "20", "045", "40")


def test_components_of_corsican_and_born_abroad_nirs() -> None:
    assert Nir.parse("253072B07300470").department == "2B"
    born_abroad = Nir.parse("295109912611193")
    assert (born_abroad.department, born_abroad.commune) == ("99", "126")


def test_formatted_uses_the_carte_vitale_grouping() -> None:
    assert Nir.parse("295109912611193").formatted() == "2 95 10 99 126 111 93"
    assert Nir.parse("284052a32102552").formatted() == "2 84 05 2A 321 025 52"


# --- every problem code ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", NirProblem.EMPTY),
        ("   ", NirProblem.EMPTY),
        (" . - \u00a0", NirProblem.EMPTY),
        ("2 95 10 99 126 111 9/3", NirProblem.BAD_CHARACTER),
        ("29510991261119\uff13", NirProblem.BAD_CHARACTER),
        ("295109912611193\u200b", NirProblem.BAD_CHARACTER),
        ("29510991261119\u00e9", NirProblem.BAD_CHARACTER),
        ("2951099126X1193", NirProblem.BAD_CHARACTER),
        ("X95109912611193", NirProblem.BAD_CHARACTER),
        ("29510991261", NirProblem.TOO_SHORT),
        ("2951099126111", NirProblem.MISSING_KEY),
        ("2951099126111930", NirProblem.TOO_LONG),
        ("253072C07300443", NirProblem.BAD_DEPARTMENT),
        ("25307A207300443", NirProblem.BAD_DEPARTMENT),
        ("1850575123456ab", NirProblem.LETTERS_IN_KEY),
        ("1850575123456x7", NirProblem.LETTERS_IN_KEY),
        ("185057512345600", NirProblem.BAD_KEY),
        ("185057512345698", NirProblem.BAD_KEY),
        ("185057512345699", NirProblem.BAD_KEY),
        (with_key("3850575123456"), NirProblem.BAD_SEX),
        (with_key("4850575123456"), NirProblem.BAD_SEX),
        (with_key("7850575123456"), NirProblem.BAD_SEX),
        (with_key("8850575123456"), NirProblem.BAD_SEX),
        (with_key("0850575123456"), NirProblem.BAD_SEX),
        (with_key("1850075123456"), NirProblem.BAD_MONTH),
        (with_key("1851375123456"), NirProblem.BAD_MONTH),
        (with_key("1851975123456"), NirProblem.BAD_MONTH),
        (with_key("1850500123456"), NirProblem.BAD_DEPARTMENT),
        (with_key("1850575000456"), NirProblem.BAD_COMMUNE),
        (with_key("1850597100456"), NirProblem.BAD_COMMUNE),
        (with_key("1850599000456"), NirProblem.BAD_COMMUNE),
        (with_key("1850575123000"), NirProblem.BAD_ORDER),
    ],
)
def test_each_problem_is_named(text: str, problem: NirProblem) -> None:
    with pytest.raises(NirError) as caught:
        Nir.parse(text)

    assert caught.value.problem is problem


def test_a_wrong_key_is_reported_before_the_field_rules() -> None:
    body_with_bad_month = "1851375123456"
    wrong_key = reference_key(body_with_bad_month) % 97 + 1

    with pytest.raises(NirError) as caught:
        Nir.parse(f"{body_with_bad_month}{wrong_key:02d}")

    assert caught.value.problem is NirProblem.BAD_KEY


@pytest.mark.parametrize(
    "body",
    [
        "1850175123456",  # month 01
        "1851275123456",  # month 12
        "1852075123456",  # month 20: unknown
        "1854375123456",  # month 43: accepted as the CNAM does
        "1859975123456",  # month 99
        "1530520073004",  # department 20: Corsica before 1976
        "1530596073004",  # department 96: Tunisia before independence
        "1530597801004",  # department 978 and commune 01
        "1530598899004",  # department 988 and commune 99
        "1530599999001",  # born abroad, country 999, order 001
        "2000101001999",  # year 00, department 01, commune 001, order 999
    ],
)
def test_edge_values_the_rules_accept(body: str) -> None:
    assert Nir.parse(with_key(body)).compact == with_key(body)


def test_problem_codes_are_stable() -> None:
    assert {problem.value for problem in NirProblem} == {
        "empty",
        "bad_character",
        "too_short",
        "missing_key",
        "too_long",
        "letters_in_key",
        "bad_key",
        "bad_sex",
        "bad_month",
        "bad_department",
        "bad_commune",
        "bad_order",
    }


def test_nir_error_is_a_value_error_that_survives_pickling() -> None:
    with pytest.raises(ValueError, match="control key") as caught:
        Nir.parse("295109912611199")

    copy = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(copy, NirError)
    assert (copy.problem, str(copy)) == (NirProblem.BAD_KEY, str(caught.value))


def test_a_huge_input_does_not_get_its_length_echoed_as_three_digits() -> None:
    with pytest.raises(NirError) as caught:
        Nir.parse("1" * 250)

    assert caught.value.problem is NirProblem.TOO_LONG
    assert re.search(r"[0-9]{3}", str(caught.value)) is None


# --- the value object -----------------------------------------------------------------


@pytest.mark.parametrize("vector", vector_params("valid"))
def test_repr_str_and_formatting_never_show_the_value(vector: dict[str, str]) -> None:
    nir = Nir.parse(vector["input"])

    renderings = [
        repr(nir),
        str(nir),
        f"{nir}",
        f"{nir!r}",
        format(nir),
        "%s %r" % (nir, nir),  # noqa: UP031 - the old operator must be masked too
        "{} {!r}".format(nir, nir),  # noqa: UP032 - and str.format
        str([nir]),
        repr({"nir": nir}),
    ]
    for rendering in renderings:
        assert re.search(r"[0-9]", rendering) is None, rendering
        assert nir.compact not in rendering


def test_the_constructor_accepts_only_the_canonical_compact_form() -> None:
    assert Nir("284052A32102552") == Nir.parse("2 84 05 2a 321 025 52")
    with pytest.raises(NirError) as lowercase:
        Nir("284052a32102552")
    assert lowercase.value.problem is NirProblem.BAD_DEPARTMENT
    with pytest.raises(NirError) as spaced:
        Nir("2 84 05 2A 321 025 52")
    assert spaced.value.problem is NirProblem.BAD_CHARACTER


def test_nir_is_immutable_and_hashable() -> None:
    nir = Nir.parse("295109912611193")

    with pytest.raises(dataclasses.FrozenInstanceError):
        nir.compact = "255081416802538"  # type: ignore[misc]
    assert len({nir, Nir.parse("2 95 10 99 126 111 93")}) == 1


# --- compute_key ----------------------------------------------------------------------


def test_compute_key_of_corsican_and_plain_bodies() -> None:
    assert compute_key("2840588321025") == 32
    assert compute_key("284052A321025") == 52
    assert compute_key("284052B321025") == 79


@pytest.mark.parametrize(
    ("first13", "problem"),
    [
        ("", NirProblem.EMPTY),
        ("284058832102", NirProblem.TOO_SHORT),
        ("28405883210250", NirProblem.TOO_LONG),
        ("284052C321025", NirProblem.BAD_DEPARTMENT),
        ("284052a321025", NirProblem.BAD_DEPARTMENT),
        ("28405883210x5", NirProblem.BAD_CHARACTER),
        ("2840588 21025", NirProblem.BAD_CHARACTER),
    ],
)
def test_compute_key_rejects_what_is_not_a_canonical_body(
    first13: str, problem: NirProblem
) -> None:
    with pytest.raises(NirError) as caught:
        compute_key(first13)

    assert caught.value.problem is problem


# --- synthetic_nir --------------------------------------------------------------------


def test_synthetic_nir_rejects_a_sex_other_than_1_or_2() -> None:
    with pytest.raises(ValueError, match="sex"):
        synthetic_nir(random.Random(0), sex=3, birth_date=datetime.date(1990, 1, 1))


def test_synthetic_nir_is_reproducible_from_the_seed() -> None:
    birth_date = datetime.date(1985, 5, 17)
    first = [synthetic_nir(random.Random(7), sex=1, birth_date=birth_date) for _ in range(3)]
    second = [synthetic_nir(random.Random(7), sex=1, birth_date=birth_date) for _ in range(3)]

    assert first == second


def test_synthetic_nirs_cover_corsica_overseas_and_abroad() -> None:
    rng = random.Random(2024)
    departments = Counter(
        synthetic_nir(rng, sex=2, birth_date=datetime.date(1970, 3, 1)).department
        for _ in range(5000)
    )

    assert departments["2A"] > 0
    assert departments["2B"] > 0
    assert departments["99"] > 0
    assert any(department.startswith("97") for department in departments)


# --- properties -----------------------------------------------------------------------

NIR_LIKE_TEXT = st.text(alphabet=st.sampled_from("0123456789 .-AaBbXz/\u00a0\u2013"), max_size=24)


@given(st.one_of(st.text(), NIR_LIKE_TEXT, valid_compacts()))
def test_parse_returns_a_nir_or_raises_nir_error_and_nothing_else(text: str) -> None:
    outcome = parse_or_error(text)

    if isinstance(outcome, NirError):
        assert isinstance(outcome.problem, NirProblem)
        assert re.search(r"[0-9]{3}", str(outcome)) is None
    else:
        assert Nir(outcome.compact) == outcome
        assert reference_key(outcome.compact[:13]) == int(outcome.key)


@given(valid_compacts())
def test_valid_nirs_round_trip_through_their_formatted_form(compact: str) -> None:
    nir = Nir.parse(compact)

    assert nir.compact == compact
    assert Nir.parse(nir.formatted()) == nir
    assert Nir(nir.compact) == nir


@given(valid_compacts(), st.data())
def test_separators_and_case_never_change_the_nir(compact: str, data: st.DataObject) -> None:
    separators = data.draw(
        st.lists(
            st.sampled_from(["", " ", ".", "-", "\u00a0", "\u2013", "  "]),
            min_size=len(compact) + 1,
            max_size=len(compact) + 1,
        )
    )
    typed = "".join(sep + char for sep, char in zip(separators, compact, strict=False))
    typed += separators[-1]

    assert Nir.parse(typed.lower()).compact == compact


@given(
    seed=st.integers(),
    sex=st.sampled_from([1, 2]),
    birth_date=st.dates(datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)),
)
def test_synthetic_nir_is_valid_and_carries_sex_and_birth_month(
    seed: int, sex: int, birth_date: datetime.date
) -> None:
    nir = synthetic_nir(random.Random(seed), sex=sex, birth_date=birth_date)

    assert Nir.parse(nir.compact) == nir
    assert nir.sex_digit == str(sex)
    assert nir.birth_year == f"{birth_date.year % 100:02d}"
    assert nir.birth_month == f"{birth_date.month:02d}"


@given(valid_compacts(), st.data())
def test_changing_any_single_digit_is_detected(compact: str, data: st.DataObject) -> None:
    digit_positions = [index for index, char in enumerate(compact) if char.isdigit()]
    position = data.draw(st.sampled_from(digit_positions))
    digit = data.draw(st.sampled_from("0123456789").filter(lambda d: d != compact[position]))
    edited = f"{compact[:position]}{digit}{compact[position + 1 :]}"

    with pytest.raises(NirError) as caught:
        Nir.parse(edited)

    assert caught.value.problem is problem_after_edit(edited)


@given(valid_compacts(), st.data())
def test_swapping_two_adjacent_different_digits_of_the_body_is_detected(
    compact: str, data: st.DataObject
) -> None:
    swappable = [
        index
        for index in range(12)
        if compact[index].isdigit()
        and compact[index + 1].isdigit()
        and compact[index] != compact[index + 1]
    ]
    assume(swappable)
    index = data.draw(st.sampled_from(swappable))
    edited = f"{compact[:index]}{compact[index + 1]}{compact[index]}{compact[index + 2 :]}"

    with pytest.raises(NirError) as caught:
        Nir.parse(edited)

    assert caught.value.problem is problem_after_edit(edited)
