"""Inclusion proofs checked offline, and every way of falsifying one refused.

A verifier that accepts a falsified proof is how tamper evidence fails silently (the immudb
advisory GHSA-672p-m5jq-mrh8): each mutation below, of the event, the position, the path,
the checkpoint, the keys or the JSON types, must raise ProofError or CheckpointError. The
witness likewise refuses any checkpoint that does not extend the one it holds.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from logbuilder import (
    DatabaseServer,
    events_by_position,
    make_settings,
    new_database,
    record,
    verify,
)

from labvault.core.audit.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointSigner,
    TrustedKeys,
)
from labvault.core.audit.events import CANONICAL_FIELD_NAMES, encode_event
from labvault.core.audit.merkle import (
    MemoryNodeStore,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
)
from labvault.core.audit.proofs import (
    PROOF_FORMAT,
    ProofUnavailableError,
    inclusion_proof,
    verify_inclusion_proof,
)
from labvault.core.audit.witness import WITNESS_FILE, FileAuditWitness, WitnessError
from labvault.core.crypto.providers import MemoryKeyProvider
from labvault.core.runtime import Runtime

STAGES = (1, 2, 3, 4, 5, 16, 17, 255, 256, 257, 1000, 1024)
"""Tree sizes at which a checkpoint is forced and proofs are taken: powers of two and their
neighbours, where RFC 6962's split changes, and the stored levels (4 and 8) begin."""

REFUSED = (ProofError, CheckpointError)


def _indices(size: int) -> set[int]:
    picked = {0, 1, size // 2, size - 2, size - 1}
    power = 1
    while power < size:
        picked |= {power - 1, power, power + 1}
        power *= 2
    return {i for i in picked if 0 <= i < size}


@dataclass(frozen=True)
class Proofs:
    documents: dict[tuple[int, int], dict[str, Any]]
    """By (tree size of the checkpoint, leaf index); as JSON text, so no object is shared."""
    ids: list[uuid.UUID]
    public_key: str
    """``labvault audit public-key``'s document, as JSON text."""

    def document(self, size: int, index: int) -> dict[str, Any]:
        return copy.deepcopy(self.documents[(size, index)])

    def trusted(self) -> TrustedKeys:
        return TrustedKeys.from_json(json.loads(self.public_key))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def proofs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Proofs:
    """A log grown stage by stage, each stage checkpointed, with proofs taken at each."""
    backend = str(request.param)
    server = (
        None if backend == "sqlite" else cast(DatabaseServer, request.getfixturevalue("postgres"))
    )
    directory = tmp_path_factory.mktemp(f"proofs-{backend}")
    runtime = Runtime(make_settings(directory / "var", new_database(backend, directory, server)))
    documents: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        size = 0
        for stage in STAGES:
            record(runtime, stage - size)
            report = runtime.audit_log.advance(force_checkpoint=True)
            assert report.tree_size == stage
            size = stage
            ids = events_by_position(runtime)
            with runtime.audit_sessions() as session:
                for index in _indices(size):
                    document = inclusion_proof(session, ids[index])
                    documents[(size, index)] = json.loads(json.dumps(document))
        assert verify(runtime).ok
        public_key = json.dumps(runtime.audit_log.trusted_keys.to_json())
    finally:
        runtime.close()
    return Proofs(documents, ids, public_key)


def _path_length(index: int, size: int) -> int:
    """RFC 6962 PATH's length, by its recursion."""
    length = 0
    while size > 1:
        split = 1 << ((size - 1).bit_length() - 1)
        if index < split:
            size = split
        else:
            index, size = index - split, size - split
        length += 1
    return length


# -- genuine proofs -----------------------------------------------------------------------------


def test_every_proof_verifies_offline(proofs: Proofs) -> None:
    trusted = proofs.trusted()
    assert len(proofs.documents) > 100
    for (size, index), document in proofs.documents.items():
        verified = verify_inclusion_proof(copy.deepcopy(document), trusted)
        assert verified.leaf_index == index
        assert verified.checkpoint.tree_size == size
        assert uuid.UUID(verified.event["id"]) == proofs.ids[index]
        assert len(document["audit_path"]) == _path_length(index, size), (size, index)
        assert document["format"] == PROOF_FORMAT


def test_a_proof_names_its_event_by_its_hashed_content(proofs: Proofs) -> None:
    document = proofs.document(1000, 500)
    event = document["event"]
    assert set(event) == set(CANONICAL_FIELD_NAMES)
    assert uuid.UUID(event["id"]) == proofs.ids[500]
    assert event["action"] in {"patient:record:read", "patient:record:create"}
    assert event["target_type"] == "patient"
    assert uuid.UUID(event["target_id"])
    assert event["outcome"] in {"success", "denied"}


# -- falsified proofs -------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any], Proofs], None]
MUTATIONS: dict[str, Mutation] = {}


def mutation(name: str) -> Callable[[Mutation], Mutation]:
    def register(function: Mutation) -> Mutation:
        MUTATIONS[name] = function
        return function

    return register


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _altered(value: str) -> str:
    """Another plausible value of the same shape: a uuid, a number, a token."""
    if not value:
        return "x"
    if value.isdigit():
        return str(int(value) + 1)
    last = value[-1]
    return value[:-1] + ("0" if last != "0" else "1")


for _name in CANONICAL_FIELD_NAMES:

    def _alter_field(document: dict[str, Any], _: Proofs, name: str = _name) -> None:
        document["event"][name] = _altered(document["event"][name])

    MUTATIONS[f"event.{_name} altered"] = _alter_field


@mutation("event field shifted into its neighbour")
def _shift_fields(document: dict[str, Any], _: Proofs) -> None:
    event = document["event"]
    event["actor_kind"], event["actor_id"] = event["actor_kind"] + event["actor_id"], ""


@mutation("event id in upper case")
def _upper_id(document: dict[str, Any], _: Proofs) -> None:
    document["event"]["id"] = document["event"]["id"].upper()


@mutation("event id with dashes")
def _dashed_id(document: dict[str, Any], _: Proofs) -> None:
    document["event"]["id"] = str(uuid.UUID(document["event"]["id"]))


@mutation("event field holds a newline")
def _newline(document: dict[str, Any], _: Proofs) -> None:
    document["event"]["purpose"] += "\nx"


@mutation("event field holds a lone surrogate")
def _surrogate(document: dict[str, Any], _: Proofs) -> None:
    document["event"]["purpose"] = json.loads('"\\ud800"')


@mutation("event field is null")
def _null_field(document: dict[str, Any], _: Proofs) -> None:
    document["event"]["request_id"] = None


@mutation("event field is a number")
def _number_field(document: dict[str, Any], _: Proofs) -> None:
    document["event"]["occurred_us"] = int(document["event"]["occurred_us"])


@mutation("event field is a list")
def _list_field(document: dict[str, Any], _: Proofs) -> None:
    document["event"]["actor_id"] = [document["event"]["actor_id"]]


@mutation("event field missing")
def _missing_field(document: dict[str, Any], _: Proofs) -> None:
    del document["event"]["client_hash"]


@mutation("extra event field")
def _extra_field(document: dict[str, Any], _: Proofs) -> None:
    document["event"]["comment"] = ""


@mutation("event is a list")
def _event_list(document: dict[str, Any], _: Proofs) -> None:
    document["event"] = [document["event"][name] for name in CANONICAL_FIELD_NAMES]


@mutation("event missing")
def _event_missing(document: dict[str, Any], _: Proofs) -> None:
    del document["event"]


@mutation("leaf_index + 1")
def _index_plus(document: dict[str, Any], _: Proofs) -> None:
    document["leaf_index"] += 1


@mutation("leaf_index - 1")
def _index_minus(document: dict[str, Any], _: Proofs) -> None:
    document["leaf_index"] -= 1


@mutation("leaf_index + tree_size")
def _index_wrapped(document: dict[str, Any], _: Proofs) -> None:
    document["leaf_index"] += document["checkpoint"]["tree_size"]


@mutation("leaf_index as string")
def _index_string(document: dict[str, Any], _: Proofs) -> None:
    document["leaf_index"] = str(document["leaf_index"])


@mutation("leaf_index as bool")
def _index_bool(document: dict[str, Any], _: Proofs) -> None:
    index = document["leaf_index"]
    document["leaf_index"] = bool(index) if index in (0, 1) else True


@mutation("leaf_index as float")
def _index_float(document: dict[str, Any], _: Proofs) -> None:
    document["leaf_index"] = float(document["leaf_index"])


@mutation("leaf_index null")
def _index_null(document: dict[str, Any], _: Proofs) -> None:
    document["leaf_index"] = None


@mutation("leaf_index missing")
def _index_missing(document: dict[str, Any], _: Proofs) -> None:
    del document["leaf_index"]


@mutation("leaf_index 2**64 + index")
def _index_overflow(document: dict[str, Any], _: Proofs) -> None:
    document["leaf_index"] += 2**64


@mutation("path: first hash dropped")
def _drop_first(document: dict[str, Any], _: Proofs) -> None:
    del document["audit_path"][0]


@mutation("path: last hash dropped")
def _drop_last(document: dict[str, Any], _: Proofs) -> None:
    del document["audit_path"][-1]


@mutation("path: a hash appended")
def _append(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"].append(_b64(os.urandom(32)))


@mutation("path: a hash prepended")
def _prepend(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"].insert(0, _b64(os.urandom(32)))


@mutation("path: first hash duplicated")
def _duplicate(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"].insert(0, document["audit_path"][0])


@mutation("path: two hashes swapped")
def _swap(document: dict[str, Any], _: Proofs) -> None:
    path = document["audit_path"]
    path[0], path[1] = path[1], path[0]


@mutation("path: reversed")
def _reverse(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"].reverse()


@mutation("path: a bit flipped in the first hash")
def _flip_first(document: dict[str, Any], _: Proofs) -> None:
    raw = bytearray(_unb64(document["audit_path"][0]))
    raw[0] ^= 1
    document["audit_path"][0] = _b64(bytes(raw))


@mutation("path: a bit flipped in the last hash")
def _flip_last(document: dict[str, Any], _: Proofs) -> None:
    raw = bytearray(_unb64(document["audit_path"][-1]))
    raw[31] ^= 0x80
    document["audit_path"][-1] = _b64(bytes(raw))


@mutation("path: a hash of 31 bytes")
def _short_hash(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"][0] = _b64(_unb64(document["audit_path"][0])[:31])


@mutation("path: a hash of 33 bytes")
def _long_hash(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"][0] = _b64(_unb64(document["audit_path"][0]) + b"\x00")


@mutation("path: a hash in hex")
def _hex_hash(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"][0] = _unb64(document["audit_path"][0]).hex()


@mutation("path: a hash that is not base64")
def _not_base64(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"][0] = "!" + document["audit_path"][0][1:]


@mutation("path: a hash with a newline in its base64")
def _base64_newline(document: dict[str, Any], _: Proofs) -> None:
    hash_text = document["audit_path"][0]
    document["audit_path"][0] = hash_text[:20] + "\n" + hash_text[20:]


@mutation("path: a hash as a number")
def _number_hash(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"][0] = 12345


@mutation("path: a hash null")
def _null_hash(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"][0] = None


@mutation("path as a dict")
def _path_dict(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"] = dict(enumerate(document["audit_path"]))


@mutation("path as a string")
def _path_string(document: dict[str, Any], _: Proofs) -> None:
    document["audit_path"] = "".join(document["audit_path"])


@mutation("path missing")
def _path_missing(document: dict[str, Any], _: Proofs) -> None:
    del document["audit_path"]


@mutation("path of the neighbouring event")
def _neighbour_path(document: dict[str, Any], proofs: Proofs) -> None:
    size, index = document["checkpoint"]["tree_size"], document["leaf_index"]
    taken = [i for s, i in proofs.documents if s == size and i != index]
    other = min(taken, key=lambda i: abs(i - index))
    document["audit_path"] = proofs.document(size, other)["audit_path"]


@mutation("path of another event")
def _other_path(document: dict[str, Any], proofs: Proofs) -> None:
    size, index = document["checkpoint"]["tree_size"], document["leaf_index"]
    other = next(i for s, i in sorted(proofs.documents) if s == size and i != index)
    document["audit_path"] = proofs.document(size, other)["audit_path"]


@mutation("another event's content, with this path")
def _other_event(document: dict[str, Any], proofs: Proofs) -> None:
    size, index = document["checkpoint"]["tree_size"], document["leaf_index"]
    other = next(i for s, i in sorted(proofs.documents) if s == size and i != index)
    document["event"] = proofs.document(size, other)["event"]


@mutation("checkpoint root of another checkpoint")
def _other_root(document: dict[str, Any], proofs: Proofs) -> None:
    document["checkpoint"]["root_hash"] = proofs.document(257, 0)["checkpoint"]["root_hash"]


@mutation("checkpoint root random")
def _random_root(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["root_hash"] = _b64(os.urandom(32))


@mutation("checkpoint root recomputed from the path and a forged event")
def _forged_root(document: dict[str, Any], _: Proofs) -> None:
    """Consistent except for the signature: the root the forged event leads to."""
    document["event"]["actor_id"] = "system:test:mallory"
    fields = [document["event"][name] for name in CANONICAL_FIELD_NAMES]
    document["checkpoint"]["root_hash"] = _b64(_root_from_path(document, fields))


@mutation("checkpoint tree_size + 1")
def _size_plus(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["tree_size"] += 1


@mutation("checkpoint tree_size - 1")
def _size_minus(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["tree_size"] -= 1


@mutation("checkpoint tree_size as string")
def _size_string(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["tree_size"] = str(document["checkpoint"]["tree_size"])


@mutation("checkpoint tree_size as float")
def _size_float(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["tree_size"] = float(document["checkpoint"]["tree_size"])


@mutation("checkpoint signed_us + 1")
def _time_plus(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["signed_us"] += 1


@mutation("checkpoint key_id of an unknown key")
def _key_id(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["key_id"] = "0" * 16


@mutation("checkpoint signature random")
def _random_signature(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["signature"] = _b64(os.urandom(64))


@mutation("checkpoint signature of 63 bytes")
def _short_signature(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["signature"] = _b64(_unb64(document["checkpoint"]["signature"])[:63])


@mutation("checkpoint root of 31 bytes")
def _short_root(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["root_hash"] = _b64(_unb64(document["checkpoint"]["root_hash"])[:31])


@mutation("checkpoint root not base64")
def _root_not_base64(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["root_hash"] = "not base64!"


@mutation("checkpoint root as a number")
def _root_number(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"]["root_hash"] = 7


def _sign_with_another_key(document: dict[str, Any], claim_our_key: bool) -> None:
    checkpoint = Checkpoint.from_json(document["checkpoint"])
    forged = CheckpointSigner(Ed25519PrivateKey.generate()).sign(
        checkpoint.tree_size, checkpoint.root_hash, checkpoint.signed_us
    )
    document["checkpoint"] = forged.to_json()
    if claim_our_key:
        document["checkpoint"]["key_id"] = checkpoint.key_id


@mutation("checkpoint signed by another key")
def _other_key(document: dict[str, Any], _: Proofs) -> None:
    _sign_with_another_key(document, claim_our_key=False)


@mutation("checkpoint signed by another key claiming ours")
def _other_key_claiming_ours(document: dict[str, Any], _: Proofs) -> None:
    _sign_with_another_key(document, claim_our_key=True)


@mutation("forged event, its root, signed by another key")
def _forged_and_signed(document: dict[str, Any], proofs: Proofs) -> None:
    """A proof consistent in every respect but the key that signed it."""
    _forged_root(document, proofs)
    _sign_with_another_key(document, claim_our_key=False)


@mutation("an older genuine checkpoint")
def _older_checkpoint(document: dict[str, Any], proofs: Proofs) -> None:
    document["checkpoint"] = proofs.document(257, 0)["checkpoint"]


@mutation("a newer genuine checkpoint")
def _newer_checkpoint(document: dict[str, Any], proofs: Proofs) -> None:
    size = document["checkpoint"]["tree_size"]
    newer = next(s for s in STAGES if s > size) if size < STAGES[-1] else STAGES[-2]
    document["checkpoint"] = proofs.document(newer, 0)["checkpoint"]


@mutation("checkpoint missing")
def _checkpoint_missing(document: dict[str, Any], _: Proofs) -> None:
    del document["checkpoint"]


@mutation("checkpoint field missing")
def _checkpoint_field_missing(document: dict[str, Any], _: Proofs) -> None:
    del document["checkpoint"]["signed_us"]


@mutation("checkpoint is a list")
def _checkpoint_list(document: dict[str, Any], _: Proofs) -> None:
    document["checkpoint"] = list(document["checkpoint"].values())


@mutation("format missing")
def _format_missing(document: dict[str, Any], _: Proofs) -> None:
    del document["format"]


@mutation("format of another document")
def _format_other(document: dict[str, Any], _: Proofs) -> None:
    document["format"] = "labvault-audit-inclusion-proof/2"


def _root_from_path(document: dict[str, Any], fields: list[str]) -> bytes:
    """What RFC 9162's verifier computes from a leaf, its index and a path (no checks)."""
    computed = leaf_hash(encode_event(fields))
    index, last = document["leaf_index"], document["checkpoint"]["tree_size"] - 1
    for sibling in (_unb64(h) for h in document["audit_path"]):
        if index % 2 == 1 or index == last:
            computed = node_hash(sibling, computed)
            if index % 2 == 0:
                while index % 2 == 0 and index:
                    index, last = index >> 1, last >> 1
        else:
            computed = node_hash(computed, sibling)
        index, last = index >> 1, last >> 1
    return computed


REORDERINGS = {"path: two hashes swapped", "path: reversed"}
TARGETS = [(1000, 0), (1000, 1), (1000, 500), (1000, 999), (1024, 512), (1024, 1023), (3, 2)]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t[1]}-of-{t[0]}")
def test_the_untouched_targets_verify(proofs: Proofs, target: tuple[int, int]) -> None:
    """The control for the mutations below: only the mutation makes them fail."""
    document = proofs.document(*target)
    verify_inclusion_proof(document, proofs.trusted())
    fields = [document["event"][name] for name in CANONICAL_FIELD_NAMES]
    assert _root_from_path(document, fields) == _unb64(document["checkpoint"]["root_hash"])


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_a_falsified_proof_is_refused(proofs: Proofs, name: str) -> None:
    """Each mutation, applied to the proof of each target in turn, is refused."""
    trusted = proofs.trusted()
    accepted: list[str] = []
    for target in TARGETS:
        document = proofs.document(*target)
        if (
            name in {"path: two hashes swapped", "path: reversed"}
            and len(document["audit_path"]) < 2
        ):
            continue  # nothing to reorder in a path of one hash
        original = json.dumps(document, sort_keys=True)
        MUTATIONS[name](document, proofs)
        assert json.dumps(document, sort_keys=True, default=str) != original, "no-op mutation"
        try:
            verify_inclusion_proof(document, trusted)
        except REFUSED:
            continue
        except Exception as exc:
            accepted.append(f"{target}: raised {type(exc).__name__}: {exc}")
        else:
            accepted.append(f"{target}: ACCEPTED")
    assert not accepted, "not refused with ProofError or CheckpointError:\n" + "\n".join(accepted)


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(lambda: TrustedKeys([Ed25519PrivateKey.generate().public_key()]), id="other"),
        pytest.param(lambda: TrustedKeys([]), id="none"),
        pytest.param(
            lambda: TrustedKeys.from_provider(MemoryKeyProvider()), id="another-installation"
        ),
    ],
)
def test_a_proof_is_refused_under_other_trusted_keys(
    proofs: Proofs, keys: Callable[[], TrustedKeys]
) -> None:
    for target in TARGETS:
        with pytest.raises(REFUSED):
            verify_inclusion_proof(proofs.document(*target), keys())


@pytest.mark.parametrize("document", [None, [], "proof", 1, {}], ids=repr)
def test_a_document_that_is_not_a_proof_is_refused(proofs: Proofs, document: object) -> None:
    with pytest.raises(REFUSED):
        verify_inclusion_proof(document, proofs.trusted())


# -- proofs that cannot be given -------------------------------------------------------------


def test_no_proof_for_an_event_not_sequenced_or_not_checkpointed(
    database_url: str, tmp_path: Path
) -> None:
    runtime = Runtime(make_settings(tmp_path / "var", database_url))
    try:
        record(runtime, 3)
        runtime.audit_log.advance(force_checkpoint=True)
        (pending,) = record(runtime, 1)
        with (
            runtime.audit_sessions() as session,
            pytest.raises(ProofUnavailableError, match="not sequenced"),
        ):
            inclusion_proof(session, pending)
        with runtime.audit_sessions() as session, pytest.raises(ProofUnavailableError):
            inclusion_proof(session, uuid.uuid4())
        report = runtime.audit_log.advance()  # sequenced, not checkpointed yet
        assert (report.sequenced, report.checkpoints) == (1, [])
        with (
            runtime.audit_sessions() as session,
            pytest.raises(ProofUnavailableError, match="covers"),
        ):
            inclusion_proof(session, pending)
        runtime.audit_log.advance(force_checkpoint=True)
        with runtime.audit_sessions() as session:
            document = inclusion_proof(session, pending)
        verified = verify_inclusion_proof(document, runtime.audit_log.trusted_keys)
        assert (verified.leaf_index, verified.checkpoint.tree_size) == (3, 4)
    finally:
        runtime.close()


# -- the witness refuses what does not extend what it holds (no database involved) ----------------


@dataclass
class WitnessLab:
    witness: FileAuditWitness
    signer: CheckpointSigner
    store: MemoryNodeStore

    def checkpoint(self, size: int, store: MemoryNodeStore | None = None) -> Checkpoint:
        root = MerkleTree(store or self.store, size).root()
        return self.signer.sign(size, root, 1_700_000_000_000_000 + size)

    def proof(self, old: int, new: int, store: MemoryNodeStore | None = None) -> list[bytes]:
        return MerkleTree(store or self.store, new).consistency_proof(old)

    def text(self) -> str:
        return (self.witness.directory / WITNESS_FILE).read_text(encoding="utf-8")


def _leaves(count: int, tag: bytes = b"") -> list[bytes]:
    return [leaf_hash(tag + i.to_bytes(4, "big")) for i in range(count)]


@pytest.fixture
def witness_lab(tmp_path: Path) -> WitnessLab:
    provider = MemoryKeyProvider()
    witness = FileAuditWitness(tmp_path / "witness", TrustedKeys.from_provider(provider))
    store = MemoryNodeStore()
    store.append(_leaves(40))
    lab = WitnessLab(witness, CheckpointSigner.from_provider(provider), store)
    witness.append(lab.checkpoint(10), [])
    witness.append(lab.checkpoint(20), lab.proof(10, 20))
    return lab


def test_the_witness_accepts_a_consistent_extension(witness_lab: WitnessLab) -> None:
    lab = witness_lab
    lab.witness.append(lab.checkpoint(37), lab.proof(20, 37))
    lab.witness.append(lab.checkpoint(37), [])  # the same checkpoint again: a no-op
    assert [c.tree_size for c in lab.witness.checkpoints()] == [10, 20, 37]


def _forked_store() -> MemoryNodeStore:
    leaves = _leaves(40)
    leaves[15] = leaf_hash(b"forged")
    store = MemoryNodeStore()
    store.append(leaves)
    return store


def _flip(proof: list[bytes]) -> list[bytes]:
    return [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]


REFUSALS: dict[str, Callable[[WitnessLab], tuple[Checkpoint, list[bytes]]]] = {
    "proof from another size": lambda lab: (lab.checkpoint(37), lab.proof(19, 37)),
    "proof with a bit flipped": lambda lab: (lab.checkpoint(37), _flip(lab.proof(20, 37))),
    "empty proof": lambda lab: (lab.checkpoint(37), []),
    "proof with a hash appended": lambda lab: (
        lab.checkpoint(37),
        [*lab.proof(20, 37), os.urandom(32)],
    ),
    "proof with its last hash dropped": lambda lab: (lab.checkpoint(37), lab.proof(20, 37)[:-1]),
    "forked log, its own proof": lambda lab: (
        lab.checkpoint(37, _forked_store()),
        lab.proof(20, 37, _forked_store()),
    ),
    # A checkpoint the witness already holds is a no-op; an older one it never saw is refused.
    "older size": lambda lab: (
        lab.signer.sign(10, MerkleTree(lab.store, 10).root(), 42),
        [],
    ),
    "older size with a proof": lambda lab: (lab.checkpoint(15), lab.proof(15, 20)),
    "same size, another root": lambda lab: (lab.checkpoint(20, _forked_store()), []),
    "unsigned (zero signature)": lambda lab: (
        Checkpoint(37, lab.checkpoint(37).root_hash, 1, lab.signer.key_id, bytes(64)),
        lab.proof(20, 37),
    ),
    "signed by another key": lambda lab: (
        CheckpointSigner(Ed25519PrivateKey.generate()).sign(37, lab.checkpoint(37).root_hash, 1),
        lab.proof(20, 37),
    ),
    "signed by another key, claiming ours": lambda lab: (
        Checkpoint(
            37,
            lab.checkpoint(37).root_hash,
            1,
            lab.signer.key_id,
            CheckpointSigner(Ed25519PrivateKey.generate())
            .sign(37, lab.checkpoint(37).root_hash, 1)
            .signature,
        ),
        lab.proof(20, 37),
    ),
    "signed size differs from the stated size": lambda lab: (
        Checkpoint(
            38,
            lab.checkpoint(37).root_hash,
            lab.checkpoint(37).signed_us,
            lab.signer.key_id,
            lab.checkpoint(37).signature,
        ),
        lab.proof(20, 37),
    ),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_the_witness_refuses_a_checkpoint_that_does_not_extend_its_own(
    witness_lab: WitnessLab, refusal: str
) -> None:
    lab = witness_lab
    before = lab.text()
    checkpoint, proof = REFUSALS[refusal](lab)
    with pytest.raises(WitnessError, match="refused"):
        lab.witness.append(checkpoint, proof)
    assert lab.text() == before
    # The genuine extension is still accepted afterwards.
    lab.witness.append(lab.checkpoint(37), lab.proof(20, 37))
    assert [c.tree_size for c in lab.witness.checkpoints()] == [10, 20, 37]
