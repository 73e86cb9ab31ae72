"""Key providers: where root keys live, outside the database (invariant I2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.providers.config import KeyProviderConfig
from labvault.core.crypto.providers.file import FileKeyProvider
from labvault.core.crypto.providers.memory import MemoryKeyProvider
from labvault.core.crypto.providers.transit import TransitKeyProvider

__all__ = [
    "FileKeyProvider",
    "KeyProvider",
    "KeyProviderConfig",
    "MemoryKeyProvider",
    "TransitKeyProvider",
    "ensure_provider_keys",
    "load_key_provider",
]


def load_key_provider(config: KeyProviderConfig) -> KeyProvider:
    """The provider named by LABVAULT_KEY_PROVIDER (already validated by the settings); with
    LABVAULT_PREVIOUS_KEY_PROVIDER, a ``KeyChain`` of the current and the previous one."""
    current = _load_one(config, config.spec)
    if config.previous_spec is None:
        return current
    from labvault.core.crypto.providers.chain import KeyChain

    return KeyChain(current, [_load_one(config, config.previous_spec)])


def ensure_provider_keys(provider: KeyProvider) -> None:
    """Create a Transit provider's keys on first use (``labvault init``); others need none."""
    from labvault.core.crypto.providers.chain import KeyChain

    current = provider.current if isinstance(provider, KeyChain) else provider
    if isinstance(current, TransitKeyProvider):
        current.ensure_keys()


def _load_one(config: KeyProviderConfig, spec: str) -> KeyProvider:
    scheme, _, rest = spec.partition(":")
    if scheme == "file":
        return FileKeyProvider(Path(rest or config.default_key_file))
    if scheme == "transit":
        from labvault.core.config import parse_transit_spec

        if config.transit is None:
            raise KeyProviderError(f"{spec}: the Transit options are missing from the settings")
        try:
            where = parse_transit_spec(spec)
        except ValueError as exc:
            raise KeyProviderError(f"LABVAULT_KEY_PROVIDER {exc}") from None
        options = dataclasses.replace(
            config.transit, address=where.address, mount=where.mount, key=where.key
        )
        return TransitKeyProvider(options, token=config.transit_token())
    raise KeyProviderError(f"unknown key provider scheme {scheme!r}")
