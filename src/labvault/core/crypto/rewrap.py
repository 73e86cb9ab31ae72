"""Rewrap every wrapped key under the key provider's active root key version.

After ``labvault keys rotate`` (or to move keys to another provider, see ``migrate``) the
job walks ``data_keys`` and ``index_keys`` of every organization by keyset pagination on
the primary key. For each page, one ``rewrap_many`` of its keys not under the active
version, then one transaction: a conditional UPDATE per key (``WHERE id = :id AND
wrapped_key = :old``: a key erased or changed meanwhile is left alone) and one audit event
with the counts. A crash at any point leaves every page either done or untouched, so a rerun
finishes the job; a rerun with nothing left to do changes nothing but says so.

The plaintext keys stay inside the provider's ``rewrap_many``: no personal field is ever
decrypted, and key material is written nowhere but the ``wrapped_key`` column.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext, AuditTrail
from labvault.core.crypto.blind_index import IndexKind
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.keyring import data_key_context, index_key_context
from labvault.core.crypto.models import DataKeyRecord, IndexKeyRecord
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.providers.chain import KeyChain
from labvault.core.db import transaction

DEFAULT_BATCH_SIZE: Final = 1000
REWRAP_JOB: Final = "keys-rewrap"
MIGRATE_JOB: Final = "keys-migrate"
ORGANIZATION_TARGET: Final = "organization"
UNKNOWN_VERSION: Final = "unknown"
"""The census label of a blob that no configured provider owns."""

SessionsFor = Callable[[uuid.UUID], sessionmaker[Session]]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class _Row:
    id: uuid.UUID
    wrapped: bytes
    context: str


@dataclass(frozen=True, slots=True)
class _KeyTable:
    """One table of wrapped keys: how to page through it and each row's wrapping context."""

    name: str
    short: str
    table: Table
    columns: tuple[str, ...]
    context: Callable[[uuid.UUID, Any], str]

    def page(
        self, session: Session, tenant_id: uuid.UUID, after: uuid.UUID | None, limit: int
    ) -> list[_Row]:
        c = self.table.c
        query = select(*(c[name] for name in self.columns)).where(c.tenant_id == tenant_id)
        if after is not None:
            query = query.where(c.id > after)
        rows = session.execute(query.order_by(c.id).limit(limit)).all()
        return [_Row(row.id, bytes(row.wrapped_key), self.context(tenant_id, row)) for row in rows]

    def blobs(
        self, session: Session, tenant_id: uuid.UUID, after: uuid.UUID | None, limit: int
    ) -> list[tuple[uuid.UUID, bytes]]:
        """Ids and wrapped keys only: what a census needs (no contexts to build)."""
        c = self.table.c
        query = select(c.id, c.wrapped_key).where(c.tenant_id == tenant_id)
        if after is not None:
            query = query.where(c.id > after)
        rows = session.execute(query.order_by(c.id).limit(limit)).all()
        return [(row_id, bytes(blob)) for row_id, blob in rows]


def _data_key_context(tenant_id: uuid.UUID, row: Any) -> str:
    return data_key_context(tenant_id, row.subject_type, row.subject_id, row.id)


def _index_key_context(tenant_id: uuid.UUID, row: Any) -> str:
    return index_key_context(tenant_id, IndexKind(row.kind), row.generation)


KEY_TABLES: Final = (
    _KeyTable(
        "data_keys",
        "data",
        DataKeyRecord.__table__,  # type: ignore[arg-type]
        ("id", "wrapped_key", "subject_type", "subject_id"),
        _data_key_context,
    ),
    _KeyTable(
        "index_keys",
        "index",
        IndexKeyRecord.__table__,  # type: ignore[arg-type]
        ("id", "wrapped_key", "kind", "generation"),
        _index_key_context,
    ),
)


@dataclass(frozen=True, slots=True)
class KeyStore:
    """Where the wrapped keys are: the organizations, and sessions bound to each of them
    (row-level security on PostgreSQL), plus sessions for tenant-less audit events."""

    tenants: Sequence[uuid.UUID]
    sessions_for: SessionsFor
    log_sessions: sessionmaker[Session]


@dataclass(slots=True)
class Census:
    """How many wrapped keys are under each root key version (labels), and how many are not
    under the active one."""

    by_version: Counter[str] = field(default_factory=Counter)
    total: int = 0
    not_current: int = 0


@dataclass(slots=True)
class RewrapReport:
    rewrapped: int = 0
    """Keys now under the active version, rewritten by this run."""
    changed_meanwhile: int = 0
    """Keys erased or rewritten by someone else between the read and the update: left alone."""
    batches: int = 0
    remaining: int = 0
    """Keys still not under the active version when the run ended (0: the job is complete)."""

    @property
    def complete(self) -> bool:
        return self.remaining == 0


def _pages(store: KeyStore) -> Iterator[tuple[_KeyTable, uuid.UUID]]:
    for tenant_id in store.tenants:
        for key_table in KEY_TABLES:
            yield key_table, tenant_id


def census(store: KeyStore, provider: KeyProvider, batch_size: int = 10_000) -> Census:
    """Count the wrapped keys per root key version (a read-only scan; no key is unwrapped)."""
    result = Census()
    for key_table, tenant_id in _pages(store):
        after: uuid.UUID | None = None
        while True:
            with store.sessions_for(tenant_id)() as session:
                rows = key_table.blobs(session, tenant_id, after, batch_size)
            if not rows:
                break
            after = rows[-1][0]
            for _, blob in rows:
                result.total += 1
                result.by_version[_version_label(provider, blob)] += 1
                if not provider.is_current(blob):
                    result.not_current += 1
    return result


def _version_label(provider: KeyProvider, wrapped: bytes) -> str:
    try:
        return provider.version_of(wrapped)
    except KeyProviderError:
        return UNKNOWN_VERSION


def rewrap(
    store: KeyStore,
    provider: KeyProvider,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Progress | None = None,
    job: str = REWRAP_JOB,
    context: AuditContext | None = None,
) -> RewrapReport:
    """Rewrap every key not under ``provider``'s active version; see the module docstring.

    ``on_progress(n)`` is called after each committed page with the keys it rewrote. Ends
    with a KEYS_REWRAP_COMPLETE event when no key is left under an older version.
    """
    if batch_size < 1:
        raise ValueError("the batch size must be at least 1")
    principal = SystemPrincipal(f"cli:{job}")
    report = RewrapReport()
    for key_table, tenant_id in _pages(store):
        sessions = store.sessions_for(tenant_id)
        after: uuid.UUID | None = None
        while True:
            with sessions() as session:
                rows = key_table.page(session, tenant_id, after, batch_size)
            if not rows:
                break
            after = rows[-1].id
            stale = [row for row in rows if not provider.is_current(row.wrapped)]
            if not stale:
                continue
            # No transaction is held while the provider works (Transit is remote); the
            # conditional update below makes the read-then-write safe.
            fresh = provider.rewrap_many([(row.wrapped, row.context) for row in stale])
            with transaction(sessions) as session:
                done = _store_page(session, key_table, tenant_id, provider.name, stale, fresh)
                skipped = len(stale) - done
                AuditTrail(session, principal, context).record(
                    AuditAction.KEYS_REWRAP_BATCH,
                    tenant_id=tenant_id,
                    target_type=ORGANIZATION_TARGET,
                    target_id=tenant_id,
                    purpose=f"{job}/{key_table.short}/r:{done}/s:{skipped}",
                )
            report.rewrapped += done
            report.changed_meanwhile += skipped
            report.batches += 1
            if on_progress is not None:
                on_progress(len(stale))
    report.remaining = census(store, provider).not_current
    if report.complete:
        with transaction(store.log_sessions) as session:
            AuditTrail(session, principal, context).record(
                AuditAction.KEYS_REWRAP_COMPLETE,
                tenant_id=None,
                target_type="key-provider",
                purpose=f"{job}/r:{report.rewrapped}/s:{report.changed_meanwhile}",
            )
    return report


def _store_page(
    session: Session,
    key_table: _KeyTable,
    tenant_id: uuid.UUID,
    provider_name: str,
    stale: Sequence[_Row],
    fresh: Sequence[bytes],
) -> int:
    """Write each new blob only over the blob it replaces, in ``tenant_id``'s rows only (no
    row-level security on SQLite); returns how many rows took it (a row erased or changed
    since it was read keeps its state)."""
    c = key_table.table.c
    statement = (
        update(key_table.table)
        .where(
            c.tenant_id == tenant_id,
            c.id == bindparam("row_id"),
            c.wrapped_key == bindparam("old_blob"),
        )
        .values(wrapped_key=bindparam("new_blob"), provider=provider_name)
    )
    written = {row.id: blob for row, blob in zip(stale, fresh, strict=True)}
    session.connection().execute(
        statement,
        [{"row_id": row.id, "old_blob": row.wrapped, "new_blob": written[row.id]} for row in stale],
    )
    # Count the rows that hold their new blob now (executemany row counts are not portable).
    stored = session.execute(
        select(c.id, c.wrapped_key).where(c.tenant_id == tenant_id, c.id.in_(list(written)))
    ).all()
    return sum(1 for row_id, blob in stored if bytes(blob) == written[row_id])


def migrate(
    store: KeyStore,
    source: KeyProvider,
    target: KeyProvider,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Progress | None = None,
    context: AuditContext | None = None,
) -> RewrapReport:
    """Move every wrapped key to ``target``: those ``target`` does not own are unwrapped by
    ``source`` and wrapped by ``target``, in the same resumable batches as ``rewrap``.

    Ends with a KEYS_PROVIDER_MIGRATE event (counts and provider names only) once every key
    is under ``target``'s active version. Refused (``KeyProviderError``, by ``KeyChain``)
    between two providers whose blobs cannot be told apart, such as two Transit keys.
    """
    chain = KeyChain(target, [source])
    report = rewrap(
        store, chain, batch_size=batch_size, on_progress=on_progress, job=MIGRATE_JOB,
        context=context,
    )  # fmt: skip
    if report.complete:
        with transaction(store.log_sessions) as session:
            AuditTrail(session, SystemPrincipal(f"cli:{MIGRATE_JOB}"), context).record(
                AuditAction.KEYS_PROVIDER_MIGRATE,
                tenant_id=None,
                target_type="key-provider",
                purpose=f"{MIGRATE_JOB}/{source.name}-to-{target.name}/r:{report.rewrapped}",
            )
    return report
