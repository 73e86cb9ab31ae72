"""Writers and sequencers at once, on PostgreSQL: every event gets exactly one position.

Writers never wait on the audit log; sequencers take turns on the state row's lock. After
the dust settles the positions are 0..n-1 without a gap or a double, the state row counts
n, and the whole log (witness included) verifies.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from logbuilder import make_settings, record, verify
from sqlalchemy import func, select

from labvault.core.audit.checkpoints import Checkpoint
from labvault.core.audit.models import AuditCheckpoint, AuditEvent, AuditLogState
from labvault.core.audit.sequencer import STATE_ID, AuditLog
from labvault.core.audit.witness import AuditWitness
from labvault.core.runtime import Runtime

pytestmark = pytest.mark.pg

WRITERS = 4
TRANSACTIONS_PER_WRITER = 150
SEQUENCERS = 2
CHECKPOINT_EVERY = 20
"""Small, so that checkpoints (and witness appends) happen all the time."""


@pytest.fixture
def backend() -> str:
    """Concurrent writers need a server: SQLite serialises writers by locking the file."""
    return "postgresql"


def _runtime(tmp_path: Path, database_url: str) -> Runtime:
    runtime = Runtime(
        make_settings(tmp_path / "var", database_url, checkpoint_every=CHECKPOINT_EVERY)
    )
    runtime.audit_log  # noqa: B018 - built once, before the threads share it
    return runtime


def _run(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()


def _guarded(errors: list[BaseException], work: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    return run


def test_concurrent_writers_and_sequencers_give_each_event_one_position(
    database_url: str, tmp_path: Path
) -> None:
    runtime = _runtime(tmp_path, database_url)
    try:
        recorded: list[uuid.UUID] = []
        lock = threading.Lock()
        thread_errors: list[BaseException] = []
        sequencer_errors: list[Exception] = []
        writing = threading.Event()
        writing.set()
        attempts = [0] * SEQUENCERS

        def write(number: int) -> None:
            for transaction_number in range(TRANSACTIONS_PER_WRITER):
                ids = record(runtime, 1 + (number + transaction_number) % 3)
                with lock:
                    recorded.extend(ids)

        def sequence(number: int) -> None:
            # Like the app's background checkpointer: a failed run is noted and retried.
            while writing.is_set():
                attempts[number] += 1
                try:
                    runtime.audit_log.advance()
                except Exception as exc:
                    sequencer_errors.append(exc)

        writers = [
            threading.Thread(target=_guarded(thread_errors, functools.partial(write, n)))
            for n in range(WRITERS)
        ]
        sequencers = [
            threading.Thread(target=_guarded(thread_errors, functools.partial(sequence, n)))
            for n in range(SEQUENCERS)
        ]
        started = time.monotonic()
        _run(sequencers)
        _run(writers)
        for thread in writers:
            thread.join(timeout=60)
        writing.clear()
        for thread in sequencers:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in writers + sequencers)
        assert time.monotonic() - started < 30
        assert thread_errors == [], thread_errors
        assert all(count > 0 for count in attempts), attempts
        # The sequencers did their work while the writers wrote, not all at the end.
        assert runtime.audit_log.pending_count() < len(recorded) // 2

        runtime.audit_log.advance(force_checkpoint=True)

        n = len(recorded)
        assert n == len(set(recorded)) > WRITERS * TRANSACTIONS_PER_WRITER
        with runtime.audit_sessions() as session:
            positions = dict(session.execute(select(AuditEvent.id, AuditEvent.seq)).all())
            state = session.scalar(
                select(AuditLogState.tree_size).where(AuditLogState.id == STATE_ID)
            )
            unsequenced = session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None))
            )
        assert set(positions) == set(recorded)
        assert unsequenced == 0
        assert sorted(p for p in positions.values() if p is not None) == list(range(n))
        assert state == n
        report = verify(runtime)
        assert report.ok, report.findings
        assert (report.events, report.pending, report.unanchored) == (n, 0, 0)
        assert report.checkpoints >= 2
        stored = {c.tree_size for c in runtime.audit_log.witness.checkpoints()}
        with runtime.audit_sessions() as session:
            assert stored == set(session.scalars(select(AuditCheckpoint.tree_size)))
        latest = runtime.audit_log.witness.latest()
        assert latest is not None
        assert latest.tree_size == n
        assert sequencer_errors == []
    finally:
        runtime.close()


class _NoWitness:
    def latest(self) -> Checkpoint | None:
        return None

    def checkpoints(self) -> list[Checkpoint]:
        return []

    def append(self, checkpoint: Checkpoint, consistency_proof: Sequence[bytes]) -> None:
        return None


class _PausingWitness:
    """Forwards to a witness, holding each append until released (a slow sequencer)."""

    def __init__(self, inner: AuditWitness) -> None:
        self.inner = inner
        self.reached = threading.Event()
        self.release = threading.Event()

    def latest(self) -> Checkpoint | None:
        return self.inner.latest()

    def checkpoints(self) -> list[Checkpoint]:
        return self.inner.checkpoints()

    def append(self, checkpoint: Checkpoint, consistency_proof: Sequence[bytes]) -> None:
        self.reached.set()
        assert self.release.wait(10)
        self.inner.append(checkpoint, consistency_proof)


def test_two_sequencers_bringing_the_witness_up_to_date_at_once_do_not_fail(
    database_url: str, tmp_path: Path
) -> None:
    """The interleaving the test above runs into by chance, step by step.

    Sequencer A reads what the witness lacks (the checkpoints at 40 and 60) and is slow to
    send it; sequencer B sends both meanwhile. A's checkpoint at 40 is then older than the
    witness's latest: it is already witnessed, and A must not fail (nor raise a false
    "truncated or rolled-back log" alarm) because of it.
    """
    runtime = _runtime(tmp_path, database_url)
    try:
        record(runtime, 20)
        runtime.audit_log.advance(force_checkpoint=True)
        witness = runtime.audit_log.witness

        def sequencer(witness: AuditWitness) -> AuditLog:
            return AuditLog(
                runtime.audit_sessions,
                runtime.key_provider,
                witness,
                checkpoint_every_events=CHECKPOINT_EVERY,
                checkpoint_every_seconds=3600,
            )

        unwitnessed = sequencer(_NoWitness())
        for _ in range(2):
            record(runtime, 20)
            unwitnessed.advance(force_checkpoint=True)
        latest = witness.latest()
        assert latest is not None
        assert latest.tree_size == 20

        slow_witness = _PausingWitness(witness)
        slow = sequencer(slow_witness)
        errors: list[BaseException] = []

        def run_slow() -> None:
            slow.sync_witness()

        thread = threading.Thread(target=_guarded(errors, run_slow))
        thread.start()
        assert slow_witness.reached.wait(10)
        assert runtime.audit_log.sync_witness() == 2
        slow_witness.release.set()
        thread.join(timeout=10)
        assert not thread.is_alive()

        assert [c.tree_size for c in witness.checkpoints()] == [20, 40, 60]
        assert verify(runtime).ok
        assert errors == [], errors
    finally:
        runtime.close()
