"""Root keys in a 0600 key file outside the data directory: the embedded default."""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.providers.local import LocalKeyProvider
from labvault.core.crypto.secret import Secret

KEY_FILE_FORMAT = "labvault-keyfile/1"


class FileKeyProvider(LocalKeyProvider):
    """Loads root keys from a JSON key file that only its owner may read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        root_keys, active = _read_key_file(path)
        super().__init__(root_keys, active)

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
        document = {
            "format": KEY_FILE_FORMAT,
            "active": str(key_id),
            "keys": [
                {
                    "id": str(key_id),
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "material": base64.b64encode(AESGCM.generate_key(bit_length=256)).decode(),
                }
            ],
        }
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise KeyProviderError(
                f"key file {path} already exists; refusing to replace it"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        return cls(path)


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


def _read_key_file(path: Path) -> tuple[dict[uuid.UUID, Secret[bytes]], uuid.UUID]:
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
    try:
        document = json.loads(raw.decode("utf-8"))
        if document.get("format") != KEY_FILE_FORMAT:
            raise KeyProviderError(f"key file {path} is not a {KEY_FILE_FORMAT} file")
        keys: dict[uuid.UUID, Secret[bytes]] = {}
        for entry in document["keys"]:
            material = base64.b64decode(entry["material"], validate=True)
            if len(material) != 32:
                raise KeyProviderError(f"key file {path}: root key {entry['id']} is not 32 bytes")
            keys[uuid.UUID(entry["id"])] = Secret(material)
        active = uuid.UUID(document["active"])
    except KeyProviderError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise KeyProviderError(f"key file {path} is malformed") from None
    if active not in keys:
        raise KeyProviderError(f"key file {path}: the active key is not in the file")
    return keys, active
