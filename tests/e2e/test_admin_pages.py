"""An organization admin end to end in Debian's Chromium: the emailed invitation link, a
password, a passkey created with Chromium's virtual authenticator (CDP WebAuthn) that
completes the first login, the staff administration page, and the invitation of a
receptionist from it (whose own emailed link then works).

The server is reached at http://localhost:PORT, its public URL: passkeys need a name, not an
IP address (see ``test_passkey_pages``). The browser, the visits and the page checks are
those of ``test_account_pages``.
"""

from __future__ import annotations

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
from test_account_pages import PASSWORD, LiveServer, Visit, _visit, browser, wait_for_problems
from test_passkey_pages import credentials, virtual_authenticator

from labvault.accounts.invitations import StaffAccountService
from labvault.app import create_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization, get_organization
from labvault.staff.models import StaffRole

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared as is

ADMIN = "directrice.labo@example.org"
RECEPTIONIST = "accueil.gare@example.org"
LINK = re.compile(r"(http://\S+/compte/invitation#\S+)")


@dataclass
class AdminServer:
    server: LiveServer
    runtime: Runtime

    def link_to(self, address: str) -> str:
        """The invitation link last emailed to ``address`` (read from the .eml files)."""
        parser = BytesParser(policy=email.policy.default)
        for path in sorted(self.server.mail_dir.glob("*.eml"), reverse=True):
            message = parser.parsebytes(path.read_bytes())
            body = message.get_body(("plain",))
            assert body is not None
            if message["To"] == address and (match := LINK.search(body.get_content())):
                return match.group(1)
        raise AssertionError(f"no invitation was sent to {address}")

    def invite_admin(self) -> str:
        """Invite the first organization admin, as ``labvault staff invite`` does."""
        with transaction(self.runtime.sessions) as session:
            StaffAccountService(
                session,
                tenant_id=get_organization(session).id,
                provider=self.runtime.key_provider,
                mailer=self.runtime.mailer,
                limiter=self.runtime.rate_limiter,
                settings=self.runtime.settings,
                hasher=PasswordHasher(),
            ).invite_staff(
                SystemPrincipal("test:e2e"),
                ADMIN,
                "Maëlle",
                "Dufresne",
                StaffRole.ORGANIZATION_ADMIN,
            )
        return self.link_to(ADMIN)


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminServer]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # a free port, held from now on: no race for it
    port = listener.getsockname()[1]
    data_dir = tmp_path_factory.mktemp("e2e-admin") / "var"
    settings = Settings(
        data_dir=data_dir,
        environment="test",
        log_level="warning",
        public_url=f"http://localhost:{port}",
    )
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Labo de la Gare")
        for name in ("Centre", "Gare"):
            add_site(
                session,
                organization,
                name=name,
                address_line="1 place de la Gare",
                postal_code="69003",
                city="Lyon",
                opening_hours={},
                sampling_capacity_per_hour=4,
            )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, runtime),
            log_config=None,
            access_log=False,
            lifespan="on",
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the server stopped while starting"
        assert time.monotonic() < deadline, "the server did not start within 15 s"
        time.sleep(0.02)
    try:
        yield AdminServer(
            LiveServer(settings.public_url, settings.resolved_data_dir / "mail"), runtime
        )
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
def visit(browser: Browser, admin_server: AdminServer) -> Iterator[Visit]:
    opened = _visit(browser, admin_server.server)
    yield opened
    opened.context.close()


def test_an_admin_activates_with_a_passkey_then_invites_a_receptionist(
    visit: Visit, admin_server: AdminServer
) -> None:
    page = visit.page
    cdp, authenticator = virtual_authenticator(visit)

    # The invitation link, then a password.
    page.goto(admin_server.invite_admin())
    expect(page.get_by_role("heading", level=1)).to_have_text("Activer votre compte professionnel")
    expect(page).to_have_url(re.compile(r"/compte/invitation$"))
    visit.check()
    page.get_by_label("Mot de passe", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Activer mon compte").click()

    # A passkey, not an authenticator app.
    expect(page).to_have_url(re.compile(r"/compte/activation$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Créer votre clé d'accès")
    expect(
        page.get_by_role("button", name="Configurer l'application d'authentification")
    ).to_have_count(0)
    page.goto("/administration/personnel")  # nothing is open before the enrolment
    expect(page.get_by_role("heading", level=1)).to_have_text("Page introuvable")
    wait_for_problems(visit, 1)
    assert visit.problems == [
        "console error: Failed to load resource: the server responded with a status of 404 "
        "(Not Found)"
    ]
    visit.problems.clear()
    page.goto("/compte/activation")
    visit.check()
    page.get_by_role("textbox", name="Nom de la clé (facultatif)", exact=True).fill("Poste admin")
    page.get_by_role("button", name="Créer ma clé d'accès").click()

    # Signed in, at the administration page.
    expect(page).to_have_url(re.compile(r"/administration/personnel$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Personnel du laboratoire")
    expect(page.locator("#personnel")).to_contain_text("Maëlle Dufresne")
    expect(page.locator("#personnel")).to_contain_text("Administration du laboratoire")
    visit.check()
    (created,) = credentials(cdp, authenticator)
    assert created["rpId"] == "localhost"

    # Invites a receptionist: first a mistake, told in French, then right.
    page.get_by_role("link", name="Inviter un membre du personnel").click()
    expect(page).to_have_url(re.compile(r"/administration/personnel/invitation$"))
    visit.check()
    page.get_by_role("textbox", name="Adresse e-mail professionnelle").fill("pas une adresse")
    page.get_by_role("textbox", name="Prénom").fill("Noé")
    page.get_by_role("textbox", name="Nom", exact=True).fill("Laurent")
    page.get_by_label("Fonction").select_option("receptionist")
    page.get_by_role("button", name="Envoyer l'invitation").click()
    expect(page.locator(".error-summary")).to_contain_text("adresse e-mail valide")
    expect(page.get_by_role("textbox", name="Adresse e-mail professionnelle")).to_be_focused()
    assert page.title().startswith("Erreur : ")
    # The form comes back as a 422, which Chromium logs; nothing else may be logged.
    wait_for_problems(visit, 1)
    assert visit.problems == [
        "console error: Failed to load resource: the server responded with a status of 422 "
        "(Unprocessable Entity)"
    ]
    visit.problems.clear()
    visit.check()
    page.get_by_role("textbox", name="Adresse e-mail professionnelle").fill(RECEPTIONIST)
    page.get_by_label("Gare").check()
    page.get_by_role("button", name="Envoyer l'invitation").click()
    expect(page).to_have_url(re.compile(r"/administration/personnel\?info=invitation-envoyee$"))
    expect(page.locator(".notice")).to_contain_text("invitation a été envoyée")
    row = page.locator("#personnel li", has_text="Noé Laurent")
    expect(row).to_contain_text("Accueil")
    expect(row).to_contain_text("Gare")
    expect(row).to_contain_text("Invitation envoyée")
    visit.check()

    # The receptionist's own link opens the activation of an authenticator app.
    link = admin_server.link_to(RECEPTIONIST)
    assert "Noé" not in link
    page.get_by_role("button", name="Se déconnecter").click()
    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text("Activer votre compte professionnel")
    page.get_by_label("Mot de passe", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Activer mon compte").click()
    expect(page).to_have_url(re.compile(r"/compte/activation$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Configurer votre application d'authentification"
    )
    visit.check()
