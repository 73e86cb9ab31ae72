"""Read budgets: how many DISTINCT patients a principal may open per hour, day and 30 days.

Invariant I4: a stolen account, token or foothold yields a small, bounded number of
patients before it is cut off. :class:`BudgetGuard` is a
:class:`~labvault.core.access.decrypt.DecryptGuard`: it runs in the decrypt choke point
before any key is unwrapped, charges the patients of the request to the principal's
windows, and refuses the WHOLE request when any window would go over (nothing is charged
then): a scraper gets at most its hourly budget, never "a page more". On refusal it locks
the principal (``LABVAULT_GUARD_LOCK_ON_BUDGET``, on by default), raises an alert and
records a ``guard:budget:exceeded`` event, all in a transaction of its own (the refusal
rolls the caller's back), then raises :class:`BudgetExceededError`.

Windows slide: a patient counts in a window if the principal last opened them less than
the window ago, so re-opening the same patient is free within the window and counts again
after it. Counting is exact and atomic per principal in every store.

Default limits (per principal; a site with unusual volumes sets its own per organization,
``labvault guard budgets set``):

==================== ====== ======= ======== ==================================================
principal            1 hour   1 day  30 days  why
==================== ====== ======= ======== ==================================================
receptionist            700   1 400   14 000  the desk's day schedule opens a site's whole day
                                              at once (a busy site: 200-300 visits), and the
                                              next day's too, in the same hour; walk-ins and
                                              searches on top
sampler                 400     800    8 000  opens the day schedule too (its own visits)
biologist               600   2 500   40 000  validates a platform's series: up to ~1 500
                                              reports a day in a large lab, lists included,
                                              20 working days a month
organization_admin       30     100      500  administers staff and settings, rarely patients
security_officer         50     200    1 000  investigations and break-glass reviews
other staff role        100     400    4 000  a safe middle
patient account          20      40      200  one's own file and one's dependents' (a family
                                              of ten, each opened many times, is 10)
service lis           5 000  30 000  300 000  an LIS matching a platform's night batch of
                                              results (INS traits opened to match)
service fhir            500   5 000   50 000  a reading system (a GP's or a hospital's)
system job           exempt  exempt   exempt  named, started by an operator and audited
                                              (``SystemPrincipal``): budgets bound stolen
                                              credentials, not the operator
==================== ====== ======= ======== ==================================================

A stolen desk account thus yields at most 700 patients in its first hour and 1 400 a day
before it is cut off, where the leaks that motivated this yielded millions; the anomaly
rules (``labvault.security.anomalies``) watch what stays under the budgets.
"""

from __future__ import annotations

import datetime as dt
import hmac
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from labvault.core import tenancy
from labvault.core.access.decrypt import DecryptDeniedError, DecryptRequest
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail, Outcome
from labvault.core.crypto.secret import Secret
from labvault.core.db import utcnow
from labvault.core.logging import get_logger
from labvault.security.budget_models import ReadBudgetLimit

if TYPE_CHECKING:
    from labvault.core.runtime import Runtime
    from labvault.security.lockout import LockoutDeps

ALERT_KIND = "read-budget-exceeded"
LOCK_REASON = "read-budget"
SUBJECT_KEY_LABEL = "labvault/v1|guard|budget-subject"
"""The derivation label of the key that digests patient ids in the counter stores."""
DIGEST_BYTES = 16
BUDGETED_SUBJECTS = frozenset({"patient"})
"""Subject types whose data key is a patient's: every patient-bound value (identity,
contacts, NIR, appointments, results, documents) is sealed under it."""
ANY_ROLE = "*"

_log = get_logger("labvault.security.budgets")


@dataclass(frozen=True, slots=True)
class Window:
    label: str
    seconds: int


HOUR = Window("1h", 3600)
DAY = Window("24h", 24 * 3600)
MONTH = Window("30d", 30 * 24 * 3600)
WINDOWS = (HOUR, DAY, MONTH)
"""Shortest first, the longest last: stores purge what is older than the last one."""


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    per_hour: int
    per_day: int
    per_30_days: int

    def __post_init__(self) -> None:
        if not 0 <= self.per_hour <= self.per_day <= self.per_30_days:
            raise ValueError("budgets: 0 <= per hour <= per day <= per 30 days")

    def by_window(self) -> tuple[tuple[Window, int], ...]:
        return ((HOUR, self.per_hour), (DAY, self.per_day), (MONTH, self.per_30_days))


DEFAULT_LIMITS: Mapping[tuple[PrincipalKind, str], BudgetLimits] = {
    (PrincipalKind.STAFF, "receptionist"): BudgetLimits(700, 1400, 14000),
    (PrincipalKind.STAFF, "sampler"): BudgetLimits(400, 800, 8000),
    (PrincipalKind.STAFF, "biologist"): BudgetLimits(600, 2500, 40000),
    (PrincipalKind.STAFF, "organization_admin"): BudgetLimits(30, 100, 500),
    (PrincipalKind.STAFF, "security_officer"): BudgetLimits(50, 200, 1000),
    (PrincipalKind.STAFF, ANY_ROLE): BudgetLimits(100, 400, 4000),
    (PrincipalKind.PATIENT, ANY_ROLE): BudgetLimits(20, 40, 200),
    (PrincipalKind.SERVICE, "lis"): BudgetLimits(5000, 30000, 300000),
    (PrincipalKind.SERVICE, "fhir"): BudgetLimits(500, 5000, 50000),
    (PrincipalKind.SERVICE, ANY_ROLE): BudgetLimits(500, 5000, 50000),
}
"""See the module's table. Anonymous callers get nothing (0): they open no patient."""

NO_READS = BudgetLimits(0, 0, 0)


def parse_budget_key(key: str) -> tuple[PrincipalKind, str]:
    """``staff:receptionist``, ``patient``, ``service:lis``, ``staff:*`` → (kind, role)."""
    kind_text, _, role = key.partition(":")
    try:
        kind = PrincipalKind(kind_text)
    except ValueError:
        raise ValueError(f"{key!r}: the kind is one of staff, patient, service") from None
    if kind not in (PrincipalKind.STAFF, PrincipalKind.PATIENT, PrincipalKind.SERVICE):
        raise ValueError(f"{key!r}: only staff, patient and service principals have budgets")
    role = role or ANY_ROLE
    if role != ANY_ROLE and not role.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"{key!r}: a role is letters, digits, '_' or '-'")
    return kind, role


class BudgetPolicy:
    """The limits of a principal: the organization's own (a table), else the settings'
    (``LABVAULT_GUARD_BUDGETS``), else the defaults; by role, else the kind's ``*``."""

    def __init__(
        self,
        overrides: Mapping[str, Sequence[int]] | None = None,
        organization_limits: Callable[[uuid.UUID], Mapping[tuple[str, str], BudgetLimits]]
        | None = None,
    ) -> None:
        limits = dict(DEFAULT_LIMITS)
        for key, values in (overrides or {}).items():
            if len(values) != 3:
                raise ValueError(f"{key!r}: three limits (per hour, per day, per 30 days)")
            limits[parse_budget_key(key)] = BudgetLimits(*values)
        self._limits = limits
        self._organization_limits = organization_limits

    def limits_for(self, tenant_id: uuid.UUID, principal: Principal) -> BudgetLimits | None:
        """None: exempt (system jobs)."""
        if principal.kind is PrincipalKind.SYSTEM:
            return None
        if principal.kind is PrincipalKind.ANONYMOUS:
            return NO_READS
        role = principal.role or ANY_ROLE
        own = {} if self._organization_limits is None else self._organization_limits(tenant_id)
        for candidate in (role, ANY_ROLE):
            found = own.get((principal.kind.value, candidate))
            if found is not None:
                return found
        for candidate in (role, ANY_ROLE):
            default = self._limits.get((principal.kind, candidate))
            if default is not None:
                return default
        return NO_READS


def known_budget_keys(policy: BudgetPolicy) -> list[tuple[str, str]]:
    """Every (kind, role) the defaults and the settings name, in a stable order."""
    return sorted({(kind.value, role) for kind, role in policy._limits})


def effective_limits(
    policy: BudgetPolicy, organization: Mapping[tuple[str, str], BudgetLimits]
) -> list[tuple[str, str, BudgetLimits, str]]:
    """(kind, role, limits, source) for ``budgets show``: the organization's own limits
    first, else the settings' or the defaults'."""
    keys = sorted(set(known_budget_keys(policy)) | set(organization))
    rows = []
    for kind, role in keys:
        own = organization.get((kind, role))
        if own is not None:
            rows.append((kind, role, own, "organization"))
            continue
        default = policy._limits[(PrincipalKind(kind), role)]
        source = (
            "default"
            if DEFAULT_LIMITS.get((PrincipalKind(kind), role)) == default
            else ("settings")
        )
        rows.append((kind, role, default, source))
    return rows


def set_organization_limits(
    session: Session,
    audit: AuditTrail,
    tenant_id: uuid.UUID,
    key: str,
    limits: BudgetLimits | None,
) -> None:
    """Set (or, with ``None``, clear) an organization's own limits for ``key``
    (``staff:receptionist``, ``patient``, ``service:lis``...), audited."""
    kind, role = parse_budget_key(key)
    row = session.scalars(
        select(ReadBudgetLimit).where(
            ReadBudgetLimit.tenant_id == tenant_id,
            ReadBudgetLimit.principal_kind == kind.value,
            ReadBudgetLimit.role == role,
        )
    ).one_or_none()
    if limits is None:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(
            ReadBudgetLimit(
                tenant_id=tenant_id,
                principal_kind=kind.value,
                role=role,
                per_hour=limits.per_hour,
                per_day=limits.per_day,
                per_30_days=limits.per_30_days,
                updated_at=utcnow(),
                updated_by=audit.principal.id,
            )
        )
    else:
        row.per_hour, row.per_day, row.per_30_days = (
            limits.per_hour,
            limits.per_day,
            limits.per_30_days,
        )
        row.updated_at, row.updated_by = utcnow(), audit.principal.id
    session.flush()
    audit.record(
        AuditAction.GUARD_BUDGET_SET,
        tenant_id=tenant_id,
        target_type="read-budget",
        purpose=f"{kind.value}:{'any' if role == ANY_ROLE else role}",
    )


# --- Decisions and stores -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    window: Window | None = None
    """The first window that would have gone over."""
    limit: int = 0
    used: int = 0
    """Distinct patients already in that window."""
    asked: int = 0
    """Patients of the request not yet in that window."""


ALLOWED = Decision(True)


class BudgetStore(Protocol):
    def charge(
        self,
        tenant_id: uuid.UUID,
        principal_key: str,
        subjects: Sequence[bytes],
        now: dt.datetime,
        limits: BudgetLimits,
    ) -> Decision:
        """Atomically: if, for every window, the distinct subjects already in it plus the
        subjects of ``subjects`` not yet in it stay within its limit, mark every subject
        read at ``now`` and allow; else change nothing and refuse."""

    def close(self) -> None: ...


def decide(
    limits: BudgetLimits, now_s: float, last_reads: Callable[[Window], tuple[int, int]]
) -> Decision:
    """The same arithmetic in every store: ``last_reads(window)`` → (already in it, new)."""
    for window, limit in limits.by_window():
        used, new = last_reads(window)
        if used + new > limit:
            return Decision(False, window, limit, used, new)
    return ALLOWED


class MemoryBudgetStore:
    """One process's counters (tests, single-process embedded runs). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per principal: subject → last read (epoch seconds), oldest first.
        self._reads: dict[tuple[uuid.UUID, str], OrderedDict[bytes, float]] = {}

    def charge(
        self,
        tenant_id: uuid.UUID,
        principal_key: str,
        subjects: Sequence[bytes],
        now: dt.datetime,
        limits: BudgetLimits,
    ) -> Decision:
        wanted = list(dict.fromkeys(subjects))
        now_s = now.timestamp()
        with self._lock:
            reads = self._reads.setdefault((tenant_id, principal_key), OrderedDict())
            while reads and next(iter(reads.values())) <= now_s - MONTH.seconds:
                reads.popitem(last=False)

            def last_reads(window: Window) -> tuple[int, int]:
                cutoff = now_s - window.seconds
                used = 0
                if window is MONTH:
                    used = len(reads)  # purged above: every read left is in it
                else:
                    for seen in reversed(reads.values()):  # newest first
                        if seen <= cutoff:
                            break
                        used += 1
                new = sum(1 for s in wanted if reads.get(s, cutoff) <= cutoff)
                return used, new

            decision = decide(limits, now_s, last_reads)
            if decision.allowed:
                for subject in wanted:
                    reads[subject] = now_s
                    reads.move_to_end(subject)
            return decision

    def close(self) -> None:
        return None


# --- The guard -----------------------------------------------------------------------------


class BudgetExceededError(DecryptDeniedError):
    """The read would take the principal over a read budget: refused, nothing decrypted.

    Its message names the window only: never a patient, never a count of them."""

    def __init__(self, window: Window) -> None:
        super().__init__(f"read budget exceeded ({window.label})")
        self.window = window


class BudgetUnavailableError(DecryptDeniedError):
    """The budget store could not count the read (Redis or the database is down): the read
    is refused, as no count means no bound."""

    def __init__(self) -> None:
        super().__init__("read budget store unavailable")


class SubjectDigester:
    """Keyed digests of patient ids for the counter stores, one key per tenant."""

    def __init__(self, key: Secret[bytes]) -> None:
        self._key = key
        self._tenant_keys: dict[uuid.UUID, bytes] = {}
        self._lock = threading.Lock()

    def digests(self, tenant_id: uuid.UUID, subject_ids: Iterable[uuid.UUID]) -> list[bytes]:
        key = self._tenant_keys.get(tenant_id)
        if key is None:
            key = hmac.digest(self._key.reveal(), b"tenant|" + tenant_id.bytes, "sha256")
            with self._lock:
                self._tenant_keys[tenant_id] = key
        return [hmac.digest(key, s.bytes, "sha256")[:DIGEST_BYTES] for s in subject_ids]


def principal_key(principal: Principal) -> str:
    """How the stores name a principal: kind and id (``staff:<uuid>``, ``service:<uuid>``)."""
    if principal.id.startswith(f"{principal.kind.value}:"):
        return principal.id
    return f"{principal.kind.value}:{principal.id}"


class OrganizationLimits:
    """An organization's own limits from ``read_budget_limits``, cached for a minute per
    process (a change made with the CLI applies within that minute everywhere)."""

    TTL_SECONDS = 60.0

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._clock = clock
        self._cache: dict[uuid.UUID, tuple[float, dict[tuple[str, str], BudgetLimits]]] = {}
        self._lock = threading.Lock()

    def __call__(self, tenant_id: uuid.UUID) -> Mapping[tuple[str, str], BudgetLimits]:
        now = self._clock()
        cached = self._cache.get(tenant_id)
        if cached is not None and now - cached[0] < self.TTL_SECONDS:
            return cached[1]
        with Session(self._engine, info=tenancy.session_info(tenant_id)) as session:
            rows = session.scalars(
                select(ReadBudgetLimit).where(ReadBudgetLimit.tenant_id == tenant_id)
            ).all()
        loaded = {
            (r.principal_kind, r.role): BudgetLimits(r.per_hour, r.per_day, r.per_30_days)
            for r in rows
        }
        with self._lock:
            self._cache[tenant_id] = (now, loaded)
        return loaded

    def forget(self, tenant_id: uuid.UUID | None = None) -> None:
        with self._lock:
            if tenant_id is None:
                self._cache.clear()
            else:
                self._cache.pop(tenant_id, None)


class BudgetGuard:
    """The :class:`~labvault.core.access.decrypt.DecryptGuard` of read budgets."""

    def __init__(
        self,
        store: BudgetStore,
        policy: BudgetPolicy,
        digester: SubjectDigester,
        lockout: LockoutDeps,
        *,
        lock_on_exceed: bool = True,
        subject_types: frozenset[str] = BUDGETED_SUBJECTS,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.store = store
        self.policy = policy
        self._digester = digester
        self._lockout = lockout
        self._lock_on_exceed = lock_on_exceed
        self._subject_types = subject_types
        self._clock = clock

    @classmethod
    def from_runtime(
        cls,
        runtime: Runtime,
        store: BudgetStore | None = None,
        lockout: LockoutDeps | None = None,
    ) -> BudgetGuard:
        """The guard the runtime's keyring factory passes to every keyring: one per
        process (thread-safe). ``lockout``: shared with the honey guard, with the alert
        sinks; by default built from the runtime (database alerts only)."""
        from labvault.security.budget_backends import load_budget_store
        from labvault.security.lockout import LockoutDeps

        settings = runtime.settings
        return cls(
            store or load_budget_store(settings, runtime.engine),
            BudgetPolicy(settings.guard_budgets, OrganizationLimits(runtime.engine)),
            SubjectDigester(runtime.derived_keys.get(SUBJECT_KEY_LABEL)),
            lockout or LockoutDeps.from_runtime(runtime),
            lock_on_exceed=settings.guard_lock_on_budget,
        )

    def before_decrypt(self, request: DecryptRequest) -> None:
        if request.subject_type not in self._subject_types or not request.subject_ids:
            return
        limits = self.policy.limits_for(request.tenant_id, request.principal)
        if limits is None:
            return
        try:
            decision = self.store.charge(
                request.tenant_id,
                principal_key(request.principal),
                self._digester.digests(request.tenant_id, request.subject_ids),
                self._clock(),
                limits,
            )
        except Exception as exc:
            # No count, no read (fail closed): the store is down or refused the write.
            _log.error("budget.store-unavailable", error=type(exc).__name__)
            raise BudgetUnavailableError from exc
        if decision.allowed:
            return
        assert decision.window is not None
        self._refused(request, decision.window)
        raise BudgetExceededError(decision.window)

    def _refused(self, request: DecryptRequest, window: Window) -> None:
        """Event, lock and alert, committed on their own; a failure here is logged and the
        read is refused all the same (fail closed)."""
        from labvault.security.lockout import alert_in, lock_in, run_in_own_transaction

        tenant, principal, deps = request.tenant_id, request.principal, self._lockout
        lock = self._lock_on_exceed and principal.kind is not PrincipalKind.SYSTEM

        def record(session: Session) -> bool:
            AuditTrail(session, principal).record(
                AuditAction.GUARD_BUDGET_EXCEEDED,
                tenant_id=tenant,
                target_type=request.subject_type,
                purpose=window.label,
                outcome=Outcome.DENIED,
            )
            if lock:
                return lock_in(session, deps, tenant, principal, LOCK_REASON, ALERT_KIND)
            alert_in(session, deps, tenant, principal, ALERT_KIND)
            return False

        try:
            run_in_own_transaction(deps.engine, tenant, record)
        except Exception as exc:
            _log.error("budget.refusal-not-recorded", error=type(exc).__name__)
        _log.warning("budget.exceeded", principal_kind=principal.kind.value, window=window.label)


__all__ = [
    "ALERT_KIND",
    "ANY_ROLE",
    "BUDGETED_SUBJECTS",
    "DAY",
    "DEFAULT_LIMITS",
    "HOUR",
    "MONTH",
    "WINDOWS",
    "BudgetExceededError",
    "BudgetGuard",
    "BudgetLimits",
    "BudgetPolicy",
    "BudgetStore",
    "BudgetUnavailableError",
    "Decision",
    "MemoryBudgetStore",
    "OrganizationLimits",
    "SubjectDigester",
    "Window",
    "decide",
    "effective_limits",
    "known_budget_keys",
    "parse_budget_key",
    "principal_key",
    "set_organization_limits",
]
