"""The authentication API end to end over HTTP, against a real database, key file and mailer."""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Iterator

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from helpers import leaked
from labvault.accounts.models import Account, AccountStatus
from labvault.app import create_app
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.otp import totp_code
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

EMAIL = "camille.martin@example.org"
PASSWORD = "une phrase de passe assez longue"
PHRASE = "le chat bleu de Lisieux"
ORIGIN = "https://testserver"


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
        create_organization(session, runtime.key_provider, "Labo Auth")
    app = create_app(runtime.settings, runtime)
    with TestClient(app, base_url=ORIGIN) as test_client:
        yield test_client


def _mails(runtime: Runtime) -> list[str]:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    return [m.get_body(("plain",)).get_content() for m in mailer.messages()]  # type: ignore[union-attr]


def _last_code(runtime: Runtime) -> str:
    match = re.search(r"code [^:]*: (\d{6})", _mails(runtime)[-1])
    assert match is not None, _mails(runtime)[-1]
    return match.group(1)


def _sign_up(client: TestClient, runtime: Runtime, email: str = EMAIL) -> None:
    answer = client.post(
        "/api/v1/auth/signup",
        json={"email": email, "password": PASSWORD, "security_phrase": PHRASE},
    )
    assert answer.status_code == 202, answer.text
    confirmed = client.post(
        "/api/v1/auth/signup/confirm", json={"email": email, "code": _last_code(runtime)}
    )
    assert confirmed.status_code == 204, confirmed.text


def _login(client: TestClient, runtime: Runtime, email: str = EMAIL) -> str:
    step = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert step.status_code == 200, step.text
    assert step.json()["second_factor"][0] in {"email", "totp"}
    csrf = step.json()["csrf_token"]
    sent = client.post("/api/v1/auth/login/email-code", headers={"X-CSRF-Token": csrf})
    assert sent.status_code == 202, sent.text
    done = client.post(
        "/api/v1/auth/login/second-factor",
        json={"method": "email", "code": _last_code(runtime)},
        headers={"X-CSRF-Token": csrf},
    )
    assert done.status_code == 200, done.text
    return str(done.json()["csrf_token"])


def test_sign_up_confirm_login_with_the_email_code_and_log_out(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    assert all(PHRASE in body for body in _mails(runtime)), "every message carries the phrase"
    pending_cookie = None
    step = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    pending_cookie = client.cookies.get("__Host-labvault-session")
    assert client.get("/api/v1/auth/me").status_code == 401, "the password alone opens nothing"
    csrf = step.json()["csrf_token"]
    client.post("/api/v1/auth/login/email-code", headers={"X-CSRF-Token": csrf})
    done = client.post(
        "/api/v1/auth/login/second-factor",
        json={"method": "email", "code": _last_code(runtime)},
        headers={"X-CSRF-Token": csrf},
    )
    assert done.status_code == 200
    cookie = done.headers["set-cookie"]
    assert cookie.startswith("__Host-labvault-session=")
    for attribute in ("Secure", "HttpOnly", "SameSite=strict", "Path=/"):
        assert attribute.lower() in cookie.lower()
    assert client.cookies.get("__Host-labvault-session") != pending_cookie, "new token at login"
    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200
    assert me.json()["kind"] == "patient"
    csrf = me.json()["csrf_token"]
    assert client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert client.get("/api/v1/auth/me").status_code == 401


def test_unknown_and_known_accounts_get_the_same_answers(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    before = len(_mails(runtime))
    again = client.post("/api/v1/auth/signup", json={"email": EMAIL, "password": PASSWORD + " bis"})
    fresh = client.post(
        "/api/v1/auth/signup", json={"email": "nouveau@example.org", "password": PASSWORD}
    )
    assert again.status_code == fresh.status_code == 202
    assert again.json() == fresh.json()
    assert "demandé à créer un compte" in " ".join(_mails(runtime)[before:]), "owner told"

    timings: dict[str, list[float]] = {"known": [], "unknown": []}
    answers = {}
    for _ in range(3):
        for label, email in (("known", EMAIL), ("unknown", "personne@example.org")):
            start = time.perf_counter()
            answer = client.post(
                "/api/v1/auth/login", json={"email": email, "password": "mauvais mot de passe"}
            )
            timings[label].append(time.perf_counter() - start)
            answers[label] = (answer.status_code, answer.json()["detail"])
    assert answers["known"] == answers["unknown"] == (401, answers["known"][1])
    known, unknown = sorted(timings["known"])[1], sorted(timings["unknown"])[1]
    assert 0.4 < known / unknown < 2.5, timings


def test_csrf_and_cross_origin_requests_are_refused(client: TestClient, runtime: Runtime) -> None:
    _sign_up(client, runtime)
    csrf = _login(client, runtime)
    for headers in ({}, {"X-CSRF-Token": "x" * 43}, {"X-CSRF-Token": ""}):
        refused = client.post("/api/v1/auth/logout", headers=headers)
        assert refused.status_code == 403
        assert refused.json()["type"].endswith("csrf")
    evil = client.post(
        "/api/v1/auth/logout",
        headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
    )
    assert evil.status_code == 403
    assert client.get("/api/v1/auth/me").status_code == 200, "still signed in"


def test_totp_enrolment_login_and_replay(client: TestClient, runtime: Runtime) -> None:
    _sign_up(client, runtime)
    csrf = _login(client, runtime)
    setup = client.post("/api/v1/auth/totp", headers={"X-CSRF-Token": csrf})
    assert setup.status_code == 200
    assert EMAIL not in setup.json()["uri"]
    text_secret = setup.json()["secret"]
    secret = Secret(base64.b32decode(text_secret + "=" * (-len(text_secret) % 8)))
    now = time.time()
    confirm = client.post(
        "/api/v1/auth/totp/confirm",
        json={"code": totp_code(secret, now - 30)},
        headers={"X-CSRF-Token": csrf},
    )
    assert confirm.status_code == 204, confirm.text
    client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})

    step = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert step.json()["second_factor"][0] == "totp"
    headers = {"X-CSRF-Token": step.json()["csrf_token"]}
    code = totp_code(secret, now)
    done = client.post(
        "/api/v1/auth/login/second-factor", json={"method": "totp", "code": code}, headers=headers
    )
    assert done.status_code == 200, done.text
    client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": done.json()["csrf_token"]})

    step = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    headers = {"X-CSRF-Token": step.json()["csrf_token"]}
    replay = client.post(
        "/api/v1/auth/login/second-factor", json={"method": "totp", "code": code}, headers=headers
    )
    assert replay.status_code == 401, "a TOTP code is good once"


def test_recovery_codes_are_single_use(client: TestClient, runtime: Runtime) -> None:
    _sign_up(client, runtime)
    csrf = _login(client, runtime)
    codes = client.post("/api/v1/auth/recovery-codes", headers={"X-CSRF-Token": csrf}).json()[
        "codes"
    ]
    assert len(codes) == 10
    client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
    for expected in (200, 401):
        step = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
        assert "recovery" in step.json()["second_factor"] or expected == 401
        headers = {"X-CSRF-Token": step.json()["csrf_token"]}
        done = client.post(
            "/api/v1/auth/login/second-factor",
            json={"method": "recovery", "code": codes[0].upper()},
            headers=headers,
        )
        assert done.status_code == expected
        if expected == 200:
            client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": done.json()["csrf_token"]})


def test_sessions_are_listed_and_revoked(client: TestClient, runtime: Runtime) -> None:
    _sign_up(client, runtime)
    first_csrf = _login(client, runtime)
    first_cookie = client.cookies.get("__Host-labvault-session")
    client.cookies.clear()
    second_csrf = _login(client, runtime)
    listed = client.get("/api/v1/auth/sessions").json()
    assert sum(item["current"] for item in listed) == 1
    other = next(item["id"] for item in listed if not item["current"])
    assert (
        client.delete(f"/api/v1/auth/sessions/{other}", headers={"X-CSRF-Token": second_csrf})
    ).status_code == 204
    client.cookies.set("__Host-labvault-session", first_cookie or "")
    assert client.get("/api/v1/auth/me").status_code == 401, "the revoked session is gone"
    assert first_csrf != second_csrf


def test_credential_stuffing_is_throttled_before_any_hashing(
    client: TestClient, runtime: Runtime
) -> None:
    statuses = []
    start = time.perf_counter()
    for number in range(1000):
        answer = client.post(
            "/api/v1/auth/login",
            json={"email": f"victime{number}@example.org", "password": "azerty123456"},
        )
        statuses.append(answer.status_code)
    elapsed = time.perf_counter() - start
    assert statuses.count(401) == 30, "30 attempts a minute from one client address"
    assert statuses.count(429) == 970
    throttled = client.post(
        "/api/v1/auth/login", json={"email": "x@example.org", "password": "azerty123456"}
    )
    assert int(throttled.headers["retry-after"]) >= 1
    assert elapsed < 60
    with runtime.sessions() as session:
        refused = session.scalar(
            select(text("count(*)"))
            .select_from(AuditEvent)
            .where(AuditEvent.action == "account:login:throttled")
        )
    assert refused
    assert refused >= 970


def test_no_code_secret_or_recovery_code_in_clear_at_rest(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    csrf = _login(client, runtime)
    setup = client.post("/api/v1/auth/totp", headers={"X-CSRF-Token": csrf}).json()
    codes = client.post("/api/v1/auth/recovery-codes", headers={"X-CSRF-Token": csrf}).json()[
        "codes"
    ]
    with runtime.sessions() as session:
        dump = "\n".join(
            _printable(row)
            for table in (
                "accounts",
                "account_sessions",
                "one_time_codes",
                "totp_credentials",
                "recovery_codes",
                "audit_events",
            )
            for row in session.execute(text(f"SELECT * FROM {table}"))
        ).encode()
        account = session.scalars(select(Account)).one()
    secret_values = [setup["secret"], EMAIL, PHRASE, PASSWORD, *codes]
    secret_values += [code.replace("-", "") for code in codes]
    secret_values.append(client.cookies.get("__Host-labvault-session") or "")
    assert leaked(dump, secret_values) == []
    assert account.status == AccountStatus.ACTIVE.value


def _printable(row: object) -> str:
    """A row as text, binary values in hex: random bytes shown as characters could spell a
    short name by chance."""
    values = tuple(value.hex() if isinstance(value, bytes) else value for value in row)  # type: ignore[attr-defined]
    return repr(values)
