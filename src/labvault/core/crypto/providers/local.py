"""AES-256-GCM wrapping under root keys held in this process (file and memory providers).

Root key versions go through three states: active (new wraps use it), held (still unwraps
what was wrapped before a rotation), retired (its material is gone; only the HKDF
derivations of a few preserved labels remain, so that the audit log it sealed still
verifies). Nothing wrapped under a retired version opens again, backups included.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from labvault.core.crypto.errors import DecryptionError, KeyProviderError
from labvault.core.crypto.providers.base import ActiveVersionChangedError, KeyVersion
from labvault.core.crypto.secret import Secret

_WRAP_VERSION = 1
_ID_LEN = 16
_NONCE_LEN = 12
_HEADER_LEN = 1 + _ID_LEN + _NONCE_LEN


@dataclass(frozen=True, slots=True)
class RetiredKey:
    """What is left of a retired root key: derivations of preserved labels, never material."""

    derived: Mapping[str, Secret[bytes]]
    retired: dt.datetime
    created: dt.datetime | None = None


@dataclass(slots=True)
class KeyState:
    """Every root key version a local provider knows, in the order they were created."""

    roots: dict[uuid.UUID, Secret[bytes]]
    active: uuid.UUID
    retired: dict[uuid.UUID, RetiredKey] = field(default_factory=dict)
    created: dict[uuid.UUID, dt.datetime | None] = field(default_factory=dict)
    order: list[uuid.UUID] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.active not in self.roots and self.active not in self.retired:
            raise KeyProviderError("the active root key is not among the loaded root keys")
        if set(self.roots) & set(self.retired):
            raise KeyProviderError("a root key cannot be both held and retired")
        for material in self.roots.values():
            if len(material.reveal()) != 32:
                raise KeyProviderError("a root key must be 32 bytes")
        known = [*self.roots, *self.retired]
        self.order = [key_id for key_id in self.order if key_id in known]
        self.order += [key_id for key_id in known if key_id not in self.order]

    def created_at(self, key_id: uuid.UUID) -> dt.datetime | None:
        retired = self.retired.get(key_id)
        if retired is not None:
            return retired.created
        return self.created.get(key_id)


def wrapped_root_id(wrapped: bytes) -> uuid.UUID | None:
    """The root key id a locally wrapped blob names, or None if it is not in that format."""
    if len(wrapped) <= _HEADER_LEN or wrapped[0] != _WRAP_VERSION:
        return None
    return uuid.UUID(bytes=bytes(wrapped[1 : 1 + _ID_LEN]))


class LocalKeyProvider:
    """Wrapped format: ``version | root key id (16) | nonce (12) | ciphertext+tag``.

    Several root keys may be held so that blobs wrapped before a rotation still unwrap;
    new wraps always use the active one. ``rotate``, ``retire`` and ``retire_all`` change
    the keys in memory only; :class:`~labvault.core.crypto.providers.file.FileKeyProvider`
    makes them durable.
    """

    def __init__(
        self,
        root_keys: Mapping[uuid.UUID, Secret[bytes]],
        active: uuid.UUID,
        *,
        retired: Mapping[uuid.UUID, RetiredKey] | None = None,
        created: Mapping[uuid.UUID, dt.datetime | None] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._install(
            KeyState(
                roots=dict(root_keys),
                active=active,
                retired=dict(retired or {}),
                created=dict(created or {}),
            )
        )

    def _install(self, state: KeyState) -> None:
        """Switch to ``state`` at once: readers see the old keys or the new, never a mix."""
        aeads = {key_id: AESGCM(m.reveal()) for key_id, m in state.roots.items()}
        with self._lock:
            self._state = state
            self._aeads = aeads

    @property
    def name(self) -> str:
        return "local"

    @property
    def blobs_name_their_key(self) -> bool:
        """Each blob carries its root key's id: two key files' blobs are told apart."""
        return True

    @property
    def active_key_id(self) -> uuid.UUID:
        return self._state.active

    def __repr__(self) -> str:
        state = self._state
        return (
            f"{type(self).__name__}(active={state.active}, keys={len(state.roots)}, "
            f"retired={len(state.retired)})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("root keys cannot be pickled: they must never leave the process")

    # -- derived keys ---------------------------------------------------------------------

    def derive_key(self, label: str) -> Secret[bytes]:
        """A 256-bit key for ``label`` derived from the active root key (HKDF-SHA256).

        Used for keys that must never be stored, even wrapped: the audit checkpoint signing
        seed, the audit event seal, the client-address hash.
        """
        state = self._state
        derived = self._derive(state, state.active, label)
        if derived is None:
            raise KeyProviderError(
                "the active root key is retired and this label was not preserved; "
                "the key file can no longer derive it"
            )
        return derived

    def derive_keys(self, label: str) -> list[Secret[bytes]]:
        """The key for ``label`` under every root key version, the active one first.

        Verifiers try them all, so that what was sealed before a rotation still checks;
        retired versions contribute the derivations preserved when they were retired.
        """
        state = self._state
        order = [state.active, *(key_id for key_id in state.order if key_id != state.active)]
        keys = (self._derive(state, key_id, label) for key_id in order)
        return [key for key in keys if key is not None]

    @staticmethod
    def _derive(state: KeyState, key_id: uuid.UUID, label: str) -> Secret[bytes] | None:
        root = state.roots.get(key_id)
        if root is not None:
            return _hkdf(root, label)
        return state.retired[key_id].derived.get(label)

    # -- wrapping -------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Hook: called once before each public wrap, unwrap or version listing (a provider
        backed by a file re-reads it there when another process changed it)."""

    def wrap(self, material: Secret[bytes], context: str) -> bytes:
        self._refresh()
        return self._wrap_one(material, context)

    def unwrap(self, wrapped: bytes, context: str) -> Secret[bytes]:
        self._refresh()
        return self._unwrap_one(wrapped, context)

    def _wrap_one(self, material: Secret[bytes], context: str) -> bytes:
        with self._lock:
            active, aead = self._state.active, self._aeads.get(self._state.active)
        if aead is None:
            raise KeyProviderError(
                f"the active root key {active} is retired: this provider can no longer wrap; "
                "use the provider it was migrated to"
            )
        nonce = os.urandom(_NONCE_LEN)
        sealed = aead.encrypt(nonce, material.reveal(), context.encode())
        return bytes([_WRAP_VERSION]) + active.bytes + nonce + sealed

    def _unwrap_one(self, wrapped: bytes, context: str) -> Secret[bytes]:
        wrapped = bytes(wrapped)
        root_id = wrapped_root_id(wrapped)
        if root_id is None:
            raise DecryptionError("not a wrapped key of this provider")
        aead = self._aeads.get(root_id)
        if aead is None and not self._knows(root_id):
            aead = self._aead_after_reload(root_id)
        if aead is None:
            if self._knows(root_id):
                raise KeyProviderError(
                    f"wrapped under root key {root_id}, which is retired: "
                    "nothing wrapped under it can be opened again"
                )
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

    def _aead_after_reload(self, root_id: uuid.UUID) -> AESGCM | None:
        """Hook: a provider backed by a file re-reads it once for a root key it does not know."""
        del root_id
        return None

    def _knows(self, root_id: uuid.UUID) -> bool:
        state = self._state
        return root_id in state.roots or root_id in state.retired

    def wrap_many(self, items: Sequence[tuple[Secret[bytes], str]]) -> list[bytes]:
        self._refresh()
        return [self._wrap_one(material, context) for material, context in items]

    def unwrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[Secret[bytes]]:
        self._refresh()
        return [self._unwrap_one(wrapped, context) for wrapped, context in items]

    # -- versions, rotation, retirement ---------------------------------------------------

    def owns(self, wrapped: bytes) -> bool:
        root_id = wrapped_root_id(bytes(wrapped))
        if root_id is None:
            return False
        if not self._knows(root_id):
            self._aead_after_reload(root_id)
        return self._knows(root_id)

    def is_current(self, wrapped: bytes) -> bool:
        return wrapped_root_id(bytes(wrapped)) == self._state.active

    def version_of(self, wrapped: bytes) -> str:
        root_id = wrapped_root_id(bytes(wrapped))
        if root_id is None or not self.owns(wrapped):
            raise KeyProviderError(f"not a wrapped key of the {self.name} key provider")
        return self._label(root_id)

    def _label(self, root_id: uuid.UUID) -> str:
        return f"{self.name}:{root_id}"

    def rewrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        """Unwrap every blob first (any failure raises before anything is returned), then
        wrap each again under the active root key; the plaintext never leaves this call."""
        secrets = self.unwrap_many(items)
        return self.wrap_many(
            [(secret, context) for secret, (_, context) in zip(secrets, items, strict=True)]
        )

    def versions(self) -> list[KeyVersion]:
        self._refresh()
        state = self._state
        return [self._version(state, key_id) for key_id in state.order]

    def _version(self, state: KeyState, key_id: uuid.UUID) -> KeyVersion:
        return KeyVersion(
            label=self._label(key_id),
            active=key_id == state.active,
            can_unwrap=key_id in state.roots,
            created=state.created_at(key_id),
        )

    def rotate(self) -> KeyVersion:
        """A new random root key, active from now on, in this process only."""
        with self._lock:
            state = rotated(self._state)
            self._install(state)
            return self._version(state, state.active)

    def retire(self, preserved_labels: Sequence[str], expected_active: str) -> list[KeyVersion]:
        with self._lock:
            self._check_active(self._state, expected_active)
            state, retired_ids = retired(self._state, preserved_labels, keep_active=True)
            self._install(state)
            return [self._version(state, key_id) for key_id in retired_ids]

    def _check_active(self, state: KeyState, expected_active: str) -> None:
        """Refuse a retirement checked against another active version than the current one."""
        active = self._label(state.active)
        if active != expected_active:
            raise ActiveVersionChangedError(
                f"the active root key version is {active}, not {expected_active}: a rotation "
                "happened since the check; nothing was retired"
            )

    def retire_all(self, preserved_labels: Sequence[str]) -> list[KeyVersion]:
        """Retire every version, the active one included: for a provider migrated away from.

        It can then neither wrap nor unwrap; ``derive_keys`` of preserved labels still works.
        """
        with self._lock:
            state, retired_ids = retired(self._state, preserved_labels, keep_active=False)
            self._install(state)
            return [self._version(state, key_id) for key_id in retired_ids]


def new_root_key() -> Secret[bytes]:
    return Secret(AESGCM.generate_key(bit_length=256))


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def rotated(state: KeyState) -> KeyState:
    """``state`` with a new random root key appended and made active."""
    key_id = uuid.uuid4()
    return KeyState(
        roots={**state.roots, key_id: new_root_key()},
        active=key_id,
        retired=dict(state.retired),
        created={**state.created, key_id: now()},
        order=[*state.order, key_id],
    )


def retired(
    state: KeyState, preserved_labels: Sequence[str], *, keep_active: bool
) -> tuple[KeyState, list[uuid.UUID]]:
    """``state`` with every held version (but the active one if ``keep_active``) retired:
    its material dropped, the derivations of ``preserved_labels`` kept."""
    labels = list(dict.fromkeys(preserved_labels))
    for label in labels:
        if not label:
            raise ValueError("a preserved label cannot be empty")
    retiring = [
        key_id
        for key_id in state.order
        if key_id in state.roots and not (keep_active and key_id == state.active)
    ]
    stamp = now()
    gone = {
        key_id: RetiredKey(
            derived={label: _hkdf(state.roots[key_id], label) for label in labels},
            retired=stamp,
            created=state.created.get(key_id),
        )
        for key_id in retiring
    }
    new_state = KeyState(
        roots={k: v for k, v in state.roots.items() if k not in gone},
        active=state.active,
        retired={**state.retired, **gone},
        created={k: v for k, v in state.created.items() if k not in gone},
        order=list(state.order),
    )
    return new_state, retiring


def _hkdf(root: Secret[bytes], label: str) -> Secret[bytes]:
    if not label:
        raise ValueError("a derived key needs a label")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label.encode())
    return Secret(derived.derive(root.reveal()))
