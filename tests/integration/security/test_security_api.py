"""Break-glass and the security review over HTTP: a receptionist opens a grant, which is
audited with its reason, alerted (row + mail) and opens the record; security officers list,
read, review and acknowledge; everyone else gets 404."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from caller_world import (
    ORIGIN,
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
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.security.models import BreakGlassGrant, SecurityAlert

JUSTIFICATION = "Patiente à l'accueil, rendez-vous pris par téléphone non saisi"


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


def as_(client: TestClient, cw: CallerWorld, name: str) -> dict[str, str]:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    return {"X-CSRF-Token": cw.sessions[name].csrf}


def events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    with runtime.audit_sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def _designation(cw: CallerWorld, name: str) -> dict[str, str]:
    person = cw.world.inputs[name]
    return {
        "birth_name": person.birth_name,
        "first_name": person.first_given_name,
        "birth_date": person.birth_date.isoformat(),
    }


def test_break_glass_end_to_end(client: TestClient, cw: CallerWorld, alpha: Runtime) -> None:
    patient = cw.world.patients["no_appointment"]
    headers = as_(client, cw, "receptionist")
    assert client.get(f"/api/v1/patients/{patient}").status_code == 404
    opened = client.post(
        "/api/v1/break-glass",
        json={
            **_designation(cw, "no_appointment"),
            "reason": "walk-in",
            "justification": JUSTIFICATION,
        },
        headers=headers,
    )
    assert opened.status_code == 201, opened.text
    grant_id = opened.json()["grant_id"]
    assert opened.json()["patient_id"] == str(patient)
    record = client.get(f"/api/v1/patients/{patient}")
    assert record.status_code == 200
    assert record.json()["birth_name"] == cw.world.inputs["no_appointment"].birth_name

    # audited with its reason, alerted (row + mail), nothing personal in either
    audit = [
        e for e in events(alpha, AuditAction.ACCESS_BREAK_GLASS_OPEN) if e.target_id == patient
    ]
    assert len(audit) == 1
    assert audit[0].purpose == "break-glass:walk-in"
    assert audit[0].actor_id == str(cw.accounts["receptionist"])
    with cw.world.sessions() as session:
        alerts = list(session.scalars(select(SecurityAlert)))
        grant = session.get(BreakGlassGrant, uuid.UUID(grant_id))
        assert grant is not None
        assert JUSTIFICATION.encode() not in grant.justification
    assert [a.kind for a in alerts] == ["break-glass"]
    assert alerts[0].target_id == uuid.UUID(grant_id)
    mailer = alpha.mailer
    assert isinstance(mailer, FileMailer)
    mails = [m for m in mailer.messages() if m["Subject"] == "Alerte de sécurité labvault"]
    assert len(mails) == 1
    text = str(mails[0])
    assert cw.world.inputs["no_appointment"].birth_name not in text
    assert JUSTIFICATION not in text

    # the security officer reviews it
    headers = as_(client, cw, "security_officer")
    listed = client.get("/api/v1/security/break-glass")
    assert listed.status_code == 200
    assert [g["id"] for g in listed.json()] == [grant_id]
    assert listed.json()[0]["reviewed_at"] is None
    justification = client.get(f"/api/v1/security/break-glass/{grant_id}/justification")
    assert justification.json() == {"justification": JUSTIFICATION}
    assert [
        e
        for e in events(alpha, AuditAction.BREAK_GLASS_RECORD_READ)
        if e.target_id == uuid.UUID(grant_id)
    ]
    no_csrf = client.post(
        f"/api/v1/security/break-glass/{grant_id}/review", json={"outcome": "justified"}
    )
    assert no_csrf.status_code == 403
    bad = client.post(
        f"/api/v1/security/break-glass/{grant_id}/review",
        json={"outcome": "bof"},
        headers=headers,
    )
    assert bad.status_code == 422
    done = client.post(
        f"/api/v1/security/break-glass/{grant_id}/review",
        json={"outcome": "justified"},
        headers=headers,
    )
    assert done.status_code == 204
    again = client.post(
        f"/api/v1/security/break-glass/{grant_id}/review",
        json={"outcome": "unjustified"},
        headers=headers,
    )
    assert again.status_code == 409
    review = events(alpha, AuditAction.ACCESS_BREAK_GLASS_REVIEW)
    assert [e.purpose for e in review] == ["justified"]
    assert client.get("/api/v1/security/break-glass", params={"unreviewed": True}).json() == []

    alert_list = client.get("/api/v1/security/alerts").json()
    assert [a["kind"] for a in alert_list] == ["break-glass"]
    alert_id = alert_list[0]["id"]
    ack = client.post(f"/api/v1/security/alerts/{alert_id}/acknowledge", headers=headers)
    assert ack.status_code == 204
    assert (
        client.post(f"/api/v1/security/alerts/{alert_id}/acknowledge", headers=headers).status_code
        == 409
    )
    assert events(alpha, AuditAction.SECURITY_ALERT_ACKNOWLEDGE)

    # the receptionist ends the grant: the record is out of reach again
    headers = as_(client, cw, "receptionist")
    assert client.delete(f"/api/v1/break-glass/{grant_id}", headers=headers).status_code == 204
    assert client.get(f"/api/v1/patients/{patient}").status_code == 404
    assert client.delete(f"/api/v1/break-glass/{grant_id}", headers=headers).status_code == 404


def test_refusals_are_audited_and_change_nothing(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    headers = as_(client, cw, "receptionist")
    short = client.post(
        "/api/v1/break-glass",
        json={**_designation(cw, "no_appointment"), "reason": "walk-in", "justification": "vu"},
        headers=headers,
    )
    assert short.status_code == 422
    assert "justification" in short.json()["detail"]
    nobody = client.post(
        "/api/v1/break-glass",
        json={
            "birth_name": "Inconnu",
            "first_name": "Personne",
            "birth_date": "1950-01-01",
            "reason": "emergency",
            "justification": JUSTIFICATION,
        },
        headers=headers,
    )
    assert nobody.status_code == 422
    foreign_nir = client.post(
        "/api/v1/break-glass",
        json={"nir": "1234", "reason": "emergency", "justification": JUSTIFICATION},
        headers=headers,
    )
    assert foreign_nir.status_code == 422
    incomplete = client.post(
        "/api/v1/break-glass",
        json={"birth_name": "Dupont", "reason": "emergency", "justification": JUSTIFICATION},
        headers=headers,
    )
    assert incomplete.status_code == 422
    refused = events(alpha, AuditAction.ACCESS_BREAK_GLASS_REFUSED)
    assert len(refused) >= 2
    assert all(e.outcome == "denied" for e in refused)
    with cw.world.sessions() as session:
        assert list(session.scalars(select(BreakGlassGrant))) == []
        assert list(session.scalars(select(SecurityAlert))) == []


@pytest.mark.parametrize("name", ["organization_admin", "security_officer", PATIENT_OWN])
def test_roles_that_cannot_break_the_glass_get_404(
    client: TestClient, cw: CallerWorld, alpha: Runtime, name: str
) -> None:
    headers = as_(client, cw, name)
    answer = client.post(
        "/api/v1/break-glass",
        json={
            **_designation(cw, "no_appointment"),
            "reason": "emergency",
            "justification": JUSTIFICATION,
        },
        headers=headers,
    )
    assert answer.status_code == 404
    with cw.world.sessions() as session:
        assert list(session.scalars(select(BreakGlassGrant))) == []


def test_only_security_officers_see_the_review(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "biologist")
    opened = client.post(
        "/api/v1/break-glass",
        json={
            **_designation(cw, "45_days_ago"),
            "reason": "emergency",
            "justification": JUSTIFICATION,
        },
        headers=headers,
    )
    assert opened.status_code == 201, opened.text
    grant_id = opened.json()["grant_id"]
    with cw.world.sessions() as session:
        alert_id = session.scalars(select(SecurityAlert.id)).one()
    for name in (*[r for r in ROLES if r != "security_officer"], PATIENT_OWN):
        headers = as_(client, cw, name)
        for method, path, body in (
            ("GET", "/api/v1/security/break-glass", None),
            ("GET", f"/api/v1/security/break-glass/{grant_id}/justification", None),
            ("POST", f"/api/v1/security/break-glass/{grant_id}/review", {"outcome": "justified"}),
            ("GET", "/api/v1/security/alerts", None),
            ("POST", f"/api/v1/security/alerts/{alert_id}/acknowledge", None),
        ):
            answer = client.request(method, path, json=body, headers=headers)
            assert answer.status_code == 404, (name, path)
        # only its owner ends a grant
        if name != "biologist":
            assert (
                client.delete(f"/api/v1/break-glass/{grant_id}", headers=headers).status_code == 404
            )
    as_(client, cw, "security_officer")
    unknown = uuid.uuid4()
    assert client.get(f"/api/v1/security/break-glass/{unknown}/justification").status_code == 404
