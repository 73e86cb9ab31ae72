"""Signed checkpoints: "the log had N events and this root hash at this time".

The Ed25519 signing key is derived by the key provider from its root key and never stored,
not even wrapped: whoever can rewrite the database still cannot sign a checkpoint. The
public key is exported (``labvault audit public-key``) for verifiers that have no database
and no key provider.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from labvault.core.crypto.providers.base import KeyProvider

SIGNING_LABEL = "labvault/v1|audit|checkpoint-signing"
CHECKPOINT_HEADER = "labvault-audit-checkpoint/1"
PUBLIC_KEY_FORMAT = "labvault-audit-public-key/1"


class CheckpointError(ValueError):
    """A checkpoint that is malformed or whose signature does not verify."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tree_size: int
    root_hash: bytes
    signed_us: int
    key_id: str
    signature: bytes

    def body(self) -> bytes:
        return signed_body(self.tree_size, self.root_hash, self.signed_us)

    def to_json(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root_hash": base64.b64encode(self.root_hash).decode(),
            "signed_us": self.signed_us,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_json(cls, document: object) -> Checkpoint:
        if not isinstance(document, dict):
            raise CheckpointError("a checkpoint is a JSON object")
        try:
            tree_size, signed_us = document["tree_size"], document["signed_us"]
            key_id = document["key_id"]
            if type(tree_size) is not int or type(signed_us) is not int or tree_size < 0:
                raise CheckpointError("tree_size and signed_us must be non-negative integers")
            if not isinstance(key_id, str):
                raise CheckpointError("key_id must be a string")
            root = base64.b64decode(document["root_hash"], validate=True)
            signature = base64.b64decode(document["signature"], validate=True)
        except KeyError as exc:
            raise CheckpointError(f"checkpoint field {exc.args[0]} is missing") from None
        except (binascii.Error, TypeError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError("root_hash and signature must be base64") from None
        if len(root) != 32 or len(signature) != 64:
            raise CheckpointError("root_hash must be 32 bytes and signature 64 bytes")
        return cls(tree_size, root, signed_us, key_id, signature)


def signed_body(tree_size: int, root_hash: bytes, signed_us: int) -> bytes:
    """What is signed; the format (header, size, base64 root, time) follows C2SP checkpoints."""
    root = base64.b64encode(root_hash).decode()
    return f"{CHECKPOINT_HEADER}\n{tree_size}\n{root}\n{signed_us}\n".encode()


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class CheckpointSigner:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def __repr__(self) -> str:
        return f"CheckpointSigner(key_id={self.key_id})"

    def __reduce__(self) -> Any:
        raise TypeError("a checkpoint signer holds a private key and cannot be pickled")

    @classmethod
    def from_provider(cls, provider: KeyProvider) -> CheckpointSigner:
        seed = provider.derive_key(SIGNING_LABEL)
        return cls(Ed25519PrivateKey.from_private_bytes(seed.reveal()))

    def sign(self, tree_size: int, root_hash: bytes, signed_us: int) -> Checkpoint:
        signature = self._private_key.sign(signed_body(tree_size, root_hash, signed_us))
        return Checkpoint(tree_size, root_hash, signed_us, self.key_id, signature)


class TrustedKeys:
    """The public keys a verifier accepts, by key id."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        self._keys = {key_id_of(key): key for key in keys}

    @classmethod
    def from_provider(cls, provider: KeyProvider) -> TrustedKeys:
        seeds = provider.derive_keys(SIGNING_LABEL)
        return cls([Ed25519PrivateKey.from_private_bytes(s.reveal()).public_key() for s in seeds])

    @classmethod
    def from_json(cls, document: object) -> TrustedKeys:
        if not isinstance(document, dict) or document.get("format") != PUBLIC_KEY_FORMAT:
            raise CheckpointError(f"not a {PUBLIC_KEY_FORMAT} document")
        keys = document.get("keys")
        if not isinstance(keys, list) or not keys:
            raise CheckpointError("the public key document lists no keys")
        loaded = []
        for item in keys:
            try:
                raw = base64.b64decode(item["public_key"], validate=True)
                loaded.append(Ed25519PublicKey.from_public_bytes(raw))
            except (KeyError, TypeError, ValueError, binascii.Error):
                raise CheckpointError("a public key is not a base64 Ed25519 key") from None
        return cls(loaded)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PUBLIC_KEY_FORMAT,
            "keys": [
                {
                    "key_id": key_id,
                    "public_key": base64.b64encode(
                        key.public_bytes(Encoding.Raw, PublicFormat.Raw)
                    ).decode(),
                }
                for key_id, key in self._keys.items()
            ],
        }

    def key_ids(self) -> list[str]:
        return list(self._keys)

    def verify(self, checkpoint: Checkpoint) -> None:
        key = self._keys.get(checkpoint.key_id)
        if key is None:
            raise CheckpointError(
                f"checkpoint at size {checkpoint.tree_size} is signed by unknown key "
                f"{checkpoint.key_id}"
            )
        try:
            key.verify(checkpoint.signature, checkpoint.body())
        except InvalidSignature:
            raise CheckpointError(
                f"checkpoint at size {checkpoint.tree_size}: the signature does not verify"
            ) from None


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))
