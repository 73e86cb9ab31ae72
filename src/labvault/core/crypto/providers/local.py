"""AES-256-GCM wrapping under root keys held in this process (file and memory providers)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from labvault.core.crypto.errors import DecryptionError, KeyProviderError
from labvault.core.crypto.secret import Secret

_WRAP_VERSION = 1
_ID_LEN = 16
_NONCE_LEN = 12
_HEADER_LEN = 1 + _ID_LEN + _NONCE_LEN


class LocalKeyProvider:
    """Wrapped format: ``version | root key id (16) | nonce (12) | ciphertext+tag``.

    Several root keys may be held so that blobs wrapped before a rotation still unwrap;
    new wraps always use the active one.
    """

    def __init__(self, root_keys: Mapping[uuid.UUID, Secret[bytes]], active: uuid.UUID) -> None:
        if active not in root_keys:
            raise KeyProviderError("the active root key is not among the loaded root keys")
        for material in root_keys.values():
            if len(material.reveal()) != 32:
                raise KeyProviderError("a root key must be 32 bytes")
        self._aeads = {key_id: AESGCM(m.reveal()) for key_id, m in root_keys.items()}
        self._roots = dict(root_keys)
        self._active = active

    @property
    def name(self) -> str:
        return "local"

    @property
    def active_key_id(self) -> uuid.UUID:
        return self._active

    def __repr__(self) -> str:
        return f"{type(self).__name__}(active={self._active}, keys={len(self._aeads)})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("root keys cannot be pickled: they must never leave the process")

    def derive_key(self, label: str) -> Secret[bytes]:
        """A 256-bit key for ``label`` derived from the active root key (HKDF-SHA256).

        Used for keys that must never be stored, even wrapped: the audit checkpoint signing
        seed, the audit event seal, the client-address hash.
        """
        return _hkdf(self._roots[self._active], label)

    def derive_keys(self, label: str) -> list[Secret[bytes]]:
        """The key for ``label`` under every loaded root key, the active one first.

        Verifiers try them all, so that what was sealed before a root key rotation still checks.
        """
        order = [self._active, *(key_id for key_id in self._roots if key_id != self._active)]
        return [_hkdf(self._roots[key_id], label) for key_id in order]

    def wrap(self, material: Secret[bytes], context: str) -> bytes:
        nonce = os.urandom(_NONCE_LEN)
        sealed = self._aeads[self._active].encrypt(nonce, material.reveal(), context.encode())
        return bytes([_WRAP_VERSION]) + self._active.bytes + nonce + sealed

    def unwrap(self, wrapped: bytes, context: str) -> Secret[bytes]:
        wrapped = bytes(wrapped)
        if len(wrapped) <= _HEADER_LEN or wrapped[0] != _WRAP_VERSION:
            raise DecryptionError("not a wrapped key of this provider")
        root_id = uuid.UUID(bytes=wrapped[1 : 1 + _ID_LEN])
        aead = self._aeads.get(root_id)
        if aead is None:
            raise KeyProviderError(f"wrapped under root key {root_id}, which is not loaded")
        try:
            plain = aead.decrypt(
                wrapped[1 + _ID_LEN : _HEADER_LEN], wrapped[_HEADER_LEN:], context.encode()
            )
        except InvalidTag:
            raise DecryptionError(
                "wrapped key does not authenticate for this context (moved or altered)"
            ) from None
        return Secret(plain)

    def wrap_many(self, items: Sequence[tuple[Secret[bytes], str]]) -> list[bytes]:
        return [self.wrap(material, context) for material, context in items]

    def unwrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[Secret[bytes]]:
        return [self.unwrap(wrapped, context) for wrapped, context in items]


def _hkdf(root: Secret[bytes], label: str) -> Secret[bytes]:
    if not label:
        raise ValueError("a derived key needs a label")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode())
    return Secret(derived.derive(root.reveal()))
