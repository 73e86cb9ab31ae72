"""In-memory key provider for unit tests: same wrapping as the file provider, no disk.

Rotation and retirement change this process's keys only (see ``LocalKeyProvider``).
"""

from __future__ import annotations

import uuid

from labvault.core.crypto.providers.local import LocalKeyProvider, new_root_key, now


class MemoryKeyProvider(LocalKeyProvider):
    def __init__(self) -> None:
        key_id = uuid.uuid4()
        super().__init__({key_id: new_root_key()}, key_id, created={key_id: now()})

    @property
    def name(self) -> str:
        return "memory"
