"""The biologist's pages (``/biologie/resultats``) and API (``/api/v1/results/review``) over
HTTP: the queue and a report with markup escaped, validation with CSRF and step-up, a stale
version refused in French with nothing written, the phone path; every other caller gets
the same 404. The service's rules are tested on both backends in test_review_service.py;
the routes only wire them, so SQLite is enough here."""

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
from labvault.core.config import Settings
from labvault.core.runtime import Runtime
from labvault.results.content import Delivery
from labvault.results.models import ReportStatus, ResultReport
from results_world import TITLE, add_report, glucose, hemoglobin, hiv_positive

FORM = {"Sec-Fetch-Site": "same-origin"}
SCRIPT = "<script>alert(1)</script>"
QUEUE = "/biologie/resultats"
API = "/api/v1/results/review"
OTHERS = ("receptionist", "sampler", "organization_admin", "security_officer", PATIENT_OWN)


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


@pytest.fixture
def backend() -> str:
    return "sqlite"


def as_(client: TestClient, cw: CallerWorld, name: str) -> str:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    return cw.sessions[name].csrf


def report_of(cw: CallerWorld, patient: str = "today", **kwargs: object) -> uuid.UUID:
    observations = kwargs.pop("observations", None) or [hemoglobin(), glucose()]
    return add_report(
        cw.runtime,
        cw.world.sessions,
        cw.world.tenant,
        cw.world.patients[patient],
        observations,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def status_of(cw: CallerWorld, report_id: uuid.UUID) -> str:
    with cw.world.sessions() as session:
        found = session.get(ResultReport, report_id)
        assert found is not None
        return found.status


# --- pages ---------------------------------------------------------------------------------------


def test_the_queue_and_a_report_show_values_escaped_for_the_biologist(
    client: TestClient, cw: CallerWorld
) -> None:
    report_id = report_of(cw, title=SCRIPT)
    report_of(cw, "other_site", title="Hors de portée")
    as_(client, cw, "biologist")
    page = client.get(QUEUE)
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    assert cw.world.inputs["today"].birth_name in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert SCRIPT not in page.text
    assert "Hors de portée" not in page.text
    assert f"/biologie/resultats/{report_id}" in page.text
    detail = client.get(f"{QUEUE}/{report_id}")
    assert detail.status_code == 200, detail.text
    assert "Hémoglobine" in detail.text
    assert "10,4 g/dL" in detail.text
    assert "12.0-16.0" in detail.text
    assert "<strong>bas</strong>" in detail.text
    assert "<strong>élevé</strong>" in detail.text
    assert 'name="version" value="1"' in detail.text
    assert "à communiquer par téléphone" not in detail.text.lower()
    assert SCRIPT not in detail.text


def test_every_other_caller_gets_the_same_404_page(client: TestClient, cw: CallerWorld) -> None:
    report_id = report_of(cw)
    bodies = set()
    for name in OTHERS:
        csrf = as_(client, cw, name)
        for answer in (
            client.get(QUEUE),
            client.get(f"{QUEUE}/{report_id}"),
            client.post(
                f"{QUEUE}/{report_id}/validation",
                data={"csrf_token": csrf, "version": "1"},
                headers=FORM,
            ),
        ):
            assert answer.status_code == 404, (name, answer.status_code)
            bodies.add(answer.text)
    as_(client, cw, "biologist")
    for unknown in (uuid.uuid4(), report_of(cw, "45_days_ago")):
        answer = client.get(f"{QUEUE}/{unknown}")
        assert answer.status_code == 404
        bodies.add(answer.text)
    assert len(bodies) == 1
    assert status_of(cw, report_id) == ReportStatus.TO_VALIDATE.value


def test_validating_from_the_page_releases_the_report(client: TestClient, cw: CallerWorld) -> None:
    report_id = report_of(cw)
    csrf = as_(client, cw, "biologist")
    refused = client.post(f"{QUEUE}/{report_id}/validation", data={"version": "1"}, headers=FORM)
    assert refused.status_code == 403
    assert status_of(cw, report_id) == ReportStatus.TO_VALIDATE.value
    answer = client.post(
        f"{QUEUE}/{report_id}/validation",
        data={"csrf_token": csrf, "version": "1", "conclusion": "Contrôle dans un mois"},
        headers=FORM,
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == f"{QUEUE}?info=publie"
    assert status_of(cw, report_id) == ReportStatus.RELEASED.value
    listed = client.get(answer.headers["location"])
    assert "le patient est prévenu" in listed.text
    assert f"/biologie/resultats/{report_id}" not in listed.text


def test_a_stale_step_up_sends_to_the_identity_check_and_back(
    client: TestClient, cw: CallerWorld
) -> None:
    report_id = report_of(cw)
    cw.age_second_factor("biologist")
    csrf = as_(client, cw, "biologist")
    answer = client.post(
        f"{QUEUE}/{report_id}/validation",
        data={"csrf_token": csrf, "version": "1"},
        headers=FORM,
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == (
        f"/compte/confirmer-identite?suite=%2Fbiologie%2Fresultats%2F{report_id}"
    )
    assert status_of(cw, report_id) == ReportStatus.TO_VALIDATE.value


def test_a_report_changed_meanwhile_is_shown_again_with_the_reason(
    client: TestClient, cw: CallerWorld
) -> None:
    report_id = report_of(cw, version=2)
    csrf = as_(client, cw, "biologist")
    answer = client.post(
        f"{QUEUE}/{report_id}/validation",
        data={"csrf_token": csrf, "version": "1", "conclusion": "Texte gardé"},
        headers=FORM,
    )
    assert answer.status_code == 409
    assert "a changé depuis que vous l&#39;avez ouvert" in answer.text
    assert "Texte gardé" in answer.text
    assert 'name="version" value="2"' in answer.text
    assert status_of(cw, report_id) == ReportStatus.TO_VALIDATE.value
    missing = client.post(
        f"{QUEUE}/{report_id}/validation", data={"csrf_token": csrf}, headers=FORM
    )
    assert missing.status_code == 422
    assert status_of(cw, report_id) == ReportStatus.TO_VALIDATE.value


def test_a_sensitive_report_shows_the_phone_banner_and_records_the_call(
    client: TestClient, cw: CallerWorld
) -> None:
    report_id = report_of(cw, observations=[hiv_positive()], delivery=Delivery.PHONE)
    csrf = as_(client, cw, "biologist")
    page = client.get(f"{QUEUE}/{report_id}")
    assert "Résultat sensible : à communiquer par téléphone" in page.text
    answer = client.post(
        f"{QUEUE}/{report_id}/validation",
        data={"csrf_token": csrf, "version": "1"},
        headers=FORM,
        follow_redirects=False,
    )
    assert answer.headers["location"] == f"{QUEUE}?info=telephone"
    assert status_of(cw, report_id) == ReportStatus.VALIDATED.value
    listed = client.get(QUEUE)
    assert "À communiquer par téléphone" in listed.text
    page = client.get(f"{QUEUE}/{report_id}")
    assert f"/biologie/resultats/{report_id}/appel" in page.text
    empty = client.post(
        f"{QUEUE}/{report_id}/appel", data={"csrf_token": csrf, "note": "  "}, headers=FORM
    )
    assert empty.status_code == 422
    assert "Indiquez à qui et quand" in empty.text
    assert status_of(cw, report_id) == ReportStatus.VALIDATED.value
    done = client.post(
        f"{QUEUE}/{report_id}/appel",
        data={"csrf_token": csrf, "note": "Patiente appelée à 9 h, résultat expliqué"},
        headers=FORM,
        follow_redirects=False,
    )
    assert done.headers["location"] == f"{QUEUE}?info=appel"
    assert status_of(cw, report_id) == ReportStatus.RELEASED.value


# --- API -----------------------------------------------------------------------------------------


def api(client: TestClient, cw: CallerWorld, name: str) -> dict[str, str]:
    return {"X-CSRF-Token": as_(client, cw, name), "Origin": ORIGIN}


def test_the_api_lists_shows_and_validates(client: TestClient, cw: CallerWorld) -> None:
    report_id = report_of(cw)
    headers = api(client, cw, "biologist")
    listed = client.get(API)
    assert listed.status_code == 200, listed.text
    assert [item["report_id"] for item in listed.json()] == [str(report_id)]
    assert listed.json()[0]["title"] == TITLE
    shown = client.get(f"{API}/{report_id}")
    assert shown.status_code == 200
    assert shown.headers["cache-control"] == "no-store"
    first = shown.json()["observations"][0]
    assert (first["value"], first["flags"], first["interpretation"]) == ("10,4", ["L"], ["bas"])
    stale = client.post(f"{API}/{report_id}/validate", json={"version": 2}, headers=headers)
    assert stale.status_code == 409
    assert stale.json()["code"] == "version_changed"
    done = client.post(f"{API}/{report_id}/validate", json={"version": 1}, headers=headers)
    assert done.status_code == 200, done.text
    assert done.json() == {
        "status": "released",
        "released": True,
        "notified": True,
        "delivered": True,
    }
    again = client.post(f"{API}/{report_id}/validate", json={"version": 1}, headers=headers)
    assert again.status_code == 409
    assert again.json()["code"] == "wrong_state"


def test_the_api_needs_a_step_up_and_refuses_others_with_404(
    client: TestClient, cw: CallerWorld
) -> None:
    report_id = report_of(cw, observations=[hiv_positive()], delivery=Delivery.PHONE)
    for name in OTHERS:
        headers = api(client, cw, name)
        for answer in (
            client.get(f"{API}/{report_id}"),
            client.post(f"{API}/{report_id}/validate", json={"version": 1}, headers=headers),
        ):
            assert answer.status_code == 404, (name, answer.status_code)
    cw.age_second_factor("biologist")
    headers = api(client, cw, "biologist")
    answer = client.post(f"{API}/{report_id}/validate", json={"version": 1}, headers=headers)
    assert answer.status_code == 403
    assert answer.json()["reason"] == "step_up_required"
    assert status_of(cw, report_id) == ReportStatus.TO_VALIDATE.value
    call = client.post(f"{API}/{report_id}/phone-call", json={"note": "x"}, headers=headers)
    assert call.status_code == 403
