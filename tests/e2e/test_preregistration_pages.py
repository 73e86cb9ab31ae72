"""Pre-registration from the patient portal in Debian's Chromium: a patient with a booked
appointment logs in, finds the form prefilled from its record, declares its NIR, insurance
and third-party payment, uploads a small real PDF with its consent, finds it in its
documents and downloads it; what is stored is sealed.

The live application (uvicorn, SQLite file, key file, file mailer) holds one site, one
patient record without a NIR, its account, and an appointment tomorrow.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
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
from sqlalchemy import select
from test_account_pages import (
    PASSWORD,
    PHRASE,
    LiveServer,
    Visit,
    _visit,
    browser,
    log_in,
    second_factor_by_email,
    wait_for_problems,
)

from labvault.accounts.models import AccountKind
from labvault.accounts.services import AccountService
from labvault.app import create_app
from labvault.appointments.models import Appointment, PatientDocument, Preregistration
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.passwords import Argon2Parameters, PasswordHasher
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization
from labvault.patients.nir import synthetic_nir
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with the account pages

ACCOUNT_EMAIL = "alix.prereg@example.org"
BIRTH_DATE = dt.date(1990, 3, 14)
NIR = synthetic_nir(random.Random(42), sex=2, birth_date=BIRTH_DATE)
MEMBER_NUMBER = "MUT-55821-E2E"
SETUP = SystemPrincipal("test:e2e-preregistration")


def small_pdf() -> bytes:
    """A real one-page PDF, as a scanner's would be (text uncompressed)."""
    stream = b"BT /F1 12 Tf 72 720 Td (Ordonnance du Dr Martin) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@dataclass
class PreregistrationServer(LiveServer):
    runtime: Runtime
    tenant_id: uuid.UUID
    appointment_id: uuid.UUID


def seed(runtime: Runtime) -> tuple[uuid.UUID, uuid.UUID]:
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Laboratoire Alix")
        site = add_site(
            session,
            organization,
            name="Laboratoire des Acacias",
            address_line="2 rue des Acacias",
            postal_code="33000",
            city="Bordeaux",
            opening_hours={},
            sampling_capacity_per_hour=12,
        )
        tenant_id, site_id = organization.id, site.id
    with transaction(runtime.tenant_sessions(tenant_id)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant_id, SETUP)
        created = PatientRepository(session, keyring).register_many(
            [
                PatientInput.model_validate(
                    {
                        "birth_name": "Moreau",
                        "first_names": "Alix",
                        "birth_date": BIRTH_DATE.isoformat(),
                        "sex": "F",
                        "email": ACCOUNT_EMAIL,
                    }
                )
            ]
        )
        patient_id = created.created[0]
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
        starts = utcnow() + dt.timedelta(days=1)
        appointment = Appointment(
            tenant_id=tenant_id,
            patient_id=patient_id,
            site_id=site_id,
            starts_at=starts,
            ends_at=starts + dt.timedelta(minutes=15),
            status="booked",
        )
        session.add(appointment)
        session.flush()
        appointment_id = appointment.id
    return tenant_id, appointment_id


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreregistrationServer]:
    data_dir = tmp_path_factory.mktemp("e2e-preregistration") / "var"
    settings = Settings(data_dir=data_dir, environment="test", log_level="warning")
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    tenant_id, appointment_id = seed(runtime)
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
        yield PreregistrationServer(
            f"http://127.0.0.1:{port}",
            settings.resolved_data_dir / "mail",
            runtime,
            tenant_id,
            appointment_id,
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


@pytest.fixture
def visit(browser: Browser, live_server: PreregistrationServer) -> Iterator[Visit]:
    opened = _visit(browser, live_server)
    yield opened
    opened.context.close()


def expect_refusal(visit: Visit, status: int) -> None:
    """The form shown again answers with its status: Chromium reports it, once."""
    wait_for_problems(visit, 1)
    assert visit.problems == [
        "console error: Failed to load resource: the server responded with a status of "
        f"{status} (Unprocessable Entity)"
    ]
    visit.problems.clear()


def test_a_patient_pre_registers_and_uploads_a_prescription(
    visit: Visit, live_server: PreregistrationServer
) -> None:
    page = visit.page
    log_in(visit, ACCOUNT_EMAIL)
    second_factor_by_email(visit, ACCOUNT_EMAIL)

    form = f"/compte/rendez-vous/{live_server.appointment_id}/pre-enregistrement"
    page.goto(form)
    expect(page.get_by_role("heading", level=1)).to_have_text("Pré-enregistrement")
    expect(page.get_by_label("Nom de naissance")).to_have_value("Moreau")
    expect(page.get_by_label("Prénoms")).to_have_value("Alix")
    expect(page.get_by_role("radio", name="Femme")).to_be_checked()
    visit.check()

    # Third-party payment without a NIR: the form again, the error focused, nothing saved.
    page.get_by_role("checkbox", name=re.compile("tiers payant")).check()
    page.get_by_role("button", name="Enregistrer le pré-enregistrement").click()
    expect(page.locator(".error-summary")).to_contain_text("tiers payant")
    expect(page.get_by_label("Numéro de sécurité sociale (NIR)")).to_be_focused()
    expect_refusal(visit, 422)
    visit.check()

    page.get_by_label("Numéro de sécurité sociale (NIR)").fill(NIR.formatted())
    page.get_by_label("Mutuelle (organisme complémentaire)").fill("Mutuelle des Acacias")
    page.get_by_label("Numéro d'adhérent").fill(MEMBER_NUMBER)
    page.get_by_role("checkbox", name=re.compile("tiers payant")).check()
    page.get_by_role("button", name="Enregistrer le pré-enregistrement").click()
    expect(page).to_have_url(re.compile(r"info=pre-enregistrement-enregistre$"))
    expect(page.locator(".notice").first).to_contain_text("pré-enregistrement est enregistré")
    expect(page.get_by_label("Numéro de sécurité sociale (NIR)")).to_have_value("")
    assert NIR.compact not in page.content()
    visit.check()

    # The prescription: refused without consent, then accepted.
    document = small_pdf()
    page.get_by_label("Ordonnance", exact=True).set_input_files(
        {"name": "ordonnance.pdf", "mimeType": "application/pdf", "buffer": document}
    )
    page.get_by_role("button", name="Déposer l'ordonnance").click()
    expect(page.locator(".error-summary")).to_contain_text("accord")
    expect_refusal(visit, 422)
    visit.check()
    page.get_by_label("Ordonnance", exact=True).set_input_files(
        {"name": "ordonnance.pdf", "mimeType": "application/pdf", "buffer": document}
    )
    page.get_by_role("checkbox", name=re.compile("J'accepte de partager")).check()
    page.get_by_role("button", name="Déposer l'ordonnance").click()
    expect(page).to_have_url(re.compile(r"info=ordonnance-deposee$"))
    expect(page.locator("#documents-deposes")).to_contain_text("PDF")
    visit.check()

    page.goto("/compte/documents")
    expect(page.get_by_role("heading", level=1)).to_have_text("Mes documents")
    expect(page.locator("#documents")).to_contain_text("PDF")
    visit.check()
    with page.expect_download() as downloaded:
        page.get_by_role("link", name=re.compile("^Télécharger")).first.click()
    path = downloaded.value.path()
    assert path is not None
    assert path.read_bytes() == document

    with live_server.runtime.tenant_sessions(live_server.tenant_id)() as session:
        stored = session.scalars(select(PatientDocument)).one()
        assert stored.media_type == "application/pdf"
        assert b"Ordonnance du Dr Martin" not in stored.content
        declared = session.scalars(select(Preregistration)).one()
        assert declared.third_party_payment is True
        assert MEMBER_NUMBER.encode() not in declared.details
