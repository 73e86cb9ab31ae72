"""An erased record over HTTP, on SQLite and PostgreSQL: the patient of the access world with
an appointment today (and a patient account acting for it) is erased; every staff and
patient view that could list it still answers, none shows it, and its id answers the same
404 as an unknown one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from caller_world import (
    ORIGIN,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from labvault.app import create_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.patients.erasure import KeylessKeyring, erase_patient
from labvault.patients.models import ErasureRequester

ERASED = "today"


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    world = build_caller_world(alpha)
    with transaction(world.world.sessions) as session:
        keyring = KeylessKeyring(session, world.world.tenant, SystemPrincipal("test:erasure"))
        erase_patient(session, keyring, world.world.patients[ERASED], ErasureRequester.PATIENT)
    return world


@pytest.fixture
def client(alpha: Runtime, cw: CallerWorld) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as test_client:
        yield test_client


def as_(client: TestClient, cw: CallerWorld, name: str) -> dict[str, str]:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    cw.current = name
    return {"X-CSRF-Token": cw.sessions[name].csrf}


def test_desk_views_still_answer_without_the_erased_patient(
    client: TestClient, cw: CallerWorld
) -> None:
    erased = str(cw.world.patients[ERASED])
    name = cw.world.inputs[ERASED].birth_name
    as_(client, cw, "receptionist")
    schedule = client.get("/api/v1/desk/schedule")
    assert schedule.status_code == 200, schedule.text
    listed = {item["patient_id"] for item in schedule.json()["items"]}
    assert listed == {str(cw.world.patients["earlier_today"])}
    page = client.get("/accueil/planning")
    assert page.status_code == 200, page.text
    assert cw.world.inputs["earlier_today"].birth_name in page.text
    assert name not in page.text
    rounds = client.get("/api/v1/desk/rounds")
    assert rounds.status_code == 200, rounds.text
    assert erased not in rounds.text


def test_the_erased_id_answers_the_uniform_404_everywhere(
    client: TestClient, cw: CallerWorld
) -> None:
    erased = cw.world.patients[ERASED]
    person = cw.world.inputs[ERASED]
    headers = as_(client, cw, "receptionist")
    unknown = client.get(f"/api/v1/patients/{uuid.uuid4()}")
    assert unknown.status_code == 404
    answer = client.get(f"/api/v1/patients/{erased}")
    assert (answer.status_code, answer.content) == (404, unknown.content)
    assert client.get(f"/patients/{erased}").status_code == 404
    assert person.nir is not None
    found = client.post(
        "/api/v1/patients/search", json={"nir": person.nir.compact}, headers=headers
    )
    assert found.status_code == 200, found.text
    assert found.json()["items"] == []
    by_name = client.post(
        "/api/v1/patients/search",
        json={
            "birth_name": person.birth_name,
            "first_name": person.first_given_name,
            "birth_date": person.birth_date.isoformat(),
        },
        headers=headers,
    )
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["items"] == []
    glass = client.post(
        "/api/v1/break-glass",
        json={
            "nir": person.nir.compact,
            "reason": "walk-in",
            "justification": "Patiente au guichet sans rendez-vous, demande ses résultats.",
        },
        headers=headers,
    )
    assert glass.status_code == 422, glass.text
    assert "Aucun dossier" in glass.json()["detail"]
    staff_list = client.get("/api/v1/appointments", params={"patient_id": str(erased)})
    assert staff_list.status_code == 404, staff_list.text


def test_the_patient_s_own_account_went_with_the_record(
    client: TestClient, cw: CallerWorld
) -> None:
    """The account whose own record was erased is deleted with it (its sealed email and
    email index would otherwise stay, and it could still sign in): its session no longer
    authenticates, and nothing it could reach shows the record."""
    erased = cw.world.patients[ERASED]
    as_(client, cw, PATIENT_OWN)
    assert client.get(f"/api/v1/patients/{erased}").status_code in (401, 404)
    assert client.get("/api/v1/account/patients").status_code == 401
    assert client.get("/api/v1/appointments").status_code == 401
    for url in ("/compte/dossiers", "/compte/rendez-vous"):  # the sign-in page
        answer = client.get(url)
        assert answer.status_code < 500, (url, answer.text)
        assert cw.world.inputs[ERASED].birth_name not in answer.text, url
