"""In-memory key provider for unit tests: same wrapping as the file provider, no disk."""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from labvault.core.crypto.providers.local import LocalKeyProvider
from labvault.core.crypto.secret import Secret


class MemoryKeyProvider(LocalKeyProvider):
    def __init__(self) -> None:
        key_id = uuid.uuid4()
        super().__init__({key_id: Secret(AESGCM.generate_key(bit_length=256))}, key_id)

    @property
    def name(self) -> str:
        return "memory"
