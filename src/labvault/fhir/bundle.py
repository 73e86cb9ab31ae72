"""Results pushed as FHIR: a transaction (or batch) Bundle mapped to an
:class:`~labvault.results.incoming.IncomingResult`, for the same store as HL7 v2.

What a laboratory system sends (``POST /fhir/R4``, ``application/fhir+json``):

- ``Bundle.identifier.value`` (else ``Bundle.id``): the message's identity, for
  deduplication (a bundle sent twice is stored once);
- one ``Patient`` entry (``request.method`` POST with ``ifNoneExist``, or PUT
  ``Patient?identifier=...``): the claim of who the result is about, its INS
  (``urn:oid:1.2.250.1.213.1.4.8`` or the test OID) and identity traits. It is matched,
  never created nor updated: a result whose patient cannot be matched with certainty waits
  for a person, as with HL7 v2;
- one ``DiagnosticReport`` per order (``request.method`` POST): ``identifier`` (the
  laboratory's order number), ``code`` (the exam), ``status`` (preliminary, final,
  corrected/amended), ``effectiveDateTime`` (sampling), ``result`` (references to the
  Observation entries by ``fullUrl``), ``presentedForm`` (the PDF, base64), and optionally
  ``basedOn[].identifier`` (the placer's order number);
- its ``Observation`` entries (``request.method`` POST): ``code``, ``status``,
  ``valueQuantity`` or ``valueString`` (or ``valueCodeableConcept``), ``referenceRange``,
  ``interpretation``, ``effectiveDateTime``, ``note``.

Every resource is validated with fhir.resources (R4B) first; any problem refuses the whole
bundle with an error that names the entry and the element, never a value (I5, I6).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from labvault.results.content import Coding, ObservationContent, Prescriber
from labvault.results.incoming import (
    INS_OIDS,
    IncomingOrder,
    IncomingResult,
    MessageKey,
    PatientClaim,
    PatientIdentifierClaim,
    normalise_oid,
)

__all__ = ["MAX_ENTRIES", "BundleError", "incoming_from_bundle"]

MAX_ENTRIES: Final = 500
ALLOWED_TYPES: Final = frozenset({"Patient", "DiagnosticReport", "Observation"})
_REPORT_STATUS: Final = {
    "registered": "P",
    "partial": "P",
    "preliminary": "P",
    "final": "F",
    "corrected": "C",
    "amended": "C",
    "appended": "C",
}
_OBSERVATION_STATUS: Final = {
    "registered": "I",
    "preliminary": "P",
    "final": "F",
    "amended": "C",
    "corrected": "C",
    "cancelled": "X",
    "entered-in-error": "W",
}
_GENDER: Final = {"male": "M", "female": "F", "other": "A", "unknown": "U"}
LOINC_URIS: Final = frozenset({"http://loinc.org", "urn:oid:2.16.840.1.113883.6.1"})
MAX_CODINGS: Final = 8
"""Codings kept per CodeableConcept (a local code, LOINC, a few more)."""
_ELEMENT: Final = re.compile(r"[a-z][A-Za-z]{0,40}(?:__ext)?|[A-Z][A-Za-z]{0,40}")


class BundleError(ValueError):
    """A bundle refused as a whole; the message names where, never a value."""

    def __init__(self, where: str, expected: str) -> None:
        super().__init__(f"{where}: expected {expected}")
        self.where = where
        self.expected = expected


def _validated(resource: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The resource as fhir.resources (R4B) reads it, written back as plain JSON: absent
    elements dropped, types as the specification says (so the mapping below meets no
    ``null`` or wrong type)."""
    kind = resource.get("resourceType")
    if not isinstance(kind, str) or kind not in ALLOWED_TYPES | {"Bundle"}:
        raise BundleError(
            f"{where}.resourceType", "Bundle, Patient, DiagnosticReport or Observation"
        )
    try:
        model = get_fhir_model_class(kind).model_validate(dict(resource))
        cleaned = json.loads(model.model_dump_json(exclude_none=True), parse_float=Decimal)
    except ValidationError as error:
        # The library's message quotes the input: keep the first place only.
        place = ""
        for part in error.errors()[0]["loc"]:
            if isinstance(part, int):
                place += f"[{part}]"
            else:  # an element name; a key the client made up is not repeated
                place += f".{part}" if _ELEMENT.fullmatch(str(part)) else ".?"
        raise BundleError(f"{where}{place}", "a valid FHIR R4 element") from None
    except Exception:
        # fhir.resources raises KeyError, TypeError... for some inputs (an empty
        # resourceType inside a Bundle): whatever it is, the input is refused, not a 500.
        raise BundleError(where, "a valid FHIR R4 resource") from None
    if not isinstance(cleaned, dict):
        raise BundleError(where, "a valid FHIR R4 resource")
    return cleaned


def _text(value: object, where: str, limit: int = 500) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise BundleError(where, f"a string of at most {limit} characters")
    return value


def _coding(concept: object, where: str) -> Coding:
    """A CodeableConcept: its first coding, the others kept as alternates (a sensitive exam
    must be recognised by its LOINC code wherever the sender put it; LOINC URIs kept as
    they are)."""
    if not isinstance(concept, Mapping):
        raise BundleError(where, "a CodeableConcept")
    codings = concept.get("coding") or []
    if not isinstance(codings, list):
        raise BundleError(f"{where}.coding", "a list of codings")
    if not codings or not isinstance(codings[0], Mapping) or not codings[0].get("code"):
        raise BundleError(f"{where}.coding[0].code", "a code")
    if len(codings) > MAX_CODINGS:
        raise BundleError(f"{where}.coding", f"at most {MAX_CODINGS} codings")
    alternates = []
    for index, other in enumerate(codings[1:], start=1):
        if not isinstance(other, Mapping):
            raise BundleError(f"{where}.coding[{index}]", "a Coding")
        if other.get("code"):
            alternates.append(_one_coding(other, f"{where}.coding[{index}]", ""))
    return _one_coding(codings[0], f"{where}.coding[0]", concept.get("text"), tuple(alternates))


def _one_coding(
    coding: Mapping[str, Any], where: str, text: object, alternates: tuple[Coding, ...] = ()
) -> Coding:
    system = _text(coding.get("system"), f"{where}.system")
    if system in LOINC_URIS:
        system = "http://loinc.org"
    return Coding(
        system=system,
        code=_text(coding.get("code"), f"{where}.code", 64),
        display=_text(coding.get("display") or text, f"{where}.display"),
        alternates=alternates,
    )


def _instant(value: object, where: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BundleError(where, "a dateTime")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BundleError(where, "a dateTime with its time zone") from None
    if parsed.tzinfo is None:
        raise BundleError(where, "a dateTime with its time zone")
    return parsed.astimezone(dt.UTC)


def _claim(patient: Mapping[str, Any], where: str) -> PatientClaim:
    identifiers = []
    for index, identifier in enumerate(patient.get("identifier") or []):
        system = _text(identifier.get("system"), f"{where}.identifier[{index}].system")
        value = _text(identifier.get("value"), f"{where}.identifier[{index}].value", 64)
        if system and value:
            type_code = "INS" if normalise_oid(system) in INS_OIDS else ""
            identifiers.append(PatientIdentifierClaim(value, system, type_code))
    names: list[Mapping[str, Any]] = patient.get("name") or []
    empty: Mapping[str, Any] = {}
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else empty)
    usual = next((n for n in names if n.get("use") == "usual"), empty)
    given = tuple(_text(g, f"{where}.name.given", 100) for g in official.get("given") or [])
    birth_date = None
    if patient.get("birthDate"):
        try:
            birth_date = dt.date.fromisoformat(str(patient["birthDate"]))
        except ValueError:
            raise BundleError(f"{where}.birthDate", "a full date (AAAA-MM-JJ)") from None
    return PatientClaim(
        identifiers=tuple(identifiers),
        birth_name=_text(official.get("family"), f"{where}.name.family", 100),
        used_name=_text(usual.get("family"), f"{where}.name.family", 100),
        first_names=given,
        birth_date=birth_date,
        sex=_GENDER.get(str(patient.get("gender") or ""), ""),
    )


def _range(observation: Mapping[str, Any], where: str) -> str:
    ranges = observation.get("referenceRange") or []
    if not ranges:
        return ""
    first = ranges[0]
    if first.get("text"):
        return _text(first["text"], f"{where}.referenceRange[0].text")
    low = (first.get("low") or {}).get("value")
    high = (first.get("high") or {}).get("value")
    if low is None and high is None:
        return ""
    return f"{'' if low is None else low}-{'' if high is None else high}"


def _observation(observation: Mapping[str, Any], where: str) -> ObservationContent:
    number: Decimal | None = None
    text = ""
    unit = ""
    value_type = "ST"
    if "valueQuantity" in observation:
        quantity = observation["valueQuantity"]
        try:
            number = Decimal(str(quantity.get("value")))
        except (InvalidOperation, ValueError):
            raise BundleError(f"{where}.valueQuantity.value", "a number") from None
        if not number.is_finite():
            raise BundleError(f"{where}.valueQuantity.value", "a number")
        unit = _text(quantity.get("unit") or quantity.get("code"), f"{where}.valueQuantity.unit")
        value_type = "NM"
    elif "valueString" in observation:
        text = _text(observation["valueString"], f"{where}.valueString", 20_000)
    elif "valueCodeableConcept" in observation:
        coded = _coding(observation["valueCodeableConcept"], f"{where}.valueCodeableConcept")
        text = f"{coded.code}^{coded.display}" if coded.display else coded.code
        value_type = "CE"
    flags = []
    for index, concept in enumerate(observation.get("interpretation") or []):
        codings = concept.get("coding") or []
        flag = codings[0].get("code") if codings else None
        flags.append(_text(flag, f"{where}.interpretation[{index}]", 5))
    status = _OBSERVATION_STATUS.get(str(observation.get("status")))
    if status is None:
        raise BundleError(f"{where}.status", "an Observation status")
    return ObservationContent(
        code=_coding(observation.get("code"), f"{where}.code"),
        value_type=value_type,
        number=number,
        text=text,
        unit=unit,
        reference_range=_range(observation, where),
        abnormal_flags=tuple(flag for flag in flags if flag),
        status=status,
        observed_at=_instant(observation.get("effectiveDateTime"), f"{where}.effectiveDateTime"),
        notes=tuple(
            _text(note.get("text"), f"{where}.note", 20_000)
            for note in observation.get("note") or []
            if note.get("text")
        ),
    )


def _pdf(report: Mapping[str, Any], where: str) -> bytes | None:
    for index, form in enumerate(report.get("presentedForm") or []):
        if form.get("contentType") == "application/pdf" and form.get("data"):
            try:
                return base64.b64decode(str(form["data"]), validate=True)
            except (binascii.Error, ValueError):
                raise BundleError(f"{where}.presentedForm[{index}].data", "base64") from None
    return None


def _order(
    report: Mapping[str, Any], observations: Mapping[str, tuple[str, Mapping[str, Any]]], where: str
) -> IncomingOrder:
    numbers = [
        i.get("value") for i in report.get("identifier") or [] if isinstance(i.get("value"), str)
    ]
    if not numbers:
        raise BundleError(f"{where}.identifier", "the laboratory's order number")
    placer = ""
    for based_on in report.get("basedOn") or []:
        value = (based_on.get("identifier") or {}).get("value")
        if isinstance(value, str) and value:
            placer = value
            break
    status = _REPORT_STATUS.get(str(report.get("status")))
    if status is None:
        raise BundleError(f"{where}.status", "preliminary, final, corrected or amended")
    contents = []
    for index, reference in enumerate(report.get("result") or []):
        target = reference.get("reference")
        found = observations.get(str(target))
        if found is None:
            raise BundleError(
                f"{where}.result[{index}]", "the fullUrl of an Observation entry of the bundle"
            )
        contents.append(_observation(found[1], found[0]))
    return IncomingOrder(
        placer_order_number=_text(placer, f"{where}.basedOn.identifier", 200),
        filler_order_number=_text(numbers[0], f"{where}.identifier", 200),
        exams=(_coding(report.get("code"), f"{where}.code"),),
        collected_at=_instant(report.get("effectiveDateTime"), f"{where}.effectiveDateTime"),
        prescriber=Prescriber(),
        lis_status=status,
        observations=tuple(contents),
        notes=(_text(report["conclusion"], f"{where}.conclusion", 20_000),)
        if report.get("conclusion")
        else (),
        pdf=_pdf(report, where),
    )


def incoming_from_bundle(
    bundle: Mapping[str, Any], client_id: uuid.UUID, *, received_at: dt.datetime
) -> IncomingResult:
    """Map a pushed bundle (see the module docstring); :class:`BundleError` if it cannot be."""
    bundle = _validated(bundle, "Bundle")
    if bundle.get("type") not in ("transaction", "batch"):
        raise BundleError("Bundle.type", "transaction or batch")
    control = (bundle.get("identifier") or {}).get("value") or bundle.get("id")
    if not isinstance(control, str) or not control:
        raise BundleError("Bundle.identifier.value", "the message's identifier")
    entries: Sequence[Mapping[str, Any]] = bundle.get("entry") or []
    if not entries or len(entries) > MAX_ENTRIES:
        raise BundleError("Bundle.entry", f"1 to {MAX_ENTRIES} entries")
    patients: list[tuple[str, Mapping[str, Any]]] = []
    reports: list[tuple[str, Mapping[str, Any]]] = []
    observations: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for index, entry in enumerate(entries):
        where = f"Bundle.entry[{index}]"
        resource = entry.get("resource")
        if not isinstance(resource, Mapping):
            raise BundleError(f"{where}.resource", "a resource")
        where = f"{where}.resource"
        resource = _validated(resource, where)
        kind = resource.get("resourceType")
        method = (entry.get("request") or {}).get("method")
        if kind == "Patient":
            if method not in ("POST", "PUT"):
                raise BundleError(f"Bundle.entry[{index}].request.method", "POST or PUT")
            patients.append((where, resource))
        elif kind == "DiagnosticReport":
            if method != "POST":
                raise BundleError(f"Bundle.entry[{index}].request.method", "POST")
            reports.append((where, resource))
        else:
            if method != "POST":
                raise BundleError(f"Bundle.entry[{index}].request.method", "POST")
            full_url = entry.get("fullUrl")
            if not isinstance(full_url, str) or not full_url:
                raise BundleError(f"Bundle.entry[{index}].fullUrl", "an urn:uuid: reference")
            observations[full_url] = (where, resource)
    if len(patients) != 1:
        raise BundleError("Bundle.entry", "exactly one Patient entry (the claim to match)")
    if not reports:
        raise BundleError("Bundle.entry", "at least one DiagnosticReport entry")
    used = {
        str(reference.get("reference"))
        for _, report in reports
        for reference in report.get("result") or []
    }
    if set(observations) - used:
        raise BundleError("Bundle.entry", "every Observation referenced by a DiagnosticReport")
    return IncomingResult(
        client_id=client_id,
        key=MessageKey(f"fhir:{client_id}", "", control[:200]),
        patient=_claim(patients[0][1], patients[0][0]),
        orders=tuple(_order(report, observations, where) for where, report in reports),
        received_at=received_at,
    )
