"""Four-eyes unlock of a principal the guard (or a security officer) locked.

A stolen account that tripped a read budget or a honey record must not be reopened by the
same stolen session, nor by one officer alone (who may be the one phished). So:

1. a security officer asks, with a reason from a closed list (:class:`UnlockReason`),
   after a fresh step-up;
2. ANOTHER security officer approves, after a fresh step-up of their own; the same officer
   approving their own request is refused and audited (``denied``);
3. only then is the account set active again (``status``, ``lock_reason`` cleared) or the
   service client re-enabled (its old tokens stay revoked: it asks for new ones).

Requests expire after :data:`REQUEST_TTL`; either officer may withdraw one. Both officers are
checked against the staff table (active, role security officer), not taken from the session
alone. Nobody can take part in unlocking their own account. Every step is audited
(``guard:unlock:request``, ``guard:unlock:cancel``, ``guard:principal:unlock``); ids only.

Locks that end here: accounts locked by a security decision (``LockReason.SECURITY_DECISION``,
set by ``security.lockout``) and disabled service clients. A too-many-failures lock is the
owner's to lift with a password reset and is not listed.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from labvault.accounts.models import Account, AccountStatus, LockReason
from labvault.core.access.principals import PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail, Outcome
from labvault.results.models import ServiceClient
from labvault.security.guard_models import UnlockOutcome, UnlockReason, UnlockRequest
from labvault.security.lockout import forget_refused
from labvault.staff.models import StaffMember, StaffRole

__all__ = [
    "REQUEST_TTL",
    "FourEyesUnlock",
    "LockedPrincipal",
    "PendingUnlock",
    "UnlockError",
    "UnlockProblem",
    "locked_principals",
    "principal_reference",
]

REQUEST_TTL = dt.timedelta(hours=24)
SERVICE_PREFIX = "service:"


class UnlockProblem(enum.StrEnum):
    NOT_LOCKED = "not-locked"
    """No such locked principal in this organization (or it was unlocked meanwhile)."""
    NO_REQUEST = "no-request"
    """No such pending request (decided, withdrawn, expired, another organization's)."""
    SAME_OFFICER = "same-officer"
    """The officer who asked cannot approve: four eyes means two people."""
    OWN_ACCOUNT = "own-account"
    """Nobody takes part in unlocking their own account."""
    ALREADY_REQUESTED = "already-requested"
    """A request for this principal is pending: approve or withdraw it."""
    NOT_OFFICER = "not-officer"


class UnlockError(Exception):
    def __init__(self, problem: UnlockProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class PendingUnlock:
    id: uuid.UUID
    reason: str
    requested_by: uuid.UUID
    requested_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class LockedPrincipal:
    kind: str
    """``staff``, ``patient`` or ``service``."""
    id: str
    """The account id, or ``service:<client id>``: the principal id audit events carry."""
    locked_at: dt.datetime | None
    reason: str | None
    role: str | None
    pending: PendingUnlock | None


def principal_reference(value: str) -> tuple[str, uuid.UUID] | None:
    """``<account uuid>`` → ("account", id); ``service:<uuid>`` → ("service", id); else None."""
    raw = value.strip()
    kind = "account"
    if raw.startswith(SERVICE_PREFIX):
        kind, raw = "service", raw.removeprefix(SERVICE_PREFIX)
    try:
        return kind, uuid.UUID(raw)
    except ValueError:
        return None


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _pending(session: Session, tenant_id: uuid.UUID, now: dt.datetime) -> dict[str, PendingUnlock]:
    rows = session.scalars(
        select(UnlockRequest)
        .where(
            UnlockRequest.tenant_id == tenant_id,
            UnlockRequest.outcome.is_(None),
            UnlockRequest.expires_at > now,
        )
        .order_by(UnlockRequest.requested_at)
    )
    return {
        r.principal_id: PendingUnlock(
            r.id, r.reason, r.requested_by, _aware(r.requested_at), _aware(r.expires_at)
        )
        for r in rows
    }


def locked_principals(
    session: Session, tenant_id: uuid.UUID, now: dt.datetime
) -> list[LockedPrincipal]:
    """Accounts locked by a security decision and disabled service clients, newest lock
    first, each with its pending unlock request if any. Ids, roles and times only."""
    pending = _pending(session, tenant_id, now)
    found: list[LockedPrincipal] = []
    for account_id, kind, role, locked_at in session.execute(
        select(Account.id, Account.kind, Account.role, Account.locked_at).where(
            Account.tenant_id == tenant_id,
            Account.status == AccountStatus.LOCKED.value,
            Account.lock_reason == LockReason.SECURITY_DECISION.value,
        )
    ):
        key = str(account_id)
        found.append(
            LockedPrincipal(
                kind,
                key,
                None if locked_at is None else _aware(locked_at),
                LockReason.SECURITY_DECISION.value,
                role,
                pending.get(key),
            )
        )
    clients = select(
        ServiceClient.id, ServiceClient.disabled_at, ServiceClient.disabled_reason
    ).where(ServiceClient.tenant_id == tenant_id, ServiceClient.disabled_at.is_not(None))
    for client_id, disabled_at, reason in session.execute(clients):
        key = f"{SERVICE_PREFIX}{client_id}"
        found.append(
            LockedPrincipal(
                PrincipalKind.SERVICE.value,
                key,
                None if disabled_at is None else _aware(disabled_at),
                reason,
                None,
                pending.get(key),
            )
        )
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(found, key=lambda p: p.locked_at or epoch, reverse=True)


class FourEyesUnlock:
    """One security officer's side of the four-eyes unlock, in the caller's transaction.

    ``require_step_up`` raises unless the officer's session proved a second factor recently
    (the web layer passes ``Caller.require_step_up``)."""

    def __init__(
        self,
        session: Session,
        audit: AuditTrail,
        tenant_id: uuid.UUID,
        *,
        officer_staff_id: uuid.UUID,
        officer_account_id: uuid.UUID,
        require_step_up: Callable[[], None],
        clock: Callable[[], dt.datetime],
        ttl: dt.timedelta = REQUEST_TTL,
    ) -> None:
        self._session = session
        self._audit = audit
        self._tenant_id = tenant_id
        self._staff_id = officer_staff_id
        self._account_id = officer_account_id
        self._require_step_up = require_step_up
        self._clock = clock
        self._ttl = ttl

    # --- reading ---------------------------------------------------------------------------

    def _check_officer(self) -> None:
        active = self._session.scalar(
            select(StaffMember.id).where(
                StaffMember.tenant_id == self._tenant_id,
                StaffMember.id == self._staff_id,
                StaffMember.role == StaffRole.SECURITY_OFFICER.value,
                StaffMember.active.is_(True),
            )
        )
        if active is None:
            raise UnlockError(UnlockProblem.NOT_OFFICER)

    def locked(self) -> list[LockedPrincipal]:
        """Every locked principal of the organization, with its pending request if any."""
        self._check_officer()
        return locked_principals(self._session, self._tenant_id, self._clock())

    def _locked_one(self, reference: str) -> LockedPrincipal | None:
        parsed = principal_reference(reference)
        if parsed is None:
            return None
        canonical = f"{SERVICE_PREFIX}{parsed[1]}" if parsed[0] == "service" else str(parsed[1])
        return next((p for p in self.locked() if p.id == canonical), None)

    # --- the two steps ---------------------------------------------------------------------

    def _deny(self, problem: UnlockProblem, target: uuid.UUID | None) -> UnlockError:
        self._audit.record(
            AuditAction.GUARD_UNLOCK_REQUEST,
            tenant_id=self._tenant_id,
            target_type="unlock-request",
            target_id=target,
            purpose=problem.value,
            outcome=Outcome.DENIED,
        )
        return UnlockError(problem)

    def request(self, reference: str, reason: UnlockReason) -> uuid.UUID:
        """Ask to unlock the principal ``reference`` (an account id or ``service:<id>``)."""
        self._check_officer()
        self._require_step_up()
        principal = self._locked_one(reference)
        if principal is None:
            raise UnlockError(UnlockProblem.NOT_LOCKED)
        if principal.id == str(self._account_id):
            raise self._deny(UnlockProblem.OWN_ACCOUNT, None)
        if principal.pending is not None:
            raise UnlockError(UnlockProblem.ALREADY_REQUESTED)
        now = self._clock()
        row = UnlockRequest(
            tenant_id=self._tenant_id,
            principal_kind=principal.kind,
            principal_id=principal.id,
            reason=UnlockReason(reason).value,
            requested_by=self._staff_id,
            requested_at=now,
            expires_at=now + self._ttl,
        )
        self._session.add(row)
        self._session.flush()
        self._audit.record(
            AuditAction.GUARD_UNLOCK_REQUEST,
            tenant_id=self._tenant_id,
            target_type="unlock-request",
            target_id=row.id,
            purpose=row.reason,
        )
        return row.id

    def _open_request(self, request_id: uuid.UUID) -> UnlockRequest:
        row = self._session.get(UnlockRequest, request_id)
        if (
            row is None
            or row.tenant_id != self._tenant_id
            or row.outcome is not None
            or _aware(row.expires_at) <= self._clock()
        ):
            raise UnlockError(UnlockProblem.NO_REQUEST)
        return row

    def approve(self, request_id: uuid.UUID) -> LockedPrincipal:
        """The second officer's approval: unlocks the principal; returns what was unlocked."""
        self._check_officer()
        self._require_step_up()
        row = self._open_request(request_id)
        if row.requested_by == self._staff_id:
            raise self._deny(UnlockProblem.SAME_OFFICER, row.id)
        if row.principal_id == str(self._account_id):
            raise self._deny(UnlockProblem.OWN_ACCOUNT, row.id)
        principal = self._locked_one(row.principal_id)
        now = self._clock()
        row.decided_by = self._staff_id
        row.decided_at = now
        if principal is None:  # unlocked another way meanwhile: the request has no object
            row.outcome = UnlockOutcome.CANCELLED.value
            self._session.flush()
            raise UnlockError(UnlockProblem.NOT_LOCKED)
        row.outcome = UnlockOutcome.APPROVED.value
        target = self._lift(principal)
        forget_refused(self._tenant_id, principal.id)
        self._session.flush()
        self._audit.record(
            AuditAction.GUARD_PRINCIPAL_UNLOCK,
            tenant_id=self._tenant_id,
            target_type="service-client" if principal.kind == "service" else "account",
            target_id=target,
            purpose=row.reason,
        )
        return principal

    def _lift(self, principal: LockedPrincipal) -> uuid.UUID:
        parsed = principal_reference(principal.id)
        assert parsed is not None
        kind, target = parsed
        if kind == "service":
            self._session.execute(
                update(ServiceClient)
                .where(ServiceClient.tenant_id == self._tenant_id, ServiceClient.id == target)
                .values(disabled_at=None, disabled_reason=None)
                .execution_options(synchronize_session="fetch")
            )
        else:
            self._session.execute(
                update(Account)
                .where(Account.tenant_id == self._tenant_id, Account.id == target)
                .values(
                    status=AccountStatus.ACTIVE.value,
                    locked_at=None,
                    lock_reason=None,
                    failed_logins=0,
                )
                .execution_options(synchronize_session="fetch")
            )
        return target

    def cancel(self, request_id: uuid.UUID) -> None:
        """Withdraw a pending request (either officer: a second look may disagree)."""
        self._check_officer()
        row = self._open_request(request_id)
        row.outcome = UnlockOutcome.CANCELLED.value
        row.decided_by = self._staff_id
        row.decided_at = self._clock()
        self._session.flush()
        self._audit.record(
            AuditAction.GUARD_UNLOCK_CANCEL,
            tenant_id=self._tenant_id,
            target_type="unlock-request",
            target_id=row.id,
        )
