"""Issue 6's journey end to end, in Debian's Chromium against the live application:

1. a patient logs in (password and emailed code), books a slot for tomorrow (site, exams,
   slot held, confirmed);
2. pre-registers from the link of the confirmation, and uploads an ordonnance (a small real
   PDF) with the consent to share it;
3. the reminder job runs for tomorrow and its email reaches a REAL SMTP server (aiosmtpd on a
   loopback port): it carries the date, the site and the account's security phrase, and no
   exam name, code or anything else medical or personal;
4. the visit's day comes (the appointment is moved to today in the database, as the clock
   would bring it: the desk records arrivals on the day only), and a receptionist of the
   site checks the patient in on ``/accueil/planning``.

The receptionist's session goes straight into the cookie (staff login and its second factor
are tested in ``test_staff_pages``); everything else goes through the pages.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import io
import logging
import re
import socket
import threading
import time
import uuid
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import pypdf
import pytest
import structlog
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from playwright.sync_api import Browser, expect
from sqlalchemy import select
from test_account_pages import (
    PASSWORD,
    PHRASE,
    SESSION_COOKIE,
    LiveServer,
    Visit,
    _visit,
    browser,
    log_in,
    second_factor_by_email,
)

from helpers import CHEAP_HASHER
from labvault.accounts.models import AccountKind
from labvault.accounts.services import AccountService
from labvault.app import create_app
from labvault.appointments.models import Appointment, PatientDocument, Preregistration
from labvault.catalog.models import Exam
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail import SmtpMailer
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.demo import create_demo_booking_setup
from labvault.organizations.services import add_site, create_organization
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository
from labvault.reminders.services import ReminderJob
from labvault.reminders.sms import MemorySmsSender
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository

pytestmark = [pytest.mark.browser, pytest.mark.smtp]

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with the account pages

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
PATIENT_EMAIL = "aurore.parcours@example.org"
DESK_EMAIL = "accueil.parcours@example.org"
SITE_NAME = "Laboratoire du Parc"
SITE_ADDRESS = "9 avenue du Parc"
PERSON = {
    "birth_name": "Vasseur",
    "first_names": "Aurore Line",
    "birth_date": "1984-09-21",
    "sex": "F",
    "email": PATIENT_EMAIL,
}
EXAMS_BOOKED = ("GLY", "EAL")
EVERY_DAY = {
    day: [["07:00", "12:00"], ["14:00", "18:00"]]
    for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
}
SETUP = SystemPrincipal("test:e2e-journey")
SENDER = "labvault <no-reply@labvault.localhost>"


# --- a real SMTP server -----------------------------------------------------------------------


@dataclass
class Recorder:
    envelopes: list[Envelope] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK: queued"

    def messages(self) -> list[tuple[list[str], EmailMessage]]:
        found = []
        for envelope in self.envelopes:
            parsed = email.message_from_bytes(
                envelope.original_content or b"", policy=email.policy.default
            )
            assert isinstance(parsed, EmailMessage)
            found.append((list(envelope.rcpt_tos), parsed))
        return found


@pytest.fixture
def smtp() -> Iterator[tuple[int, Recorder]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, recorder
    finally:
        controller.stop()


# --- the live application ---------------------------------------------------------------------


@dataclass
class Journey:
    server: LiveServer
    runtime: Runtime
    tenant_id: uuid.UUID
    site_id: uuid.UUID
    patient_id: uuid.UUID
    desk_token: str


def _accounts(runtime: Runtime, session: object, tenant_id: uuid.UUID) -> AccountService:
    return AccountService(
        session,  # type: ignore[arg-type]
        tenant_id=tenant_id,
        provider=runtime.key_provider,
        mailer=runtime.mailer,
        limiter=runtime.rate_limiter,
        settings=runtime.settings,
        hasher=CHEAP_HASHER,
    )


def seed(runtime: Runtime) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, str]:
    """A site open every day with the demo catalog and schedule, the patient's record and
    account (linked), and a receptionist of the site with a signed-in session."""
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Laboratoire Parcours")
        site = add_site(
            session,
            organization,
            name=SITE_NAME,
            address_line=SITE_ADDRESS,
            postal_code="69006",
            city="Lyon",
            opening_hours=EVERY_DAY,
            sampling_capacity_per_hour=12,
        )
        tenant_id, site_id = organization.id, site.id
    with transaction(runtime.tenant_sessions(tenant_id)) as session:
        create_demo_booking_setup(session, tenant_id)
        keyring = TenantKeyring(session, runtime.key_provider, tenant_id, SETUP)
        patient_id = (
            PatientRepository(session, keyring)
            .register_many([PatientInput.model_validate(PERSON)])
            .created[0]
        )
        staff_id = StaffRepository(session, keyring).add(
            first_name="Inès",
            last_name="Accueil",
            email=DESK_EMAIL,
            role=StaffRole.RECEPTIONIST,
            site_ids=[site_id],
        )
        accounts = _accounts(runtime, session, tenant_id)
        patient = accounts.provision(
            PATIENT_EMAIL,
            Secret(PASSWORD),
            kind=AccountKind.PATIENT,
            security_phrase=PHRASE,
            by=SETUP,
        )
        patient.patient_id = patient_id
        desk = accounts.provision(
            DESK_EMAIL,
            Secret(PASSWORD),
            kind=AccountKind.STAFF,
            security_phrase=None,
            by=SETUP,
            role=StaffRole.RECEPTIONIST.value,
            staff_id=staff_id,
        )
        session.flush()
        token, _ = accounts.sessions.create(
            tenant_id=tenant_id,
            account_id=desk.id,
            policy=accounts._policy(desk),
            client_hash=None,
            second_factor="totp",
        )
    return tenant_id, site_id, patient_id, token.reveal()


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    data_dir = tmp_path_factory.mktemp("e2e-journey") / "var"
    settings = Settings(data_dir=data_dir, environment="test", log_level="warning")
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    tenant_id, site_id, patient_id, desk_token = seed(runtime)
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
        yield Journey(
            LiveServer(f"http://127.0.0.1:{port}", settings.resolved_data_dir / "mail"),
            runtime,
            tenant_id,
            site_id,
            patient_id,
            desk_token,
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
def visit(browser: Browser, journey: Journey) -> Iterator[Visit]:
    opened = _visit(browser, journey.server)
    yield opened
    opened.context.close()


def small_pdf() -> bytes:
    """A real one-page PDF, as a scanner would make (pypdf writes it)."""
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def plain_text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


# --- the journey ------------------------------------------------------------------------------


def test_book_pre_register_get_reminded_and_be_checked_in(
    browser: Browser, visit: Visit, journey: Journey, smtp: tuple[int, Recorder]
) -> None:
    page = visit.page
    tomorrow = utcnow().astimezone(PARIS).date() + dt.timedelta(days=1)

    # 1. Book a slot for tomorrow.
    log_in(visit, PATIENT_EMAIL)
    second_factor_by_email(visit, PATIENT_EMAIL)
    page.get_by_role("link", name="Vos rendez-vous").click()
    page.get_by_role("link", name="Prendre rendez-vous").click()
    page.get_by_role("radio", name="Vous").check()
    page.get_by_label("Laboratoire", exact=True).select_option(
        label=f"{SITE_NAME} — {SITE_ADDRESS}, Lyon"
    )
    page.get_by_role("checkbox", name=re.compile("Glycémie à jeun")).check()
    page.get_by_role("checkbox", name=re.compile("Bilan lipidique")).check()
    page.get_by_role("button", name="Voir les créneaux").click()
    expect(page.get_by_role("heading", name=re.compile("^Créneaux du "))).to_be_visible()
    visit.check()
    slots = page.locator("button[name=starts_at]")
    chosen = None
    for index in range(slots.count()):
        value = slots.nth(index).get_attribute("value") or ""
        if dt.datetime.fromisoformat(value).astimezone(PARIS).date() == tomorrow:
            chosen = slots.nth(index)
            break
    assert chosen is not None, "the site is open every day: tomorrow has slots"
    chosen.click()
    expect(page.locator("#reserve-jusqua")).to_contain_text("Ce créneau vous est réservé")
    page.get_by_role("button", name="Confirmer le rendez-vous").click()
    expect(page).to_have_url(re.compile(r"info=rendez-vous-confirme&rdv=[0-9a-f-]{36}$"))
    appointment_id = uuid.UUID(page.url.rsplit("=", 1)[-1])
    visit.check()

    # 2. Pre-register from the confirmation's link, then upload the ordonnance.
    page.get_by_role("link", name="pré-enregistrez-vous maintenant").click()
    expect(page).to_have_url(
        re.compile(rf"/compte/rendez-vous/{appointment_id}/pre-enregistrement")
    )
    expect(page.get_by_role("heading", level=1)).to_have_text("Pré-enregistrement")
    page.get_by_role("textbox", name=re.compile("^Nom de naissance")).fill(PERSON["birth_name"])
    page.get_by_role("textbox", name=re.compile("^Prénoms")).fill(PERSON["first_names"])
    page.get_by_label(re.compile("^Date de naissance")).fill(PERSON["birth_date"])
    page.get_by_role("radio", name="Femme").check()
    page.get_by_role("button", name="Enregistrer le pré-enregistrement").click()
    expect(page.locator(".notice").first).to_be_visible()
    assert page.locator(".error-summary").count() == 0, page.locator(".error-summary").inner_text()
    page.locator("#file").set_input_files(
        {"name": "ordonnance.pdf", "mimeType": "application/pdf", "buffer": small_pdf()}
    )
    page.locator("#consent").check()
    page.get_by_role("button", name="Déposer l'ordonnance").click()
    expect(page.locator(".notice").first).to_be_visible()
    assert page.locator(".error-summary").count() == 0, page.locator(".error-summary").inner_text()
    with journey.runtime.tenant_sessions(journey.tenant_id)() as session:
        assert session.scalars(
            select(Preregistration).where(Preregistration.appointment_id == appointment_id)
        ).one()
        document = session.scalars(
            select(PatientDocument).where(PatientDocument.appointment_id == appointment_id)
        ).one()
        assert document.media_type == "application/pdf"
        assert b"%PDF" not in document.content, "the ordonnance is sealed"
        exams = list(session.scalars(select(Exam).where(Exam.code.in_(EXAMS_BOOKED))))
    assert len(exams) == len(EXAMS_BOOKED)

    # 3. The reminder job for tomorrow, through a real SMTP server.
    port, recorder = smtp
    mailer = SmtpMailer.from_url(f"smtp://127.0.0.1:{port}?tls=none", SENDER, retry_delay=0)
    job = ReminderJob(
        journey.runtime.key_provider,
        mailer,
        MemorySmsSender(),
        public_url=journey.server.base_url,
    )
    sessions = journey.runtime.tenant_sessions(journey.tenant_id)
    report = job.run(sessions, journey.tenant_id, tomorrow)
    assert (report.due, report.sent, report.emails) == (1, 1, 1), report
    ((recipients, message),) = recorder.messages()
    assert recipients == [PATIENT_EMAIL]
    text = plain_text(message)
    whole = (str(message["Subject"]) + "\n" + text).lower()
    assert PHRASE in text, "the account's security phrase, against phishing"
    assert SITE_NAME in text
    assert "/compte/rendez-vous" in text
    forbidden = [
        *(exam.label for exam in exams),
        *(exam.code for exam in exams),
        *(exam.loinc or "" for exam in exams),
        "glycémie",
        "lipid",
        "jeûn",
        "à jeun",
        PERSON["birth_name"],
        "Aurore",
        PERSON["birth_date"],
        "21/09/1984",
    ]
    leaked = [value for value in forbidden if value and value.lower() in whole]
    assert leaked == [], f"the reminder names {leaked}"
    assert job.run(sessions, journey.tenant_id, tomorrow).sent == 0, "sent once"

    # 4. The visit's day: the desk records arrivals on the day only.
    now = utcnow()
    with transaction(sessions) as session:
        row = session.get(Appointment, appointment_id)
        assert row is not None
        length = (row.ends_at or row.starts_at) - row.starts_at
        row.starts_at = now.replace(microsecond=0)
        row.ends_at = row.starts_at + (length or dt.timedelta(minutes=10))
    desk = _visit(browser, journey.server)
    try:
        desk.context.add_cookies(
            [
                {
                    "name": SESSION_COOKIE,
                    "value": journey.desk_token,
                    "domain": "127.0.0.1",
                    "path": "/",
                    "secure": True,
                    "httpOnly": True,
                    "sameSite": "Strict",
                }
            ]
        )
        desk_page = desk.page
        desk_page.goto("/accueil/planning")
        expect(desk_page.get_by_role("heading", level=1)).to_contain_text(SITE_NAME)
        arrival = desk_page.get_by_role("button", name=re.compile("^Arrivée"))
        expect(arrival).to_have_count(1)
        desk.check()
        arrival.click()
        expect(desk_page.get_by_role("button", name=re.compile("^Arrivée"))).to_have_count(0)
        desk.check()
    finally:
        desk.context.close()
    with sessions() as session:
        row = session.get(Appointment, appointment_id)
        assert row is not None
        assert row.status == "checked_in"
        assert row.checked_in_at is not None
