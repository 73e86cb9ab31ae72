"""The ``KeyProvider`` seam: wraps and unwraps data keys under root keys it never reveals."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.secret import Secret


class ActiveVersionChangedError(KeyProviderError):
    """A retirement refused, nothing changed: the active version is no longer the one the
    caller checked (a rotation happened in between)."""


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of a provider's root key, as the operator sees it (never its material).

    ``label`` names the version in a way stable across processes: ``file:<uuid>`` for a key
    file's root key, ``transit:<key name>:v<n>`` for an OpenBao/Vault Transit key version.
    ``active``: new wraps use it (exactly one version is active). ``can_unwrap``: False once
    retired; what was wrapped under it (in the database or any backup) no longer opens.
    """

    label: str
    active: bool
    can_unwrap: bool
    created: dt.datetime | None = None


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps key material under a root key held outside the database.

    ``context`` is bound to the wrapped blob (associated data, or the Transit derivation
    context): a wrapped key copied to another tenant or key id will not unwrap. Batch methods
    exist so that remote providers (OpenBao/Vault Transit) serve bulk jobs in few round trips.
    """

    @property
    def name(self) -> str: ...

    @property
    def blobs_name_their_key(self) -> bool:
        """Whether a wrapped blob names the very root key it is under (the file provider's
        carry the root key's id), not only a version number (Transit's ``vault:v<n>:`` does
        not name the key). Two providers of the same name whose blobs do not name their key
        cannot be told apart by ``owns``: a ``KeyChain`` refuses them."""
        ...

    def wrap(self, material: Secret[bytes], context: str) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: str) -> Secret[bytes]: ...

    def wrap_many(self, items: Sequence[tuple[Secret[bytes], str]]) -> list[bytes]: ...

    def unwrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[Secret[bytes]]: ...

    def derive_key(self, label: str) -> Secret[bytes]:
        """A key for ``label`` that the provider can give again and that is never stored."""
        ...

    def derive_keys(self, label: str) -> list[Secret[bytes]]:
        """``label``'s key under every root key version still held, the current one first.

        Retiring a version for unwrapping keeps what verifiers need: derivations of the
        labels that seal the audit log survive a retirement (see ``retire``).
        """
        ...

    # Rotation and retirement (``labvault keys``).

    def owns(self, wrapped: bytes) -> bool:
        """Whether ``wrapped`` is in this provider's format, under a root key it knows."""
        ...

    def is_current(self, wrapped: bytes) -> bool:
        """Whether ``wrapped`` is under the active version (a rewrap would not change it)."""
        ...

    def version_of(self, wrapped: bytes) -> str:
        """The ``KeyVersion.label`` that ``wrapped`` is under; ``KeyProviderError`` if not ours."""
        ...

    def rewrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        """Each blob wrapped again under the active version, same context.

        The plaintext key is never handed to the caller: Transit rewraps on its side, local
        providers unwrap and wrap inside this call. Raises ``DecryptionError`` if any blob
        does not authenticate for its context, before returning anything.
        """
        ...

    def versions(self) -> list[KeyVersion]:
        """Every root key version this provider holds, oldest first."""
        ...

    def rotate(self) -> KeyVersion:
        """Create a new root key version and make it the active one; returns it."""
        ...

    def retire(self, preserved_labels: Sequence[str], expected_active: str) -> list[KeyVersion]:
        """Stop unwrapping under every version older than ``expected_active``; returns those
        retired.

        ``expected_active`` is the label of the version the caller saw active when it checked
        that nothing current is still wrapped under an older one (``labvault keys retire``
        counts the wrapped keys first). If another version is active by now (a rotation in
        between: another operator, Transit auto-rotation), the provider raises
        ``ActiveVersionChangedError`` and changes nothing: retiring "everything but the active
        version" would otherwise retire the version that still wraps every key.

        The derivations of ``preserved_labels`` (the audit seal and checkpoint signing
        labels) under each retired version are kept so old audit events still verify; key
        material able to unwrap is destroyed (file) or disallowed (Transit
        ``min_decryption_version``, see ``DestroysRetiredVersions``).
        """
        ...


@runtime_checkable
class DestroysRetiredVersions(Protocol):
    """A provider whose retired versions still exist until destroyed (Transit: retiring
    only raises ``min_decryption_version``, which an operator can lower again)."""

    def destroy_retired(self, expected_active: str) -> list[KeyVersion]:
        """Delete for good every version older than ``expected_active``, which must already
        be retired; returns those deleted. Irreversible: backups wrapped under them are
        unreadable for ever."""
        ...
