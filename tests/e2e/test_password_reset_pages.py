"""Password reset end to end in Debian's Chromium: forgotten password, the emailed link, a new
password, a login with it; the sessions opened before are dead.

The server, browser and page checks are those of ``test_account_pages`` (imported from it),
except the server, started here with ``public_url`` set to its own address so that the link
in the email (read from the FileMailer's .eml files) is opened as it is. The new-password page
is a page with a script (its own ``/static/reset.js``, under ``script-src 'self'``): its checks
allow that script and no other; a CSP violation still fails as a console error.
"""

from __future__ import annotations

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
from test_account_pages import (
    PAGE_PROBLEMS,
    PASSWORD,
    PHRASE,
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

from labvault.app import create_app
from labvault.core.config import Settings
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared as is

NEW_PASSWORD = "un tout autre secret bien gardé"
LINK = re.compile(r"(http://\S+/compte/mot-de-passe/nouveau#\S+)")
RESET_SCRIPT = "/static/reset.js"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # a free port, held from now on: no race for it
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    data_dir = tmp_path_factory.mktemp("e2e-reset") / "var"
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
    try:
        yield LiveServer(base_url, settings.resolved_data_dir / "mail")
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
def visit(browser: Browser, live_server: LiveServer) -> Iterator[Visit]:
    opened = _visit(browser, live_server)
    yield opened
    opened.context.close()


def check_reset_page(visit: Visit) -> None:
    """``Visit.check`` for the page with a script: ours, from our origin, and no other."""
    visit.page.wait_for_load_state("load")
    problems = [p for p in visit.page.evaluate(PAGE_PROBLEMS) if p != "a script"]
    assert problems == [], f"{visit.page.url}: {problems}"
    scripts = visit.page.evaluate(
        "() => [...document.scripts].map((s) => [s.getAttribute('src'), s.textContent.trim()])"
    )
    assert scripts == [[RESET_SCRIPT, ""]], scripts
    for response in visit.documents:
        if "/static/" not in response.url:
            assert response.headers.get("cache-control") == "no-store", response.url
    assert visit.problems == [], visit.problems


def reset_link(server: LiveServer, address: str, *, after: int) -> str:
    """The link of the reset message to ``address``, once the server has delivered it (after
    its answer): there are then more than ``after`` messages."""
    parser = BytesParser(policy=email.policy.default)
    deadline = time.monotonic() + 10
    while len(list(server.mail_dir.glob("*.eml"))) <= after:
        assert time.monotonic() < deadline, "no reset message within 10 s"
        time.sleep(0.05)
    for path in sorted(server.mail_dir.glob("*.eml"), reverse=True):
        message = parser.parsebytes(path.read_bytes())
        body = message.get_body(("plain",))
        assert body is not None
        text = body.get_content()
        if message["To"] == address and (match := LINK.search(text)) is not None:
            assert PHRASE in text, "every message carries the security phrase"
            return match.group(1)
    raise AssertionError(f"no reset link was sent to {address}")


def messages(server: LiveServer) -> int:
    return len(list(server.mail_dir.glob("*.eml")))


def ask_for_a_link(visit: Visit, address: str) -> str:
    """From the login page to the emailed link."""
    page = visit.page
    page.goto("/compte/connexion")
    page.get_by_role("link", name="Mot de passe oublié ?").click()
    expect(page).to_have_url(re.compile(r"/compte/mot-de-passe/oubli$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Mot de passe oublié")
    visit.check()
    before = messages(visit.server)
    page.get_by_role("textbox", name="Adresse e-mail", exact=True).fill(address)
    page.get_by_role("button", name="Recevoir un lien").click()
    expect(page).to_have_url(re.compile(r"/compte/mot-de-passe/oubli\?info=lien-envoye$"))
    assert "Si un compte correspond à cette adresse" in _notice(page)
    visit.check()
    return reset_link(visit.server, address, after=before)


def log_in_with(visit: Visit, address: str, password: str) -> None:
    page = visit.page
    page.goto("/compte/connexion")
    page.get_by_role("textbox", name="Adresse e-mail", exact=True).fill(address)
    page.get_by_label("Mot de passe", exact=True).fill(password)
    page.get_by_role("button", name="Se connecter").click()


# --- tests ----------------------------------------------------------------------------------


def test_forgotten_password_by_the_emailed_link_then_login_with_the_new_one(
    visit: Visit, browser: Browser, live_server: LiveServer
) -> None:
    address = "claude.garnier@example.org"
    sign_up(visit, address)
    log_in(visit, address)
    second_factor_by_email(visit, address)
    old_session = visit.session_cookie()
    assert old_session is not None

    other = _visit(browser, live_server)  # the owner, on another device, has forgotten it
    try:
        link = ask_for_a_link(other, address)
        assert link.startswith(f"{live_server.base_url}/compte/mot-de-passe/nouveau#")
        page = other.page
        page.goto(link)
        expect(page.get_by_role("heading", level=1)).to_have_text("Choisir un nouveau mot de passe")
        # The script took the code from the fragment and cleared it from the address bar.
        expect(page).to_have_url(f"{live_server.base_url}/compte/mot-de-passe/nouveau")
        assert page.evaluate("window.location.hash") == ""
        code_field = page.locator("#token")  # hidden: out of the accessibility tree
        expect(code_field).to_be_hidden()
        expect(page.get_by_role("textbox", name="Code de réinitialisation")).to_have_count(0)
        assert code_field.input_value() == link.split("#", 1)[1]
        check_reset_page(other)

        # A typo in the confirmation: the form comes back, the code kept (and hidden).
        page.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
        page.get_by_label("Confirmez le nouveau mot de passe", exact=True).fill("une faute")
        page.get_by_role("button", name="Enregistrer le nouveau mot de passe").click()
        confirmation = page.get_by_label("Confirmez le nouveau mot de passe", exact=True)
        expect(confirmation).to_have_attribute("aria-invalid", "true")
        expect(confirmation).to_be_focused()
        expect(page.get_by_role("alert")).to_contain_text("ne sont pas identiques")
        expect(code_field).to_be_hidden()
        wait_for_problems(other, 1)  # Chromium logs the 422 answer
        assert len(other.problems) == 1
        assert "status of 422" in other.problems[0]
        other.problems.clear()
        check_reset_page(other)

        page.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
        page.get_by_label("Confirmez le nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
        page.get_by_role("button", name="Enregistrer le nouveau mot de passe").click()
        expect(page).to_have_url(re.compile(r"/compte/connexion\?info=mot-de-passe-reinitialise$"))
        assert "Connectez-vous avec votre nouveau mot de passe" in _notice(page)
        other.check()

        log_in_with(other, address, PASSWORD)  # the old password no longer opens anything
        expect(page.get_by_role("alert")).to_contain_text("Adresse e-mail ou mot de passe")
        wait_for_problems(other, 1)
        other.problems.clear()
        log_in_with(other, address, NEW_PASSWORD)
        expect(page).to_have_url(re.compile(r"/compte/second-facteur$"))
        second_factor_by_email(other, address)
    finally:
        other.context.close()

    # The session opened before the reset is dead: its cookie leads back to the login page.
    assert visit.session_cookie() == old_session
    visit.page.goto("/compte/securite")
    expect(visit.page).to_have_url(re.compile(r"/compte/connexion\?info=session-expiree$"))
    visit.check()


def test_without_javascript_the_code_is_pasted_from_the_link(
    browser: Browser, live_server: LiveServer
) -> None:
    address = "maxime.roux@example.org"
    with_script = _visit(browser, live_server)
    try:
        sign_up(with_script, address)
    finally:
        with_script.context.close()
    context = browser.new_context(
        base_url=live_server.base_url, java_script_enabled=False, locale="fr-FR"
    )
    try:
        page = context.new_page()
        no_script = Visit(context, page, live_server)
        link = ask_for_a_link(no_script, address)
        page.goto(link.split("#", 1)[0])  # what a reader copies by hand: the code apart
        # (Playwright turns scripts off without turning <noscript> on: its text is only there.)
        assert "JavaScript est désactivé" in page.content()
        code_field = page.get_by_role("textbox", name="Code de réinitialisation", exact=True)
        expect(code_field).to_be_visible()
        code_field.fill(link.split("#", 1)[1])
        page.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
        page.get_by_label("Confirmez le nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
        page.get_by_role("button", name="Enregistrer le nouveau mot de passe").click()
        expect(page).to_have_url(re.compile(r"/compte/connexion\?info=mot-de-passe-reinitialise$"))
        log_in_with(no_script, address, NEW_PASSWORD)
        expect(page).to_have_url(re.compile(r"/compte/second-facteur$"))
    finally:
        context.close()


def test_the_security_page_changes_the_password(visit: Visit) -> None:
    address = "jules.perrin@example.org"
    sign_up(visit, address)
    log_in(visit, address)
    second_factor_by_email(visit, address)
    page = visit.page
    page.get_by_label("Mot de passe actuel", exact=True).fill(PASSWORD)
    page.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Changer le mot de passe").click()
    expect(page).to_have_url(re.compile(r"/compte/securite\?info=mot-de-passe-change$"))
    assert "Votre mot de passe est changé" in _notice(page)
    visit.check()
    page.get_by_role("button", name="Se déconnecter").click()
    log_in_with(visit, address, NEW_PASSWORD)
    expect(page).to_have_url(re.compile(r"/compte/second-facteur$"))


def test_a_link_opened_over_the_page_already_shown_is_read_too(visit: Visit) -> None:
    """Only the fragment changes then: no new page load, a hashchange event."""
    page = visit.page
    page.goto("/compte/mot-de-passe/nouveau")
    code_field = page.locator("#token")
    expect(code_field).to_be_visible()
    expect(code_field).to_have_value("")
    check_reset_page(visit)
    page.goto("/compte/mot-de-passe/nouveau#0123abcd.efgh-ijkl_mnop")
    expect(code_field).to_be_hidden()
    expect(code_field).to_have_value("0123abcd.efgh-ijkl_mnop")
    expect(page).to_have_url(f"{visit.server.base_url}/compte/mot-de-passe/nouveau")
    page.goto("/compte/mot-de-passe/nouveau#contenu")  # not a code: left alone
    expect(page).to_have_url(re.compile(r"#contenu$"))
    expect(code_field).to_have_value("0123abcd.efgh-ijkl_mnop")
    check_reset_page(visit)
