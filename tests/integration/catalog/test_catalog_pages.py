"""The exam catalog pages (``/administration/examens``): the organization admin adds,
changes, withdraws and brings back exams through CSRF forms (each change audited); bad input
shows the form again with the catalog's French message and writes nothing; markup in a
label is shown escaped; every other signed-in caller gets "page introuvable"."""

from __future__ import annotations

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
from labvault.catalog.models import Exam
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.db import transaction
from labvault.core.runtime import Runtime

PAGE = "/administration/examens"
OUTSIDERS = ("receptionist", "biologist", "sampler", "security_officer", PATIENT_OWN)
FORM = {
    "code": "GLY",
    "label": "Glycémie <b>à jeun</b>",
    "loinc": "2345-7",
    "sampling_minutes": "5",
    "fasting_hours": "8",
    "window_start": "07:00",
    "window_end": "10:00",
    "home_sampling": "on",
    "preparation_text": "Venir à jeun.",
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


def exams(cw: CallerWorld) -> list[tuple[Any, ...]]:
    with cw.world.sessions() as session:
        rows = session.execute(
            select(Exam.code, Exam.label, Exam.sampling_minutes, Exam.active).order_by(Exam.code)
        )
        return [tuple(row) for row in rows]


def exam_id(cw: CallerWorld, code: str) -> str:
    with cw.world.sessions() as session:
        return str(session.scalar(select(Exam.id).where(Exam.code == code)))


def events(cw: CallerWorld, action: AuditAction) -> int:
    with cw.world.sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action.value)
        )
    return int(count or 0)


def test_admin_adds_changes_withdraws_and_brings_back_an_exam(
    client: TestClient, cw: CallerWorld
) -> None:
    csrf = as_(client, cw, "organization_admin")
    empty = client.get(PAGE)
    assert empty.status_code == 200
    assert "Aucun examen dans le catalogue" in empty.text

    added = post(client, PAGE, csrf, **FORM)
    assert added.status_code == 303
    assert added.headers["location"].endswith("/administration/examens?info=examen-ajoute")
    page = client.get(added.headers["location"])
    assert "L&#39;examen a été ajouté au catalogue." in page.text
    assert "Glycémie &lt;b&gt;à jeun&lt;/b&gt;" in page.text
    assert "<b>à jeun</b>" not in page.text
    assert exams(cw) == [("GLY", "Glycémie <b>à jeun</b>", 5, True)]
    assert events(cw, AuditAction.CATALOG_EXAM_CREATE) == 1

    target = exam_id(cw, "GLY")
    changed = post(
        client,
        f"{PAGE}/modification",
        csrf,
        **{**FORM, "exam_id": target, "label": "Glycémie", "sampling_minutes": "10"},
    )
    assert changed.status_code == 303
    assert exams(cw) == [("GLY", "Glycémie", 10, True)]
    withdrawn = post(client, f"{PAGE}/activation", csrf, exam_id=target, active="0")
    assert withdrawn.status_code == 303
    assert exams(cw) == [("GLY", "Glycémie", 10, False)]
    assert "Réactiver" in client.get(PAGE).text
    back = post(client, f"{PAGE}/activation", csrf, exam_id=target, active="1")
    assert back.status_code == 303
    assert exams(cw) == [("GLY", "Glycémie", 10, True)]
    assert events(cw, AuditAction.CATALOG_EXAM_UPDATE) == 3


HOSTILE = [
    ({"code": ""}, "Code de l&#39;examen"),
    ({"label": ""}, "Libellé : obligatoire."),
    ({"sampling_minutes": "0"}, "Durée de prélèvement (minutes) : doit être entre 1 et 240."),
    ({"sampling_minutes": "dix"}, "Durée de prélèvement (minutes)"),
    ({"window_start": "25:00"}, "heure invalide"),
    ({"window_end": ""}, "Plage horaire : indiquez le début et la fin"),
    ({"loinc": "2345-8"}, "chiffre de contrôle"),
]


@pytest.mark.parametrize(("change", "message"), HOSTILE)
def test_bad_input_shows_the_form_again_and_writes_nothing(
    client: TestClient, cw: CallerWorld, change: dict[str, str], message: str
) -> None:
    csrf = as_(client, cw, "organization_admin")
    refused = post(client, PAGE, csrf, **{**FORM, **change})
    assert refused.status_code == 422
    assert message in refused.text
    assert 'class="error-summary"' in refused.text
    assert exams(cw) == []
    assert events(cw, AuditAction.CATALOG_EXAM_CREATE) == 0


def test_a_bad_change_and_a_taken_code_write_nothing(client: TestClient, cw: CallerWorld) -> None:
    csrf = as_(client, cw, "organization_admin")
    post(client, PAGE, csrf, **FORM)
    post(client, PAGE, csrf, **{**FORM, "code": "NFS", "label": "NFS"})
    before = exams(cw)
    target = exam_id(cw, "NFS")
    taken = post(client, f"{PAGE}/modification", csrf, **{**FORM, "exam_id": target})
    assert taken.status_code == 422
    assert "Ce code d&#39;examen existe déjà dans le catalogue." in taken.text
    bad = post(
        client,
        f"{PAGE}/modification",
        csrf,
        **{**FORM, "exam_id": target, "code": "NFS", "fasting_hours": "99"},
    )
    assert bad.status_code == 422
    assert "Jeûne (heures)" in bad.text
    unknown = post(client, f"{PAGE}/modification", csrf, **{**FORM, "exam_id": str(uuid.uuid4())})
    assert unknown.status_code == 404
    assert exams(cw) == before
    assert events(cw, AuditAction.CATALOG_EXAM_UPDATE) == 0


def test_a_form_without_its_csrf_token_is_refused(client: TestClient, cw: CallerWorld) -> None:
    as_(client, cw, "organization_admin")
    refused = post(client, PAGE, "pas-le-bon", **FORM)
    assert refused.status_code == 403
    assert exams(cw) == []


@pytest.mark.parametrize("name", OUTSIDERS)
def test_everyone_else_gets_page_not_found(client: TestClient, cw: CallerWorld, name: str) -> None:
    admin = as_(client, cw, "organization_admin")
    post(client, PAGE, admin, **FORM)
    target = exam_id(cw, "GLY")
    csrf = as_(client, cw, name)
    answers = [
        client.get(PAGE, follow_redirects=False),
        post(client, PAGE, csrf, **{**FORM, "code": "AUTRE"}),
        post(client, f"{PAGE}/modification", csrf, **{**FORM, "exam_id": target, "label": "X"}),
        post(client, f"{PAGE}/activation", csrf, exam_id=target, active="0"),
    ]
    assert [a.status_code for a in answers] == [404] * 4
    assert all("Page introuvable" in a.text for a in answers)
    assert exams(cw) == [("GLY", "Glycémie <b>à jeun</b>", 5, True)]
    assert events(cw, AuditAction.CATALOG_ADMINISTRATION_DENIED) == 4


def test_nobody_signed_in_is_sent_to_the_login_page(client: TestClient, cw: CallerWorld) -> None:
    client.cookies.clear()
    answer = client.get(PAGE, follow_redirects=False)
    assert answer.status_code == 303
    assert "/compte/connexion" in answer.headers["location"]
