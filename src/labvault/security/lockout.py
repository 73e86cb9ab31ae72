"""Locking a principal: the exfiltration guard's kill switch (read budgets, honey records).

``lock_principal`` cuts a principal off in its OWN short transaction, because the guard
that calls it runs inside the caller's transaction, which the refusal then rolls back:

- a patient or staff account is locked by a security decision (``LockReason.
  SECURITY_DECISION``: login refuses it, a password reset does not lift it, only an admin
  does) and every session of it is revoked;
- a service client is disabled (``disabled_at``/``disabled_reason``): the token endpoint
  refuses it and every token of it is revoked (``service_tokens.revoked_at``);
- a system job is never locked (it is named and audited; an operator runs it): the alert
  says so;
- a security alert and a ``guard:principal:lock`` audit event are recorded with it.

It is idempotent: a principal already locked by a security decision is not locked again
(no second alert, no second email), though any session or token issued meanwhile is
revoked.

The caller's transaction may hold locks this one needs (SQLite's single writer, or a
PostgreSQL row it touched, such as its session's ``last_seen_at``). So the work is tried at
once with a short lock wait; when the caller blocks it, it is handed to a background thread
that waits for the caller's refusal to roll back (milliseconds later) and commits then.
Either way the read is refused; only the lock's commit moves by those milliseconds.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from labvault.accounts.models import Account, AccountStatus, LockReason
from labvault.core import tenancy
from labvault.core.access.decrypt import DecryptDeniedError, DecryptRequest
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.config import Settings
from labvault.core.crypto.derived import DerivedKeys
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.db import utcnow
from labvault.core.logging import get_logger
from labvault.core.mail import Mailer, MailerError
from labvault.core.mail.message import OutgoingMessage
from labvault.core.ratelimit import RateLimiter
from labvault.results.models import ServiceClient, ServiceToken
from labvault.security.alerts import Alert, AlertSink, DatabaseAlertSink
from labvault.security.models import AlertSeverity

if TYPE_CHECKING:
    from labvault.core.runtime import Runtime

GUARD = SystemPrincipal("guard:lockout")
"""Who locks: the guard, named, never the principal being locked."""

SHORT_LOCK_WAIT_MS = 250
"""How long the first attempt waits for a lock the caller's transaction may hold."""
BACKGROUND_LOCK_WAIT_MS = 30_000
"""How long the background attempt waits for the caller's rollback (it takes milliseconds)."""
SQLITE_BUSY_TIMEOUT_MS = 10_000
"""The engine's usual ``busy_timeout`` (``core.db``), restored after the short attempt."""

_log = get_logger("labvault.security.lockout")

SinksFactory = Callable[[Session, AuditTrail], Sequence[AlertSink]]
"""Extra alert sinks (mail, webhook, SIEM) run in the lock's transaction, after the record."""


@dataclass(frozen=True, slots=True)
class LockoutDeps:
    """What a lock needs from the process: built once (``from_runtime``), shared."""

    engine: Engine
    provider: KeyProvider
    mailer: Mailer
    limiter: RateLimiter
    settings: Settings
    derived: DerivedKeys | None = None
    extra_sinks: SinksFactory | None = None

    @classmethod
    def from_runtime(cls, runtime: Runtime, extra_sinks: SinksFactory | None = None) -> LockoutDeps:
        return cls(
            engine=runtime.engine,
            provider=runtime.key_provider,
            mailer=runtime.mailer,
            limiter=runtime.rate_limiter,
            settings=runtime.settings,
            derived=runtime.derived_keys,
            extra_sinks=extra_sinks,
        )


@dataclass(frozen=True, slots=True)
class LockOutcome:
    locked: bool
    """True if this call locked it; False if it was already locked or cannot be locked."""
    deferred: bool = False
    """True if the work was handed to the background thread (the caller held a lock)."""


class _BestEffortMailer:
    """The owner's "your account is locked" mail must not undo the lock when mail is down."""

    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer

    def send(self, message: OutgoingMessage) -> None:
        try:
            self._mailer.send(message)
        except MailerError as exc:
            _log.error("lockout.mail-failed", category=message.category, error=str(exc))


def lock_principal(
    deps: LockoutDeps,
    tenant_id: uuid.UUID,
    principal: Principal,
    reason: str,
    alert_kind: str,
    *,
    severity: AlertSeverity = AlertSeverity.CRITICAL,
    target_type: str | None = None,
    target_id: uuid.UUID | None = None,
) -> LockOutcome:
    """Lock ``principal`` of ``tenant_id`` for ``reason`` (a short code such as
    ``read-budget``), revoke its sessions or tokens, record an ``alert_kind`` alert and a
    ``guard:principal:lock`` event; all committed in a transaction of its own."""
    if not reason.replace("-", "").isalnum() or not reason.islower() or len(reason) > 64:
        raise ValueError("reason: a short code (lower-case letters, digits, '-')")
    remember_refused(tenant_id, principal)

    def work(session: Session) -> bool:
        return _lock(
            session, deps, tenant_id, principal, reason, alert_kind, severity, target_type,
            target_id,
        )  # fmt: skip

    return run_in_own_transaction(deps.engine, tenant_id, work)


def raise_guard_alert(
    deps: LockoutDeps,
    tenant_id: uuid.UUID,
    principal: Principal,
    alert_kind: str,
    *,
    severity: AlertSeverity = AlertSeverity.CRITICAL,
    target_type: str | None = None,
    target_id: uuid.UUID | None = None,
) -> LockOutcome:
    """Record an alert without locking (the lock is switched off, or a system job)."""

    def work(session: Session) -> bool:
        _alert(session, deps, tenant_id, principal, alert_kind, severity, target_type, target_id)
        return False

    return run_in_own_transaction(deps.engine, tenant_id, work)


def lock_in(
    session: Session,
    deps: LockoutDeps,
    tenant_id: uuid.UUID,
    principal: Principal,
    reason: str,
    alert_kind: str,
    *,
    severity: AlertSeverity = AlertSeverity.CRITICAL,
    target_type: str | None = None,
    target_id: uuid.UUID | None = None,
) -> bool:
    """:func:`lock_principal`'s work in a transaction the caller runs (with
    :func:`run_in_own_transaction`), to commit other records with it."""
    return _lock(
        session, deps, tenant_id, principal, reason, alert_kind, severity, target_type,
        target_id,
    )  # fmt: skip


def alert_in(
    session: Session,
    deps: LockoutDeps,
    tenant_id: uuid.UUID,
    principal: Principal,
    alert_kind: str,
    *,
    severity: AlertSeverity = AlertSeverity.CRITICAL,
    target_type: str | None = None,
    target_id: uuid.UUID | None = None,
) -> None:
    """:func:`raise_guard_alert`'s work in a transaction the caller runs."""
    _alert(session, deps, tenant_id, principal, alert_kind, severity, target_type, target_id)


def _lock(
    session: Session,
    deps: LockoutDeps,
    tenant_id: uuid.UUID,
    principal: Principal,
    reason: str,
    alert_kind: str,
    severity: AlertSeverity,
    target_type: str | None,
    target_id: uuid.UUID | None,
) -> bool:
    audit = AuditTrail(session, GUARD)
    state: bool | None  # True: locked now; False: was locked already; None: nothing to lock
    if principal.kind in (PrincipalKind.PATIENT, PrincipalKind.STAFF):
        state, subject = _lock_account(session, deps, tenant_id, principal), "account"
    elif principal.kind is PrincipalKind.SERVICE:
        state = _disable_client(session, audit, tenant_id, principal, reason)
        subject = "service-client"
    else:
        state, subject = None, ""
    if state is None:
        # A system job, an anonymous caller or an unknown id: nothing to lock, and the alert
        # says who it was (a job's budget is exempt; a honey record is not).
        _log.warning("lockout.not-lockable", kind=principal.kind.value, reason=reason)
    elif state:
        audit.record(
            AuditAction.GUARD_PRINCIPAL_LOCK,
            tenant_id=tenant_id,
            target_type=subject,
            target_id=_principal_uuid(principal),
            purpose=reason,
        )
    if state is not False:
        _alert(session, deps, tenant_id, principal, alert_kind, severity, target_type, target_id)
    return bool(state)


def _principal_uuid(principal: Principal) -> uuid.UUID | None:
    """The account id, or the service client's id (``service:<uuid>``)."""
    try:
        return uuid.UUID(principal.id.removeprefix("service:"))
    except ValueError:
        return None


def _lock_account(
    session: Session, deps: LockoutDeps, tenant_id: uuid.UUID, principal: Principal
) -> bool | None:
    from labvault.accounts.services import AccountService

    account_id = _principal_uuid(principal)
    if account_id is None:
        return None
    # The claim is one conditional UPDATE, so two concurrent locks lock (and mail) once. A
    # closing, pending or invited account cannot log in anyway: its sessions go, it stays.
    claimed = session.execute(
        update(Account)
        .where(
            Account.id == account_id,
            Account.tenant_id == tenant_id,
            (Account.status == AccountStatus.ACTIVE.value)
            | (
                (Account.status == AccountStatus.LOCKED.value)
                & (
                    Account.lock_reason.is_(None)
                    | (Account.lock_reason != LockReason.SECURITY_DECISION.value)
                )
            ),
        )
        .values(
            status=AccountStatus.LOCKED.value,
            lock_reason=LockReason.SECURITY_DECISION.value,
            locked_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    account = session.scalars(
        select(Account).where(Account.id == account_id, Account.tenant_id == tenant_id)
    ).one_or_none()
    if account is None:
        return None
    service = AccountService(
        session,
        tenant_id=tenant_id,
        provider=deps.provider,
        mailer=_BestEffortMailer(deps.mailer),
        limiter=deps.limiter,
        settings=deps.settings,
        hasher=PasswordHasher(),
        derived=deps.derived,
    )
    if not claimed:
        service.sessions.revoke_all(account.id)  # any issued since the first lock
        return False
    # Revokes every session, audits account:status:security-lock, mails the owner.
    service.lock(account, reason_principal=GUARD, reason=LockReason.SECURITY_DECISION)
    return True


def _disable_client(
    session: Session, audit: AuditTrail, tenant_id: uuid.UUID, principal: Principal, reason: str
) -> bool | None:
    client_id = _principal_uuid(principal)
    if client_id is None:
        return None
    now = utcnow()
    claimed = session.execute(
        update(ServiceClient)
        .where(
            ServiceClient.id == client_id,
            ServiceClient.tenant_id == tenant_id,
            ServiceClient.disabled_at.is_(None),
        )
        .values(disabled_at=now, disabled_reason=reason)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.execute(
        update(ServiceToken)
        .where(
            ServiceToken.tenant_id == tenant_id,
            ServiceToken.client_id == client_id,
            ServiceToken.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed:
        audit.record(
            AuditAction.SERVICE_CLIENT_DISABLE,
            tenant_id=tenant_id,
            target_type="service-client",
            target_id=client_id,
            purpose=reason,
        )
        return True
    known = session.scalar(
        select(ServiceClient.id).where(
            ServiceClient.id == client_id, ServiceClient.tenant_id == tenant_id
        )
    )
    return None if known is None else False


def _alert(
    session: Session,
    deps: LockoutDeps,
    tenant_id: uuid.UUID,
    principal: Principal,
    alert_kind: str,
    severity: AlertSeverity,
    target_type: str | None,
    target_id: uuid.UUID | None,
) -> None:
    audit = AuditTrail(session, GUARD)
    alert = Alert(tenant_id, alert_kind, severity, principal, target_type, target_id)
    DatabaseAlertSink(session, audit).raise_alert(alert)
    if deps.extra_sinks is not None:
        for sink in deps.extra_sinks(session, audit):
            sink.raise_alert(alert)


# --- Refused until the lock lands --------------------------------------------------------

REFUSAL_MEMORY_SECONDS = 300.0
"""How long this process refuses a principal it decided to lock, whatever the database says:
the lock may be committed by a background thread a few milliseconds after the refused
request (SQLite's single writer), and a request in that gap must not read anything."""

_refused: dict[tuple[uuid.UUID, str], float] = {}
_refused_lock = threading.Lock()


class PrincipalRefusedError(DecryptDeniedError):
    """A principal this process has just locked asks again before the lock is committed."""

    def __init__(self) -> None:
        super().__init__("access refused by the exfiltration guard")


def remember_refused(tenant_id: uuid.UUID, principal: Principal) -> None:
    now = time.monotonic()
    with _refused_lock:
        for key in [k for k, until in _refused.items() if until <= now]:
            del _refused[key]
        _refused[(tenant_id, principal.id)] = now + REFUSAL_MEMORY_SECONDS


def forget_refused(tenant_id: uuid.UUID, principal_id: str) -> None:
    """After an unlock (four eyes): the principal may read again."""
    with _refused_lock:
        _refused.pop((tenant_id, principal_id), None)


def recently_refused(tenant_id: uuid.UUID, principal: Principal) -> bool:
    with _refused_lock:
        until = _refused.get((tenant_id, principal.id))
    return until is not None and until > time.monotonic()


class RefusedPrincipalGuard:
    """The first guard: refuses at once a principal this process is locking."""

    def before_decrypt(self, request: DecryptRequest) -> None:
        if recently_refused(request.tenant_id, request.principal):
            raise PrincipalRefusedError


# --- Running in a transaction of its own ---------------------------------------------------

_pending: list[threading.Thread] = []
_pending_lock = threading.Lock()


def run_in_own_transaction(
    engine: Engine, tenant_id: uuid.UUID, work: Callable[[Session], bool]
) -> LockOutcome:
    """Run ``work`` in a new tenant-bound transaction and commit it: at once if no lock of
    the caller's is in the way, else in a background thread once the caller has let go."""
    try:
        return LockOutcome(_attempt(engine, tenant_id, work, SHORT_LOCK_WAIT_MS))
    except Exception as exc:
        if not _is_lock_wait(exc):
            raise
    thread = threading.Thread(
        target=_in_background, args=(engine, tenant_id, work), name="labvault-lockout", daemon=True
    )
    with _pending_lock:
        _pending[:] = [t for t in _pending if t.is_alive()]
        _pending.append(thread)
    thread.start()
    return LockOutcome(locked=False, deferred=True)


def wait_for_deferred(timeout: float = 60.0) -> None:
    """Wait for locks handed to the background (tests; a worker's clean shutdown)."""
    with _pending_lock:
        threads = list(_pending)
    for thread in threads:
        thread.join(timeout)


def _in_background(engine: Engine, tenant_id: uuid.UUID, work: Callable[[Session], bool]) -> None:
    try:
        _attempt(engine, tenant_id, work, BACKGROUND_LOCK_WAIT_MS)
    except Exception as exc:
        _log.error("lockout.deferred-failed", error=type(exc).__name__)


def _attempt(
    engine: Engine, tenant_id: uuid.UUID, work: Callable[[Session], bool], wait_ms: int
) -> bool:
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            connection.exec_driver_sql(f"PRAGMA busy_timeout={int(wait_ms)}")
            connection.commit()  # ends the autobegun transaction: the session's is its own
        try:
            info = tenancy.session_info(tenant_id)
            with (
                Session(bind=connection, info=info, expire_on_commit=False) as session,
                session.begin(),
            ):
                if not sqlite:
                    session.connection().exec_driver_sql(
                        f"SET LOCAL lock_timeout = '{int(wait_ms)}ms'"
                    )
                return work(session)
        finally:
            if sqlite:
                connection.rollback()
                connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                connection.commit()


def _is_lock_wait(exc: BaseException) -> bool:
    """SQLite's "database is locked" or PostgreSQL's lock_timeout (SQLSTATE 55P03), also
    when wrapped (the audit trail turns database errors into ``AuditUnavailableError``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OperationalError):
            original = seen.orig
            if getattr(original, "sqlstate", None) == "55P03":
                return True
            text = str(original).lower()
            return "database is locked" in text or "lock timeout" in text
        seen = seen.__cause__ or seen.__context__
    return False


__all__ = [
    "GUARD",
    "LockOutcome",
    "LockoutDeps",
    "alert_in",
    "lock_in",
    "lock_principal",
    "raise_guard_alert",
    "run_in_own_transaction",
    "wait_for_deferred",
]
