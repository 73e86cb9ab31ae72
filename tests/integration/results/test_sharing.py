"""Sharing a report with a doctor over HTTP: step-up first, the link shown once (only its
digest stored, the recipient sealed), opened without login (each view counted, audited and
in the patient's access history), revoked or expired → the one neutral 404, guessing
rate-limited; bad input and another patient's report write nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select, update

from caller_world import (
    ORIGIN,
    PATIENT_OTHER,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from helpers import leaked, sqlite_files
from labvault.app import create_app
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.results.models import ResultShare
from labvault.results.sharing import FAILURES_PER_CLIENT
from results_portal_world import PDF, glucose, make_report

LINK = re.compile(r'value="(https?://[^"]+/partage/([A-Za-z0-9_-]{43}))"')
RECIPIENT = "Dr Gaspard Lemercier"


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


def as_(client: TestClient, cw: CallerWorld, name: str | None) -> None:
    client.cookies.clear()
    CURRENT["csrf"] = ""
    if name is not None:
        client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
        CURRENT["csrf"] = cw.sessions[name].csrf


def released(cw: CallerWorld, record: str = "today") -> uuid.UUID:
    return make_report(
        cw.runtime,
        cw.world.sessions,
        cw.world.tenant,
        cw.world.patients[record],
        site_id=cw.world.sites["main"],
        title="Bilan glycémique",
        observations=[glucose("1.27", flags=("H",))],
    )


CURRENT: dict[str, str] = {}
"""The CSRF token of the client's current caller (set by ``as_``)."""


def share(
    client: TestClient, report_id: uuid.UUID, recipient: str = RECIPIENT, duration: str = "7j"
) -> Response:
    return client.post(
        f"/compte/resultats/{report_id}/partage",
        data={"recipient": recipient, "duration": duration, "csrf_token": CURRENT["csrf"]},
        headers={"Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )


def link_of(answer: Response) -> tuple[str, str]:
    found = LINK.search(answer.text)
    assert found is not None, answer.text[:800]
    return found.group(1), found.group(2)


def shares(cw: CallerWorld) -> list[ResultShare]:
    with cw.world.sessions() as session:
        return list(session.scalars(select(ResultShare)))


def count(cw: CallerWorld, action: AuditAction) -> int:
    with cw.world.sessions() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
            )
            or 0
        )


def test_a_share_shows_its_link_once_and_the_doctor_reads_it_without_login(
    client: TestClient, cw: CallerWorld, alpha: Runtime, backend: str
) -> None:
    make_report(  # an earlier report: the patient's trend, never the doctor's
        cw.runtime,
        cw.world.sessions,
        cw.world.tenant,
        cw.world.patients["today"],
        site_id=cw.world.sites["main"],
        title="Bilan précédent",
        observations=[glucose("0.91")],
        released_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=90),
    )
    report_id = released(cw)
    as_(client, cw, PATIENT_OWN)
    assert "0,91" in client.get(f"/compte/resultats/{report_id}").text
    created = share(client, report_id)
    assert created.status_code == 200, created.text
    url, token = link_of(created)
    assert "n'est affiché qu'une fois" in created.text
    assert str(report_id) not in url  # the link names nothing but the token
    (stored,) = shares(cw)
    assert stored.token_digest == hashlib.sha256(token.encode()).digest()
    assert stored.expires_at - stored.created_at == dt.timedelta(days=7)
    # The patient's page lists the share by name, without the link.
    page = client.get(f"/compte/resultats/{report_id}")
    assert RECIPIENT in page.text
    assert token not in page.text

    as_(client, cw, None)
    for _ in range(2):
        view = client.get(f"/partage/{token}")
        assert view.status_code == 200, view.text
    assert "1,27" in view.text
    assert "Supérieur à la normale" in view.text
    assert "0,91" not in view.text  # one report shared, not the others
    assert "Bilan précédent" not in view.text
    person = cw.world.inputs["today"]
    assert person.first_names in view.text
    assert person.nir is not None
    assert person.nir.compact not in view.text
    assert view.headers["referrer-policy"] == "no-referrer"
    assert view.headers["cache-control"] == "no-store"
    assert "noindex" in view.headers["x-robots-tag"]
    assert '<meta name="robots" content="noindex, nofollow">' in view.text
    pdf = client.get(f"/partage/{token}/pdf")
    assert pdf.content == PDF
    assert pdf.headers["content-disposition"] == 'attachment; filename="compte-rendu.pdf"'
    (stored,) = shares(cw)
    assert stored.views == 3
    assert count(cw, AuditAction.RESULT_SHARE_VIEW) == 3

    # The patient sees each view in its access history.
    as_(client, cw, PATIENT_OWN)
    history = client.get(f"/api/v1/patients/{cw.world.patients['today']}/access-history")
    labels = [entry["label"] for entry in history.json()]
    assert (
        labels.count("Consultation d'un compte rendu partagé, avec le lien que vous avez donné")
        == 3
    )
    assert "Partage d'un compte rendu avec un médecin" in labels
    viewers = {entry["actor"] for entry in history.json() if "lien que vous avez" in entry["label"]}
    assert viewers == {"Médecin avec votre lien de partage"}
    purposes = {entry["purpose"] for entry in history.json()}
    assert "Consultation par le médecin à qui vous avez donné un lien de partage" in purposes
    assert not {"results", "result-share", "result-share-create", "result-shares"} & purposes
    page = client.get(f"/compte/resultats/{report_id}")
    assert "Consultations</dt><dd>3" in page.text

    # At rest: the token and the recipient are nowhere in clear.
    if backend == "sqlite":
        alpha.engine.dispose()
        blob = b"".join(path.read_bytes() for path in sqlite_files(alpha.settings.database_url))
        assert leaked(blob, [token, RECIPIENT, "Lemercier"]) == []


@pytest.mark.parametrize("backend", ["sqlite"])  # nothing differs on PostgreSQL
def test_creating_a_share_needs_a_recent_step_up(client: TestClient, cw: CallerWorld) -> None:
    report_id = released(cw)
    cw.age_second_factor(PATIENT_OWN)
    as_(client, cw, PATIENT_OWN)
    answer = share(client, report_id)
    assert answer.status_code == 303
    assert "/compte/confirmer-identite" in answer.headers["location"]
    assert shares(cw) == []


def test_revoked_expired_and_unknown_links_get_one_neutral_404(
    client: TestClient, cw: CallerWorld
) -> None:
    report_id = released(cw)
    as_(client, cw, PATIENT_OWN)
    _, revoked = link_of(share(client, report_id, duration="24h"))
    _, expired = link_of(share(client, report_id, duration="30j"))
    first, second = sorted(shares(cw), key=lambda s: s.expires_at)
    assert first.expires_at - first.created_at == dt.timedelta(hours=24)
    assert second.expires_at - second.created_at == dt.timedelta(days=30)
    stopped = client.post(
        "/compte/resultats/partages/arret",
        data={"share_id": str(first.id), "csrf_token": cw.sessions[PATIENT_OWN].csrf},
        headers={"Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert stopped.status_code == 303
    assert "Le partage est arrêté" in client.get(stopped.headers["location"]).text
    with transaction(cw.world.sessions) as session:
        session.execute(
            update(ResultShare)
            .where(ResultShare.id == second.id)
            .values(expires_at=second.created_at - dt.timedelta(minutes=1))
        )
    as_(client, cw, None)
    answers = [client.get(f"/partage/{t}") for t in (revoked, expired, "x" * 43, "court")]
    assert {a.status_code for a in answers} == {404}
    bodies = {re.sub(r"[0-9a-f]{32}", "", a.text) for a in answers}
    assert len(bodies) == 1
    assert "Lien de partage introuvable" in answers[0].text
    assert all(a.headers["referrer-policy"] == "no-referrer" for a in answers)
    assert client.get(f"/partage/{revoked}/pdf").status_code == 404
    assert {s.views for s in shares(cw)} == {0}
    assert count(cw, AuditAction.RESULT_SHARE_REVOKE) == 1
    assert count(cw, AuditAction.RESULT_SHARE_FAILURE) == 5


@pytest.mark.parametrize("backend", ["sqlite"])  # nothing differs on PostgreSQL
def test_guessing_links_is_rate_limited(client: TestClient, cw: CallerWorld) -> None:
    limit = int(FAILURES_PER_CLIENT.limit.split("/")[0])
    as_(client, cw, None)
    statuses = [client.get(f"/partage/{'a' * 42}{n % 10}").status_code for n in range(limit + 3)]
    assert statuses[:limit] == [404] * limit
    assert statuses[limit:] == [429] * 3
    # Each failure is recorded; the throttling once per window, not once per request.
    with cw.world.sessions() as session:
        purposes = list(
            session.scalars(
                select(AuditEvent.purpose).where(
                    AuditEvent.action == AuditAction.RESULT_SHARE_FAILURE
                )
            )
        )
    assert purposes.count("throttled") == 1
    assert len(purposes) == limit + 1


@pytest.mark.parametrize("backend", ["sqlite"])  # nothing differs on PostgreSQL
def test_bad_input_and_foreign_reports_write_nothing(client: TestClient, cw: CallerWorld) -> None:
    mine = released(cw)
    other = released(cw, "no_appointment")
    as_(client, cw, PATIENT_OWN)
    empty = share(client, mine, recipient="   ")
    assert empty.status_code == 422
    assert "Indiquez le nom du médecin" in empty.text
    too_long = share(client, mine, duration="90j")
    assert too_long.status_code == 422
    assert "24 heures, 7 jours ou 30 jours" in too_long.text
    assert share(client, other).status_code == 404
    as_(client, cw, PATIENT_OTHER)
    assert share(client, mine).status_code == 404
    as_(client, cw, "biologist")
    assert share(client, mine).status_code == 404
    assert shares(cw) == []
    # Another account cannot stop someone's share either.
    as_(client, cw, PATIENT_OWN)
    share(client, mine)
    (created,) = shares(cw)
    as_(client, cw, PATIENT_OTHER)
    answer = client.post(
        "/compte/resultats/partages/arret",
        data={"share_id": str(created.id), "csrf_token": cw.sessions[PATIENT_OTHER].csrf},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert answer.status_code == 404
    (still,) = shares(cw)
    assert still.revoked_at is None
