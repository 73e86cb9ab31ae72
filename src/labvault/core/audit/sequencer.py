"""The sequencer: gives committed events their place in the Merkle tree, and signs checkpoints.

Ordering. Writers never take a lock to record an event: they insert it, unsequenced, in
their own transaction, so concurrent requests on PostgreSQL never wait for one another on
the audit log. The sequencer alone numbers events. Under a lock on the single
``audit_log_state`` row (held by one sequencer at a time, never by writers) it takes the
committed events that have no position yet, in ``(occurred_us, id)`` order, and appends them
to the tree. The log's order is therefore *sequencing order*: an event is placed after every
event sequenced before it, and a transaction that commits late lands after events that
occurred later but committed sooner. Within one run, order is by time then id. Between its
commit and its sequencing (bounded by the checkpoint interval) an event is protected only by
the database; from sequencing on, by its seal (an HMAC of its position and leaf hash under
a key the provider derives) and by the next signed checkpoint.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from labvault.core.audit.checkpoints import Checkpoint, CheckpointSigner, TrustedKeys
from labvault.core.audit.events import CANONICAL_COLUMNS, encode_event
from labvault.core.audit.merkle import MerkleTree, leaf_hash, new_stored_nodes
from labvault.core.audit.models import (
    AuditCheckpoint,
    AuditEvent,
    AuditLogState,
    AuditTreeNode,
    to_micros,
)
from labvault.core.audit.witness import AuditWitness
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow

SEAL_LABEL = "labvault/v1|audit|event-seal"
STATE_ID = 1
_EVENTS = cast(Table, AuditEvent.__table__)
_NODES = cast(Table, AuditTreeNode.__table__)


class AuditLogCorruptError(Exception):
    """The stored tree does not hold together (a gap in positions, a missing node)."""


SEAL_PREFIX = b"labvault-audit-seal/1"


def seal(key: bytes, seq: int, leaf: bytes) -> bytes:
    """Binds an event's leaf hash to its position: a moved or inserted event will not check."""
    return hmac.digest(key, SEAL_PREFIX + seq.to_bytes(8, "big") + leaf, "sha256")


class EventSealer:
    """:func:`seal` with the key schedule and the prefix computed once, for long runs."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, SEAL_PREFIX, "sha256")

    def __repr__(self) -> str:
        return "EventSealer(key=**********)"

    def __reduce__(self) -> Any:
        raise TypeError("an event sealer holds a key and cannot be pickled")

    def __call__(self, seq: int, leaf: bytes) -> bytes:
        mac = self._base.copy()
        mac.update(seq.to_bytes(8, "big") + leaf)
        return mac.digest()


class DatabaseNodeStore:
    """:class:`NodeStore` over the audit tables, in one session's transaction."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        if stop <= start:
            return []
        rows = self._session.execute(
            select(AuditEvent.seq, AuditEvent.leaf_hash)
            .where(AuditEvent.seq >= start, AuditEvent.seq < stop)
            .order_by(AuditEvent.seq)
        ).all()
        hashes = [bytes(h) for _, h in rows if h is not None]
        if len(hashes) != stop - start:
            raise AuditLogCorruptError(f"audit events {start}..{stop - 1} are not all present")
        return hashes

    def stored_nodes(self, level: int, start: int, stop: int) -> list[bytes]:
        if stop <= start:
            return []
        rows = self._session.execute(
            select(AuditTreeNode.hash)
            .where(
                AuditTreeNode.level == level,
                AuditTreeNode.index >= start,
                AuditTreeNode.index < stop,
            )
            .order_by(AuditTreeNode.index)
        ).all()
        if len(rows) != stop - start:
            raise AuditLogCorruptError(f"audit tree nodes at level {level} are missing")
        return [bytes(h) for (h,) in rows]


@dataclasses.dataclass
class AdvanceReport:
    sequenced: int = 0
    checkpoints: list[Checkpoint] = dataclasses.field(default_factory=list)
    tree_size: int = 0


def latest_checkpoint(session: Session) -> Checkpoint | None:
    row = session.execute(
        select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1)
    ).scalar_one_or_none()
    return None if row is None else checkpoint_of(row)


def checkpoint_of(row: AuditCheckpoint) -> Checkpoint:
    return Checkpoint(
        row.tree_size, bytes(row.root_hash), row.signed_us, row.key_id, bytes(row.signature)
    )


def tree_size(session: Session) -> int:
    size = session.scalar(select(AuditLogState.tree_size).where(AuditLogState.id == STATE_ID))
    if size is None:
        raise AuditLogCorruptError("the audit log state row is missing")
    return size


class AuditLog:
    """Sequencing, checkpoints and the witness: the maintenance side of the audit log.

    ``advance`` is called by a background thread in the web app (every few seconds), at the
    end of every CLI command that recorded events, and by ``labvault audit checkpoint``.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        provider: KeyProvider,
        witness: AuditWitness,
        *,
        checkpoint_every_events: int = 1000,
        checkpoint_every_seconds: float = 5.0,
        clock: Callable[[], Any] = utcnow,
    ) -> None:
        if checkpoint_every_events < 1 or checkpoint_every_seconds <= 0:
            raise ValueError("checkpoint intervals must be positive")
        self._sessions = sessions
        self._witness = witness
        self._signer = CheckpointSigner.from_provider(provider)
        self._trusted = TrustedKeys.from_provider(provider)
        self._seal_key: Secret[bytes] = provider.derive_key(SEAL_LABEL)
        # Verifying needs the seal key of every root key version ever used (rotations).
        self._all_seal_keys = [self._seal_key, *provider.derive_keys(SEAL_LABEL)[1:]]
        self._every_events = checkpoint_every_events
        self._every_us = int(checkpoint_every_seconds * 1_000_000)
        self._clock = clock

    def __repr__(self) -> str:
        return f"AuditLog(witness={self._witness!r}, key_id={self._signer.key_id})"

    @property
    def witness(self) -> AuditWitness:
        return self._witness

    @property
    def trusted_keys(self) -> TrustedKeys:
        return self._trusted

    def seal_keys(self) -> list[bytes]:
        """The current seal key first, then those of older root key versions."""
        return [key.reveal() for key in self._all_seal_keys]

    def advance(self, *, force_checkpoint: bool = False) -> AdvanceReport:
        """Sequence every committed event, checkpoint when due, bring the witness up to date.

        Runs in transactions of at most ``checkpoint_every_events`` events, so a large
        backlog neither holds the lock for long nor leaves more than that many events
        between two checkpoints.
        """
        report = AdvanceReport()
        while not self._idle():
            with transaction(self._sessions) as session:
                sequenced, checkpoint, size = self._advance_once(session, force_checkpoint)
            report.sequenced += sequenced
            report.tree_size = size
            if checkpoint is not None:
                report.checkpoints.append(checkpoint)
            if sequenced < self._every_events:
                break
        if not report.sequenced and not report.checkpoints:
            with self._sessions() as session:
                report.tree_size = tree_size(session)
        self.sync_witness()
        return report

    def _idle(self) -> bool:
        """Nothing pending and the last checkpoint covers the tree: no need to take the lock
        (on SQLite, the database's write lock) once a second for nothing."""
        with self._sessions() as session:
            if session.scalar(select(AuditEvent.id).where(AuditEvent.seq.is_(None)).limit(1)):
                return False
            latest = latest_checkpoint(session)
            return tree_size(session) == (latest.tree_size if latest else 0)

    def _advance_once(
        self, session: Session, force_checkpoint: bool
    ) -> tuple[int, Checkpoint | None, int]:
        now_us = to_micros(self._clock())
        # The first statement writes the state row: on PostgreSQL it row-locks it until
        # commit, on SQLite it takes the database's write lock. Writers never touch it.
        locked = session.execute(
            update(AuditLogState).where(AuditLogState.id == STATE_ID).values(sequenced_us=now_us)
        )
        if locked.rowcount != 1:  # type: ignore[attr-defined]
            raise AuditLogCorruptError("the audit log state row is missing")
        old_size = tree_size(session)
        pending = session.execute(
            select(AuditEvent.id, *CANONICAL_COLUMNS)
            .where(AuditEvent.seq.is_(None))
            .order_by(AuditEvent.occurred_us, AuditEvent.id)
            .limit(self._every_events)
        ).all()
        size = old_size
        if pending:
            sealer = EventSealer(self._seal_key.reveal())
            updates = []
            for seq, (event_id, *fields) in enumerate(pending, start=old_size):
                leaf = leaf_hash(encode_event(fields))
                updates.append(
                    {"b_id": event_id, "b_seq": seq, "b_leaf": leaf, "b_seal": sealer(seq, leaf)}
                )
            session.execute(
                update(_EVENTS)
                .where(_EVENTS.c.id == bindparam("b_id"))
                .values(
                    seq=bindparam("b_seq"), leaf_hash=bindparam("b_leaf"), seal=bindparam("b_seal")
                ),
                updates,
            )
            size = old_size + len(pending)
            store = DatabaseNodeStore(session)
            nodes = new_stored_nodes(store, old_size, size)
            if nodes:
                session.execute(
                    insert(_NODES),
                    [{"level": lvl, "index": i, "hash": h} for lvl, i, h in nodes],
                )
            session.execute(
                update(AuditLogState).where(AuditLogState.id == STATE_ID).values(tree_size=size)
            )
        checkpoint = None
        latest = latest_checkpoint(session)
        last_size = latest.tree_size if latest else 0
        last_us = latest.signed_us if latest else 0
        if size > last_size and (
            force_checkpoint
            or size - last_size >= self._every_events
            or now_us - last_us >= self._every_us
        ):
            root = MerkleTree(DatabaseNodeStore(session), size).root()
            checkpoint = self._signer.sign(size, root, now_us)
            session.execute(
                insert(AuditCheckpoint),
                [
                    {
                        "tree_size": size,
                        "root_hash": root,
                        "signed_us": now_us,
                        "key_id": checkpoint.key_id,
                        "signature": checkpoint.signature,
                    }
                ],
            )
        return len(pending), checkpoint, size

    def sync_witness(self) -> int:
        """Give the witness every checkpoint it has not seen, each with its consistency proof.

        Checkpoints are committed before they are witnessed, so a crash in between only
        delays the witness: the next run catches up.
        """
        witnessed = self._witness.latest()
        after = witnessed.tree_size if witnessed else 0
        sent = 0
        with self._sessions() as session:
            rows = session.scalars(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.tree_size > after)
                .order_by(AuditCheckpoint.tree_size)
            ).all()
            previous = after
            store = DatabaseNodeStore(session)
            for row in rows:
                checkpoint = checkpoint_of(row)
                proof = (
                    MerkleTree(store, checkpoint.tree_size).consistency_proof(previous)
                    if previous > 0
                    else []
                )
                self._witness.append(checkpoint, proof)
                previous = checkpoint.tree_size
                sent += 1
        return sent

    def pending_count(self) -> int:
        with self._sessions() as session:
            return (
                session.scalar(
                    select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None))
                )
                or 0
            )
