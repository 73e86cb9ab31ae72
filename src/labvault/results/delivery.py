"""Delivery of released reports to the prescriber: the ``ResultDelivery`` seam.

A released report is handed to the laboratory's gateway toward prescribers (MSSanté
messaging, HPRIM Net, a hospital's interface engine). labvault's default,
:class:`FileResultDelivery`, writes one FHIR R4 document (a ``Bundle`` with the Patient,
the prescriber, the DiagnosticReport and its Observations) per report version into a drop
directory (``LABVAULT_RESULT_DROP_DIR``, default ``<data_dir>/outbox/results``) that the
gateway picks up.

That file is plaintext leaving the database ON PURPOSE: it is the hand-off to a system that
sends it to a doctor. The directory is created 0700 and each file 0600, written aside,
fsynced and renamed (a file is complete or absent); the gateway should delete what it has
sent, and the directory must stay out of backups (docs/results.md). MSSanté and HPRIM
adapters will implement the same protocol.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from labvault.core.durable import fsync_directory
from labvault.patients.ins import InsOid
from labvault.patients.services import PatientRecord
from labvault.results.content import LOINC, ObservationContent, OrderDetails, ReportContent

__all__ = [
    "DeliveryError",
    "DeliveryReceipt",
    "FileResultDelivery",
    "PrescriberDocument",
    "ResultDelivery",
    "discard_drop_files",
    "fhir_document",
]

RPPS_SYSTEM: Final = "urn:oid:1.2.250.1.71.4.2.1"
"""FR Core: the RPPS number of a health professional."""
INTERPRETATION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_KNOWN_FLAGS: Final = frozenset({"H", "L", "HH", "LL", "A", "AA", "N", "<", ">", "R", "S", "I"})
_SUFFIX: Final = ".fhir.json"
_TEMP_PREFIX: Final = ".tmp-"


class DeliveryError(Exception):
    """The report could not be handed over. The text names the channel and the cause,
    never the report's content or the patient."""


@dataclass(frozen=True, slots=True, repr=False)
class PrescriberDocument:
    """What the prescriber receives: the report as validated, and who it is about."""

    report_id: uuid.UUID
    version: int
    organization: str
    patient: PatientRecord
    order: OrderDetails
    report: ReportContent
    observations: tuple[ObservationContent, ...]
    validated_at: dt.datetime
    released_at: dt.datetime

    def __repr__(self) -> str:
        return f"PrescriberDocument(report_id={self.report_id}, version={self.version})"


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """Where the document went (a file name, a message id): no content."""

    channel: str
    reference: str
    already_delivered: bool = False


class ResultDelivery(Protocol):
    """Hands one released report version to the prescriber's channel; idempotent per
    (report, version): delivering it again returns the first receipt's reference."""

    def deliver(self, document: PrescriberDocument) -> DeliveryReceipt: ...


def _instant(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    coding = {"code": code}
    if system:
        coding["system"] = system
    if display:
        coding["display"] = display
    return coding


def _observation(
    position: int, document: PrescriberDocument, observation: ObservationContent
) -> dict[str, Any]:
    code = observation.code
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"obs-{position}",
        "status": {"F": "final", "C": "corrected", "P": "preliminary"}.get(
            observation.status, "final"
        ),
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [_coding(code.system, code.code, code.display)]},
        "subject": {"reference": "urn:uuid:" + str(document.patient.id)},
    }
    if code.display:
        resource["code"]["text"] = code.display
    if observation.observed_at is not None:
        resource["effectiveDateTime"] = _instant(observation.observed_at)
    if observation.number is not None:
        quantity: dict[str, Any] = {"value": float(observation.number)}
        if observation.unit:
            quantity["unit"] = observation.unit
            quantity["system"] = "http://unitsofmeasure.org"
            quantity["code"] = observation.unit
        resource["valueQuantity"] = quantity
    elif observation.text:
        resource["valueString"] = observation.text
    else:
        resource["dataAbsentReason"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                    "code": "unknown",
                }
            ]
        }
    flags = [flag for flag in observation.abnormal_flags if flag in _KNOWN_FLAGS]
    if flags:
        resource["interpretation"] = [
            {"coding": [{"system": INTERPRETATION_SYSTEM, "code": flag}]} for flag in flags
        ]
    if observation.reference_range:
        resource["referenceRange"] = [{"text": observation.reference_range}]
    if observation.notes:
        resource["note"] = [{"text": note} for note in observation.notes]
    return resource


def _patient(record: PatientRecord) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": str(record.id)}
    if record.ins_number and record.ins_oid in (InsOid.NIR, InsOid.TEST):
        resource["identifier"] = [
            {
                "use": "official",
                "type": {
                    "coding": [
                        {
                            "system": "http://interopsante.org/fhir/CodeSystem/fr-v2-0203",
                            "code": "INS-NIR" if record.ins_oid is InsOid.NIR else "INS-NIR-TEST",
                        }
                    ]
                },
                "system": f"urn:oid:{record.ins_oid.value}",
                "value": record.ins_number,
            }
        ]
    name: dict[str, Any] = {"use": "official"}
    if record.birth_name:
        name["family"] = record.birth_name
    if record.first_names:
        name["given"] = record.first_names.split()
    resource["name"] = [name]
    if record.birth_date is not None:
        resource["birthDate"] = record.birth_date.isoformat()
    if record.sex is not None:
        resource["gender"] = {"M": "male", "F": "female"}.get(record.sex.value, "unknown")
    return resource


def _urn(document: PrescriberDocument, name: str) -> str:
    """A stable ``urn:uuid:`` for a resource of the document (the same on every delivery)."""
    return f"urn:uuid:{uuid.uuid5(document.report_id, name)}"


def fhir_document(document: PrescriberDocument) -> dict[str, Any]:
    """The FHIR R4 ``Bundle`` (type ``collection``) the prescriber receives."""
    patient_ref = "urn:uuid:" + str(document.patient.id)
    observations = [
        _observation(position, document, observation)
        for position, observation in enumerate(document.observations, start=1)
    ]
    exams = document.order.exams
    main = exams[0] if exams else None
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": str(document.report_id),
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "LAB",
                    }
                ]
            }
        ],
        "code": {
            "coding": [_coding(main.system or LOINC, main.code, main.display)]
            if main is not None
            else [],
            "text": document.report.title or (main.display if main else "Compte rendu"),
        },
        "subject": {"reference": patient_ref},
        "issued": _instant(document.released_at),
        "performer": [{"display": document.organization}],
        "result": [{"reference": _urn(document, o["id"])} for o in observations],
    }
    if document.order.collected_at is not None:
        report["effectiveDateTime"] = _instant(document.order.collected_at)
    if document.report.conclusion:
        report["conclusion"] = document.report.conclusion
    entries: list[dict[str, Any]] = [
        {"fullUrl": patient_ref, "resource": _patient(document.patient)},
    ]
    prescriber = document.order.prescriber
    if prescriber.identifier or prescriber.name:
        practitioner: dict[str, Any] = {"resourceType": "Practitioner", "id": "prescriber"}
        if prescriber.identifier:
            practitioner["identifier"] = [{"system": RPPS_SYSTEM, "value": prescriber.identifier}]
        if prescriber.name:
            practitioner["name"] = [{"text": prescriber.name}]
        entries.append({"fullUrl": _urn(document, "prescriber"), "resource": practitioner})
    entries.append({"fullUrl": f"urn:uuid:{document.report_id}", "resource": report})
    for observation in observations:
        entries.append(
            {
                "fullUrl": _urn(document, observation["id"]),
                "resource": observation,
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": _instant(document.released_at),
        "identifier": {
            "system": "urn:ietf:rfc:3986",
            "value": f"urn:uuid:{document.report_id}",
        },
        "entry": entries,
    }


_NAME = re.compile(r"[0-9a-f-]{36}-v[0-9]+\.fhir\.json")


class FileResultDelivery:
    """Writes ``<report id>-v<version>.fhir.json`` into ``directory`` (0700), each file 0600,
    atomically; a version already there is not written again."""

    channel = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __repr__(self) -> str:
        return f"FileResultDelivery({str(self.directory)!r})"

    def path_for(self, report_id: uuid.UUID, version: int) -> Path:
        return self.directory / f"{report_id}-v{version}{_SUFFIX}"

    def deliver(self, document: PrescriberDocument) -> DeliveryReceipt:
        path = self.path_for(document.report_id, document.version)
        try:
            self._make_directory()
            if path.exists():
                return DeliveryReceipt(self.channel, path.name, already_delivered=True)
            data = json.dumps(fhir_document(document), ensure_ascii=False, indent=2).encode()
            self._write_atomically(path, data)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise DeliveryError(
                f"file delivery: cannot write to {self.directory}: {reason}"
            ) from None
        return DeliveryReceipt(self.channel, path.name)

    def delivered(self) -> list[Path]:
        """The documents waiting in the directory (for tests and the operator)."""
        try:
            return sorted(
                self.directory / entry.name
                for entry in os.scandir(self.directory)
                if _NAME.fullmatch(entry.name)
            )
        except FileNotFoundError:
            return []

    def _make_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            return
        os.chmod(self.directory, 0o700)  # whatever the umask

    def _write_atomically(self, path: Path, data: bytes) -> None:
        temp = path.with_name(f"{_TEMP_PREFIX}{secrets.token_hex(8)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # link() refuses an existing name: a concurrent delivery of the same version
            # cannot be overwritten half-way (the first one wins).
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        fsync_directory(self.directory)


def discard_drop_files(directory: Path, report_ids: Iterable[uuid.UUID]) -> int:
    """Delete every version's document of ``report_ids`` still waiting in the drop
    directory (``<report id>-v<n>.fhir.json``); how many. For erasure: these files are the
    only plaintext copy of a patient's reports outside the database. A missing directory
    or file is not an error; the names matched are ours only (a report id is a UUID)."""
    wanted = {str(report_id) for report_id in report_ids}
    if not wanted:
        return 0
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not _NAME.fullmatch(entry.name):
            continue
        report_id, _, _ = entry.name.rpartition("-v")
        if report_id in wanted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / entry.name)
                removed += 1
    if removed:
        fsync_directory(directory)
    return removed
