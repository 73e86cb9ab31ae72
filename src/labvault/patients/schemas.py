"""Validated patient input. Every rule gives a reason that names the rule, never the value."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from labvault.core.contact import parse_email, parse_phone
from labvault.patients.ins import IdentityStatus, InsOid, Sex
from labvault.patients.nir import Nir, NirError

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Zero-width characters and bidirectional overrides: they make two names look alike.
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SUSPECT = re.compile(f"{_CONTROL.pattern}|{_INVISIBLE.pattern}")
_LOOSE_SPACING = re.compile(r"\s{2,}|[^\S ]")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_BIRTH_PLACE = re.compile(r"(?:[0-9]{5}|2[AB][0-9]{3})")
_POSTAL_CODE = re.compile(r"[0-9]{5}")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
EARLIEST_BIRTH_DATE = dt.date(1900, 1, 1)


def _clean_text(value: Any) -> Any:
    """Trim, NFC-normalise, single-space and refuse control or invisible characters."""
    if not isinstance(value, str):
        return value
    if not unicodedata.is_normalized("NFC", value):
        value = unicodedata.normalize("NFC", value)
    value = value.strip()
    if _SUSPECT.search(value):
        if _CONTROL.search(value):
            raise ValueError("contains control characters")
        raise ValueError("contains invisible characters")
    if _LOOSE_SPACING.search(value):
        value = " ".join(value.split())
    return value


def _empty_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _check_name(value: str) -> str:
    if not _LETTER.search(value):
        raise ValueError("must contain letters")
    if _DIGIT.search(value):
        raise ValueError("must not contain digits")
    return value


def _parse_nir(value: Any) -> Any:
    if value is None or isinstance(value, Nir):
        return value
    if not isinstance(value, str):
        raise ValueError("must be text")
    if not value.strip():
        return None
    try:
        return Nir.parse(value)
    except NirError as exc:
        raise ValueError(str(exc)) from None


def _check_email(value: str) -> str:
    return parse_email(value)


def _check_phone(value: str) -> str:
    return parse_phone(value)


def _check_birth_place(value: str) -> str:
    value = value.upper()
    if not _BIRTH_PLACE.fullmatch(value):
        raise ValueError("must be a 5-character INSEE code (e.g. 75056, 2A004, 99134)")
    return value


def _check_postal_code(value: str) -> str:
    if not _POSTAL_CODE.fullmatch(value):
        raise ValueError("must be 5 digits")
    return value


def _parse_sex(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip().upper()
    return value


def _parse_date(value: Any) -> Any:
    """Only ``YYYY-MM-DD``: pydantic's lax parsing would read "864000" as a timestamp."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError("must be a real date written YYYY-MM-DD")


Text = Annotated[str, BeforeValidator(_clean_text)]
Name = Annotated[Text, Field(min_length=1, max_length=100), AfterValidator(_check_name)]
OptionalName = Annotated[Name | None, BeforeValidator(_empty_to_none)]


Email = Annotated[
    Annotated[Text, Field(max_length=254), AfterValidator(_check_email)] | None,
    BeforeValidator(_empty_to_none),
]
Phone = Annotated[
    Annotated[Text, Field(max_length=32), AfterValidator(_check_phone)] | None,
    BeforeValidator(_empty_to_none),
]
AddressLine = Annotated[
    Annotated[Text, Field(min_length=1, max_length=300)] | None,
    BeforeValidator(_empty_to_none),
]
PostalCode = Annotated[
    Annotated[Text, AfterValidator(_check_postal_code)] | None,
    BeforeValidator(_empty_to_none),
]
City = Annotated[
    Annotated[Text, Field(min_length=1, max_length=100)] | None,
    BeforeValidator(_empty_to_none),
]


class ContactUpdate(BaseModel):
    """New contact details; a field left out keeps its value, an empty one clears it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    email: Email = None
    phone: Phone = None
    address_line: AddressLine = None
    postal_code: PostalCode = None
    city: City = None

    def __repr__(self) -> str:
        return f"ContactUpdate(fields={sorted(self.model_fields_set)})"

    __str__ = __repr__

    def changes(self) -> dict[str, str | None]:
        return {name: getattr(self, name) for name in sorted(self.model_fields_set)}


class PatientInput(BaseModel):
    """A patient as given by a file, a form or an API client, checked and normalised."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    birth_name: Name
    used_name: OptionalName = None
    first_names: Annotated[Text, Field(min_length=1, max_length=200), AfterValidator(_check_name)]
    birth_date: Annotated[dt.date, BeforeValidator(_parse_date)]
    sex: Annotated[Sex, BeforeValidator(_parse_sex)]
    birth_place_code: Annotated[
        Annotated[Text, AfterValidator(_check_birth_place)] | None,
        BeforeValidator(_empty_to_none),
    ] = None
    nir: Annotated[Nir | None, BeforeValidator(_parse_nir)] = None
    ins_oid: InsOid | None = None
    identity_status: IdentityStatus = IdentityStatus.PROV
    email: Email = None
    phone: Phone = None
    address_line: AddressLine = None
    postal_code: PostalCode = None
    city: City = None

    def __repr__(self) -> str:
        return "PatientInput(**********)"

    __str__ = __repr__

    @model_validator(mode="after")
    def _check_consistency(self) -> PatientInput:
        today = dt.date.today()
        if self.birth_date > today:
            raise ValueError("birth_date: is in the future")
        if self.birth_date < EARLIEST_BIRTH_DATE:
            raise ValueError("birth_date: is before 1900")
        if self.nir is not None:
            _check_nir_matches(self.nir, self.sex, self.birth_date)
            if self.ins_oid is None:
                object.__setattr__(self, "ins_oid", InsOid.NIR)
        elif self.ins_oid is not None:
            raise ValueError("ins_oid: given without an INS number")
        return self

    @property
    def first_given_name(self) -> str:
        return self.first_names.replace(",", " ").split()[0]


def _check_nir_matches(nir: Nir, sex: Sex, birth_date: dt.date) -> None:
    """The NIR encodes sex, birth year and month: they must agree with the identity."""
    expected_sex = {"1": Sex.MALE, "2": Sex.FEMALE}.get(nir.sex_digit)
    if expected_sex is not None and expected_sex != sex:
        raise ValueError("nir: the sex digit does not match the patient's sex")
    if nir.birth_year != f"{birth_date.year % 100:02d}":
        raise ValueError("nir: the birth year does not match the birth date")
    month = int(nir.birth_month)
    if 1 <= month <= 12 and month != birth_date.month:
        raise ValueError("nir: the birth month does not match the birth date")


def describe_errors(error: ValidationError) -> list[tuple[str, str]]:
    """(field, reason) pairs from a validation error, with no input value in them."""
    problems: list[tuple[str, str]] = []
    for item in error.errors(include_input=False, include_url=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        field = ".".join(str(part) for part in item["loc"] if not isinstance(part, int))
        field = field.split(".", 1)[0] if field else ""
        if not field and ": " in message:
            field, message = message.split(": ", 1)
        problems.append((field or "row", message))
    return problems
