"""The exam catalog API (``/api/v1/admin/exams``) over HTTP, on SQLite and PostgreSQL: the
organization admin lists, adds, changes and withdraws exams (each change audited); every
other caller gets the uniform 404; hostile input is a French 422 with nothing written; a
code already taken is a 409."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

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
from labvault.catalog.models import Exam
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.db import transaction
from labvault.core.runtime import Runtime

OUTSIDERS = ("receptionist", "biologist", "sampler", "security_officer", PATIENT_OWN)
GLUCOSE = {
    "code": "GLY",
    "label": "Glycémie à jeun",
    "loinc": "2345-7",
    "sampling_minutes": 5,
    "fasting_hours": 8,
    "window_start": "07:00",
    "window_end": "10:00",
    "preparation_text": "Venir à jeun depuis 8 heures.",
}


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    built = build_caller_world(alpha)
    give_passkey(built)
    return built


def give_passkey(cw: CallerWorld) -> None:
    """The admin's role requires a passkey: give it one (how it is made is tested elsewhere)."""
    with transaction(cw.world.sessions) as session:
        session.add(
            WebAuthnCredential(
                id=uuid.uuid4(),
                tenant_id=cw.world.tenant,
                account_id=cw.accounts["organization_admin"],
                credential_id=uuid.uuid4().bytes,
                public_key=b"not used here",
                label=b"not used here",
            )
        )


@pytest.fixture
def client(alpha: Runtime, cw: CallerWorld) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as test_client:
        yield test_client


def as_(client: TestClient, cw: CallerWorld, name: str) -> dict[str, str]:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    return {"X-CSRF-Token": cw.sessions[name].csrf}


def exam_rows(cw: CallerWorld) -> list[tuple[Any, ...]]:
    with cw.world.sessions() as session:
        return [
            tuple(row)
            for row in session.execute(
                select(Exam.code, Exam.label, Exam.sampling_minutes, Exam.active).order_by(
                    Exam.code
                )
            )
        ]


def events(cw: CallerWorld, action: AuditAction) -> int:
    with cw.world.sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action.value)
        )
    return int(count or 0)


def test_admin_adds_changes_and_withdraws_an_exam(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "organization_admin")
    created = client.post("/api/v1/admin/exams", json=GLUCOSE, headers=headers)
    assert created.status_code == 201, created.text
    exam = created.json()
    assert exam["code"] == "GLY"
    assert exam["active"] is True
    assert exam["window_start"] == "07:00"
    assert events(cw, AuditAction.CATALOG_EXAM_CREATE) == 1

    changed = client.patch(
        f"/api/v1/admin/exams/{exam['id']}",
        json={"label": "Glycémie", "sampling_minutes": "10"},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["label"] == "Glycémie"
    assert changed.json()["fasting_hours"] == 8  # untouched fields are kept
    withdrawn = client.patch(
        f"/api/v1/admin/exams/{exam['id']}", json={"active": False}, headers=headers
    )
    assert withdrawn.status_code == 200
    assert withdrawn.json()["active"] is False
    assert events(cw, AuditAction.CATALOG_EXAM_UPDATE) == 2

    listed = client.get("/api/v1/admin/exams")
    assert listed.status_code == 200
    assert [(e["code"], e["active"]) for e in listed.json()] == [("GLY", False)]
    assert exam_rows(cw) == [("GLY", "Glycémie", 10, False)]


def test_a_code_already_taken_is_a_conflict(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "organization_admin")
    assert client.post("/api/v1/admin/exams", json=GLUCOSE, headers=headers).status_code == 201
    again = client.post(
        "/api/v1/admin/exams", json={**GLUCOSE, "code": " gly ", "label": "Autre"}, headers=headers
    )
    assert again.status_code == 409
    assert again.json()["detail"] == "Ce code d'examen existe déjà dans le catalogue."
    other = client.post(
        "/api/v1/admin/exams", json={**GLUCOSE, "code": "NFS", "label": "NFS"}, headers=headers
    )
    renamed = client.patch(
        f"/api/v1/admin/exams/{other.json()['id']}", json={"code": "GLY"}, headers=headers
    )
    assert renamed.status_code == 409
    assert exam_rows(cw) == [("GLY", "Glycémie à jeun", 5, True), ("NFS", "NFS", 5, True)]


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"code": ""}, "Code de l'examen"),
    ({"code": "A B"}, "Code de l'examen"),
    ({"label": "   "}, "Libellé : obligatoire."),
    ({"label": "x" * 201}, "Libellé : au plus 200"),
    ({"label": "a\u202eb"}, "Libellé : caractère non autorisé"),
    ({"sampling_minutes": 0}, "Durée de prélèvement"),
    ({"sampling_minutes": "0"}, "Durée de prélèvement"),
    ({"sampling_minutes": 241}, "Durée de prélèvement"),
    ({"fasting_hours": 17}, "Jeûne"),
    ({"loinc": "2345-8"}, "chiffre de contrôle"),
    ({"window_start": "25:00"}, "heure invalide"),
    ({"window_end": None}, "Plage horaire : indiquez le début et la fin"),
    ({"window_start": "10:00", "window_end": "07:00"}, "la fin doit suivre le début"),
]


@pytest.mark.parametrize(("change", "message"), HOSTILE)
def test_hostile_input_is_a_french_422_and_nothing_is_written(
    client: TestClient, cw: CallerWorld, change: dict[str, Any], message: str
) -> None:
    headers = as_(client, cw, "organization_admin")
    refused = client.post("/api/v1/admin/exams", json={**GLUCOSE, **change}, headers=headers)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert message in refused.json()["detail"]
    assert exam_rows(cw) == []
    assert events(cw, AuditAction.CATALOG_EXAM_CREATE) == 0


def test_a_bad_change_writes_nothing(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "organization_admin")
    exam_id = client.post("/api/v1/admin/exams", json=GLUCOSE, headers=headers).json()["id"]
    refused = client.patch(
        f"/api/v1/admin/exams/{exam_id}",
        json={"label": "Nouveau", "sampling_minutes": 0, "active": False},
        headers=headers,
    )
    assert refused.status_code == 422
    assert "Durée de prélèvement" in refused.json()["detail"]
    assert exam_rows(cw) == [("GLY", "Glycémie à jeun", 5, True)]
    assert events(cw, AuditAction.CATALOG_EXAM_UPDATE) == 0
    assert client.patch("/api/v1/admin/exams/pas-un-id", json={}, headers=headers).status_code == (
        422
    )
    unknown = client.patch(f"/api/v1/admin/exams/{uuid.uuid4()}", json={}, headers=headers)
    assert unknown.status_code == 404


@pytest.mark.parametrize("name", OUTSIDERS)
def test_everyone_else_gets_the_uniform_404(client: TestClient, cw: CallerWorld, name: str) -> None:
    admin = as_(client, cw, "organization_admin")
    exam_id = client.post("/api/v1/admin/exams", json=GLUCOSE, headers=admin).json()["id"]
    headers = as_(client, cw, name)
    answers = [
        client.get("/api/v1/admin/exams"),
        client.post("/api/v1/admin/exams", json={**GLUCOSE, "code": "X"}, headers=headers),
        client.patch(f"/api/v1/admin/exams/{exam_id}", json={"active": False}, headers=headers),
    ]
    assert [a.status_code for a in answers] == [404, 404, 404]
    assert {a.json()["detail"] for a in answers} == {"Introuvable."}
    assert exam_rows(cw) == [("GLY", "Glycémie à jeun", 5, True)]
    assert events(cw, AuditAction.CATALOG_ADMINISTRATION_DENIED) == 3


def test_anonymous_callers_get_the_uniform_404(client: TestClient, cw: CallerWorld) -> None:
    client.cookies.clear()
    assert client.get("/api/v1/admin/exams").status_code == 404
    assert client.post("/api/v1/admin/exams", json=GLUCOSE).status_code == 404
    assert exam_rows(cw) == []


def test_writes_need_the_csrf_token(client: TestClient, cw: CallerWorld) -> None:
    as_(client, cw, "organization_admin")
    assert client.post("/api/v1/admin/exams", json=GLUCOSE).status_code == 403
    assert exam_rows(cw) == []


def test_an_admin_without_a_passkey_is_sent_to_add_one(client: TestClient, cw: CallerWorld) -> None:
    with transaction(cw.world.sessions) as session:
        session.execute(delete(WebAuthnCredential))
    headers = as_(client, cw, "organization_admin")
    refused = client.post("/api/v1/admin/exams", json=GLUCOSE, headers=headers)
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("/passkey-required")
    page = client.get("/administration/examens", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].endswith("/compte/securite")
    assert exam_rows(cw) == []
