"""Signed checkpoints and the file witness that keeps them outside the database."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from labvault.core.audit.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointSigner,
    TrustedKeys,
    signed_body,
)
from labvault.core.audit.merkle import MemoryNodeStore, MerkleTree, leaf_hash
from labvault.core.audit.witness import FileAuditWitness, WitnessError
from labvault.core.crypto.providers import MemoryKeyProvider


@pytest.fixture
def provider() -> MemoryKeyProvider:
    return MemoryKeyProvider()


def _log(size: int) -> MerkleTree:
    store = MemoryNodeStore()
    store.append([leaf_hash(f"event {i}".encode()) for i in range(size)])
    return MerkleTree(store, size)


def test_the_signing_key_is_derived_from_the_provider_and_stable(
    provider: MemoryKeyProvider,
) -> None:
    first, second = (
        CheckpointSigner.from_provider(provider),
        CheckpointSigner.from_provider(provider),
    )
    assert first.key_id == second.key_id
    assert CheckpointSigner.from_provider(MemoryKeyProvider()).key_id != first.key_id
    assert TrustedKeys.from_provider(provider).key_ids() == [first.key_id]
    with pytest.raises(TypeError):
        __import__("pickle").dumps(first)


def test_a_signed_checkpoint_verifies_and_any_change_does_not(provider: MemoryKeyProvider) -> None:
    signer = CheckpointSigner.from_provider(provider)
    trusted = TrustedKeys.from_provider(provider)
    checkpoint = signer.sign(10, _log(10).root(), 1_700_000_000_000_000)
    trusted.verify(checkpoint)
    assert checkpoint.body() == signed_body(10, checkpoint.root_hash, 1_700_000_000_000_000)
    root, at, key, signature = (
        checkpoint.root_hash,
        checkpoint.signed_us,
        signer.key_id,
        checkpoint.signature,
    )
    changed = [
        Checkpoint(11, root, at, key, signature),
        Checkpoint(10, _log(9).root(), at, key, signature),
        Checkpoint(10, root, at + 1, key, signature),
        Checkpoint(10, root, at, key, os.urandom(64)),
    ]
    for forged in changed:
        with pytest.raises(CheckpointError, match="does not verify"):
            trusted.verify(forged)
    other = CheckpointSigner(Ed25519PrivateKey.generate()).sign(10, checkpoint.root_hash, 1)
    with pytest.raises(CheckpointError, match="unknown key"):
        trusted.verify(other)


def test_public_keys_travel_as_json(provider: MemoryKeyProvider) -> None:
    trusted = TrustedKeys.from_provider(provider)
    loaded = TrustedKeys.from_json(json.loads(json.dumps(trusted.to_json())))
    assert loaded.key_ids() == trusted.key_ids()
    kind = trusted.to_json()["format"]
    bad_documents: list[dict[str, object]] = [
        {},
        {"format": "x"},
        {"format": kind, "keys": []},
        {"format": kind, "keys": [{"public_key": "!!"}]},
    ]
    for bad in bad_documents:
        with pytest.raises(CheckpointError):
            TrustedKeys.from_json(bad)


def test_checkpoints_round_trip_through_json(provider: MemoryKeyProvider) -> None:
    checkpoint = CheckpointSigner.from_provider(provider).sign(3, _log(3).root(), 5)
    assert Checkpoint.from_json(json.loads(json.dumps(checkpoint.to_json()))) == checkpoint


@given(
    st.dictionaries(
        st.sampled_from(["tree_size", "root_hash", "signed_us", "key_id", "signature", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(),
            st.binary().map(lambda b: base64.b64encode(b).decode()),
        ),
    )
)
def test_checkpoint_parsing_never_accepts_junk_silently(document: dict[str, object]) -> None:
    try:
        checkpoint = Checkpoint.from_json(document)
    except CheckpointError:
        return
    assert len(checkpoint.root_hash) == 32
    assert len(checkpoint.signature) == 64
    assert type(checkpoint.tree_size) is int


def test_the_witness_appends_consistent_checkpoints_only(
    provider: MemoryKeyProvider, tmp_path: Path
) -> None:
    signer = CheckpointSigner.from_provider(provider)
    witness = FileAuditWitness(tmp_path / "witness", TrustedKeys.from_provider(provider))
    assert witness.latest() is None
    first = signer.sign(5, _log(5).root(), 1)
    witness.append(first, [])
    witness.append(first, [])  # the same checkpoint again is a no-op
    second = signer.sign(9, _log(9).root(), 2)
    witness.append(second, _log(9).consistency_proof(5))
    assert witness.checkpoints() == [first, second]
    assert (witness.path.stat().st_mode & 0o777) == 0o600

    forked = signer.sign(12, _log(12).root()[::-1], 3)
    with pytest.raises(WitnessError, match="not consistent"):
        witness.append(forked, _log(12).consistency_proof(9))
    with pytest.raises(WitnessError, match="older"):
        witness.append(signer.sign(4, _log(4).root(), 4), [])
    stranger = CheckpointSigner(Ed25519PrivateKey.generate()).sign(12, _log(12).root(), 5)
    with pytest.raises(WitnessError, match="unknown key"):
        witness.append(stranger, _log(12).consistency_proof(9))
    with pytest.raises(WitnessError, match="not consistent"):
        witness.append(signer.sign(12, _log(12).root(), 6), _log(12).consistency_proof(8))
    assert witness.checkpoints() == [first, second]


def test_an_unreadable_witness_file_is_reported_with_its_line(
    provider: MemoryKeyProvider, tmp_path: Path
) -> None:
    witness = FileAuditWitness(tmp_path, TrustedKeys.from_provider(provider))
    witness.append(CheckpointSigner.from_provider(provider).sign(1, _log(1).root(), 1), [])
    with witness.path.open("a") as handle:
        handle.write("{not json\n")
    with pytest.raises(WitnessError, match="line 2"):
        witness.checkpoints()
