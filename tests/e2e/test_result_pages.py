"""The patient's results in Debian's Chromium, on a phone-sized screen: the list ("Nouveau"
until opened), a report with its values, flags in words and trend table, a share link
created and opened by a doctor without login, then stopped. Every page passes the
accessibility and CSP checks of ``visit.check()``.

The live application (uvicorn, SQLite file, key file, file mailer) holds two released
reports of the patient (made directly, sealed under its key) and one of another patient.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import structlog
import uvicorn
from playwright.sync_api import Browser, expect
from test_account_pages import (
    PASSWORD,
    PHRASE,
    LiveServer,
    _visit,
    browser,
    log_in,
    second_factor_by_email,
)

from labvault.accounts.models import AccountKind
from labvault.accounts.services import AccountService
from labvault.app import create_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.passwords import Argon2Parameters, PasswordHasher
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository
from results_portal_world import glucose, hemoglobin, make_report

pytestmark = pytest.mark.browser

__all__ = ["browser"]

ACCOUNT_EMAIL = "camille.resultats@example.org"
SITE_NAME = "Laboratoire des Glycines"
SETUP = SystemPrincipal("test:e2e-results")


@dataclass
class ResultServer(LiveServer):
    runtime: Runtime
    tenant_id: uuid.UUID
    latest: uuid.UUID
    foreign: uuid.UUID


def _patient(session: object, runtime: Runtime, tenant_id: uuid.UUID, **traits: str) -> uuid.UUID:
    keyring = TenantKeyring(session, runtime.key_provider, tenant_id, SETUP)  # type: ignore[arg-type]
    created = PatientRepository(session, keyring).register_many(  # type: ignore[arg-type]
        [PatientInput.model_validate(traits)]
    )
    return created.created[0]


def seed(runtime: Runtime) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Laboratoire Glycine")
        site = add_site(
            session,
            organization,
            name=SITE_NAME,
            address_line="9 rue des Glycines",
            postal_code="33000",
            city="Bordeaux",
            opening_hours={},
            sampling_capacity_per_hour=12,
        )
        tenant_id, site_id = organization.id, site.id
    sessions = runtime.tenant_sessions(tenant_id)
    with transaction(sessions) as session:
        patient_id = _patient(
            session,
            runtime,
            tenant_id,
            birth_name="Durand",
            first_names="Camille",
            birth_date="1979-06-02",
            sex="F",
            email=ACCOUNT_EMAIL,
        )
        other_id = _patient(
            session,
            runtime,
            tenant_id,
            birth_name="Morel",
            first_names="Inès",
            birth_date="1985-01-20",
            sex="F",
        )
        accounts = AccountService(
            session,
            tenant_id=tenant_id,
            provider=runtime.key_provider,
            mailer=runtime.mailer,
            limiter=runtime.rate_limiter,
            settings=runtime.settings,
            hasher=PasswordHasher(Argon2Parameters(time_cost=5, memory_cost=7168)),
        )
        account = accounts.provision(
            ACCOUNT_EMAIL,
            Secret(PASSWORD),
            kind=AccountKind.PATIENT,
            security_phrase=PHRASE,
            by=SETUP,
        )
        account.patient_id = patient_id
    now = dt.datetime.now(dt.UTC)
    make_report(
        runtime,
        sessions,
        tenant_id,
        patient_id,
        site_id=site_id,
        title="Bilan de printemps",
        observations=[glucose("0.98"), hemoglobin("13.9")],
        released_at=now - dt.timedelta(days=120),
    )
    latest = make_report(
        runtime,
        sessions,
        tenant_id,
        patient_id,
        site_id=site_id,
        title="Bilan glycémique",
        conclusion="Glycémie à recontrôler à jeun.",
        observations=[glucose("1.31", flags=("H",)), hemoglobin("14.1")],
        released_at=now - dt.timedelta(hours=2),
    )
    foreign = make_report(
        runtime, sessions, tenant_id, other_id, site_id=site_id, title="Bilan d'Inès"
    )
    return tenant_id, latest, foreign


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResultServer]:
    data_dir = tmp_path_factory.mktemp("e2e-results") / "var"
    settings = Settings(data_dir=data_dir, environment="test", log_level="warning")
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    tenant_id, latest, foreign = seed(runtime)
    app = create_app(settings, runtime)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the server stopped while starting"
        assert time.monotonic() < deadline, "the server did not start within 15 s"
        time.sleep(0.02)
    try:
        yield ResultServer(
            f"http://127.0.0.1:{port}",
            settings.resolved_data_dir / "mail",
            runtime,
            tenant_id,
            latest,
            foreign,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()
        runtime.close()
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if type(handler).__name__ == "_LabvaultHandler":
                root.removeHandler(handler)


def test_a_patient_reads_its_results_and_shares_one_with_a_doctor(
    browser: Browser, live_server: ResultServer
) -> None:
    visit = _visit(browser, live_server)
    doctor = _visit(browser, live_server)
    try:
        page = visit.page
        log_in(visit, ACCOUNT_EMAIL)
        second_factor_by_email(visit, ACCOUNT_EMAIL)

        page.get_by_role("link", name="Vos résultats").click()
        expect(page).to_have_url(re.compile(r"/compte/resultats$"))
        expect(page.get_by_role("heading", level=1)).to_have_text("Vos résultats")
        listed = page.locator("#resultats")
        expect(listed.locator(".badge", has_text="Nouveau")).to_have_count(2)
        expect(listed).to_contain_text(SITE_NAME)
        expect(listed).not_to_contain_text("Inès")
        visit.check()

        page.get_by_role("link", name=re.compile("^Bilan glycémique")).click()
        expect(page).to_have_url(re.compile(rf"/compte/resultats/{live_server.latest}$"))
        values = page.get_by_role("table", name="Résultats du compte rendu")
        glucose_row = values.get_by_role("row", name=re.compile("Glycémie à jeun"))
        expect(glucose_row).to_contain_text("1,31 g/L")
        expect(glucose_row).to_contain_text("Supérieur à la normale")
        expect(page.get_by_text("Glycémie à recontrôler à jeun.")).to_be_visible()
        trend = page.get_by_role("table", name="Glycémie à jeun")
        expect(trend).to_contain_text("0,98 g/L")
        expect(trend).to_contain_text("(ce compte rendu)")
        expect(
            page.get_by_role("link", name=re.compile("Télécharger le compte rendu"))
        ).to_be_visible()
        visit.check()

        # Another patient's report: the one "page introuvable".
        page.goto(f"/compte/resultats/{live_server.foreign}")
        expect(page.get_by_role("heading", level=1)).to_have_text("Page introuvable")
        visit.problems.clear()  # the browser reports the 404 itself
        page.goto("/compte/resultats")
        expect(page.locator("#resultats .badge", has_text="Nouveau")).to_have_count(1)

        # Share the report with a doctor: the link is shown once.
        page.goto(f"/compte/resultats/{live_server.latest}")
        page.get_by_label("Nom du médecin").fill("Dr Aurèle Vasseur")
        page.get_by_role("radio", name="24 heures").check()
        page.get_by_role("button", name="Créer le lien de partage").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Lien de partage créé")
        shown = page.get_by_role("textbox", name="Lien de partage").input_value()
        found = re.fullmatch(r"https?://[^/]+(/partage/[A-Za-z0-9_-]{43})", shown)
        assert found is not None, shown
        link = live_server.base_url + found.group(1)  # the public URL is not the test server's
        visit.check()

        # The doctor opens it without an account.
        response = doctor.page.goto(link)
        assert response is not None
        assert response.status == 200
        assert response.headers["referrer-policy"] == "no-referrer"
        expect(doctor.page.get_by_role("heading", level=1)).to_contain_text("Bilan glycémique")
        expect(doctor.page.get_by_text("Camille Durand")).to_be_visible()
        expect(doctor.page.get_by_role("table", name="Résultats du compte rendu")).to_contain_text(
            "1,31 g/L"
        )
        doctor.check()

        # The patient sees the view, then stops the share; the link no longer opens.
        page.get_by_role("link", name="Retour au compte rendu").click()
        shares = page.locator("#titre-partages + ul")
        expect(shares).to_contain_text("Dr Aurèle Vasseur")
        expect(shares.get_by_text(re.compile(r"^1 \(dernière le "))).to_be_visible()
        visit.check()
        page.get_by_role("button", name=re.compile("^Arrêter ce partage")).click()
        expect(page.locator(".notice").first).to_contain_text("Le partage est arrêté")
        visit.check()
        gone = doctor.page.goto(link)
        assert gone is not None
        assert gone.status == 404
        expect(doctor.page.get_by_role("heading", level=1)).to_have_text(
            "Lien de partage introuvable"
        )
    finally:
        visit.context.close()
        doctor.context.close()
