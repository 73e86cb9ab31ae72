"""Break-glass from the French pages, in Debian's Chromium: a receptionist searches a
patient her site does not follow, finds nothing, breaks the glass with a reason and a
justification, and opens the record; the security officer sees the grant for review."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import structlog
import uvicorn
from playwright.sync_api import Browser, expect
from test_account_pages import LiveServer, Visit, _visit, browser

from caller_world import SESSION_COOKIE, CallerWorld, build_caller_world
from labvault.app import create_app
from labvault.core.config import Settings
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime

pytestmark = pytest.mark.browser

__all__ = ["browser"]

JUSTIFICATION = "Patiente à l'accueil sans rendez-vous enregistré, prélèvement urgent"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, CallerWorld]]:
    data_dir = tmp_path_factory.mktemp("e2e-break-glass") / "var"
    settings = Settings(
        data_dir=data_dir, environment="test", log_level="warning", organization="Labo Alpha"
    )
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    world = build_caller_world(runtime)
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
        yield LiveServer(f"http://127.0.0.1:{port}", settings.resolved_data_dir / "mail"), world
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
def visit(browser: Browser, served: tuple[LiveServer, CallerWorld]) -> Iterator[Visit]:
    opened = _visit(browser, served[0])
    yield opened
    opened.context.close()


def _sign_in_as(visit: Visit, world: CallerWorld, name: str) -> None:
    """The staff session goes straight into the cookie (staff login is tested elsewhere)."""
    visit.context.clear_cookies()
    visit.context.add_cookies(
        [
            {
                "name": SESSION_COOKIE,
                "value": world.sessions[name].token,
                "domain": "127.0.0.1",
                "path": "/",
                "secure": True,
                "httpOnly": True,
                "sameSite": "Strict",
            }
        ]
    )


def test_a_receptionist_finds_nothing_breaks_the_glass_and_opens_the_record(
    visit: Visit, served: tuple[LiveServer, CallerWorld]
) -> None:
    _, world = served
    page = visit.page
    person = world.world.inputs["no_appointment"]
    assert person.nir is not None
    _sign_in_as(visit, world, "receptionist")

    page.goto("/patients/recherche")
    expect(page.get_by_role("heading", level=1)).to_have_text("Recherche patient")
    visit.check()
    page.get_by_role("textbox", name="NIR (numéro de sécurité sociale)").fill(
        person.nir.formatted()
    )
    page.get_by_role("button", name="Rechercher").click()
    expect(page.get_by_role("status")).to_contain_text("Aucun patient suivi par votre site")
    visit.check()

    page.get_by_label("Motif").select_option("walk-in")
    page.get_by_label("Justification").fill(JUSTIFICATION)
    page.get_by_role("button", name="Ouvrir un accès exceptionnel").click()
    patient_id = world.world.patients["no_appointment"]
    expect(page).to_have_url(re.compile(rf"/patients/{patient_id}\?info=acces-ouvert$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Dossier patient")
    body = page.locator("main").inner_text() if page.locator("main").count() else page.content()
    assert person.birth_name in body
    assert person.nir.compact not in page.content()
    assert "** *** ***" in body
    visit.check()

    # The security officer sees the grant waiting for review, and reviews it.
    _sign_in_as(visit, world, "security_officer")
    page.goto("/securite/acces-exceptionnels")
    expect(page.get_by_role("heading", level=1)).to_have_text("Accès exceptionnels")
    expect(page.locator("main li, body li").filter(has=page.locator("dl"))).to_have_count(1)
    visit.check()
    page.get_by_role("button", name="Injustifié").click()
    expect(page).to_have_url(re.compile(r"/securite/acces-exceptionnels\?info=examine$"))
    expect(page.locator(".grant-outcome")).to_have_text("Injustifié")
    page.goto("/securite/alertes")
    expect(page.locator("main li, body li").filter(has=page.locator("dl"))).to_have_count(1)
    visit.check()
