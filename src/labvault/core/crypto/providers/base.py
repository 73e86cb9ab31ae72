"""The ``KeyProvider`` seam: wraps and unwraps data keys under root keys it never reveals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from labvault.core.crypto.secret import Secret


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps key material under a root key held outside the database.

    ``context`` is bound to the wrapped blob (associated data): a wrapped key copied to
    another tenant or key id will not unwrap. Batch methods exist so that remote providers
    (OpenBao/Vault Transit) can serve bulk jobs in few round trips.
    """

    @property
    def name(self) -> str: ...

    def wrap(self, material: Secret[bytes], context: str) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: str) -> Secret[bytes]: ...

    def wrap_many(self, items: Sequence[tuple[Secret[bytes], str]]) -> list[bytes]: ...

    def unwrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[Secret[bytes]]: ...

    def derive_key(self, label: str) -> Secret[bytes]:
        """A key for ``label`` that the provider can give again and that is never stored."""
        ...

    def derive_keys(self, label: str) -> list[Secret[bytes]]:
        """``label``'s key under every root key version still held, the current one first."""
        ...
