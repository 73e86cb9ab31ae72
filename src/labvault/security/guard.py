"""The exfiltration guard, installed on a runtime: every keyring on its database gets the
honey-record guard and the read-budget guard, whatever code path builds it.

``protect(runtime)`` is called where a runtime is opened for real work: the web application
(``create_app``) and every CLI command (``labvault.cli._runtime``). The guards share one
lockout (lock the principal, revoke its sessions or tokens, alert through every sink) and
are built once per runtime. The honey guard comes first, so touching a honey record is
reported as such, never counted against a budget.

Both refusals look the same to the caller (:data:`GUARD_REFUSALS`): an attacker must not
learn which of the records they asked for is a honey record.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session

from labvault.core.access.decrypt import DecryptGuard, guard_factory, install_guards
from labvault.core.runtime import Runtime
from labvault.security.budgets import BudgetExceededError, BudgetGuard
from labvault.security.honey import HoneyGuards, HoneyRecordTouchedError
from labvault.security.lockout import LockoutDeps, PrincipalRefusedError, RefusedPrincipalGuard
from labvault.security.sinks import guard_sinks

REFUSED_PRINCIPALS = RefusedPrincipalGuard()

GUARD_REFUSALS: tuple[type[Exception], ...] = (
    BudgetExceededError,
    HoneyRecordTouchedError,
    PrincipalRefusedError,
)
"""Refusals that lock the principal; answered alike (429, "too many patient files")."""


class RuntimeGuards:
    """The guards of one runtime, shared by its keyrings (thread-safe). Built at the first
    keyring, not before: an application whose key file is missing must still start and
    say so on its health check, and nothing can be decrypted without a keyring anyway."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._built: tuple[HoneyGuards, BudgetGuard] | None = None
        self._lock = threading.Lock()

    def _guards(self) -> tuple[HoneyGuards, BudgetGuard]:
        with self._lock:
            if self._built is None:
                runtime = self._runtime
                lockout = LockoutDeps.from_runtime(
                    runtime,
                    extra_sinks=guard_sinks(runtime.settings, runtime.key_provider, runtime.mailer),
                )
                self._built = (
                    HoneyGuards.from_runtime(runtime, lockout),
                    BudgetGuard.from_runtime(runtime, lockout=lockout),
                )
            return self._built

    @property
    def honey(self) -> HoneyGuards:
        return self._guards()[0]

    @property
    def budgets(self) -> BudgetGuard:
        return self._guards()[1]

    def __call__(self, session: Session, tenant_id: uuid.UUID) -> Sequence[DecryptGuard]:
        honey, budgets = self._guards()
        return (REFUSED_PRINCIPALS, honey.for_session(session, tenant_id), budgets)


def protect(runtime: Runtime) -> RuntimeGuards:
    """Install the guards on ``runtime``'s database (idempotent per runtime); the runtime
    uninstalls them when it closes."""
    existing = guard_factory(runtime.engine)
    if isinstance(existing, RuntimeGuards):
        return existing
    guards = RuntimeGuards(runtime)
    install_guards(runtime.engine, guards)
    return guards


__all__ = ["GUARD_REFUSALS", "RuntimeGuards", "protect"]
