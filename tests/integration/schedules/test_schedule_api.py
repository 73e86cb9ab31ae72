"""The site schedule API (``/api/v1/admin/sites/{site_id}/schedule`` and ``.../closures``)
over HTTP, on SQLite and PostgreSQL: the organization admin sets a site's hours, slot
length and boxes and adds and removes closures (each change audited); every other caller,
and a site of another organization, gets the uniform 404; hostile input is a French 422
with nothing written; an identical closure is a 409."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from caller_world import (
    ORIGIN,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from labvault.accounts.webauthn import WebAuthnCredential
from labvault.app import create_app
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.models import Site
from labvault.schedules.models import SiteClosure, SiteSchedule

OUTSIDERS = ("receptionist", "biologist", "sampler", "security_officer", PATIENT_OWN)
WEEK = {"mon": [["07:00", "12:00"], ["14:00", "18:00"]], "sat": [["08:00", "11:30"]]}
SCHEDULE = {"opening_hours": WEEK, "slot_minutes": 15, "sampling_boxes": 3, "walk_in_boxes": 1}
NEXT_MONTH = dt.date.today() + dt.timedelta(days=30)
CLOSURE = {
    "starts_on": NEXT_MONTH.isoformat(),
    "ends_on": (NEXT_MONTH + dt.timedelta(days=2)).isoformat(),
    "reason": "Travaux",
}


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    built = build_caller_world(alpha)
    with transaction(built.world.sessions) as session:
        session.add(
            WebAuthnCredential(  # the admin's role requires a passkey
                id=uuid.uuid4(),
                tenant_id=built.world.tenant,
                account_id=built.accounts["organization_admin"],
                credential_id=uuid.uuid4().bytes,
                public_key=b"not used here",
                label=b"not used here",
            )
        )
    return built


@pytest.fixture
def client(alpha: Runtime, cw: CallerWorld) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as test_client:
        yield test_client


def as_(client: TestClient, cw: CallerWorld, name: str) -> dict[str, str]:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    return {"X-CSRF-Token": cw.sessions[name].csrf}


def state(cw: CallerWorld, site_id: uuid.UUID) -> tuple[Any, ...]:
    """Everything a write could change: the site's hours, its schedule, its closures."""
    with cw.world.sessions() as session:
        site = session.get(Site, site_id)
        assert site is not None
        schedule = session.scalar(select(SiteSchedule).where(SiteSchedule.site_id == site_id))
        closures = session.execute(
            select(SiteClosure.starts_on, SiteClosure.ends_on, SiteClosure.reason).where(
                SiteClosure.site_id == site_id
            )
        )
        return (
            site.opening_hours,
            None
            if schedule is None
            else (schedule.slot_minutes, schedule.sampling_boxes, schedule.walk_in_boxes),
            sorted(tuple(row) for row in closures),
        )


def events(cw: CallerWorld, action: AuditAction) -> int:
    with cw.world.sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action.value)
        )
    return int(count or 0)


def foreign_site(alpha: Runtime, cw: CallerWorld) -> uuid.UUID:
    with alpha.tenant_sessions(cw.world.other_tenant)() as session:
        found = session.scalar(select(Site.id).where(Site.tenant_id == cw.world.other_tenant))
    assert found is not None
    return found


def test_admin_sets_a_schedule_and_manages_closures(client: TestClient, cw: CallerWorld) -> None:
    site = cw.world.sites["main"]
    base = f"/api/v1/admin/sites/{site}"
    headers = as_(client, cw, "organization_admin")
    before = client.get(f"{base}/schedule")
    assert before.status_code == 200, before.text
    assert before.json()["configured"] in (True, False)
    saved = client.put(f"{base}/schedule", json=SCHEDULE, headers=headers)
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert body["configured"] is True
    assert (body["slot_minutes"], body["sampling_boxes"], body["walk_in_boxes"]) == (15, 3, 1)
    assert body["opening_hours"] == WEEK
    assert client.get(f"{base}/schedule").json() == body
    assert events(cw, AuditAction.SCHEDULE_SITE_UPDATE) == 1

    added = client.post(f"{base}/closures", json=CLOSURE, headers=headers)
    assert added.status_code == 201, added.text
    closure = added.json()
    assert closure["reason"] == "Travaux"
    assert closure["starts_on"] == CLOSURE["starts_on"]
    assert [c["id"] for c in client.get(f"{base}/closures").json()] == [closure["id"]]
    twice = client.post(f"{base}/closures", json=CLOSURE, headers=headers)
    assert twice.status_code == 409
    assert events(cw, AuditAction.SCHEDULE_CLOSURE_ADD) == 1

    removed = client.delete(f"{base}/closures/{closure['id']}", headers=headers)
    assert removed.status_code == 204
    assert client.get(f"{base}/closures").json() == []
    again = client.delete(f"{base}/closures/{closure['id']}", headers=headers)
    assert again.status_code == 404
    assert events(cw, AuditAction.SCHEDULE_CLOSURE_REMOVE) == 1


def test_a_closure_is_removed_only_through_its_own_site(
    client: TestClient, cw: CallerWorld
) -> None:
    main, other = (
        cw.world.sites["main"],
        next(site for name, site in cw.world.sites.items() if name != "main"),
    )
    headers = as_(client, cw, "organization_admin")
    added = client.post(f"/api/v1/admin/sites/{main}/closures", json=CLOSURE, headers=headers)
    wrong = client.delete(
        f"/api/v1/admin/sites/{other}/closures/{added.json()['id']}", headers=headers
    )
    assert wrong.status_code == 404
    assert len(state(cw, main)[2]) == 1


SCHEDULE_HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"slot_minutes": 0}, "Durée d'un créneau"),
    ({"slot_minutes": "0"}, "Durée d'un créneau"),
    ({"slot_minutes": 241}, "Durée d'un créneau"),
    ({"sampling_boxes": 0}, "Nombre de box"),
    ({"walk_in_boxes": 4}, "pas plus que le nombre de box"),
    ({"opening_hours": {"lun": [["07:00", "12:00"]]}}, "jour inconnu"),
    ({"opening_hours": {"mon": [["12:00", "07:00"]]}}, "lundi : la fermeture"),
    ({"opening_hours": {"mon": [["07:00", "12:00"], ["11:00", "13:00"]]}}, "lundi : les plages"),
    ({"opening_hours": {"tue": [["7h", "12:00"]]}}, "heure invalide"),
    ({"opening_hours": {"mon": "<script>alert(1)</script>"}}, "lundi : une liste"),
]


@pytest.mark.parametrize(("change", "message"), SCHEDULE_HOSTILE)
def test_a_bad_schedule_is_a_french_422_and_nothing_is_written(
    client: TestClient, cw: CallerWorld, change: dict[str, Any], message: str
) -> None:
    site = cw.world.sites["main"]
    before = state(cw, site)
    headers = as_(client, cw, "organization_admin")
    refused = client.put(
        f"/api/v1/admin/sites/{site}/schedule", json={**SCHEDULE, **change}, headers=headers
    )
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert message in refused.json()["detail"]
    assert state(cw, site) == before
    assert events(cw, AuditAction.SCHEDULE_SITE_UPDATE) == 0


CLOSURE_HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"starts_on": "0"}, "Début de la fermeture : date invalide"),
    ({"ends_on": "0"}, "Fin de la fermeture : date invalide"),
    ({"starts_on": "2026-02-30"}, "date invalide"),
    ({"starts_on": "2020-01-01", "ends_on": "2020-01-02"}, "déjà passée"),
    ({"ends_on": "2020-01-01"}, "la fin ne peut pas précéder le début"),
    ({"reason": "  "}, "Motif de fermeture : obligatoire"),
    ({"reason": "x" * 201}, "au plus 200"),
    ({"ends_on": (NEXT_MONTH + dt.timedelta(days=400)).isoformat()}, "au plus 366 jours"),
]


@pytest.mark.parametrize(("change", "message"), CLOSURE_HOSTILE)
def test_a_bad_closure_is_a_french_422_and_nothing_is_written(
    client: TestClient, cw: CallerWorld, change: dict[str, Any], message: str
) -> None:
    site = cw.world.sites["main"]
    before = state(cw, site)
    headers = as_(client, cw, "organization_admin")
    refused = client.post(
        f"/api/v1/admin/sites/{site}/closures", json={**CLOSURE, **change}, headers=headers
    )
    assert refused.status_code == 422, refused.text
    assert message in refused.json()["detail"]
    assert state(cw, site) == before
    assert events(cw, AuditAction.SCHEDULE_CLOSURE_ADD) == 0


def test_unknown_foreign_and_malformed_sites(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    headers = as_(client, cw, "organization_admin")
    for site in (uuid.uuid4(), foreign_site(alpha, cw)):
        assert client.get(f"/api/v1/admin/sites/{site}/schedule").status_code == 404
        put = client.put(f"/api/v1/admin/sites/{site}/schedule", json=SCHEDULE, headers=headers)
        assert put.status_code == 404
        post = client.post(f"/api/v1/admin/sites/{site}/closures", json=CLOSURE, headers=headers)
        assert post.status_code == 404
    assert client.get("/api/v1/admin/sites/0/schedule").status_code == 422
    assert events(cw, AuditAction.SCHEDULE_SITE_UPDATE) == 0


@pytest.mark.parametrize("name", OUTSIDERS)
def test_everyone_else_gets_the_uniform_404(client: TestClient, cw: CallerWorld, name: str) -> None:
    site = cw.world.sites["main"]
    base = f"/api/v1/admin/sites/{site}"
    admin = as_(client, cw, "organization_admin")
    closure_id = client.post(f"{base}/closures", json=CLOSURE, headers=admin).json()["id"]
    before = state(cw, site)
    headers = as_(client, cw, name)
    answers = [
        client.get(f"{base}/schedule"),
        client.put(f"{base}/schedule", json=SCHEDULE, headers=headers),
        client.get(f"{base}/closures"),
        client.post(f"{base}/closures", json={**CLOSURE, "reason": "Autre"}, headers=headers),
        client.delete(f"{base}/closures/{closure_id}", headers=headers),
    ]
    assert [a.status_code for a in answers] == [404] * 5
    assert {a.json()["detail"] for a in answers} == {"Introuvable."}
    assert state(cw, site) == before
    client.cookies.clear()
    assert client.get(f"{base}/schedule").status_code == 404
    anonymous = client.delete(f"{base}/closures/{closure_id}", headers={"Origin": ORIGIN})
    assert anonymous.status_code == 404
    assert state(cw, site) == before
