"""Keys a provider derives (HKDF) that a process needs on every request, derived once.

``KeyProvider.derive_key`` is deterministic for a given provider and label, so a process
keeps each result for its lifetime (``Runtime.derived_keys``) instead of deriving it again in
every request (CSRF tokens, one-time code hashes, the client-address hash). The keys stay in
memory as ``Secret`` (masked ``repr``); they are never stored.
"""

from __future__ import annotations

import threading

from labvault.core.crypto.providers import KeyProvider
from labvault.core.crypto.secret import Secret

__all__ = ["DerivedKeys"]


class DerivedKeys:
    """``provider.derive_key(label)``, made once per label (thread-safe)."""

    def __init__(self, provider: KeyProvider) -> None:
        self._provider = provider
        self._keys: dict[str, Secret[bytes]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DerivedKeys(labels={len(self._keys)})"

    def get(self, label: str) -> Secret[bytes]:
        key = self._keys.get(label)
        if key is None:
            with self._lock:
                key = self._keys.get(label)
                if key is None:
                    key = self._keys[label] = self._provider.derive_key(label)
        return key
