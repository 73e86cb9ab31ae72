"""What the sealed columns of the results tables hold, as typed values.

Each sealed column (``result_orders.details``, ``result_reports.content``,
``result_observations.content``) holds the JSON of one of these models, encrypted under the
patient's data key. Reading goes through :func:`load`, which refuses anything that does not
match the model (a row written by a newer version, a bug): a clear error, never a half-read
report. ``repr`` names no health value, so a model in a log or a traceback leaks nothing.
"""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Annotated, Final, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

SCHEMA_VERSION: Final = 1
LOINC: Final = "http://loinc.org"

_Text = Annotated[str, StringConstraints(max_length=20_000)]
_Short = Annotated[str, StringConstraints(max_length=500)]


class ContentError(ValueError):
    """A sealed value that does not read as the expected content (never quotes it)."""


class Delivery(enum.StrEnum):
    ONLINE = "online"
    """Published to the patient's portal when released."""
    PHONE = "phone"
    """Sensitive: a biologist gives it by phone (or in person) first; released online only
    once the call is recorded."""


class _Sealed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    __str__ = __repr__


class Coding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    system: _Short = ""
    """``http://loinc.org`` for LOINC; else the sender's own system (OBX-3.3 / OBR-4.3)."""
    code: _Short
    display: _Short = ""
    alternates: tuple[Coding, ...] = ()
    """The same concept in other systems (HL7 CWE components 4-6, FHIR ``coding[1:]``):
    French LIS send their local code first and LOINC as the alternate, so the sensitive-code
    check must see every one. Empty in JSON written before it existed."""

    def __repr__(self) -> str:
        return "Coding(<redacted>)"

    def all_codings(self) -> tuple[Coding, ...]:
        """This coding and its alternates, for matching codes (not for display)."""
        return (self, *(c for alternate in self.alternates for c in alternate.all_codings()))


class Prescriber(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    identifier: _Short = ""
    """RPPS or ADELI number when the sender gives one."""
    name: _Short = ""

    def __repr__(self) -> str:
        return "Prescriber(<redacted>)"


class OrderDetails(_Sealed):
    """``result_orders.details``."""

    placer_order_number: _Short = ""
    filler_order_number: _Short = ""
    exams: tuple[Coding, ...] = ()
    prescriber: Prescriber = Prescriber()
    collected_at: dt.datetime | None = None
    notes: tuple[_Text, ...] = ()


class ReportContent(_Sealed):
    """``result_reports.content``."""

    title: _Short = ""
    """What the report is about (the order's main exam), for lists."""
    conclusion: _Text = ""
    """The biologist's conclusion (may be written at validation)."""
    delivery: Delivery = Delivery.ONLINE
    sensitive_codes: tuple[Coding, ...] = ()
    """The observation codes that made it "by phone", for the biologist's eyes."""
    notes: tuple[_Text, ...] = ()
    phone_note: _Text = ""
    """What the biologist recorded about the call (who, when, what was said)."""


class ObservationContent(_Sealed):
    """``result_observations.content``: one value."""

    code: Coding
    value_type: Annotated[str, StringConstraints(max_length=3)] = ""
    number: Decimal | None = None
    """The value of a numeric (NM) observation; ``None`` otherwise."""
    text: _Text = ""
    """The value of any other type, as the sender wrote it (coded values as ``code^text``)."""
    unit: _Short = ""
    reference_range: _Short = ""
    abnormal_flags: tuple[Annotated[str, StringConstraints(max_length=5)], ...] = ()
    status: Annotated[str, StringConstraints(max_length=1)] = "F"
    """OBX-11: F final, P preliminary, C corrected, X cannot be obtained..."""
    observed_at: dt.datetime | None = None
    notes: tuple[_Text, ...] = ()


_Content = TypeVar("_Content", bound=_Sealed)


def dump(content: _Sealed) -> bytes:
    """The JSON to seal (UTF-8)."""
    return content.model_dump_json().encode()


def load(model: type[_Content], data: bytes | None) -> _Content:
    """Read an opened sealed column as ``model``; :class:`ContentError` if it does not fit."""
    if data is None:
        raise ContentError(f"{model.__name__}: nothing sealed")
    try:
        return model.model_validate_json(data)
    except ValidationError as error:
        # The message of a ValidationError quotes the input: keep only where it failed.
        places = sorted({".".join(str(p) for p in e["loc"]) for e in error.errors()})
        raise ContentError(f"{model.__name__}: unreadable at {', '.join(places)}") from None


__all__ = [
    "LOINC",
    "SCHEMA_VERSION",
    "Coding",
    "ContentError",
    "Delivery",
    "ObservationContent",
    "OrderDetails",
    "Prescriber",
    "ReportContent",
    "dump",
    "load",
]
