"""labvault's records as FHIR R4 resources (JSON dictionaries).

Pure functions: they receive what the services already decrypted under the caller's policy
and never read the database. Choices worth knowing:

- Patient: FR Core's INS identifier (system ``urn:oid:<INS OID>``, type ``INS-NIR``,
  ``INS-NIA`` or ``INS-NIR-TEST`` of ``fr-core-cs-v2-0203``); the birth name as the
  ``official`` name, the used name as ``usual``. FR Core conveys the INS only for a
  qualified identity; labvault sends it whatever the status, because the laboratory system
  matches results on it, and states the status in ``meta.tag``.
- Local code systems of a laboratory system (``L``, ``99ZZZ``...) are not URIs: such a
  coding is sent without ``system`` rather than with an invented one.
- HL7 v2 statuses (OBX-11, OBR-25) are mapped to the FHIR value sets; anything unknown
  becomes ``unknown``, never a guess.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final

from labvault.appointments.models import Appointment, AppointmentStatus
from labvault.organizations.models import Site
from labvault.patients.ins import InsOid, Sex
from labvault.patients.services import PatientRecord
from labvault.results.content import (
    LOINC,
    Coding,
    ObservationContent,
    OrderDetails,
    ReportContent,
)
from labvault.results.models import ReportStatus, ResultOrder, ResultReport
from labvault.schedules.models import SiteSchedule
from labvault.schedules.slots import Slot

__all__ = [
    "FR_CORE_IDENTIFIER_TYPE",
    "INS_TYPE_CODES",
    "appointment_resource",
    "diagnostic_report_resource",
    "document_reference_resource",
    "location_resource",
    "observation_resource",
    "patient_resource",
    "schedule_resource",
    "service_request_resource",
    "slot_resource",
]

FR_CORE_IDENTIFIER_TYPE: Final = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
INS_TYPE_CODES: Final = {
    InsOid.NIR: "INS-NIR",
    InsOid.NIA: "INS-NIA",
    InsOid.TEST: "INS-NIR-TEST",
}
IDENTITY_STATUS_SYSTEM: Final = "https://labvault.fr/fhir/CodeSystem/identity-status"
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
LAB_REPORT: Final = {"system": LOINC, "code": "11502-2", "display": "Laboratory report"}

_GENDER = {Sex.MALE: "male", Sex.FEMALE: "female"}
_APPOINTMENT_STATUS = {
    AppointmentStatus.BOOKED.value: "booked",
    AppointmentStatus.CHECKED_IN.value: "checked-in",
    AppointmentStatus.DONE.value: "fulfilled",
    AppointmentStatus.NO_SHOW.value: "noshow",
    AppointmentStatus.CANCELLED.value: "cancelled",
    AppointmentStatus.HELD.value: "pending",
}
_OBSERVATION_STATUS = {
    "F": "final",
    "U": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "I": "registered",
    "O": "registered",
    "D": "entered-in-error",
    "W": "entered-in-error",
    "X": "cancelled",
    "N": "cancelled",
}
_INTERPRETATIONS = frozenset(
    {"<", ">", "A", "AA", "B", "D", "H", "HH", "HU", "I", "L", "LL", "LU", "N", "R", "S", "U", "W"}
)


def instant(value: dt.datetime) -> str:
    """An aware UTC ``instant`` (FHIR wants the zone; stored values are UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat(timespec="seconds")


def _reference(kind: str, ident: object) -> dict[str, str]:
    return {"reference": f"{kind}/{ident}"}


def _coding(code: Coding) -> dict[str, str]:
    coding = {"code": code.code}
    if ":" in code.system:  # a URI (http://loinc.org, urn:oid:...); local systems are not
        coding["system"] = code.system
    if code.display:
        coding["display"] = code.display
    return coding


def _concept(code: Coding) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [_coding(c) for c in code.all_codings()]}
    if code.display:
        concept["text"] = code.display
    return concept


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def patient_resource(record: PatientRecord) -> dict[str, Any]:
    """A Patient with what the reader's policy revealed (``record.fields``), nothing more."""
    resource: dict[str, Any] = {"resourceType": "Patient", "id": str(record.id), "active": True}
    if record.identity_status is not None:
        resource["meta"] = {
            "tag": [{"system": IDENTITY_STATUS_SYSTEM, "code": record.identity_status.value}]
        }
    if record.ins_number and record.ins_oid is not None:
        resource["identifier"] = [
            {
                "use": "official",
                "type": {
                    "coding": [
                        {"system": FR_CORE_IDENTIFIER_TYPE, "code": INS_TYPE_CODES[record.ins_oid]}
                    ]
                },
                "system": f"urn:oid:{record.ins_oid.value}",
                "value": record.ins_number,
            }
        ]
    names = []
    if record.birth_name:
        official: dict[str, Any] = {"use": "official", "family": record.birth_name}
        if record.first_names:
            official["given"] = record.first_names.split()
        names.append(official)
    if record.used_name:
        usual: dict[str, Any] = {"use": "usual", "family": record.used_name}
        if record.first_names:
            usual["given"] = record.first_names.split()[:1]
        names.append(usual)
    if names:
        resource["name"] = names
    if record.sex is not None:
        resource["gender"] = _GENDER.get(record.sex, "unknown")
    if record.birth_date is not None:
        resource["birthDate"] = record.birth_date.isoformat()
    return resource


def location_resource(site: Site) -> dict[str, Any]:
    """A sampling site: the lab's own address, not personal data."""
    return {
        "resourceType": "Location",
        "id": str(site.id),
        "status": "active",
        "mode": "instance",
        "name": site.name,
        "address": {
            "use": "work",
            "type": "physical",
            "line": [site.address_line],
            "postalCode": site.postal_code,
            "city": site.city,
            "country": "FR",
        },
    }


def schedule_resource(schedule: SiteSchedule) -> dict[str, Any]:
    return {
        "resourceType": "Schedule",
        "id": str(schedule.id),
        "active": True,
        "actor": [_reference("Location", schedule.site_id)],
        "comment": f"Créneaux de {schedule.slot_minutes} minutes",
    }


def slot_id(schedule_id: uuid.UUID, starts_at: dt.datetime) -> str:
    """A slot is computed, not stored: its id is its schedule and its UTC start."""
    return f"{schedule_id}-{starts_at.astimezone(dt.UTC):%Y%m%d%H%M}"


def parse_slot_id(text: str) -> tuple[uuid.UUID, dt.datetime] | None:
    schedule, _, start = text.rpartition("-")
    if len(schedule) != 36 or len(start) != 12 or not start.isdigit():
        return None
    try:
        return uuid.UUID(schedule), dt.datetime.strptime(start, "%Y%m%d%H%M").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def slot_resource(schedule: SiteSchedule, slot: Slot) -> dict[str, Any]:
    """A bookable slot (boxes still free): ``free``; full ones are not listed."""
    return {
        "resourceType": "Slot",
        "id": slot_id(schedule.id, slot.starts_at),
        "schedule": _reference("Schedule", schedule.id),
        "status": "free",
        "start": instant(slot.starts_at),
        "end": instant(slot.ends_at),
        "comment": f"{slot.capacity} place(s) libre(s)",
    }


def appointment_resource(appointment: Appointment) -> dict[str, Any]:
    """Who, where, when and the state: the exams (sealed) are not sent."""
    start = appointment.starts_at
    end = appointment.ends_at or start
    return {
        "resourceType": "Appointment",
        "id": str(appointment.id),
        "status": _APPOINTMENT_STATUS.get(appointment.status, "entered-in-error"),
        "start": instant(start),
        "end": instant(end),
        "participant": [
            {
                "actor": _reference("Patient", appointment.patient_id),
                "required": "required",
                "status": "accepted",
            },
            {
                "actor": _reference("Location", appointment.site_id),
                "required": "required",
                "status": "accepted",
            },
        ],
    }


def service_request_resource(
    order: ResultOrder, details: OrderDetails, report: ResultReport | None
) -> dict[str, Any]:
    done = report is not None and report.status != ReportStatus.TO_VALIDATE.value
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": str(order.id),
        "status": "completed" if done else "active",
        "intent": "order",
        "category": [{"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}],
        "subject": _reference("Patient", order.patient_id),
        "authoredOn": instant(order.created_at),
    }
    identifiers = []
    for kind, value in (
        ("PLAC", details.placer_order_number),
        ("FILL", details.filler_order_number),
    ):
        if value:
            identifiers.append(
                {
                    "use": "usual",
                    "type": {"coding": [{"system": V2_0203, "code": kind}]},
                    "value": value,
                }
            )
    if identifiers:
        resource["identifier"] = identifiers
    if details.exams:
        names = [exam.display or exam.code for exam in details.exams]
        exams: dict[str, Any] = {"text": "; ".join(names)}
        if len(details.exams) == 1:
            exams["coding"] = [_coding(details.exams[0])]
        resource["code"] = exams
    if details.prescriber.name or details.prescriber.identifier:
        requester: dict[str, Any] = {"type": "Practitioner"}
        if details.prescriber.name:
            requester["display"] = details.prescriber.name
        if details.prescriber.identifier:
            requester["identifier"] = {"value": details.prescriber.identifier}
        resource["requester"] = requester
    if details.collected_at is not None:
        resource["occurrenceDateTime"] = instant(details.collected_at)
    if details.notes:
        resource["note"] = [{"text": note} for note in details.notes if note]
    return resource


def report_status(report: ResultReport) -> str:
    """to-validate: ``preliminary`` whatever the laboratory system said; validated or
    released: ``corrected`` after a correction (OBR-25 C), else ``final``."""
    if report.status == ReportStatus.TO_VALIDATE.value:
        return "preliminary"
    return "corrected" if report.lis_status == "C" else "final"


def diagnostic_report_resource(
    report: ResultReport, content: ReportContent, observation_ids: Sequence[object]
) -> dict[str, Any]:
    code: dict[str, Any] = {"coding": [dict(LAB_REPORT)]}
    if content.title:
        code["text"] = content.title
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": str(report.id),
        "meta": {"versionId": str(report.version), "lastUpdated": instant(report.updated_at)},
        "status": report_status(report),
        "category": [{"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}],
        "code": code,
        "subject": _reference("Patient", report.patient_id),
        "basedOn": [_reference("ServiceRequest", report.order_id)],
        "effectiveDateTime": instant(report.received_at),
        "issued": instant(report.validated_at or report.updated_at),
    }
    if observation_ids:
        resource["result"] = [_reference("Observation", ident) for ident in observation_ids]
    if content.conclusion:
        resource["conclusion"] = content.conclusion
    return resource


def observation_resource(
    observation_id: object, report: ResultReport, content: ObservationContent
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(observation_id),
        "status": _OBSERVATION_STATUS.get(content.status, "unknown"),
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
        "code": _concept(content.code),
        "subject": _reference("Patient", report.patient_id),
        "basedOn": [_reference("ServiceRequest", report.order_id)],
    }
    if content.number is not None:
        quantity: dict[str, Any] = {"value": _number(content.number)}
        if content.unit:
            quantity["unit"] = content.unit
        resource["valueQuantity"] = quantity
    elif content.text:
        resource["valueString"] = content.text
    else:
        resource["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "unknown"}]}
    if content.reference_range:
        resource["referenceRange"] = [{"text": content.reference_range}]
    flags = [flag for flag in content.abnormal_flags if flag]
    if flags:
        resource["interpretation"] = [
            {"coding": [{"system": INTERPRETATION, "code": flag}]}
            if flag in _INTERPRETATIONS
            else {"text": flag}
            for flag in flags
        ]
    if content.observed_at is not None:
        resource["effectiveDateTime"] = instant(content.observed_at)
    notes = [note for note in content.notes if note]
    if notes:
        resource["note"] = [{"text": note} for note in notes]
    return resource


def document_reference_resource(report: ResultReport, pdf: bytes) -> dict[str, Any]:
    """The report's PDF, inline (base64): the id is the report's."""
    return {
        "resourceType": "DocumentReference",
        "id": str(report.id),
        "status": "current",
        "docStatus": "preliminary" if report.status == ReportStatus.TO_VALIDATE.value else "final",
        "type": {"coding": [dict(LAB_REPORT)]},
        "category": [{"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}],
        "subject": _reference("Patient", report.patient_id),
        "date": instant(report.validated_at or report.updated_at),
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "data": base64.b64encode(pdf).decode("ascii"),
                    "title": "Compte rendu d'analyses",
                }
            }
        ],
        "context": {"related": [_reference("DiagnosticReport", report.id)]},
    }
