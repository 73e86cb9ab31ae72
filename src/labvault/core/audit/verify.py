"""``labvault audit verify``: recompute the whole log and say where it was tampered with.

Checks, in one pass over the events in sequence order:
- every checkpoint's signature, in the database and at the witness, and that the two agree;
- every event's leaf hash recomputed from its content, and its seal (which binds the leaf
  hash to the event's position) under the seal key, which is never stored: an edited,
  inserted or moved event is named at once;
- positions without gaps: a deleted event is named by the gap it leaves;
- the tree root recomputed at every checkpoint's size equals the signed root;
- the log is at least as long as the largest checkpoint: a truncated tail is named.
Verification stops at the first inconsistent event, since what follows is reported against
a log already known to be altered.
"""

from __future__ import annotations

import enum
import hmac
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labvault.core.audit.checkpoints import Checkpoint, CheckpointError, TrustedKeys
from labvault.core.audit.events import CANONICAL_COLUMNS, encode_event, is_well_formed
from labvault.core.audit.merkle import RootAccumulator, leaf_hash
from labvault.core.audit.models import AuditCheckpoint, AuditEvent, AuditLogState
from labvault.core.audit.sequencer import STATE_ID, checkpoint_of, seal
from labvault.core.audit.witness import AuditWitness, WitnessError

FETCH_SIZE = 20_000
RELOCATION_WINDOW = 1000


class Tampering(enum.StrEnum):
    MODIFIED = "modified"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    MALFORMED = "malformed"
    CHECKPOINT = "checkpoint"
    WITNESS = "witness"
    ROOT = "root"


_LOG_LEVEL = {Tampering.CHECKPOINT, Tampering.WITNESS}


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Tampering
    message: str
    position: int | None = None
    event_id: uuid.UUID | None = None


@dataclass
class VerifyReport:
    events: int = 0
    checkpoints: int = 0
    witnessed: int = 0
    pending: int = 0
    unanchored: int = 0
    """Sequenced events after the last checkpoint: covered by their seals only."""
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_log(
    session: Session,
    trusted: TrustedKeys,
    seal_keys: list[bytes],
    witness: AuditWitness | None,
    on_progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Verify everything; ``on_progress(done, total)`` is called every few thousand events."""
    report = VerifyReport()
    anchors = _anchors(session, trusted, witness, report)
    state_size = session.scalar(select(AuditLogState.tree_size).where(AuditLogState.id == STATE_ID))
    total = (
        session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_not(None))
        )
        or 0
    )
    report.pending = (
        session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None)))
        or 0
    )
    accumulator = RootAccumulator()
    sizes = sorted(anchors)
    next_anchor = 0
    while next_anchor < len(sizes) and sizes[next_anchor] == 0:
        next_anchor += 1
    primary, *others = seal_keys
    for seq, stored_leaf, stored_seal, event_id, fields in _events(session):
        expected = accumulator.size
        if seq != expected:
            report.findings.append(_gap(seq, expected, event_id))
            break
        encoded = encode_event(fields)
        leaf = leaf_hash(encoded)
        sealed = bytes(stored_seal) if stored_seal is not None else b""
        if not is_well_formed(encoded):
            report.findings.append(
                Finding(
                    Tampering.MALFORMED,
                    f"event {event_id} at position {seq} holds a field no recorded event can "
                    "hold (written behind the application's back)",
                    seq,
                    event_id,
                )
            )
            break
        if not _sealed(primary, others, seq, leaf, sealed):
            report.findings.append(
                _unsealed(primary, others, seq, event_id, leaf, stored_leaf, sealed)
            )
            break
        accumulator.push(leaf)
        size = accumulator.size
        if size % 5000 == 0 and on_progress is not None:
            on_progress(size, total)
        rewritten = False
        while next_anchor < len(sizes) and sizes[next_anchor] == size:
            if not hmac.compare_digest(accumulator.root(), anchors[size].root_hash):
                rewritten = True
                report.findings.append(
                    Finding(
                        Tampering.ROOT,
                        f"the tree of the first {size} events does not have the signed root of "
                        "its checkpoint although every event carries a valid seal: the log was "
                        "rewritten by someone holding the seal key",
                        size - 1,
                    )
                )
            next_anchor += 1
        if rewritten:
            break
    stopped = any(f.kind not in _LOG_LEVEL for f in report.findings)
    report.events = accumulator.size
    if on_progress is not None:
        on_progress(accumulator.size, total)
    if not stopped:
        _check_tail(report, accumulator.size, sizes, state_size, session)
    last_anchor = max(sizes, default=0)
    report.unanchored = max(0, accumulator.size - last_anchor)
    return report


def _events(
    session: Session,
) -> Iterator[tuple[int, bytes | None, bytes | None, uuid.UUID, list[str]]]:
    result = session.execute(
        select(
            AuditEvent.seq, AuditEvent.leaf_hash, AuditEvent.seal, AuditEvent.id, *CANONICAL_COLUMNS
        )
        .where(AuditEvent.seq.is_not(None))
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=FETCH_SIZE)
    )
    for row in result:
        seq, stored_leaf, stored_seal, event_id, *fields = row
        yield cast(int, seq), stored_leaf, stored_seal, event_id, fields


def _sealed(primary: bytes, others: list[bytes], seq: int, leaf: bytes, stored: bytes) -> bool:
    if hmac.compare_digest(seal(primary, seq, leaf), stored):
        return True
    return any(hmac.compare_digest(seal(key, seq, leaf), stored) for key in others)


def _unsealed(
    primary: bytes,
    others: list[bytes],
    seq: int,
    event_id: uuid.UUID,
    leaf: bytes,
    stored_leaf: bytes | None,
    stored_seal: bytes,
) -> Finding:
    if stored_leaf is not None and not hmac.compare_digest(bytes(stored_leaf), leaf):
        return Finding(
            Tampering.MODIFIED,
            f"event {event_id} at position {seq} was modified after it was recorded "
            "(its content no longer matches its hash)",
            seq,
            event_id,
        )
    for other in range(max(0, seq - RELOCATION_WINDOW), seq + RELOCATION_WINDOW + 1):
        if other != seq and _sealed(primary, others, other, leaf, stored_seal):
            return Finding(
                Tampering.REORDERED,
                f"event {event_id} sits at position {seq} but was sealed at position {other}: "
                "events were reordered, or deleted or inserted before it and the log renumbered",
                seq,
                event_id,
            )
    return Finding(
        Tampering.INSERTED,
        f"event {event_id} at position {seq} was not sealed by labvault: inserted, or "
        "modified with its hash recomputed",
        seq,
        event_id,
    )


def _gap(seq: int, expected: int, event_id: uuid.UUID) -> Finding:
    if seq > expected:
        missing = f"{expected}" if seq == expected + 1 else f"{expected} to {seq - 1}"
        return Finding(
            Tampering.DELETED,
            f"the event(s) at position {missing} were deleted; the next event is {event_id} "
            f"at position {seq}",
            expected,
            event_id,
        )
    return Finding(
        Tampering.INSERTED,
        f"event {event_id} claims position {seq}, which another event already holds",
        seq,
        event_id,
    )


def _check_tail(
    report: VerifyReport,
    size: int,
    anchors: list[int],
    state_size: int | None,
    session: Session,
) -> None:
    largest = max(anchors, default=0)
    if largest > size:
        last = session.scalar(select(AuditEvent.id).where(AuditEvent.seq == size - 1))
        after = f"after event {last} at position {size - 1}" if last else "entirely"
        report.findings.append(
            Finding(
                Tampering.TRUNCATED,
                f"the log was truncated {after}: a signed checkpoint covers {largest} events, "
                f"the database holds {size}",
                size,
                last,
            )
        )
    elif state_size is not None and state_size != size:
        report.findings.append(
            Finding(
                Tampering.TRUNCATED if state_size > size else Tampering.INSERTED,
                f"the log state counts {state_size} sequenced events, the database holds {size}",
                min(size, state_size),
            )
        )


def _anchors(
    session: Session,
    trusted: TrustedKeys,
    witness: AuditWitness | None,
    report: VerifyReport,
) -> dict[int, Checkpoint]:
    """Checkpoints whose signatures verify, from the database and the witness, by size."""
    anchors: dict[int, Checkpoint] = {}
    stored = [
        checkpoint_of(row)
        for row in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size))
    ]
    report.checkpoints = len(stored)
    for checkpoint in stored:
        try:
            trusted.verify(checkpoint)
        except CheckpointError as exc:
            report.findings.append(
                Finding(
                    Tampering.CHECKPOINT,
                    f"{exc} (the checkpoint was forged or replaced in the database)",
                    checkpoint.tree_size,
                )
            )
            continue
        anchors[checkpoint.tree_size] = checkpoint
    if witness is None:
        return anchors
    try:
        witnessed = witness.checkpoints()
    except WitnessError as exc:
        report.findings.append(Finding(Tampering.WITNESS, str(exc)))
        return anchors
    report.witnessed = len(witnessed)
    for checkpoint in witnessed:
        try:
            trusted.verify(checkpoint)
        except CheckpointError as exc:
            report.findings.append(Finding(Tampering.WITNESS, f"witness: {exc}"))
            continue
        in_database = anchors.get(checkpoint.tree_size)
        if in_database is None:
            if not any(f.position == checkpoint.tree_size for f in report.findings):
                report.findings.append(
                    Finding(
                        Tampering.CHECKPOINT,
                        f"the witnessed checkpoint at size {checkpoint.tree_size} is missing "
                        "from the database (deleted)",
                        checkpoint.tree_size,
                    )
                )
        elif in_database.root_hash != checkpoint.root_hash:
            report.findings.append(
                Finding(
                    Tampering.CHECKPOINT,
                    f"the checkpoint at size {checkpoint.tree_size} differs from the one the "
                    "witness holds (replaced)",
                    checkpoint.tree_size,
                )
            )
        anchors[checkpoint.tree_size] = checkpoint
    return anchors
