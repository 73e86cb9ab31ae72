"""Field encryption under a data key (DEK): AES-256-GCM bound to the value's place.

Stored format: ``version (1 byte) | key id (16 bytes) | nonce (12 bytes) | ciphertext+tag``.
The associated data is ``labvault/v1|<table>|<column>|<row id>|<key id>``: a ciphertext
copied to another row, column or table, or re-labelled with another key id, fails to open.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import NoReturn, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from labvault.core.crypto.errors import DecryptionError
from labvault.core.crypto.secret import Secret

FORMAT_VERSION = 1
_VERSION_BYTE = bytes([FORMAT_VERSION])
_KEY_ID_LEN = 16
_NONCE_LEN = 12
_TAG_LEN = 16
_HEADER_LEN = 1 + _KEY_ID_LEN + _NONCE_LEN
DATA_KEY_BYTES = 32


def associated_data(table: str, column: str, row_id: uuid.UUID, key_id: uuid.UUID) -> bytes:
    return f"labvault/v1|{table}|{column}|{row_id}|{key_id}".encode()


def key_id_of(blob: bytes) -> uuid.UUID:
    """The id of the data key a stored value was sealed with (the header is not secret)."""
    if len(blob) < _HEADER_LEN + _TAG_LEN or blob[0] != FORMAT_VERSION:
        raise DecryptionError("not a labvault v1 ciphertext")
    return uuid.UUID(bytes=bytes(blob[1 : _HEADER_LEN - _NONCE_LEN]))


class FieldKey(Protocol):
    """What services need from a data key; a benchmark may substitute a plaintext twin."""

    @property
    def id(self) -> uuid.UUID: ...

    def seal(self, plaintext: bytes, table: str, column: str, row_id: uuid.UUID) -> bytes: ...

    def open(self, blob: bytes, table: str, column: str, row_id: uuid.UUID) -> bytes: ...

    def seal_row(
        self, table: str, row_id: uuid.UUID, values: Mapping[str, bytes | None]
    ) -> dict[str, bytes | None]: ...

    def open_row(
        self, table: str, row_id: uuid.UUID, blobs: Mapping[str, bytes | None]
    ) -> dict[str, bytes | None]: ...


class DataKey:
    """One subject's (a patient's, a staff member's) 256-bit data key, unwrapped.

    Lives for one request or job: never cache it globally.
    """

    __slots__ = ("_aead", "_header_prefix", "_id", "_id_text")

    def __init__(self, key_id: uuid.UUID, material: Secret[bytes]) -> None:
        raw = material.reveal()
        if len(raw) != DATA_KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        self._id = key_id
        self._id_text = str(key_id)
        self._aead = AESGCM(raw)
        self._header_prefix = _VERSION_BYTE + key_id.bytes

    @classmethod
    def generate(cls) -> tuple[DataKey, Secret[bytes]]:
        """A fresh random key and its material (to be wrapped by the key provider)."""
        material = Secret(AESGCM.generate_key(bit_length=256))
        return cls(uuid.uuid4(), material), material

    @property
    def id(self) -> uuid.UUID:
        return self._id

    def __repr__(self) -> str:
        return f"DataKey(id={self._id}, material='**********')"

    def __reduce__(self) -> NoReturn:
        raise TypeError("data keys cannot be pickled: they must never leave the process")

    def seal(self, plaintext: bytes, table: str, column: str, row_id: uuid.UUID) -> bytes:
        sealed = self.seal_row(table, row_id, {column: plaintext})[column]
        assert sealed is not None
        return sealed

    def open(self, blob: bytes, table: str, column: str, row_id: uuid.UUID) -> bytes:
        opened = self.open_row(table, row_id, {column: blob})[column]
        assert opened is not None
        return opened

    def seal_row(
        self, table: str, row_id: uuid.UUID, values: Mapping[str, bytes | None]
    ) -> dict[str, bytes | None]:
        """Seal several columns of one row (``None`` stays ``None``).

        One random draw provides every nonce and the row's part of the associated data is
        built once: sealing a dozen fields costs little more than the AES-GCM calls.
        """
        prefix = f"labvault/v1|{table}|".encode()
        suffix = f"|{row_id}|{self._id_text}".encode()
        nonces = os.urandom(_NONCE_LEN * len(values))
        encrypt = self._aead.encrypt
        header = self._header_prefix
        sealed: dict[str, bytes | None] = {}
        for position, (column, plaintext) in enumerate(values.items()):
            if plaintext is None:
                sealed[column] = None
                continue
            nonce = nonces[position * _NONCE_LEN : (position + 1) * _NONCE_LEN]
            aad = prefix + column.encode() + suffix
            sealed[column] = header + nonce + encrypt(nonce, plaintext, aad)
        return sealed

    def open_row(
        self, table: str, row_id: uuid.UUID, blobs: Mapping[str, bytes | None]
    ) -> dict[str, bytes | None]:
        """Open several columns of one row; any failure names the place, never the value."""
        prefix = f"labvault/v1|{table}|".encode()
        suffix = f"|{row_id}|{self._id_text}".encode()
        opened: dict[str, bytes | None] = {}
        for column, stored in blobs.items():
            if stored is None:
                opened[column] = None
                continue
            blob = bytes(stored)
            if len(blob) < _HEADER_LEN + _TAG_LEN or blob[0] != FORMAT_VERSION:
                raise DecryptionError(
                    f"{table}.{column} of row {row_id}: not a labvault v1 ciphertext"
                )
            if blob[1 : 1 + _KEY_ID_LEN] != self._id.bytes:
                raise DecryptionError(
                    f"{table}.{column} of row {row_id}: sealed under another data key"
                )
            try:
                opened[column] = self._aead.decrypt(
                    blob[1 + _KEY_ID_LEN : _HEADER_LEN],
                    blob[_HEADER_LEN:],
                    prefix + column.encode() + suffix,
                )
            except InvalidTag:
                raise DecryptionError(
                    f"{table}.{column} of row {row_id}: ciphertext does not authenticate "
                    "(moved, altered, or wrong key)"
                ) from None
        return opened
