"""The guard's kill switch: a locked account loses its sessions and cannot log in again, a
disabled service client loses its tokens and gets no new one; an alert and an audit event
are recorded in a transaction of their own; locking twice locks once. Both backends."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import select, update

from labvault.accounts.invitations import StaffAccountService
from labvault.accounts.models import Account, AccountSession, AccountStatus, LockReason
from labvault.accounts.services import AuthError
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.passwords import Argon2Parameters, PasswordHasher
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail.file import FileMailer
from labvault.core.ratelimit import RateDecision, RateRule
from labvault.core.runtime import Runtime
from labvault.fhir.oauth import OAuthError, TokenService
from labvault.organizations.services import add_site, create_organization
from labvault.results.clients import ServiceClientRegistry
from labvault.results.models import ServiceClient, ServiceClientKind, ServiceToken
from labvault.security.lockout import (
    LockoutDeps,
    lock_principal,
    raise_guard_alert,
    wait_for_deferred,
)
from labvault.security.models import SecurityAlert
from labvault.staff.models import StaffRole

EMAIL = "louise.perrin@example.org"
PASSWORD = "une phrase de passe assez longue"
CLIENT = "c" * 32
SYSTEM = SystemPrincipal("test:lockout")
CHEAP = PasswordHasher(Argon2Parameters(time_cost=5, memory_cost=7168))
LINK = re.compile(r"/compte/invitation#(\S+)")


class AllowEverything:
    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return RateDecision(allowed=True, retry_after=0.0, remaining=rule.amount)

    def test(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return RateDecision(allowed=True, retry_after=0.0, remaining=rule.amount)

    def hit_or_deny(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return RateDecision(allowed=True, retry_after=0.0, remaining=rule.amount)

    def reset(self, rule: RateRule, *identifiers: str) -> None:
        return None

    def close(self) -> None:
        return None


class Lab:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        with transaction(runtime.sessions) as session:
            organization = create_organization(session, runtime.key_provider, "Labo Verrou")
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
        self.deps = LockoutDeps.from_runtime(runtime)

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
                hasher=CHEAP,
            )

    def staff(self) -> Account:
        """An accepted staff account with one live, fully signed-in session."""
        with self.unit() as service:
            service.invite_staff(SYSTEM, EMAIL, "Louise", "Perrin", StaffRole.RECEPTIONIST, [])
        mailer = self.runtime.mailer
        assert isinstance(mailer, FileMailer)
        match = LINK.search(str(mailer.messages()[-1].get_body(("plain",)).get_content()))  # type: ignore[union-attr]
        assert match is not None
        with self.unit() as service:
            service.accept_invitation(
                match.group(1), Secret(PASSWORD), client_id=CLIENT, client_hash=None
            )
        return self.account()

    def account(self) -> Account:
        with self.runtime.tenant_sessions(self.tenant_id)() as session:
            return session.scalars(select(Account)).one()

    def session_token(self, account: Account) -> str:
        with self.unit() as service:
            token, _ = service.sessions.create(
                tenant_id=self.tenant_id,
                account_id=account.id,
                policy=service._policy(account),
                client_hash=None,
                second_factor="totp",
            )
        return token.reveal()

    def live(self, token: str) -> bool:
        with self.unit() as service:
            return service.current(token) is not None

    def service_client(self) -> tuple[uuid.UUID, Secret[str]]:
        with transaction(self.runtime.tenant_sessions(self.tenant_id)) as session:
            registry = ServiceClientRegistry(
                session, self.tenant_id, AuditTrail(session, SYSTEM), CHEAP
            )
            client, issued = registry.add(
                "SIL Central", kind=ServiceClientKind.FHIR, scopes=["system/Patient.read"],
                with_secret=True,
            )  # fmt: skip
            assert issued is not None
            return client.id, issued.secret

    @contextmanager
    def tokens(self) -> Iterator[TokenService]:
        with transaction(self.runtime.tenant_sessions(self.tenant_id)) as session:
            yield TokenService(
                session,
                self.tenant_id,
                limiter=AllowEverything(),
                hasher=CHEAP,
                lifetime=dt.timedelta(minutes=10),
            )

    def alerts(self) -> list[SecurityAlert]:
        with self.runtime.tenant_sessions(self.tenant_id)() as session:
            return list(session.scalars(select(SecurityAlert)))

    def events(self, action: str) -> list[AuditEvent]:
        with self.runtime.audit_sessions() as session:
            return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


@pytest.fixture
def lab(runtime: Runtime) -> Lab:
    return Lab(runtime)


def _principal(account: Account) -> Principal:
    return Principal(PrincipalKind(account.kind), str(account.id), role=account.role)


def test_locking_an_account_revokes_its_sessions_refuses_login_and_is_idempotent(
    lab: Lab,
) -> None:
    account = lab.staff()
    token = lab.session_token(account)
    assert lab.live(token)

    outcome = lock_principal(
        lab.deps, lab.tenant_id, _principal(account), "read-budget", "read-budget-exceeded"
    )
    assert outcome.locked
    assert not outcome.deferred
    locked = lab.account()
    assert (locked.status, locked.lock_reason) == (
        AccountStatus.LOCKED.value,
        LockReason.SECURITY_DECISION.value,
    )
    assert not lab.live(token), "every session is revoked"
    with lab.unit() as service, pytest.raises(AuthError):
        service.staff_login(EMAIL, Secret(PASSWORD), client_id=CLIENT, client_hash=None)
    (alert,) = lab.alerts()
    assert (alert.kind, alert.actor_kind, alert.actor_id) == (
        "read-budget-exceeded",
        "staff",
        str(account.id),
    )
    (event,) = lab.events("guard:principal:lock")
    assert (event.actor_id, event.target_id, event.purpose) == (
        "system:guard:lockout",
        account.id,
        "read-budget",
    )
    assert len(lab.events("account:status:security-lock")) == 1

    # A session made meanwhile (an in-flight login) is revoked by a second call, which locks
    # nothing again: no second alert, no second event.
    late = lab.session_token(account)
    again = lock_principal(
        lab.deps, lab.tenant_id, _principal(account), "read-budget", "read-budget-exceeded"
    )
    assert not again.locked
    assert not lab.live(late)
    assert len(lab.alerts()) == 1
    assert len(lab.events("guard:principal:lock")) == 1
    # A password reset link does not lift a security lock (existing rule, still true here).
    with lab.unit() as service:
        assert service._security_locked(lab.account())


def test_disabling_a_service_client_revokes_its_tokens_and_refuses_new_ones(lab: Lab) -> None:
    client_id, secret = lab.service_client()
    with lab.tokens() as service:
        issued = service.issue(str(client_id), secret, None, address_key="a" * 32)
    with lab.tokens() as service:
        assert service.authenticate(issued.token.reveal()) is not None

    principal = Principal(PrincipalKind.SERVICE, f"service:{client_id}", role="fhir")
    outcome = lock_principal(lab.deps, lab.tenant_id, principal, "honey-record", "honey-touched")
    assert outcome.locked
    with lab.tokens() as service:
        assert service.authenticate(issued.token.reveal()) is None
    with lab.tokens() as service, pytest.raises(OAuthError):
        service.issue(str(client_id), secret, None, address_key="a" * 32)
    with lab.runtime.tenant_sessions(lab.tenant_id)() as session:
        client = session.get(ServiceClient, client_id)
        assert client is not None
        assert client.disabled_reason == "honey-record"
        assert all(t.revoked_at is not None for t in session.scalars(select(ServiceToken)))
    assert [a.kind for a in lab.alerts()] == ["honey-touched"]
    assert len(lab.events("service:client:disable")) == 1
    assert not lock_principal(
        lab.deps, lab.tenant_id, principal, "honey-record", "honey-touched"
    ).locked
    assert len(lab.alerts()) == 1


def test_a_system_job_or_an_unknown_principal_is_not_locked_but_alerted(lab: Lab) -> None:
    job = SystemPrincipal("cli:patients-export")
    assert not lock_principal(lab.deps, lab.tenant_id, job, "read-budget", "read-budget").locked
    assert [(a.kind, a.actor_id) for a in lab.alerts()] == [("read-budget", job.id)]
    assert raise_guard_alert(lab.deps, lab.tenant_id, job, "read-budget").locked is False
    assert len(lab.alerts()) == 2
    # An id that names no account of this organization: nothing to lock, alerted all the same.
    stranger = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="biologist")
    assert not lock_principal(lab.deps, lab.tenant_id, stranger, "honey-record", "honey").locked
    assert len(lab.alerts()) == 3


def test_the_lock_survives_the_callers_rollback_even_when_the_caller_holds_locks(
    lab: Lab,
) -> None:
    """The guard runs inside the caller's transaction, which may already hold the write
    lock (SQLite) or its session's row (PostgreSQL), then is rolled back by the refusal."""
    account = lab.staff()
    token = lab.session_token(account)
    caller = lab.runtime.tenant_sessions(lab.tenant_id)()
    # The caller wrote first: its session row (as ``SessionStore.find`` touches it).
    caller.execute(
        update(AccountSession)
        .where(AccountSession.account_id == account.id)
        .values(last_seen_at=utcnow())
    )
    outcome = lock_principal(
        lab.deps, lab.tenant_id, _principal(account), "read-budget", "read-budget-exceeded"
    )
    assert outcome.deferred, "the caller's lock is in the way: the lock waits for it"
    caller.rollback()  # the refusal rolls the caller back
    caller.close()
    wait_for_deferred()
    assert lab.account().status == AccountStatus.LOCKED.value
    assert not lab.live(token)
    assert len(lab.alerts()) == 1
