"""A staff invitation end to end in Debian's Chromium: the emailed link (its token in the
fragment, moved into the form by ``/static/invitation.js``), a password, the enrolment of an
authenticator app that completes the first login, then a staff login with it.

The browser, the visits and the page checks are those of ``test_account_pages`` (imported from
it); the server is started here with ``public_url`` set to its own address, so that the link
of the email (read from the FileMailer's .eml files) is opened as it is.
"""

from __future__ import annotations

import base64
import email.policy
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesParser

import pytest
import structlog
import uvicorn
from playwright.sync_api import Browser, expect
from test_account_pages import PAGE_PROBLEMS, PASSWORD, LiveServer, Visit, _visit, browser, totp_at

from labvault.accounts.invitations import StaffAccountService
from labvault.app import create_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization, get_organization
from labvault.staff.models import StaffRole

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared as is

ADDRESS = "ines.durand@example.org"
LINK = re.compile(r"(http://\S+/compte/invitation#\S+)")
SCRIPT = "/static/invitation.js"


@dataclass
class StaffServer:
    server: LiveServer
    runtime: Runtime

    def invite(self, address: str, role: StaffRole) -> str:
        """Invite ``address``, as the command line does; the link it was emailed."""
        with transaction(self.runtime.sessions) as session:
            organization = get_organization(session)
            StaffAccountService(
                session,
                tenant_id=organization.id,
                provider=self.runtime.key_provider,
                mailer=self.runtime.mailer,
                limiter=self.runtime.rate_limiter,
                settings=self.runtime.settings,
                hasher=PasswordHasher(),
            ).invite_staff(SystemPrincipal("test:e2e"), address, "Inès", "Durand", role)
        parser = BytesParser(policy=email.policy.default)
        for path in sorted(self.server.mail_dir.glob("*.eml"), reverse=True):
            message = parser.parsebytes(path.read_bytes())
            body = message.get_body(("plain",))
            assert body is not None
            if message["To"] == address and (match := LINK.search(body.get_content())):
                return match.group(1)
        raise AssertionError(f"no invitation was sent to {address}")


@pytest.fixture(scope="module")
def staff_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaffServer]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # a free port, held from now on: no race for it
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    data_dir = tmp_path_factory.mktemp("e2e-staff") / "var"
    settings = Settings(
        data_dir=data_dir, environment="test", log_level="warning", public_url=base_url
    )
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Labo de bout en bout")
        add_site(
            session,
            organization,
            name="Centre",
            address_line="1 place de la Mairie",
            postal_code="69001",
            city="Lyon",
            opening_hours={},
            sampling_capacity_per_hour=4,
        )
    app = create_app(settings, runtime)
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
        yield StaffServer(LiveServer(base_url, settings.resolved_data_dir / "mail"), runtime)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if type(handler).__name__ == "_LabvaultHandler":
                root.removeHandler(handler)


@pytest.fixture
def visit(browser: Browser, staff_server: StaffServer) -> Iterator[Visit]:
    opened = _visit(browser, staff_server.server)
    yield opened
    opened.context.close()


def check_invitation_page(visit: Visit) -> None:
    """``Visit.check`` for the page with a script: ours, from our origin, and no other."""
    visit.page.wait_for_load_state("load")
    problems = visit.page.evaluate(PAGE_PROBLEMS)
    assert problems == [], f"{visit.page.url}: {problems}"
    scripts = visit.page.evaluate(
        "() => [...document.scripts].map((s) => [s.getAttribute('src'), s.textContent.trim()])"
    )
    assert scripts == [[SCRIPT, ""]], scripts
    assert visit.problems == [], visit.problems


def test_an_invitee_activates_the_account_enrols_an_authenticator_then_logs_in(
    visit: Visit, staff_server: StaffServer
) -> None:
    link = staff_server.invite(ADDRESS, StaffRole.RECEPTIONIST)
    page = visit.page
    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text("Activer votre compte professionnel")
    # The token left the address bar; it is in the form, whose field is hidden.
    expect(page).to_have_url(re.compile(r"/compte/invitation$"))
    expect(page.get_by_role("textbox", name="Code d'invitation")).to_be_hidden()
    assert page.locator("#token").input_value() == link.partition("#")[2]
    expect(page.get_by_label("Mot de passe", exact=True)).to_be_focused()
    check_invitation_page(visit)
    page.get_by_label("Mot de passe", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Activer mon compte").click()

    expect(page).to_have_url(re.compile(r"/compte/activation$"))
    visit.check()
    page.goto("/compte/securite")  # nothing else is open before the enrolment
    expect(page).to_have_url(re.compile(r"/compte/activation$"))
    page.get_by_role("button", name="Configurer l'application d'authentification").click()
    secret_text = page.locator("#totp-secret").inner_text()
    visit.check()
    secret = Secret(base64.b32decode(secret_text + "=" * (-len(secret_text) % 8)))
    page.get_by_role("textbox", name="Code affiché par l'application").fill(totp_at(secret))
    page.get_by_role("button", name="Activer l'application et terminer la connexion").click()
    expect(page).to_have_url(re.compile(r"/compte/securite\?info=totp-active$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Sécurité de votre compte")
    visit.check()

    page.get_by_role("button", name="Se déconnecter").click()
    page.goto("/compte/connexion-professionnel")
    visit.check()
    page.get_by_role("textbox", name="Adresse e-mail professionnelle").fill(ADDRESS)
    page.get_by_label("Mot de passe", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Se connecter").click()
    expect(page).to_have_url(re.compile(r"/compte/second-facteur$"))
    visit.check()
    # The enrolment used this step's code: wait for the next one.
    time.sleep(30 - time.time() % 30 + 0.2)
    page.get_by_role("textbox", name="Code affiché par l'application").fill(totp_at(secret))
    page.get_by_role("button", name="Valider le code de l'application").click()
    expect(page).to_have_url(re.compile(r"/compte/securite$"))
    visit.check()
