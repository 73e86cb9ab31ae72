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
import multiprocessing
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session

from labvault.core import tenancy
from labvault.core.audit.checkpoints import Checkpoint, CheckpointError, TrustedKeys
from labvault.core.audit.events import CANONICAL_COLUMNS, EVENT_HEADER, is_well_formed
from labvault.core.audit.merkle import HASH_SIZE, RootAccumulator
from labvault.core.audit.models import AuditCheckpoint, AuditEvent, AuditLogState
from labvault.core.audit.sequencer import SEAL_LABEL, STATE_ID, EventSealer, checkpoint_of
from labvault.core.audit.witness import AuditWitness, WitnessError

if TYPE_CHECKING:
    from labvault.core.crypto.providers import KeyProviderConfig

FETCH_SIZE = 20_000
RANGE_SIZE = 100_000
PARALLEL_FROM_EVENTS = 300_000
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


@dataclass(frozen=True, slots=True)
class ParallelScan:
    """How worker processes reach the log: where the database and the key provider are.

    Each worker opens its own connection and derives the seal keys from the provider itself:
    no key crosses a process boundary.
    """

    database_url: str
    key_provider: KeyProviderConfig
    workers: int
    scope: str | None = None
    """The row-level security scope its connections take (``tenancy.AUDIT_LOG_SCOPE``)."""


def verify_log(
    session: Session,
    trusted: TrustedKeys,
    seal_keys: list[bytes],
    witness: AuditWitness | None,
    on_progress: Callable[[int, int], None] | None = None,
    parallel: ParallelScan | None = None,
) -> VerifyReport:
    """Verify everything; ``on_progress(done, total)`` is called as events are checked.

    Events are checked in ranges of positions (by worker processes with ``parallel``, for
    large logs); this process folds the ranges' leaf hashes into the tree in order and checks
    every checkpoint's root, so the first inconsistency is the one reported either way.
    """
    report = VerifyReport()
    anchors = _anchors(session, trusted, witness, report)
    state_size = session.scalar(select(AuditLogState.tree_size).where(AuditLogState.id == STATE_ID))
    sequenced = select(func.count(), func.max(AuditEvent.seq)).where(AuditEvent.seq.is_not(None))
    total, last_seq = session.execute(sequenced).one()
    report.pending = (
        session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None)))
        or 0
    )
    end = 0 if last_seq is None else last_seq + 1
    ranges = [(start, min(start + RANGE_SIZE, end)) for start in range(0, end, RANGE_SIZE)]
    if parallel is not None and parallel.workers > 1 and total >= PARALLEL_FROM_EVENTS:
        scans: Iterator[tuple[bytes, Finding | None]] = _scan_in_workers(parallel, ranges)
    else:
        sealers = [EventSealer(key) for key in seal_keys]
        connection = session.connection()
        scans = (_scan(connection, sealers, start, stop) for start, stop in ranges)
    accumulator = RootAccumulator()
    sizes = sorted(size for size in anchors if size > 0)
    next_index = 0
    next_size = sizes[0] if sizes else -1
    stopped = False
    for leaves, finding in scans:
        for offset in range(0, len(leaves), HASH_SIZE):
            accumulator.push(leaves[offset : offset + HASH_SIZE])
            if accumulator.size != next_size:
                continue
            size = next_size
            next_index += 1
            next_size = sizes[next_index] if next_index < len(sizes) else -1
            if not hmac.compare_digest(accumulator.root(), anchors[size].root_hash):
                report.findings.append(
                    Finding(
                        Tampering.ROOT,
                        f"the tree of the first {size} events does not have the signed root of "
                        "its checkpoint although every event carries a valid seal: the log was "
                        "rewritten by someone holding the seal key",
                        size - 1,
                    )
                )
                stopped = True
                break
        if on_progress is not None:
            on_progress(accumulator.size, total)
        if stopped:
            break
        if finding is not None:
            report.findings.append(finding)
            stopped = True
            break
    report.events = accumulator.size
    if on_progress is not None:
        on_progress(accumulator.size, total)
    if not stopped:
        _check_tail(report, accumulator.size, sizes, state_size, session)
    report.unanchored = max(0, accumulator.size - max(sizes, default=0))
    return report


def _scan(
    connection: Connection, sealers: list[EventSealer], start: int, stop: int
) -> tuple[bytes, Finding | None]:
    """Check the events at positions ``[start, stop)``: their leaf hashes, up to the first
    inconsistent one, and that one as a finding."""
    query = (
        select(AuditEvent.seq, AuditEvent.seal, *CANONICAL_COLUMNS)
        .where(AuditEvent.seq >= start, AuditEvent.seq < stop)
        .order_by(AuditEvent.seq)
    )
    leaves: list[bytes] = []
    append = leaves.append
    primary = sealers[0]
    expected = start
    finding: Finding | None = None
    header = EVENT_HEADER + "\n"
    for row in connection.execution_options(yield_per=FETCH_SIZE).execute(query):
        seq, stored, *fields = row
        if seq != expected:
            finding = _gap(seq, expected, _event_id(fields))
            break
        encoded = (header + "\n".join(fields)).encode("utf-8", "surrogatepass")
        leaf = sha256(b"\x00" + encoded).digest()
        if not is_well_formed(encoded):
            event_id = _event_id(fields)
            finding = Finding(
                Tampering.MALFORMED,
                f"event {event_id} at position {seq} holds a field no recorded event can "
                "hold (written behind the application's back)",
                seq,
                event_id,
            )
            break
        sealed = bytes(stored) if stored is not None else b""
        if not hmac.compare_digest(primary(seq, leaf), sealed) and not _sealed(
            sealers[1:], seq, leaf, sealed
        ):
            finding = _unsealed(connection, sealers, seq, _event_id(fields), leaf, sealed)
            break
        append(leaf)
        expected += 1
    else:
        if expected < stop:
            following = connection.execute(
                select(AuditEvent.seq, AuditEvent.id)
                .where(AuditEvent.seq >= expected)
                .order_by(AuditEvent.seq)
            ).first()
            if following is not None:
                finding = _gap(following[0], expected, following[1])
    return b"".join(leaves), finding


def _event_id(fields: list[str]) -> uuid.UUID | None:
    try:
        return uuid.UUID(fields[0])
    except ValueError:
        return None


def _sealed(sealers: list[EventSealer], seq: int, leaf: bytes, stored: bytes) -> bool:
    return any(hmac.compare_digest(sealer(seq, leaf), stored) for sealer in sealers)


def _unsealed(
    connection: Connection,
    sealers: list[EventSealer],
    seq: int,
    event_id: uuid.UUID | None,
    leaf: bytes,
    stored_seal: bytes,
) -> Finding:
    stored_leaf = connection.execute(
        select(AuditEvent.leaf_hash).where(AuditEvent.seq == seq, AuditEvent.id == event_id)
    ).scalar()
    if stored_leaf is not None and not hmac.compare_digest(bytes(stored_leaf), leaf):
        return Finding(
            Tampering.MODIFIED,
            f"event {event_id} at position {seq} was modified after it was recorded "
            "(its content no longer matches its hash)",
            seq,
            event_id,
        )
    for other in range(max(0, seq - RELOCATION_WINDOW), seq + RELOCATION_WINDOW + 1):
        if other != seq and _sealed(sealers, other, leaf, stored_seal):
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


_worker_engine: Engine | None = None
_worker_sealers: list[EventSealer] = []
_worker_scope: str | None = None


def _start_worker(parallel: ParallelScan) -> None:
    global _worker_engine, _worker_sealers, _worker_scope  # one pool and key set per worker
    from labvault.core.crypto.providers import load_key_provider
    from labvault.core.db import create_db_engine

    provider = load_key_provider(parallel.key_provider)
    _worker_sealers = [EventSealer(key.reveal()) for key in provider.derive_keys(SEAL_LABEL)]
    _worker_engine = create_db_engine(parallel.database_url)
    _worker_scope = parallel.scope


def _scan_range_in_worker(bounds: tuple[int, int]) -> tuple[bytes, Finding | None]:
    assert _worker_engine is not None, "worker started without an engine"
    with _worker_engine.connect() as connection:
        if _worker_scope is not None:
            tenancy.apply(connection, None, _worker_scope)
        return _scan(connection, _worker_sealers, *bounds)


def _scan_in_workers(
    parallel: ParallelScan, ranges: list[tuple[int, int]]
) -> Iterator[tuple[bytes, Finding | None]]:
    # forkserver: workers start clean, without this process's connections or keys.
    context = multiprocessing.get_context("forkserver")
    with context.Pool(parallel.workers, initializer=_start_worker, initargs=(parallel,)) as pool:
        yield from pool.imap(_scan_range_in_worker, ranges)


def _gap(seq: int | None, expected: int, event_id: uuid.UUID | None) -> Finding:
    if seq is not None and seq > expected:
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
