"""Step-up and the deletion request end to end in Debian's Chromium: a sensitive action on
the security page sends the browser to "Confirmez votre identité", which comes back once a
code is typed; a foreign ``suite`` never leaves the site; a deletion request logs out, and
the emailed link cancels it.

The browser, checks and steps are those of ``test_account_pages``; the server is started
here so that the test can age the session's proofs in its database (5 minutes pass).
"""

from __future__ import annotations

import datetime as dt
import email.policy
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from email.parser import BytesParser

import pytest
import structlog
import uvicorn
from playwright.sync_api import Browser, expect
from sqlalchemy import select
from test_account_pages import (
    LiveServer,
    Visit,
    _notice,
    _visit,
    browser,
    log_in,
    second_factor_by_email,
    sign_up,
    wait_for_problems,
)

from labvault.accounts.models import AccountSession
from labvault.app import create_app
from labvault.core.config import Settings
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

pytestmark = pytest.mark.browser

__all__ = ["browser"]

CANCEL = re.compile(r"(http://\S+/compte/suppression/annulation#\S+)")
_RUNTIMES: dict[str, Runtime] = {}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    data_dir = tmp_path_factory.mktemp("e2e-step-up") / "var"
    settings = Settings(
        data_dir=data_dir, environment="test", log_level="warning", public_url=base_url
    )
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    with transaction(runtime.sessions) as session:
        create_organization(session, runtime.key_provider, "Laboratoire de bout en bout")
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
    _RUNTIMES[base_url] = runtime
    try:
        yield LiveServer(base_url, settings.resolved_data_dir / "mail")
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()
        _RUNTIMES.pop(base_url, None)
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if type(handler).__name__ == "_LabvaultHandler":
                root.removeHandler(handler)


@pytest.fixture
def visit(browser: Browser, live_server: LiveServer) -> Iterator[Visit]:
    opened = _visit(browser, live_server)
    yield opened
    opened.context.close()


def age_proofs(visit: Visit) -> None:
    """Five minutes and more pass for every session's second-factor and step-up proofs."""
    runtime = _RUNTIMES[visit.server.base_url]
    with transaction(runtime.sessions) as session:
        for record in session.scalars(select(AccountSession)):
            for column in ("second_factor_at", "step_up_at"):
                moment = getattr(record, column)
                if moment is not None:
                    setattr(record, column, moment - dt.timedelta(minutes=6))


def confirm_by_email(visit: Visit, address: str) -> None:
    page = visit.page
    expect(page.get_by_role("heading", level=1)).to_have_text("Confirmez votre identité")
    visit.check()
    page.get_by_role("button", name="M'envoyer un code par e-mail").click()
    expect(page.get_by_role("textbox", name="Code reçu par e-mail", exact=True)).to_be_focused()
    assert "Un code de confirmation vient d'être envoyé" in _notice(page)
    visit.check()
    page.get_by_role("textbox", name="Code reçu par e-mail", exact=True).fill(
        visit.server.last_code(address)
    )
    page.get_by_role("button", name="Confirmer avec le code reçu par e-mail").click()


def test_a_sensitive_action_asks_to_confirm_then_comes_back(visit: Visit) -> None:
    address = "step-up@example.org"
    sign_up(visit, address)
    log_in(visit, address)
    second_factor_by_email(visit, address)
    age_proofs(visit)
    page = visit.page
    page.reload()
    expect(page.get_by_role("link", name="confirmer votre identité")).to_be_visible()
    page.get_by_role("button", name="Générer 10 codes de secours").click()
    expect(page).to_have_url(
        re.compile(r"/compte/confirmer-identite\?suite=%2Fcompte%2Fsecurite&info=")
    )
    assert "confirmez votre identité avant cette action" in _notice(page)
    page.get_by_role("textbox", name="Code reçu par e-mail", exact=True).fill("000000")
    page.get_by_role("button", name="Confirmer avec le code reçu par e-mail").click()
    expect(page.get_by_role("alert")).to_contain_text("Code incorrect ou expiré.")
    # The form comes back as a 422, which Chromium logs; nothing else may be logged.
    wait_for_problems(visit, 1)
    assert visit.problems == [
        "console error: Failed to load resource: the server responded with a status of 422 "
        "(Unprocessable Entity)"
    ]
    visit.problems.clear()
    visit.check()
    confirm_by_email(visit, address)
    expect(page).to_have_url(re.compile(r"/compte/securite\?info=identite-confirmee$"))
    visit.check()
    page.get_by_role("button", name="Générer 10 codes de secours").click()
    expect(page.locator("#codes-de-secours li")).to_have_count(10)
    visit.check()


def test_a_foreign_suite_stays_on_the_site(visit: Visit) -> None:
    address = "redirection@example.org"
    sign_up(visit, address)
    log_in(visit, address)
    second_factor_by_email(visit, address)
    page = visit.page
    page.goto("/compte/confirmer-identite?suite=//evil.example/compte")
    confirm_by_email(visit, address)
    expect(page).to_have_url(re.compile(r"^http://127\.0\.0\.1:\d+/compte/securite\?info="))


def test_a_deletion_request_logs_out_and_the_emailed_link_cancels_it(visit: Visit) -> None:
    address = "suppression@example.org"
    sign_up(visit, address)
    log_in(visit, address)
    second_factor_by_email(visit, address)
    page = visit.page
    page.get_by_role("link", name="Demander la suppression de mon compte").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Supprimer votre compte")
    expect(page.get_by_text("n'est pas supprimé")).to_be_visible()
    visit.check()
    page.get_by_role("button", name="Demander la suppression de mon compte").click()
    expect(page).to_have_url(re.compile(r"/compte/connexion\?info=suppression-demandee$"))
    assert "La suppression de votre compte est demandée" in _notice(page)
    assert visit.session_cookie() is None
    visit.check()

    parser = BytesParser(policy=email.policy.default)
    link = None
    for path in sorted(visit.server.mail_dir.glob("*.eml"), reverse=True):
        message = parser.parsebytes(path.read_bytes())
        body = message.get_body(("plain",))
        match = None if body is None else CANCEL.search(body.get_content())
        if message["To"] == address and match is not None:
            link = match.group(1)
            break
    assert link is not None
    page.goto(link)
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Annuler la suppression de votre compte"
    )
    assert "#" not in page.url, "the script took the token out of the address bar"
    page.get_by_role("button", name="Annuler la suppression").click()
    expect(page).to_have_url(re.compile(r"/compte/connexion\?info=suppression-annulee$"))
    log_in(visit, address)
    second_factor_by_email(visit, address)
