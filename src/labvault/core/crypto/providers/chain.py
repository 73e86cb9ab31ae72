"""A current key provider and the providers it replaced: how keys move between providers.

After ``labvault keys migrate`` the application runs with ``LABVAULT_KEY_PROVIDER`` set to
the new provider and ``LABVAULT_PREVIOUS_KEY_PROVIDER`` to the old one: new wraps go to the
new provider, blobs still under the old one unwrap there, a rewrap moves them over, and the
old provider's derivations keep verifying what it sealed in the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn, Protocol, runtime_checkable

from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.providers.base import KeyProvider, KeyVersion
from labvault.core.crypto.secret import Secret


@runtime_checkable
class FullyRetirable(Protocol):
    """A provider that can retire every version, the active one included."""

    def retire_all(self, preserved_labels: Sequence[str]) -> list[KeyVersion]: ...


class KeyChain:
    """Wraps with ``current``; unwraps with whichever provider owns the blob."""

    def __init__(self, current: KeyProvider, previous: Sequence[KeyProvider]) -> None:
        self.current = current
        self.previous = tuple(previous)
        _check_distinguishable(_leaves(self))

    def __repr__(self) -> str:
        return f"KeyChain(current={self.current!r}, previous={list(self.previous)!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key providers cannot be pickled: they must never leave the process")

    @property
    def name(self) -> str:
        return self.current.name

    @property
    def blobs_name_their_key(self) -> bool:
        return all(provider.blobs_name_their_key for provider in self.providers)

    @property
    def providers(self) -> tuple[KeyProvider, ...]:
        return (self.current, *self.previous)

    def _owner(self, wrapped: bytes) -> KeyProvider:
        for provider in self.providers:
            if provider.owns(wrapped):
                return provider
        raise KeyProviderError(
            "this wrapped key belongs to none of the configured key providers "
            "(LABVAULT_KEY_PROVIDER, LABVAULT_PREVIOUS_KEY_PROVIDER)"
        )

    def _by_owner(self, blobs: Sequence[bytes]) -> dict[int, list[int]]:
        """Item positions grouped by the index of the provider owning them, order kept."""
        groups: dict[int, list[int]] = {}
        providers = self.providers
        for position, blob in enumerate(blobs):
            owner = self._owner(blob)
            groups.setdefault(providers.index(owner), []).append(position)
        return groups

    def wrap(self, material: Secret[bytes], context: str) -> bytes:
        return self.current.wrap(material, context)

    def wrap_many(self, items: Sequence[tuple[Secret[bytes], str]]) -> list[bytes]:
        return self.current.wrap_many(items)

    def unwrap(self, wrapped: bytes, context: str) -> Secret[bytes]:
        return self._owner(wrapped).unwrap(wrapped, context)

    def unwrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[Secret[bytes]]:
        """One batch per provider (few round trips to a remote one), results in input order."""
        results: list[Secret[bytes] | None] = [None] * len(items)
        for index, positions in self._by_owner([blob for blob, _ in items]).items():
            opened = self.providers[index].unwrap_many([items[p] for p in positions])
            for position, secret in zip(positions, opened, strict=True):
                results[position] = secret
        return [secret for secret in results if secret is not None]

    def rewrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        """Blobs of the current provider are rewrapped by it; the others are unwrapped by
        their (previous) provider and wrapped by the current one: a migration, in batches.
        Everything is unwrapped before anything is returned."""
        groups = self._by_owner([blob for blob, _ in items])
        results: list[bytes | None] = [None] * len(items)
        moved: list[tuple[int, Secret[bytes]]] = []
        for index, positions in groups.items():
            batch = [items[p] for p in positions]
            if index == 0:
                blobs = self.current.rewrap_many(batch)
                for position, blob in zip(positions, blobs, strict=True):
                    results[position] = blob
            else:
                opened = self.providers[index].unwrap_many(batch)
                moved.extend(zip(positions, opened, strict=True))
        if moved:
            blobs = self.current.wrap_many([(secret, items[p][1]) for p, secret in moved])
            for (position, _), blob in zip(moved, blobs, strict=True):
                results[position] = blob
        return [blob for blob in results if blob is not None]

    def derive_key(self, label: str) -> Secret[bytes]:
        return self.current.derive_key(label)

    def derive_keys(self, label: str) -> list[Secret[bytes]]:
        """The current provider's derivations first, then every previous provider's."""
        return [key for provider in self.providers for key in provider.derive_keys(label)]

    def owns(self, wrapped: bytes) -> bool:
        return any(provider.owns(wrapped) for provider in self.providers)

    def is_current(self, wrapped: bytes) -> bool:
        return self.current.is_current(wrapped)

    def version_of(self, wrapped: bytes) -> str:
        return self._owner(wrapped).version_of(wrapped)

    def versions(self) -> list[KeyVersion]:
        """Oldest first: the previous providers' versions (none active), then the current's."""
        older = [
            KeyVersion(version.label, False, version.can_unwrap, version.created)
            for provider in reversed(self.previous)
            for version in provider.versions()
        ]
        return [*older, *self.current.versions()]

    def rotate(self) -> KeyVersion:
        return self.current.rotate()

    def retire(self, preserved_labels: Sequence[str], expected_active: str) -> list[KeyVersion]:
        """The current provider's versions older than ``expected_active`` (its active one,
        checked by it), and every version of the previous ones (a previous provider that
        cannot retire its active version keeps only that one)."""
        gone = list(self.current.retire(preserved_labels, expected_active))
        for provider in self.previous:
            if isinstance(provider, FullyRetirable):
                gone.extend(provider.retire_all(preserved_labels))
            else:
                gone.extend(provider.retire(preserved_labels, active_label(provider)))
        return gone


def active_label(provider: KeyProvider) -> str:
    """The label of ``provider``'s active version now."""
    for version in provider.versions():
        if version.active:
            return version.label
    raise KeyProviderError(f"the {provider.name} key provider has no active root key version")


def _leaves(provider: KeyProvider) -> list[KeyProvider]:
    """The providers of a chain, chains nested in it expanded (``migrate`` nests them)."""
    if isinstance(provider, KeyChain):
        return [leaf for part in provider.providers for leaf in _leaves(part)]
    return [provider]


def _check_distinguishable(providers: Sequence[KeyProvider]) -> None:
    """Refuse two providers of one kind whose wrapped keys do not name their key.

    ``owns`` would claim the other's blobs (two Transit keys both answer to ``vault:v``):
    keys under the old one would pass for current, and a rewrap or a migration would
    silently leave them behind.
    """
    for index, provider in enumerate(providers):
        for other in providers[index + 1 :]:
            if provider.name != other.name:
                continue
            if provider.blobs_name_their_key and other.blobs_name_their_key:
                continue
            raise KeyProviderError(
                f"two {provider.name} key providers cannot be used together (current and "
                f"previous): their wrapped keys do not name their key, so they cannot be told "
                "apart. To move between Transit keys, rotate the key instead "
                "(`labvault keys rotate`, `keys rewrap`, `keys retire`)"
            )
