"""Linking one's own Patient record from the French pages, in Debian's Chromium.

The live application (uvicorn, SQLite file, key file, file mailer) holds one Patient record
whose contact address differs from the account's: the code must land in the record's
mailbox (the FileMailer's .eml files), and entering it links the record.
"""

from __future__ import annotations

import email.policy
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
import structlog
import uvicorn
from playwright.sync_api import Browser, Locator, expect
from test_account_pages import (
    CODE,
    PHRASE,
    LiveServer,
    Visit,
    _visit,
    browser,
    log_in,
    second_factor_by_email,
    sign_up,
    wait_for_problems,
)

from labvault.app import create_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with the account pages

ACCOUNT_EMAIL = "sacha.compte@example.org"
RECORD_EMAIL = "sacha.dossier@example.org"
NIR = "2850475056123"
RECORD = {
    "birth_name": "Lefèvre-Dubois",
    "first_names": "Sacha Claire",
    "birth_date": "1985-04-12",
    "sex": "F",
    "email": RECORD_EMAIL,
}


def _nir() -> str:
    key = 97 - int(NIR) % 97
    return f"{NIR}{key:02d}"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("e2e-linking") / "var"
    settings = Settings(data_dir=data_dir, environment="test", log_level="warning")
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Laboratoire des liens")
        keyring = TenantKeyring(
            session, runtime.key_provider, organization.id, SystemPrincipal("test:e2e-seed")
        )
        PatientRepository(session, keyring).register_many(
            [PatientInput.model_validate({**RECORD, "nir": _nir()})]
        )
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


@pytest.fixture
def visit(browser: Browser, live_server: LiveServer) -> Iterator[Visit]:
    opened = _visit(browser, live_server)
    yield opened
    opened.context.close()


def mails_to(mail_dir: Path, address: str) -> list[EmailMessage]:
    parser = BytesParser(policy=email.policy.default)
    found = []
    for path in sorted(mail_dir.glob("*.eml")):
        message = parser.parsebytes(path.read_bytes())
        if message["To"] == address:
            found.append(message)
    return found  # type: ignore[return-value]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def fill_traits(form: Locator, nir: str) -> None:
    form.get_by_role("textbox", name="Nom de naissance", exact=True).fill("lefevre dubois")
    form.get_by_role("textbox", name="Prénom", exact=True).fill("Sacha")
    form.get_by_label("Date de naissance", exact=True).fill(RECORD["birth_date"])
    form.get_by_role("textbox", name="Numéro de sécurité sociale", exact=True).fill(nir)
    form.get_by_role("button", name="Recevoir un code").click()


def test_a_patient_links_their_record_with_the_code_sent_to_its_contact(visit: Visit) -> None:
    page = visit.page
    sign_up(visit, ACCOUNT_EMAIL)
    log_in(visit, ACCOUNT_EMAIL)
    second_factor_by_email(visit, ACCOUNT_EMAIL)

    page.goto("/compte/dossiers")
    expect(page.get_by_role("heading", level=1)).to_have_text("Vos dossiers au laboratoire")
    assert "Aucun dossier n'est encore rattaché" in page.locator("#titre-dossiers + p").inner_text()
    visit.check()
    own = page.locator(
        "section.panel", has=page.get_by_role("heading", name="Rattacher votre dossier")
    )

    # A mistyped key: a precise French error on the field, and nothing sent.
    nir = _nir()
    fill_traits(own, nir[:13] + f"{(int(nir[13:]) + 1) % 100:02d}")
    expect(page.locator(".error-summary")).to_be_visible()
    field = page.get_by_role("textbox", name="Numéro de sécurité sociale", exact=True).first
    expect(field).to_have_attribute("aria-invalid", "true")
    assert "ne correspond pas au reste du numéro" in page.locator("#nir-erreur").inner_text()
    wait_for_problems(visit, 1)
    assert visit.problems == [
        "console error: Failed to load resource: the server responded with a status of 422 "
        "(Unprocessable Entity)"
    ]
    visit.problems.clear()
    visit.check()
    assert mails_to(visit.server.mail_dir, RECORD_EMAIL) == []

    own = page.locator(
        "section.panel", has=page.get_by_role("heading", name="Rattacher votre dossier")
    )
    fill_traits(
        own, " ".join([nir[0], nir[1:3], nir[3:5], nir[5:7], nir[7:10], nir[10:13], nir[13:]])
    )
    expect(page).to_have_url(re.compile(r"/compte/dossiers\?info=code-rattachement$"))
    assert "un code vient d'être envoyé au contact" in page.locator(".notice").inner_text()
    visit.check()

    deadline = time.monotonic() + 5
    while not (sent := mails_to(visit.server.mail_dir, RECORD_EMAIL)):
        assert time.monotonic() < deadline, "no message reached the record's contact"
        time.sleep(0.05)
    (message,) = sent
    body = text_of(message)
    match = CODE.search(body)
    assert match is not None, body
    assert PHRASE not in body, "the account's phrase is not given to another mailbox"
    assert not [
        m for m in mails_to(visit.server.mail_dir, ACCOUNT_EMAIL) if "rattachement" in text_of(m)
    ]

    page.get_by_role("textbox", name="Code de rattachement", exact=True).fill(match.group(1))
    page.get_by_role("button", name="Valider le code").click()
    expect(page).to_have_url(re.compile(r"/compte/dossiers\?info=dossier-rattache$"))
    assert "Le dossier est rattaché à votre compte" in page.locator(".notice").inner_text()
    expect(page.locator("#dossiers")).to_contain_text("Sacha L.")
    expect(page.locator("#dossiers")).to_contain_text("Vous")
    expect(page.get_by_role("heading", name="Rattacher votre dossier")).to_have_count(0)
    visit.check()
