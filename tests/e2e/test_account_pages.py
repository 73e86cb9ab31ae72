"""The French account pages end to end in Debian's Chromium, driven by Playwright.

The real application is served by uvicorn on a free loopback port, against a temporary data
directory (SQLite file, key file, file mailer); the codes sent by email are read from the
mailer's .eml files. Chromium is never downloaded: Playwright drives /usr/bin/chromium
(``apt-get install chromium``; ``.ci/run`` installs it). Every page visited is checked for
the basics of accessibility, and any console error (a CSP violation among them) fails.
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
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path

import pytest
import structlog
import uvicorn
from playwright.sync_api import Browser, BrowserContext, Page, Response, expect, sync_playwright

from conftest import require_component
from labvault.app import create_app
from labvault.core.config import Settings
from labvault.core.crypto.otp import TOTP_STEP_SECONDS, totp_code
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"width": 390, "height": 844}
PASSWORD = "une phrase de passe assez longue"
PHRASE = "le héron cendré de Honfleur"
SESSION_COOKIE = "__Host-labvault-session"
CODE = re.compile(r"code [^:]*: (\d{6})")

# Reports every Content-Security-Policy violation as a console error. Init scripts are
# injected by the browser itself, so the page's CSP does not block this one.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} ${event.blockedURI}`);
});
"""

# The basics of accessibility and of these pages' conventions, checked in the page.
PAGE_PROBLEMS = """
() => {
  const problems = [];
  const root = document.documentElement;
  if (root.lang !== "fr") problems.push(`lang is "${root.lang}"`);
  if (!document.title.trim()) problems.push("no title");
  if (!document.querySelector('meta[name="viewport"]')) problems.push("no viewport");
  if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
  if (!document.querySelector("main")) problems.push("no main landmark");
  const fields = document.querySelectorAll("input:not([type=hidden]), select, textarea");
  for (const input of fields) {
    const name = input.id || input.name;
    const labels = [...(input.labels || [])].filter((l) => l.textContent.trim());
    if (!labels.length && !input.getAttribute("aria-label")) problems.push(`no label: ${name}`);
    const described = (input.getAttribute("aria-describedby") || "").split(/\\s+/);
    for (const id of described.filter(Boolean)) {
      if (!document.getElementById(id)) problems.push(`${name} described by missing #${id}`);
    }
    if (!input.getAttribute("autocomplete")) problems.push(`no autocomplete: ${name}`);
    if (input.type === "email" && input.autocomplete !== "email") {
      problems.push(`email field ${name} without autocomplete=email`);
    }
    if (input.type === "password" && !/^(current|new)-password$/.test(input.autocomplete)) {
      problems.push(`password field ${name} without current-/new-password`);
    }
  }
  for (const control of document.querySelectorAll("a, button")) {
    if (!control.textContent.trim() && !control.getAttribute("aria-label")) {
      problems.push(`control without a name: ${control.outerHTML.slice(0, 80)}`);
    }
  }
  const ids = [...document.querySelectorAll("[id]")].map((element) => element.id);
  for (const id of new Set(ids.filter((id, index) => ids.indexOf(id) !== index))) {
    problems.push(`duplicate id ${id}`);
  }
  for (const link of document.querySelectorAll('a[href^="#"]')) {
    const target = link.getAttribute("href").slice(1);
    if (target && !document.getElementById(target)) problems.push(`dead anchor #${target}`);
  }
  for (const form of document.querySelectorAll("form")) {
    // getAttribute: a field named "method" would hide the form's own property.
    if (form.getAttribute("method") !== "post") problems.push(`not a POST: ${form.action}`);
    if (!form.querySelector('input[type=hidden][name="csrf_token"]')) {
      problems.push(`form without a CSRF token: ${form.action}`);
    }
  }
  for (const element of document.querySelectorAll("[style]")) {
    problems.push(`inline style on ${element.tagName}`);
  }
  for (const script of document.querySelectorAll("script")) {
    // Only the site's own files (CSP script-src 'self'), never inline code.
    if (!script.src.startsWith(`${location.origin}/static/`) || script.textContent.trim()) {
      problems.push(`a script not from /static/: ${script.outerHTML.slice(0, 80)}`);
    }
  }
  if (root.scrollWidth > window.innerWidth) problems.push("scrolls sideways on a phone");
  return problems;
}
"""


# --- the server -----------------------------------------------------------------------------


@dataclass
class LiveServer:
    base_url: str
    mail_dir: Path

    def last_code(self, address: str) -> str:
        """The code of the latest message to ``address`` that carries one (read from .eml)."""
        parser = BytesParser(policy=email.policy.default)
        for path in sorted(self.mail_dir.glob("*.eml"), reverse=True):
            message = parser.parsebytes(path.read_bytes())
            if message["To"] != address:
                continue
            body = message.get_body(("plain",))
            assert body is not None
            text = body.get_content()
            assert PHRASE in text, "every message carries the security phrase"
            if (match := CODE.search(text)) is not None:
                return match.group(1)
        raise AssertionError(f"no code was sent to {address}")


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("e2e") / "var"
    settings = Settings(data_dir=data_dir, environment="test", log_level="warning")
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    with transaction(runtime.sessions) as session:
        create_organization(session, runtime.key_provider, "Laboratoire de bout en bout")
    app = create_app(settings, runtime)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # a free port, held from now on: no race for it
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
        yield LiveServer(f"http://127.0.0.1:{port}", settings.resolved_data_dir / "mail")
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if type(handler).__name__ == "_LabvaultHandler":
                root.removeHandler(handler)


# --- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        require_component(
            f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Visit:
    """One browser profile (its own cookies) on the live server, and what went wrong in it."""

    context: BrowserContext
    page: Page
    server: LiveServer
    problems: list[str] = field(default_factory=list)
    documents: list[Response] = field(default_factory=list)

    def check(self) -> None:
        """The page now shown passes the accessibility basics and every page was no-store."""
        # After a form's navigation the stylesheet may still be loading on a busy machine,
        # and an unstyled page is wider than a phone.
        self.page.wait_for_load_state("load")
        problems = self.page.evaluate(PAGE_PROBLEMS)
        assert problems == [], f"{self.page.url}: {problems}"
        for response in self.documents:
            if "/static/" not in response.url:
                assert response.headers.get("cache-control") == "no-store", response.url
        assert self.problems == [], self.problems

    def session_cookie(self) -> dict[str, object] | None:
        cookies = [c for c in self.context.cookies() if c.get("name") == SESSION_COOKIE]
        return dict(cookies[0]) if cookies else None


def _visit(browser: Browser, server: LiveServer) -> Visit:
    context = browser.new_context(base_url=server.base_url, viewport=PHONE, locale="fr-FR")
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    visit = Visit(context, page, server)

    def on_console(message: object) -> None:
        kind = getattr(message, "type", "")
        if kind in {"error", "warning"}:
            visit.problems.append(f"console {kind}: {getattr(message, 'text', '')}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: visit.problems.append(f"page error: {error}"))
    page.on(
        "response",
        lambda response: (
            visit.documents.append(response)
            if response.request.resource_type == "document"
            else None
        ),
    )
    return visit


@pytest.fixture
def visit(browser: Browser, live_server: LiveServer) -> Iterator[Visit]:
    opened = _visit(browser, live_server)
    yield opened
    opened.context.close()


# --- steps ----------------------------------------------------------------------------------


def _notice(page: Page) -> str:
    return page.locator(".notice").inner_text()


def sign_up(visit: Visit, address: str) -> None:
    page = visit.page
    page.goto("/compte/inscription")
    expect(page.get_by_role("heading", level=1)).to_have_text("Créer un compte")
    visit.check()
    page.get_by_role("textbox", name="Adresse e-mail", exact=True).fill(address)
    page.get_by_label("Mot de passe", exact=True).fill(PASSWORD)
    page.get_by_role("textbox", name="Phrase de sécurité (facultatif)", exact=True).fill(PHRASE)
    page.get_by_role("button", name="Créer mon compte").click()
    expect(page).to_have_url(re.compile(r"/compte/confirmation\?info=code-envoye$"))
    assert "un code de confirmation vient" in _notice(page)
    visit.check()
    page.get_by_role("textbox", name="Adresse e-mail", exact=True).fill(address)
    page.get_by_role("textbox", name="Code de confirmation", exact=True).fill(
        visit.server.last_code(address)
    )
    page.get_by_role("button", name="Confirmer").click()
    expect(page).to_have_url(re.compile(r"/compte/connexion\?info=adresse-confirmee$"))
    assert "Votre adresse e-mail est confirmée" in _notice(page)


def log_in(visit: Visit, address: str) -> None:
    """The password step; the page then asks for the second factor."""
    page = visit.page
    page.goto("/compte/connexion")
    visit.check()
    page.get_by_role("textbox", name="Adresse e-mail", exact=True).fill(address)
    page.get_by_label("Mot de passe", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Se connecter").click()
    expect(page).to_have_url(re.compile(r"/compte/second-facteur$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Vérification en deux étapes")
    visit.check()


def second_factor_by_email(visit: Visit, address: str) -> None:
    page = visit.page
    page.get_by_role("button", name="M'envoyer un code par e-mail").click()
    expect(page).to_have_url(re.compile(r"/compte/second-facteur\?info=code-connexion-envoye$"))
    assert "Un code de connexion vient d'être envoyé" in _notice(page)
    expect(page.get_by_role("textbox", name="Code reçu par e-mail", exact=True)).to_be_focused()
    visit.check()
    page.get_by_role("textbox", name="Code reçu par e-mail", exact=True).fill(
        visit.server.last_code(address)
    )
    page.get_by_role("button", name="Valider le code reçu par e-mail").click()
    expect(page).to_have_url(re.compile(r"/compte/securite$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Sécurité de votre compte")
    visit.check()


def log_out(visit: Visit) -> None:
    page = visit.page
    page.get_by_role("button", name="Se déconnecter").click()
    expect(page).to_have_url(re.compile(r"/compte/connexion\?info=deconnexion$"))
    assert "Vous êtes déconnecté" in _notice(page)
    assert visit.session_cookie() is None, "the session cookie is gone"
    visit.check()
    page.goto("/compte/securite")
    expect(page).to_have_url(re.compile(r"/compte/connexion$"))


def wait_for_problems(visit: Visit, count: int) -> None:
    """Console messages come as events: give the expected ones a moment to arrive."""
    deadline = time.monotonic() + 5
    while len(visit.problems) < count and time.monotonic() < deadline:
        visit.page.wait_for_timeout(50)


def totp_at(secret: Secret[bytes], *, steps_back: int = 0) -> str:
    """A code of the current step (or an earlier one), never computed in the last two
    seconds of a step: the server checks it within the same step."""
    if time.time() % TOTP_STEP_SECONDS > TOTP_STEP_SECONDS - 2:
        time.sleep(TOTP_STEP_SECONDS - time.time() % TOTP_STEP_SECONDS + 0.1)
    return totp_code(secret, time.time() - steps_back * TOTP_STEP_SECONDS)


# --- tests ----------------------------------------------------------------------------------


def test_sign_up_with_the_email_code_then_log_in_with_an_email_code_and_log_out(
    visit: Visit,
) -> None:
    address = "camille.durand@example.org"
    sign_up(visit, address)
    log_in(visit, address)
    pending = visit.session_cookie()
    second_factor_by_email(visit, address)

    # Chromium keeps a Secure, __Host- cookie over http://127.0.0.1 (a secure context).
    cookie = visit.session_cookie()
    assert cookie is not None
    assert cookie["secure"] is True
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    assert pending is not None
    assert cookie["value"] != pending["value"], "a new session token once signed in"

    page = visit.page
    current = page.locator(".session--current")
    expect(current).to_have_count(1)
    expect(current).to_contain_text("code reçu par e-mail")
    page.goto("/compte/connexion")  # signed in: no login form
    expect(page).to_have_url(re.compile(r"/compte/securite$"))
    log_out(visit)


def test_totp_enrolment_then_login_with_a_totp_code_after_a_wrong_one(visit: Visit) -> None:
    address = "dominique.lefebvre@example.org"
    page = visit.page
    sign_up(visit, address)
    log_in(visit, address)
    second_factor_by_email(visit, address)

    page.get_by_role("button", name="Configurer une application d'authentification").click()
    expect(page.get_by_role("img", name=re.compile("QR code"))).to_be_visible()
    text_secret = page.locator("#totp-secret").inner_text().strip()
    uri = page.locator("#totp-uri").text_content() or ""
    assert uri.startswith("otpauth://totp/labvault")
    assert f"secret={text_secret}" in uri
    assert "example.org" not in uri, "no email address in the authenticator's label"
    visit.check()
    secret = Secret(base64.b32decode(text_secret + "=" * (-len(text_secret) % 8)))
    page.get_by_role("textbox", name="Code affiché par l'application", exact=True).fill(
        totp_at(secret, steps_back=1)
    )
    page.get_by_role("button", name="Activer l'application").click()
    expect(page).to_have_url(re.compile(r"/compte/securite\?info=totp-active$"))
    assert "application d'authentification est activée" in _notice(page)
    assert page.locator("#totp-secret").count() == 0, "the secret is shown once"
    visit.check()
    log_out(visit)

    log_in(visit, address)
    right = totp_at(secret)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    page.get_by_role("textbox", name="Code affiché par l'application", exact=True).fill(wrong)
    page.get_by_role("button", name="Valider le code de l'application").click()
    field = page.get_by_role("textbox", name="Code affiché par l'application", exact=True)
    expect(page.locator("#code-totp-erreur")).to_have_text("Erreur : Code incorrect ou expiré.")
    expect(page.get_by_role("alert")).to_contain_text("Code incorrect ou expiré.")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_have_attribute("aria-describedby", "code-totp-aide code-totp-erreur")
    expect(field).to_be_focused()
    assert page.title().startswith("Erreur : ")
    # The form comes back as a 401, which Chromium logs; nothing else may be logged.
    wait_for_problems(visit, 1)
    assert visit.problems == [
        "console error: Failed to load resource: the server responded with a status of 401 "
        "(Unauthorized)"
    ]
    visit.problems.clear()
    visit.check()

    field.fill(totp_at(secret))
    page.get_by_role("button", name="Valider le code de l'application").click()
    expect(page).to_have_url(re.compile(r"/compte/securite$"))
    expect(page.locator(".session--current")).to_contain_text("application d'authentification")
    log_out(visit)


def test_recovery_codes_are_shown_once_and_other_sessions_can_be_closed(
    visit: Visit, browser: Browser, live_server: LiveServer
) -> None:
    address = "sacha.moreau@example.org"
    page = visit.page
    sign_up(visit, address)
    log_in(visit, address)
    second_factor_by_email(visit, address)
    page.get_by_role("button", name="Générer 10 codes de secours").click()
    expect(page.locator("#codes-de-secours code")).to_have_count(10)  # the new page is there
    codes = [code.strip() for code in page.locator("#codes-de-secours code").all_inner_texts()]
    assert len(codes) == 10
    assert all(re.fullmatch(r"[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}", code) for code in codes)
    visit.check()
    page.goto("/compte/securite")  # the codes are not shown again
    expect(page.locator("#codes-de-secours")).to_have_count(0)
    expect(page.get_by_text("Il vous reste 10 codes de secours.")).to_be_visible()

    other = _visit(browser, live_server)  # another device
    try:
        log_in(other, address)
        other.page.get_by_role("textbox", name="Code de secours", exact=True).fill(codes[0].upper())
        other.page.get_by_role("button", name="Valider le code de secours").click()
        expect(other.page).to_have_url(re.compile(r"/compte/securite$"))
        expect(other.page.get_by_text("Il vous reste 9 codes de secours.")).to_be_visible()
        other.check()

        page.goto("/compte/securite")
        expect(page.locator(".session")).to_have_count(2)
        page.get_by_role("button", name="Fermer cette session").click()
        expect(page).to_have_url(re.compile(r"/compte/securite\?info=session-revoquee$"))
        expect(page.locator(".session")).to_have_count(1)
        visit.check()

        other.page.goto("/compte/securite")
        expect(other.page).to_have_url(re.compile(r"/compte/connexion\?info=session-expiree$"))
        other.check()
    finally:
        other.context.close()
    log_out(visit)


def test_the_violation_listener_does_report_csp_violations(visit: Visit) -> None:
    """So that the other tests' silence means something."""
    visit.page.goto("/compte/connexion")
    visit.page.evaluate("document.body.setAttribute('style', 'color: red')")
    wait_for_problems(visit, 2)
    # Chromium's own report, and the event that the init script turns into another one.
    assert any("Content Security Policy" in problem for problem in visit.problems)
    assert any("CSP violation: style-src" in problem for problem in visit.problems)
    visit.problems.clear()
