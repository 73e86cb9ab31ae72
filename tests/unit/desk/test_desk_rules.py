"""The desk's pure rules: which documents prove an identity, how days and walk-in traits are
read (no "0", no timestamps, no markup), and when a record found by NIR is the person."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from labvault.appointments.models import AppointmentStatus
from labvault.desk.routes import parse_id, parse_walk_in_traits
from labvault.desk.services import (
    STATUS_LABELS,
    VALID_DOCUMENTS,
    DeskInputError,
    DocumentKind,
    SiteChoice,
    _address,
    _day_bounds,
    _same_person,
    local_day,
    parse_day,
    site_zone,
)
from labvault.patients.ins import IdentityStatus
from labvault.patients.services import RAISED_BY_DOCUMENT, PatientRecord

TODAY = dt.date(2026, 11, 25)


def test_only_identity_documents_raise_the_identity_status() -> None:
    assert {kind.value for kind in VALID_DOCUMENTS} == {"cni", "passeport", "titre_sejour"}
    assert DocumentKind.DRIVING_LICENCE not in VALID_DOCUMENTS
    assert DocumentKind.HEALTH_CARD not in VALID_DOCUMENTS
    assert RAISED_BY_DOCUMENT == {
        IdentityStatus.PROV: IdentityStatus.VALI,
        IdentityStatus.RECUP: IdentityStatus.QUAL,
    }


def test_every_status_has_a_french_label() -> None:
    assert set(STATUS_LABELS) == {status.value for status in AppointmentStatus}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", TODAY),
        (None, TODAY),
        ("2026-11-26", dt.date(2026, 11, 26)),
        (" 2026-01-02 ", dt.date(2026, 1, 2)),
    ],
)
def test_a_day_is_iso_or_today(text: str | None, expected: dt.date) -> None:
    assert parse_day(text, today=TODAY) == expected


@pytest.mark.parametrize(
    "text",
    ["0", "00", "864000", "2026-02-30", "26-11-2026", "2026/11/25", "1900-01-01", "2999-01-01"],
)
def test_a_bad_day_is_refused_in_french(text: str) -> None:
    with pytest.raises(DeskInputError) as raised:
        parse_day(text, today=TODAY)
    assert raised.value.field == "jour"


def test_ids_are_uuids_or_nothing() -> None:
    value = uuid.uuid4()
    assert parse_id(str(value), "x") == value
    assert parse_id(" ", "x") is None
    with pytest.raises(DeskInputError):
        parse_id("0", "x")


@pytest.mark.parametrize(
    ("birth_name", "first_name", "birth_date", "nir", "field"),
    [
        ("", "Jeanne", "1980-01-02", None, "birth_name"),
        ("<script>alert(1)</script>", "Jeanne", "1980-01-02", None, "birth_name"),
        ("Martin", "Jeanne\u0000", "1980-01-02", None, "first_name"),
        ("Martin", "Jeanne", "0", None, "birth_date"),
        ("Martin", "Jeanne", "2030-01-01", None, "birth_date"),
        ("Martin", "Jeanne", "1980-01-02", "1 80 01 75 000 000 00", "nir"),
    ],
)
def test_walk_in_traits_are_checked(
    birth_name: str, first_name: str, birth_date: str, nir: str | None, field: str
) -> None:
    with pytest.raises(DeskInputError) as raised:
        parse_walk_in_traits(birth_name, first_name, birth_date, nir, today=TODAY)
    assert raised.value.field == field


def test_walk_in_traits_are_cleaned() -> None:
    name, given, born, nir = parse_walk_in_traits(
        "  de   la Tour ", "Anne-Marie", "1980-01-02", "", today=TODAY
    )
    assert (name, given, born, nir) == ("de la Tour", "Anne-Marie", dt.date(1980, 1, 2), None)


def _record(birth_name: str, first_names: str, born: dt.date) -> PatientRecord:
    return PatientRecord(
        id=uuid.uuid4(),
        fields=frozenset({"birth_name", "first_names", "birth_date"}),
        birth_name=birth_name,
        used_name=None,
        first_names=first_names,
        birth_date=born,
        sex=None,
        birth_place_code=None,
        ins_number=None,
        ins_oid=None,
        identity_status=None,
        email=None,
        phone=None,
        address_line=None,
        postal_code=None,
        city=None,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


def test_a_record_found_by_nir_must_bear_the_document_s_traits() -> None:
    record = _record("Lefèvre", "Élise, Marie", dt.date(1980, 1, 2))
    assert _same_person(record, "LEFEVRE", "elise", dt.date(1980, 1, 2))
    assert _same_person(record, "Lefevre", "Marie", dt.date(1980, 1, 2))
    assert not _same_person(record, "Lefevre", "Elise", dt.date(1980, 1, 3))
    assert not _same_person(record, "Martin", "Elise", dt.date(1980, 1, 2))
    assert not _same_person(record, "Lefevre", "Anne", dt.date(1980, 1, 2))


def test_a_home_address_blob_is_read_defensively() -> None:
    assert _address(None) == {}
    assert _address(b"not json") == {}
    assert _address(b"[1, 2]") == {}
    assert _address(b'{"line": "1 rue", "postal_code": 75001}') == {"line": "1 rue"}


def test_a_site_s_zone_falls_back_to_paris() -> None:
    assert site_zone("America/Cayenne").key == "America/Cayenne"
    for name in (None, "", "Mars/Olympus", "../etc/passwd"):
        assert site_zone(name).key == "Europe/Paris"
    assert SiteChoice(uuid.uuid4(), "Site", "Indian/Reunion").zone.key == "Indian/Reunion"


@pytest.mark.parametrize(
    ("day", "zone", "hours"),
    [
        (dt.date(2026, 3, 29), "Europe/Paris", 23),
        (dt.date(2026, 10, 25), "Europe/Paris", 25),
        (dt.date(2026, 10, 25), "Indian/Reunion", 24),
    ],
)
def test_a_local_day_is_bounded_in_its_own_zone(day: dt.date, zone: str, hours: int) -> None:
    start, end = _day_bounds(day, site_zone(zone))
    assert end - start == dt.timedelta(hours=hours)
    assert local_day(start, site_zone(zone)) == day
    assert local_day(end - dt.timedelta(microseconds=1), site_zone(zone)) == day


def test_the_same_instant_is_another_day_at_another_site() -> None:
    moment = dt.datetime(2026, 11, 25, 22, 30, tzinfo=dt.UTC)
    assert local_day(moment, site_zone("Europe/Paris")) == dt.date(2026, 11, 25)
    assert local_day(moment, site_zone("Indian/Reunion")) == dt.date(2026, 11, 26)
    assert local_day(moment, site_zone("America/Cayenne")) == dt.date(2026, 11, 25)
