"""The patient's results in the portal over HTTP: only released reports of its own record and
its dependents', "Nouveau" until opened, values with their flags in words and their trend,
the PDF as a neutral attachment; anything else (not released, another patient's, unknown,
staff) is one "page introuvable", recorded as a refusal; nothing readable at rest."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from caller_world import (
    ORIGIN,
    PATIENT_OTHER,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from helpers import leaked, pg_dump, sqlite_files
from labvault.app import create_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.patients.ins import Sex
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository
from labvault.results.models import ReportStatus
from results_portal_world import PDF, glucose, hemoglobin, make_report


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


def as_(client: TestClient, cw: CallerWorld, name: str) -> None:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")


def report(cw: CallerWorld, record: str | uuid.UUID, **kwargs: object) -> uuid.UUID:
    patient = cw.world.patients[record] if isinstance(record, str) else record
    return make_report(
        cw.runtime,
        cw.world.sessions,
        cw.world.tenant,
        patient,
        site_id=cw.world.sites["main"],
        **kwargs,  # type: ignore[arg-type]
    )


def add_child(cw: CallerWorld) -> uuid.UUID:
    """A minor the patient account acts for."""
    today = utcnow().date()
    child = PatientInput(
        birth_name="Petitjean",
        first_names="Noé",
        birth_date=today.replace(year=today.year - 8, day=min(today.day, 28)),
        sex=Sex.MALE,
    )
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(
            session, cw.runtime.key_provider, cw.world.tenant, SystemPrincipal("test:child")
        )
        patient_id = PatientRepository(session, keyring).register_many([child]).created[0]
    cw.add_dependent(PATIENT_OWN, patient_id)
    return patient_id


def refusals(cw: CallerWorld, report_id: uuid.UUID) -> list[AuditEvent]:
    with cw.world.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(
                    AuditEvent.target_id == report_id, AuditEvent.outcome == "denied"
                )
            )
        )


def without_ids(text: str) -> str:
    return re.sub(
        r"[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{32}|name=\"csrf_token\" value=\"[^\"]+\"", "", text
    )


def test_the_list_and_the_detail_show_released_reports_of_own_records_and_dependents(
    client: TestClient, cw: CallerWorld
) -> None:
    now = utcnow()
    older = report(
        cw,
        "today",
        title="Bilan de mars",
        observations=[glucose("0.95"), hemoglobin("13.2")],
        released_at=now - dt.timedelta(days=60),
    )
    latest = report(
        cw,
        "today",
        title="Bilan glycémique",
        conclusion="Glycémie élevée, à contrôler.",
        observations=[glucose("1.32", flags=("H",)), hemoglobin("12.8")],
        released_at=now - dt.timedelta(days=1),
    )
    waiting = report(cw, "today", title="Sérologie en attente", status=ReportStatus.VALIDATED)
    child = add_child(cw)
    child_report = report(cw, child, title="Bilan pédiatrique", observations=[hemoglobin("11.4")])
    other = report(cw, "no_appointment", title="Bilan d'un autre patient")

    as_(client, cw, PATIENT_OWN)
    page = client.get("/compte/resultats")
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    for shown in (older, latest, child_report):
        assert f"/compte/resultats/{shown}" in page.text
    for hidden in (waiting, other):
        assert str(hidden) not in page.text
    assert "Sérologie en attente" not in page.text
    assert page.text.count(">Nouveau</span>") == 3
    assert "Noé" in page.text  # whose report, when the account acts for several records
    assert "Alpha Centre" in page.text

    detail = client.get(f"/compte/resultats/{latest}")
    assert detail.status_code == 200, detail.text
    text = detail.text
    assert "1,32" in text
    assert "g/L" in text
    assert "0,70-1,10" in text
    assert "Supérieur à la normale" in text  # the flag in words, never a bare "H"
    assert "Glycémie élevée, à contrôler." in text
    assert "Dr Claire Fontaine" in text
    # The trend: the same exam's earlier value, with its date, in an accessible table.
    trend = text[text.index('id="titre-evolution"') :]
    assert "0,95" in trend
    assert "13,2" in trend
    assert "<caption" in trend
    assert f"/compte/resultats/{latest}/pdf" in text

    again = client.get("/compte/resultats")
    assert again.text.count(">Nouveau</span>") == 2  # opened: no longer new


def test_not_released_foreign_unknown_and_staff_get_one_404_recorded(
    client: TestClient, cw: CallerWorld
) -> None:
    waiting = report(cw, "today", status=ReportStatus.TO_VALIDATE)
    other = report(cw, "no_appointment")
    mine = report(cw, "today")
    answers = []
    as_(client, cw, PATIENT_OWN)
    for target in (waiting, other, uuid.uuid4()):
        for suffix in ("", "/pdf"):
            answer = client.get(f"/compte/resultats/{target}{suffix}")
            assert answer.status_code == 404, (target, suffix)
            answers.append(without_ids(answer.text))
    for name in ("biologist", "receptionist"):
        as_(client, cw, name)
        answer = client.get(f"/compte/resultats/{mine}")
        assert answer.status_code == 404
        answers.append(without_ids(answer.text))
    as_(client, cw, PATIENT_OTHER)
    assert client.get(f"/compte/resultats/{mine}").status_code == 404
    assert "Page introuvable" in answers[0]
    assert len(set(answers)) == 1
    assert {e.action for e in refusals(cw, other)} == {
        AuditAction.RESULT_PORTAL_READ.value,
        AuditAction.RESULT_PORTAL_DOWNLOAD.value,
    }
    assert refusals(cw, waiting)
    # Not signed in: the login page, never the report.
    client.cookies.clear()
    answer = client.get(f"/compte/resultats/{mine}", follow_redirects=False)
    assert answer.status_code in (302, 303, 307)


@pytest.mark.parametrize("backend", ["sqlite"])  # nothing differs on PostgreSQL
def test_the_pdf_is_a_neutral_attachment_and_its_reading_is_audited(
    client: TestClient, cw: CallerWorld
) -> None:
    mine = report(cw, "today", title="Bilan thyroïdien")
    as_(client, cw, PATIENT_OWN)
    answer = client.get(f"/compte/resultats/{mine}/pdf")
    assert answer.status_code == 200
    assert answer.content == PDF
    assert answer.headers["content-type"] == "application/pdf"
    assert answer.headers["content-disposition"] == 'attachment; filename="compte-rendu.pdf"'
    assert answer.headers["cache-control"] == "no-store"
    without_pdf = report(cw, "today", pdf=None)
    assert client.get(f"/compte/resultats/{without_pdf}/pdf").status_code == 404
    with cw.world.sessions() as session:
        actions = set(
            session.scalars(
                select(AuditEvent.action).where(
                    AuditEvent.target_id.in_([mine, cw.world.patients["today"]]),
                    AuditEvent.outcome == "success",
                )
            )
        )
    assert AuditAction.RESULT_PORTAL_DOWNLOAD.value in actions
    assert AuditAction.PATIENT_RECORD_READ.value in actions  # the key opening itself


@pytest.mark.parametrize("backend", ["sqlite"])  # nothing differs on PostgreSQL
def test_the_account_menu_links_to_the_results(client: TestClient, cw: CallerWorld) -> None:
    as_(client, cw, PATIENT_OWN)
    page = client.get("/compte/securite")
    assert 'href="/compte/resultats"' in page.text
    assert "Vos résultats" in page.text
    empty = client.get("/compte/resultats")
    assert "Aucun résultat n'est encore disponible" in empty.text


@pytest.mark.parametrize("backend", ["sqlite"])  # nothing differs on PostgreSQL
@pytest.mark.parametrize(
    ("role", "links"),
    [
        ("biologist", {"/biologie/resultats", "/laboratoire/rapprochement"}),
        ("receptionist", {"/laboratoire/rapprochement", "/accueil/planning"}),
        ("sampler", {"/accueil/planning"}),
        ("security_officer", {"/securite/alertes", "/securite/acces-exceptionnels"}),
        ("organization_admin", set()),
    ],
)
def test_staff_menus_link_to_their_work(
    client: TestClient, cw: CallerWorld, role: str, links: set[str]
) -> None:
    """Each role finds its own pages from its account, and none of another role's."""
    every = {
        "/biologie/resultats",
        "/laboratoire/rapprochement",
        "/accueil/planning",
        "/securite/alertes",
        "/securite/acces-exceptionnels",
        "/compte/resultats",
    }
    as_(client, cw, role)
    page = client.get("/compte/securite").text
    assert {link for link in every if f'href="{link}"' in page} == links


def test_no_result_value_is_readable_at_rest(
    client: TestClient, cw: CallerWorld, alpha: Runtime, backend: str
) -> None:
    report(
        cw,
        "today",
        title="Recherche de toxoplasmose",
        conclusion="Immunité ancienne probable",
        observations=[glucose("7.77"), hemoglobin("15.55")],
    )
    as_(client, cw, PATIENT_OWN)
    assert client.get("/compte/resultats").status_code == 200
    seeded = ["Recherche de toxoplasmose", "Immunité ancienne probable", "7.77", "15.55"]
    seeded += ["Glycémie à jeun", "Dr Claire Fontaine", "%PDF-1.4"]
    url = alpha.settings.database_url
    if backend == "sqlite":
        alpha.engine.dispose()
        blob = b"".join(path.read_bytes() for path in sqlite_files(url))
    else:
        blob = pg_dump(url)
    assert leaked(blob, seeded) == []


def test_values_and_flags_are_written_for_a_french_reader() -> None:
    from decimal import Decimal

    from labvault.results.content import Coding, ObservationContent
    from labvault.results.portal import flag_words, format_value

    coded = ObservationContent(code=Coding(code="X"), value_type="CWE", text="NEG^Négatif^L")
    assert format_value(coded) == "Négatif"
    assert format_value(ObservationContent(code=Coding(code="X"), number=Decimal("-0.50"))) == (
        "-0,50"
    )
    assert flag_words(["H", "h", "HH"]) == (
        "Supérieur à la normale",
        "Très supérieur à la normale (valeur critique)",
    )
    # A flag nobody registered is never echoed (it could carry anything).
    assert flag_words(["<script>"]) == ("Signalé par le laboratoire",)
