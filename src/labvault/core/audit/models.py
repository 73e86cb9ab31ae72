"""Audit tables: the events, their Merkle tree, and signed checkpoints.

Events are inserted by the transaction whose access they record and are never updated
afterwards, except once by the sequencer, which gives each its position (``seq``), its leaf
hash and its seal. See ``labvault.core.audit.sequencer`` for the ordering.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, Index, Integer, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, RawBytes


class AuditEvent(Base):
    """One access or authentication event. Never a personal value: ids, tags and hashes only."""

    __tablename__ = "audit_events"
    __table_args__ = (
        # Partial: the pending query must not pick it and sort the whole backlog.
        Index(
            "ix_audit_events_seq",
            "seq",
            unique=True,
            sqlite_where=text("seq IS NOT NULL"),
            postgresql_where=text("seq IS NOT NULL"),
        ),
        Index(
            "ix_audit_events_pending",
            "occurred_us",
            "id",
            sqlite_where=text("seq IS NULL"),
            postgresql_where=text("seq IS NULL"),
        ),
        Index("ix_audit_events_target", "target_type", "target_id", "occurred_us"),
        Index("ix_audit_events_actor", "actor_id", "occurred_us"),
        Index("ix_audit_events_occurred_us", "occurred_us"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    occurred_us: Mapped[int] = mapped_column(BigInteger)
    """Microseconds since the Unix epoch, UTC: one exact, portable form for hashing."""
    tenant_id: Mapped[uuid.UUID | None]
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(128))
    actor_role: Mapped[str | None] = mapped_column(String(32))
    actor_site_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[uuid.UUID | None]
    purpose: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_hash: Mapped[str | None] = mapped_column(String(32))
    seq: Mapped[int | None] = mapped_column(BigInteger)
    leaf_hash: Mapped[bytes | None] = mapped_column(RawBytes)
    seal: Mapped[bytes | None] = mapped_column(RawBytes)

    @property
    def occurred_at(self) -> dt.datetime:
        return from_micros(self.occurred_us)


class AuditTreeNode(Base):
    """Hashes of complete subtrees at levels 4, 8, 12...: proofs read O(log n) of them."""

    __tablename__ = "audit_tree_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(RawBytes)


class AuditCheckpoint(Base):
    """A signed statement of the tree's size and root at one moment."""

    __tablename__ = "audit_checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(RawBytes)
    signed_us: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[bytes] = mapped_column(RawBytes)


class AuditLogState(Base):
    """The single row the sequencer locks: how many events are in the tree."""

    __tablename__ = "audit_log_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    sequenced_us: Mapped[int] = mapped_column(BigInteger)


def to_micros(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("naive datetimes are not recorded; use an aware UTC datetime")
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
