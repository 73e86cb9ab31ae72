"""SMART scopes: the accepted forms, strict refusal of everything else, canonical output."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labvault.fhir.scopes import (
    PERMISSIONS,
    RESOURCE_TYPES,
    ScopeError,
    ScopeSet,
    parse_scope,
    parse_scopes,
)


@pytest.mark.parametrize(
    ("scope", "letters"),
    [
        ("system/Observation.read", "rs"),
        ("system/Observation.write", "cud"),
        ("system/Observation.*", "cruds"),
        ("system/Observation.rs", "rs"),
        ("system/Observation.c", "c"),
        ("system/Observation.cruds", "cruds"),
        ("system/Observation.cu", "cu"),
    ],
)
def test_v1_and_v2_forms(scope: str, letters: str) -> None:
    assert parse_scope(scope) == {("Observation", letter) for letter in letters}


def test_star_type_means_every_served_type() -> None:
    granted = parse_scope("system/*.read")
    assert {kind for kind, _ in granted} == RESOURCE_TYPES
    assert {letter for _, letter in granted} == {"r", "s"}


@pytest.mark.parametrize(
    "scope",
    [
        "",
        "patient/Observation.read",
        "user/Observation.read",
        "system/Observation",
        "system/Observation.",
        "system/Observation.sr",
        "system/Observation.rr",
        "system/Observation.x",
        "system/Observation.READ",
        "system/observation.read",
        "system/Invoice.read",
        "system/Observation.read ",
        " system/Observation.read",
        "system//Observation.read",
        "system/Observation.read?x",
        "system/Observation.rs*",
        "SYSTEM/Observation.read",
        "system/Observation.re\u0430d",
    ],
)
def test_anything_else_is_refused(scope: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(scope)


def test_a_scope_string_is_all_or_nothing() -> None:
    assert parse_scopes("") == ScopeSet()
    assert parse_scopes("system/Patient.read system/Observation.rs").allows("Observation", "s")
    for text in (
        "system/Patient.read  system/Observation.rs",
        "system/Patient.read system/Bogus.rs",
        " system/Patient.read",
        "system/Patient.read\tsystem/Observation.rs",
        "system/Patient.read " * 65,
    ):
        with pytest.raises(ScopeError):
            parse_scopes(text)


def test_intersection_and_canonical_form() -> None:
    requested = parse_scopes("system/Observation.* system/Patient.read")
    registered = parse_scopes("system/Observation.rs system/Patient.rs system/Location.read")
    granted = requested & registered
    assert str(granted) == "system/Observation.read system/Patient.read"
    assert str(parse_scopes("system/Patient.cr")) == "system/Patient.cr"
    assert str(parse_scopes("system/Patient.cud")) == "system/Patient.write"
    assert parse_scopes(str(granted)) == granted
    assert not (parse_scopes("system/Observation.c") & registered)
    with pytest.raises(ValueError, match="is not one of"):
        granted.allows("Observation", "x")


SCOPE_TEXT = st.text(alphabet=st.sampled_from("system/Pat*ien.rwcudsx ObvSRv"), max_size=40)


@given(st.one_of(SCOPE_TEXT, st.text(max_size=60)))
def test_any_text_parses_or_is_a_scope_error(text: str) -> None:
    with contextlib.suppress(ScopeError):
        granted = parse_scopes(text)
        # What parses is exactly what its canonical form says.
        assert parse_scopes(str(granted)) == granted
        assert all(
            kind in RESOURCE_TYPES and letter in PERMISSIONS for kind, letter in granted.permissions
        )


@given(
    st.sampled_from([*sorted(RESOURCE_TYPES), "*"]),
    st.sets(st.sampled_from(PERMISSIONS), min_size=1),
)
def test_every_ordered_subset_of_cruds_parses(kind: str, letters: set[str]) -> None:
    access = "".join(letter for letter in PERMISSIONS if letter in letters)
    granted = parse_scope(f"system/{kind}.{access}")
    assert {letter for _, letter in granted} == letters
