"""The booking API's reach for staff (review 6): the policy's relationship puts a patient in
a staff member's care, but of that patient's appointments it reaches its sites' only (a
sampler: today's, and it neither cancels nor moves them here); refusals are the uniform 404,
change nothing and leave a denied event, reads included. Hostile far-off dates (API and
portal page) are a 422, never a 500."""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Iterator
from typing import Any

import pytest
from booking_world import SETUP, BookingWorld, build_booking_world, next_slot
from fastapi.testclient import TestClient
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
from labvault.appointments.models import Appointment, AppointmentKind, AppointmentStatus, SlotClaim
from labvault.appointments.views import HomeAddress
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
APPOINTMENTS = "/api/v1/appointments"
FAR_OFF = ("9999-12-31T23:00:00-05:00", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00")


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
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    return {"X-CSRF-Token": cw.sessions[name].csrf}


def _today_noonish() -> dt.datetime:
    """A moment of today in Paris, whatever the hour the suite runs."""
    now = utcnow()
    day = now.astimezone(PARIS).date()
    start = dt.datetime.combine(day, dt.time(0, 1), PARIS)
    end = dt.datetime.combine(day, dt.time(23, 59), PARIS)
    return min(max(now + dt.timedelta(hours=1), start), end).astimezone(dt.UTC)


def _booked(
    bw: BookingWorld, patient: uuid.UUID, site: uuid.UUID, starts: dt.datetime
) -> uuid.UUID:
    """A booked site appointment, written as the desk's planning has it."""
    with transaction(bw.world.sessions) as session:
        row = Appointment(
            tenant_id=bw.world.tenant,
            patient_id=patient,
            site_id=site,
            starts_at=starts,
            ends_at=starts + dt.timedelta(minutes=15),
            status=AppointmentStatus.BOOKED.value,
            kind=AppointmentKind.SITE.value,
            walk_in=False,
            confirmed_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return row.id


def _state(bw: BookingWorld, appointment_id: uuid.UUID) -> tuple[str, dt.datetime, int]:
    with transaction(bw.world.sessions) as session:
        row = session.get(Appointment, appointment_id)
        assert row is not None
        claims = session.scalar(
            select(func.count())
            .select_from(SlotClaim)
            .where(SlotClaim.appointment_id == appointment_id)
        )
        return row.status, row.starts_at, claims or 0


def _denied(bw: BookingWorld, target: uuid.UUID) -> int:
    with transaction(bw.runtime.audit_sessions) as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(
                    AuditEvent.action == AuditAction.APPOINTMENT_BOOKING_REFUSED.value,
                    AuditEvent.target_id == target,
                    AuditEvent.outcome == "denied",
                )
            )
            or 0
        )


def test_staff_reach_their_sites_appointments_only(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    """The sampler of the main site read and cancelled a home visit at the annex 8 days out
    of a patient in its care today (review 6, H1); the receptionist likewise at the annex."""
    patient = cw.world.patients["today"]
    today = _booked(bw, patient, bw.main, _today_noonish())  # the sampler's care, today
    day = (utcnow().astimezone(PARIS) + dt.timedelta(days=8)).date()
    with transaction(cw.world.sessions) as session:
        home = (
            bw.service(session, SETUP, utcnow)
            .request_home_visit(
                patient,
                bw.annex,
                [bw.exams["blood"]],
                day,
                "morning",
                HomeAddress("12 rue Secrète", "75011", "Paris", "code 1234"),
            )
            .id
        )
        later_at_main = bw.service(session, SETUP, utcnow).hold(
            patient, bw.main, [bw.exams["glucose"]], next_slot(day, 9)
        )
        bw.service(session, SETUP, utcnow).confirm(later_at_main.id)
    other_day = later_at_main.id
    states = {a: _state(bw, a) for a in (today, home, other_day)}

    # The sampler: today's appointments of its sites, read only here.
    headers = as_(client, cw, "sampler")
    assert client.get(f"{APPOINTMENTS}/{today}").status_code == 200
    listed = client.get(APPOINTMENTS, params={"patient_id": str(patient)})
    assert listed.status_code == 200
    ids = {item["id"] for item in listed.json()}
    assert str(today) in ids
    assert ids.isdisjoint({str(home), str(other_day)})
    for target in (home, other_day):
        assert client.get(f"{APPOINTMENTS}/{target}").status_code == 404
    for target in (home, other_day, today):
        assert client.post(f"{APPOINTMENTS}/{target}/cancel", headers=headers).status_code == 404
        moved = client.post(
            f"{APPOINTMENTS}/{target}/reschedule",
            json={"starts_at": next_slot(day, 10).isoformat()},
            headers=headers,
        )
        assert moved.status_code == 404
        assert _denied(bw, target) >= 2

    # The receptionist: its sites' appointments, any day of the relationship.
    headers = as_(client, cw, "receptionist")
    assert client.get(f"{APPOINTMENTS}/{other_day}").status_code == 200
    listed = client.get(APPOINTMENTS, params={"patient_id": str(patient)})
    ids = {item["id"] for item in listed.json()}
    assert {str(today), str(other_day)} <= ids
    assert str(home) not in ids
    before = _denied(bw, home)
    assert client.get(f"{APPOINTMENTS}/{home}").status_code == 404
    assert client.post(f"{APPOINTMENTS}/{home}/cancel", headers=headers).status_code == 404
    assert client.post(f"{APPOINTMENTS}/{home}/confirm", headers=headers).status_code == 404
    assert _denied(bw, home) == before + 3
    # Nor does it book at a site it does not work at.
    booking: dict[str, Any] = {
        "patient_id": str(patient),
        "site_id": str(bw.annex),
        "exam_ids": [str(bw.exams["glucose"])],
    }
    held = client.post(
        f"{APPOINTMENTS}/holds",
        json={**booking, "starts_at": next_slot(day, 11).isoformat()},
        headers=headers,
    )
    assert held.status_code == 404
    visit = client.post(
        f"{APPOINTMENTS}/home-visits",
        json={
            **booking,
            "day": day.isoformat(),
            "window": "afternoon",
            "address": {"line": "3 rue des Lilas", "postal_code": "75020", "city": "Paris"},
        },
        headers=headers,
    )
    assert visit.status_code == 404
    assert {a: _state(bw, a) for a in (today, home, other_day)} == states


def test_refused_reads_leave_a_denied_event(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    """Another record's appointment, read by id or listed: the 404 of an absent one, and a
    denied event as for a refused change (review 6, L4)."""
    patient = cw.world.patients["today"]
    with transaction(cw.world.sessions) as session:
        day = (utcnow().astimezone(PARIS) + dt.timedelta(days=2)).date()
        view = bw.service(session, SETUP, utcnow).hold(
            patient, bw.main, [bw.exams["glucose"]], next_slot(day, 9)
        )
    as_(client, cw, PATIENT_OTHER)
    assert client.get(f"{APPOINTMENTS}/{view.id}").status_code == 404
    assert _denied(bw, view.id) == 1
    assert client.get(APPOINTMENTS, params={"patient_id": str(patient)}).status_code == 404
    assert _denied(bw, patient) == 1
    absent = uuid.uuid4()
    assert client.get(f"{APPOINTMENTS}/{absent}").status_code == 404
    assert _denied(bw, absent) == 1
    as_(client, cw, PATIENT_OWN)
    assert client.get(f"{APPOINTMENTS}/{view.id}").status_code == 200
    assert _denied(bw, view.id) == 1


@pytest.mark.parametrize("starts_at", FAR_OFF)
def test_far_off_dates_are_refused_not_a_500(
    client: TestClient, cw: CallerWorld, bw: BookingWorld, starts_at: str
) -> None:
    """Years whose move to UTC overflows (review 6, H2): API slot search, hold, reschedule
    and the portal's slot step all answer 422 with nothing written."""
    client = TestClient(client.app, base_url=ORIGIN, raise_server_exceptions=False)
    headers = as_(client, cw, PATIENT_OWN)
    me = cw.world.patients["today"]
    glucose = str(bw.exams["glucose"])
    slots = client.post(
        f"/api/v1/sites/{bw.main}/slots/search",
        json={"from": starts_at[:10], "exam_ids": [glucose]},
        headers=headers,
    )
    assert slots.status_code == 422, slots.text
    body = {"patient_id": str(me), "site_id": str(bw.main), "exam_ids": [glucose]}
    with transaction(bw.world.sessions) as session:
        before = session.scalar(select(func.count()).select_from(Appointment))
    answer = client.post(
        f"{APPOINTMENTS}/holds", json={**body, "starts_at": starts_at}, headers=headers
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    good = next_slot((utcnow().astimezone(PARIS) + dt.timedelta(days=2)).date(), 9)
    held = client.post(
        f"{APPOINTMENTS}/holds", json={**body, "starts_at": good.isoformat()}, headers=headers
    )
    assert held.status_code == 201, held.text
    moved = client.post(
        f"{APPOINTMENTS}/{held.json()['id']}/reschedule",
        json={"starts_at": starts_at},
        headers=headers,
    )
    assert moved.status_code == 422, moved.text
    page = client.post(
        "/compte/rendez-vous/nouveau/creneau",
        data={
            "patient_id": str(me),
            "site_id": str(bw.main),
            "exams": glucose,
            "week": "0",
            "starts_at": starts_at,
            "csrf_token": cw.sessions[PATIENT_OWN].csrf,
        },
        headers={"Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert page.status_code == 422, page.text[:200]
    assert "Choisissez un créneau" in page.text
    with transaction(bw.world.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Appointment)) == (before or 0) + 1
