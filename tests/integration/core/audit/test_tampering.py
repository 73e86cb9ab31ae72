"""Each kind of tampering with the audit log, done in SQL as an attacker with full database
access would do it: verification fails, says which kind, and names the event.

The attacker holds the database (owner rights) and knows every algorithm, SHA-256 included,
but has neither the key provider's root key (so neither the seal key nor the signing key)
nor write access to the witness. An untouched log, an empty log and events not sequenced
yet all verify.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from logbuilder import (
    CHECKPOINT_EVERY,
    Attacker,
    BuiltLog,
    DatabaseServer,
    build_log,
    checkpoint_sizes,
    event_findings,
    events_by_position,
    make_settings,
    record,
    restore_log,
    state_size,
    verify,
)
from sqlalchemy import Table, delete, select, update

from labvault.core.audit.actions import AuditAction
from labvault.core.audit.checkpoints import CheckpointSigner, signed_body
from labvault.core.audit.merkle import MerkleTree
from labvault.core.audit.models import AuditCheckpoint, AuditEvent, AuditTreeNode
from labvault.core.audit.sequencer import DatabaseNodeStore, seal
from labvault.core.audit.verify import Finding, Tampering, VerifyReport
from labvault.core.audit.witness import WitnessError
from labvault.core.runtime import Runtime

SIZE = 1000
MIDDLE = 437
"""Not at a checkpoint boundary, inside the stored level-4 node 27 (leaves 432..447)."""
_EVENTS = cast(Table, AuditEvent.__table__)


# -- fixtures ------------------------------------------------------------------------------


def _server(request: pytest.FixtureRequest, backend: str) -> DatabaseServer | None:
    if backend == "sqlite":
        return None
    return cast(DatabaseServer, request.getfixturevalue("postgres"))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltLog:
    """One log of SIZE events per backend; each test tampers with it, restored."""
    backend = str(request.param)
    directory = tmp_path_factory.mktemp(f"audit-{backend}")
    return build_log(backend, directory, _server(request, backend), SIZE)


@pytest.fixture
def lab(built: BuiltLog, tmp_path: Path) -> Iterator[tuple[Runtime, list[uuid.UUID]]]:
    settings = restore_log(built, tmp_path / "var")
    runtime = Runtime(settings)
    yield runtime, built.ids
    runtime.close()


def _only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, findings
    return findings[0]


def _event_finding(report: VerifyReport) -> Finding:
    """The one finding about events; there must be one, and verification must fail."""
    assert not report.ok
    return _only(event_findings(report))


# -- logs that verify -----------------------------------------------------------------------


def test_the_built_log_is_what_the_tests_assume(lab: tuple[Runtime, list[uuid.UUID]]) -> None:
    runtime, ids = lab
    assert len(ids) == SIZE == len(set(ids))
    assert events_by_position(runtime) == ids
    assert checkpoint_sizes(runtime) == list(range(CHECKPOINT_EVERY, SIZE + 1, CHECKPOINT_EVERY))
    assert [c.tree_size for c in runtime.audit_log.witness.checkpoints()] == checkpoint_sizes(
        runtime
    )
    assert state_size(runtime) == SIZE


def test_an_untouched_log_verifies(lab: tuple[Runtime, list[uuid.UUID]]) -> None:
    runtime, _ = lab
    report = verify(runtime)
    assert report.ok
    assert report.findings == []
    assert (report.events, report.checkpoints, report.witnessed) == (SIZE, 10, 10)
    assert (report.pending, report.unanchored) == (0, 0)


def test_an_empty_log_verifies(database_url: str, tmp_path: Path) -> None:
    runtime = Runtime(make_settings(tmp_path / "var", database_url))
    try:
        report = verify(runtime)
        assert report.ok
        assert (report.events, report.checkpoints, report.witnessed, report.pending) == (0, 0, 0, 0)
        runtime.audit_log.advance(force_checkpoint=True)
        assert verify(runtime).ok
        assert checkpoint_sizes(runtime) == []
    finally:
        runtime.close()


def test_an_empty_log_with_a_witness_ahead_of_it_is_truncated(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    """The database emptied entirely (events, checkpoints, state reset): the witness knows."""
    runtime, _ = lab
    attacker = Attacker(runtime)
    with attacker.session() as session:
        session.execute(delete(AuditEvent))
        session.execute(delete(AuditCheckpoint))
        session.execute(delete(AuditTreeNode))
    attacker.set_state_size(0)
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.TRUNCATED
    assert finding.position == 0
    assert finding.event_id is None


def test_events_not_sequenced_yet_are_pending_not_tampering(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    runtime, _ = lab
    record(runtime, 7)
    report = verify(runtime)
    assert report.ok, report.findings
    assert (report.events, report.pending, report.unanchored) == (SIZE, 7, 0)
    # Sequenced and sealed but not checkpointed yet (fewer than CHECKPOINT_EVERY events).
    advanced = runtime.audit_log.advance()
    assert (advanced.sequenced, advanced.checkpoints) == (7, [])
    report = verify(runtime)
    assert report.ok, report.findings
    assert (report.events, report.pending, report.unanchored) == (SIZE + 7, 0, 7)


# -- edited events --------------------------------------------------------------------------

EDITS: dict[str, Any] = {
    "actor_id": "system:test:mallory",
    "actor_kind": "staff",
    "actor_role": "biologist",
    "action": AuditAction.STAFF_RECORD_READ.value,
    "target_type": "staff",
    "target_id": uuid.UUID("00000000-0000-4000-8000-0000000000ee"),
    "tenant_id": uuid.UUID("00000000-0000-4000-8000-0000000000ff"),
    "occurred_us": _EVENTS.c.occurred_us + 1,
    "purpose": "mallory",
    "outcome": "error",
    "request_id": "req-forged",
    "client_hash": "00112233445566778899aabbccddeeff",
}


@pytest.mark.parametrize("column", list(EDITS))
def test_an_edited_event_is_named(lab: tuple[Runtime, list[uuid.UUID]], column: str) -> None:
    runtime, ids = lab
    Attacker(runtime).set_event(MIDDLE, **{column: EDITS[column]})
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.MODIFIED
    assert (finding.position, finding.event_id) == (MIDDLE, ids[MIDDLE])
    assert str(ids[MIDDLE]) in finding.message


@pytest.mark.parametrize("position", [0, MIDDLE, 499, 500, SIZE - 1])
def test_an_edited_event_is_named_wherever_it_is(
    lab: tuple[Runtime, list[uuid.UUID]], position: int
) -> None:
    runtime, ids = lab
    Attacker(runtime).set_event(position, actor_id="system:test:mallory")
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.MODIFIED
    assert (finding.position, finding.event_id) == (position, ids[position])


@pytest.mark.parametrize("column", ["actor_id", "target_id", "occurred_us", "outcome"])
def test_an_edited_event_with_its_leaf_hash_recomputed_is_named(
    lab: tuple[Runtime, list[uuid.UUID]], column: str
) -> None:
    """The attacker knows SHA-256 and the encoding, not the seal key."""
    runtime, ids = lab
    attacker = Attacker(runtime)
    attacker.set_event(MIDDLE, **{column: EDITS[column]})
    attacker.recompute_leaf(MIDDLE)
    attacker.recompute_tree()
    finding = _event_finding(verify(runtime))
    assert finding.kind in {Tampering.MODIFIED, Tampering.INSERTED}
    assert (finding.position, finding.event_id) == (MIDDLE, ids[MIDDLE])


def test_an_edited_seal_is_named(lab: tuple[Runtime, list[uuid.UUID]]) -> None:
    runtime, ids = lab
    Attacker(runtime).set_event(MIDDLE, seal=os.urandom(32))
    finding = _event_finding(verify(runtime))
    assert finding.kind in {Tampering.INSERTED, Tampering.MODIFIED}
    assert (finding.position, finding.event_id) == (MIDDLE, ids[MIDDLE])


def test_a_field_holding_a_newline_is_malformed(lab: tuple[Runtime, list[uuid.UUID]]) -> None:
    """Text shifted from one field to the next behind the application's back."""
    runtime, ids = lab
    Attacker(runtime).set_event(MIDDLE, request_id="a\nb")
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.MALFORMED
    assert (finding.position, finding.event_id) == (MIDDLE, ids[MIDDLE])


# -- deleted, inserted, reordered events -------------------------------------------------------


@pytest.mark.parametrize("position", [0, MIDDLE, 500, SIZE - 2])
def test_a_deleted_event_leaves_a_gap_that_is_named(
    lab: tuple[Runtime, list[uuid.UUID]], position: int
) -> None:
    runtime, ids = lab
    Attacker(runtime).delete_event(position)
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.DELETED
    # The deleted event is gone: the finding names its position and the event after it.
    assert (finding.position, finding.event_id) == (position, ids[position + 1])
    assert str(position) in finding.message


def test_several_deleted_events_are_named_as_a_range(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    runtime, ids = lab
    with Attacker(runtime).session() as session:
        session.execute(delete(_EVENTS).where(_EVENTS.c.seq.between(MIDDLE, MIDDLE + 9)))
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.DELETED
    assert (finding.position, finding.event_id) == (MIDDLE, ids[MIDDLE + 10])
    assert f"{MIDDLE} to {MIDDLE + 9}" in finding.message


@pytest.mark.parametrize("position", [0, MIDDLE, 500])
def test_a_deleted_event_with_the_log_renumbered_is_named(
    lab: tuple[Runtime, list[uuid.UUID]], position: int
) -> None:
    runtime, ids = lab
    attacker = Attacker(runtime)
    attacker.delete_event(position)
    attacker.shift(position + 1, -1)
    attacker.set_state_size(SIZE - 1)
    attacker.recompute_tree()
    assert events_by_position(runtime) == ids[:position] + ids[position + 1 :]
    finding = _event_finding(verify(runtime))
    # The event now at that position was sealed one place further.
    assert finding.kind in {Tampering.REORDERED, Tampering.DELETED}
    assert (finding.position, finding.event_id) == (position, ids[position + 1])


@pytest.mark.parametrize("seal_from", ["random", "previous-event"])
def test_an_event_inserted_at_the_tail_is_named(
    lab: tuple[Runtime, list[uuid.UUID]], seal_from: str
) -> None:
    runtime, _ = lab
    attacker = Attacker(runtime)
    if seal_from == "random":
        forged_seal = os.urandom(32)
    else:
        with runtime.audit_sessions() as session:
            stored = session.scalar(select(_EVENTS.c.seal).where(_EVENTS.c.seq == SIZE - 1))
            assert stored is not None
            forged_seal = bytes(stored)
    forged = attacker.forge_event(SIZE, forged_seal)
    attacker.set_state_size(SIZE + 1)
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.INSERTED
    assert (finding.position, finding.event_id) == (SIZE, forged)


@pytest.mark.parametrize("position", [0, MIDDLE, 500])
def test_an_event_inserted_in_the_middle_with_the_log_renumbered_is_named(
    lab: tuple[Runtime, list[uuid.UUID]], position: int
) -> None:
    runtime, ids = lab
    attacker = Attacker(runtime)
    attacker.shift(position, +1)
    forged = attacker.forge_event(position, os.urandom(32))
    attacker.set_state_size(SIZE + 1)
    attacker.recompute_tree()
    assert events_by_position(runtime) == [*ids[:position], forged, *ids[position:]]
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.INSERTED
    assert (finding.position, finding.event_id) == (position, forged)


def test_an_event_inserted_at_a_taken_position_is_named(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    """Two events claiming one position (the attacker dropped the unique index)."""
    runtime, ids = lab
    attacker = Attacker(runtime)
    attacker.execute("DROP INDEX ix_audit_events_seq")
    forged = attacker.forge_event(MIDDLE, os.urandom(32), occurred_us=0)
    findings = event_findings(verify(runtime))
    assert findings, "two events at one position went unnoticed"
    finding = findings[0]
    assert finding.kind is Tampering.INSERTED
    assert finding.position == MIDDLE
    assert finding.event_id in {forged, ids[MIDDLE]}


@pytest.mark.parametrize(("first", "second"), [(300, 700), (MIDDLE, MIDDLE + 1), (0, SIZE - 1)])
def test_two_swapped_events_are_named(
    lab: tuple[Runtime, list[uuid.UUID]], first: int, second: int
) -> None:
    runtime, ids = lab
    attacker = Attacker(runtime)
    with attacker.session() as session:
        for old, new in ((first, -1), (second, first), (-1, second)):
            session.execute(update(_EVENTS).where(_EVENTS.c.seq == old).values(seq=new))
    attacker.recompute_tree()
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.REORDERED
    assert (finding.position, finding.event_id) == (first, ids[second])
    assert f"sealed at position {second}" in finding.message


def test_two_swapped_events_keeping_their_places_hashes_and_seals_are_named(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    """The contents move, each position keeps its leaf hash and seal."""
    runtime, ids = lab
    first, second = 300, 700
    attacker = Attacker(runtime)
    with attacker.session() as session:
        rows = {
            seq: (leaf, seal_)
            for seq, leaf, seal_ in session.execute(
                select(_EVENTS.c.seq, _EVENTS.c.leaf_hash, _EVENTS.c.seal).where(
                    _EVENTS.c.seq.in_([first, second])
                )
            )
        }
        for old, new in ((first, -1), (second, first), (-1, second)):
            session.execute(update(_EVENTS).where(_EVENTS.c.seq == old).values(seq=new))
        for seq, (leaf, seal_) in rows.items():
            session.execute(
                update(_EVENTS).where(_EVENTS.c.seq == seq).values(leaf_hash=leaf, seal=seal_)
            )
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.MODIFIED
    assert (finding.position, finding.event_id) == (first, ids[second])


def test_events_rewritten_by_a_holder_of_the_seal_key_fail_at_the_checkpoint(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    """Seals alone do not hold: an insider with the seal key (not the signing key) reorders
    two events and re-seals them; the signed root of the next checkpoint no longer matches."""
    runtime, _ = lab
    first, second = 310, 350
    key = runtime.audit_log.seal_keys()[0]
    attacker = Attacker(runtime)
    with attacker.session() as session:
        for old, new in ((first, -1), (second, first), (-1, second)):
            session.execute(update(_EVENTS).where(_EVENTS.c.seq == old).values(seq=new))
        for seq in (first, second):
            stored = session.scalar(select(_EVENTS.c.leaf_hash).where(_EVENTS.c.seq == seq))
            assert stored is not None
            leaf = bytes(stored)
            session.execute(
                update(_EVENTS).where(_EVENTS.c.seq == seq).values(seal=seal(key, seq, leaf))
            )
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.ROOT
    assert finding.position == 399  # the last event under the checkpoint at size 400


# -- truncation -------------------------------------------------------------------------------


@pytest.mark.parametrize("removed", [1, 250, 300, SIZE - 1])
def test_a_truncated_log_is_named_after_its_last_surviving_event(
    lab: tuple[Runtime, list[uuid.UUID]], removed: int
) -> None:
    """Events, checkpoints, tree nodes and the state row all cut back: only the witness knows."""
    runtime, ids = lab
    kept = SIZE - removed
    with Attacker(runtime).session() as session:
        session.execute(delete(_EVENTS).where(_EVENTS.c.seq >= kept))
        session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.tree_size > kept))
        for level in (4, 8):
            session.execute(
                delete(AuditTreeNode).where(
                    AuditTreeNode.level == level, AuditTreeNode.index >= kept >> level
                )
            )
    Attacker(runtime).set_state_size(kept)
    report = verify(runtime)
    finding = _event_finding(report)
    assert finding.kind is Tampering.TRUNCATED
    assert finding.event_id == ids[kept - 1]
    assert finding.position in {kept - 1, kept}
    assert f"position {kept - 1}" in finding.message
    assert report.events == kept
    # The witnessed checkpoints the database lost are named too.
    missing = {f.position for f in report.findings if f.kind is Tampering.CHECKPOINT}
    assert missing == set(range(kept // 100 * 100 + 100, SIZE + 1, 100))


def test_a_truncated_tail_with_the_state_row_left_alone_is_named(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    runtime, ids = lab
    kept = SIZE - 30
    with Attacker(runtime).session() as session:
        session.execute(delete(_EVENTS).where(_EVENTS.c.seq >= kept))
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.TRUNCATED
    assert finding.event_id == ids[kept - 1]


# -- checkpoints in the database ---------------------------------------------------------------


def _set_checkpoint(runtime: Runtime, size: int, **values: Any) -> None:
    with Attacker(runtime).session() as session:
        done = session.execute(
            update(AuditCheckpoint).where(AuditCheckpoint.tree_size == size).values(**values)
        )
        assert done.rowcount == 1  # type: ignore[attr-defined]


def _checkpoint_row(runtime: Runtime, size: int) -> dict[str, Any]:
    with runtime.audit_sessions() as session:
        row = session.get(AuditCheckpoint, size)
        assert row is not None
        return {
            "root_hash": bytes(row.root_hash),
            "signed_us": row.signed_us,
            "key_id": row.key_id,
            "signature": bytes(row.signature),
        }


def _assert_only_checkpoint_findings(report: VerifyReport, *positions: int) -> None:
    """Checkpoint findings at exactly these sizes, and every event still verified."""
    assert not report.ok
    assert event_findings(report) == [], report.findings
    assert {f.position for f in report.findings} == set(positions), report.findings
    assert all(f.kind is Tampering.CHECKPOINT for f in report.findings), report.findings
    assert report.events == SIZE


@pytest.mark.parametrize("size", [500, SIZE])
@pytest.mark.parametrize("replacement", ["older-root", "random-root", "older-row"])
def test_a_replaced_checkpoint_root_is_named(
    lab: tuple[Runtime, list[uuid.UUID]], size: int, replacement: str
) -> None:
    runtime, _ = lab
    older = _checkpoint_row(runtime, size - 100)
    values: dict[str, Any] = {
        "older-root": {"root_hash": older["root_hash"]},
        "random-root": {"root_hash": os.urandom(32)},
        "older-row": older,
    }[replacement]
    _set_checkpoint(runtime, size, **values)
    report = verify(runtime)
    _assert_only_checkpoint_findings(report, size)
    assert f"size {size}" in _only(report.findings).message


def test_a_replaced_checkpoint_size_is_named(lab: tuple[Runtime, list[uuid.UUID]]) -> None:
    runtime, _ = lab
    _set_checkpoint(runtime, 500, tree_size=550)
    report = verify(runtime)
    # The forged size, and the witnessed checkpoint that disappeared with it.
    _assert_only_checkpoint_findings(report, 500, 550)


@pytest.mark.parametrize("size", [500, SIZE])
@pytest.mark.parametrize("forgery", ["random-bytes", "other-key", "other-key-claiming-ours"])
def test_a_forged_checkpoint_signature_is_named(
    lab: tuple[Runtime, list[uuid.UUID]], size: int, forgery: str
) -> None:
    runtime, _ = lab
    row = _checkpoint_row(runtime, size)
    other = CheckpointSigner(Ed25519PrivateKey.generate())
    values: dict[str, Any]
    if forgery == "random-bytes":
        values = {"signature": os.urandom(64)}
    else:
        forged = other.sign(size, row["root_hash"], row["signed_us"])
        values = {"signature": forged.signature}
        if forgery == "other-key":
            values["key_id"] = other.key_id
    _set_checkpoint(runtime, size, **values)
    report = verify(runtime)
    _assert_only_checkpoint_findings(report, size)


def test_a_checkpoint_forged_by_another_key_over_an_edited_log_is_named(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    """The attacker rewrites an event, recomputes the whole tree and signs it with a key
    of their own: the checkpoint is named, and so is the event."""
    runtime, ids = lab
    attacker = Attacker(runtime)
    attacker.set_event(MIDDLE, actor_id="system:test:mallory")
    attacker.recompute_leaf(MIDDLE)
    attacker.recompute_tree()
    other = CheckpointSigner(Ed25519PrivateKey.generate())
    with attacker.session() as session:
        for size in range(500, SIZE + 1, 100):
            root = MerkleTree(DatabaseNodeStore(session), size).root()
            forged = other.sign(size, root, 1)
            session.execute(
                update(AuditCheckpoint)
                .where(AuditCheckpoint.tree_size == size)
                .values(root_hash=root, signature=forged.signature, key_id=other.key_id)
            )
    report = verify(runtime)
    finding = _event_finding(report)
    assert (finding.position, finding.event_id) == (MIDDLE, ids[MIDDLE])
    forged_sizes = {f.position for f in report.findings if f.kind is Tampering.CHECKPOINT}
    assert forged_sizes == set(range(500, SIZE + 1, 100))


def test_an_inserted_checkpoint_signed_by_another_key_is_named(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    runtime, _ = lab
    other = CheckpointSigner(Ed25519PrivateKey.generate())
    forged = other.sign(450, os.urandom(32), 1)
    with Attacker(runtime).session() as session:
        session.add(
            AuditCheckpoint(
                tree_size=450,
                root_hash=forged.root_hash,
                signed_us=1,
                key_id=forged.key_id,
                signature=forged.signature,
            )
        )
    _assert_only_checkpoint_findings(verify(runtime), 450)


@pytest.mark.parametrize("size", [100, 500, SIZE])
def test_a_deleted_witnessed_checkpoint_is_named(
    lab: tuple[Runtime, list[uuid.UUID]], size: int
) -> None:
    runtime, _ = lab
    with Attacker(runtime).session() as session:
        session.execute(delete(AuditCheckpoint).where(AuditCheckpoint.tree_size == size))
    report = verify(runtime)
    _assert_only_checkpoint_findings(report, size)
    assert "missing from the database" in _only(report.findings).message


def test_an_event_edited_after_a_forged_checkpoint_is_still_named(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    """A bad checkpoint must not stop the verifier from checking the events after it."""
    runtime, ids = lab
    _set_checkpoint(runtime, 500, signature=os.urandom(64))
    Attacker(runtime).set_event(700, purpose="mallory")
    report = verify(runtime)
    finding = _event_finding(report)
    assert finding.kind is Tampering.MODIFIED
    assert (finding.position, finding.event_id) == (700, ids[700])


# -- the witness -------------------------------------------------------------------------------


def _edit_witness_line(runtime: Runtime, number: int, edit: Any) -> int:
    """Apply ``edit`` to the JSON document on line ``number``; returns its tree size."""
    path = runtime.settings.witness_dir / "checkpoints.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    document = json.loads(lines[number])
    size = int(document["tree_size"])
    lines[number] = edit(document)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return size


def _other_root(document: dict[str, Any]) -> str:
    document["root_hash"] = base64.b64encode(os.urandom(32)).decode()
    return json.dumps(document)


def _other_size(document: dict[str, Any]) -> str:
    document["tree_size"] += 1
    return json.dumps(document)


def _other_signature(document: dict[str, Any]) -> str:
    body = signed_body(
        document["tree_size"], base64.b64decode(document["root_hash"]), document["signed_us"]
    )
    signature = Ed25519PrivateKey.generate().sign(body)
    document["signature"] = base64.b64encode(signature).decode()
    return json.dumps(document)


@pytest.mark.parametrize("edit", [_other_root, _other_size, _other_signature])
def test_an_edited_witness_checkpoint_is_named(
    lab: tuple[Runtime, list[uuid.UUID]], edit: Any
) -> None:
    runtime, _ = lab
    size = _edit_witness_line(runtime, 4, edit)
    report = verify(runtime)
    assert not report.ok
    assert event_findings(report) == [], report.findings
    finding = _only(report.findings)
    assert finding.kind is Tampering.WITNESS
    assert f"size {size}" in finding.message or f"size {size + 1}" in finding.message
    assert report.events == SIZE


def test_an_unreadable_witness_line_is_named(lab: tuple[Runtime, list[uuid.UUID]]) -> None:
    runtime, _ = lab
    _edit_witness_line(runtime, 4, lambda document: json.dumps(document)[:-7])
    finding = _only(verify(runtime).findings)
    assert finding.kind is Tampering.WITNESS
    assert "line 5" in finding.message


# -- the sequencer cannot launder tampering ------------------------------------------------------


def _tamper_middle_and_recompute_tree(attacker: Attacker) -> int:
    attacker.set_event(MIDDLE, actor_id="system:test:mallory")
    attacker.recompute_leaf(MIDDLE)
    attacker.recompute_tree()
    return MIDDLE


def _tamper_tail_leaf(attacker: Attacker) -> int:
    """An event past the last stored level-4 node: the sequencer reads its leaf directly."""
    position = SIZE - 5
    attacker.set_event(position, purpose="mallory")
    attacker.recompute_leaf(position)
    return position


def _repend_last_event(attacker: Attacker) -> int:
    """The last (checkpointed) event edited and handed back to the sequencer as new."""
    position = SIZE - 1
    attacker.set_event(position, outcome="denied", seq=None, leaf_hash=None, seal=None)
    attacker.set_state_size(SIZE - 1)
    return position


@pytest.mark.parametrize(
    "tamper", [_tamper_middle_and_recompute_tree, _tamper_tail_leaf, _repend_last_event]
)
def test_the_sequencer_cannot_launder_tampering_past_the_witness(
    lab: tuple[Runtime, list[uuid.UUID]], tamper: Any
) -> None:
    runtime, ids = lab
    witnessed = runtime.audit_log.witness.latest()
    assert witnessed is not None
    assert witnessed.tree_size == SIZE
    position = tamper(Attacker(runtime))
    record(runtime, 5)
    with pytest.raises(WitnessError, match="not consistent"):
        runtime.audit_log.advance(force_checkpoint=True)
    assert runtime.audit_log.witness.latest() == witnessed
    # The checkpoint signed over the tampered tree stays in the database, but the log does
    # not verify, and the tampered event is still the one named. (An event re-sealed by the
    # sequencer at its own position shows as a root that no longer matches the checkpoint
    # covering it, at that position.)
    findings = event_findings(verify(runtime))
    assert findings
    assert findings[0].position == position
    assert findings[0].event_id in {ids[position], None}


def test_an_edit_the_sequencer_does_not_read_is_still_named_after_it_runs(
    lab: tuple[Runtime, list[uuid.UUID]],
) -> None:
    """Content edited but hashes left alone: the witness may accept the next checkpoint
    (the tree is intact), and the verifier still names the event."""
    runtime, ids = lab
    Attacker(runtime).set_event(MIDDLE, actor_id="system:test:mallory")
    record(runtime, 5)
    runtime.audit_log.advance(force_checkpoint=True)
    latest = runtime.audit_log.witness.latest()
    assert latest is not None
    assert latest.tree_size == SIZE + 5
    finding = _event_finding(verify(runtime))
    assert finding.kind is Tampering.MODIFIED
    assert (finding.position, finding.event_id) == (MIDDLE, ids[MIDDLE])
