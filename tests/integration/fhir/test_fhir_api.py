"""The FHIR R4 API end to end: tokens, scopes, the policy and the relationship of the
client's sites, tenant isolation, search by INS, and every resource returned valid (R4B and
the required bindings)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir_world import (
    ALL_READS,
    CHEAP_HASHER,
    GLUCOSE,
    PDF,
    FhirWorld,
    _register,
    build_fhir_world,
    check_resource,
    entry_ids,
    fhir_get,
    fhir_search,
    result_bundle,
    token,
)
from httpx import Response
from sqlalchemy import select, update

from helpers import app_url, leaked, owner_url, pg_dump, sqlite_files
from labvault.app import create_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction, utcnow
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.fhir import routes as fhir_routes
from labvault.fhir.oauth import TOKEN_ADDRESS_MINUTE, token_digest
from labvault.results.clients import ServiceClientRegistry
from labvault.results.models import ResultMessage, ResultReport, ServiceClient, ServiceToken

ORIGIN = "https://testserver.local"
MARKER = "NOTE-FHIR-7f3a9c"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def fw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FhirWorld]:
    """One world per backend for the module: the tests only add to it (their own tokens,
    their own clients to disable), so they may share it."""
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"fhir-{backend}")
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'var' / 'db' / 'labvault.sqlite3'}"
        bootstrap = Runtime(Settings(data_dir=tmp / "var", database_url=url))
        upgrade(bootstrap.engine)
        bootstrap.close()
    else:
        url = app_url(request.getfixturevalue("postgres").new_database())
    settings = Settings(
        data_dir=tmp / "var",
        database_url=url,
        admin_database_url=owner_url(url),
        organization="Labo Alpha",
    )
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    with pytest.MonkeyPatch.context() as patch:
        # Unknown clients cost a dummy hash with the process's hasher: a cheap one here.
        patch.setattr(fhir_routes, "_hasher", CHEAP_HASHER)
        yield build_fhir_world(runtime)
    runtime.close()


@pytest.fixture
def client(fw: FhirWorld) -> Iterator[TestClient]:
    with TestClient(create_app(fw.runtime.settings, fw.runtime), base_url=ORIGIN) as test_client:
        yield test_client
    # Every test starts with the whole budget of token requests of the test client's address.
    address = fw.runtime.client_address_hasher("testclient")
    fw.runtime.rate_limiter.reset(TOKEN_ADDRESS_MINUTE, address)


def _failures(fw: FhirWorld) -> list[AuditEvent]:
    with fw.world.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == AuditAction.SERVICE_TOKEN_FAILURE.value
                )
            )
        )


# --- tokens ------------------------------------------------------------------------------------


def test_client_credentials_give_a_short_opaque_token_stored_as_a_digest(
    client: TestClient, fw: FhirWorld
) -> None:
    lis = fw.clients["lis"]
    answer = client.post(
        "/fhir/R4/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": str(lis.id),
            "client_secret": lis.secret,
            "scope": "system/Patient.read system/Observation.rs",
        },
    )
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/Observation.read system/Patient.read"
    access = body["access_token"]
    assert len(base64.urlsafe_b64decode(access + "=")) == 32
    with fw.world.sessions() as session:
        rows = list(
            session.scalars(
                select(ServiceToken).where(ServiceToken.token_digest == token_digest(access))
            )
        )
    assert len(rows) == 1
    assert access.encode() not in rows[0].token_digest
    assert rows[0].expires_at - rows[0].issued_at == dt.timedelta(minutes=5)
    # HTTP Basic works too (RFC 6749 §2.3.1), and no scope asked means every registered one.
    basic = base64.b64encode(f"{lis.id}:{lis.secret}".encode()).decode()
    again = client.post(
        "/fhir/R4/auth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert again.status_code == 200
    assert "system/DocumentReference.*" in again.json()["scope"]


def test_unknown_client_wrong_secret_and_disabled_client_get_one_answer(
    client: TestClient, fw: FhirWorld
) -> None:
    lis, reader = fw.clients["lis"], fw.clients["doomed"]
    bearer = token(client, reader)
    with transaction(fw.world.sessions) as session:
        session.execute(
            update(ServiceClient)
            .where(ServiceClient.id == reader.id)
            .values(disabled_at=utcnow(), disabled_reason="test")
        )
    attempts = {
        "wrong secret": (str(lis.id), lis.secret + "x"),
        "unknown client": (str(uuid.uuid4()), lis.secret),
        "not an id": ("SIL Alpha", lis.secret),
        "disabled": (str(reader.id), reader.secret),
        "other tenant": (str(fw.clients["beta"].id), fw.clients["beta"].secret),
    }
    answers = set()
    before = _failures(fw)
    for client_id, secret in attempts.values():
        answer = client.post(
            "/fhir/R4/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Basic")
        assert answer.headers["cache-control"] == "no-store"
        answers.add(answer.content)
    assert answers == {
        b'{"error":"invalid_client","error_description":"Client authentication failed."}'
    }
    # The disabled client's live token stopped working at once.
    refused = fhir_get(client, bearer, f"/fhir/R4/Patient/{fw.patient('today')}")
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    failures = [event for event in _failures(fw) if event.id not in {e.id for e in before}]
    assert len(failures) == len(attempts)
    assert all(lis.secret not in repr(event.__dict__) for event in failures)


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({}, 400, "invalid_request"),
        ({"grant_type": "client_credentials", "scope": "user/Patient.read"}, 400, "invalid_scope"),
        ({"grant_type": "client_credentials", "scope": "system/Patient.sr"}, 400, "invalid_scope"),
        (
            {"grant_type": "client_credentials", "scope": "system/Invoice.read"},
            400,
            "invalid_scope",
        ),
        (
            {"grant_type": "client_credentials", "scope": "system/Observation.write"},
            400,
            "invalid_scope",
        ),
    ],
)
def test_token_errors_follow_rfc_6749(
    client: TestClient, fw: FhirWorld, form: dict[str, str], status: int, error: str
) -> None:
    reader = fw.clients["reader"]  # registered for reads only: a write scope is refused
    answer = client.post(
        "/fhir/R4/auth/token",
        data={**form, "client_id": str(reader.id), "client_secret": reader.secret},
    )
    assert answer.status_code == status
    assert answer.json()["error"] == error


def test_an_expired_or_unknown_token_is_refused_with_a_challenge(
    client: TestClient, fw: FhirWorld
) -> None:
    bearer = token(client, fw.clients["lis"])
    url = f"/fhir/R4/Patient/{fw.patient('today')}"
    assert fhir_get(client, bearer, url).status_code == 200
    with transaction(fw.world.sessions) as session:
        session.execute(
            update(ServiceToken)
            .where(ServiceToken.token_digest == token_digest(bearer))
            .values(expires_at=utcnow() - dt.timedelta(seconds=1))
        )
    for presented in (bearer, "x" * 43, ""):
        answer = fhir_get(client, presented, url)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith('Bearer realm="labvault-fhir"')
        assert answer.json()["resourceType"] == "OperationOutcome"
    no_header = client.get(url)
    assert no_header.status_code == 401
    assert no_header.headers["www-authenticate"] == 'Bearer realm="labvault-fhir"'


def test_a_new_secret_revokes_the_live_tokens(client: TestClient, fw: FhirWorld) -> None:
    """Rotating a leaked secret must cut off the thief's tokens too, as disabling does."""
    credentials = _register(
        fw.runtime, fw.world.tenant, "Rotation", "fhir", ["Alpha Centre"], ALL_READS
    )
    bearer = token(client, credentials)
    url = f"/fhir/R4/Patient/{fw.patient('today')}"
    assert fhir_get(client, bearer, url).status_code == 200
    with transaction(fw.world.sessions) as session:
        registry = ServiceClientRegistry(
            session,
            fw.world.tenant,
            AuditTrail(session, SystemPrincipal("test:fhir")),
            CHEAP_HASHER,
        )
        issued = registry.new_secret(str(credentials.id))
    assert fhir_get(client, bearer, url).status_code == 401
    credentials.secret = issued.secret.reveal()
    assert fhir_get(client, token(client, credentials), url).status_code == 200


def test_bodies_wait_for_the_token_and_stop_at_the_limit(
    client: TestClient, fw: FhirWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An anonymous caller gets its 401 before any body is read or parsed; a body past the
    limit is given up as it streams in (no Content-Length to trust)."""
    for path, media in (
        ("/fhir/R4/Patient/_search", "application/json"),
        ("/fhir/R4", "application/fhir+json"),
    ):
        answer = client.post(
            path,
            content=b"{not json" * 100,
            headers={"Authorization": "Bearer " + "x" * 43, "Content-Type": media},
        )
        assert answer.status_code == 401, path
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    bearer = token(client, fw.clients["other"])  # "lis" has its tokens a minute
    monkeypatch.setattr(fhir_routes, "MAX_BUNDLE_BYTES", 1024)

    def chunks(size: int) -> Iterator[bytes]:
        for _ in range(size // 256):
            yield b" " * 256

    for path, media, limit in (
        ("/fhir/R4", "application/fhir+json", 1024),
        ("/fhir/R4/Patient/_search", "application/x-www-form-urlencoded", 8 * 1024),
    ):
        answer = client.post(
            path,
            content=chunks(limit + 512),
            headers={"Authorization": f"Bearer {bearer}", "Content-Type": media},
        )
        assert answer.status_code == 413, path
        assert answer.json()["resourceType"] == "OperationOutcome"


def test_the_token_endpoint_is_rate_limited_before_any_hashing(
    client: TestClient, fw: FhirWorld
) -> None:
    form = {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}
    codes = [client.post("/fhir/R4/auth/token", data=form).status_code for _ in range(21)]
    assert codes[:20] == [401] * 20
    assert codes[20] == 429


# --- scopes and the policy -------------------------------------------------------------------


def test_a_token_without_the_scope_gets_403(client: TestClient, fw: FhirWorld) -> None:
    bearer = token(client, fw.clients["lis"], "system/Location.read")
    answer = fhir_get(client, bearer, f"/fhir/R4/Patient/{fw.patient('today')}")
    assert answer.status_code == 403
    assert answer.json()["issue"][0]["code"] == "forbidden"
    assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
    searched = fhir_search(
        client, bearer, "DiagnosticReport", {"patient": str(fw.patient("today"))}
    )
    assert searched.status_code == 403
    assert fhir_get(client, bearer, "/fhir/R4/Location").status_code == 200


def test_a_patient_reads_identity_and_ins_never_contact(client: TestClient, fw: FhirWorld) -> None:
    bearer = token(client, fw.clients["lis"])
    answer = fhir_get(client, bearer, f"/fhir/R4/Patient/{fw.patient('today')}")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/fhir+json")
    assert answer.headers["cache-control"] == "no-store"
    patient = answer.json()
    person = fw.world.inputs["today"]
    assert person.nir is not None
    assert patient["identifier"] == [
        {
            "use": "official",
            "type": {
                "coding": [
                    {
                        "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
                        "code": "INS-NIR-TEST",
                    }
                ]
            },
            "system": "urn:oid:1.2.250.1.213.1.4.10",
            "value": person.nir.compact,
        }
    ]
    assert patient["name"][0]["family"] == person.birth_name
    assert patient["gender"] in {"male", "female"}
    assert "telecom" not in patient
    assert "address" not in patient


def test_records_out_of_the_client_s_reach_are_404(client: TestClient, fw: FhirWorld) -> None:
    bearer = token(client, fw.clients["lis"])
    for name in ("45_days_ago", "in_45_days", "other_site", "cancelled"):
        answer = fhir_get(client, bearer, f"/fhir/R4/Patient/{fw.patient(name)}")
        assert answer.status_code == 404, name
    foreign = fhir_get(client, bearer, f"/fhir/R4/Patient/{fw.world.foreign_patient}")
    unknown = fhir_get(client, bearer, f"/fhir/R4/Patient/{uuid.uuid4()}")
    malformed = fhir_get(client, bearer, "/fhir/R4/Patient/robert")
    assert {foreign.status_code, unknown.status_code, malformed.status_code} == {404}
    assert foreign.content == unknown.content == malformed.content
    annex = token(client, fw.clients["annex"])
    assert (
        fhir_get(client, annex, f"/fhir/R4/Patient/{fw.patient('other_site')}").status_code == 200
    )
    assert fhir_get(client, annex, f"/fhir/R4/Patient/{fw.patient('today')}").status_code == 404


def test_another_tenant_s_token_and_resources_are_never_reached(
    client: TestClient, fw: FhirWorld
) -> None:
    """The deployment serves tenant A: tenant B's client has no token here, and a token row
    of tenant B presented here is unknown."""
    beta = fw.clients["beta"]
    refused = client.post(
        "/fhir/R4/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": str(beta.id),
            "client_secret": beta.secret,
        },
    )
    assert refused.status_code == 401
    planted = "planted-token-of-tenant-b-000000000000000"
    with transaction(fw.runtime.tenant_sessions(fw.world.other_tenant)) as session:
        session.add(
            ServiceToken(
                tenant_id=fw.world.other_tenant,
                client_id=beta.id,
                token_digest=token_digest(planted),
                scopes="system/Patient.read",
                expires_at=utcnow() + dt.timedelta(minutes=5),
            )
        )
    assert (
        fhir_get(client, planted, f"/fhir/R4/Patient/{fw.world.foreign_patient}").status_code == 401
    )
    bearer = token(client, fw.clients["lis"])
    nir = fw.world.inputs["today"].nir
    assert nir is not None
    locations = fhir_get(client, bearer, "/fhir/R4/Location").json()
    assert sorted(e["resource"]["name"] for e in locations["entry"]) == [
        "Alpha Centre",
        "Alpha Nord",
    ]


# --- searches ----------------------------------------------------------------------------------


def test_search_by_ins_finds_the_patient_in_scope_only(client: TestClient, fw: FhirWorld) -> None:
    bearer = token(client, fw.clients["lis"])
    for name, expected in (("today", 1), ("45_days_ago", 0), ("other_site", 0)):
        nir = fw.world.inputs[name].nir
        assert nir is not None
        answer = fhir_search(
            client, bearer, "Patient", {"identifier": f"urn:oid:1.2.250.1.213.1.4.10|{nir.compact}"}
        )
        assert answer.status_code == 200
        bundle = answer.json()
        assert bundle["type"] == "searchset"
        assert bundle["total"] == expected
        assert entry_ids(bundle) == ([str(fw.patient(name))] if expected else [])
        assert nir.compact not in str(bundle["link"]), "the NIR must not be put in a URL"
    nir = fw.world.inputs["today"].nir
    assert nir is not None
    # An identifier (a NIR) in a URL lands in proxy logs: refused, pointing to POST _search.
    by_get = fhir_get(
        client,
        bearer,
        "/fhir/R4/Patient",
        params={"identifier": f"urn:oid:1.2.250.1.213.1.4.10|{nir.compact}"},
    )
    assert by_get.status_code == 400
    assert by_get.json()["resourceType"] == "OperationOutcome"
    assert "/fhir/R4/Patient/_search" in by_get.text
    assert nir.compact not in by_get.text
    other_oid = fhir_search(
        client, bearer, "Patient", {"identifier": f"urn:oid:1.2.250.1.213.1.4.8|{nir.compact}"}
    )
    assert other_oid.json()["total"] == 0, "a test INS is not the real one"
    for bad in ({}, {"identifier": "1234"}, {"identifier": "urn:oid:1.2.3|1"}, {"name": "x"}):
        refused = fhir_search(client, bearer, "Patient", bad)
        assert refused.status_code == 400, bad
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert nir.compact not in refused.text


def test_results_a_client_sees_only_the_orders_it_sent(client: TestClient, fw: FhirWorld) -> None:
    """A released report sent by another system stays out of reach: a client in
    relationship with a patient (one pushed result suffices) must not read their history."""
    lis = token(client, fw.clients["lis"])
    other = token(client, fw.clients["other"])
    seen: dict[str, dict[str, list[str]]] = {}
    for label, bearer in (("lis", lis), ("other", other)):
        seen[label] = {}
        for name in ("today", "tomorrow", "in_20_days"):
            bundle = fhir_search(
                client, bearer, "DiagnosticReport", {"patient": f"Patient/{fw.patient(name)}"}
            ).json()
            seen[label][name] = entry_ids(bundle)
    reports = {name: str(report) for name, report in fw.reports.items()}
    assert seen["lis"] == {"today": [reports["today"]], "tomorrow": [], "in_20_days": []}
    assert seen["other"] == {
        "today": [],
        "tomorrow": [reports["tomorrow"]],
        "in_20_days": [reports["in_20_days"]],
    }
    for report in (reports["in_20_days"], reports["tomorrow"]):
        for kind in ("DiagnosticReport", "DocumentReference"):
            hidden = fhir_get(client, lis, f"/fhir/R4/{kind}/{report}")
            assert hidden.status_code == 404, (kind, report)
    patient = f"Patient/{fw.patient('tomorrow')}"
    for kind in ("Observation", "ServiceRequest", "DocumentReference"):
        assert fhir_search(client, lis, kind, {"patient": patient}).json()["total"] == 0, kind


def test_every_result_resource_reads_and_validates(client: TestClient, fw: FhirWorld) -> None:
    bearer = token(client, fw.clients["lis"])
    report_id = fw.reports["today"]
    report = fhir_get(client, bearer, f"/fhir/R4/DiagnosticReport/{report_id}").json()
    assert report["status"] == "preliminary"  # still to validate by a biologist
    assert report["subject"] == {"reference": f"Patient/{fw.patient('today')}"}
    observation_refs = [ref["reference"] for ref in report["result"]]
    assert len(observation_refs) == 2
    glucose = fhir_get(client, bearer, f"/fhir/R4/{observation_refs[0]}").json()
    assert glucose["valueQuantity"] == {"value": float(GLUCOSE), "unit": "mmol/L"}
    assert glucose["code"]["coding"][0] == {
        "code": "2345-7",
        "system": "http://loinc.org",
        "display": "Glucose",
    }
    hemoglobin = fhir_get(client, bearer, f"/fhir/R4/{observation_refs[1]}").json()
    assert hemoglobin["status"] == "corrected"
    assert hemoglobin["valueString"] == "13,7 g/dL"
    assert hemoglobin["interpretation"][1] == {"text": "??"}
    order = fhir_get(client, bearer, f"/fhir/R4/{report['basedOn'][0]['reference']}").json()
    assert order["status"] == "active"
    assert order["requester"]["display"] == "Dr Martin"
    document = fhir_get(client, bearer, f"/fhir/R4/DocumentReference/{report_id}").json()
    assert base64.b64decode(document["content"][0]["attachment"]["data"]) == PDF
    patient = f"Patient/{fw.patient('today')}"
    for kind in ("Observation", "ServiceRequest", "DocumentReference", "Appointment"):
        bundle = fhir_search(client, bearer, kind, {"patient": patient}).json()
        assert bundle["total"] >= 1, kind
    for kind in ("Location", "Schedule"):
        assert fhir_get(client, bearer, f"/fhir/R4/{kind}").status_code == 200
    metadata = client.get("/fhir/R4/metadata")
    assert metadata.status_code == 200
    check_resource(metadata.json())


def test_paging_is_bounded(client: TestClient, fw: FhirWorld) -> None:
    bearer = token(client, fw.clients["lis"])
    patient = f"Patient/{fw.patient('today')}"
    first = fhir_search(client, bearer, "Observation", {"patient": patient, "_count": "1"}).json()
    assert first["total"] == 2
    assert len(first["entry"]) == 1
    follow = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = fhir_get(
        client, bearer, follow.replace(ORIGIN, "").replace("http://localhost:8000", "")
    )
    assert len(second.json()["entry"]) == 1
    assert entry_ids(second.json()) != entry_ids(first)
    too_many = fhir_search(client, bearer, "Observation", {"patient": patient, "_count": "51"})
    assert too_many.status_code == 400


def test_reads_are_audited_as_the_client(client: TestClient, fw: FhirWorld) -> None:
    lis = fw.clients["lis"]
    bearer = token(client, lis)
    fhir_get(client, bearer, f"/fhir/R4/DiagnosticReport/{fw.reports['today']}")
    appointments = fhir_search(client, bearer, "Appointment", {"patient": str(fw.patient("today"))})
    assert appointments.json()["total"] == 1
    with fw.world.sessions() as session:
        events = list(
            session.scalars(
                select(AuditEvent).where(
                    AuditEvent.actor_id == f"service:{lis.id}",
                    AuditEvent.target_id == fw.patient("today"),
                )
            )
        )
    actions = {event.action for event in events}
    assert AuditAction.PATIENT_RECORD_READ.value in actions or any(
        a.endswith(":read") for a in actions
    )
    assert AuditAction.FHIR_RESOURCE_READ.value in actions
    assert all(event.actor_role == "lis" for event in events)


# --- results pushed as FHIR ----------------------------------------------------------------------


def _push(client: TestClient, bearer: str, document: object) -> Response:
    answer = client.post(
        "/fhir/R4",
        content=json.dumps(document),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/fhir+json"},
    )
    if answer.headers.get("content-type", "").startswith("application/fhir+json"):
        check_resource(answer.json())
    return answer


def _report_count(fw: FhirWorld) -> int:
    with fw.world.sessions() as session:
        return len(list(session.scalars(select(ResultReport.id))))


def test_a_pushed_bundle_is_stored_once_and_reads_back(client: TestClient, fw: FhirWorld) -> None:
    bearer = token(client, fw.clients["lis"])
    document = result_bundle(fw.world.inputs["earlier_today"], "BUNDLE-1")
    document["entry"][2]["resource"]["note"] = [{"text": MARKER}]
    answer = _push(client, bearer, document)
    assert answer.status_code == 202, answer.text
    assert "location" not in answer.headers
    found = fhir_search(
        client, bearer, "DiagnosticReport", {"patient": str(fw.patient("earlier_today"))}
    ).json()
    (entry,) = found["entry"]
    report = entry["resource"]
    assert report["status"] == "preliminary"  # a biologist validates it first
    assert report["subject"] == {"reference": f"Patient/{fw.patient('earlier_today')}"}
    observation = fhir_get(client, bearer, f"/fhir/R4/{report['result'][0]['reference']}").json()
    assert observation["valueQuantity"]["value"] == 7.77
    assert observation["referenceRange"] == [{"text": "4.1-5.9"}]
    again = _push(client, bearer, document)
    assert (again.status_code, again.json()) == (answer.status_code, answer.json())
    # Nothing the bundle carried is in clear at rest (I1): its marker note, its exam name.
    url = fw.runtime.settings.database_url or ""
    if url.startswith("sqlite"):
        blob = b"".join(path.read_bytes() for path in sqlite_files(url))
    else:
        blob = pg_dump(url)
    assert leaked(blob, [MARKER, "Glycémie", "F-BUNDLE-1"]) == []
    assert (
        fhir_search(
            client, bearer, "DiagnosticReport", {"patient": str(fw.patient("earlier_today"))}
        ).json()["total"]
        == 1
    )


def test_a_pushed_bundle_for_nobody_known_waits_in_the_queue(
    client: TestClient, fw: FhirWorld
) -> None:
    bearer = token(client, fw.clients["lis"])
    stranger = fw.world.inputs["29_days_ago"].model_copy(update={"birth_name": "INCONNU"})
    before = _report_count(fw)
    answer = _push(client, bearer, result_bundle(stranger, "BUNDLE-2"))
    assert answer.status_code == 202
    assert _report_count(fw) == before, "never attached to a guessed patient"


def _last_message(fw: FhirWorld) -> ResultMessage:
    with fw.world.sessions() as session:
        return session.scalars(
            select(ResultMessage).order_by(ResultMessage.received_at.desc()).limit(1)
        ).one()


def test_a_push_answers_the_same_and_traits_alone_open_nothing(
    client: TestClient, fw: FhirWorld
) -> None:
    """Attached, queued or duplicate: one answer (else a push is an oracle of who is a
    patient). Traits alone (no INS) attach only to a record already in the sender's care;
    otherwise the result waits for a person and the record stays out of the sender's reach."""
    bearer = token(client, fw.clients["other"])  # "lis" has its tokens a minute

    def traits_only(name: str, control_id: str) -> dict[str, Any]:
        document = result_bundle(fw.world.inputs[name], control_id)
        document["entry"][0]["resource"].pop("identifier")
        document["entry"][0]["request"].pop("ifNoneExist")
        return document

    stranger = fw.patient("no_appointment")
    assert fhir_get(client, bearer, f"/fhir/R4/Patient/{stranger}").status_code == 404
    answers = []
    for document, status, reason in (
        (traits_only("no_appointment", "TRAITS-1"), "queued", "traits-only"),
        (traits_only("29_days_ago", "TRAITS-2"), "attached", None),
    ):
        answer = _push(client, bearer, document)
        answers.append((answer.status_code, answer.json(), answer.headers.get("location")))
        message = _last_message(fw)
        assert (message.status, message.queue_reason) == (status, reason)
        again = _push(client, bearer, document)  # a duplicate
        answers.append((again.status_code, again.json(), again.headers.get("location")))
    assert answers == [answers[0]] * 4
    assert answers[0][0] == 202
    assert str(stranger) not in json.dumps(answers)
    assert fhir_get(client, bearer, f"/fhir/R4/Patient/{stranger}").status_code == 404
    assert (
        fhir_search(client, bearer, "DiagnosticReport", {"patient": str(stranger)}).json()["total"]
        == 0
    )


def test_pushing_needs_the_write_scopes(client: TestClient, fw: FhirWorld) -> None:
    bearer = token(client, fw.clients["lis"], "system/DiagnosticReport.write system/Patient.read")
    answer = _push(client, bearer, result_bundle(fw.world.inputs["29_days_ago"], "BUNDLE-3"))
    assert answer.status_code == 403
    assert "system/Observation.c" in answer.headers["www-authenticate"]


def test_a_bad_bundle_is_refused_whole_without_quoting_it(
    client: TestClient, fw: FhirWorld
) -> None:
    bearer = token(client, fw.clients["lis"])
    person = fw.world.inputs["29_days_ago"]
    assert person.nir is not None
    good = result_bundle(person, "BUNDLE-4")
    no_patient = {**good, "entry": good["entry"][1:]}
    bad_status = copy.deepcopy(good)
    bad_status["entry"][2]["resource"]["status"] = "done"
    bad_value = copy.deepcopy(good)
    bad_value["entry"][2]["resource"]["valueQuantity"]["value"] = "beaucoup"
    dangling = copy.deepcopy(good)
    dangling["entry"][1]["resource"]["result"] = [{"reference": "urn:uuid:nowhere"}]
    not_transaction = {**good, "type": "collection"}
    before = _report_count(fw)
    for label, document in {
        "no patient": no_patient,
        "bad status": bad_status,
        "bad value": bad_value,
        "dangling": dangling,
        "collection": not_transaction,
        "not a bundle": [1, 2],
    }.items():
        answer = _push(client, bearer, document)
        assert answer.status_code == 400, (label, answer.text)
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert person.nir.compact not in answer.text
        assert person.birth_name not in answer.text
        assert "beaucoup" not in answer.text
    wrong_type = client.post(
        "/fhir/R4", content=b"{}", headers={"Authorization": f"Bearer {bearer}"}
    )
    assert wrong_type.status_code == 415
    assert _report_count(fw) == before


def test_sites_schedules_and_free_slots(client: TestClient, fw: FhirWorld) -> None:
    bearer = token(client, fw.clients["reader"], "system/Location.read")
    assert fhir_get(client, bearer, "/fhir/R4/Schedule").status_code == 403
    bearer = token(client, fw.clients["lis"])
    main = fw.world.sites["main"]
    schedules = fhir_get(client, bearer, "/fhir/R4/Schedule", params={"actor": f"Location/{main}"})
    assert entry_ids(schedules.json()) == [str(fw.schedule)]
    assert fhir_get(client, bearer, f"/fhir/R4/Location/{main}").json()["name"] == "Alpha Centre"
    tomorrow = (utcnow() + dt.timedelta(days=1)).date().isoformat()
    slots = fhir_get(
        client,
        bearer,
        "/fhir/R4/Slot",
        params={"schedule": f"Schedule/{fw.schedule}", "start": f"ge{tomorrow}", "_count": "3"},
    ).json()
    assert slots["total"] >= 7 * 36  # two boxes free in each 15-minute slot, 9 hours a day
    first = slots["entry"][0]["resource"]
    assert first["status"] == "free"
    again = fhir_get(client, bearer, f"/fhir/R4/Slot/{first['id']}")
    assert again.json() == first
    beyond_horizon = f"/fhir/R4/Slot/{fw.schedule}-209901010700"  # open hours, but in 2099
    assert fhir_get(client, bearer, beyond_horizon).status_code == 404
    assert (
        fhir_get(client, bearer, "/fhir/R4/Slot/nonsense").status_code == 404
    )  # beyond the horizon
    too_long = fhir_get(
        client,
        bearer,
        "/fhir/R4/Slot",
        params={"schedule": str(fw.schedule), "start": "le2099-01-01"},
    )
    assert too_long.status_code == 400


def test_unknown_fhir_paths_answer_an_operation_outcome(client: TestClient, fw: FhirWorld) -> None:
    bearer = token(client, fw.clients["lis"])
    for method, path in (
        ("GET", "/fhir/R4/Invoice"),
        ("DELETE", f"/fhir/R4/Patient/{uuid.uuid4()}"),
    ):
        answer = client.request(method, path, headers={"Authorization": f"Bearer {bearer}"})
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("application/fhir+json")
        check_resource(answer.json())
