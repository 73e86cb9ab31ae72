"""Booking from the patient portal in Debian's Chromium: a patient whose account is linked to
its record logs in, picks a site, exams and a slot, sees the slot held for them, confirms,
finds the appointment with its preparation instructions, then cancels it.

The live application (uvicorn, SQLite file, key file, file mailer) holds the demo catalog
and a site open every day, so the test finds slots whatever day it runs.
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
from playwright.sync_api import Browser, Locator, Page, expect
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
)

from labvault.accounts.models import AccountKind
from labvault.accounts.services import AccountService
from labvault.app import create_app
from labvault.appointments.models import Appointment, SlotClaim
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.passwords import Argon2Parameters, PasswordHasher
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.demo import create_demo_booking_setup
from labvault.organizations.services import add_site, create_organization
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with the account pages

ACCOUNT_EMAIL = "camille.rdv@example.org"
SITE_NAME = "Laboratoire des Tilleuls"
EVERY_DAY = {
    day: [["07:00", "12:00"], ["14:00", "18:00"]]
    for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
}
SETUP = SystemPrincipal("test:e2e-booking")


def _changeable_slot(page: Page) -> Locator | None:
    """The first slot shown that starts after the change deadline, with an hour's margin."""
    earliest = dt.datetime.now(dt.UTC) + dt.timedelta(
        hours=Settings.model_fields["booking_change_deadline_hours"].default + 1
    )
    slots = page.locator("button[name=starts_at]")
    for index in range(slots.count()):
        value = slots.nth(index).get_attribute("value") or ""
        if dt.datetime.fromisoformat(value) >= earliest:
            return slots.nth(index)
    return None


@dataclass
class BookingServer(LiveServer):
    runtime: Runtime
    tenant_id: uuid.UUID
    patient_id: uuid.UUID


def seed(runtime: Runtime, email: str) -> tuple[uuid.UUID, uuid.UUID]:
    """An organization with one site open every day, the demo catalog and schedules, one
    patient record and an active patient account linked to it."""
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Laboratoire Tilleul")
        add_site(
            session,
            organization,
            name=SITE_NAME,
            address_line="4 allée des Tilleuls",
            postal_code="69007",
            city="Lyon",
            opening_hours=EVERY_DAY,
            sampling_capacity_per_hour=12,
        )
        tenant_id = organization.id
    with transaction(runtime.tenant_sessions(tenant_id)) as session:
        create_demo_booking_setup(session, tenant_id)
        keyring = TenantKeyring(session, runtime.key_provider, tenant_id, SETUP)
        created = PatientRepository(session, keyring).register_many(
            [
                PatientInput.model_validate(
                    {
                        "birth_name": "Durand",
                        "first_names": "Camille",
                        "birth_date": "1979-06-02",
                        "sex": "F",
                        "email": email,
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
            email, Secret(PASSWORD), kind=AccountKind.PATIENT, security_phrase=PHRASE, by=SETUP
        )
        account.patient_id = patient_id
    return tenant_id, patient_id


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BookingServer]:
    data_dir = tmp_path_factory.mktemp("e2e-booking") / "var"
    settings = Settings(data_dir=data_dir, environment="test", log_level="warning")
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    tenant_id, patient_id = seed(runtime, ACCOUNT_EMAIL)
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
        yield BookingServer(
            f"http://127.0.0.1:{port}",
            settings.resolved_data_dir / "mail",
            runtime,
            tenant_id,
            patient_id,
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
def visit(browser: Browser, live_server: BookingServer) -> Iterator[Visit]:
    opened = _visit(browser, live_server)
    yield opened
    opened.context.close()


def test_a_patient_books_a_slot_then_cancels_it(visit: Visit, live_server: BookingServer) -> None:
    page = visit.page
    log_in(visit, ACCOUNT_EMAIL)
    second_factor_by_email(visit, ACCOUNT_EMAIL)

    page.get_by_role("link", name="Vos rendez-vous").click()
    expect(page).to_have_url(re.compile(r"/compte/rendez-vous$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Vos rendez-vous")
    assert "Aucun rendez-vous à venir" in page.locator("#titre-a-venir + p").inner_text()
    visit.check()

    # Step 1: for whom, where, which exams.
    page.get_by_role("link", name="Prendre rendez-vous").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Prendre rendez-vous")
    visit.check()
    page.get_by_role("radio", name="Vous").check()
    page.get_by_label("Laboratoire", exact=True).select_option(
        label=f"{SITE_NAME} — 4 allée des Tilleuls, Lyon"
    )
    page.get_by_role("checkbox", name=re.compile("Glycémie à jeun")).check()
    page.get_by_role("checkbox", name=re.compile(r"Numération formule sanguine")).check()
    page.get_by_role("button", name="Voir les créneaux").click()

    # Step 2: this week's slots, by day; choosing one holds it.
    expect(page.get_by_role("heading", name=re.compile("^Créneaux du "))).to_be_visible()
    visit.check()
    # The slot must stay movable and cancellable: past the change deadline (2 hours before
    # by default) the page rightly offers neither, so early in the morning skip the first
    # slots of the day.
    first = _changeable_slot(page)
    if first is None:  # late on the last day of the week: the next one
        page.get_by_role("button", name="Semaine suivante").click()
        first = _changeable_slot(page)
    assert first is not None, "the site is open every day"
    chosen = first.get_attribute("value")
    assert chosen is not None
    shown_time = first.inner_text().split(",")[0].strip()
    assert re.fullmatch(r"[0-2][0-9]:[0-5][0-9]", shown_time), shown_time
    first.click()

    # Step 3: the hold's expiry, then confirm.
    expect(page).to_have_url(re.compile(r"/compte/rendez-vous/[0-9a-f-]{36}/confirmation$"))
    appointment_id = uuid.UUID(page.url.rsplit("/", 2)[-2])
    held = page.locator("#reserve-jusqua")
    expect(held).to_contain_text(re.compile(r"Ce créneau vous est réservé jusqu'à \d\d:\d\d"))
    assert shown_time in page.locator(".session__details").inner_text()
    visit.check()
    page.get_by_role("button", name="Confirmer le rendez-vous").click()

    expect(page).to_have_url(re.compile(rf"info=rendez-vous-confirme&rdv={appointment_id}$"))
    assert "Votre rendez-vous est confirmé" in page.locator(".notice").first.inner_text()
    prereg = page.get_by_role("link", name="pré-enregistrez-vous maintenant")
    expect(prereg).to_have_attribute(
        "href", f"/compte/rendez-vous/{appointment_id}/pre-enregistrement"
    )
    upcoming = page.locator("#a-venir")
    expect(upcoming).to_contain_text("Confirmé")
    expect(upcoming).to_contain_text(SITE_NAME)
    upcoming.get_by_text("Consignes de préparation").click()
    expect(upcoming).to_contain_text("Venez à jeun depuis 12 heures")
    visit.check()
    with live_server.runtime.tenant_sessions(live_server.tenant_id)() as session:
        row = session.get(Appointment, appointment_id)
        assert row is not None
        assert row.status == "booked"
        assert row.patient_id == live_server.patient_id
        assert row.exams is not None
        assert b"GLY" not in row.exams, "the exams are sealed"
        assert len(session.scalars(select(SlotClaim)).all()) == 1

    # The other pages pass the same checks: moving the visit, a home visit request.
    upcoming.get_by_role("link", name=re.compile("^Déplacer")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Déplacer le rendez-vous")
    expect(page.locator("button[name=starts_at]").first).to_be_visible()
    visit.check()
    page.goto("/compte/rendez-vous/domicile")
    expect(page.get_by_role("heading", level=1)).to_have_text("Demander un prélèvement à domicile")
    visit.check()
    page.goto("/compte/rendez-vous")
    upcoming = page.locator("#a-venir")

    # Cancel: a confirmation page, then the list.
    upcoming.get_by_role("link", name=re.compile("^Annuler")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Annuler le rendez-vous")
    visit.check()
    page.get_by_role("button", name="Annuler ce rendez-vous").click()
    expect(page).to_have_url(re.compile(r"/compte/rendez-vous\?info=rendez-vous-annule$"))
    assert "Votre rendez-vous est annulé" in page.locator(".notice").inner_text()
    expect(page.locator("#passes")).to_contain_text("Annulé")
    assert "Aucun rendez-vous à venir" in page.locator("#titre-a-venir + p").inner_text()
    visit.check()
    with live_server.runtime.tenant_sessions(live_server.tenant_id)() as session:
        row = session.get(Appointment, appointment_id)
        assert row is not None
        assert row.status == "cancelled"
        assert session.scalars(select(SlotClaim)).all() == [], "the box is free again"
