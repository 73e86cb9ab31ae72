"""Passkeys end to end in Debian's Chromium, with its virtual authenticator (CDP WebAuthn).

The server is reached at http://localhost:PORT, its public URL: browsers refuse an IP
address as a WebAuthn RP ID ("This is an invalid domain"), and localhost is a secure context
(as 127.0.0.1 is for the session cookies). The authenticator is a CTAP2 platform one with
resident keys and user verification, which answers at once: register a passkey on the
security page, log out, log in with the password and then the passkey.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import uvicorn
from playwright.sync_api import Browser, CDPSession, expect, sync_playwright
from test_account_pages import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LiveServer,
    Visit,
    _notice,
    _visit,
    log_in,
    log_out,
    second_factor_by_email,
    sign_up,
)

from conftest import require_component
from labvault.app import create_app
from labvault.core.config import Settings
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

pytestmark = pytest.mark.browser

LABEL = "Ordinateur de test"


@pytest.fixture(scope="module")
def passkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # a free port, held from now on: no race for it
    port = listener.getsockname()[1]
    data_dir = tmp_path_factory.mktemp("e2e-passkeys") / "var"
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
        create_organization(session, runtime.key_provider, "Laboratoire des clés")
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
        yield LiveServer(settings.public_url, settings.resolved_data_dir / "mail")
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if type(handler).__name__ == "_LabvaultHandler":
                root.removeHandler(handler)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        require_component(
            f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def visit(chromium: Browser, passkey_server: LiveServer) -> Iterator[Visit]:
    opened = _visit(chromium, passkey_server)
    yield opened
    opened.context.close()


def virtual_authenticator(visit: Visit) -> tuple[CDPSession, str]:
    """A platform passkey authenticator in this browser profile's page."""
    cdp = visit.context.new_cdp_session(visit.page)
    cdp.send("WebAuthn.enable")
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, str(added["authenticatorId"])


def credentials(cdp: CDPSession, authenticator: str) -> list[dict[str, Any]]:
    answer = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
    return list(answer["credentials"])


def test_register_a_passkey_then_log_in_with_it(visit: Visit) -> None:
    address = "alex.bernard@example.org"
    page = visit.page
    cdp, authenticator = virtual_authenticator(visit)
    sign_up(visit, address)
    log_in(visit, address)
    second_factor_by_email(visit, address)

    # The security page: the script shows the add form (hidden without it).
    expect(page.get_by_text("Vous n'avez aucune clé d'accès.")).to_be_visible()
    page.get_by_role("textbox", name="Nom de la clé (facultatif)", exact=True).fill(LABEL)
    page.get_by_role("button", name="Ajouter une clé d'accès").click()
    expect(page).to_have_url(re.compile(r"/compte/securite\?info=cle-acces-ajoutee$"))
    assert "Votre clé d'accès est enregistrée" in _notice(page)
    expect(page.locator("#cles-acces")).to_contain_text(LABEL)
    visit.check()
    (created,) = credentials(cdp, authenticator)
    assert created["isResidentCredential"] is True, "a discoverable credential (a passkey)"
    assert created["rpId"] == "localhost"
    log_out(visit)

    # The password, then the passkey: offered first, used with one click.
    log_in(visit, address)
    factors = page.locator("section.factor h2")
    expect(factors.first).to_have_text("Clé d'accès")
    page.get_by_role("button", name="Utiliser une clé d'accès").click()
    expect(page).to_have_url(re.compile(r"/compte/securite$"))
    expect(page.locator(".session--current")).to_contain_text("clé d'accès")
    expect(page.locator("#cles-acces")).not_to_contain_text("jamais")
    visit.check()
    (used,) = credentials(cdp, authenticator)
    assert used["signCount"] > created["signCount"]
    log_out(visit)
