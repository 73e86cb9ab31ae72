"""The French account pages over HTTP (no browser): forms, CSRF, origins, redirects.

The same flows in a real browser are in ``tests/e2e``; here are the refusals that a browser
would never send, against a real database, key file and file mailer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
import structlog
from fastapi.testclient import TestClient

from labvault.app import create_app
from labvault.core.db import transaction
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

EMAIL = "alix.bernard@example.org"
PASSWORD = "une phrase de passe assez longue"
ORIGIN = "https://testserver"
SESSION_COOKIE = "__Host-labvault-session"
FORM_COOKIE = "__Host-labvault-form"
EXPIRED = "Ce formulaire a expiré"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_LabvaultHandler":
            root.removeHandler(handler)


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with transaction(runtime.sessions) as session:
        create_organization(session, runtime.key_provider, "Labo Pages")
    app = create_app(runtime.settings, runtime)
    with TestClient(app, base_url=ORIGIN) as test_client:
        yield test_client


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


def _last_code(runtime: Runtime) -> str:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    body = mailer.messages()[-1].get_body(("plain",))
    assert body is not None
    match = re.search(r"code [^:]*: (\d{6})", body.get_content())
    assert match is not None
    return match.group(1)


def _post_form(client: TestClient, path: str, data: dict[str, str]) -> str:
    """GET the form, POST it with its token; the location it redirects to."""
    page = client.get(path)
    data = {**data, "csrf_token": _csrf(page.text)}
    answer = client.post(path, data=data, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return str(answer.headers["location"])


def _signed_in(client: TestClient, runtime: Runtime) -> str:
    """Sign up, confirm, log in with an email code; the security page's CSRF token."""
    _post_form(client, "/compte/inscription", {"email": EMAIL, "password": PASSWORD})
    _post_form(client, "/compte/confirmation", {"email": EMAIL, "code": _last_code(runtime)})
    assert _post_form(client, "/compte/connexion", {"email": EMAIL, "password": PASSWORD}) == (
        "/compte/second-facteur"
    )
    csrf = _csrf(client.get("/compte/second-facteur").text)
    sent = client.post(
        "/compte/second-facteur/envoi", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert sent.status_code == 303
    done = client.post(
        "/compte/second-facteur",
        data={"factor": "email", "code": _last_code(runtime), "csrf_token": csrf},
        follow_redirects=False,
    )
    assert done.headers["location"] == "/compte/securite"
    return _csrf(client.get("/compte/securite").text)


FORMS = ["/compte/inscription", "/compte/confirmation", "/compte/connexion"]


@pytest.mark.parametrize("path", FORMS)
def test_forms_are_french_labelled_private_and_bound_to_a_form_cookie(
    client: TestClient, path: str
) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert '<html lang="fr">' in page.text
    assert page.headers["cache-control"] == "no-store"
    for inline in ("<script", "<style", "style="):
        assert inline not in page.text
    ids = re.findall(r'<input class="field__input[^"]*" id="([^"]+)"', page.text)
    assert ids
    for input_id in ids:
        assert f'<label for="{input_id}">' in page.text, input_id
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(f"{FORM_COOKIE}=")
    for attribute in ("Secure", "HttpOnly", "SameSite=strict", "Path=/"):
        assert attribute.lower() in cookie.lower()
    again = client.get(path)
    assert "set-cookie" not in again.headers, "one form cookie per browser"
    assert _csrf(again.text) == _csrf(page.text)


def test_a_post_without_its_token_or_from_another_site_changes_nothing(
    client: TestClient, runtime: Runtime
) -> None:
    token = _csrf(client.get("/compte/inscription").text)
    form = {"email": EMAIL, "password": PASSWORD}
    for csrf in ("", "x" * 43, "é" * 43, "a" * 5000):
        refused = client.post("/compte/inscription", data={**form, "csrf_token": csrf})
        assert refused.status_code == 403
        assert EXPIRED in refused.text
        assert 'id="email"' in refused.text, "the form comes back"
    for headers in (
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
    ):
        refused = client.post(
            "/compte/inscription", data={**form, "csrf_token": token}, headers=headers
        )
        assert refused.status_code == 403
        assert "Requête refusée" in refused.text
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    assert mailer.messages() == [], "no account was made, no mail was sent"
    client.cookies.delete(FORM_COOKIE)
    no_cookie = client.post("/compte/inscription", data={**form, "csrf_token": token})
    assert no_cookie.status_code == 403, "the token alone is not enough"


def test_a_same_origin_form_post_with_origin_null_is_accepted(client: TestClient) -> None:
    """Under Referrer-Policy: no-referrer, browsers send Origin: null with their forms."""
    token = _csrf(client.get("/compte/connexion").text)
    for headers in ({"Origin": "null", "Sec-Fetch-Site": "same-origin"}, {"Origin": "null"}):
        answer = client.post(
            "/compte/connexion",
            data={"email": EMAIL, "password": PASSWORD, "csrf_token": token},
            headers=headers,
        )
        assert answer.status_code == 401
        assert "Adresse e-mail ou mot de passe incorrect." in answer.text


def test_errors_come_back_in_french_tied_to_their_fields(client: TestClient) -> None:
    page = client.get("/compte/inscription")
    answer = client.post(
        "/compte/inscription",
        data={"email": EMAIL, "password": "12345678", "csrf_token": _csrf(page.text)},
    )
    assert answer.status_code == 422
    assert 'aria-invalid="true"' in answer.text
    assert 'aria-describedby="password-aide password-erreur"' in answer.text
    assert 'id="password-erreur"' in answer.text
    assert re.search(r'id="password"[^>]*autofocus', answer.text), "focus on the error"
    assert "<title>Erreur : Créer un compte" in answer.text
    assert PASSWORD not in answer.text
    assert 'value="12345678"' not in answer.text, "a password is never sent back"


def test_pages_of_a_session_send_others_to_the_login_page(client: TestClient) -> None:
    for path in ("/compte/second-facteur", "/compte/securite"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/compte/connexion"
    client.cookies.set(SESSION_COOKIE, "not-a-session")
    stale = client.get("/compte/securite", follow_redirects=False)
    assert stale.headers["location"] == "/compte/connexion?info=session-expiree"
    assert stale.headers["set-cookie"].startswith(f'{SESSION_COOKIE}=""')


def test_signed_in_posts_need_the_session_token(client: TestClient, runtime: Runtime) -> None:
    csrf = _signed_in(client, runtime)
    posts = ("/compte/deconnexion", "/compte/securite/totp", "/compte/securite/codes-de-secours")
    for path in posts:
        refused = client.post(path, data={"csrf_token": "x" * 43}, follow_redirects=False)
        assert refused.status_code == 403, path
    assert client.get("/compte/securite").status_code == 200, "still signed in"

    nothing_to_confirm = client.post(
        "/compte/securite/totp/confirmation", data={"code": "123456", "csrf_token": csrf}
    )
    assert nothing_to_confirm.status_code == 422
    assert "en cours de configuration" in nothing_to_confirm.text
    assert 'href="#code-totp"' not in nothing_to_confirm.text
    no_totp = client.post(
        "/compte/second-facteur", data={"factor": "totp", "code": "1", "csrf_token": csrf}
    )
    assert no_totp.status_code == 200, "signed in already: back to the security page"

    enrolment = client.post("/compte/securite/totp", data={"csrf_token": csrf})
    assert enrolment.status_code == 200
    assert "otpauth://totp/" in enrolment.text
    assert '<svg role="img"' in enrolment.text
    wrong = client.post(
        "/compte/securite/totp/confirmation", data={"code": "abc", "csrf_token": csrf}
    )
    assert wrong.status_code == 422
    assert 'href="#code-totp"' in wrong.text
    assert re.search(r'id="code-totp"[^>]*aria-invalid="true"', wrong.text)
    codes = client.post("/compte/securite/codes-de-secours", data={"csrf_token": csrf})
    assert codes.headers["cache-control"] == "no-store"
    assert len(re.findall(r"<li><code>[a-z2-7-]{14}</code></li>", codes.text)) == 10

    out = client.post("/compte/deconnexion", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.headers["location"] == "/compte/connexion?info=deconnexion"
    assert client.get("/compte/securite", follow_redirects=False).status_code == 303
