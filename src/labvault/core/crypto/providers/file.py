"""Root keys in a 0600 key file outside the data directory: the embedded default."""

from __future__ import annotations

import base64
import binascii
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
        """Write a new key file with one random root key; never overwrites an existing one."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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


def _read_key_file(path: Path) -> tuple[dict[uuid.UUID, Secret[bytes]], uuid.UUID]:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyProviderError(
            f"key file {path} does not exist; run `labvault init` to create it, "
            "or point LABVAULT_KEY_PROVIDER at the right file"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyProviderError(f"key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyProviderError(
            f"key file {path} is accessible to other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
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
