"""Builds real audit logs for the integration tests, and tampers with them as an attacker would.

The attacker of these tests has full access to the database (owner rights: any UPDATE,
DELETE or INSERT, even dropping an index) and knows every algorithm, SHA-256 included, but
holds neither the key provider's root key (so neither the seal key nor the signing key)
nor write access to the witness.
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import Table, delete, insert, select, text, update
from sqlalchemy.orm import Session

from helpers import app_url, owner_url
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import CANONICAL_COLUMNS, AuditTrail, Outcome, encode_event
from labvault.core.audit.merkle import STORED_LEVEL_STRIDE, MemoryNodeStore, leaf_hash
from labvault.core.audit.models import (
    AuditCheckpoint,
    AuditEvent,
    AuditLogState,
    AuditTreeNode,
)
from labvault.core.audit.sequencer import STATE_ID
from labvault.core.audit.verify import Finding, Tampering, VerifyReport, verify_log
from labvault.core.config import Settings
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import create_db_engine, transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime

CHECKPOINT_EVERY = 100
"""Small, so that a log of ~1,000 events has ~10 checkpoints."""

TENANT = uuid.UUID("00000000-0000-4000-8000-00000000a0d1")
_EVENTS = cast(Table, AuditEvent.__table__)

# A few kinds of events, so that edits have real values to turn into other real values.
_KINDS: tuple[tuple[str, AuditAction, str, Outcome], ...] = (
    ("test:reader", AuditAction.PATIENT_RECORD_READ, "care", Outcome.SUCCESS),
    ("test:creator", AuditAction.PATIENT_RECORD_CREATE, "import", Outcome.SUCCESS),
    ("test:snoop", AuditAction.PATIENT_RECORD_READ, "test", Outcome.DENIED),
)


def make_settings(
    data_dir: Path,
    database_url: str,
    *,
    create_key: bool = True,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> Settings:
    settings = Settings(
        data_dir=data_dir,
        database_url=app_url(database_url),
        admin_database_url=owner_url(database_url),
        audit_checkpoint_events=checkpoint_every,
        audit_checkpoint_seconds=3600,
    )
    if create_key:
        FileKeyProvider.create(settings.key_file)
    return settings


def record(runtime: Runtime, count: int, *, batch: int = 50) -> list[uuid.UUID]:
    """Record ``count`` events in transactions of ``batch`` events (one kind per batch)."""
    recorded: list[uuid.UUID] = []
    for number, start in enumerate(range(0, count, batch)):
        actor, action, purpose, outcome = _KINDS[number % len(_KINDS)]
        size = min(batch, count - start)
        with transaction(runtime.tenant_sessions(TENANT)) as session:
            recorded += AuditTrail(session, SystemPrincipal(actor)).record_many(
                action,
                tenant_id=TENANT,
                target_type="patient",
                target_ids=[uuid.uuid4() for _ in range(size)],
                purpose=purpose,
                outcome=outcome,
            )
    return recorded


def build(runtime: Runtime, count: int) -> None:
    """A log of ``count`` sequenced events, checkpointed every CHECKPOINT_EVERY, witnessed."""
    record(runtime, count)
    runtime.audit_log.advance(force_checkpoint=True)


def events_by_position(runtime: Runtime) -> list[uuid.UUID]:
    with runtime.audit_sessions() as session:
        rows = session.execute(
            select(AuditEvent.seq, AuditEvent.id)
            .where(AuditEvent.seq.is_not(None))
            .order_by(AuditEvent.seq)
        ).all()
    return [event_id for _, event_id in rows]


def checkpoint_sizes(runtime: Runtime) -> list[int]:
    with runtime.audit_sessions() as session:
        return list(
            session.scalars(select(AuditCheckpoint.tree_size).order_by(AuditCheckpoint.tree_size))
        )


def state_size(runtime: Runtime) -> int:
    with runtime.audit_sessions() as session:
        size = session.scalar(select(AuditLogState.tree_size).where(AuditLogState.id == STATE_ID))
    assert size is not None
    return size


def verify(runtime: Runtime) -> VerifyReport:
    audit_log = runtime.audit_log
    with runtime.audit_sessions() as session:
        return verify_log(session, audit_log.trusted_keys, audit_log.seal_keys(), audit_log.witness)


def event_findings(report: VerifyReport) -> list[Finding]:
    """Findings about events (not about checkpoints or the witness)."""
    return [f for f in report.findings if f.kind not in {Tampering.CHECKPOINT, Tampering.WITNESS}]


# -- the attacker ------------------------------------------------------------------------


@dataclass
class Attacker:
    """Full write access to the database (the owner's), nothing else."""

    runtime: Runtime

    def session(self) -> AbstractContextManager[Session]:
        return transaction(self.runtime.admin_sessions)

    def set_event(self, position: int, /, **values: Any) -> None:
        with self.session() as session:
            done = session.execute(
                update(_EVENTS).where(_EVENTS.c.seq == position).values(**values)
            )
            assert done.rowcount == 1  # type: ignore[attr-defined]

    @staticmethod
    def _event_at(session: Session, seq: int) -> uuid.UUID | None:
        return session.scalar(select(AuditEvent.id).where(AuditEvent.seq == seq))

    def canonical_leaf(self, session: Session, event_id: uuid.UUID) -> bytes:
        """The leaf hash of an event's current content, as the sequencer would compute it."""
        fields = session.execute(select(*CANONICAL_COLUMNS).where(_EVENTS.c.id == event_id)).one()
        return leaf_hash(encode_event(list(fields)))

    def recompute_leaf(self, seq: int) -> bytes:
        with self.session() as session:
            event_id: uuid.UUID | None = session.scalar(
                select(_EVENTS.c.id).where(_EVENTS.c.seq == seq)
            )
            assert event_id is not None
            leaf = self.canonical_leaf(session, event_id)
            session.execute(update(_EVENTS).where(_EVENTS.c.seq == seq).values(leaf_hash=leaf))
        return leaf

    def recompute_tree(self) -> None:
        """Rewrite every stored tree node from the stored leaf hashes (SHA-256 is public)."""
        with self.session() as session:
            leaves = [
                bytes(h)
                for h in session.scalars(
                    select(_EVENTS.c.leaf_hash)
                    .where(_EVENTS.c.seq.is_not(None))
                    .order_by(_EVENTS.c.seq)
                )
            ]
            store = MemoryNodeStore()
            store.append(leaves)
            session.execute(delete(AuditTreeNode))
            rows = []
            level = STORED_LEVEL_STRIDE
            while (count := len(leaves) >> level) > 0:
                rows += [
                    {"level": level, "index": i, "hash": h}
                    for i, h in enumerate(store.stored_nodes(level, 0, count))
                ]
                level += STORED_LEVEL_STRIDE
            if rows:
                session.execute(insert(AuditTreeNode), rows)

    def shift(self, first: int, by: int) -> None:
        """Renumber every event at position >= first by ``by``, around the unique index."""
        with self.session() as session:
            session.execute(
                update(_EVENTS).where(_EVENTS.c.seq >= first).values(seq=-_EVENTS.c.seq - 1)
            )
            session.execute(
                update(_EVENTS).where(_EVENTS.c.seq < 0).values(seq=-_EVENTS.c.seq - 1 + by)
            )

    def delete_event(self, seq: int) -> uuid.UUID:
        with self.session() as session:
            event_id: uuid.UUID | None = session.scalar(
                select(_EVENTS.c.id).where(_EVENTS.c.seq == seq)
            )
            assert event_id is not None
            session.execute(delete(_EVENTS).where(_EVENTS.c.seq == seq))
        return event_id

    def set_state_size(self, size: int) -> None:
        with self.session() as session:
            session.execute(
                update(AuditLogState).where(AuditLogState.id == STATE_ID).values(tree_size=size)
            )

    def forge_event(self, seq: int, seal: bytes, **overrides: Any) -> uuid.UUID:
        """Insert a plausible event at ``seq``: real-looking fields, a correct leaf hash."""
        event_id = uuid.uuid4()
        with self.session() as session:
            template = session.execute(
                select(_EVENTS).where(_EVENTS.c.seq.is_not(None)).limit(1)
            ).one()
            values = dict(template._mapping)
            values.update(id=event_id, target_id=uuid.uuid4(), seq=seq, leaf_hash=None, seal=seal)
            values.update(overrides)
            session.execute(insert(_EVENTS).values(**values))
            leaf = self.canonical_leaf(session, event_id)
            session.execute(update(_EVENTS).where(_EVENTS.c.id == event_id).values(leaf_hash=leaf))
        return event_id

    def execute(self, statement: str, **params: Any) -> None:
        with self.session() as session:
            session.execute(text(statement), params)


# -- a built log, restored before each test ------------------------------------------------

AUDIT_TABLES: tuple[Table, ...] = tuple(
    cast(Table, model.__table__)
    for model in (AuditEvent, AuditTreeNode, AuditCheckpoint, AuditLogState)
)


class DatabaseServer(Protocol):
    """The part of the test suite's PostgresServer (tests/conftest.py) used here."""

    def new_database(self, *, migrated: bool = True) -> str: ...


@dataclass(frozen=True)
class BuiltLog:
    """A sequenced, checkpointed and witnessed log, and a snapshot to restore it from.

    Copying a PostgreSQL database per test is cheap, dropping it is not (each DROP DATABASE
    forces a checkpoint): tests share one database per backend and restore the audit tables
    from the snapshot, and each gets its own copy of the key file and the witness.
    """

    backend: str
    data_dir: Path
    """The key file and the witness (the database lives elsewhere)."""
    database_url: str
    ids: list[uuid.UUID]
    """Event ids by position."""
    rows: dict[str, list[dict[str, Any]]]


def new_database(backend: str, directory: Path, server: DatabaseServer | None) -> str:
    """The URL of an empty, migrated database (SQLite: a file in ``directory``)."""
    if backend == "sqlite":
        url = f"sqlite:///{directory / 'audit.sqlite3'}"
        engine = create_db_engine(url)
        upgrade(engine)
        engine.dispose()
        return url
    assert server is not None
    return server.new_database()


def snapshot(runtime: Runtime) -> dict[str, list[dict[str, Any]]]:
    with runtime.admin_engine.connect() as connection:
        return {
            table.name: [
                {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}
                for row in connection.execute(select(table)).mappings()
            ]
            for table in AUDIT_TABLES
        }


def build_log(backend: str, directory: Path, server: DatabaseServer | None, count: int) -> BuiltLog:
    data_dir = directory / "var"
    settings = make_settings(data_dir, new_database(backend, directory, server))
    runtime = Runtime(settings)
    try:
        build(runtime, count)
        ids = events_by_position(runtime)
        rows = snapshot(runtime)
    finally:
        runtime.close()
    return BuiltLog(backend, data_dir, settings.sqlalchemy_url, ids, rows)


def restore_log(built: BuiltLog, data_dir: Path) -> Settings:
    """The built log as it was, with a key file and witness of its own under ``data_dir``."""
    shutil.copytree(built.data_dir, data_dir, symlinks=True)
    engine = create_db_engine(owner_url(built.database_url))
    try:
        with engine.begin() as connection:
            for table in reversed(AUDIT_TABLES):
                connection.execute(delete(table))
            # A test may have dropped the unique index, as an attacker with owner rights can.
            connection.execute(
                text("CREATE UNIQUE INDEX IF NOT EXISTS ix_audit_events_seq ON audit_events (seq)")
            )
            for table in AUDIT_TABLES:
                connection.execute(insert(table), built.rows[table.name])
    finally:
        engine.dispose()
    return make_settings(data_dir, built.database_url, create_key=False)
