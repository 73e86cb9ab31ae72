"""The sites and planning pages (``/administration/sites`` and
``/administration/sites/{site_id}/planning``): the organization admin sets a site's hours,
slot length and boxes and adds and removes closures through CSRF forms (each change
audited); bad input shows the form again with the service's French message and writes
nothing; markup in a reason is shown escaped; every other signed-in caller, and a site of
another organization, gets "page introuvable"."""

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
SCHEDULE = {
    "hours_mon": "07:00-12:00, 14:00-18:00",
    "hours_sat": "8:00-11:30",
    "slot_minutes": "15",
    "sampling_boxes": "3",
    "walk_in_boxes": "1",
}
NEXT_MONTH = dt.date.today() + dt.timedelta(days=30)
CLOSURE = {
    "starts_on": NEXT_MONTH.isoformat(),
    "ends_on": (NEXT_MONTH + dt.timedelta(days=1)).isoformat(),
    "reason": "Travaux <i>urgents</i>",
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


def as_(client: TestClient, cw: CallerWorld, name: str) -> str:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    return cw.sessions[name].csrf


def post(client: TestClient, path: str, csrf: str, **form: str) -> Any:
    return client.post(
        path, data={**form, "csrf_token": csrf}, headers={"Origin": ORIGIN}, follow_redirects=False
    )


def state(cw: CallerWorld, site_id: uuid.UUID) -> tuple[Any, ...]:
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


def test_admin_sets_a_planning_and_manages_closures(client: TestClient, cw: CallerWorld) -> None:
    site = cw.world.sites["main"]
    planning = f"/administration/sites/{site}/planning"
    csrf = as_(client, cw, "organization_admin")
    sites = client.get("/administration/sites")
    assert sites.status_code == 200
    assert planning in sites.text

    saved = post(client, planning, csrf, **SCHEDULE)
    assert saved.status_code == 303, saved.text
    assert state(cw, site)[:2] == (
        {"mon": [["07:00", "12:00"], ["14:00", "18:00"]], "sat": [["08:00", "11:30"]]},
        (15, 3, 1),
    )
    assert events(cw, AuditAction.SCHEDULE_SITE_UPDATE) == 1
    page = client.get(saved.headers["location"])
    assert "Le planning du site est enregistré." in page.text
    assert 'value="07:00-12:00, 14:00-18:00"' in page.text

    added = post(client, f"/administration/sites/{site}/fermetures", csrf, **CLOSURE)
    assert added.status_code == 303
    assert events(cw, AuditAction.SCHEDULE_CLOSURE_ADD) == 1
    page = client.get(planning)
    assert "Travaux &lt;i&gt;urgents&lt;/i&gt;" in page.text
    assert "<i>urgents</i>" not in page.text
    twice = post(client, f"/administration/sites/{site}/fermetures", csrf, **CLOSURE)
    assert twice.status_code == 409
    assert len(state(cw, site)[2]) == 1

    with cw.world.sessions() as session:
        closure_id = session.scalar(select(SiteClosure.id).where(SiteClosure.site_id == site))
    removed = post(
        client,
        f"/administration/sites/{site}/fermetures/suppression",
        csrf,
        closure_id=str(closure_id),
    )
    assert removed.status_code == 303
    assert state(cw, site)[2] == []
    assert events(cw, AuditAction.SCHEDULE_CLOSURE_REMOVE) == 1


SCHEDULE_HOSTILE = [
    ({"hours_mon": "7h-12h"}, "lundi : écrivez les plages ainsi"),
    ({"hours_tue": "12:00-07:00"}, "mardi : la fermeture"),
    ({"hours_mon": "07:00-12:00, 11:00-13:00"}, "lundi : les plages"),
    ({"slot_minutes": "0"}, "Durée d&#39;un créneau (minutes)"),
    ({"sampling_boxes": ""}, "Nombre de box de prélèvement"),
    ({"walk_in_boxes": "9"}, "pas plus que le nombre de box"),
]


@pytest.mark.parametrize(("change", "message"), SCHEDULE_HOSTILE)
def test_a_bad_planning_shows_the_form_again_and_writes_nothing(
    client: TestClient, cw: CallerWorld, change: dict[str, str], message: str
) -> None:
    site = cw.world.sites["main"]
    before = state(cw, site)
    csrf = as_(client, cw, "organization_admin")
    refused = post(client, f"/administration/sites/{site}/planning", csrf, **{**SCHEDULE, **change})
    assert refused.status_code == 422
    assert message in refused.text
    assert state(cw, site) == before
    assert events(cw, AuditAction.SCHEDULE_SITE_UPDATE) == 0


CLOSURE_HOSTILE = [
    ({"starts_on": "0"}, "Début de la fermeture : date invalide"),
    ({"ends_on": "0"}, "Fin de la fermeture : date invalide"),
    ({"starts_on": "2020-01-01", "ends_on": "2020-01-01"}, "déjà passée"),
    ({"reason": ""}, "Motif de fermeture : obligatoire."),
]


@pytest.mark.parametrize(("change", "message"), CLOSURE_HOSTILE)
def test_a_bad_closure_shows_the_form_again_and_writes_nothing(
    client: TestClient, cw: CallerWorld, change: dict[str, str], message: str
) -> None:
    site = cw.world.sites["main"]
    before = state(cw, site)
    csrf = as_(client, cw, "organization_admin")
    refused = post(
        client, f"/administration/sites/{site}/fermetures", csrf, **{**CLOSURE, **change}
    )
    assert refused.status_code == 422
    assert message in refused.text
    assert state(cw, site) == before
    assert events(cw, AuditAction.SCHEDULE_CLOSURE_ADD) == 0


def test_unknown_and_foreign_sites_are_not_found(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    with alpha.tenant_sessions(cw.world.other_tenant)() as session:
        foreign = session.scalar(select(Site.id).where(Site.tenant_id == cw.world.other_tenant))
    csrf = as_(client, cw, "organization_admin")
    for site in (uuid.uuid4(), foreign):
        assert client.get(f"/administration/sites/{site}/planning").status_code == 404
        assert (
            post(client, f"/administration/sites/{site}/planning", csrf, **SCHEDULE).status_code
            == 404
        )
    mistyped = client.get("/administration/sites/0/planning", follow_redirects=False)
    assert mistyped.status_code == 303
    assert mistyped.headers["location"].endswith("/administration/sites")


@pytest.mark.parametrize("name", OUTSIDERS)
def test_everyone_else_gets_page_not_found(client: TestClient, cw: CallerWorld, name: str) -> None:
    site = cw.world.sites["main"]
    admin = as_(client, cw, "organization_admin")
    post(client, f"/administration/sites/{site}/fermetures", admin, **CLOSURE)
    with cw.world.sessions() as session:
        closure_id = str(session.scalar(select(SiteClosure.id).where(SiteClosure.site_id == site)))
    before = state(cw, site)
    csrf = as_(client, cw, name)
    answers = [
        client.get("/administration/sites", follow_redirects=False),
        client.get(f"/administration/sites/{site}/planning", follow_redirects=False),
        post(client, f"/administration/sites/{site}/planning", csrf, **SCHEDULE),
        post(client, f"/administration/sites/{site}/fermetures", csrf, **CLOSURE),
        post(
            client,
            f"/administration/sites/{site}/fermetures/suppression",
            csrf,
            closure_id=closure_id,
        ),
    ]
    assert [a.status_code for a in answers] == [404] * 5
    assert all("Page introuvable" in a.text for a in answers)
    assert state(cw, site) == before
