"""A lab result as received, independent of how it came (HL7 v2 over MLLP, or FHIR).

Both transports map what they received to an :class:`IncomingResult` and hand it to the
same store (``labvault.results.intake.ResultStore.ingest``), so deduplication, patient
matching, sealing and the queue behave the same whichever way the result arrived.

Every type here is frozen and its ``repr`` names no personal or health value (I5): a
result in a log line or a traceback says how many orders and observations it has, not what
they are. :func:`from_oru` maps a parsed ORU^R01; the FHIR side (``labvault.fhir``) builds
the same type from a bundle.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from pydantic import ValidationError

from labvault.results.content import Coding, ObservationContent, Prescriber
from labvault.results.hl7 import (
    CodedValue,
    Hl7Error,
    Hl7ErrorCode,
    Location,
    Observation,
    Order,
    OruMessage,
)

__all__ = [
    "INS_OIDS",
    "IncomingOrder",
    "IncomingResult",
    "MessageKey",
    "PatientClaim",
    "PatientIdentifierClaim",
    "coding",
    "from_json",
    "from_oru",
    "normalise_oid",
    "to_json",
]

NIR_OID: Final = "1.2.250.1.213.1.4.8"
"""INS built on the NIR (matricule INS)."""
TEST_INS_OID: Final = "1.2.250.1.213.1.4.10"
"""INS of test identities (synthetic data, test environments)."""
INS_OIDS: Final = frozenset({NIR_OID, TEST_INS_OID})
PDF_VALUE_TYPE: Final = "ED"
"""OBX value type of encapsulated data; a PDF report travels as ``^application^pdf^Base64^...``."""


def normalise_oid(authority: str) -> str:
    """``urn:oid:1.2.3`` and ``1.2.3`` name the same authority."""
    text = authority.strip()
    return text[len("urn:oid:") :] if text.lower().startswith("urn:oid:") else text


@dataclass(frozen=True, slots=True)
class MessageKey:
    """Who sent the message and its control id (MSH-3, MSH-4, MSH-10; for FHIR the client's
    names and the bundle's id): the identity of a message for deduplication."""

    application: str
    facility: str
    control_id: str

    def digest(self) -> bytes:
        """SHA-256 kept in ``result_messages.dedup_digest`` (the control id is not stored)."""
        text = f"{self.application}|{self.facility}|{self.control_id}"
        return hashlib.sha256(text.encode("utf-8")).digest()

    def __repr__(self) -> str:
        return "MessageKey(<redacted>)"


@dataclass(frozen=True, slots=True)
class PatientIdentifierClaim:
    """One identifier the sender gives for the patient: value, authority (an OID when it
    has one, ``urn:oid:`` accepted), type code (``INS``, ``PI``, ``NH``...)."""

    value: str
    authority: str
    type_code: str = ""

    @property
    def is_ins(self) -> bool:
        """An INS (NIR-based or test): the only identifier matched without doubt."""
        return normalise_oid(self.authority) in INS_OIDS

    @property
    def oid(self) -> str:
        return normalise_oid(self.authority)

    def __repr__(self) -> str:
        return f"PatientIdentifierClaim(authority={self.oid!r}, <redacted>)"


@dataclass(frozen=True, slots=True)
class PatientClaim:
    """Who the sender says the result belongs to: a claim to check, never trusted alone."""

    identifiers: tuple[PatientIdentifierClaim, ...] = ()
    birth_name: str = ""
    used_name: str = ""
    first_names: tuple[str, ...] = ()
    """The birth certificate's given names, in order; the first one is the first name."""
    birth_date: dt.date | None = None
    sex: str = ""
    """HL7 administrative sex (table 0001): ``M``, ``F``, ``U``..."""

    @property
    def first_name(self) -> str:
        return self.first_names[0] if self.first_names else ""

    @property
    def ins(self) -> tuple[PatientIdentifierClaim, ...]:
        return tuple(identifier for identifier in self.identifiers if identifier.is_ins)

    def __repr__(self) -> str:
        return f"PatientClaim(<{len(self.identifiers)} identifiers, redacted>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class IncomingOrder:
    """One order of the message (OBR group / ServiceRequest + DiagnosticReport)."""

    placer_order_number: str
    filler_order_number: str
    exams: tuple[Coding, ...]
    """The requested exams; the first names the report (its title)."""
    collected_at: dt.datetime | None = None
    prescriber: Prescriber = field(default_factory=Prescriber)
    lis_status: str = "F"
    """The laboratory system's result status: ``P`` preliminary, ``F`` final, ``C``
    corrected (OBR-25; DiagnosticReport.status mapped to these)."""
    observations: tuple[ObservationContent, ...] = ()
    notes: tuple[str, ...] = ()
    pdf: bytes | None = None
    """The rendered report as sent (checked to be a PDF by the store)."""

    @property
    def order_number(self) -> str:
        """The number a correction repeats: the filler's (the lab's), else the placer's."""
        return self.filler_order_number or self.placer_order_number

    def __repr__(self) -> str:
        return (
            f"IncomingOrder(<{len(self.exams)} exams, {len(self.observations)} observations,"
            f" pdf={self.pdf is not None}, redacted>)"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class IncomingResult:
    """A result message as received: the sending system, the message key, the patient
    claim and the orders."""

    client_id: uuid.UUID
    key: MessageKey
    patient: PatientClaim
    orders: tuple[IncomingOrder, ...]
    received_at: dt.datetime | None = None

    def __repr__(self) -> str:
        observations = sum(len(order.observations) for order in self.orders)
        return (
            f"IncomingResult(client_id={self.client_id}, <{len(self.orders)} orders,"
            f" {observations} observations, redacted>)"
        )

    __str__ = __repr__


# --- From HL7 v2 ----------------------------------------------------------------------


def _system(system: str) -> str:
    return "http://loinc.org" if system.upper() in {"LN", "LOINC"} else system


def coding(value: CodedValue) -> Coding:
    """An HL7 coded element as a :class:`Coding` (``LN`` is LOINC), its alternate identifier
    (CWE 4-6) kept as an alternate coding."""
    alternates: tuple[Coding, ...] = ()
    if value.alternate_code:
        alternates = (
            Coding(
                system=_system(value.alternate_system),
                code=value.alternate_code,
                display=value.alternate_text,
            ),
        )
    return Coding(
        system=_system(value.system), code=value.code, display=value.text, alternates=alternates
    )


def _observation(observation: Observation, position: int) -> ObservationContent:
    number = observation.value if not isinstance(observation.value, str) else None
    try:
        return _observation_content(observation, number)
    except ValidationError:
        # Longer than what is stored (a code, a unit, a flag): refused at its place.
        raise Hl7Error(
            Hl7ErrorCode.DATA_TYPE, Location("OBX", position), "values within the stored limits"
        ) from None


def _observation_content(observation: Observation, number: Decimal | None) -> ObservationContent:
    return ObservationContent(
        code=coding(observation.code),
        value_type=observation.value_type,
        number=number,
        text=observation.value if isinstance(observation.value, str) else "",
        unit=observation.units,
        reference_range=observation.reference_range,
        abnormal_flags=observation.abnormal_flags,
        status=observation.status[:1] or "F",
        observed_at=observation.observed_at,
        notes=observation.notes,
    )


def _order(order: Order, position: int, first_obx: int) -> IncomingOrder:
    observations: list[ObservationContent] = []
    pdf: bytes | None = None
    for offset, observation in enumerate(order.observations):
        if observation.document is not None:
            pdf = observation.document  # the last one wins: a report has one rendering
            continue
        observations.append(_observation(observation, first_obx + offset))
    try:
        exam = coding(order.service)
        prescriber = Prescriber(identifier=order.ordering_provider_id)
    except ValidationError:
        raise Hl7Error(
            Hl7ErrorCode.DATA_TYPE, Location("OBR", position), "values within the stored limits"
        ) from None
    return IncomingOrder(
        placer_order_number=order.placer_order_number,
        filler_order_number=order.filler_order_number,
        exams=(exam,),
        collected_at=order.collected_at,
        prescriber=prescriber,
        lis_status=order.result_status[:1] or "F",
        observations=tuple(observations),
        notes=order.notes,
        pdf=pdf,
    )


def _first_observations(orders: tuple[Order, ...]) -> list[int]:
    """The OBX occurrence number of each order's first observation (for error locations)."""
    firsts, seen = [], 1
    for order in orders:
        firsts.append(seen)
        seen += len(order.observations)
    return firsts


def from_oru(message: OruMessage, client_id: uuid.UUID) -> IncomingResult:
    """Map a parsed ORU^R01 to the transport-neutral result.

    Raises :class:`~labvault.results.hl7.Hl7Error` (code 102, at the OBR or OBX) for a value
    longer than what the sealed content keeps; never quotes it."""
    header, patient = message.header, message.patient
    first_names = patient.given_names or (
        (patient.first_given_name,) if patient.first_given_name else ()
    )
    if patient.first_given_name and first_names[0] != patient.first_given_name:
        # PID-5.2 is the first given name of the INS profile; keep it first.
        first_names = (patient.first_given_name, *first_names)
    return IncomingResult(
        client_id=client_id,
        key=MessageKey(header.sending_application, header.sending_facility, header.control_id),
        patient=PatientClaim(
            identifiers=tuple(
                PatientIdentifierClaim(i.value, i.authority, i.type_code)
                for i in patient.identifiers
            ),
            birth_name=patient.birth_name,
            used_name=patient.used_name,
            first_names=first_names,
            birth_date=patient.birth_date,
            sex=patient.sex,
        ),
        orders=tuple(
            _order(order, position, first_obx)
            for position, (order, first_obx) in enumerate(
                zip(message.orders, _first_observations(message.orders), strict=True), start=1
            )
        ),
        received_at=None,
    )


# --- Sealed form (a queued message waits as this JSON, under its own data key) ----------


def to_json(result: IncomingResult) -> bytes:
    """The result as JSON, for sealing while it waits in the matching queue."""
    claim = result.patient
    document = {
        "version": 1,
        "client_id": str(result.client_id),
        "key": [result.key.application, result.key.facility, result.key.control_id],
        "patient": {
            "identifiers": [[i.value, i.authority, i.type_code] for i in claim.identifiers],
            "birth_name": claim.birth_name,
            "used_name": claim.used_name,
            "first_names": list(claim.first_names),
            "birth_date": claim.birth_date.isoformat() if claim.birth_date else None,
            "sex": claim.sex,
        },
        "orders": [
            {
                "placer": order.placer_order_number,
                "filler": order.filler_order_number,
                "exams": [exam.model_dump(mode="json") for exam in order.exams],
                "collected_at": order.collected_at.isoformat() if order.collected_at else None,
                "prescriber": order.prescriber.model_dump(mode="json"),
                "lis_status": order.lis_status,
                "observations": [o.model_dump(mode="json") for o in order.observations],
                "notes": list(order.notes),
                "pdf": base64.b64encode(order.pdf).decode() if order.pdf is not None else None,
            }
            for order in result.orders
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def from_json(data: bytes) -> IncomingResult:
    """Read :func:`to_json`'s output back; ``ValueError`` (quoting nothing) if it does not."""
    try:
        document = json.loads(data)
        claim = document["patient"]
        return IncomingResult(
            client_id=uuid.UUID(document["client_id"]),
            key=MessageKey(*document["key"]),
            patient=PatientClaim(
                identifiers=tuple(PatientIdentifierClaim(*i) for i in claim["identifiers"]),
                birth_name=claim["birth_name"],
                used_name=claim["used_name"],
                first_names=tuple(claim["first_names"]),
                birth_date=(
                    dt.date.fromisoformat(claim["birth_date"]) if claim["birth_date"] else None
                ),
                sex=claim["sex"],
            ),
            orders=tuple(
                IncomingOrder(
                    placer_order_number=order["placer"],
                    filler_order_number=order["filler"],
                    exams=tuple(Coding.model_validate(exam) for exam in order["exams"]),
                    collected_at=(
                        dt.datetime.fromisoformat(order["collected_at"])
                        if order["collected_at"]
                        else None
                    ),
                    prescriber=Prescriber.model_validate(order["prescriber"]),
                    lis_status=order["lis_status"],
                    observations=tuple(
                        ObservationContent.model_validate(o) for o in order["observations"]
                    ),
                    notes=tuple(order["notes"]),
                    pdf=base64.b64decode(order["pdf"]) if order["pdf"] is not None else None,
                )
                for order in document["orders"]
            ),
        )
    except (ValueError, KeyError, TypeError, IndexError):
        raise ValueError("a queued result message that does not read back") from None
