"""Root keys in a 0600 key file outside the data directory: the embedded default.

Rotation and retirement rewrite the key file atomically (a temporary 0600 file in the same
directory, fsync, ``os.replace``, fsync of the directory), under an exclusive lock on the
directory, so a crash leaves either the old file or the new one, never half of one.

A process reads the key file when it starts, and follows it: before each wrap or unwrap it
compares the file's identity (device, inode, mtime, size) with what it read, and reads it
again when it changed. So ``labvault keys rotate`` takes effect in every running process at
its next wrap, and ``labvault keys retire`` at its next unwrap: a process started before a
retirement can never wrap a new key under a retired root key, whose material it no longer
has.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.providers.base import KeyVersion
from labvault.core.crypto.providers.local import (
    KeyState,
    LocalKeyProvider,
    RetiredKey,
    new_root_key,
    now,
    retired,
    rotated,
)
from labvault.core.crypto.secret import Secret
from labvault.core.durable import fsync_directory

KEY_FILE_FORMAT = "labvault-keyfile/1"
"""Written while no root key is retired: every entry holds material."""
KEY_FILE_FORMAT_RETIRED = "labvault-keyfile/2"
"""Written once a root key is retired (entries without material), so an older labvault
refuses the file clearly instead of misreading it."""
_FORMATS = (KEY_FILE_FORMAT, KEY_FILE_FORMAT_RETIRED)

_Fingerprint = tuple[int, int, int, int]


class FileKeyProvider(LocalKeyProvider):
    """Loads root keys from a JSON key file that only its owner may read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        state, self._fingerprint = _read_key_file(path)
        super().__init__(state.roots, state.active, retired=state.retired, created=state.created)
        self._install(state)  # keeps the file's order of versions

    @property
    def name(self) -> str:
        return "file"

    @classmethod
    def create(cls, path: Path) -> FileKeyProvider:
        """Write a new key file with one random root key; never overwrites an existing one.

        The file is created 0600 in a directory created 0700; an existing directory that other
        users can write to is refused rather than written into.
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_directory(path.parent)
        key_id = uuid.uuid4()
        state = KeyState(roots={key_id: new_root_key()}, active=key_id, created={key_id: now()})
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise KeyProviderError(
                f"key file {path} already exists; refusing to replace it"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(_serialize(state))
            handle.flush()
            os.fsync(handle.fileno())
        return cls(path)

    def reload(self) -> None:
        """Read the key file again: new root keys, the active one, retirements."""
        with self._lock:
            state, self._fingerprint = _read_key_file(self.path)
            self._install(state)

    def _refresh(self) -> None:
        """Follow the key file: one ``stat`` per call (a whole batch for ``*_many``), a reload
        when it changed.

        So every process wraps under the active root key as soon as ``keys rotate`` wrote it,
        and stops unwrapping under a retired one as soon as ``keys retire`` did: a process
        started before either never wraps a new patient's key under a retired root key.
        """
        if _fingerprint(self.path) != self._fingerprint:
            with self._lock:
                if _fingerprint(self.path) != self._fingerprint:
                    self.reload()

    def _aead_after_reload(self, root_id: uuid.UUID) -> AESGCM | None:
        with self._lock:
            if not self._knows(root_id) and _fingerprint(self.path) != self._fingerprint:
                self.reload()
            return self._aeads.get(root_id)

    def rotate(self) -> KeyVersion:
        """Append a new random root key to the key file and make it the active one."""
        state = self._rewrite(rotated)
        return self._version(state, state.active)

    def retire(self, preserved_labels: Sequence[str], expected_active: str) -> list[KeyVersion]:
        """Drop from the key file the material of every root key but the active one, which
        must still be ``expected_active`` once the key file is locked (else nothing changes)."""
        return self._retire(preserved_labels, keep_active=True, expected_active=expected_active)

    def retire_all(self, preserved_labels: Sequence[str]) -> list[KeyVersion]:
        """Drop every root key's material (a key file migrated away from)."""
        return self._retire(preserved_labels, keep_active=False, expected_active=None)

    def _retire(
        self,
        preserved_labels: Sequence[str],
        *,
        keep_active: bool,
        expected_active: str | None,
    ) -> list[KeyVersion]:
        retired_ids: list[uuid.UUID] = []

        def change(state: KeyState) -> KeyState:
            # Checked on the key file as it is under the lock: a rotation by another process
            # after the caller's census is seen here.
            if expected_active is not None:
                self._check_active(state, expected_active)
            new_state, ids = retired(state, preserved_labels, keep_active=keep_active)
            retired_ids.extend(ids)
            return new_state

        state = self._rewrite(change)
        return [self._version(state, key_id) for key_id in retired_ids]

    def _rewrite(self, change: Callable[[KeyState], KeyState]) -> KeyState:
        """Apply ``change`` to the key file as it is now (another process may have changed
        it since this one read it), write the result atomically, and use it."""
        with self._lock, _directory_lock(self.path.parent):
            current, _ = _read_key_file(self.path)
            state = change(current)
            _replace_key_file(self.path, _serialize(state))
            self.reload()
            return self._state


def _serialize(state: KeyState) -> str:
    entries: list[dict[str, Any]] = []
    for key_id in state.order:
        entry: dict[str, Any] = {"id": str(key_id)}
        created = state.created_at(key_id)
        if created is not None:
            entry["created"] = created.isoformat(timespec="seconds")
        gone = state.retired.get(key_id)
        if gone is None:
            entry["material"] = _b64(state.roots[key_id])
        else:
            entry["retired"] = gone.retired.isoformat(timespec="seconds")
            entry["derived"] = {label: _b64(key) for label, key in sorted(gone.derived.items())}
        entries.append(entry)
    document = {
        "format": KEY_FILE_FORMAT_RETIRED if state.retired else KEY_FILE_FORMAT,
        "active": str(state.active),
        "keys": entries,
    }
    return json.dumps(document, indent=2) + "\n"


def _b64(secret: Secret[bytes]) -> str:
    return base64.b64encode(secret.reveal()).decode()


def _replace_key_file(path: Path, content: str) -> None:
    """Write ``content`` to a new 0600 file beside ``path``, make it durable, then swap it in."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)  # left by a crash mid-write; the lock is held
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """One key file writer at a time, across processes (two rotations must not race)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fingerprint(path: Path) -> _Fingerprint | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def _check_directory(directory: Path) -> None:
    """Refuse a key file directory that group or others can write to (they could swap the file)."""
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        raise KeyProviderError(
            f"key file directory {directory} does not exist; run `labvault init` to create it, "
            "or point LABVAULT_KEY_PROVIDER at the right file"
        ) from None
    except OSError as exc:
        raise KeyProviderError(
            f"key file directory {directory} cannot be inspected ({exc.strerror}); "
            "check its permissions"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise KeyProviderError(f"{directory} is not a directory; it cannot hold the key file")
    if info.st_mode & 0o022:
        raise KeyProviderError(
            f"key file directory {directory} can be written by other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}), who could replace the key file; "
            f"run `chmod 700 {directory}`"
        )


def _open_key_file(path: Path) -> int:
    """Open the key file itself (never through a symbolic link) and return the descriptor."""
    # O_NONBLOCK: opening a FIFO planted at the path must not hang; no effect on regular files.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        raise KeyProviderError(
            f"key file {path} does not exist; run `labvault init` to create it, "
            "or point LABVAULT_KEY_PROVIDER at the right file"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise KeyProviderError(
                f"key file {path} is a symbolic link; point LABVAULT_KEY_PROVIDER at the real file"
            ) from None
        raise KeyProviderError(
            f"key file {path} cannot be opened ({exc.strerror}); "
            "check that labvault runs as the key file's owner"
        ) from None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_key_file(path: Path) -> tuple[KeyState, _Fingerprint]:
    # Every check is made on the open descriptor, and the content is read from that same
    # descriptor: the file cannot be swapped between the check and the read.
    fd = _open_key_file(path)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyProviderError(f"key file {path} is not a regular file")
        euid = os.geteuid()
        if info.st_uid != euid:
            raise KeyProviderError(
                f"key file {path} is owned by another user (uid {info.st_uid}), not by the "
                f"user running labvault (uid {euid}); run `chown {euid} {path}` "
                "or point LABVAULT_KEY_PROVIDER at a key file of your own"
            )
        if info.st_mode & 0o077:
            raise KeyProviderError(
                f"key file {path} is accessible to other users "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
            )
        _check_directory(path.parent)
        raw = _read_all(fd)
    finally:
        os.close(fd)
    fingerprint = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
    try:
        document = json.loads(raw.decode("utf-8"))
        if document.get("format") not in _FORMATS:
            raise KeyProviderError(f"key file {path} is not a {KEY_FILE_FORMAT} file")
        roots: dict[uuid.UUID, Secret[bytes]] = {}
        retired_keys: dict[uuid.UUID, RetiredKey] = {}
        created: dict[uuid.UUID, dt.datetime | None] = {}
        order: list[uuid.UUID] = []
        for entry in document["keys"]:
            key_id = uuid.UUID(entry["id"])
            if key_id in order:
                raise KeyProviderError(f"key file {path}: root key {key_id} appears twice")
            order.append(key_id)
            stamp = entry.get("created")
            created[key_id] = None if stamp is None else _parse_time(stamp)
            if "material" in entry:
                material = base64.b64decode(entry["material"], validate=True)
                if len(material) != 32:
                    raise KeyProviderError(
                        f"key file {path}: root key {entry['id']} is not 32 bytes"
                    )
                roots[key_id] = Secret(material)
            else:
                retired_keys[key_id] = RetiredKey(
                    derived={
                        str(label): Secret(base64.b64decode(value, validate=True))
                        for label, value in entry["derived"].items()
                    },
                    retired=_parse_time(entry["retired"]),
                    created=created[key_id],
                )
        active = uuid.UUID(document["active"])
    except KeyProviderError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise KeyProviderError(f"key file {path} is malformed") from None
    if active not in roots and active not in retired_keys:
        raise KeyProviderError(f"key file {path}: the active key is not in the file")
    state = KeyState(roots=roots, active=active, retired=retired_keys, created=created, order=order)
    return state, fingerprint


def _parse_time(value: object) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError("not a time")
    moment = dt.datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
