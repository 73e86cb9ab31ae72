"""Password reset and change, lockout and unlock, new-device notices: over HTTP against a real
database, key file and mailer, and at the service level where time or counts must be forced."""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from urllib.parse import urlsplit

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from helpers import CHEAP_HASHER, leaked
from labvault.accounts import routes
from labvault.accounts.devices import DEVICE_COOKIE, KnownDevice
from labvault.accounts.models import Account, AccountKind, AccountSession, AccountStatus
from labvault.accounts.services import (
    RESET_LINK_INVALID,
    AccountService,
    AuthError,
    ForbiddenError,
)
from labvault.app import create_app
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail.file import FileMailer
from labvault.core.ratelimit import LOCKOUT_AFTER_FAILURES, RateDecision, RateRule
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization, get_organization

EMAIL = "camille.martin@example.org"
PASSWORD = "une phrase de passe assez longue"
NEW_PASSWORD = "un tout autre secret bien gardé"
PHRASE = "le chat bleu de Lisieux"
ORIGIN = "https://testserver"
SESSION_COOKIE = "__Host-labvault-session"
CLIENT = "c" * 32
LINK = re.compile(r"(\S+/compte/mot-de-passe/nouveau)#(\S+)")


# --------------------------------------------------------------------------- fixtures


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


class AllowEverything:
    """A ``RateLimiter`` that never refuses: service tests count failures past the limits."""

    def __init__(self) -> None:
        self.resets: list[tuple[str, tuple[str, ...]]] = []

    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return RateDecision(allowed=True, retry_after=0.0, remaining=rule.amount)

    def test(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return self.hit(rule, *identifiers)

    def hit_or_deny(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return self.hit(rule, *identifiers)

    def reset(self, rule: RateRule, *identifiers: str) -> None:
        self.resets.append((rule.name, identifiers))

    def close(self) -> None:
        pass


class MovableClock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


# OWASP's least memory-hungry Argon2id configuration, the cheapest PasswordHasher accepts.


class Services:
    """Builds an AccountService per transaction, like the routes do, with test doubles."""

    def __init__(self, runtime: Runtime, tenant_id: uuid.UUID) -> None:
        self.runtime = runtime
        self.tenant_id = tenant_id
        self.clock = MovableClock()
        self.limiter = AllowEverything()

    @contextmanager
    def unit(self) -> Iterator[AccountService]:
        with transaction(self.runtime.sessions) as session:
            self.session = session
            yield AccountService(
                session,
                tenant_id=self.tenant_id,
                provider=self.runtime.key_provider,
                mailer=self.runtime.mailer,
                limiter=self.limiter,
                settings=self.runtime.settings,
                hasher=CHEAP_HASHER,
                clock=self.clock,
            )

    def attempt(self, action: Callable[[AccountService], object]) -> AuthError | None:
        """Run ``action``; an AuthError is returned and the transaction still commits."""
        with self.unit() as service:
            try:
                action(service)
            except AuthError as exc:
                return exc
        return None

    def account(self) -> Account:
        """The tenant's one account (service tests create one)."""
        with self.runtime.sessions() as session:
            return session.scalars(select(Account).where(Account.tenant_id == self.tenant_id)).one()

    def sign_up(self) -> Account:
        with self.unit() as service:
            service.sign_up(EMAIL, Secret(PASSWORD), security_phrase=PHRASE, client_id=CLIENT)
        with self.unit() as service:
            service.confirm_email(EMAIL, _last_code(self.runtime))
        return self.account()


@pytest.fixture
def services(runtime: Runtime) -> Services:
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Labo Services")
    return Services(runtime, organization.id)


# --------------------------------------------------------------------------- helpers


def _messages(runtime: Runtime) -> list[EmailMessage]:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    return mailer.messages()


def _body(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def _mails(runtime: Runtime) -> list[str]:
    return [_body(m) for m in _messages(runtime)]


def _subjects(runtime: Runtime) -> list[str]:
    return [str(m["Subject"]) for m in _messages(runtime)]


def _last_code(runtime: Runtime) -> str:
    match = re.search(r"code [^:]*: (\d{6})", _mails(runtime)[-1])
    assert match is not None, _mails(runtime)[-1]
    return match.group(1)


def _reset_link(runtime: Runtime) -> tuple[str, str]:
    """The last reset message's link without its fragment, and the token in the fragment."""
    body = next(b for b in reversed(_mails(runtime)) if "nouveau mot de passe" in b)
    match = LINK.search(body)
    assert match is not None, body
    return match.group(1), match.group(2)


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


def _login(
    client: TestClient, runtime: Runtime, email: str = EMAIL, password: str = PASSWORD
) -> str:
    """A full login with the emailed code; the CSRF token of the new session."""
    step = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert step.status_code == 200, step.text
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


def _me_with(client: TestClient, cookie: str) -> int:
    """The status of ``/me`` with this session cookie (200 signed in, 401 not); the client's
    own cookies are left as they are."""
    answer = client.get("/api/v1/auth/me", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    return answer.status_code


def _session_cookie(client: TestClient) -> str:
    value = client.cookies.get(SESSION_COOKIE)
    assert value
    return value


def _forget_session(client: TestClient) -> None:
    """Drop the session cookie only (the device cookie stays: same browser)."""
    client.cookies.delete(SESSION_COOKIE)


def _actions(runtime: Runtime) -> list[str]:
    with runtime.sessions() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.occurred_us)))


def _lock_the_only_account(runtime: Runtime) -> None:
    with transaction(runtime.sessions) as session:
        service = AccountService(
            session,
            tenant_id=get_organization(session).id,
            provider=runtime.key_provider,
            mailer=runtime.mailer,
            limiter=AllowEverything(),
            settings=runtime.settings,
            hasher=CHEAP_HASHER,
        )
        account = session.scalars(select(Account)).one()
        service.lock(account, reason_principal=Principal(PrincipalKind.SYSTEM, "system:tests"))


# --------------------------------------------------------------------------- reset over HTTP


def test_password_reset_by_emailed_link(client: TestClient, runtime: Runtime) -> None:
    _sign_up(client, runtime)
    _login(client, runtime)
    first = _session_cookie(client)
    _forget_session(client)
    _login(client, runtime)
    second = _session_cookie(client)
    assert _me_with(client, first) == _me_with(client, second) == 200

    answer = client.post("/api/v1/auth/password-reset", json={"email": EMAIL})
    assert answer.status_code == 202, answer.text
    message = _messages(runtime)[-1]
    assert message["Subject"] == "Choisir un nouveau mot de passe"
    body = _body(message)
    assert PHRASE in body, "the security phrase proves the message is genuine"
    page, token = _reset_link(runtime)
    assert page == f"{runtime.settings.public_url}/compte/mot-de-passe/nouveau"
    assert urlsplit(page).query == "", "the token travels in the fragment only"
    assert len(token) >= 64

    weak = client.post(
        "/api/v1/auth/password-reset/complete", json={"token": token, "password": "azertyuiop"}
    )
    assert weak.status_code == 422, "the policy applies"
    assert weak.json()["type"].endswith("password-rejected")
    done = client.post(
        "/api/v1/auth/password-reset/complete", json={"token": token, "password": NEW_PASSWORD}
    )
    assert done.status_code == 204, "a refused password leaves the link usable"

    assert _me_with(client, first) == 401, "every session is revoked"
    assert _me_with(client, second) == 401
    _forget_session(client)
    old = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert old.status_code == 401
    _login(client, runtime, password=NEW_PASSWORD)
    assert "Votre mot de passe a été changé" in _subjects(runtime)

    again = client.post(
        "/api/v1/auth/password-reset/complete", json={"token": token, "password": PASSWORD}
    )
    forged = client.post(
        "/api/v1/auth/password-reset/complete",
        json={"token": token[:33] + "A" * (len(token) - 33), "password": PASSWORD},
    )
    garbage = client.post(
        "/api/v1/auth/password-reset/complete",
        json={"token": "n'importe quoi", "password": PASSWORD},
    )
    for refused in (again, forged, garbage):
        assert refused.status_code == 401
        assert refused.json()["detail"] == RESET_LINK_INVALID, "one answer for every bad token"
    actions = _actions(runtime)
    for tag in (
        "account:password-reset:request",
        "account:password-reset:complete",
        "account:password-reset:failure",
    ):
        assert tag in actions


def test_a_reset_link_is_single_use_and_a_new_one_retires_the_old(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    client.post("/api/v1/auth/password-reset", json={"email": EMAIL})
    _, older = _reset_link(runtime)
    client.post("/api/v1/auth/password-reset", json={"email": EMAIL})
    _, newer = _reset_link(runtime)
    assert older != newer
    stale = client.post(
        "/api/v1/auth/password-reset/complete", json={"token": older, "password": NEW_PASSWORD}
    )
    assert stale.status_code == 401
    used = client.post(
        "/api/v1/auth/password-reset/complete", json={"token": newer, "password": NEW_PASSWORD}
    )
    assert used.status_code == 204
    twice = client.post(
        "/api/v1/auth/password-reset/complete", json={"token": newer, "password": PASSWORD}
    )
    assert twice.status_code == 401
    _login(client, runtime, password=NEW_PASSWORD)


def test_a_reset_request_answers_the_same_for_an_unknown_address(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    before = len(_messages(runtime))
    timings: dict[str, list[float]] = {"known": [], "unknown": []}
    answers: dict[str, tuple[int, object]] = {}
    for _ in range(3):
        for label, email in (("known", EMAIL), ("unknown", "personne@example.org")):
            start = time.perf_counter()
            answer = client.post("/api/v1/auth/password-reset", json={"email": email})
            timings[label].append(time.perf_counter() - start)
            answers[label] = (answer.status_code, answer.json())
    assert answers["known"] == answers["unknown"]
    assert answers["known"][0] == 202
    recipients = [str(m["To"]) for m in _messages(runtime)[before:]]
    assert recipients == [EMAIL] * 3, "nothing is sent to an address without an account"
    assert min(timings["known"] + timings["unknown"]) >= routes.RESET_ANSWER_SECONDS
    known, unknown = sorted(timings["known"])[1], sorted(timings["unknown"])[1]
    assert 0.8 < known / unknown < 1.25, timings
    bad = client.post("/api/v1/auth/password-reset", json={"email": "pas une adresse"})
    assert bad.status_code == 422, "malformed input is told as such, known or not"


def test_reset_requests_are_throttled_per_address_and_per_client(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "RESET_ANSWER_SECONDS", 0.0)
    statuses = [
        client.post("/api/v1/auth/password-reset", json={"email": "x@example.org"}).status_code
        for _ in range(6)
    ]
    assert statuses == [202] * 5 + [429], "5 an hour for one address"
    statuses = [
        client.post("/api/v1/auth/password-reset", json={"email": f"p{n}@example.org"}).status_code
        for n in range(16)
    ]
    assert statuses == [202] * 14 + [429] * 2, "20 an hour from one client"
    assert "account:password-reset:throttled" in _actions(runtime)


def test_a_reset_unlocks_a_locked_account(client: TestClient, runtime: Runtime) -> None:
    _sign_up(client, runtime)
    _login(client, runtime)
    signed_in = _session_cookie(client)
    assert _me_with(client, signed_in) == 200
    _lock_the_only_account(runtime)
    assert "Votre compte est verrouillé" in _subjects(runtime)
    assert _me_with(client, signed_in) == 401, "locking revokes the sessions"
    _forget_session(client)
    right = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    wrong = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": "pas le bon"})
    assert (right.status_code, right.json()) == (wrong.status_code, wrong.json())
    assert right.status_code == 401, "a locked account answers like a wrong password"

    client.post("/api/v1/auth/password-reset", json={"email": EMAIL})
    assert "déverrouillé" in _mails(runtime)[-1]
    _, token = _reset_link(runtime)
    done = client.post(
        "/api/v1/auth/password-reset/complete", json={"token": token, "password": NEW_PASSWORD}
    )
    assert done.status_code == 204
    with runtime.sessions() as session:
        account = session.scalars(select(Account)).one()
    assert account.status == AccountStatus.ACTIVE.value
    assert account.locked_at is None
    assert account.failed_logins == 0
    _login(client, runtime, password=NEW_PASSWORD)
    assert "account:status:unlock" in _actions(runtime)


# --------------------------------------------------------------------------- change over HTTP


def test_password_change_revokes_the_other_sessions_and_renews_this_one(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    _login(client, runtime)
    other = _session_cookie(client)
    _forget_session(client)
    csrf = _login(client, runtime)
    current = _session_cookie(client)
    assert _me_with(client, other) == _me_with(client, current) == 200

    change = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert client.post("/api/v1/auth/password", json=change).status_code == 403, "CSRF"
    wrong = client.post(
        "/api/v1/auth/password",
        json={"current_password": "pas le bon", "new_password": NEW_PASSWORD},
        headers={"X-CSRF-Token": csrf},
    )
    assert wrong.status_code == 403
    assert wrong.json()["type"].endswith("wrong-password")
    same = client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": PASSWORD},
        headers={"X-CSRF-Token": csrf},
    )
    assert same.status_code == 422
    weak = client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "camille.martin 2024"},
        headers={"X-CSRF-Token": csrf},
    )
    assert weak.status_code == 422, "the policy applies (the address is context)"

    done = client.post("/api/v1/auth/password", json=change, headers={"X-CSRF-Token": csrf})
    assert done.status_code == 200, done.text
    renewed = _session_cookie(client)
    assert renewed != current, "a new token at a change of privilege"
    assert done.json()["csrf_token"] != csrf
    assert client.get("/api/v1/auth/me").status_code == 200, "still signed in here"
    assert _me_with(client, current) == 401, "the old token of this session is dead"
    assert _me_with(client, other) == 401, "the other sessions are revoked"
    assert _me_with(client, renewed) == 200
    assert _messages(runtime)[-1]["Subject"] == "Votre mot de passe a été changé"
    client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": done.json()["csrf_token"]})
    _forget_session(client)
    assert (
        client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD}).status_code
        == 401
    )
    _login(client, runtime, password=NEW_PASSWORD)
    assert "account:password:change" in _actions(runtime)
    assert "account:password-change:failure" in _actions(runtime)


# --------------------------------------------------------------------------- new devices


def test_a_login_from_a_new_device_is_told_once_per_device(
    client: TestClient, runtime: Runtime
) -> None:
    _sign_up(client, runtime)
    step = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    csrf = step.json()["csrf_token"]
    client.post("/api/v1/auth/login/email-code", headers={"X-CSRF-Token": csrf})
    done = client.post(
        "/api/v1/auth/login/second-factor",
        json={"method": "email", "code": _last_code(runtime)},
        headers={"X-CSRF-Token": csrf},
    )
    assert done.status_code == 200
    cookie = next(
        value
        for value in done.headers.get_list("set-cookie")
        if value.startswith(f"{DEVICE_COOKIE}=")
    )
    for attribute in ("Secure", "HttpOnly", "SameSite=strict", "Path=/", "Max-Age="):
        assert attribute.lower() in cookie.lower()
    assert "domain" not in cookie.lower()

    def notices() -> list[str]:
        return [
            _body(m)
            for m in _messages(runtime)
            if m["Subject"] == "Nouvelle connexion à votre compte"
        ]

    assert len(notices()) == 1
    notice = notices()[0]
    assert re.search(r"le \d{1,2}(er)? \w+ \d{4} à \d{1,2} h \d{2} \(heure de Paris\)", notice)
    assert "testclient" not in notice, "no address of the device"
    assert PHRASE in notice
    device = client.cookies.get(DEVICE_COOKIE)

    _forget_session(client)
    _login(client, runtime)
    assert len(notices()) == 1, "a known device is not announced again"
    assert client.cookies.get(DEVICE_COOKIE) == device, "the device keeps its cookie"

    client.cookies.delete(DEVICE_COOKIE)
    _forget_session(client)
    _login(client, runtime)
    assert len(notices()) == 2, "another browser is a new device"

    _sign_up(client, runtime, "dominique.petit@example.org")
    _forget_session(client)
    _login(client, runtime, "dominique.petit@example.org")
    _forget_session(client)
    _login(client, runtime, "dominique.petit@example.org")
    assert len(notices()) == 3, "the same browser is new to another account, once"
    with runtime.sessions() as session:
        hashes = list(session.scalars(select(KnownDevice.device_hash)))
    assert len(hashes) == len(set(hashes)) == 3, "one browser, two accounts: unlinkable rows"
    assert _actions(runtime).count("account:device:new") == 3


# --------------------------------------------------------------------------- at rest


def test_no_reset_or_device_token_in_clear_at_rest(client: TestClient, runtime: Runtime) -> None:
    _sign_up(client, runtime)
    _login(client, runtime)
    client.post("/api/v1/auth/password-reset", json={"email": EMAIL})
    _, token = _reset_link(runtime)
    device = client.cookies.get(DEVICE_COOKIE) or ""
    assert device
    with runtime.sessions() as session:
        dump = "\n".join(
            repr(tuple(row))
            for table in (
                "accounts",
                "account_sessions",
                "one_time_codes",
                "known_devices",
                "audit_events",
            )
            for row in session.execute(text(f"SELECT * FROM {table}"))
        ).encode()
    verifier = token.partition(".")[2]
    assert leaked(dump, [token, verifier, device, EMAIL, PHRASE]) == []


# --------------------------------------------------------------------------- service level


def test_a_reset_link_expires_after_15_minutes(services: Services) -> None:
    services.sign_up()
    with services.unit() as service:
        service.request_password_reset(EMAIL, client_id=CLIENT)
    _, token = _reset_link(services.runtime)
    services.clock.advance(minutes=15)
    failure = services.attempt(
        lambda s: s.complete_password_reset(token, Secret(NEW_PASSWORD), client_id=CLIENT)
    )
    assert failure is not None
    assert str(failure) == RESET_LINK_INVALID

    with services.unit() as service:
        service.request_password_reset(EMAIL, client_id=CLIENT)
    _, token = _reset_link(services.runtime)
    services.clock.advance(minutes=14, seconds=59)
    assert (
        services.attempt(
            lambda s: s.complete_password_reset(token, Secret(NEW_PASSWORD), client_id=CLIENT)
        )
        is None
    )
    account = services.account()
    assert CHEAP_HASHER.verify(account.password_hash, Secret(NEW_PASSWORD))


def _wrong_login(service: AccountService) -> None:
    service.login(EMAIL, Secret("pas le bon mot de passe"), client_id=CLIENT, client_hash=None)


def test_lockout_after_100_consecutive_failures(services: Services) -> None:
    services.sign_up()
    for _ in range(LOCKOUT_AFTER_FAILURES - 1):
        assert services.attempt(_wrong_login) is not None
    with services.unit() as service:
        pending = service.login(EMAIL, Secret(PASSWORD), client_id=CLIENT, client_hash=None)
    assert services.account().failed_logins == 0, "a success ends the run of failures"
    for _ in range(LOCKOUT_AFTER_FAILURES - 1):
        services.attempt(_wrong_login)
    account = services.account()
    assert account.status == AccountStatus.ACTIVE.value
    assert account.failed_logins == LOCKOUT_AFTER_FAILURES - 1
    wrong = services.attempt(_wrong_login)
    account = services.account()
    assert account.status == AccountStatus.LOCKED.value
    assert account.locked_at is not None
    assert _messages(services.runtime)[-1]["Subject"] == "Votre compte est verrouillé"
    with services.runtime.sessions() as session:
        live = session.scalars(
            select(AccountSession).where(AccountSession.revoked_at.is_(None))
        ).all()
    assert live == [], "locking revokes every session"
    with services.unit() as service:
        assert service.pending(pending.token.reveal()) is None

    right = services.attempt(
        lambda s: s.login(EMAIL, Secret(PASSWORD), client_id=CLIENT, client_hash=None)
    )
    assert right is not None
    assert wrong is not None
    assert (type(right), str(right)) == (type(wrong), str(wrong))
    assert "account:status:lock" in _actions(services.runtime)


def _account(services: Services, account_id: uuid.UUID) -> Account:
    with services.runtime.sessions() as session:
        return session.get_one(Account, account_id)


def test_an_organization_admin_unlocks_an_account(services: Services) -> None:
    account = services.sign_up()
    with services.unit() as service:
        service.lock(
            services.session.get_one(Account, account.id),
            reason_principal=Principal(PrincipalKind.SYSTEM, "system:tests"),
        )
    with services.unit() as service:
        admin_account = service.provision(
            "admin@example.org",
            Secret(PASSWORD),
            kind=AccountKind.STAFF,
            security_phrase=None,
            by=Principal(PrincipalKind.SYSTEM, "system:tests"),
            role="organization_admin",
        )
    admin = Principal(PrincipalKind.STAFF, str(admin_account.id), role="organization_admin")
    for intruder in (
        Principal(PrincipalKind.PATIENT, str(account.id)),
        Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="receptionist"),
        Principal(PrincipalKind.ANONYMOUS, "anonymous"),
        # A role claimed by a principal whose account does not have it (or does not exist).
        Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="organization_admin"),
        Principal(PrincipalKind.STAFF, str(account.id), role="organization_admin"),
    ):
        with services.unit() as service, pytest.raises(ForbiddenError):
            service.unlock(services.session.get_one(Account, account.id), intruder)
    assert _account(services, account.id).status == AccountStatus.LOCKED.value

    with services.unit() as service:
        assert service.unlock(services.session.get_one(Account, account.id), admin) is True
    unlocked = _account(services, account.id)
    assert unlocked.status == AccountStatus.ACTIVE.value
    assert unlocked.failed_logins == 0
    assert _messages(services.runtime)[-1]["Subject"] == "Votre compte est déverrouillé"
    assert {rule for rule, _ in services.limiter.resets} == {
        "login:account:minute",
        "login:account:hour",
    }
    with services.unit() as service:
        service.login(EMAIL, Secret(PASSWORD), client_id=CLIENT, client_hash=None)
        assert service.unlock(services.session.get_one(Account, account.id), admin) is False
    with services.runtime.sessions() as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "account:status:unlock")
        ).one()
    assert (event.actor_kind, event.actor_role, event.target_id) == (
        "staff",
        "organization_admin",
        account.id,
    )
