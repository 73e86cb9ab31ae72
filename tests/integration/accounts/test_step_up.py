"""Step-up re-authentication over HTTP (API and pages) against a real database, key file,
mailer and rate limiter, on both backends: every protected action is refused without a
recent second-factor proof in THIS session and allowed after one; proofs expire; the
"Confirmez votre identité" page only ever sends the browser back to a local path."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import select

from helpers import CHEAP_HASHER
from labvault.accounts.models import AccountKind, AccountSession
from labvault.accounts.services import AccountService
from labvault.accounts.stepup import STEP_UP_REQUIRED, StepUpRequired, require_step_up
from labvault.app import create_app
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.otp import totp_code
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from passkey_authenticator import SoftAuthenticator

ORIGIN = "https://labo.example"
EMAIL = "camille.martin@example.org"
PASSWORD = "une phrase de passe assez longue"
NEW_PASSWORD = "un tout autre secret bien gardé"
SESSION_COOKIE = "__Host-labvault-session"
SYSTEM = Principal(PrincipalKind.SYSTEM, "system:test")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_LabvaultHandler":
            root.removeHandler(handler)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Served at an https origin: a valid passkey relying party."""
    settings = Settings(data_dir=tmp_path / "var", database_url=database_url, public_url=ORIGIN)
    FileKeyProvider.create(settings.key_file)
    return settings


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Labo Step-up")
        AccountService(
            session,
            tenant_id=organization.id,
            provider=runtime.key_provider,
            mailer=runtime.mailer,
            limiter=runtime.rate_limiter,
            settings=runtime.settings,
            hasher=CHEAP_HASHER,
        ).provision(
            EMAIL, Secret(PASSWORD), kind=AccountKind.PATIENT, security_phrase=None, by=SYSTEM
        )
    with TestClient(create_app(runtime.settings, runtime), base_url=ORIGIN) as test_client:
        yield test_client


# --------------------------------------------------------------------------- helpers


def _last_code(runtime: Runtime) -> str:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    body = mailer.messages()[-1].get_body(("plain",))
    assert body is not None
    match = re.search(r"code [^:]*: (\d{6})", body.get_content())  # type: ignore[attr-defined]
    assert match is not None
    return match.group(1)


def sign_in(client: TestClient, runtime: Runtime) -> dict[str, str]:
    """A full login with an emailed code: the CSRF header of the new session."""
    step = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert step.status_code == 200, step.text
    headers = {"X-CSRF-Token": step.json()["csrf_token"]}
    assert client.post("/api/v1/auth/login/email-code", headers=headers).status_code == 202
    done = client.post(
        "/api/v1/auth/login/second-factor",
        json={"method": "email", "code": _last_code(runtime)},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    return {"X-CSRF-Token": done.json()["csrf_token"]}


def age_proofs(
    runtime: Runtime, minutes: float = 6, *, session_id: uuid.UUID | None = None
) -> None:
    """Move every session's second-factor and step-up proofs ``minutes`` into the past."""
    with transaction(runtime.sessions) as session:
        query = select(AccountSession)
        if session_id is not None:
            query = query.where(AccountSession.id == session_id)
        for record in session.scalars(query):
            for column in ("second_factor_at", "step_up_at"):
                moment = getattr(record, column)
                if moment is not None:
                    setattr(record, column, moment - dt.timedelta(minutes=minutes))


def step_up_by_email(client: TestClient, runtime: Runtime, headers: dict[str, str]) -> None:
    """The helper other tests use: a real step-up with an emailed code (no bypass)."""
    sent = client.post("/api/v1/auth/step-up/email-code", headers=headers)
    assert sent.status_code == 202, sent.text
    proved = client.post(
        "/api/v1/auth/step-up",
        json={"method": "email", "code": _last_code(runtime)},
        headers=headers,
    )
    assert proved.status_code == 204, proved.text


def _actions(runtime: Runtime) -> list[tuple[str, str]]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(AuditEvent.action, AuditEvent.outcome).order_by(AuditEvent.occurred_us)
        )
        return [(action, outcome) for action, outcome in rows]


def _refused(answer: object) -> None:
    status = getattr(answer, "status_code", None)
    body = answer.json()  # type: ignore[attr-defined]
    assert status == 403, body
    assert body["reason"] == STEP_UP_REQUIRED
    assert body["type"].endswith("/step-up-required")


# --------------------------------------------------------------------------- the rule


def test_require_step_up_counts_this_sessions_recent_proofs_only(settings: Settings) -> None:
    now = utcnow()
    record = AccountSession(second_factor_at=None, step_up_at=None)
    with pytest.raises(StepUpRequired):
        require_step_up(record, settings, lambda: now)
    record.second_factor_at = now - dt.timedelta(minutes=4, seconds=59)
    require_step_up(record, settings, lambda: now)  # the login's own second factor counts
    record.second_factor_at = now - dt.timedelta(minutes=5)
    with pytest.raises(StepUpRequired):
        require_step_up(record, settings, lambda: now)
    record.step_up_at = now - dt.timedelta(seconds=10)
    require_step_up(record, settings, lambda: now)
    record.step_up_at = now + dt.timedelta(minutes=1)  # a proof "from the future" is no proof
    with pytest.raises(StepUpRequired):
        require_step_up(record, settings, lambda: now)
    longer = Settings(**{**settings.model_dump(), "step_up_minutes": 15})
    record.step_up_at = now - dt.timedelta(minutes=14)
    require_step_up(record, longer, lambda: now)


def test_the_step_up_window_is_validated() -> None:
    for wrong in (0, 61, -1):
        with pytest.raises(ValueError, match="step_up_minutes"):
            Settings(step_up_minutes=wrong)


# --------------------------------------------------------------------------- API


def _protected_calls(
    client: TestClient, headers: dict[str, str]
) -> dict[str, object]:  # name -> answer
    return {
        "totp": client.post("/api/v1/auth/totp", headers=headers),
        "recovery": client.post("/api/v1/auth/recovery-codes", headers=headers),
        "passkey-options": client.post(
            "/api/v1/auth/webauthn/registration/options", headers=headers
        ),
        "passkey-delete": client.delete(
            f"/api/v1/auth/webauthn/credentials/{uuid.uuid4()}", headers=headers
        ),
    }


def test_each_protected_api_action_is_refused_without_step_up_then_allowed(
    client: TestClient, runtime: Runtime
) -> None:
    headers = sign_in(client, runtime)
    age_proofs(runtime)
    for answer in _protected_calls(client, headers).values():
        _refused(answer)
    password = client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=headers,
    )
    _refused(password)
    _refused(client.post("/api/v1/auth/account/deletion", headers=headers))
    assert client.get("/api/v1/auth/me").status_code == 200, "the session itself is fine"
    assert client.get("/api/v1/auth/step-up").json()["fresh"] is False
    # Revoking another session needs no step-up.
    assert (
        client.delete(f"/api/v1/auth/sessions/{uuid.uuid4()}", headers=headers).status_code == 404
    )

    step_up_by_email(client, runtime, headers)
    state = client.get("/api/v1/auth/step-up").json()
    assert state["fresh"] is True
    assert state["methods"] == ["email"]
    answers = _protected_calls(client, headers)
    assert answers["totp"].status_code == 200  # type: ignore[attr-defined]
    assert answers["recovery"].status_code == 200  # type: ignore[attr-defined]
    assert answers["passkey-options"].status_code == 200  # type: ignore[attr-defined]
    assert answers["passkey-delete"].status_code == 404  # type: ignore[attr-defined]
    password = client.post(
        "/api/v1/auth/password",
        json={"current_password": "pas le bon", "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert password.status_code == 403
    assert password.json()["type"].endswith("/wrong-password"), "the password is still asked"
    password = client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=headers,
    )
    assert password.status_code == 200, password.text
    headers = {"X-CSRF-Token": password.json()["csrf_token"]}
    again = client.post("/api/v1/auth/recovery-codes", headers=headers)
    assert again.status_code == 200, "the renewed session keeps its step-up"
    actions = _actions(runtime)
    assert ("account:step-up:required", "denied") in actions
    assert ("account:step-up:success", "success") in actions


def test_a_step_up_expires(client: TestClient, runtime: Runtime) -> None:
    headers = sign_in(client, runtime)
    age_proofs(runtime)
    step_up_by_email(client, runtime, headers)
    assert client.post("/api/v1/auth/recovery-codes", headers=headers).status_code == 200
    age_proofs(runtime, minutes=4)
    assert client.post("/api/v1/auth/recovery-codes", headers=headers).status_code == 200
    age_proofs(runtime, minutes=1)
    _refused(client.post("/api/v1/auth/recovery-codes", headers=headers))
    assert client.get("/api/v1/auth/step-up").json() == {
        "fresh": False,
        "valid_until": None,
        "methods": ["email"],
    }


def test_a_step_up_in_one_session_does_not_count_in_another(
    client: TestClient, runtime: Runtime
) -> None:
    first = sign_in(client, runtime)
    first_cookie = client.cookies.get(SESSION_COOKIE)
    client.cookies.clear()
    second = sign_in(client, runtime)
    second_cookie = client.cookies.get(SESSION_COOKIE)
    age_proofs(runtime)
    client.cookies.set(SESSION_COOKIE, first_cookie or "")
    step_up_by_email(client, runtime, first)
    assert client.post("/api/v1/auth/recovery-codes", headers=first).status_code == 200
    client.cookies.set(SESSION_COOKIE, second_cookie or "")
    _refused(client.post("/api/v1/auth/recovery-codes", headers=second))


def test_wrong_codes_are_refused_audited_and_count_toward_the_limit(
    client: TestClient, runtime: Runtime
) -> None:
    headers = sign_in(client, runtime)
    age_proofs(runtime)
    answers = [
        client.post(
            "/api/v1/auth/step-up", json={"method": method, "code": "000000"}, headers=headers
        )
        for method in ("email", "totp", "recovery", "email")
    ]
    assert [answer.status_code for answer in answers] == [422] * 4
    assert {answer.json()["detail"] for answer in answers} == {"Code incorrect ou expiré."}
    assert client.get("/api/v1/auth/me").status_code == 200, "still signed in"
    failures = [a for a in _actions(runtime) if a[0] == "account:step-up:failure"]
    assert failures == [("account:step-up:failure", "failure")] * 4
    # The per-account second-factor limit (10 a minute) is shared with the login's step.
    statuses = [
        client.post(
            "/api/v1/auth/step-up", json={"method": "email", "code": "000000"}, headers=headers
        ).status_code
        for _ in range(6)
    ]
    assert statuses[:5] == [422] * 5, "1 login step + 4 failures + 5 = the 10 a minute"
    assert statuses[5] == 429
    _refused(client.post("/api/v1/auth/recovery-codes", headers=headers))


def test_a_totp_code_steps_up_once_and_a_replay_is_refused(
    client: TestClient, runtime: Runtime
) -> None:
    headers = sign_in(client, runtime)
    setup = client.post("/api/v1/auth/totp", headers=headers).json()
    text_secret = setup["secret"]
    secret = Secret(base64.b32decode(text_secret + "=" * (-len(text_secret) % 8)))
    now = time.time()
    confirm = client.post(
        "/api/v1/auth/totp/confirm", json={"code": totp_code(secret, now - 30)}, headers=headers
    )
    assert confirm.status_code == 204, confirm.text
    age_proofs(runtime)
    assert client.get("/api/v1/auth/step-up").json()["methods"] == ["totp", "email"]
    code = totp_code(secret, now)
    proved = client.post(
        "/api/v1/auth/step-up", json={"method": "totp", "code": code}, headers=headers
    )
    assert proved.status_code == 204, proved.text
    age_proofs(runtime)
    replay = client.post(
        "/api/v1/auth/step-up", json={"method": "totp", "code": code}, headers=headers
    )
    assert replay.status_code == 422, "a TOTP code serves once"
    _refused(client.post("/api/v1/auth/recovery-codes", headers=headers))


def test_a_recovery_code_steps_up_only_an_account_without_another_factor(
    client: TestClient, runtime: Runtime
) -> None:
    headers = sign_in(client, runtime)
    codes = client.post("/api/v1/auth/recovery-codes", headers=headers).json()["codes"]
    age_proofs(runtime)
    refused = client.post(
        "/api/v1/auth/step-up", json={"method": "recovery", "code": codes[0]}, headers=headers
    )
    assert refused.status_code == 422, "a patient always has the emailed code"
    assert "recovery" not in client.get("/api/v1/auth/step-up").json()["methods"]


def test_a_passkey_steps_up_with_its_own_challenge(client: TestClient, runtime: Runtime) -> None:
    soft = SoftAuthenticator(ORIGIN)
    headers = sign_in(client, runtime)
    base = "/api/v1/auth/webauthn"
    options = client.post(f"{base}/registration/options", headers=headers)
    credential, passkey = soft.create(options.json())
    created = client.post(f"{base}/registration", json={"credential": credential}, headers=headers)
    assert created.status_code == 201, created.text
    age_proofs(runtime)
    assert client.get("/api/v1/auth/step-up").json()["methods"] == ["webauthn", "email"]
    _refused(client.delete(f"{base}/credentials/{created.json()['id']}", headers=headers))

    options = client.post("/api/v1/auth/step-up/passkey/options", headers=headers)
    assert options.status_code == 200, options.text
    wrong_origin = soft.get(options.json(), passkey, origin="https://labo.example.evil.test")
    refused = client.post(
        "/api/v1/auth/step-up/passkey", json={"credential": wrong_origin}, headers=headers
    )
    assert refused.status_code == 422
    options = client.post("/api/v1/auth/step-up/passkey/options", headers=headers)
    assertion = soft.get(options.json(), passkey)
    proved = client.post(
        "/api/v1/auth/step-up/passkey", json={"credential": assertion}, headers=headers
    )
    assert proved.status_code == 204, proved.text
    replayed = client.post(
        "/api/v1/auth/step-up/passkey", json={"credential": assertion}, headers=headers
    )
    assert replayed.status_code == 422, "a challenge serves once"
    removed = client.delete(f"{base}/credentials/{created.json()['id']}", headers=headers)
    assert removed.status_code == 204


def test_the_openapi_document_names_the_step_up_reason(client: TestClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for path, method in (
        ("/api/v1/auth/totp", "post"),
        ("/api/v1/auth/recovery-codes", "post"),
        ("/api/v1/auth/password", "post"),
        ("/api/v1/auth/webauthn/registration/options", "post"),
        ("/api/v1/auth/webauthn/credentials/{passkey_id}", "delete"),
        ("/api/v1/auth/account/deletion", "post"),
    ):
        assert STEP_UP_REQUIRED in paths[path][method]["responses"]["403"]["description"], path
    assert "/api/v1/auth/step-up" in paths
    assert "/api/v1/auth/step-up/email-code" in paths


# --------------------------------------------------------------------------- pages


def _page_csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def sign_in_pages(client: TestClient, runtime: Runtime) -> None:
    page = client.get("/compte/connexion")
    step = client.post(
        "/compte/connexion",
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": _page_csrf(page.text)},
        follow_redirects=False,
    )
    assert step.status_code == 303, step.text
    second = client.get("/compte/second-facteur")
    client.post(
        "/compte/second-facteur/envoi",
        data={"csrf_token": _page_csrf(second.text)},
        follow_redirects=False,
    )
    done = client.post(
        "/compte/second-facteur",
        data={
            "factor": "email",
            "code": _last_code(runtime),
            "csrf_token": _page_csrf(second.text),
        },
        follow_redirects=False,
    )
    assert done.headers["location"].endswith("/compte/securite"), done.text


def test_security_page_actions_send_the_browser_to_confirm_first(
    client: TestClient, runtime: Runtime
) -> None:
    sign_in_pages(client, runtime)
    age_proofs(runtime)
    security = client.get("/compte/securite")
    assert "confirmer votre identité" in security.text
    csrf = _page_csrf(security.text)
    for path, data in (
        ("/compte/securite/totp", {}),
        ("/compte/securite/codes-de-secours", {}),
        ("/compte/securite/cles-d-acces/suppression", {"passkey_id": str(uuid.uuid4())}),
        (
            "/compte/securite/mot-de-passe",
            {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        ),
    ):
        answer = client.post(path, data={"csrf_token": csrf, **data}, follow_redirects=False)
        assert answer.status_code == 303, (path, answer.text)
        assert answer.headers["location"] == (
            "/compte/confirmer-identite?suite=%2Fcompte%2Fsecurite&info=confirmation-requise"
        ), path
    page = client.get("/compte/confirmer-identite?suite=/compte/securite")
    assert page.status_code == 200
    assert "Confirmez votre identité" in page.text
    csrf = _page_csrf(page.text)
    wrong = client.post(
        "/compte/confirmer-identite",
        data={"factor": "email", "code": "000000", "suite": "/compte/securite", "csrf_token": csrf},
    )
    assert wrong.status_code == 422
    assert "Code incorrect ou expiré." in wrong.text
    sent = client.post(
        "/compte/confirmer-identite/envoi",
        data={"suite": "/compte/securite", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    done = client.post(
        "/compte/confirmer-identite",
        data={
            "factor": "email",
            "code": _last_code(runtime),
            "suite": "/compte/securite",
            "csrf_token": csrf,
        },
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/compte/securite?info=identite-confirmee"
    codes = client.post(
        "/compte/securite/codes-de-secours", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert codes.status_code == 200
    assert 'id="codes-de-secours"' in codes.text


@pytest.mark.parametrize(
    "suite",
    [
        "https://evil.example/compte",
        "//evil.example/compte",
        "/\\evil.example",
        "\\\\evil.example",
        "/\\/evil.example",
        "javascript:alert(1)",
        "compte/securite",
        "/compte/securite#x",
        "/compte/\u00e9",
        "/compte/\nLocation: https://evil.example",
        " /compte/securite",
        "/" + "a" * 600,
    ],
)
def test_the_step_up_page_refuses_to_send_the_browser_elsewhere(
    client: TestClient, runtime: Runtime, suite: str
) -> None:
    sign_in_pages(client, runtime)
    age_proofs(runtime)
    page = client.get("/compte/confirmer-identite", params={"suite": suite})
    assert page.status_code == 200
    assert "evil" not in page.text
    assert 'name="suite" value="/compte/securite"' in page.text
    csrf = _page_csrf(page.text)
    client.post("/compte/confirmer-identite/envoi", data={"suite": suite, "csrf_token": csrf})
    done = client.post(
        "/compte/confirmer-identite",
        data={"factor": "email", "code": _last_code(runtime), "suite": suite, "csrf_token": csrf},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/compte/securite?info=identite-confirmee"


def test_the_step_up_page_returns_to_a_local_path(client: TestClient, runtime: Runtime) -> None:
    sign_in_pages(client, runtime)
    page = client.get("/compte/confirmer-identite", params={"suite": "/compte/suppression"})
    csrf = _page_csrf(page.text)
    assert 'name="suite" value="/compte/suppression"' in page.text
    client.post(
        "/compte/confirmer-identite/envoi",
        data={"suite": "/compte/suppression", "csrf_token": csrf},
    )
    done = client.post(
        "/compte/confirmer-identite",
        data={
            "factor": "email",
            "code": _last_code(runtime),
            "suite": "/compte/suppression",
            "csrf_token": csrf,
        },
        follow_redirects=False,
    )
    assert done.headers["location"] == "/compte/suppression?info=identite-confirmee"


def test_the_step_up_page_needs_a_signed_in_session(client: TestClient) -> None:
    answer = client.get("/compte/confirmer-identite", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/compte/connexion")
