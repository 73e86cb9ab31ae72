"""The French pages to reset a forgotten password and to change it, over HTTP (no browser).

The same flow in a real browser, the script that reads the link's fragment included, is in
``tests/e2e/test_password_reset_pages.py``.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Iterator

import pytest
import structlog
from fastapi.testclient import TestClient

from labvault.accounts import routes
from labvault.app import create_app
from labvault.core.db import transaction
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

EMAIL = "alix.bernard@example.org"
PASSWORD = "une phrase de passe assez longue"
NEW_PASSWORD = "un tout autre secret bien gardé"
ORIGIN = "https://testserver"
SESSION_COOKIE = "__Host-labvault-session"
LINK = re.compile(r"(\S+/compte/mot-de-passe/nouveau)#(\S+)")
FORGOT = "/compte/mot-de-passe/oubli"
RESET = "/compte/mot-de-passe/nouveau"
CHANGE = "/compte/securite/mot-de-passe"
SENT = "/compte/mot-de-passe/oubli?info=lien-envoye"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_LabvaultHandler":
            root.removeHandler(handler)


@pytest.fixture
def client(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(routes, "RESET_ANSWER_SECONDS", 0.05)
    with transaction(runtime.sessions) as session:
        create_organization(session, runtime.key_provider, "Labo Mots de passe")
    app = create_app(runtime.settings, runtime)
    with TestClient(app, base_url=ORIGIN) as test_client:
        yield test_client


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


def _bodies(runtime: Runtime) -> list[str]:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    bodies = []
    for message in mailer.messages():
        body = message.get_body(("plain",))
        assert body is not None
        bodies.append(body.get_content())
    return bodies


def _last_code(runtime: Runtime) -> str:
    match = re.search(r"code [^:]*: (\d{6})", _bodies(runtime)[-1])
    assert match is not None
    return match.group(1)


def _last_token(runtime: Runtime) -> str:
    match = LINK.search(_bodies(runtime)[-1])
    assert match is not None, _bodies(runtime)[-1]
    assert match.group(1) == f"{runtime.settings.public_url.rstrip('/')}{RESET}"
    return match.group(2)


def _post_form(client: TestClient, path: str, data: dict[str, str]) -> str:
    """GET the form, POST it with its token; the location it redirects to."""
    data = {**data, "csrf_token": _csrf(client.get(path).text)}
    answer = client.post(path, data=data, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return str(answer.headers["location"])


def _sign_up(client: TestClient, runtime: Runtime) -> None:
    _post_form(client, "/compte/inscription", {"email": EMAIL, "password": PASSWORD})
    _post_form(client, "/compte/confirmation", {"email": EMAIL, "code": _last_code(runtime)})


def _signed_in(client: TestClient, runtime: Runtime, password: str = PASSWORD) -> str:
    """Log in with an email code; the security page's CSRF token."""
    assert _post_form(client, "/compte/connexion", {"email": EMAIL, "password": password}) == (
        "/compte/second-facteur"
    )
    csrf = _csrf(client.get("/compte/second-facteur").text)
    client.post("/compte/second-facteur/envoi", data={"csrf_token": csrf})
    done = client.post(
        "/compte/second-facteur",
        data={"factor": "email", "code": _last_code(runtime), "csrf_token": csrf},
        follow_redirects=False,
    )
    assert done.headers["location"] == "/compte/securite"
    return _csrf(client.get("/compte/securite").text)


def _reset_form(client: TestClient, token: str, password: str, confirmation: str) -> dict[str, str]:
    return {
        "token": token,
        "password": password,
        "password_confirmation": confirmation,
        "csrf_token": _csrf(client.get(RESET).text),
    }


# --------------------------------------------------------------------------- reset


def test_the_login_page_links_to_the_forgotten_password_page(client: TestClient) -> None:
    login = client.get("/compte/connexion")
    assert '<a href="/compte/mot-de-passe/oubli">Mot de passe oublié ?</a>' in login.text
    page = client.get(FORGOT)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert '<label for="email">Adresse e-mail</label>' in page.text
    assert re.search(r'id="email"[^>]*autocomplete="email"', page.text)
    for inline in ("<script", "<style", "style="):
        assert inline not in page.text


def test_a_reset_request_gets_the_same_answer_for_a_known_and_an_unknown_address(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    sent_before = len(_bodies(runtime))
    started = time.monotonic()
    assert _post_form(client, FORGOT, {"email": "personne@example.org"}) == SENT
    assert time.monotonic() - started >= routes.RESET_ANSWER_SECONDS, "the least answer time"
    assert len(_bodies(runtime)) == sent_before, "no message for an unknown address"
    started = time.monotonic()
    assert _post_form(client, FORGOT, {"email": EMAIL.upper()}) == SENT
    assert time.monotonic() - started >= routes.RESET_ANSWER_SECONDS
    assert len(_bodies(runtime)) == sent_before + 1
    assert _last_token(runtime)
    notice = client.get(SENT)
    assert "Si un compte correspond à cette adresse" in notice.text
    assert 'role="status"' in notice.text


def test_a_reset_request_with_a_bad_address_or_token_or_origin_is_refused(
    client: TestClient, runtime: Runtime
) -> None:
    csrf = _csrf(client.get(FORGOT).text)
    empty = client.post(FORGOT, data={"email": " ", "csrf_token": csrf})
    assert empty.status_code == 422
    assert "Saisissez votre adresse e-mail." in empty.text
    assert re.search(r'id="email"[^>]*aria-describedby="email-erreur"', empty.text)
    invalid = client.post(FORGOT, data={"email": "pas-une-adresse", "csrf_token": csrf})
    assert invalid.status_code == 422
    assert "Saisissez une adresse e-mail valide" in invalid.text
    assert 'value="pas-une-adresse"' in invalid.text
    expired = client.post(FORGOT, data={"email": EMAIL, "csrf_token": "x" * 43})
    assert expired.status_code == 403
    assert "Ce formulaire a expiré" in expired.text
    foreign = client.post(
        FORGOT,
        data={"email": EMAIL, "csrf_token": csrf},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert foreign.status_code == 403
    assert _bodies(runtime) == []


def test_the_new_password_page_reads_the_fragment_with_its_own_script(
    client: TestClient,
) -> None:
    page = client.get(RESET)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert '<script src="/static/reset.js" defer></script>' in page.text
    assert re.search(r"<script(?![^>]*\bsrc=)", page.text) is None, "no inline script"
    assert "<noscript>" in page.text
    assert "JavaScript est désactivé" in page.text
    assert '<div id="champ-code" data-keep="false">' in page.text
    for field_id in ("token", "password", "password-confirmation"):
        assert f'<label for="{field_id}">' in page.text
    assert len(re.findall(r'type="password" autocomplete="new-password"', page.text)) == 2
    script = client.get("/static/reset.js")
    assert script.status_code == 200
    assert "history.replaceState" in script.text
    assert "javascript" in script.headers["content-type"]


def test_a_reset_sets_the_password_ends_every_session_and_the_link_is_single_use(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    _signed_in(client, runtime)
    old_session = client.cookies.get(SESSION_COOKIE)
    assert old_session
    _post_form(client, FORGOT, {"email": EMAIL})
    token = _last_token(runtime)

    mismatch = client.post(RESET, data=_reset_form(client, token, NEW_PASSWORD, "autre chose"))
    assert mismatch.status_code == 422
    assert "Les deux mots de passe ne sont pas identiques" in mismatch.text
    assert re.search(r'id="password-confirmation"[^>]*aria-invalid="true"', mismatch.text)
    assert f'value="{token}"' in mismatch.text, "the token is kept for the next try"
    assert NEW_PASSWORD not in mismatch.text, "a password is never sent back"
    weak = client.post(RESET, data=_reset_form(client, token, "12345678", "12345678"))
    assert weak.status_code == 422
    assert 'id="password-erreur"' in weak.text
    assert '<div id="champ-code" data-keep="false">' in weak.text

    done = client.post(
        RESET, data=_reset_form(client, token, NEW_PASSWORD, NEW_PASSWORD), follow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/compte/connexion?info=mot-de-passe-reinitialise"
    assert done.headers["set-cookie"].startswith(f'{SESSION_COOKIE}=""'), "cookie dropped"
    login = client.get(done.headers["location"])
    assert "Connectez-vous avec votre nouveau mot de passe" in login.text
    client.cookies.set(SESSION_COOKIE, old_session)
    assert client.get("/compte/securite", follow_redirects=False).status_code == 303
    client.cookies.delete(SESSION_COOKIE)

    again = client.post(RESET, data=_reset_form(client, token, NEW_PASSWORD, NEW_PASSWORD))
    assert again.status_code == 401
    assert "Ce lien n'est pas valable ou a expiré" in html.unescape(again.text)
    assert '<div id="champ-code" data-keep="true">' in again.text
    assert 'href="/compte/mot-de-passe/oubli">Demander un nouveau lien' in again.text
    _signed_in(client, runtime, NEW_PASSWORD)


def test_a_reset_without_its_code_or_with_a_made_up_one_changes_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    missing = client.post(RESET, data=_reset_form(client, "", NEW_PASSWORD, NEW_PASSWORD))
    assert missing.status_code == 422
    assert "Saisissez le code de réinitialisation" in missing.text
    assert re.search(r'id="token"[^>]*autofocus', missing.text)
    for made_up in ("a" * 32 + "." + "b" * 43, "x" * 201, "é.é"):
        wrong = client.post(RESET, data=_reset_form(client, made_up, NEW_PASSWORD, NEW_PASSWORD))
        assert wrong.status_code == 401, made_up
        assert "Ce lien n'est pas valable ou a expiré" in html.unescape(wrong.text)
    expired_form = client.post(
        RESET,
        data={**_reset_form(client, "a.b", NEW_PASSWORD, NEW_PASSWORD), "csrf_token": "x" * 43},
    )
    assert expired_form.status_code == 403
    _signed_in(client, runtime, PASSWORD)


# --------------------------------------------------------------------------- change


def test_the_security_page_changes_the_password_and_closes_the_other_sessions(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    app = client.app
    with TestClient(app, base_url=ORIGIN) as other:  # another device
        _signed_in(other, runtime)
        csrf = _signed_in(client, runtime)
        page = client.get("/compte/securite")
        assert '<h2 id="titre-mot-de-passe">Mot de passe</h2>' in page.text
        assert re.search(r'id="current-password"[^>]*autocomplete="current-password"', page.text)
        assert re.search(r'id="new-password"[^>]*autocomplete="new-password"', page.text)

        empty = client.post(CHANGE, data={"csrf_token": csrf})
        assert empty.status_code == 422
        assert "Saisissez votre mot de passe actuel." in empty.text
        assert 'href="#current-password">Mot de passe actuel : ' in empty.text
        wrong = client.post(
            CHANGE,
            data={
                "current_password": "pas le bon",
                "new_password": NEW_PASSWORD,
                "csrf_token": csrf,
            },
        )
        assert wrong.status_code == 403
        assert "Le mot de passe actuel est incorrect." in wrong.text
        assert re.search(r'id="current-password"[^>]*aria-invalid="true"[^>]*autofocus', wrong.text)
        same = client.post(
            CHANGE,
            data={"current_password": PASSWORD, "new_password": PASSWORD, "csrf_token": csrf},
        )
        assert same.status_code == 422
        assert "Choisissez un mot de passe différent de l'actuel." in html.unescape(same.text)
        weak = client.post(
            CHANGE,
            data={"current_password": PASSWORD, "new_password": "12345678", "csrf_token": csrf},
        )
        assert weak.status_code == 422
        assert 'id="new-password-erreur"' in weak.text
        refused = client.post(
            CHANGE,
            data={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "csrf_token": "x"},
        )
        assert refused.status_code == 403
        assert "Ce formulaire a expiré" in refused.text

        before = client.cookies.get(SESSION_COOKIE)
        done = client.post(
            CHANGE,
            data={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "csrf_token": csrf},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/compte/securite?info=mot-de-passe-change"
        assert client.cookies.get(SESSION_COOKIE) not in {None, before}, "a new session token"
        shown = client.get(done.headers["location"])
        assert shown.status_code == 200
        assert "Vos autres appareils ont été déconnectés." in shown.text
        assert other.get("/compte/securite", follow_redirects=False).status_code == 303
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    assert mailer.messages()[-1]["Subject"] == "Votre mot de passe a été changé"
    client.cookies.delete(SESSION_COOKIE)
    _signed_in(client, runtime, NEW_PASSWORD)


def test_the_password_change_needs_a_session(client: TestClient) -> None:
    answer = client.post(
        CHANGE,
        data={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "csrf_token": "x"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/compte/connexion"
