"""Staff accounts: invitation by email, acceptance, the mandatory authenticator enrolment,
staff login and sessions, over HTTP and at the service level (where time must be moved),
against a real database, key file and file mailer; and ``labvault staff invite``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from helpers import CHEAP_HASHER, leaked, pg_dump, sqlite_files
from labvault.accounts.invitations import (
    INVITATION_INVALID,
    INVITATION_PURPOSE,
    INVITATION_TTL,
    PASSKEY_ROLES,
    AlreadyInvitedError,
    StaffAccountService,
    principal_of,
    required_factors,
)
from labvault.accounts.models import (
    Account,
    AccountKind,
    AccountSession,
    AccountStatus,
    OneTimeCode,
)
from labvault.accounts.services import AuthError, ForbiddenError, InvalidInputError
from labvault.accounts.sessions import SessionPolicy
from labvault.app import create_app
from labvault.cli import CliError, app
from labvault.core.access.policies import default_policy
from labvault.core.access.principals import (
    ANONYMOUS,
    Principal,
    PrincipalKind,
    SystemPrincipal,
)
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.otp import totp_code
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail.file import FileMailer
from labvault.core.ratelimit import RateDecision, RateRule
from labvault.core.runtime import Runtime
from labvault.organizations.models import Site
from labvault.organizations.services import add_site, create_organization, get_organization
from labvault.staff.models import StaffMember, StaffRole, StaffSite
from passkey_authenticator import SoftAuthenticator, SoftPasskey

EMAIL = "helene.garnier@example.org"
FIRST_NAME = "Hélène"
LAST_NAME = "Garnier-Lefèvre"
PASSWORD = "une phrase de passe assez longue"
ORIGIN = "https://testserver"
PUBLIC_URL = "http://localhost:8000"
"""The default public URL: the passkeys' relying party (localhost) and origin."""
SESSION_COOKIE = "__Host-labvault-session"
CLIENT = "c" * 32
SYSTEM = SystemPrincipal("test:staff-invite")
LINK = re.compile(r"(\S+/compte/invitation)#(\S+)")
runner = CliRunner()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_LabvaultHandler":
            root.removeHandler(handler)


class AllowEverything:
    """A ``RateLimiter`` that never refuses."""

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

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


class Lab:
    """One organization with a site, and staff account services on it (test doubles for the
    clock and the rate limiter, a cheap password hasher)."""

    def __init__(self, runtime: Runtime, name: str = "Labo Staff") -> None:
        self.runtime = runtime
        self.clock = MovableClock()
        with transaction(runtime.sessions) as session:
            organization = create_organization(session, runtime.key_provider, name)
            site = add_site(
                session,
                organization,
                name="Centre",
                address_line="1 place de la Mairie",
                postal_code="69001",
                city="Lyon",
                opening_hours={},
                sampling_capacity_per_hour=4,
            )
            self.tenant_id = organization.id
            self.site_id = site.id

    @contextmanager
    def unit(self) -> Iterator[StaffAccountService]:
        with transaction(self.runtime.tenant_sessions(self.tenant_id)) as session:
            yield StaffAccountService(
                session,
                tenant_id=self.tenant_id,
                provider=self.runtime.key_provider,
                mailer=self.runtime.mailer,
                limiter=AllowEverything(),
                settings=self.runtime.settings,
                hasher=CHEAP_HASHER,
                clock=self.clock,
            )

    def attempt(self, action: Callable[[StaffAccountService], object]) -> Exception | None:
        """Run ``action``; an expected refusal is returned, and the transaction commits."""
        with self.unit() as service:
            try:
                action(service)
            except (AuthError, ForbiddenError, InvalidInputError) as exc:
                return exc
        return None

    def invite(
        self,
        email: str = EMAIL,
        role: StaffRole = StaffRole.BIOLOGIST,
        by: Principal = SYSTEM,
        first_name: str = FIRST_NAME,
    ) -> str:
        """Invite someone; the token of the link they were emailed."""
        with self.unit() as service:
            service.invite_staff(by, email, first_name, LAST_NAME, role, [self.site_id])
        return invitation_token(self.runtime, email)

    def active(self, email: str, role: StaffRole) -> Account:
        """An invited, then accepted account (no factor yet)."""
        token = self.invite(email, role)
        with self.unit() as service:
            service.accept_invitation(token, Secret(PASSWORD), client_id=CLIENT, client_hash=None)
        return self.account(email)

    def account(self, email: str) -> Account:
        with self.unit() as service:
            index = service._email_indexes(email, AccountKind.STAFF)
            found = service._find(index, AccountKind.STAFF)
            assert found is not None
            return found


@pytest.fixture
def lab(runtime: Runtime) -> Lab:
    return Lab(runtime)


@pytest.fixture
def client(runtime: Runtime, lab: Lab) -> Iterator[TestClient]:
    app_ = create_app(runtime.settings, runtime)
    with TestClient(app_, base_url=ORIGIN) as test_client:
        yield test_client


# --------------------------------------------------------------------------- helpers


def messages(runtime: Runtime) -> list[EmailMessage]:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    return mailer.messages()


def body(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


def invitation_token(runtime: Runtime, email: str = EMAIL) -> str:
    """The token in the fragment of the last invitation emailed to ``email``."""
    message = next(
        m for m in reversed(messages(runtime)) if m["To"] == email and LINK.search(body(m))
    )
    match = LINK.search(body(message))
    assert match is not None
    return match.group(2)


def last_code(runtime: Runtime) -> str:
    match = re.search(r"code [^:]*: (\d{6})", body(messages(runtime)[-1]))
    assert match is not None, body(messages(runtime)[-1])
    return match.group(1)


def secret_of(setup: dict[str, Any]) -> Secret[bytes]:
    text_secret = setup["secret"]
    return Secret(base64.b32decode(text_secret + "=" * (-len(text_secret) % 8)))


def csrf(token: str) -> dict[str, str]:
    return {"X-CSRF-Token": token}


def audit_events(runtime: Runtime, action: str) -> list[AuditEvent]:
    """Every lab's events: the audit log's scope reads across tenants."""
    with runtime.audit_sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def accept(client: TestClient, token: str, password: str = PASSWORD) -> Any:
    return client.post(
        "/api/v1/auth/invitation/accept", json={"token": token, "password": password}
    )


def enrol(client: TestClient, csrf_token: str, email_code: str | None = None) -> Secret[bytes]:
    """Enrol an authenticator from the pending session; its secret (the login completes)."""
    setup = client.post("/api/v1/auth/enrolment/totp", headers=csrf(csrf_token))
    assert setup.status_code == 200, setup.text
    secret = secret_of(setup.json())
    done = client.post(
        "/api/v1/auth/enrolment/totp/confirm",
        json={"code": totp_code(secret), "email_code": email_code},
        headers=csrf(csrf_token),
    )
    assert done.status_code == 200, done.text
    return secret


def enrol_passkey(
    client: TestClient, csrf_token: str, email_code: str | None = None
) -> SoftPasskey:
    """Enrol a passkey (a software authenticator at the default public URL) from the pending
    session of an organization admin or a security officer; the login completes."""
    options = client.post("/api/v1/auth/enrolment/passkey/options", headers=csrf(csrf_token))
    assert options.status_code == 200, options.text
    credential, passkey = SoftAuthenticator(PUBLIC_URL).create(options.text)
    done = client.post(
        "/api/v1/auth/enrolment/passkey",
        json={"credential": credential, "email_code": email_code},
        headers=csrf(csrf_token),
    )
    assert done.status_code == 200, done.text
    return passkey


# --------------------------------------------------------------------------- invitation


def test_an_invitation_seals_the_member_makes_a_pending_account_and_emails_a_link(
    lab: Lab, runtime: Runtime
) -> None:
    with lab.unit() as service:
        invitation = service.invite_staff(
            SYSTEM, EMAIL, FIRST_NAME, LAST_NAME, "biologist", [lab.site_id]
        )
    (message,) = messages(runtime)
    text_body = body(message)
    assert message["To"] == EMAIL
    assert message["Subject"] == "Invitation à créer votre compte professionnel"
    assert text_body.startswith(f"Bonjour {FIRST_NAME},\n")
    for personal in (LAST_NAME, "Garnier", "biolog", "Centre", EMAIL):
        assert personal not in text_body, personal
    link, token = LINK.search(text_body).groups()  # type: ignore[union-attr]
    assert link == "http://localhost:8000/compte/invitation"
    selector, _, verifier = token.partition(".")
    assert len(base64.urlsafe_b64decode(verifier + "=")) == 32, "256 random bits"

    with runtime.sessions() as session:
        account = session.get_one(Account, invitation.account_id)
        member = session.get_one(StaffMember, invitation.staff_id)
        record = session.get_one(OneTimeCode, uuid.UUID(hex=selector))
        sites = list(session.scalars(select(StaffSite.site_id)))
    assert (account.kind, account.status) == ("staff", AccountStatus.INVITED.value)
    assert (account.role, account.staff_id) == ("biologist", member.id)
    assert account.email_verified_at is None
    assert member.role == "biologist"
    assert b"Garnier" not in member.last_name
    assert sites == [lab.site_id]
    assert record.purpose == INVITATION_PURPOSE
    assert record.account_id == account.id
    assert record.code_hash == hashlib.sha256(token.encode()).digest()
    assert record.used_at is None
    assert record.expires_at - record.created_at == INVITATION_TTL == dt.timedelta(days=7)
    assert invitation.expires_at == record.expires_at

    (created,) = audit_events(runtime, "staff:invitation:create")
    assert (created.actor_id, created.outcome, created.target_id) == (
        "system:test:staff-invite",
        "success",
        account.id,
    )
    assert audit_events(runtime, "staff:record:create")
    # An invited account cannot log in, whatever the password.
    failure = lab.attempt(
        lambda s: s.staff_login(EMAIL, Secret(PASSWORD), client_id=CLIENT, client_hash=None)
    )
    assert isinstance(failure, AuthError)


def test_bad_invitations_are_refused_and_change_nothing(lab: Lab, runtime: Runtime) -> None:
    lab.invite()

    def invite(**changes: Any) -> Exception | None:
        arguments: dict[str, Any] = {
            "email": "autre@example.org",
            "first_name": "Paul",
            "last_name": "Martin",
            "role": StaffRole.SAMPLER,
            "site_ids": [lab.site_id],
            **changes,
        }
        return lab.attempt(lambda s: s.invite_staff(SYSTEM, **arguments))

    assert isinstance(invite(email=EMAIL), AlreadyInvitedError)
    assert isinstance(invite(email="pas une adresse"), InvalidInputError)
    assert isinstance(invite(first_name="  "), InvalidInputError)
    assert isinstance(invite(last_name="Martin\x00"), InvalidInputError)
    assert isinstance(invite(role="chief"), InvalidInputError)
    assert isinstance(invite(site_ids=[uuid.uuid4()]), InvalidInputError)
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StaffMember)) == 1
        assert session.scalar(select(func.count()).select_from(Account)) == 1
    assert len(messages(runtime)) == 1


def test_only_an_organization_admin_of_the_lab_or_the_system_may_invite(
    lab: Lab, runtime: Runtime
) -> None:
    admin = lab.active("admin@example.org", StaffRole.ORGANIZATION_ADMIN)
    receptionist = lab.active("accueil@example.org", StaffRole.RECEPTIONIST)
    officer = lab.active("rssi@example.org", StaffRole.SECURITY_OFFICER)
    other_lab = Lab(runtime, "Labo Voisin")

    def invite_by(by: Principal, on: Lab = lab) -> Exception | None:
        return on.attempt(
            lambda s: s.invite_staff(
                by, f"{uuid.uuid4().hex[:8]}@example.org", "Paul", "Martin", "sampler"
            )
        )

    refused: list[Principal] = [
        principal_of(receptionist),
        principal_of(officer),
        # A principal claiming a role its account does not have.
        Principal(PrincipalKind.STAFF, str(receptionist.id), role="organization_admin"),
        Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="organization_admin"),
        Principal(PrincipalKind.SYSTEM, "system:not-explicit"),
        Principal(PrincipalKind.PATIENT, str(uuid.uuid4())),
        ANONYMOUS,
    ]
    for by in refused:
        assert isinstance(invite_by(by), ForbiddenError), by
    # An admin of one lab is nobody in another.
    assert isinstance(invite_by(principal_of(admin), on=other_lab), ForbiddenError)
    denied = [e for e in audit_events(runtime, "staff:invitation:create") if e.outcome == "denied"]
    assert len(denied) == len(refused) + 1

    assert invite_by(principal_of(admin)) is None
    assert invite_by(SystemPrincipal("cli:staff-invite")) is None
    granted = [e for e in audit_events(runtime, "staff:invitation:create") if e.outcome != "denied"]
    assert {(e.actor_id, e.actor_role) for e in granted} >= {
        (str(admin.id), "organization_admin"),
        ("system:cli:staff-invite", None),
    }
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StaffMember)) == 3 + 2


def test_a_renewed_invitation_retires_the_previous_link(lab: Lab, runtime: Runtime) -> None:
    first = lab.invite()
    with lab.unit() as service:
        service.renew_invitation(SYSTEM, EMAIL)
    second = invitation_token(runtime)
    assert second != first
    assert body(messages(runtime)[-1]).startswith(f"Bonjour {FIRST_NAME},")
    failure = lab.attempt(
        lambda s: s.accept_invitation(first, Secret(PASSWORD), client_id=CLIENT, client_hash=None)
    )
    assert str(failure) == INVITATION_INVALID
    assert (
        lab.attempt(
            lambda s: s.accept_invitation(
                second, Secret(PASSWORD), client_id=CLIENT, client_hash=None
            )
        )
        is None
    )
    assert audit_events(runtime, "staff:invitation:renew")
    # Accepted: nothing left to renew.
    assert isinstance(lab.attempt(lambda s: s.renew_invitation(SYSTEM, EMAIL)), InvalidInputError)


def test_an_invitation_expires_after_7_days(lab: Lab) -> None:
    late = lab.invite("tard@example.org")
    in_time = lab.invite("a-temps@example.org")
    lab.clock.advance(days=6, hours=23, minutes=59)
    assert (
        lab.attempt(
            lambda s: s.accept_invitation(
                in_time, Secret(PASSWORD), client_id=CLIENT, client_hash=None
            )
        )
        is None
    )
    lab.clock.advance(minutes=1)
    failure = lab.attempt(
        lambda s: s.accept_invitation(late, Secret(PASSWORD), client_id=CLIENT, client_hash=None)
    )
    assert str(failure) == INVITATION_INVALID
    assert lab.account("tard@example.org").status == AccountStatus.INVITED.value


# --------------------------------------------------------------------------- acceptance


def test_acceptance_sets_the_password_and_opens_nothing_but_the_enrolment(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    token = lab.invite(role=StaffRole.BIOLOGIST)
    step = accept(client, token)
    assert step.status_code == 200, step.text
    assert step.json()["second_factor"] == []
    assert step.json()["enrol"] == ["totp"]
    assert step.json()["email_code_required"] is False
    pending_csrf = step.json()["csrf_token"]
    account = lab.account(EMAIL)
    assert account.status == AccountStatus.ACTIVE.value
    assert account.email_verified_at is not None
    assert CHEAP_HASHER.verify(account.password_hash, Secret(PASSWORD))

    # Nothing but the enrolment, even with the session's CSRF token.
    headers = csrf(pending_csrf)
    assert client.get("/api/v1/auth/me").status_code == 401
    assert client.get("/api/v1/auth/sessions").status_code == 401
    assert client.post("/api/v1/auth/totp", headers=headers).status_code == 401
    assert client.post("/api/v1/auth/recovery-codes", headers=headers).status_code == 401
    for method in ("totp", "email", "recovery"):
        refused = client.post(
            "/api/v1/auth/login/second-factor",
            json={"method": method, "code": "123456"},
            headers=headers,
        )
        assert refused.status_code == 401
    assert client.post("/api/v1/auth/enrolment/totp").status_code == 403, "CSRF token needed"

    setup = client.post("/api/v1/auth/enrolment/totp", headers=headers)
    assert setup.status_code == 200, setup.text
    assert EMAIL not in setup.json()["uri"]
    secret = secret_of(setup.json())
    wrong = client.post(
        "/api/v1/auth/enrolment/totp/confirm", json={"code": "000000"}, headers=headers
    )
    assert wrong.status_code == 401
    pending_cookie = client.cookies.get(SESSION_COOKIE)
    now = time.time()
    done = client.post(
        "/api/v1/auth/enrolment/totp/confirm",
        json={"code": totp_code(secret, now)},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    assert done.json()["kind"] == "staff"
    assert client.cookies.get(SESSION_COOKIE) != pending_cookie, "a new token at login"
    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200
    assert me.json()["kind"] == "staff"
    signed_in = csrf(done.json()["csrf_token"])
    # Enrolment is over: its steps are closed, the factor stays.
    assert client.post("/api/v1/auth/enrolment/totp", headers=signed_in).status_code == 401

    # The staff principal: its role, no site.
    (success,) = audit_events(runtime, "account:login:success")
    assert (success.actor_kind, success.actor_id) == ("staff", str(account.id))
    assert (success.actor_role, success.actor_site_id) == ("biologist", None)
    assert success.purpose == default_policy().tag, "the login names the policy it runs under"
    assert principal_of(account) == Principal(
        PrincipalKind.STAFF, str(account.id), role="biologist", site_id=None
    )
    assert audit_events(runtime, "staff:invitation:accept")
    assert audit_events(runtime, "account:totp:enrol")

    # A later login: the password, then the authenticator.
    assert client.post("/api/v1/auth/logout", headers=signed_in).status_code == 204
    step = client.post("/api/v1/auth/staff/login", json={"email": EMAIL, "password": PASSWORD})
    assert step.status_code == 200, step.text
    assert (step.json()["second_factor"], step.json()["enrol"]) == (["totp"], [])
    headers = csrf(step.json()["csrf_token"])
    assert client.post("/api/v1/auth/enrolment/totp", headers=headers).status_code == 401, (
        "an account with a factor never enrols at login"
    )
    done = client.post(
        "/api/v1/auth/login/second-factor",
        json={"method": "totp", "code": totp_code(secret, now + 30)},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    assert done.json()["kind"] == "staff"


def test_an_invitation_link_serves_once(client: TestClient, lab: Lab) -> None:
    token = lab.invite()
    assert accept(client, token).status_code == 200
    client.cookies.clear()
    again = accept(client, token, "un autre mot de passe bien long")
    unknown = accept(client, f"{uuid.uuid4().hex}.{'A' * 43}")
    malformed = accept(client, "nimporte-quoi")
    for answer in (again, unknown, malformed):
        assert answer.status_code == 401
        assert answer.json()["detail"] == INVITATION_INVALID
    assert SESSION_COOKIE not in client.cookies
    assert CHEAP_HASHER.verify(lab.account(EMAIL).password_hash, Secret(PASSWORD))


def test_a_refused_password_leaves_the_link_usable(client: TestClient, lab: Lab) -> None:
    token = lab.invite()
    refused = accept(client, token, "azerty123")
    assert refused.status_code == 422
    assert refused.json()["type"].endswith("password-rejected")
    assert lab.account(EMAIL).status == AccountStatus.INVITED.value
    assert accept(client, token).status_code == 200


def test_a_later_login_without_a_factor_enrols_only_with_an_emailed_code(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    """The invitee set a password but left before enrolling: the password alone must not
    attach an authenticator (a phished password would let its thief enrol theirs)."""
    assert accept(client, lab.invite()).status_code == 200
    client.cookies.clear()
    step = client.post("/api/v1/auth/staff/login", json={"email": EMAIL, "password": PASSWORD})
    assert step.status_code == 200, step.text
    assert step.json()["second_factor"] == []
    assert step.json()["enrol"] == ["totp"]
    assert step.json()["email_code_required"] is True
    headers = csrf(step.json()["csrf_token"])
    setup = client.post("/api/v1/auth/enrolment/totp", headers=headers)
    secret = secret_of(setup.json())
    confirm = "/api/v1/auth/enrolment/totp/confirm"
    for email_code in (None, "123456"):
        refused = client.post(
            confirm, json={"code": totp_code(secret), "email_code": email_code}, headers=headers
        )
        assert refused.status_code == 401
    assert client.get("/api/v1/auth/me").status_code == 401
    sent = client.post("/api/v1/auth/enrolment/email-code", headers=headers)
    assert sent.status_code == 202, sent.text
    message = messages(runtime)[-1]
    assert message["Subject"] == "Votre code d'activation"
    code = last_code(runtime)
    # A wrong authenticator code does not use up the emailed one.
    assert (
        client.post(confirm, json={"code": "000000", "email_code": code}, headers=headers)
    ).status_code == 401
    done = client.post(
        confirm, json={"code": totp_code(secret), "email_code": code}, headers=headers
    )
    assert done.status_code == 200, done.text
    assert client.get("/api/v1/auth/me").status_code == 200


def test_staff_login_answers_like_the_patient_login_and_is_throttled(
    client: TestClient, lab: Lab
) -> None:
    assert accept(client, lab.invite()).status_code == 200
    lab.invite("invitee@example.org")
    client.cookies.clear()
    answers = {
        (answer.status_code, answer.json()["detail"])
        for answer in (
            client.post("/api/v1/auth/staff/login", json={"email": e, "password": p})
            for e, p in (
                (EMAIL, "mauvais mot de passe"),
                ("personne@example.org", PASSWORD),
                ("invitee@example.org", PASSWORD),
                ("pas une adresse", PASSWORD),
                # A staff address is no patient's.
            )
        )
    }
    patient = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    answers.add((patient.status_code, patient.json()["detail"]))
    assert len(answers) == 1
    assert next(iter(answers))[0] == 401

    statuses = [
        client.post(
            "/api/v1/auth/staff/login",
            json={"email": f"x{number}@example.org", "password": "azerty123456"},
        ).status_code
        for number in range(30)
    ]
    assert statuses.count(429) >= 1, "30 attempts a minute from one client, staff or not"
    throttled = client.post("/api/v1/auth/staff/login", json={"email": EMAIL, "password": PASSWORD})
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1


# --------------------------------------------------------------------------- sessions


@pytest.fixture
def short_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"staff_session_idle_minutes": 7, "staff_session_absolute_hours": 2}
    )


def test_staff_sessions_are_shorter_as_the_settings_say(short_settings: Settings) -> None:
    runtime = Runtime(short_settings)
    try:
        lab = Lab(runtime)
        staff = SessionPolicy.for_kind(short_settings, AccountKind.STAFF)
        patients = SessionPolicy.for_kind(short_settings, AccountKind.PATIENT)
        assert (staff.idle, staff.absolute) == (dt.timedelta(minutes=7), dt.timedelta(hours=2))
        assert staff.idle < patients.idle
        assert staff.absolute < patients.absolute

        token = lab.invite()
        with lab.unit() as service:
            login = service.accept_invitation(
                token, Secret(PASSWORD), client_id=CLIENT, client_hash=None
            )
            setup = service.begin_enrolment(login.token.reveal())
        with lab.unit() as service:
            opened = service.confirm_enrolment(
                login.token.reveal(), totp_code(secret_of({"secret": setup.secret_text}))
            )
        with runtime.sessions() as session:
            rows = list(session.scalars(select(AccountSession).order_by(AccountSession.created_at)))
        assert len(rows) == 2
        for row in rows:
            assert row.idle_expires_at - row.created_at == staff.idle
            assert row.absolute_expires_at - row.created_at == staff.absolute
        full = opened.token.reveal()

        def signed_in() -> bool:
            with lab.unit() as service:
                return service.current(full) is not None

        lab.clock.advance(minutes=6, seconds=59)
        assert signed_in(), "used within the idle limit: pushed back"
        lab.clock.advance(minutes=6, seconds=59)
        assert signed_in()
        lab.clock.advance(minutes=7)
        assert not signed_in(), "idle for 7 minutes"

        with lab.unit() as service:
            login = service.staff_login(EMAIL, Secret(PASSWORD), client_id=CLIENT, client_hash=None)
        pending = login.token.reveal()
        for _ in range(17):  # busy, never idle: 17 times 6 min 59 s < 2 h
            lab.clock.advance(minutes=6, seconds=59)
            with lab.unit() as service:
                assert service.pending(pending) is not None
        lab.clock.advance(minutes=2)
        with lab.unit() as service:
            assert service.pending(pending) is None, "2 hours after the login, whatever the use"
    finally:
        runtime.close()


# --------------------------------------------------------------------------- at rest


def test_no_invitation_token_in_clear_at_rest(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    token = lab.invite()
    verifier = token.partition(".")[2]
    step = accept(client, token)
    assert step.status_code == 200
    setup = client.post("/api/v1/auth/enrolment/totp", headers=csrf(step.json()["csrf_token"]))
    secret_text = setup.json()["secret"]
    with runtime.sessions() as session:
        tables = ("accounts", "account_sessions", "one_time_codes", "staff_members")
        tables += ("totp_credentials", "audit_events", "data_keys")
        dump = "\n".join(
            repr(tuple(v.hex() if isinstance(v, bytes) else v for v in row))
            for table in tables
            for row in session.execute(text(f"SELECT * FROM {table}"))
        ).encode()
    values = [token, verifier, verifier[:20], EMAIL, "Garnier", PASSWORD, secret_text]
    values.append(client.cookies.get(SESSION_COOKIE) or "")
    assert leaked(dump, values) == []
    runtime.engine.dispose()
    if runtime.settings.is_sqlite:
        raw = b"".join(path.read_bytes() for path in sqlite_files(runtime.settings.sqlalchemy_url))
    else:
        raw = pg_dump(runtime.settings.sqlalchemy_url)
    assert leaked(raw, values) == []


# --------------------------------------------------------------------------- pages


def _csrf_field(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


def test_the_invitation_activation_and_staff_login_pages(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    token = lab.invite()
    page = client.get("/compte/invitation")
    assert page.status_code == 200
    assert '<script src="/static/invitation.js" defer></script>' in page.text
    assert client.get("/static/invitation.js").status_code == 200
    form = _csrf_field(page.text)
    refused = client.post(
        "/compte/invitation",
        data={"token": token, "password": "azerty123", "csrf_token": form},
        follow_redirects=False,
    )
    assert refused.status_code == 422
    assert 'aria-invalid="true"' in refused.text
    answer = client.post(
        "/compte/invitation",
        data={"token": token, "password": PASSWORD, "csrf_token": _csrf_field(refused.text)},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/compte/activation"
    assert client.get("/compte/securite", follow_redirects=False).status_code == 303

    activation = client.get("/compte/activation")
    assert activation.status_code == 200
    assert "Configurer l'application d'authentification" in activation.text
    assert "code-email" not in activation.text, "the invitation proved the mailbox"
    shown = client.post(
        "/compte/activation/cle",
        data={"csrf_token": _csrf_field(activation.text)},
        follow_redirects=False,
    )
    assert shown.status_code == 200
    match = re.search(r'id="totp-secret">([A-Z2-7]+)<', shown.text)
    assert match is not None
    secret = secret_of({"secret": match.group(1)})
    now = time.time()
    done = client.post(
        "/compte/activation",
        data={"code": totp_code(secret, now), "csrf_token": _csrf_field(shown.text)},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/compte/securite?info=totp-active"
    security = client.get("/compte/securite")
    assert security.status_code == 200
    assert client.get("/compte/activation", follow_redirects=False).headers["location"] == (
        "/compte/securite"
    )

    logout = client.post(
        "/compte/deconnexion",
        data={"csrf_token": _csrf_field(security.text)},
        follow_redirects=False,
    )
    assert logout.status_code == 303
    login_page = client.get("/compte/connexion-professionnel")
    assert login_page.status_code == 200
    assert "Connexion professionnelle" in login_page.text
    step = client.post(
        "/compte/connexion-professionnel",
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": _csrf_field(login_page.text)},
        follow_redirects=False,
    )
    assert step.status_code == 303, step.text
    assert step.headers["location"] == "/compte/second-facteur"
    second = client.get("/compte/second-facteur")
    done = client.post(
        "/compte/second-facteur",
        data={
            "factor": "totp",
            "code": totp_code(secret, now + 30),
            "csrf_token": _csrf_field(second.text),
        },
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/compte/securite"


def test_the_activation_page_asks_for_an_emailed_code_after_a_plain_login(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    lab.active(EMAIL, StaffRole.SAMPLER)
    login_page = client.get("/compte/connexion-professionnel")
    step = client.post(
        "/compte/connexion-professionnel",
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": _csrf_field(login_page.text)},
        follow_redirects=False,
    )
    assert step.headers["location"] == "/compte/activation"
    elsewhere = client.get("/compte/second-facteur", follow_redirects=False)
    assert elsewhere.headers["location"] == "/compte/activation", "no factor: enrol first"
    page = client.get("/compte/activation")
    sent = client.post(
        "/compte/activation/envoi",
        data={"csrf_token": _csrf_field(page.text)},
        follow_redirects=False,
    )
    assert sent.headers["location"] == "/compte/activation?info=code-activation-envoye"
    code = last_code(runtime)
    page = client.get(sent.headers["location"])
    shown = client.post("/compte/activation/cle", data={"csrf_token": _csrf_field(page.text)})
    assert 'name="email_code"' in shown.text
    match = re.search(r'id="totp-secret">([A-Z2-7]+)<', shown.text)
    assert match is not None
    secret = secret_of({"secret": match.group(1)})
    done = client.post(
        "/compte/activation",
        data={
            "code": totp_code(secret),
            "email_code": code,
            "csrf_token": _csrf_field(shown.text),
        },
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert client.get("/compte/securite").status_code == 200


# --------------------------------------------------------------------------- factors


def test_privileged_roles_enrol_a_passkey_first_and_the_others_an_authenticator_app() -> None:
    assert {StaffRole.ORGANIZATION_ADMIN, StaffRole.SECURITY_OFFICER} == PASSKEY_ROLES
    for role in StaffRole:
        expected = ("webauthn",) if role in PASSKEY_ROLES else ("totp",)
        assert required_factors(role) == expected, role
        # Where the address cannot have passkeys (an IP address), an authenticator app.
        assert required_factors(role, passkeys_available=False) == ("totp",)
    with pytest.raises(ValueError, match="chief"):
        required_factors("chief")


# --------------------------------------------------------------------------- command line


def test_the_cli_invites_as_the_system_principal(cli_env: Settings, runtime: Runtime) -> None:
    assert runner.invoke(app, ["init", "--organization", "Labo CLI"]).exit_code == 0
    with transaction(runtime.sessions) as session:
        add_site(
            session,
            get_organization(session),
            name="Site Gare",
            address_line="3 place de la Gare",
            postal_code="69003",
            city="Lyon",
            opening_hours={},
            sampling_capacity_per_hour=4,
        )
    command = ["staff", "invite", EMAIL, "--first-name", FIRST_NAME, "--last-name", LAST_NAME]
    result = runner.invoke(app, [*command, "--role", "biologist", "--site", "Site Gare"])
    assert result.exit_code == 0, result.output
    mail_dir = cli_env.resolved_data_dir / "mail"
    assert str(mail_dir) in result.output.replace("\n", "")
    assert "biologist" in result.output
    assert invitation_token(runtime)
    (created,) = audit_events(runtime, "staff:invitation:create")
    assert created.actor_id == "system:cli:staff-invite"
    with runtime.sessions() as session:
        member = session.scalars(select(StaffMember)).one()
        site_names = list(
            session.scalars(select(Site.name).join(StaffSite, StaffSite.site_id == Site.id))
        )
    assert member.role == "biologist"
    assert site_names == ["Site Gare"]

    again = runner.invoke(app, [*command, "--role", "biologist"])
    assert isinstance(again.exception, CliError)
    assert "déjà une invitation" in str(again.exception)
    unknown_site = runner.invoke(
        app, ["staff", "invite", "x@example.org", "--first-name", "A", "--last-name", "B",
              "--role", "sampler", "--site", "Nulle Part"],
    )  # fmt: skip
    assert isinstance(unknown_site.exception, CliError)
    assert "'Site Gare'" in str(unknown_site.exception)
    bad_role = runner.invoke(
        app, [*command[:2], "autre@example.org", *command[3:], "--role", "chef"]
    )
    assert bad_role.exit_code == 2
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(StaffMember)) == 1


def test_the_demo_has_an_organization_admin_who_enrols_at_first_login(
    cli_env: Settings, runtime: Runtime
) -> None:
    from labvault.demo import DEMO_ACCOUNTS

    result = runner.invoke(app, ["demo", "--no-serve", "--patients", "0"])
    assert result.exit_code == 0, result.output
    (staff,) = [a for a in DEMO_ACCOUNTS if "organization-admin" in a.email]
    assert f"staff: {staff.email} / {staff.password}" in result.output
    assert "/compte/connexion-professionnel" in result.output
    with TestClient(create_app(runtime.settings, runtime), base_url=ORIGIN) as test_client:
        step = test_client.post(
            "/api/v1/auth/staff/login", json={"email": staff.email, "password": staff.password}
        )
    assert step.status_code == 200, step.text
    assert step.json()["enrol"] == ["webauthn"], "an organization admin: a passkey first"
    assert step.json()["email_code_required"] is True
    with runtime.sessions() as session:
        account = session.scalars(
            select(Account).where(Account.kind == "staff", Account.role == "organization_admin")
        ).one()
        member = session.get_one(StaffMember, account.staff_id)
    assert account.role == member.role == "organization_admin"


def test_an_organization_admin_unlocks_an_account_and_nobody_else_can(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    locked = lab.active("verrou@example.org", StaffRole.BIOLOGIST)
    with lab.unit() as service:
        target = service.account(locked.id)
        assert target is not None
        service.lock(target, reason_principal=SYSTEM)
    unlock = f"/api/v1/auth/accounts/{locked.id}/unlock"

    biologist = accept(client, lab.invite("bio2@example.org", StaffRole.BIOLOGIST))
    enrol(client, biologist.json()["csrf_token"])
    token = client.get("/api/v1/auth/me").json()["csrf_token"]
    refused = client.post(unlock, headers=csrf(token))
    unknown = client.post(f"/api/v1/auth/accounts/{uuid.uuid4()}/unlock", headers=csrf(token))
    assert refused.status_code == unknown.status_code == 404
    assert refused.json()["detail"] == unknown.json()["detail"], "the same answer (I7)"

    client.cookies.clear()
    admin = accept(client, lab.invite("admin2@example.org", StaffRole.ORGANIZATION_ADMIN))
    enrol_passkey(client, admin.json()["csrf_token"])
    token = client.get("/api/v1/auth/me").json()["csrf_token"]
    assert client.post(unlock).status_code == 403, "CSRF applies"
    first = client.post(unlock, headers=csrf(token))
    assert first.status_code == 200, first.text
    assert first.json() == {"unlocked": True}
    assert client.post(unlock, headers=csrf(token)).json() == {"unlocked": False}
    assert lab.account("verrou@example.org").status == AccountStatus.ACTIVE.value
    assert "déverrouillé" in body(messages(runtime)[-1])
