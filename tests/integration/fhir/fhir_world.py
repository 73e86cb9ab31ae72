"""The FHIR API's world: the access world (two tenants, patients around the relationship
window, placed around the real clock) served as tenant A, plus service clients with secrets
and results ingested through the result store.

- ``lis``: a laboratory system of the main site, every scope; it sent the results of
  ``today`` (still to validate).
- ``other``: another laboratory system of the main site; it sent the results of
  ``tomorrow`` (released) and of ``in_20_days`` (validated, waiting for a phone call).
- ``reader``: a FHIR client of the main site with read scopes only (no results, no writes).
- ``annex``: a FHIR client of the annex site, every read scope.
- ``doomed``: a FHIR client that a test disables.
- ``beta``: a laboratory system of tenant B.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class
from httpx import Response
from sqlalchemy import update

import access_world
from access_world import World, build_world
from helpers import CHEAP_HASHER
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.fhir.bindings import binding_problems
from labvault.patients.schemas import PatientInput
from labvault.results.clients import ServiceClientRegistry
from labvault.results.content import Coding, ObservationContent, Prescriber
from labvault.results.incoming import (
    TEST_INS_OID,
    IncomingOrder,
    IncomingResult,
    MessageKey,
    PatientClaim,
    PatientIdentifierClaim,
)
from labvault.results.intake import OrderDigester, ResultStore
from labvault.results.models import ReportStatus, ResultReport
from labvault.schedules.services import SiteScheduleService

ALL_READS = " ".join(
    f"system/{kind}.read"
    for kind in (
        "Patient",
        "Location",
        "Schedule",
        "Appointment",
        "ServiceRequest",
        "DiagnosticReport",
        "Observation",
        "DocumentReference",
    )
)
PDF = b"%PDF-1.4\n% synthetic report\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
GLUCOSE = Decimal("5.42")


@dataclass
class ClientCredentials:
    id: uuid.UUID
    secret: str
    kind: str


@dataclass
class FhirWorld:
    world: World
    runtime: Runtime
    clients: dict[str, ClientCredentials]
    reports: dict[str, uuid.UUID]
    """Report ids by patient name (``today``, ``tomorrow``, ``in_20_days``)."""
    schedule: uuid.UUID
    """The main site's schedule (open every day)."""

    def patient(self, name: str) -> uuid.UUID:
        return self.world.patients[name]


def _claim(person: PatientInput) -> PatientClaim:
    assert person.nir is not None
    return PatientClaim(
        identifiers=(PatientIdentifierClaim(person.nir.compact, TEST_INS_OID, "INS"),),
        birth_name=person.birth_name,
        first_names=tuple(person.first_names.split()),
        birth_date=person.birth_date,
        sex=person.sex.value,
    )


def incoming(client: uuid.UUID, person: PatientInput, control_id: str) -> IncomingResult:
    """A glucose and a hemoglobin, with a PDF, for ``person``."""
    return IncomingResult(
        client_id=client,
        key=MessageKey("SIL", "ALPHA", control_id),
        patient=_claim(person),
        orders=(
            IncomingOrder(
                placer_order_number=f"P-{control_id}",
                filler_order_number=f"F-{control_id}",
                exams=(Coding(system="http://loinc.org", code="2345-7", display="Glycémie"),),
                collected_at=utcnow() - dt.timedelta(hours=3),
                prescriber=Prescriber(identifier="10001234567", name="Dr Martin"),
                lis_status="F",
                observations=(
                    ObservationContent(
                        code=Coding(system="http://loinc.org", code="2345-7", display="Glucose"),
                        value_type="NM",
                        number=GLUCOSE,
                        unit="mmol/L",
                        reference_range="4.1-5.9",
                        abnormal_flags=("N",),
                        status="F",
                        observed_at=utcnow() - dt.timedelta(hours=3),
                    ),
                    ObservationContent(
                        code=Coding(system="L", code="HB", display="Hémoglobine"),
                        value_type="ST",
                        text="13,7 g/dL",
                        abnormal_flags=("H", "??"),
                        status="C",
                    ),
                ),
                pdf=PDF,
            ),
        ),
    )


def _ingest(runtime: Runtime, world: World, client: uuid.UUID, name: str) -> uuid.UUID:
    principal = Principal(PrincipalKind.SERVICE, f"service:{client}", role="lis")
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, world.tenant, principal)
        orders = OrderDigester.from_provider(runtime.key_provider, world.tenant)
        outcome = ResultStore(session, keyring, orders=orders).ingest(
            incoming(client, world.inputs[name], f"MSG-{name}")
        )
    assert outcome.report_ids, f"the result of {name} was not attached ({outcome.reason})"
    return outcome.report_ids[0]


def _register(
    runtime: Runtime, tenant: uuid.UUID, name: str, kind: str, sites: list[str], scopes: str
) -> ClientCredentials:
    with transaction(runtime.tenant_sessions(tenant)) as session:
        registry = ServiceClientRegistry(
            session, tenant, AuditTrail(session, SystemPrincipal("test:fhir")), CHEAP_HASHER
        )
        client, issued = registry.add(
            name, kind=kind, sites=sites, scopes=scopes.split(), with_secret=True
        )
        assert issued is not None
        return ClientCredentials(client.id, issued.secret.reveal(), kind)


def build_fhir_world(runtime: Runtime) -> FhirWorld:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(access_world, "NOW", utcnow())  # the API measures the window from now
        world = build_world(runtime)
    everything = "system/*.* " + ALL_READS
    clients = {
        "lis": _register(runtime, world.tenant, "SIL Alpha", "lis", ["Alpha Centre"], everything),
        "other": _register(
            runtime, world.tenant, "SIL Second", "lis", ["Alpha Centre"], everything
        ),
        "reader": _register(
            runtime,
            world.tenant,
            "Lecteur",
            "fhir",
            ["Alpha Centre"],
            "system/Patient.read system/Location.read system/Appointment.rs",
        ),
        "annex": _register(runtime, world.tenant, "Annexe", "fhir", ["Alpha Nord"], ALL_READS),
        "doomed": _register(runtime, world.tenant, "A couper", "fhir", ["Alpha Centre"], ALL_READS),
        "beta": _register(
            runtime, world.other_tenant, "SIL Beta", "lis", ["Beta Centre"], everything
        ),
    }
    reports = {
        "today": _ingest(runtime, world, clients["lis"].id, "today"),
        "tomorrow": _ingest(runtime, world, clients["other"].id, "tomorrow"),
        "in_20_days": _ingest(runtime, world, clients["other"].id, "in_20_days"),
    }
    with transaction(world.sessions) as session:
        now = utcnow()
        for name, status in (
            ("tomorrow", ReportStatus.RELEASED),
            ("in_20_days", ReportStatus.VALIDATED),
        ):
            session.execute(
                update(ResultReport)
                .where(ResultReport.id == reports[name])
                .values(status=status.value, validated_at=now, released_at=now)
            )
    with transaction(world.sessions) as session:
        schedule = SiteScheduleService(
            session, AuditTrail(session, SystemPrincipal("test:fhir")), world.tenant
        ).set_schedule(
            world.sites["main"],
            opening_hours={
                day: [["07:00", "12:00"], ["14:00", "18:00"]]
                for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
            },
            slot_minutes=15,
            sampling_boxes=2,
        )
        schedule_id = schedule.id
    return FhirWorld(world, runtime, clients, reports, schedule_id)


# --- HTTP ------------------------------------------------------------------------------------


def token(client: TestClient, credentials: ClientCredentials, scope: str | None = None) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": str(credentials.id),
        "client_secret": credentials.secret,
    }
    if scope is not None:
        form["scope"] = scope
    answer = client.post("/fhir/R4/auth/token", data=form)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def check_resource(resource: Mapping[str, Any]) -> None:
    """Validates with fhir.resources R4B, and every required binding holds."""
    model = get_fhir_model_class(str(resource["resourceType"]))
    model.model_validate(dict(resource))
    assert binding_problems(resource) == []


def fhir_get(client: TestClient, bearer: str, url: str, **kwargs: Any) -> Response:
    """GET with the token; any FHIR body returned is checked (resources and outcomes)."""
    answer = client.get(url, headers={"Authorization": f"Bearer {bearer}"}, **kwargs)
    if answer.headers.get("content-type", "").startswith("application/fhir+json"):
        check_resource(answer.json())
    return answer


def fhir_search(client: TestClient, bearer: str, kind: str, form: Mapping[str, str]) -> Response:
    answer = client.post(
        f"/fhir/R4/{kind}/_search", data=dict(form), headers={"Authorization": f"Bearer {bearer}"}
    )
    if answer.headers.get("content-type", "").startswith("application/fhir+json"):
        check_resource(answer.json())
    return answer


def entry_ids(bundle: Mapping[str, Any]) -> list[str]:
    return [str(entry["resource"]["id"]) for entry in bundle.get("entry", [])]


def result_bundle(
    person: PatientInput, control_id: str, *, value: str = "7.77", status: str = "final"
) -> dict[str, Any]:
    """A transaction Bundle as a laboratory system pushes it: the patient claim, one report
    with one observation and its PDF."""
    assert person.nir is not None
    observation_url = f"urn:uuid:{uuid.uuid4()}"
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "urn:oid:1.2.250.1.999", "value": control_id},
        "entry": [
            {
                "fullUrl": patient_url,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [
                        {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": person.nir.compact}
                    ],
                    "name": [
                        {
                            "use": "official",
                            "family": person.birth_name,
                            "given": person.first_names.split(),
                        }
                    ],
                    "birthDate": person.birth_date.isoformat(),
                    "gender": {"M": "male", "F": "female"}[person.sex.value],
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": "identifier=urn:oid:1.2.250.1.213.1.4.10|" + person.nir.compact,
                },
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "DiagnosticReport",
                    "identifier": [{"value": f"F-{control_id}"}],
                    "status": status,
                    "code": {
                        "coding": [
                            {"system": "http://loinc.org", "code": "2345-7", "display": "Glycémie"}
                        ]
                    },
                    "subject": {"reference": patient_url},
                    "effectiveDateTime": "2026-11-30T07:30:00+01:00",
                    "result": [{"reference": observation_url}],
                    "presentedForm": [
                        {
                            "contentType": "application/pdf",
                            "data": base64.b64encode(PDF).decode(),
                        }
                    ],
                },
                "request": {"method": "POST", "url": "DiagnosticReport"},
            },
            {
                "fullUrl": observation_url,
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {
                        "coding": [
                            {"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}
                        ]
                    },
                    "valueQuantity": {"value": float(value), "unit": "mmol/L"},
                    "referenceRange": [{"low": {"value": 4.1}, "high": {"value": 5.9}}],
                    "interpretation": [{"coding": [{"code": "H"}]}],
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
