"""The patient API over HTTP, for every role of the access world: records in scope with only
the granted fields, one 404 for absent / out of scope / not granted, the masked NIR and the
full one behind a step-up, staff search with its minimum specificity and pagination, contact
changes and the patient's access history."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from caller_world import (
    ORIGIN,
    PATIENT_OTHER,
    PATIENT_OWN,
    ROLES,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from labvault.app import create_app
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.runtime import Runtime
from labvault.patients.routes import mask_national_number

IDENTITY = {
    "birth_name",
    "used_name",
    "first_names",
    "birth_date",
    "sex",
    "birth_place_code",
    "identity_status",
}
INS = {"ins_number", "ins_oid"}
CONTACT = {"email", "phone", "address_line", "postal_code", "city"}


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    return build_caller_world(alpha)


@pytest.fixture
def client(alpha: Runtime, cw: CallerWorld) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as test_client:
        yield test_client


def search(client: TestClient, cw: CallerWorld, criteria: Mapping[str, object]) -> Response:
    """POST /api/v1/patients/search as the client's current caller (criteria in the body)."""
    return client.post(
        "/api/v1/patients/search",
        json=dict(criteria),
        headers={"X-CSRF-Token": cw.sessions[cw.current].csrf},
    )


def as_(client: TestClient, cw: CallerWorld, name: str) -> dict[str, str]:
    """Make ``name`` the client's caller; the headers of its unsafe requests."""
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    cw.current = name
    return {"X-CSRF-Token": cw.sessions[name].csrf}


def events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    with runtime.audit_sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


# --- one record ---------------------------------------------------------------------------


EXPECTED_FIELDS = {
    "receptionist": IDENTITY | INS | CONTACT,
    "biologist": IDENTITY | INS,
    "sampler": IDENTITY,
    PATIENT_OWN: IDENTITY | INS | CONTACT,
}


@pytest.mark.parametrize("name", ["receptionist", "biologist", "sampler", PATIENT_OWN])
def test_a_record_in_scope_carries_only_the_granted_fields(
    client: TestClient, cw: CallerWorld, name: str
) -> None:
    as_(client, cw, name)
    patient = cw.world.patients["today"]
    answer = client.get(f"/api/v1/patients/{patient}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"id"} | EXPECTED_FIELDS[name]
    assert body["id"] == str(patient)
    person = cw.world.inputs["today"]
    assert body["birth_name"] == person.birth_name
    if "ins_number" in body and person.nir is not None:
        assert body["ins_number"] == mask_national_number(person.nir.compact)
        assert person.nir.compact not in answer.text
        assert body["ins_number"].count("*") == 8


NOT_FOUND_CASES = [
    # (caller, record)
    ("receptionist", "45_days_ago"),
    ("receptionist", "other_site"),
    ("receptionist", "no_appointment"),
    ("sampler", "tomorrow"),
    ("biologist", "in_45_days"),
    ("organization_admin", "today"),
    ("security_officer", "today"),
    (PATIENT_OWN, "tomorrow"),
    (PATIENT_OTHER, "today"),
]


def test_absent_out_of_scope_and_not_granted_are_the_same_404(
    client: TestClient, cw: CallerWorld
) -> None:
    as_(client, cw, "receptionist")
    reference = client.get(f"/api/v1/patients/{uuid.uuid4()}")
    assert reference.status_code == 404
    for name, record in NOT_FOUND_CASES:
        as_(client, cw, name)
        for target in (cw.world.patients[record], cw.world.foreign_patient, uuid.uuid4()):
            answer = client.get(f"/api/v1/patients/{target}")
            assert answer.status_code == 404, (name, record)
            assert answer.content == reference.content, (name, record)
            assert answer.headers["content-type"] == reference.headers["content-type"]
    client.cookies.clear()
    anonymous = client.get(f"/api/v1/patients/{cw.world.patients['today']}")
    assert anonymous.status_code == 404
    assert anonymous.content == reference.content


def test_the_full_nir_needs_a_fresh_step_up_and_the_ins_grant(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    patient = cw.world.patients["today"]
    nir = cw.world.inputs["today"].nir
    assert nir is not None
    as_(client, cw, "receptionist")
    fresh = client.get(f"/api/v1/patients/{patient}/nir")
    assert fresh.status_code == 200, fresh.text
    assert fresh.json() == {"nir": nir.formatted()}
    assert fresh.headers["cache-control"] == "no-store"

    cw.age_second_factor("receptionist")
    stale = client.get(f"/api/v1/patients/{patient}/nir")
    assert stale.status_code == 403
    assert stale.json()["reason"] == "step_up_required"
    assert nir.compact not in stale.text
    assert events(alpha, AuditAction.ACCOUNT_STEP_UP_REQUIRED)

    as_(client, cw, "sampler")  # identity only: no INS fields, so no NIR at all
    assert client.get(f"/api/v1/patients/{patient}/nir").status_code == 404
    as_(client, cw, "receptionist")
    assert client.get(
        f"/api/v1/patients/{cw.world.patients['no_appointment']}/nir"
    ).status_code in (
        403,
        404,
    )


def test_reading_a_record_is_audited_as_the_caller(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    as_(client, cw, "biologist")
    patient = cw.world.patients["tomorrow"]
    assert client.get(f"/api/v1/patients/{patient}").status_code == 200
    reads = [
        e
        for e in events(alpha, AuditAction.PATIENT_RECORD_READ)
        if e.target_id == patient and e.actor_role == "biologist"
    ]
    assert len(reads) == 1
    assert reads[0].actor_id == str(cw.accounts["biologist"])


# --- search -----------------------------------------------------------------------------


def test_search_needs_exactly_one_complete_criterion(client: TestClient, cw: CallerWorld) -> None:
    as_(client, cw, "receptionist")
    person = cw.world.inputs["today"]
    too_little = [
        {},
        {"birth_name": person.birth_name},
        {"birth_name": person.birth_name, "birth_date": person.birth_date.isoformat()},
        {"first_name": person.first_given_name},
        {"nir": "   "},
        {"nir": "1234"},
        {"phone": "pas un numéro"},
        {
            "nir": person.nir.compact if person.nir else "",
            "birth_name": person.birth_name,
        },
        {
            "birth_name": person.birth_name,
            "first_name": person.first_given_name,
            "birth_date": "25/12/1990",
        },
    ]
    for params in too_little:
        answer = search(client, cw, params)
        assert answer.status_code == 422, params
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "items" not in answer.json()
    assert search(client, cw, {"nir": "x", "limit": 21}).status_code == 422


def test_search_finds_only_records_in_scope(client: TestClient, cw: CallerWorld) -> None:
    as_(client, cw, "receptionist")
    for name, found in (("today", True), ("no_appointment", False), ("45_days_ago", False)):
        person = cw.world.inputs[name]
        assert person.nir is not None
        by_nir = search(client, cw, {"nir": person.nir.formatted()})
        assert by_nir.status_code == 200, by_nir.text
        ids = [item["id"] for item in by_nir.json()["items"]]
        assert ids == ([str(cw.world.patients[name])] if found else []), name
        by_name = search(
            client,
            cw,
            {
                "birth_name": person.birth_name,
                "first_name": person.first_given_name,
                "birth_date": person.birth_date.isoformat(),
            },
        )
        assert [i["id"] for i in by_name.json()["items"]] == ids
    item = search(
        client,
        cw,
        {"nir": cw.world.inputs["today"].nir.compact},  # type: ignore[union-attr]
    ).json()["items"][0]
    assert set(item) == {"id"} | IDENTITY | INS | CONTACT
    assert "*" in item["ins_number"]


@pytest.mark.parametrize("name", ["sampler", "organization_admin", "security_officer", PATIENT_OWN])
def test_roles_without_search_get_404(client: TestClient, cw: CallerWorld, name: str) -> None:
    as_(client, cw, name)
    person = cw.world.inputs["today"]
    assert person.nir is not None
    answer = search(client, cw, {"nir": person.nir.compact})
    assert answer.status_code == 404


def test_search_is_paginated_with_a_cursor(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    # Five records in scope share one phone number: pages of two, then the rest.
    from labvault.core.access.principals import SystemPrincipal
    from labvault.core.crypto.keyring import TenantKeyring
    from labvault.core.db import transaction
    from labvault.patients.schemas import ContactUpdate
    from labvault.patients.services import PatientRepository

    names = ["today", "earlier_today", "tomorrow", "in_20_days", "no_appointment"]
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(
            session, alpha.key_provider, cw.world.tenant, SystemPrincipal("test:phones")
        )
        repository = PatientRepository(session, keyring)
        for name in names:
            repository.update_contact(
                cw.world.patients[name],
                ContactUpdate(phone="06 12 34 56 78"),
                purpose="test",
            )
    as_(client, cw, "receptionist")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"phone": "+33612345678", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = search(client, cw, params).json()
        pages += 1
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        assert page["capped"] is False
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 2
    in_scope = {str(cw.world.patients[n]) for n in names if n != "no_appointment"}
    assert len(seen) == len(set(seen)) == 4
    assert set(seen) == in_scope
    bad = search(client, cw, {"phone": "+33612345678", "cursor": "AAAA"})
    assert bad.status_code == 422


# --- contact --------------------------------------------------------------------------------


def test_contact_change_needs_a_step_up_and_the_update_grant(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    patient = cw.world.patients["today"]
    change = {"phone": "0601020304"}
    for name in ("sampler", "biologist", "organization_admin", "security_officer", PATIENT_OTHER):
        headers = as_(client, cw, name)
        answer = client.patch(f"/api/v1/patients/{patient}/contact", json=change, headers=headers)
        assert answer.status_code == 404, name
    headers = as_(client, cw, "receptionist")
    outside = cw.world.patients["no_appointment"]
    answer = client.patch(f"/api/v1/patients/{outside}/contact", json=change, headers=headers)
    assert answer.status_code == 404
    no_csrf = client.patch(f"/api/v1/patients/{patient}/contact", json=change)
    assert no_csrf.status_code == 403
    empty = client.patch(f"/api/v1/patients/{patient}/contact", json={}, headers=headers)
    assert empty.status_code == 422
    bad = client.patch(
        f"/api/v1/patients/{patient}/contact", json={"email": "pas une adresse"}, headers=headers
    )
    assert bad.status_code == 422

    cw.age_second_factor("receptionist")
    stale = client.patch(f"/api/v1/patients/{patient}/contact", json=change, headers=headers)
    assert stale.status_code == 403
    assert stale.json()["reason"] == "step_up_required"
    assert client.get(f"/api/v1/patients/{patient}").json()["phone"] != "+33601020304"

    headers = as_(client, cw, PATIENT_OWN)
    done = client.patch(f"/api/v1/patients/{patient}/contact", json=change, headers=headers)
    assert done.status_code == 200, done.text
    assert done.json()["phone"] == "+33601020304"
    assert client.get(f"/api/v1/patients/{patient}").json()["phone"] == "+33601020304"
    updates = events(alpha, AuditAction.PATIENT_CONTACT_UPDATE)
    assert [e.actor_id for e in updates if e.target_id == patient] == [
        str(cw.accounts[PATIENT_OWN])
    ]


def test_a_patient_reaches_a_minor_dependent_but_not_an_adult_one(
    client: TestClient, cw: CallerWorld
) -> None:
    import datetime as dt

    minors = [
        n
        for n, p in cw.world.inputs.items()
        if (dt.date.today() - p.birth_date).days < 17 * 365 and n != "today"
    ]
    adults = [
        n
        for n, p in cw.world.inputs.items()
        if (dt.date.today() - p.birth_date).days > 19 * 365 and n not in ("today", "no_appointment")
    ]
    assert adults
    adult = cw.world.patients[adults[0]]
    cw.add_dependent(PATIENT_OWN, adult)
    as_(client, cw, PATIENT_OWN)
    assert client.get(f"/api/v1/patients/{adult}").status_code == 404
    if minors:
        minor = cw.world.patients[minors[0]]
        cw.add_dependent(PATIENT_OWN, minor)
        assert client.get(f"/api/v1/patients/{minor}").status_code == 200


# --- access history -----------------------------------------------------------------------


def test_the_patient_reads_its_access_history_and_nobody_else_does(
    client: TestClient, cw: CallerWorld
) -> None:
    patient = cw.world.patients["today"]
    as_(client, cw, "receptionist")
    assert client.get(f"/api/v1/patients/{patient}").status_code == 200
    for name in (*ROLES, PATIENT_OTHER):
        as_(client, cw, name)
        assert client.get(f"/api/v1/patients/{patient}/access-history").status_code == 404, name
    as_(client, cw, PATIENT_OWN)
    answer = client.get(f"/api/v1/patients/{patient}/access-history")
    assert answer.status_code == 200, answer.text
    entries = answer.json()
    assert any(e["role"] == "Secrétariat" for e in entries)
    assert all("@" not in str(e) for e in entries)


def test_the_patient_routes_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert set(paths["/api/v1/patients/{patient_id}"]["get"]["responses"]) >= {"200", "404"}
    assert "403" in paths["/api/v1/patients/{patient_id}/nir"]["get"]["responses"]
    assert "422" in paths["/api/v1/patients/search"]["post"]["responses"]
    assert "/api/v1/patients" not in paths, "identifiers never travel in a URL"
    assert "patch" in paths["/api/v1/patients/{patient_id}/contact"]
    assert "/api/v1/patients/{patient_id}/access-history" in paths
