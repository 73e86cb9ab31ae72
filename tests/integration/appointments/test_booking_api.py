"""The booking API over HTTP: sites, catalog and slot search; hold then confirm; the slot
taken meanwhile (409); hostile input (past slots, dates given as 0 or "0", unknown or other
tenant's sites and exams, markup) answered 422 with nothing written; another patient's
appointment and roles that may not book (one 404); a guardian booking for a minor; the
patient's change deadline; reschedule and cancel; home visits."""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Iterator
from typing import Any

import pytest
from booking_world import BookingWorld, build_booking_world, next_slot
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from caller_world import (
    ORIGIN,
    PATIENT_OTHER,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from labvault.app import create_app
from labvault.appointments.models import Appointment, SlotClaim
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
HOLDS = "/api/v1/appointments/holds"


def tomorrow() -> dt.date:
    return (utcnow().astimezone(PARIS) + dt.timedelta(days=1)).date()


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    return build_caller_world(alpha)


@pytest.fixture
def bw(alpha: Runtime, cw: CallerWorld) -> BookingWorld:
    return build_booking_world(alpha, cw.world)


@pytest.fixture
def client(alpha: Runtime, cw: CallerWorld, bw: BookingWorld) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as test_client:
        yield test_client


def as_(client: TestClient, cw: CallerWorld, name: str) -> dict[str, str]:
    """Make ``name`` the client's caller; the headers of its unsafe requests."""
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    cw.current = name
    return {"X-CSRF-Token": cw.sessions[name].csrf}


def counts(bw: BookingWorld) -> tuple[int, int]:
    with transaction(bw.world.sessions) as session:
        return (
            session.scalar(select(func.count()).select_from(Appointment)) or 0,
            session.scalar(select(func.count()).select_from(SlotClaim)) or 0,
        )


def hold_body(bw: BookingWorld, patient: uuid.UUID, **changes: Any) -> dict[str, Any]:
    return {
        "patient_id": str(patient),
        "site_id": str(bw.main),
        "exam_ids": [str(bw.exams["glucose"])],
        "starts_at": next_slot(tomorrow(), 9).isoformat(),
        **changes,
    }


def hold(client: TestClient, headers: dict[str, str], body: dict[str, Any]) -> Response:
    return client.post(HOLDS, json=body, headers=headers)


def problem_of(answer: Response) -> dict[str, Any]:
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_sites_catalog_and_slot_search(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    headers = as_(client, cw, PATIENT_OWN)
    sites = client.get("/api/v1/sites")
    assert sites.status_code == 200
    assert {site["id"] for site in sites.json()} == {str(bw.main), str(bw.annex)}
    exams = client.get("/api/v1/exams").json()
    assert str(bw.exams["retired"]) not in {exam["id"] for exam in exams}
    cortisol = next(exam for exam in exams if exam["id"] == str(bw.exams["cortisol"]))
    assert cortisol["window"] == ["07:00", "10:00"]

    day = tomorrow().isoformat()
    url = f"/api/v1/sites/{bw.main}/slots/search"

    def search(target: str, body: object) -> Response:
        return client.post(target, json=body, headers=headers)

    found = search(url, {"from": day, "to": day, "exam_ids": [str(bw.exams["cortisol"])]})
    assert found.status_code == 200, found.text
    starts = [dt.datetime.fromisoformat(slot["starts_at"]) for slot in found.json()]
    assert starts[0] == next_slot(tomorrow(), 7)
    assert starts[-1] == next_slot(tomorrow(), 9, 45)
    assert {slot["capacity"] for slot in found.json()} == {1}

    glucose = [str(bw.exams["glucose"])]
    for body, message in [
        ({"from": "0", "exam_ids": glucose}, "from : date invalide"),
        ({"from": day, "to": "0", "exam_ids": glucose}, "to : date invalide"),
        ({"from": "2026-13-01", "exam_ids": glucose}, "date invalide"),
        ({"from": "01/12/2026", "exam_ids": glucose}, "date invalide"),
        ({"from": day, "to": "2000-01-01", "exam_ids": glucose}, "précède"),
        (
            {
                "from": day,
                "to": (tomorrow() + dt.timedelta(days=40)).isoformat(),
                "exam_ids": glucose,
            },
            "au plus 31 jours",
        ),
        ({"from": day, "exam_ids": [str(bw.foreign_exam)]}, "Examen introuvable"),
        ({"from": day, "exam_ids": [str(bw.exams["urine"])]}, "sans rendez-vous"),
    ]:
        answer = search(url, body)
        assert answer.status_code == 422, (body, answer.text)
        assert message in problem_of(answer)["detail"]
    for bad in [
        {"exam_ids": ["0"]},
        {"exam_ids": []},  # no exam at all
        {},
        {"exam_ids": glucose, "from": 20261201},  # a date is a JSON string
        {"exam_ids": glucose, "exam": glucose},  # unknown field
        {"exam_ids": glucose * 21},
    ]:
        assert search(url, bad).status_code == 422, bad
    # The old query-string search is gone: exams never travel in a URL.
    assert client.get(f"/api/v1/sites/{bw.main}/slots", params={"exam": glucose}).status_code in (
        404,
        405,
    )
    for site in (bw.foreign_site, bw.bare_site, uuid.uuid4()):
        answer = search(f"/api/v1/sites/{site}/slots/search", {"exam_ids": glucose})
        assert answer.status_code == 404
    client.cookies.clear()
    assert client.post(url, json={"exam_ids": glucose}).status_code == 404
    assert client.get("/api/v1/sites").status_code == 401


def test_hold_confirm_and_the_slot_taken_meanwhile(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    mine, theirs = cw.world.patients["today"], cw.world.patients["no_appointment"]
    headers = as_(client, cw, PATIENT_OWN)
    held = hold(client, headers, hold_body(bw, mine))
    assert held.status_code == 201, held.text
    body = held.json()
    assert body["status"] == "held"
    assert body["exam_ids"] == [str(bw.exams["glucose"])]
    assert held.headers["cache-control"] == "no-store"
    appointment = body["id"]

    other = as_(client, cw, PATIENT_OTHER)
    taken = hold(client, other, hold_body(bw, theirs))
    assert taken.status_code == 409
    assert problem_of(taken)["code"] == "slot_taken"
    assert problem_of(taken)["detail"] == "Ce créneau vient d'être pris. Choisissez-en un autre."
    # Another patient's appointment does not exist for this account.
    for method, url in [
        ("GET", f"/api/v1/appointments/{appointment}"),
        ("POST", f"/api/v1/appointments/{appointment}/confirm"),
        ("POST", f"/api/v1/appointments/{appointment}/cancel"),
    ]:
        assert client.request(method, url, headers=other).status_code == 404
    assert client.get("/api/v1/appointments", params={"patient_id": str(mine)}).status_code == 404

    headers = as_(client, cw, PATIENT_OWN)
    confirmed = client.post(f"/api/v1/appointments/{appointment}/confirm", headers=headers)
    assert confirmed.status_code == 200
    assert confirmed.json()["status"] == "booked"
    listed = client.get("/api/v1/appointments").json()
    assert appointment in {item["id"] for item in listed}
    assert client.get(f"/api/v1/appointments/{appointment}").json()["status"] == "booked"
    # Without the CSRF header, nothing happens.
    assert client.post(f"/api/v1/appointments/{appointment}/cancel").status_code == 403


@pytest.mark.parametrize(
    "changes",
    [
        {"starts_at": "0"},
        {"starts_at": 0},
        {"starts_at": "2020-01-01T09:00:00+01:00"},
        {"starts_at": "2026-12-01T09:00:00"},  # no time zone
        {"starts_at": "demain 9h"},
        {"starts_at": "9999-12-31T23:00:00-05:00"},  # overflows in UTC (was a 500)
        {"starts_at": "0001-01-01T00:00:00+01:00"},
        {"starts_at": "next"},  # replaced below by a time that is not a slot start
        {"site_id": "0"},
        {"site_id": "unknown"},
        {"site_id": "foreign"},
        {"site_id": "bare"},
        {"exam_ids": []},
        {"exam_ids": ["0"]},
        {"exam_ids": "unknown"},
        {"exam_ids": "foreign"},
        {"exam_ids": "retired"},
        {"exam_ids": "urine"},
        {"patient_id": 0},
        {"note": "<script>alert(1)</script>"},
    ],
    ids=lambda changes: "-".join(f"{k}={v}" for k, v in changes.items()),
)
def test_hostile_holds_are_refused_with_nothing_written(
    client: TestClient, cw: CallerWorld, bw: BookingWorld, changes: dict[str, Any]
) -> None:
    named = {
        "unknown": str(uuid.uuid4()),
        "foreign": str(bw.foreign_site),
        "bare": str(bw.bare_site),
    }
    if changes.get("starts_at") == "next":
        changes = {"starts_at": next_slot(tomorrow(), 9, 7).isoformat()}
    if changes.get("site_id") in named:
        changes = {"site_id": named[changes["site_id"]]}
    if isinstance(changes.get("exam_ids"), str):
        exam = {"unknown": uuid.uuid4(), "foreign": bw.foreign_exam}.get(
            changes["exam_ids"], bw.exams.get(changes["exam_ids"])
        )
        changes = {"exam_ids": [str(exam)]}
    headers = as_(client, cw, PATIENT_OWN)
    before = counts(bw)
    answer = hold(client, headers, hold_body(bw, cw.world.patients["today"], **changes))
    assert answer.status_code == 422, answer.text
    problem_of(answer)
    assert counts(bw) == before


def test_only_patients_in_scope_and_roles_that_book(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    """Patients: own records and minors they act for; the desk: patients of its sites."""
    before = counts(bw)
    headers = as_(client, cw, PATIENT_OWN)
    for patient in (cw.world.patients["no_appointment"], cw.world.foreign_patient, uuid.uuid4()):
        assert hold(client, headers, hold_body(bw, patient)).status_code == 404
    for role in ("sampler", "biologist", "organization_admin", "security_officer"):
        headers = as_(client, cw, role)
        assert hold(client, headers, hold_body(bw, cw.world.patients["today"])).status_code == 404
    assert counts(bw) == before
    with transaction(bw.runtime.audit_sessions) as session:
        refused = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == AuditAction.APPOINTMENT_BOOKING_REFUSED.value)
        )
    assert refused == 7

    headers = as_(client, cw, "receptionist")
    desk = hold(client, headers, hold_body(bw, cw.world.patients["tomorrow"]))
    assert desk.status_code == 201
    listed = client.get(
        "/api/v1/appointments", params={"patient_id": str(cw.world.patients["tomorrow"])}
    )
    assert [item["id"] for item in listed.json() if item["status"] == "held"] == [desk.json()["id"]]
    assert client.get("/api/v1/appointments").status_code == 422  # staff name the patient

    child = add_child(cw)
    headers = as_(client, cw, PATIENT_OWN)
    later = next_slot(tomorrow(), 10).isoformat()
    booked = hold(client, headers, hold_body(bw, child, starts_at=later))
    assert booked.status_code == 201, booked.text
    assert booked.json()["patient_id"] == str(child)
    assert str(child) in {item["patient_id"] for item in client.get("/api/v1/appointments").json()}


def add_child(cw: CallerWorld) -> uuid.UUID:
    """A minor's record, linked as a dependent of the ``PATIENT_OWN`` account."""
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(
            session, cw.runtime.key_provider, cw.world.tenant, SystemPrincipal("test:booking-api")
        )
        created = PatientRepository(session, keyring).register_many(
            [
                PatientInput.model_validate(
                    {
                        "birth_name": "Martin",
                        "first_names": "Inès",
                        "birth_date": "2017-05-06",
                        "sex": "F",
                    }
                )
            ]
        )
        child_id = created.created[0]
    cw.add_dependent(PATIENT_OWN, child_id)
    return child_id


def test_reschedule_cancel_and_the_deadline(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    mine = cw.world.patients["today"]
    headers = as_(client, cw, PATIENT_OWN)
    held = hold(client, headers, hold_body(bw, mine)).json()
    client.post(f"/api/v1/appointments/{held['id']}/confirm", headers=headers)
    url = f"/api/v1/appointments/{held['id']}"
    moved = client.post(
        f"{url}/reschedule",
        json={"starts_at": next_slot(tomorrow(), 11).isoformat()},
        headers=headers,
    )
    assert moved.status_code == 200, moved.text
    assert dt.datetime.fromisoformat(moved.json()["starts_at"]) == next_slot(tomorrow(), 11)
    for starts_at in ("0", 0, "2020-01-01T09:00:00Z"):
        answer = client.post(f"{url}/reschedule", json={"starts_at": starts_at}, headers=headers)
        assert answer.status_code == 422
    assert client.get(url).json()["starts_at"] == moved.json()["starts_at"]

    # Too close to the visit: the patient may no longer change it; the desk still may.
    with transaction(bw.world.sessions) as session:
        row = session.get(Appointment, uuid.UUID(held["id"]))
        assert row is not None
        row.starts_at = utcnow() + dt.timedelta(minutes=90)
    late = client.post(f"{url}/cancel", headers=headers)
    assert late.status_code == 409
    assert problem_of(late)["code"] == "deadline_passed"
    assert client.get(url).json()["changeable"] is False
    desk = as_(client, cw, "receptionist")
    cancelled = client.post(f"{url}/cancel", headers=desk)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"


def test_home_visit_requests(client: TestClient, cw: CallerWorld, bw: BookingWorld) -> None:
    mine = cw.world.patients["today"]
    headers = as_(client, cw, PATIENT_OWN)
    body = {
        "patient_id": str(mine),
        "site_id": str(bw.main),
        "exam_ids": [str(bw.exams["blood"])],
        "day": tomorrow().isoformat(),
        "window": "afternoon",
        "address": {
            "line": "<img src=x onerror=alert(1)> 4 rue Basse",
            "postal_code": "69002",
            "city": "Lyon",
        },
    }
    answer = client.post("/api/v1/appointments/home-visits", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    assert answer.json()["home_address"]["line"] == body["address"]["line"]  # JSON, not HTML
    assert answer.json()["kind"] == "home"
    before = counts(bw)
    for changes in [
        {"day": "0"},
        {"day": 0},
        {"day": utcnow().astimezone(PARIS).date().isoformat()},
        {"window": "night"},
        {"exam_ids": [str(bw.exams["cortisol"])]},
        {"address": {**body["address"], "postal_code": "2A004"}},
        {"address": {**body["address"], "line": ""}},
        {"address": {**body["address"], "city": 75}},
        {"address": {**body["address"], "extra": "x"}},
    ]:
        refused = client.post(
            "/api/v1/appointments/home-visits", json={**body, **changes}, headers=headers
        )
        assert refused.status_code == 422, (changes, refused.text)
    assert counts(bw) == before
