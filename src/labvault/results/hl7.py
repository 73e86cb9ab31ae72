"""HL7 v2 ORU^R01 parsing, ACK/NACK building and MLLP framing.

python-hl7 splits, unescapes and indexes the message; this module checks the ORU^R01
structure on top of it and maps it to frozen dataclasses. Every failure is an ``Hl7Error``
carrying an HL7 table 0357 code and a location such as ``OBX[2]-5``; its text never
contains a value from the message (invariant I5), only where the problem is and what was
expected, so it can go into logs and into the ERR segment of a NACK.

Accepted versions: 2.3, 2.3.1, 2.4, 2.5 and 2.5.1 (the ORU^R01 segments read here did not
change between them). One patient per message (a second PID is a sequence error).

Encoding: MLLP carries bytes. ``decode_payload`` follows MSH-18: ``UNICODE UTF-8`` gives
UTF-8, ``8859/1`` (or ``8859/15``) gives ISO-8859-1/15; when MSH-18 is empty the payload is
read as UTF-8 and, if it is not valid UTF-8, as ISO-8859-1 (what French laboratory systems
send in practice). ACKs are built as text; ``frame`` encodes them in UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

import hl7  # type: ignore[import-untyped]
from hl7.mllp.streams import (  # type: ignore[import-untyped]
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
)

# python-hl7 logs the raw field (names, results) when an escape sequence is malformed; its
# loggers are named after its source files. Silence them: I5, no personal data in logs.
for _module in (hl7.util, hl7.containers, hl7.parser):
    logging.getLogger(_module.__file__).disabled = True

MAX_MESSAGE_BYTES: Final = 1_048_576
MAX_SEGMENTS: Final = 5_000
MAX_OBSERVATIONS: Final = 2_000
SUPPORTED_VERSIONS: Final = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1"})
VALUE_TYPES: Final = frozenset({"NM", "ST", "TX", "SN", "CWE", "CE", "FT", "ED"})
MAX_DOCUMENT_BYTES: Final = 700_000
"""Largest encapsulated document (OBX value type ED, a PDF report) once decoded."""
_PDF_MAGIC: Final = b"%PDF-"
_SEXES: Final = frozenset({"M", "F", "U", "O", "A", "N"})
_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_SEGMENT_ID: Final = re.compile(r"[A-Z][A-Z0-9]{2}")
_BLANK_LINES: Final = re.compile(r"\r{2,}")
# Segments of the ORU^R01 structure that are allowed but not read here.
_IGNORED: Final = frozenset(
    {"SFT", "PD1", "NK1", "PV1", "PV2", "TQ1", "TQ2", "CTD", "FT1", "CTI", "SPM", "DSC"}
)


class Hl7ErrorCode(enum.IntEnum):
    """HL7 table 0357 (message error condition codes) used by this parser."""

    SEGMENT_SEQUENCE = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE = 102
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_VERSION = 203
    UNKNOWN_KEY = 204
    """Used for a sender (MSH-3/MSH-4) that is not registered or is disabled."""
    INTERNAL = 207

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS: Final = {
    Hl7ErrorCode.SEGMENT_SEQUENCE: "Segment sequence error",
    Hl7ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    Hl7ErrorCode.DATA_TYPE: "Data type error",
    Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    Hl7ErrorCode.UNSUPPORTED_VERSION: "Unsupported version id",
    Hl7ErrorCode.UNKNOWN_KEY: "Unknown key identifier",
    Hl7ErrorCode.INTERNAL: "Application internal error",
}


@dataclass(frozen=True, slots=True)
class Location:
    """Where in the message: segment id, its occurrence (1-based) and field (0: whole)."""

    segment: str
    occurrence: int = 1
    field: int = 0

    def __str__(self) -> str:
        text = self.segment if self.occurrence == 1 else f"{self.segment}[{self.occurrence}]"
        return f"{text}-{self.field}" if self.field else text


class Hl7Error(ValueError):
    """A message that cannot be accepted; safe to log (no value from the message)."""

    def __init__(self, code: Hl7ErrorCode, location: Location | None, expected: str) -> None:
        self.code = code
        self.location = location
        self.expected = expected
        where = f" at {location}" if location is not None else ""
        super().__init__(f"HL7 error {int(code)} ({code.label}){where}: expected {expected}")


class MllpError(ValueError):
    """The byte stream is not valid MLLP framing; the connection should be closed."""


# --- Parsed message -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    control_id: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_time: dt.datetime
    processing_id: str
    version: str


@dataclass(frozen=True, slots=True)
class PatientIdentifier:
    """PID-3 repetition: value, assigning authority (OID if given, else namespace), type."""

    value: str
    authority: str
    type_code: str

    def as_tuple(self) -> tuple[str, str, str]:
        return (self.value, self.authority, self.type_code)


@dataclass(frozen=True, slots=True)
class Patient:
    identifiers: tuple[PatientIdentifier, ...]
    birth_name: str
    used_name: str
    first_given_name: str
    given_names: tuple[str, ...]
    birth_date: dt.date | None
    sex: str

    def __repr__(self) -> str:  # personal data: never in a log by accident
        return f"Patient(<{len(self.identifiers)} identifiers, redacted>)"


@dataclass(frozen=True, slots=True)
class CodedValue:
    code: str
    text: str
    system: str
    alternate_code: str = ""
    """CWE components 4-6: the same concept in another system (often LOINC after a local
    code); a sensitive exam must be recognised by either."""
    alternate_text: str = ""
    alternate_system: str = ""


@dataclass(frozen=True, slots=True)
class Observation:
    set_id: str
    value_type: str
    code: CodedValue
    value: Decimal | str
    units: str
    reference_range: str
    abnormal_flags: tuple[str, ...]
    status: str
    observed_at: dt.datetime | None
    notes: tuple[str, ...]
    document: bytes | None = None
    """The decoded PDF of an ED observation (``^application^pdf^Base64^...``)."""

    def __repr__(self) -> str:  # health data: never in a log by accident
        return f"Observation(set_id={self.set_id!r}, code={self.code.code!r}, <redacted>)"


@dataclass(frozen=True, slots=True)
class Order:
    placer_order_number: str
    filler_order_number: str
    service: CodedValue
    collected_at: dt.datetime | None
    result_status: str
    ordering_provider_id: str
    observations: tuple[Observation, ...]
    notes: tuple[str, ...]

    def __repr__(self) -> str:  # notes and results are health data
        return f"Order(service={self.service.code!r}, <{len(self.observations)} OBX, redacted>)"


@dataclass(frozen=True, slots=True)
class OruMessage:
    header: Header
    patient: Patient
    orders: tuple[Order, ...]


# --- Field access ---------------------------------------------------------------------


class _Segment:
    """One python-hl7 segment with its location, read defensively (absent means empty)."""

    def __init__(self, raw: Any, segment_id: str, occurrence: int) -> None:
        self._raw = raw
        self.id = segment_id
        self.occurrence = occurrence

    def at(self, field: int = 0) -> Location:
        return Location(self.id, self.occurrence, field)

    def repetitions(self, field: int) -> int:
        if field >= len(self._raw):
            return 0
        value = self._raw[field]
        return len(value) if isinstance(value, list) else 1

    def get(self, field: int, component: int = 1, repetition: int = 1, sub: int = 1) -> str:
        try:
            value = self._raw.extract_field(
                field_num=field,
                repeat_num=repetition,
                component_num=component,
                subcomponent_num=sub,
            )
        except IndexError:
            return ""
        return value.strip() if isinstance(value, str) else ""

    def required(self, field: int, component: int = 1, what: str = "a value") -> str:
        value = self.get(field, component)
        if not value:
            raise Hl7Error(Hl7ErrorCode.REQUIRED_FIELD_MISSING, self.at(field), what)
        return value

    def components(self, field: int, repetition: int = 1, count: int = 9) -> list[str]:
        return [self.get(field, c, repetition) for c in range(1, count + 1)]

    def coded(self, field: int) -> CodedValue:
        return CodedValue(
            self.get(field, 1),
            self.get(field, 2),
            self.get(field, 3),
            self.get(field, 4),
            self.get(field, 5),
            self.get(field, 6),
        )

    def time(self, field: int, *, required: bool = False) -> dt.datetime | None:
        value = self.get(field, 1)
        if not value:
            if required:
                raise Hl7Error(Hl7ErrorCode.REQUIRED_FIELD_MISSING, self.at(field), "a date/time")
            return None
        try:
            parsed = hl7.parse_datetime(value)
        except (ValueError, OverflowError, IndexError):
            parsed = None
        if not isinstance(parsed, dt.datetime):
            raise Hl7Error(
                Hl7ErrorCode.DATA_TYPE, self.at(field), "a date/time YYYYMMDD[HHMM[SS]][+ZZZZ]"
            )
        return parsed


# --- Parsing --------------------------------------------------------------------------


def _normalise(text: str) -> str:
    if not isinstance(text, str):
        raise Hl7Error(Hl7ErrorCode.INTERNAL, None, "the message as text")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise Hl7Error(
            Hl7ErrorCode.INTERNAL, None, f"a message of at most {MAX_MESSAGE_BYTES} bytes"
        )
    # Segments end with CR; LF, CRLF and blank lines are common in files and tolerated.
    text = _BLANK_LINES.sub("\r", text.replace("\n", "\r")).strip()
    msh = Location("MSH")
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7Error(Hl7ErrorCode.SEGMENT_SEQUENCE, msh, "the message to start with MSH")
    separator, encoding = text[3], text[4:8]
    delimiters = separator + encoding
    if (
        len(set(delimiters)) != 5
        or any(ch.isalnum() or ch.isspace() for ch in delimiters)
        or text[8:9] not in (separator, "")
    ):
        raise Hl7Error(
            Hl7ErrorCode.DATA_TYPE, Location("MSH", 1, 2), "the 4 distinct encoding characters"
        )
    if text.count("\r") + 1 > MAX_SEGMENTS:
        raise Hl7Error(Hl7ErrorCode.INTERNAL, None, f"at most {MAX_SEGMENTS} segments")
    return text


def _header(msh: _Segment) -> Header:
    if (msh.get(9, 1), msh.get(9, 2)) != ("ORU", "R01"):
        raise Hl7Error(Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE, msh.at(9), "ORU^R01")
    version = msh.get(12, 1)
    if version not in SUPPORTED_VERSIONS:
        raise Hl7Error(
            Hl7ErrorCode.UNSUPPORTED_VERSION,
            msh.at(12),
            "one of " + ", ".join(sorted(SUPPORTED_VERSIONS)),
        )
    time = msh.time(7, required=True)
    assert time is not None
    return Header(
        control_id=msh.required(10, what="a message control id"),
        sending_application=msh.get(3),
        sending_facility=msh.get(4),
        receiving_application=msh.get(5),
        receiving_facility=msh.get(6),
        message_time=time,
        processing_id=msh.required(11, what="a processing id (P, T or D)"),
        version=version,
    )


def _patient(pid: _Segment) -> Patient:
    identifiers: list[PatientIdentifier] = []
    for repetition in range(1, pid.repetitions(3) + 1):
        value = pid.get(3, 1, repetition)
        if not value:
            continue
        oid = pid.get(3, 4, repetition, sub=2)
        authority = oid or pid.get(3, 4, repetition, sub=1)
        identifiers.append(PatientIdentifier(value, authority, pid.get(3, 5, repetition)))
    if not identifiers:
        raise Hl7Error(
            Hl7ErrorCode.REQUIRED_FIELD_MISSING, pid.at(3), "at least one patient identifier"
        )
    names = [pid.components(5, r) for r in range(1, pid.repetitions(5) + 1)]
    names = [name for name in names if name[0]]
    if not names:
        raise Hl7Error(Hl7ErrorCode.REQUIRED_FIELD_MISSING, pid.at(5), "a patient name")
    legal = next((n for n in names if n[6] == "L"), names[0])
    used = next((n for n in names if n[6] == "D"), None)
    # French INS profile: PID-5.2 is the first given name, PID-5.3 the space-separated list
    # of the birth certificate's given names.
    given = tuple(legal[2].split()) or ((legal[1],) if legal[1] else ())
    birth = pid.time(7)
    sex = pid.get(8)
    if sex and sex not in _SEXES:
        raise Hl7Error(Hl7ErrorCode.DATA_TYPE, pid.at(8), "a sex code among M, F, U, O, A, N")
    return Patient(
        identifiers=tuple(identifiers),
        birth_name=legal[0],
        used_name=used[0] if used else "",
        first_given_name=legal[1],
        given_names=given,
        birth_date=birth.date() if birth else None,
        sex=sex,
    )


def _observation(obx: _Segment, notes: tuple[str, ...]) -> Observation:
    value_type = obx.get(2)
    has_value = obx.repetitions(5) > 0 and any(obx.components(5))
    if has_value and not value_type:
        raise Hl7Error(Hl7ErrorCode.REQUIRED_FIELD_MISSING, obx.at(2), "the value type")
    if value_type and value_type not in VALUE_TYPES:
        raise Hl7Error(
            Hl7ErrorCode.DATA_TYPE,
            obx.at(2),
            "a value type among " + ", ".join(sorted(VALUE_TYPES)),
        )
    code = obx.coded(3)
    if not code.code:
        raise Hl7Error(Hl7ErrorCode.REQUIRED_FIELD_MISSING, obx.at(3), "an observation code")
    value: Decimal | str
    document: bytes | None = None
    if value_type == "ED" and has_value:
        document = _document(obx)
        value = ""
    elif value_type == "NM" and has_value:
        text = obx.get(5)
        if not _NUMBER.fullmatch(text):
            raise Hl7Error(Hl7ErrorCode.DATA_TYPE, obx.at(5), "a number (NM)")
        value = Decimal(text)
    elif value_type in {"ST", "TX", "FT"}:
        value = "\n".join(obx.get(5, 1, r) for r in range(1, obx.repetitions(5) + 1))
    else:
        value = "^".join(obx.components(5)).rstrip("^")
    return Observation(
        set_id=obx.get(1),
        value_type=value_type,
        code=code,
        value=value,
        units=obx.get(6, 1),
        reference_range=obx.get(7),
        abnormal_flags=tuple(
            flag for r in range(1, obx.repetitions(8) + 1) if (flag := obx.get(8, 1, r))
        ),
        status=obx.required(11, what="an observation result status"),
        observed_at=obx.time(14),
        notes=notes,
        document=document,
    )


def _document(obx: _Segment) -> bytes:
    """OBX-5 of type ED: only a Base64 PDF is accepted, and checked to be one."""
    _source, kind, subtype, encoding, data = obx.components(5, count=5)
    if (kind.lower(), subtype.lower(), encoding.lower()) != ("application", "pdf", "base64"):
        raise Hl7Error(Hl7ErrorCode.DATA_TYPE, obx.at(5), "^application^pdf^Base64^<data> (ED)")
    if len(data) > MAX_DOCUMENT_BYTES * 4 // 3 + 4:
        raise Hl7Error(
            Hl7ErrorCode.DATA_TYPE, obx.at(5), f"a document of at most {MAX_DOCUMENT_BYTES} bytes"
        )
    try:
        document = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Hl7Error(Hl7ErrorCode.DATA_TYPE, obx.at(5), "Base64 data") from None
    if len(document) > MAX_DOCUMENT_BYTES:
        raise Hl7Error(
            Hl7ErrorCode.DATA_TYPE, obx.at(5), f"a document of at most {MAX_DOCUMENT_BYTES} bytes"
        )
    if not document.startswith(_PDF_MAGIC):
        raise Hl7Error(Hl7ErrorCode.DATA_TYPE, obx.at(5), "a PDF document (%PDF- header)")
    return document


@dataclass
class _OrderDraft:
    orc: _Segment | None
    obr: _Segment
    notes: list[str]
    observations: list[tuple[_Segment, list[str]]]

    def build(self) -> Order:
        obr, orc = self.obr, self.orc
        service = obr.coded(4)
        if not service.code:
            raise Hl7Error(Hl7ErrorCode.REQUIRED_FIELD_MISSING, obr.at(4), "a service code")
        fallback: Callable[[int], str] = (lambda f: orc.get(f)) if orc else (lambda f: "")
        return Order(
            placer_order_number=obr.get(2) or fallback(2),
            filler_order_number=obr.get(3) or fallback(3),
            service=service,
            collected_at=obr.time(7),
            result_status=obr.get(25),
            ordering_provider_id=obr.get(16) or fallback(12),
            observations=tuple(_observation(s, tuple(n)) for s, n in self.observations),
            notes=tuple(self.notes),
        )


def _note(nte: _Segment) -> str:
    return "\n".join(nte.get(3, 1, r) for r in range(1, nte.repetitions(3) + 1))


def _segments(message: Any) -> list[_Segment]:
    counts: dict[str, int] = {}
    segments: list[_Segment] = []
    for raw in message:
        segment_id = str(raw[0]) if len(raw) else ""
        counts[segment_id] = counts.get(segment_id, 0) + 1
        if not _SEGMENT_ID.fullmatch(segment_id):
            raise Hl7Error(
                Hl7ErrorCode.SEGMENT_SEQUENCE,
                Location("segment", len(segments) + 1),
                "a 3-character segment id",
            )
        segments.append(_Segment(raw, segment_id, counts[segment_id]))
    return segments


def _structure(segments: list[_Segment]) -> tuple[_Segment, _Segment, list[_OrderDraft]]:
    """Walk the ORU^R01 structure: MSH, PID, then [ORC] OBR {NTE} {OBX {NTE}} groups."""
    msh, *rest = segments
    pid: _Segment | None = None
    orders: list[_OrderDraft] = []
    pending_orc: _Segment | None = None
    observations = 0
    for segment in rest:
        kind = segment.id
        if kind == "PID":
            if pid is not None or orders or pending_orc:
                raise Hl7Error(Hl7ErrorCode.SEGMENT_SEQUENCE, segment.at(), "one PID, first")
            pid = segment
        elif kind in {"ORC", "OBR", "OBX"} and pid is None:
            raise Hl7Error(
                Hl7ErrorCode.SEGMENT_SEQUENCE, Location("PID"), "a PID segment before orders"
            )
        elif kind == "ORC":
            if pending_orc is not None:
                raise Hl7Error(Hl7ErrorCode.SEGMENT_SEQUENCE, segment.at(), "OBR after ORC")
            pending_orc = segment
        elif kind == "OBR":
            orders.append(_OrderDraft(pending_orc, segment, [], []))
            pending_orc = None
        elif kind == "OBX":
            if not orders or pending_orc is not None:
                raise Hl7Error(Hl7ErrorCode.SEGMENT_SEQUENCE, segment.at(), "OBR before OBX")
            observations += 1
            if observations > MAX_OBSERVATIONS:
                raise Hl7Error(
                    Hl7ErrorCode.INTERNAL, segment.at(), f"at most {MAX_OBSERVATIONS} OBX"
                )
            orders[-1].observations.append((segment, []))
        elif kind == "NTE":
            if pending_orc is not None:
                raise Hl7Error(Hl7ErrorCode.SEGMENT_SEQUENCE, segment.at(), "OBR after ORC")
            if orders and orders[-1].observations:
                orders[-1].observations[-1][1].append(_note(segment))
            elif orders:
                orders[-1].notes.append(_note(segment))
            # NTE before any order: patient notes, not read
        elif kind in _IGNORED or kind.startswith("Z"):
            continue
        else:
            raise Hl7Error(
                Hl7ErrorCode.SEGMENT_SEQUENCE, segment.at(), "a segment of the ORU^R01 structure"
            )
    if pid is None:
        raise Hl7Error(Hl7ErrorCode.SEGMENT_SEQUENCE, Location("PID"), "a PID segment")
    if not orders or pending_orc is not None:
        raise Hl7Error(Hl7ErrorCode.SEGMENT_SEQUENCE, Location("OBR"), "an OBR segment")
    return msh, pid, orders


def parse_oru(text: str) -> OruMessage:
    """Parse an ORU^R01 message; raise ``Hl7Error`` (and nothing else) when it is invalid."""
    normalised = _normalise(text)
    try:
        segments = _segments(hl7.parse(normalised))
        header = _header(segments[0])  # type and version first: an ADT is not "bad ORU"
        _msh, pid, drafts = _structure(segments)
        return OruMessage(header, _patient(pid), tuple(d.build() for d in drafts))
    except Hl7Error:
        raise
    except Exception:  # the library choked on something the checks above let by
        raise Hl7Error(Hl7ErrorCode.INTERNAL, None, "a well-formed HL7 v2 message") from None


def read_control_id(text: str) -> str | None:
    """Best effort MSH-10 of a message that may not parse, to address the NACK to it."""
    try:
        normalised = _normalise(text)
        msh = _Segment(hl7.parse(normalised.split("\r", 1)[0])[0], "MSH", 1)
        return msh.get(10) or None
    except Exception:
        return None


# --- Acknowledgements -----------------------------------------------------------------

AckCode = Literal["AA", "AE", "AR"]
_ESCAPER: Final = hl7.parse("MSH|^~\\&|")


def _escape(value: str) -> str:
    return str(_ESCAPER.escape(value))


def ack(
    message_control_id: str,
    *,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    code: AckCode,
    error: Hl7Error | None = None,
    ack_control_id: str | None = None,
    version: str = "2.5",
    now: dt.datetime | None = None,
) -> str:
    """An ACK^R01 (MSH, MSA, and ERR when ``error`` is given) as text with \\r separators.

    ``sending_*`` are labvault's own names; ``receiving_*`` are the sender of the message
    being acknowledged. An empty ``message_control_id`` builds a NACK for input whose
    control id could not be read (see ``nack``).
    """
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S")
    control = ack_control_id or hl7.generate_message_control_id()
    fields = [
        sending_application,
        sending_facility,
        receiving_application,
        receiving_facility,
    ]
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            *(_escape(f) for f in fields),
            stamp,
            "",
            "ACK^R01^ACK",
            _escape(control),
            "P",
            version,
        ]
    )
    segments = [msh, f"MSA|{code}|{_escape(message_control_id)}"]
    if error is not None:
        loc = error.location
        readable = loc is not None and _SEGMENT_ID.fullmatch(loc.segment)
        where = f"{loc.segment}^{loc.occurrence}^{loc.field or ''}" if loc and readable else ""
        label = _escape(error.code.label)
        detail = _escape(str(error))
        segments.append(f"ERR||{where}|{int(error.code)}^{label}^HL70357|E||||{detail}")
    return "\r".join(segments) + "\r"


def nack(
    error: Hl7Error,
    *,
    message_control_id: str | None = None,
    sending_application: str,
    sending_facility: str,
    receiving_application: str = "",
    receiving_facility: str = "",
    now: dt.datetime | None = None,
) -> str:
    """An AR acknowledgement for a message that was rejected, possibly unreadable."""
    return ack(
        message_control_id or "",
        sending_application=sending_application,
        sending_facility=sending_facility,
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
        code="AR",
        error=error,
        now=now,
    )


# --- MLLP -----------------------------------------------------------------------------

_START: Final[bytes] = START_BLOCK
_END: Final[bytes] = END_BLOCK + CARRIAGE_RETURN
_BETWEEN_FRAMES: Final = frozenset(b"\r\n")


def frame(text: str) -> bytes:
    """Wrap one message in an MLLP block (0x0B ... 0x1C 0x0D), encoded in UTF-8."""
    return _START + text.encode("utf-8") + _END


class MllpDecoder:
    """Incremental MLLP deframer: feed bytes as they arrive, get complete payloads.

    The buffer is bounded by ``max_message_bytes``; junk outside a block, a start byte
    inside a block, or an oversized block raises ``MllpError`` (close the connection).
    Line breaks between blocks are tolerated.
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._max = max_message_bytes
        self._buffer = bytearray()
        self._in_block = False
        self._scanned = 0  # bytes of the buffer already searched for the end marker

    @property
    def idle(self) -> bool:
        """True when no block is partially received (a clean place to close)."""
        return not self._in_block

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the payloads of the blocks it completes, in order."""
        messages: list[bytes] = []
        pending = bytes(data)
        while pending:
            if not self._in_block:
                start = pending.find(_START)
                outside = pending if start < 0 else pending[:start]
                if outside.strip(b"\r\n"):
                    raise MllpError("data outside an MLLP block (expected 0x0B)")
                if start < 0:
                    break
                self._in_block = True
                self._scanned = 0
                pending = pending[start + 1 :]
                continue
            self._buffer += pending
            pending = b""
            end = self._buffer.find(_END, max(0, self._scanned - 1))
            body_end = len(self._buffer) if end < 0 else end
            if self._buffer.find(_START, self._scanned, body_end) >= 0:
                raise MllpError("MLLP start byte inside a block")
            # Without the end marker yet, the last byte may be its 0x1C half.
            if (body_end if end >= 0 else body_end - 1) > self._max:
                raise MllpError(f"MLLP block larger than {self._max} bytes")
            if end < 0:
                self._scanned = len(self._buffer)
                continue
            messages.append(bytes(self._buffer[:end]))
            pending = bytes(self._buffer[end + len(_END) :])
            self._buffer.clear()
            self._in_block = False
        return messages


_CHARSETS: Final = {
    "UNICODE UTF-8": "utf-8",
    "8859/1": "iso-8859-1",
    "8859/15": "iso-8859-15",
    "ASCII": "ascii",
}


def decode_payload(payload: bytes) -> str:
    """Decode an MLLP payload following MSH-18 (see the module docstring)."""
    first = payload.split(b"\r", 1)[0]
    charset = ""
    if first[:3] == b"MSH" and len(first) > 3:
        fields = first.split(first[3:4])
        if len(fields) > 17:
            charset = fields[17].split(b"~", 1)[0].decode("ascii", "replace").strip()
    encoding = _CHARSETS.get(charset)
    if charset and encoding is None:
        raise Hl7Error(
            Hl7ErrorCode.DATA_TYPE,
            Location("MSH", 1, 18),
            "a character set among " + ", ".join(_CHARSETS),
        )
    try:
        return payload.decode(encoding or "utf-8")
    except UnicodeDecodeError:
        if encoding is not None:
            raise Hl7Error(
                Hl7ErrorCode.DATA_TYPE, Location("MSH", 1, 18), "text in the declared charset"
            ) from None
        return payload.decode("iso-8859-1")
