"""WebAuthn passkeys: registration and second-factor login verified by py_webauthn against a
software authenticator (EC P-256, "none" attestation), on both database backends; at the
service level where challenges, clocks and counts must be forced, and over HTTP (API and
pages) for the wiring, CSRF and answers."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import select

from helpers import CHEAP_HASHER, leaked, sqlite_files
from labvault.accounts.models import Account, AccountKind
from labvault.accounts.services import AccountService, AuthError, OpenedSession
from labvault.accounts.sessions import SessionPolicy
from labvault.accounts.webauthn import (
    CHALLENGE_TTL,
    PasskeyError,
    RelyingParty,
    WebAuthnCredential,
    relying_party,
)
from labvault.app import create_app
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.otp import totp_code
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail.file import FileMailer
from labvault.core.ratelimit import RateDecision, RateRule
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from passkey_authenticator import SoftAuthenticator, SoftPasskey, b64url, unb64url

ORIGIN = "https://labo.example"
EMAIL = "camille.martin@example.org"
PASSWORD = "une phrase de passe assez longue"
LABEL = "Téléphone de Camille"
CLIENT = "c" * 32
SESSION_COOKIE = "__Host-labvault-session"
SYSTEM = Principal(PrincipalKind.SYSTEM, "system:test")


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
def settings(tmp_path: Path, database_url: str) -> Settings:
    """The shared settings, served at an https origin (a valid relying party)."""
    settings = Settings(data_dir=tmp_path / "var", database_url=database_url, public_url=ORIGIN)
    FileKeyProvider.create(settings.key_file)
    return settings


class AllowEverything:
    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return RateDecision(allowed=True, retry_after=0.0, remaining=rule.amount)

    def test(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return self.hit(rule, *identifiers)

    def hit_or_deny(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return self.hit(rule, *identifiers)

    def reset(self, rule: RateRule, *identifiers: str) -> None:
        pass

    def close(self) -> None:
        pass


class MovableClock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now


class Lab:
    """One tenant, one account, and AccountServices built per transaction like the routes."""

    def __init__(self, runtime: Runtime, *, kind: AccountKind, role: str | None) -> None:
        self.runtime = runtime
        self.clock = MovableClock()
        self.soft = SoftAuthenticator(ORIGIN)
        with transaction(runtime.sessions) as session:
            self.tenant_id = create_organization(session, runtime.key_provider, "Labo Clés").id
        with self.unit() as service:
            self.account_id = service.provision(
                EMAIL, Secret(PASSWORD), kind=kind, security_phrase=None, by=SYSTEM, role=role
            ).id
        self.kind = kind

    @contextmanager
    def unit(self) -> Iterator[AccountService]:
        with transaction(self.runtime.sessions) as session:
            self.session = session
            yield AccountService(
                session,
                tenant_id=self.tenant_id,
                provider=self.runtime.key_provider,
                mailer=self.runtime.mailer,
                limiter=AllowEverything(),
                settings=self.runtime.settings,
                hasher=CHEAP_HASHER,
                clock=self.clock,
            )

    def account(self) -> Account:
        return self.session.get_one(Account, self.account_id)

    def signed_in(self) -> uuid.UUID:
        """A fully signed-in session (as after an email code): its id."""
        with self.unit() as service:
            _, record = service.sessions.create(
                tenant_id=self.tenant_id,
                account_id=self.account_id,
                policy=SessionPolicy.for_kind(self.runtime.settings, self.kind),
                client_hash=None,
                second_factor="email",
            )
            return record.id

    def register(self, label: str | None = LABEL) -> SoftPasskey:
        session_id = self.signed_in()
        with self.unit() as service:
            options = service.passkeys.registration_options(self.account(), session_id)
        credential, passkey = self.soft.create(options)
        with self.unit() as service:
            service.passkeys.register(self.account(), session_id, credential, label)
        return passkey

    def pending(self) -> tuple[str, tuple[str, ...]]:
        """A login past its password step: the token and the factors offered."""
        with self.unit() as service:
            step = service.login(
                EMAIL,
                Secret(PASSWORD),
                client_id=CLIENT,
                client_hash=None,
                kind=AccountKind(self.kind),
            )
            return step.token.reveal(), step.factors

    def authentication_options(self, token: str) -> str:
        with self.unit() as service:
            found = service.pending(token)
            assert found is not None
            return service.passkeys.authentication_options(self.account(), found[0].id)

    def second_factor(self, token: str, method: str, code: str) -> OpenedSession | AuthError:
        """The step's outcome; a failure still commits (it is counted and audited)."""
        with self.unit() as service:
            try:
                return service.second_factor(token, method, code)
            except AuthError as exc:
                return exc

    def stored(self) -> list[WebAuthnCredential]:
        with self.runtime.sessions() as session:
            return list(session.scalars(select(WebAuthnCredential)))

    def actions(self) -> list[tuple[str, str]]:
        with self.runtime.sessions() as session:
            rows = session.execute(
                select(AuditEvent.action, AuditEvent.outcome).order_by(AuditEvent.occurred_us)
            )
            return [(action, outcome) for action, outcome in rows]


@pytest.fixture
def lab(runtime: Runtime) -> Lab:
    return Lab(runtime, kind=AccountKind.PATIENT, role=None)


def _subjects(runtime: Runtime) -> list[str]:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    return [str(message["Subject"]) for message in mailer.messages()]


def _log_in_with(lab: Lab, passkey: SoftPasskey, **changes: object) -> OpenedSession | AuthError:
    token, _ = lab.pending()
    options = lab.authentication_options(token)
    assertion = lab.soft.get(options, passkey, **changes)  # type: ignore[arg-type]
    return lab.second_factor(token, "webauthn", json.dumps(assertion))


# --------------------------------------------------------------------------- relying party


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("https://labo.example", RelyingParty("labo.example", "https://labo.example")),
        ("https://Labo.Example:443/app/", RelyingParty("labo.example", "https://labo.example")),
        ("https://labo.example:8443", RelyingParty("labo.example", "https://labo.example:8443")),
        ("http://localhost:8123", RelyingParty("localhost", "http://localhost:8123")),
        (
            "http://labvault.localhost",
            RelyingParty("labvault.localhost", "http://labvault.localhost"),
        ),
        ("http://127.0.0.1:8000", None),  # browsers: "This is an invalid domain"
        ("https://[::1]:8443", None),
        ("http://labo.example", None),  # not a secure context
        ("ftp://labo.example", None),
        ("https://labo.example:99999", None),
    ],
)
def test_the_relying_party_comes_from_the_public_url(
    public_url: str, expected: RelyingParty | None
) -> None:
    assert relying_party(public_url) == expected


# --------------------------------------------------------------------------- service


def test_register_a_passkey_then_complete_a_login_with_it(lab: Lab, runtime: Runtime) -> None:
    session_id = lab.signed_in()
    with lab.unit() as service:
        options = json.loads(service.passkeys.registration_options(lab.account(), session_id))
    assert options["rp"] == {"name": "labvault", "id": "labo.example"}
    assert unb64url(options["user"]["id"]) == lab.account_id.bytes
    assert "@" not in options["user"]["name"] + options["user"]["displayName"]
    assert len(unb64url(options["challenge"])) == 32
    assert options["authenticatorSelection"]["residentKey"] == "preferred"
    assert options["authenticatorSelection"]["userVerification"] == "preferred"
    assert options["attestation"] == "none"
    assert options["excludeCredentials"] == []

    credential, passkey = lab.soft.create(options)
    with lab.unit() as service:
        info = service.passkeys.register(lab.account(), session_id, credential, f"  {LABEL} ")
    assert info.label == LABEL
    assert info.transports == ("internal", "hybrid")
    (stored,) = lab.stored()
    assert bytes(stored.credential_id) == passkey.credential_id
    assert stored.sign_count == 0
    # The public key and the label are sealed under the account's key.
    assert passkey.cose_public_key() not in bytes(stored.public_key)
    assert LABEL.encode() not in bytes(stored.label)
    assert "Une clé d'accès a été ajoutée à votre compte" in _subjects(runtime)

    # The new passkey is excluded from the next registration, and offered first at login.
    with lab.unit() as service:
        again = json.loads(service.passkeys.registration_options(lab.account(), session_id))
    assert [item["id"] for item in again["excludeCredentials"]] == [b64url(passkey.credential_id)]
    token, factors = lab.pending()
    assert factors == ("webauthn", "email")
    options = json.loads(lab.authentication_options(token))
    assert options["rpId"] == "labo.example"
    assert options["userVerification"] == "preferred"
    assert options["allowCredentials"] == [
        {
            "id": b64url(passkey.credential_id),
            "type": "public-key",
            "transports": ["internal", "hybrid"],
        }
    ]
    opened = lab.second_factor(token, "webauthn", json.dumps(lab.soft.get(options, passkey)))
    assert isinstance(opened, OpenedSession)
    with lab.unit() as service:
        found = service.current(opened.token.reveal())
        assert found is not None
        assert found[0].second_factor == "webauthn"
    (stored,) = lab.stored()
    assert stored.sign_count == 1
    assert stored.last_used_at is not None
    actions = [action for action, _ in lab.actions()]
    assert "account:passkey:register" in actions
    assert actions.index("account:login:success") > actions.index("account:passkey:register")


@pytest.mark.parametrize("backend", ["sqlite"])  # a scan of the raw database files
def test_the_label_and_public_key_are_not_in_the_database_files(
    lab: Lab, database_url: str
) -> None:
    passkey = lab.register()
    lab.runtime.engine.dispose()
    blob = b"".join(path.read_bytes() for path in sqlite_files(database_url))
    assert leaked(blob, [LABEL]) == []
    assert passkey.cose_public_key() not in blob


def test_a_registration_challenge_serves_once(lab: Lab) -> None:
    session_id = lab.signed_in()
    with lab.unit() as service:
        options = service.passkeys.registration_options(lab.account(), session_id)
    credential, _ = lab.soft.create(options)
    other, _ = lab.soft.create(options)  # another authenticator, the same challenge
    with lab.unit() as service:
        service.passkeys.register(lab.account(), session_id, credential)
    for replay in (credential, other):
        with lab.unit() as service, pytest.raises(PasskeyError):
            service.passkeys.register(lab.account(), session_id, replay)
    assert len(lab.stored()) == 1
    assert lab.actions().count(("account:passkey:failure", "failure")) == 2


def test_a_registration_challenge_is_bound_to_its_session_and_expires(lab: Lab) -> None:
    session_id, other_session = lab.signed_in(), lab.signed_in()
    with lab.unit() as service:
        options = service.passkeys.registration_options(lab.account(), session_id)
    credential, _ = lab.soft.create(options)
    with lab.unit() as service, pytest.raises(PasskeyError):
        service.passkeys.register(lab.account(), other_session, credential)

    with lab.unit() as service:
        options = service.passkeys.registration_options(lab.account(), session_id)
    credential, _ = lab.soft.create(options)
    lab.clock.now += CHALLENGE_TTL + dt.timedelta(seconds=1)
    with lab.unit() as service, pytest.raises(PasskeyError):
        service.passkeys.register(lab.account(), session_id, credential)
    assert lab.stored() == []


@pytest.mark.parametrize(
    "change",
    [
        {"origin": "https://labo.example.evil.test"},  # a phishing site relaying the options
        {"origin": "http://labo.example"},
        {"rp_id": "evil.test"},
    ],
)
def test_a_registration_for_another_origin_or_rp_is_refused(
    lab: Lab, change: dict[str, str]
) -> None:
    session_id = lab.signed_in()
    with lab.unit() as service:
        options = service.passkeys.registration_options(lab.account(), session_id)
    credential, _ = lab.soft.create(options, **change)  # type: ignore[arg-type]
    with lab.unit() as service, pytest.raises(PasskeyError, match="n'a pas pu être enregistrée"):
        service.passkeys.register(lab.account(), session_id, credential)
    assert lab.stored() == []
    assert lab.actions()[-1] == ("account:passkey:failure", "failure")


@pytest.mark.parametrize(
    "change",
    [{"origin": "https://labo.example.evil.test"}, {"rp_id": "evil.test"}],
)
def test_an_assertion_for_another_origin_or_rp_is_refused(lab: Lab, change: dict[str, str]) -> None:
    passkey = lab.register()
    outcome = _log_in_with(lab, passkey, **change)
    assert isinstance(outcome, AuthError)
    assert lab.actions()[-1] == ("account:second-factor:failure", "failure")
    (stored,) = lab.stored()
    assert stored.sign_count == 0
    assert stored.last_used_at is None


def test_an_authentication_challenge_serves_once_even_after_a_failure(lab: Lab) -> None:
    passkey = lab.register()
    token, _ = lab.pending()
    options = lab.authentication_options(token)
    assertion = lab.soft.get(options, passkey)
    assert isinstance(lab.second_factor(token, "webauthn", json.dumps(assertion)), OpenedSession)

    token, _ = lab.pending()  # a new login: the old answer is worth nothing there
    lab.authentication_options(token)
    assert isinstance(lab.second_factor(token, "webauthn", json.dumps(assertion)), AuthError)

    token, _ = lab.pending()
    options = lab.authentication_options(token)
    wrong = lab.soft.get(options, passkey, origin="https://evil.test")
    assert isinstance(lab.second_factor(token, "webauthn", json.dumps(wrong)), AuthError)
    right = lab.soft.get(options, passkey)  # the same challenge, used up by the failure
    assert isinstance(lab.second_factor(token, "webauthn", json.dumps(right)), AuthError)


def test_an_authentication_challenge_is_bound_to_its_login_and_expires(lab: Lab) -> None:
    passkey = lab.register()
    first, _ = lab.pending()
    second, _ = lab.pending()
    assertion = lab.soft.get(lab.authentication_options(first), passkey)
    assert isinstance(lab.second_factor(second, "webauthn", json.dumps(assertion)), AuthError)

    token, _ = lab.pending()
    assertion = lab.soft.get(lab.authentication_options(token), passkey)
    lab.clock.now += CHALLENGE_TTL + dt.timedelta(seconds=1)
    assert isinstance(lab.second_factor(token, "webauthn", json.dumps(assertion)), AuthError)


def test_a_sign_count_that_does_not_grow_is_refused_as_a_clone(lab: Lab) -> None:
    passkey = lab.register()
    assert isinstance(_log_in_with(lab, passkey, sign_count=5), OpenedSession)
    for replayed in (5, 3):
        assert isinstance(_log_in_with(lab, passkey, sign_count=replayed), AuthError)
        assert ("account:passkey:clone", "denied") in lab.actions()[-3:]
    (stored,) = lab.stored()
    assert stored.sign_count == 5
    assert lab.actions().count(("account:passkey:clone", "denied")) == 2
    assert isinstance(_log_in_with(lab, passkey, sign_count=6), OpenedSession)


def test_an_authenticator_without_a_counter_keeps_working(lab: Lab) -> None:
    """Synced passkeys always say 0: no clone detection is possible, none is claimed."""
    passkey = lab.register()
    for _ in range(2):
        assert isinstance(_log_in_with(lab, passkey, sign_count=0), OpenedSession)
    assert ("account:passkey:clone", "denied") not in lab.actions()


def test_another_accounts_passkey_or_a_malformed_answer_is_refused(lab: Lab) -> None:
    passkey = lab.register()
    token, _ = lab.pending()
    options = lab.authentication_options(token)
    foreign = lab.soft.get(options, passkey)
    foreign["response"]["userHandle"] = b64url(uuid.uuid4().bytes)
    for presented in (
        json.dumps(foreign),
        "not json",
        "[]",
        "{}",
        json.dumps({"rawId": "!!", "response": {"clientDataJSON": "%%"}}),
        json.dumps(lab.soft.get(options, passkey) | {"type": "other"}),
    ):
        assert isinstance(lab.second_factor(token, "webauthn", presented), AuthError)
    session_id = lab.signed_in()
    with lab.unit() as service, pytest.raises(PasskeyError):
        service.passkeys.register(lab.account(), session_id, {"response": {"clientDataJSON": 3}})


def test_roles_that_require_a_passkey_use_nothing_else_once_they_have_one(
    runtime: Runtime,
) -> None:
    lab = Lab(runtime, kind=AccountKind.STAFF, role="organization_admin")
    with lab.unit() as service:
        secret_text = service.begin_totp(lab.account()).secret_text
    secret = Secret(base64.b32decode(secret_text + "=" * (-len(secret_text) % 8)))
    with lab.unit() as service:
        assert service.confirm_totp(lab.account(), totp_code(secret, lab.clock.now.timestamp()))
        assert service.passkeys.enrolment_required(lab.account())
    token, factors = lab.pending()
    assert factors == ("totp",)

    passkey = lab.register()
    with lab.unit() as service:
        assert not service.passkeys.enrolment_required(lab.account())
    token, factors = lab.pending()
    assert factors == ("webauthn",)
    later = lab.clock.now.timestamp() + 60
    refused = lab.second_factor(token, "totp", totp_code(secret, later))
    assert isinstance(refused, AuthError)
    assert isinstance(_log_in_with(lab, passkey), OpenedSession)

    (stored,) = lab.stored()
    with lab.unit() as service, pytest.raises(PasskeyError, match="Votre rôle exige"):
        service.passkeys.delete(lab.account(), stored.id)
    assert len(lab.stored()) == 1


def test_remove_a_passkey(lab: Lab, runtime: Runtime) -> None:
    lab.register()
    lab.clock.now += dt.timedelta(minutes=1)
    lab.register(label=None)
    first, second = sorted(lab.stored(), key=lambda row: row.created_at)
    with lab.unit() as service:
        listed = service.passkeys.listing(lab.account())
        assert listed[0].label == LABEL
        assert listed[1].label.startswith("Clé d'accès ajoutée le ")
        assert not service.passkeys.delete(lab.account(), uuid.uuid4())
        assert service.passkeys.delete(lab.account(), first.id)
    assert [row.id for row in lab.stored()] == [second.id]
    assert ("account:passkey:delete", "success") in lab.actions()
    assert _subjects(runtime)[-1] == "Une clé d'accès a été retirée de votre compte"
    _, factors = lab.pending()
    assert factors[0] == "webauthn"


def test_labels_are_checked(lab: Lab) -> None:
    session_id = lab.signed_in()
    for label, message in (("x" * 61, "au plus 60"), ("a\x00b", "non autorisés")):
        with lab.unit() as service:
            options = service.passkeys.registration_options(lab.account(), session_id)
        credential, _ = lab.soft.create(options)
        with lab.unit() as service, pytest.raises(PasskeyError, match=message):
            service.passkeys.register(lab.account(), session_id, credential, label)
    assert lab.stored() == []


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Labo HTTP")
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


def _last_code(runtime: Runtime) -> str:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    body = mailer.messages()[-1].get_body(("plain",))
    assert body is not None
    match = re.search(r"code [^:]*: (\d{6})", body.get_content())  # type: ignore[attr-defined]
    assert match is not None
    return match.group(1)


def _password_step(client: TestClient) -> dict[str, object]:
    step = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert step.status_code == 200, step.text
    return dict(step.json())


def _sign_in_by_email(client: TestClient, runtime: Runtime) -> str:
    csrf = str(_password_step(client)["csrf_token"])
    headers = {"X-CSRF-Token": csrf}
    assert client.post("/api/v1/auth/login/email-code", headers=headers).status_code == 202
    done = client.post(
        "/api/v1/auth/login/second-factor",
        json={"method": "email", "code": _last_code(runtime)},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    return str(done.json()["csrf_token"])


def test_the_api_registers_lists_uses_and_removes_a_passkey(
    client: TestClient, runtime: Runtime
) -> None:
    soft = SoftAuthenticator(ORIGIN)
    csrf = _sign_in_by_email(client, runtime)
    headers = {"X-CSRF-Token": csrf}
    base = "/api/v1/auth/webauthn"
    assert client.post(f"{base}/registration/options").status_code == 403  # no CSRF token
    options = client.post(f"{base}/registration/options", headers=headers)
    assert options.status_code == 200
    assert options.headers["content-type"] == "application/json"
    assert options.headers["cache-control"] == "no-store"
    credential, passkey = soft.create(options.json())
    created = client.post(
        f"{base}/registration", json={"credential": credential, "label": LABEL}, headers=headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["label"] == LABEL
    listed = client.get(f"{base}/credentials")
    assert [item["id"] for item in listed.json()] == [created.json()["id"]]
    replayed = client.post(f"{base}/registration", json={"credential": credential}, headers=headers)
    assert replayed.status_code == 422
    assert replayed.json()["detail"] == "La clé d'accès n'a pas pu être enregistrée. Réessayez."
    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204

    step = _password_step(client)
    assert step["second_factor"] == ["webauthn", "email"]
    headers = {"X-CSRF-Token": str(step["csrf_token"])}
    assert client.get(f"{base}/credentials").status_code == 401  # not signed in yet
    assert client.post(f"{base}/authentication/options").status_code == 403
    options = client.post(f"{base}/authentication/options", headers=headers)
    assert options.status_code == 200, options.text
    assertion = soft.get(options.json(), passkey)
    malformed = client.post(
        f"{base}/authentication", json={"credential": {"id": "x"}}, headers=headers
    )
    assert malformed.status_code == 422
    done = client.post(f"{base}/authentication", json={"credential": assertion}, headers=headers)
    assert done.status_code == 200, done.text
    assert client.cookies.get(SESSION_COOKIE)
    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200
    headers = {"X-CSRF-Token": me.json()["csrf_token"]}
    sessions = client.get("/api/v1/auth/sessions").json()
    assert [s["second_factor"] for s in sessions if s["current"]] == ["webauthn"]

    unknown = client.delete(f"{base}/credentials/{uuid.uuid4()}", headers=headers)
    assert unknown.status_code == 404
    removed = client.delete(f"{base}/credentials/{created.json()['id']}", headers=headers)
    assert removed.status_code == 204
    assert client.get(f"{base}/credentials").json() == []


def test_the_api_says_when_passkeys_are_unavailable(settings: Settings) -> None:
    on_an_address = Settings(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        public_url="http://127.0.0.1:8000",
    )
    app = create_app(on_an_address)
    with TestClient(app, base_url="https://testserver") as test_client:
        for path in ("registration/options", "authentication/options"):
            answer = test_client.post(f"/api/v1/auth/webauthn/{path}")
            assert answer.status_code == 409
            assert answer.json()["type"].endswith("/passkeys-unavailable")


def test_the_security_page_lists_passkeys_and_removes_one_without_javascript(
    client: TestClient, runtime: Runtime
) -> None:
    csrf = _sign_in_by_email(client, runtime)
    page = client.get("/compte/securite")
    assert "Vous n'avez aucune clé d'accès." in page.text
    assert '<script src="/static/webauthn.js" defer></script>' in page.text
    assert re.search(r'<form class="form" id="cle-acces-ajout"[^>]* hidden novalidate>', page.text)
    form_csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert form_csrf is not None
    # Sent without the script, the add form says what is missing.
    without_script = client.post(
        "/compte/securite/cles-d-acces", data={"csrf_token": form_csrf.group(1)}
    )
    assert without_script.status_code == 422
    assert "doit exécuter JavaScript" in without_script.text

    headers = {"X-CSRF-Token": csrf}
    options = client.post("/api/v1/auth/webauthn/registration/options", headers=headers)
    credential, _ = SoftAuthenticator(ORIGIN).create(options.json())
    created = client.post(
        "/api/v1/auth/webauthn/registration",
        json={"credential": credential, "label": "<b>Clé</b>"},
        headers=headers,
    )
    assert created.status_code == 201
    page = client.get("/compte/securite?info=cle-acces-ajoutee")
    assert "est enregistrée : elle vous sera proposée" in page.text
    assert "&lt;b&gt;Clé&lt;/b&gt;" in page.text  # escaped
    removed = client.post(
        "/compte/securite/cles-d-acces/suppression",
        data={"passkey_id": created.json()["id"], "csrf_token": form_csrf.group(1)},
        follow_redirects=False,
    )
    assert removed.status_code == 303
    assert removed.headers["location"] == "/compte/securite?info=cle-acces-retiree"
    again = client.post(
        "/compte/securite/cles-d-acces/suppression",
        data={"passkey_id": created.json()["id"], "csrf_token": form_csrf.group(1)},
    )
    assert again.status_code == 404


def test_the_second_factor_page_offers_the_passkey(client: TestClient, runtime: Runtime) -> None:
    csrf = _sign_in_by_email(client, runtime)
    headers = {"X-CSRF-Token": csrf}
    options = client.post("/api/v1/auth/webauthn/registration/options", headers=headers)
    credential, _ = SoftAuthenticator(ORIGIN).create(options.json())
    client.post(
        "/api/v1/auth/webauthn/registration", json={"credential": credential}, headers=headers
    )
    client.post("/api/v1/auth/logout", headers=headers)
    _password_step(client)
    page = client.get("/compte/second-facteur")
    assert page.status_code == 200
    text = page.text
    assert text.index("Utiliser une clé d'accès") < text.index("Recevoir un code par e-mail")
    assert '<script src="/static/webauthn.js" defer></script>' in text
    assert re.search(r'<form class="form" id="cle-acces-connexion"[^>]* hidden>', text)
    without_script = client.post("/compte/second-facteur/cle-d-acces")
    assert without_script.status_code == 422
    assert "doit exécuter JavaScript" in without_script.text
    script = client.get("/static/webauthn.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
