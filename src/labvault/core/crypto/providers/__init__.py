"""Key providers: where root keys live, outside the database (invariant I2)."""

from __future__ import annotations

from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.providers.file import FileKeyProvider
from labvault.core.crypto.providers.memory import MemoryKeyProvider

__all__ = ["FileKeyProvider", "KeyProvider", "MemoryKeyProvider", "load_key_provider"]


def load_key_provider(spec: str, default_key_file: str) -> KeyProvider:
    """The provider named by ``LABVAULT_KEY_PROVIDER`` (already validated by the settings)."""
    from pathlib import Path

    scheme, _, rest = spec.partition(":")
    if scheme == "file":
        return FileKeyProvider(Path(rest or default_key_file))
    from labvault.core.crypto.errors import KeyProviderError

    raise KeyProviderError(f"unknown key provider scheme {scheme!r}")
