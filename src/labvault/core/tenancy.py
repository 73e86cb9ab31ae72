"""Which tenant a database transaction acts for: the PostgreSQL row-level security binding.

On PostgreSQL every tenant-owned table has a row-level security policy (migration 0008)
that lets a transaction see and write only the rows whose ``tenant_id`` equals the
transaction-local setting ``labvault.tenant_id``. A transaction that did not set it sees and
writes nothing: forgetting to bind fails closed.

The binding travels in ``Session.info`` and is applied by an ``after_begin`` listener at the
start of every transaction with ``set_config(..., true)`` (transaction-local), so a pooled
connection never carries one request's tenant into the next transaction.

Three kinds of sessions exist, and each is asked for by name:

- tenant-bound: ``Runtime.sessions`` (the deployment's organization, resolved from the
  ``organizations`` table on first use) and ``Runtime.tenant_sessions(tenant_id)``;
- the audit log's cross-tenant maintenance scope (``AUDIT_LOG_SCOPE``): sequencing,
  checkpoints and verification read every tenant's events, and may only number pending
  ones (see the policies on ``audit_events``);
- unbound: sees the tenant list (``organizations`` has no policy: it *is* the tenant list)
  and no tenant's rows.

On SQLite (one file, one deployment) nothing is set: the application's policy is the only
isolation there.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import Connection, event, text
from sqlalchemy.orm import Session, SessionTransaction

TENANT_SETTING: Final = "labvault.tenant_id"
SCOPE_SETTING: Final = "labvault.scope"
AUDIT_LOG_SCOPE: Final = "audit-log"
"""The only scope: cross-tenant read of audit events, and numbering of pending ones."""

TENANT_KEY: Final = "labvault.tenant"
"""``Session.info`` key: a tenant id, or a :class:`TenantResolver` called at each begin."""
SCOPE_KEY: Final = "labvault.scope"

_SET_BOTH = text(
    "SELECT set_config('labvault.tenant_id', :tenant, true), "
    "set_config('labvault.scope', :scope, true)"
)

TenantResolver = Callable[[Connection], uuid.UUID | None]


def _is_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def apply(connection: Connection, tenant_id: uuid.UUID | None, scope: str | None = None) -> None:
    """Set (or clear) the binding for the connection's current transaction (PostgreSQL only)."""
    if not _is_postgresql(connection):
        return
    connection.execute(
        _SET_BOTH, {"tenant": "" if tenant_id is None else str(tenant_id), "scope": scope or ""}
    )


def _tenant_of(session: Session, connection: Connection) -> uuid.UUID | None:
    bound = session.info.get(TENANT_KEY)
    if bound is None or isinstance(bound, uuid.UUID):
        return bound
    resolved: uuid.UUID | None = bound(connection)
    return resolved


@event.listens_for(Session, "after_begin")
def _bind_transaction(
    session: Session, _transaction: SessionTransaction, connection: Connection
) -> None:
    """Every session, everywhere: apply its binding as its transaction begins."""
    if not _is_postgresql(connection):
        return
    if TENANT_KEY not in session.info and SCOPE_KEY not in session.info:
        return  # unbound: transaction-local settings start out empty; nothing to clear
    apply(connection, _tenant_of(session, connection), session.info.get(SCOPE_KEY))


def bind_tenant(session: Session, tenant_id: uuid.UUID) -> None:
    """Bind ``session`` to ``tenant_id``: its open transaction at once, and every later one.

    For the code that learns the tenant inside a transaction: a CLI command that looked up
    ``--organization``, or the creation of a new organization.
    """
    session.info[TENANT_KEY] = tenant_id
    if session.in_transaction():
        connection = session.connection()  # begins here if need be, which applies it too
        apply(connection, tenant_id, session.info.get(SCOPE_KEY))


def session_info(
    tenant: uuid.UUID | TenantResolver | None = None, scope: str | None = None
) -> dict[str, Any]:
    """The ``info`` of a session factory bound to a tenant (or a resolver) and/or a scope."""
    info: dict[str, Any] = {}
    if tenant is not None:
        info[TENANT_KEY] = tenant
    if scope is not None:
        info[SCOPE_KEY] = scope
    return info


class DeploymentTenant:
    """Resolves the organization a deployment serves (``LABVAULT_ORGANIZATION``, or the only
    one) from the tenant list, once: an organization's id never changes.

    Until it exists (before ``labvault init``), or while the setting names none of several
    organizations, transactions stay unbound and see no tenant's rows.
    """

    def __init__(self, name: str | None) -> None:
        self._name = None if name is None else " ".join(name.split())
        self._tenant_id: uuid.UUID | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DeploymentTenant(resolved={self._tenant_id is not None})"

    def __call__(self, connection: Connection) -> uuid.UUID | None:
        if self._tenant_id is not None:
            return self._tenant_id
        if self._name is not None:
            rows = connection.execute(
                text("SELECT id FROM organizations WHERE name = :name"), {"name": self._name}
            ).all()
        else:
            rows = connection.execute(text("SELECT id FROM organizations LIMIT 2")).all()
        if len(rows) != 1:
            return None
        found = rows[0][0]
        tenant_id = found if isinstance(found, uuid.UUID) else uuid.UUID(str(found))
        with self._lock:
            self._tenant_id = tenant_id
        return tenant_id
