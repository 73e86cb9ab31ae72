"""Inclusion proofs that a third party checks without the database or the key provider.

A proof carries the event's hashed content (ids, tags and hashes only), its position, the
audit path (O(log n) hashes) and the signed checkpoint it leads to. The verifier rebuilds
the leaf from the content itself, never from a hash the proof claims, checks the
checkpoint's signature against a public key it was given, then the path.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.core.audit.checkpoints import Checkpoint, CheckpointError, TrustedKeys
from labvault.core.audit.events import (
    CANONICAL_COLUMNS,
    CANONICAL_FIELD_NAMES,
    encode_event,
    is_well_formed,
)
from labvault.core.audit.merkle import MerkleTree, ProofError, leaf_hash, verify_inclusion
from labvault.core.audit.models import AuditEvent
from labvault.core.audit.sequencer import DatabaseNodeStore, latest_checkpoint

PROOF_FORMAT = "labvault-audit-inclusion-proof/1"


class ProofUnavailableError(Exception):
    """No proof can be given yet (or ever) for this event."""


@dataclass(frozen=True, slots=True)
class VerifiedInclusion:
    event: dict[str, str]
    leaf_index: int
    checkpoint: Checkpoint


def inclusion_proof(session: Session, event_id: uuid.UUID) -> dict[str, Any]:
    row = session.execute(
        select(AuditEvent.seq, *CANONICAL_COLUMNS).where(AuditEvent.id == event_id)
    ).one_or_none()
    if row is None:
        raise ProofUnavailableError(f"no audit event {event_id}")
    seq, *fields = row
    if seq is None:
        raise ProofUnavailableError(
            f"audit event {event_id} is not sequenced yet; run `labvault audit checkpoint`"
        )
    checkpoint = latest_checkpoint(session)
    if checkpoint is None or checkpoint.tree_size <= seq:
        raise ProofUnavailableError(
            f"no checkpoint covers audit event {event_id} yet; run `labvault audit checkpoint`"
        )
    path = MerkleTree(DatabaseNodeStore(session), checkpoint.tree_size).inclusion_proof(seq)
    return {
        "format": PROOF_FORMAT,
        "event": dict(zip(CANONICAL_FIELD_NAMES, fields, strict=True)),
        "leaf_index": seq,
        "audit_path": [base64.b64encode(h).decode() for h in path],
        "checkpoint": checkpoint.to_json(),
    }


def verify_inclusion_proof(document: object, trusted: TrustedKeys) -> VerifiedInclusion:
    """Raise :class:`ProofError` (or CheckpointError) unless ``document`` proves its event."""
    if not isinstance(document, dict):
        raise ProofError("a proof is a JSON object")
    if document.get("format") != PROOF_FORMAT:
        raise ProofError(f"not a {PROOF_FORMAT} document")
    event = document.get("event")
    if not isinstance(event, dict) or set(event) != set(CANONICAL_FIELD_NAMES):
        raise ProofError(
            f"the event must have exactly the fields {', '.join(CANONICAL_FIELD_NAMES)}"
        )
    fields = [event[name] for name in CANONICAL_FIELD_NAMES]
    if not all(isinstance(value, str) for value in fields):
        raise ProofError("every event field is a string")
    try:
        encoded = encode_event(fields)
    except UnicodeEncodeError:
        raise ProofError("an event field is not valid Unicode text") from None
    if not is_well_formed(encoded):
        raise ProofError("an event field holds a newline")
    index = document.get("leaf_index")
    if type(index) is not int or index < 0:
        raise ProofError("leaf_index must be a non-negative integer")
    raw_path = document.get("audit_path")
    if not isinstance(raw_path, list):
        raise ProofError("audit_path must be a list")
    try:
        path = [base64.b64decode(item, validate=True) for item in raw_path]
    except (binascii.Error, TypeError, ValueError):
        raise ProofError("audit_path holds something that is not base64") from None
    checkpoint = Checkpoint.from_json(document.get("checkpoint"))
    try:
        trusted.verify(checkpoint)
    except CheckpointError as exc:
        raise ProofError(str(exc)) from None
    verify_inclusion(leaf_hash(encoded), index, checkpoint.tree_size, path, checkpoint.root_hash)
    return VerifiedInclusion(
        dict(zip(CANONICAL_FIELD_NAMES, fields, strict=True)), index, checkpoint
    )
