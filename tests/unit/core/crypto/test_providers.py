"""Local key providers (memory, file): wrapping, context binding, key file safety."""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest

from labvault.core.crypto.errors import CryptoError, DecryptionError, KeyProviderError
from labvault.core.crypto.providers import (
    FileKeyProvider,
    KeyProvider,
    MemoryKeyProvider,
    load_key_provider,
)
from labvault.core.crypto.providers.base import ActiveVersionChangedError
from labvault.core.crypto.providers.chain import active_label
from labvault.core.crypto.providers.config import KeyProviderConfig
from labvault.core.crypto.providers.file import KEY_FILE_FORMAT
from labvault.core.crypto.providers.local import LocalKeyProvider
from labvault.core.crypto.secret import Secret

CONTEXT = "tenant:7d0f3c1e|dek:5a2b"
OTHER_CONTEXT = "tenant:0b9e44aa|dek:5a2b"


def dek(fill: int = 0xAB) -> Secret[bytes]:
    return Secret(bytes([fill]) * 32)


@pytest.fixture(params=["memory", "file", "local"])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> LocalKeyProvider:
    if request.param == "memory":
        return MemoryKeyProvider()
    if request.param == "file":
        return FileKeyProvider.create(tmp_path / "keys" / "root.key")
    key_id = uuid.uuid4()
    return LocalKeyProvider({key_id: Secret(os.urandom(32))}, key_id)


def error_text(exc: BaseException) -> str:
    """Everything a log or a traceback would show of an exception."""
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


def key_file_document(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def write_key_file(path: Path, content: str, mode: int = 0o600) -> None:
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)


def b64_key(raw: bytes | None = None) -> str:
    return base64.b64encode(raw if raw is not None else os.urandom(32)).decode()


# --- wrap / unwrap ------------------------------------------------------------------------------


def test_providers_implement_the_protocol(provider: LocalKeyProvider) -> None:
    assert isinstance(provider, KeyProvider)


def test_provider_names(tmp_path: Path) -> None:
    assert MemoryKeyProvider().name == "memory"
    assert FileKeyProvider.create(tmp_path / "k" / "root.key").name == "file"
    key_id = uuid.uuid4()
    assert LocalKeyProvider({key_id: dek()}, key_id).name == "local"


def test_wrap_unwrap_round_trip(provider: LocalKeyProvider) -> None:
    material = Secret(os.urandom(32))
    wrapped = provider.wrap(material, CONTEXT)
    assert isinstance(wrapped, bytes)
    assert material.reveal() not in wrapped
    unwrapped = provider.unwrap(wrapped, CONTEXT)
    assert isinstance(unwrapped, Secret)
    assert unwrapped.reveal() == material.reveal()


def test_wrapped_format_names_the_active_root_key(provider: LocalKeyProvider) -> None:
    wrapped = provider.wrap(dek(), CONTEXT)
    assert wrapped[0] == 1
    assert wrapped[1:17] == provider.active_key_id.bytes
    assert len(wrapped) == 1 + 16 + 12 + 32 + 16


def test_wrapping_twice_gives_different_blobs(provider: LocalKeyProvider) -> None:
    first, second = provider.wrap(dek(), CONTEXT), provider.wrap(dek(), CONTEXT)
    assert first != second
    assert first[17:29] != second[17:29]
    assert provider.unwrap(first, CONTEXT) == provider.unwrap(second, CONTEXT) == dek()


def test_wrap_many_and_unwrap_many_round_trip(provider: LocalKeyProvider) -> None:
    items = [(Secret(os.urandom(32)), f"tenant:t|dek:{i}") for i in range(5)]
    wrapped = provider.wrap_many(items)
    assert len(wrapped) == 5
    assert len(set(wrapped)) == 5
    unwrapped = provider.unwrap_many(
        [(blob, context) for blob, (_, context) in zip(wrapped, items, strict=True)]
    )
    assert [s.reveal() for s in unwrapped] == [m.reveal() for m, _ in items]
    # Each batch item is bound to its own context.
    assert provider.unwrap(wrapped[3], "tenant:t|dek:3").reveal() == items[3][0].reveal()
    with pytest.raises(DecryptionError):
        provider.unwrap(wrapped[3], "tenant:t|dek:4")


def test_batch_methods_accept_empty_batches(provider: LocalKeyProvider) -> None:
    assert provider.wrap_many([]) == []
    assert provider.unwrap_many([]) == []


def test_unwrap_many_fails_when_one_context_is_wrong(provider: LocalKeyProvider) -> None:
    wrapped = provider.wrap_many([(dek(1), "c1"), (dek(2), "c2")])
    with pytest.raises(DecryptionError):
        provider.unwrap_many([(wrapped[0], "c1"), (wrapped[1], "c1")])


def test_unwrap_accepts_bytearray(provider: LocalKeyProvider) -> None:
    wrapped = provider.wrap(dek(), CONTEXT)
    assert provider.unwrap(bytearray(wrapped), CONTEXT) == dek()  # type: ignore[arg-type]


# --- context binding and tampering --------------------------------------------------------------


def test_another_context_fails(provider: LocalKeyProvider) -> None:
    material = Secret(os.urandom(32))
    wrapped = provider.wrap(material, CONTEXT)
    for context in (OTHER_CONTEXT, "", CONTEXT + " ", CONTEXT.upper()):
        with pytest.raises(DecryptionError) as caught:
            provider.unwrap(wrapped, context)
        text = error_text(caught.value)
        assert material.reveal().hex() not in text
        assert "context" in str(caught.value)


def test_a_blob_from_another_provider_fails() -> None:
    first, second = MemoryKeyProvider(), MemoryKeyProvider()
    wrapped = first.wrap(dek(), CONTEXT)
    with pytest.raises(KeyProviderError, match="not loaded"):
        second.unwrap(wrapped, CONTEXT)


def test_same_root_id_other_material_fails() -> None:
    key_id = uuid.uuid4()
    first = LocalKeyProvider({key_id: Secret(b"\x01" * 32)}, key_id)
    second = LocalKeyProvider({key_id: Secret(b"\x02" * 32)}, key_id)
    with pytest.raises(DecryptionError):
        second.unwrap(first.wrap(dek(), CONTEXT), CONTEXT)


def test_every_flipped_bit_fails(provider: LocalKeyProvider) -> None:
    wrapped = provider.wrap(dek(), CONTEXT)
    for index in range(len(wrapped)):
        for bit in range(8):
            tampered = bytearray(wrapped)
            tampered[index] ^= 1 << bit
            # Flipping a bit of the root key id names a key that is not loaded.
            with pytest.raises(CryptoError):
                provider.unwrap(bytes(tampered), CONTEXT)


@pytest.mark.parametrize("keep", [0, 1, 17, 29, 30, 45, 60])
def test_truncated_wrapped_keys_fail(provider: LocalKeyProvider, keep: int) -> None:
    wrapped = provider.wrap(dek(), CONTEXT)
    with pytest.raises(DecryptionError):
        provider.unwrap(wrapped[:keep], CONTEXT)


def test_wrong_version_fails(provider: LocalKeyProvider) -> None:
    wrapped = provider.wrap(dek(), CONTEXT)
    with pytest.raises(DecryptionError, match="not a wrapped key"):
        provider.unwrap(b"\x02" + wrapped[1:], CONTEXT)


# --- LocalKeyProvider construction --------------------------------------------------------------


def test_local_provider_requires_the_active_key() -> None:
    with pytest.raises(KeyProviderError, match="active root key"):
        LocalKeyProvider({uuid.uuid4(): dek()}, uuid.uuid4())


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_local_provider_requires_32_byte_root_keys(length: int) -> None:
    key_id = uuid.uuid4()
    material = bytes([0x5A]) * length
    with pytest.raises(KeyProviderError, match="32 bytes") as caught:
        LocalKeyProvider({key_id: Secret(material)}, key_id)
    if length:
        assert material.hex() not in error_text(caught.value)


def test_local_provider_keeps_old_keys_for_unwrapping() -> None:
    old, new = uuid.uuid4(), uuid.uuid4()
    keys = {old: Secret(os.urandom(32)), new: Secret(os.urandom(32))}
    before = LocalKeyProvider(keys, old)
    after = LocalKeyProvider(keys, new)
    wrapped_before = before.wrap(dek(), CONTEXT)
    wrapped_after = after.wrap(dek(), CONTEXT)
    assert wrapped_before[1:17] == old.bytes
    assert wrapped_after[1:17] == new.bytes
    assert after.unwrap(wrapped_before, CONTEXT) == dek()
    assert before.unwrap(wrapped_after, CONTEXT) == dek()


# --- reprs --------------------------------------------------------------------------------------


def test_reprs_never_contain_material(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    file_provider = FileKeyProvider.create(path)
    material_b64 = key_file_document(path)["keys"][0]["material"]
    raw = base64.b64decode(material_b64)
    memory = MemoryKeyProvider()
    key_id = uuid.uuid4()
    local = LocalKeyProvider({key_id: Secret(raw)}, key_id)
    for provider in (file_provider, memory, local):
        for text in (repr(provider), str(provider), f"{provider}"):
            assert material_b64 not in text
            assert raw.hex() not in text
            assert repr(raw) not in text
            assert f"active={provider.active_key_id}" in text
            assert "keys=1" in text
    assert repr(file_provider).startswith("FileKeyProvider(")
    assert repr(memory).startswith("MemoryKeyProvider(")


# --- FileKeyProvider.create ---------------------------------------------------------------------


def test_create_writes_a_0600_file_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert provider.path == path
    document = key_file_document(path)
    assert document["format"] == KEY_FILE_FORMAT == "labvault-keyfile/1"
    assert len(document["keys"]) == 1
    entry = document["keys"][0]
    assert entry["id"] == document["active"] == str(provider.active_key_id)
    assert len(base64.b64decode(entry["material"], validate=True)) == 32
    assert "created" in entry


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    FileKeyProvider.create(path)
    before = path.read_bytes()
    with pytest.raises(KeyProviderError, match="already exists"):
        FileKeyProvider.create(path)
    assert path.read_bytes() == before


def test_create_refuses_to_overwrite_any_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    path.write_text("not a key file")
    with pytest.raises(KeyProviderError, match="already exists"):
        FileKeyProvider.create(path)
    assert path.read_text() == "not a key file"


def test_two_created_files_hold_different_keys(tmp_path: Path) -> None:
    a = FileKeyProvider.create(tmp_path / "a" / "root.key")
    b = FileKeyProvider.create(tmp_path / "b" / "root.key")
    assert a.active_key_id != b.active_key_id
    assert (
        key_file_document(a.path)["keys"][0]["material"]
        != key_file_document(b.path)["keys"][0]["material"]
    )


def test_a_reloaded_file_provider_unwraps_what_the_first_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    created = FileKeyProvider.create(path)
    wrapped = created.wrap(dek(7), CONTEXT)
    loaded = FileKeyProvider(path)
    assert loaded.active_key_id == created.active_key_id
    assert loaded.unwrap(wrapped, CONTEXT) == dek(7)


# --- FileKeyProvider loading --------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o666, 0o610, 0o601])
def test_loading_refuses_a_file_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys" / "root.key"
    FileKeyProvider.create(path)
    material = key_file_document(path)["keys"][0]["material"]
    path.chmod(mode)
    with pytest.raises(KeyProviderError) as caught:
        FileKeyProvider(path)
    message = str(caught.value)
    assert f"chmod 600 {path}" in message
    assert f"{mode:04o}" in message
    assert material not in error_text(caught.value)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_loading_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys" / "root.key"
    FileKeyProvider.create(path)
    path.chmod(mode)
    assert FileKeyProvider(path).unwrap(FileKeyProvider(path).wrap(dek(), "c"), "c") == dek()


def test_missing_key_file_says_labvault_init(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "root.key"
    with pytest.raises(KeyProviderError) as caught:
        FileKeyProvider(path)
    message = str(caught.value)
    assert "labvault init" in message
    assert str(path) in message
    assert "LABVAULT_KEY_PROVIDER" in message


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyProviderError, match="not a regular file"):
        FileKeyProvider(directory)


def _document(material: str, **changes: Any) -> dict[str, Any]:
    key_id = "6f1d3a52-8c1e-4b7a-9f00-2d5e6c7b8a91"
    document: dict[str, Any] = {
        "format": KEY_FILE_FORMAT,
        "active": key_id,
        "keys": [{"id": key_id, "created": "2025-01-01T00:00:00+00:00", "material": material}],
    }
    document.update(changes)
    return document


def _bad_key_files(material: str) -> dict[str, tuple[str, str]]:
    """name -> (file content, expected message fragment); every file holds the material."""
    good = _document(material)
    short = base64.b64encode(base64.b64decode(material)[:16]).decode()
    return {
        "not-json": (json.dumps(good)[:-5] + ", }", "malformed"),
        "trailing-garbage": (json.dumps(good) + " " + material, "malformed"),
        "wrong-format": (json.dumps(_document(material, format="labvault-keyfile/99")), "not a"),
        "no-format": (json.dumps({k: v for k, v in good.items() if k != "format"}), "not a"),
        "no-keys": (json.dumps({**_document(material), "keys": None, "m": material}), "malformed"),
        "keys-missing": (
            json.dumps({"format": KEY_FILE_FORMAT, "active": good["active"], "m": material}),
            "malformed",
        ),
        "no-active": (
            json.dumps({k: v for k, v in good.items() if k != "active"}),
            "malformed",
        ),
        "active-not-a-uuid": (json.dumps(_document(material, active="primary")), "malformed"),
        "id-not-a-uuid": (
            json.dumps(_document(material, keys=[{"id": "k1", "material": material}], active="k1")),
            "malformed",
        ),
        "material-not-base64": (
            json.dumps(_document(material + "!!")),
            "malformed",
        ),
        "material-missing": (
            json.dumps(
                _document(material, keys=[{"id": good["active"], "mat": material}]),
            ),
            "malformed",
        ),
        "short-key": (
            json.dumps(
                _document(
                    material,
                    keys=[
                        {"id": str(uuid.uuid4()), "material": material},
                        {"id": good["active"], "material": short},
                    ],
                )
            ),
            "is not 32 bytes",
        ),
        "long-key": (
            json.dumps(_document(b64_key(base64.b64decode(material) * 2))),
            "is not 32 bytes",
        ),
        "active-key-missing": (
            json.dumps(_document(material, active=str(uuid.uuid4()))),
            "active key is not in the file",
        ),
        "empty-key-list": (
            json.dumps(_document(material, keys=[], stash=material)),
            "active key is not in the file",
        ),
    }


_BAD_NAMES = list(_bad_key_files(b64_key()))


@pytest.mark.parametrize("name", _BAD_NAMES)
def test_bad_key_files_give_key_provider_errors_without_material(tmp_path: Path, name: str) -> None:
    path = tmp_path / "root.key"
    material = b64_key()
    content, fragment = _bad_key_files(material)[name]
    write_key_file(path, content)
    assert material[:20] in path.read_text()
    file_material = material
    with pytest.raises(KeyProviderError) as caught:
        FileKeyProvider(path)
    assert fragment in str(caught.value)
    assert str(path) in str(caught.value)
    text = error_text(caught.value)
    assert file_material not in text
    assert file_material[:16] not in text
    assert base64.b64decode(file_material).hex() not in text


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        "null",
        '"labvault-keyfile/1"',
        "42",
        json.dumps(
            {"format": KEY_FILE_FORMAT, "active": 1, "keys": [{"id": 1, "material": b64_key()}]}
        ),
        json.dumps({"format": KEY_FILE_FORMAT, "active": str(uuid.UUID(int=1)), "keys": ["x"]}),
    ],
    ids=["list", "null", "string", "number", "integer-ids", "string-entries"],
)
def test_structurally_wrong_json_gives_key_provider_error(tmp_path: Path, content: str) -> None:
    # BUG (src/labvault/core/crypto/providers/file.py:82,89-90,93): a JSON document that is not an
    # object (`document.get`) or a non-string key id (`uuid.UUID(1)`) raises AttributeError,
    # which escapes as a raw exception instead of KeyProviderError("... is malformed").
    path = tmp_path / "root.key"
    write_key_file(path, content)
    with pytest.raises(KeyProviderError, match=r"malformed|not a"):
        FileKeyProvider(path)


def test_an_empty_file_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    write_key_file(path, "")
    with pytest.raises(KeyProviderError, match="malformed"):
        FileKeyProvider(path)


def test_old_root_key_still_unwraps_after_rotation_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    original = FileKeyProvider.create(path)
    old_id = original.active_key_id
    material = Secret(os.urandom(32))
    wrapped_old = original.wrap(material, CONTEXT)

    document = key_file_document(path)
    new_id = uuid.uuid4()
    document["keys"].append(
        {"id": str(new_id), "created": "2030-01-01T00:00:00+00:00", "material": b64_key()}
    )
    document["active"] = str(new_id)
    write_key_file(path, json.dumps(document, indent=2))

    rotated = FileKeyProvider(path)
    assert rotated.active_key_id == new_id
    assert rotated.unwrap(wrapped_old, CONTEXT).reveal() == material.reveal()
    wrapped_new = rotated.wrap(material, CONTEXT)
    assert wrapped_new[1:17] == new_id.bytes
    assert wrapped_old[1:17] == old_id.bytes
    assert rotated.unwrap(wrapped_new, CONTEXT).reveal() == material.reveal()
    # The provider loaded before the rotation re-reads the file for the unknown root key.
    assert original.active_key_id == old_id
    assert original.unwrap(wrapped_new, CONTEXT).reveal() == material.reveal()
    assert original.active_key_id == new_id
    assert "keys=2" in repr(rotated)


def test_removing_a_root_key_makes_its_blobs_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    original = FileKeyProvider.create(path)
    wrapped = original.wrap(dek(), CONTEXT)
    new_id = uuid.uuid4()
    document = {
        "format": KEY_FILE_FORMAT,
        "active": str(new_id),
        "keys": [{"id": str(new_id), "material": b64_key()}],
    }
    write_key_file(path, json.dumps(document))
    with pytest.raises(KeyProviderError, match=str(original.active_key_id)):
        FileKeyProvider(path).unwrap(wrapped, CONTEXT)


# --- load_key_provider --------------------------------------------------------------------------


def test_load_key_provider_file_with_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.key"
    created = FileKeyProvider.create(path)
    provider = load_key_provider(KeyProviderConfig(f"file:{path}", str(tmp_path / "default.key")))
    assert isinstance(provider, FileKeyProvider)
    assert provider.path == path
    assert provider.unwrap(created.wrap(dek(), "c"), "c") == dek()


def test_load_key_provider_file_uses_the_default_path(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    FileKeyProvider.create(path)
    provider = load_key_provider(KeyProviderConfig("file:", str(path)))
    assert isinstance(provider, FileKeyProvider)
    assert provider.path == path


def test_load_key_provider_refuses_unknown_schemes(tmp_path: Path) -> None:
    with pytest.raises(KeyProviderError, match="unknown key provider scheme"):
        load_key_provider(KeyProviderConfig("vault:transit", str(tmp_path / "root.key")))


# --- FileKeyProvider: symlinks, ownership, directory ---------------------------------------------


def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "keys" / "root.key"
    FileKeyProvider.create(real)
    material = key_file_document(real)["keys"][0]["material"]
    link = tmp_path / "keys" / "link.key"
    link.symlink_to(real)
    with pytest.raises(KeyProviderError) as caught:
        FileKeyProvider(link)
    message = str(caught.value)
    assert "is a symbolic link" in message
    assert "point LABVAULT_KEY_PROVIDER at the real file" in message
    assert str(link) in message
    text = error_text(caught.value)
    assert material not in text
    assert base64.b64decode(material).hex() not in text
    # The real file itself still loads.
    assert str(FileKeyProvider(real).active_key_id) == key_file_document(real)["active"]


def test_a_dangling_symlink_is_refused_as_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "root.key"
    link.symlink_to(tmp_path / "missing.key")
    with pytest.raises(KeyProviderError, match="is a symbolic link"):
        FileKeyProvider(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_a_key_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    FileKeyProvider.create(path)
    material = key_file_document(path)["keys"][0]["material"]
    os.chown(path, 65534, 65534)
    with pytest.raises(KeyProviderError) as caught:
        FileKeyProvider(path)
    message = str(caught.value)
    assert "is owned by another user" in message
    assert "uid 65534" in message
    assert f"chown {os.geteuid()} {path}" in message
    text = error_text(caught.value)
    assert material not in text
    assert base64.b64decode(material).hex() not in text


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o707, 0o720, 0o702])
def test_a_key_file_in_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys" / "root.key"
    FileKeyProvider.create(path)
    material = key_file_document(path)["keys"][0]["material"]
    path.parent.chmod(mode)
    with pytest.raises(KeyProviderError) as caught:
        FileKeyProvider(path)
    message = str(caught.value)
    assert f"chmod 700 {path.parent}" in message
    assert f"{mode:04o}" in message
    text = error_text(caught.value)
    assert material not in text
    assert base64.b64decode(material).hex() not in text


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o750, 0o711, 0o500])
def test_a_key_file_in_a_directory_only_its_owner_can_write_is_accepted(
    tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "keys" / "root.key"
    created = FileKeyProvider.create(path)
    path.parent.chmod(mode)
    try:
        assert FileKeyProvider(path).active_key_id == created.active_key_id
    finally:
        path.parent.chmod(0o700)


def test_create_refuses_an_existing_directory_others_can_write(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o777)
    path = directory / "root.key"
    with pytest.raises(KeyProviderError) as caught:
        FileKeyProvider.create(path)
    assert f"chmod 700 {directory}" in str(caught.value)
    assert not path.exists()
    assert list(directory.iterdir()) == []


def test_create_accepts_an_existing_0755_directory(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    directory.chmod(0o755)
    provider = FileKeyProvider.create(directory / "root.key")
    assert stat.S_IMODE((directory / "root.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert FileKeyProvider(provider.path).active_key_id == provider.active_key_id


def test_create_refuses_to_write_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target.key"
    link = tmp_path / "root.key"
    link.symlink_to(target)
    with pytest.raises(KeyProviderError, match="already exists"):
        FileKeyProvider.create(link)
    assert not target.exists()


def test_a_fifo_is_not_a_key_file_and_does_not_hang(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    os.mkfifo(path, 0o600)
    with pytest.raises(KeyProviderError, match="not a regular file"):
        FileKeyProvider(path)


# --- rotation, reload, retirement ---------------------------------------------------------------

SEAL = "labvault/v1|audit|event-seal"
SIGNING = "labvault/v1|audit|checkpoint-signing"


def test_rotate_makes_a_new_active_version_and_old_blobs_still_unwrap(
    provider: LocalKeyProvider,
) -> None:
    material = Secret(os.urandom(32))
    old_blob = provider.wrap(material, CONTEXT)
    (first,) = provider.versions()
    assert first.active
    assert first.can_unwrap
    assert first.label == f"{provider.name}:{provider.active_key_id}"

    version = provider.rotate()

    assert version.active
    assert version.can_unwrap
    assert version.label != first.label
    assert [v.label for v in provider.versions()] == [first.label, version.label]
    assert [v.active for v in provider.versions()] == [False, True]
    new_blob = provider.wrap(material, CONTEXT)
    assert provider.version_of(old_blob) == first.label
    assert provider.version_of(new_blob) == version.label
    assert not provider.is_current(old_blob)
    assert provider.is_current(new_blob)
    assert provider.owns(old_blob)
    assert provider.owns(new_blob)
    assert provider.unwrap(old_blob, CONTEXT).reveal() == material.reveal()
    # Derivations: the active version's first, the old one's still there for verifiers.
    assert len(provider.derive_keys(SEAL)) == 2
    assert provider.derive_keys(SEAL)[0] == provider.derive_key(SEAL)


def test_rewrap_many_moves_blobs_to_the_active_version(provider: LocalKeyProvider) -> None:
    materials = [Secret(os.urandom(32)) for _ in range(3)]
    contexts = [f"{CONTEXT}|{n}" for n in range(3)]
    blobs = provider.wrap_many(list(zip(materials, contexts, strict=True)))
    provider.rotate()
    rewrapped = provider.rewrap_many(list(zip(blobs, contexts, strict=True)))
    assert all(provider.is_current(blob) for blob in rewrapped)
    opened = provider.unwrap_many(list(zip(rewrapped, contexts, strict=True)))
    assert [s.reveal() for s in opened] == [m.reveal() for m in materials]


def test_rewrap_many_checks_every_blob_before_returning(provider: LocalKeyProvider) -> None:
    good = provider.wrap(dek(), CONTEXT)
    moved = provider.wrap(dek(), OTHER_CONTEXT)
    with pytest.raises(DecryptionError):
        provider.rewrap_many([(good, CONTEXT), (moved, CONTEXT)])


def test_version_of_refuses_foreign_blobs(provider: LocalKeyProvider) -> None:
    foreign = MemoryKeyProvider().wrap(dek(), CONTEXT)
    assert not provider.owns(foreign)
    assert not provider.owns(b"\x02" + foreign[1:])
    assert not provider.owns(b"short")
    with pytest.raises(KeyProviderError, match="not a wrapped key"):
        provider.version_of(foreign)


def test_retire_keeps_preserved_derivations_and_stops_unwrapping(
    provider: LocalKeyProvider,
) -> None:
    old_blob = provider.wrap(dek(), CONTEXT)
    seal_before = provider.derive_key(SEAL)
    signing_before = provider.derive_key(SIGNING)
    other_before = provider.derive_key("labvault/v1|audit|client-address")
    old_label = provider.versions()[0].label
    provider.rotate()
    new_blob = provider.wrap(dek(), CONTEXT)

    (gone,) = provider.retire([SEAL, SIGNING], active_label(provider))

    assert gone.label == old_label
    assert not gone.can_unwrap
    assert not gone.active
    assert [v.can_unwrap for v in provider.versions()] == [False, True]
    with pytest.raises(KeyProviderError, match="retired") as caught:
        provider.unwrap(old_blob, CONTEXT)
    assert old_label.split(":", 1)[1] in str(caught.value)
    assert provider.owns(old_blob)
    assert provider.version_of(old_blob) == old_label
    with pytest.raises(KeyProviderError, match="retired"):
        provider.rewrap_many([(old_blob, CONTEXT)])
    assert provider.unwrap(new_blob, CONTEXT).reveal() == dek().reveal()
    # What verifiers need survives; nothing else of the old root does.
    assert seal_before in provider.derive_keys(SEAL)
    assert signing_before in provider.derive_keys(SIGNING)
    assert provider.derive_keys(SEAL)[0] == provider.derive_key(SEAL) != seal_before
    assert other_before not in provider.derive_keys("labvault/v1|audit|client-address")
    assert provider.retire([SEAL, SIGNING], active_label(provider)) == []  # nothing left to retire


def test_retire_refuses_if_the_active_version_changed_since_the_check(
    provider: LocalKeyProvider,
) -> None:
    blob = provider.wrap(dek(), CONTEXT)
    checked = active_label(provider)  # the census saw every key under this version
    provider.rotate()  # then a rotation: "every version but the active" now includes it
    before = provider.versions()

    with pytest.raises(ActiveVersionChangedError, match="rotation happened"):
        provider.retire([SEAL, SIGNING], checked)

    assert provider.versions() == before
    assert provider.unwrap(blob, CONTEXT).reveal() == dek().reveal()


def test_file_retire_checks_the_active_version_in_the_locked_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    checker = FileKeyProvider.create(path)
    checked = active_label(checker)
    checker.rotate()
    checked_after_rotation = active_label(checker)
    FileKeyProvider(path).rotate()  # another process, after this one's census
    written = path.read_bytes()

    with pytest.raises(ActiveVersionChangedError):
        checker.retire([SEAL], checked)
    with pytest.raises(ActiveVersionChangedError):
        checker.retire([SEAL], checked_after_rotation)

    assert path.read_bytes() == written
    assert [v.can_unwrap for v in FileKeyProvider(path).versions()] == [True, True, True]
    assert len(checker.retire([SEAL], active_label(checker))) == 2


def test_retire_all_leaves_only_preserved_derivations(provider: LocalKeyProvider) -> None:
    blob = provider.wrap(dek(), CONTEXT)
    seal = provider.derive_key(SEAL)
    retired = provider.retire_all([SEAL])
    assert [v.can_unwrap for v in retired] == [False]
    with pytest.raises(KeyProviderError, match="retired"):
        provider.unwrap(blob, CONTEXT)
    with pytest.raises(KeyProviderError, match="can no longer wrap"):
        provider.wrap(dek(), CONTEXT)
    assert provider.derive_keys(SEAL) == [seal]
    assert provider.derive_key(SEAL) == seal
    with pytest.raises(KeyProviderError, match="not preserved"):
        provider.derive_key(SIGNING)


def test_file_rotation_is_durable_and_the_file_stays_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    blob = provider.wrap(dek(), CONTEXT)
    version = provider.rotate()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["root.key"], "no temporary file left"
    document = key_file_document(path)
    assert document["format"] == KEY_FILE_FORMAT, "unchanged format while nothing is retired"
    assert document["active"] == version.label.removeprefix("file:")
    assert len(document["keys"]) == 2
    reloaded = FileKeyProvider(path)
    assert reloaded.versions() == provider.versions()
    assert reloaded.unwrap(blob, CONTEXT).reveal() == dek().reveal()
    assert reloaded.is_current(reloaded.wrap(dek(), CONTEXT))


def test_file_retirement_drops_material_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    backup = provider.wrap(dek(), CONTEXT)  # a copy kept in a backup
    old_material = key_file_document(path)["keys"][0]["material"]
    provider.rotate()
    provider.retire([SEAL, SIGNING], active_label(provider))

    text = path.read_text(encoding="utf-8")
    assert old_material not in text
    document = json.loads(text)
    assert document["format"] == "labvault-keyfile/2"
    old_entry, new_entry = document["keys"]
    assert "material" not in old_entry
    assert set(old_entry["derived"]) == {SEAL, SIGNING}
    assert old_entry["retired"]
    assert old_entry["created"]
    assert "material" in new_entry
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A fresh process can never open the backup again, but still verifies old seals.
    reloaded = FileKeyProvider(path)
    with pytest.raises(KeyProviderError, match="retired"):
        reloaded.unwrap(backup, CONTEXT)
    assert reloaded.derive_keys(SEAL) == provider.derive_keys(SEAL)
    assert len(reloaded.derive_keys(SEAL)) == 2
    assert reloaded.versions() == provider.versions()


def test_a_running_process_follows_a_rotation_at_its_next_wrap(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    server = FileKeyProvider.create(path)  # a long-running process
    old_blob = server.wrap(dek(), CONTEXT)
    cli = FileKeyProvider(path)
    cli.rotate()
    # The server's next wrap sees the changed file: new keys go under the new root key.
    assert server.wrap(dek(), CONTEXT)[1:17] == cli.active_key_id.bytes
    assert server.active_key_id == cli.active_key_id
    new_blob = cli.wrap(dek(), CONTEXT)
    assert server.unwrap(new_blob, CONTEXT).reveal() == dek().reveal()
    assert server.is_current(new_blob)
    assert server.unwrap(old_blob, CONTEXT).reveal() == dek().reveal()


def test_an_unchanged_file_is_not_reread_for_unknown_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    stranger = FileKeyProvider.create(tmp_path / "other" / "root.key").wrap(dek(), CONTEXT)
    reads: list[Path] = []
    original = FileKeyProvider.reload

    def counting_reload(self: FileKeyProvider) -> None:
        reads.append(self.path)
        original(self)

    monkeypatch.setattr(FileKeyProvider, "reload", counting_reload)
    for _ in range(3):
        with pytest.raises(KeyProviderError, match="not loaded"):
            provider.unwrap(stranger, CONTEXT)
    assert reads == []
    assert not provider.owns(stranger)


def test_a_running_process_drops_retired_material_on_reload(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    server = FileKeyProvider.create(path)
    old_blob = server.wrap(dek(), CONTEXT)
    cli = FileKeyProvider(path)
    cli.rotate()
    cli.retire([SEAL], active_label(cli))
    # At once, with nothing else in between: retired material is gone from running processes.
    with pytest.raises(KeyProviderError, match="retired"):
        server.unwrap(old_blob, CONTEXT)
    # And none of them can wrap a new key under the retired root key.
    assert server.wrap(dek(), CONTEXT)[1:17] == cli.active_key_id.bytes


def test_concurrent_rotations_keep_every_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    first = FileKeyProvider.create(path)
    second = FileKeyProvider(path)  # loaded before the first one rotates
    first.rotate()
    second.rotate()  # re-reads the file under the lock: the first rotation survives
    assert len(FileKeyProvider(path).versions()) == 3


def test_a_crash_before_the_swap_leaves_the_old_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    before = path.read_bytes()
    blob = provider.wrap(dek(), CONTEXT)

    def crash(*_args: object) -> None:
        raise OSError(errno.EIO, "simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        provider.rotate()
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["root.key"]
    assert FileKeyProvider(path).unwrap(blob, CONTEXT).reveal() == dek().reveal()
    assert len(provider.versions()) == 1, "the process did not switch to an unsaved key"


def test_rotation_fsyncs_the_new_file_before_the_swap_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    provider.rotate()
    assert calls == ["fsync-file", "replace", "fsync-dir"]


def test_a_stale_temporary_file_from_a_crash_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    stale = path.with_name(".root.key.0123.tmp")
    write_key_file(stale, "{}")
    provider.rotate()
    assert not stale.exists()


def test_rotation_keeps_the_loader_checks(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    path.chmod(0o644)
    with pytest.raises(KeyProviderError, match="accessible to other users"):
        provider.rotate()
    assert len(key_file_document(path)["keys"]) == 1


def test_a_version_1_key_file_without_created_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    key_id = uuid.uuid4()
    document = {
        "format": KEY_FILE_FORMAT,
        "active": str(key_id),
        "keys": [{"id": str(key_id), "material": b64_key()}],
    }
    write_key_file(path, json.dumps(document))
    (version,) = FileKeyProvider(path).versions()
    assert version.created is None
    assert version.active


def test_reprs_of_rotated_and_retired_providers_hold_no_material(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    provider.rotate()
    provider.retire([SEAL], active_label(provider))
    text = repr(provider) + repr(provider.versions())
    for entry in key_file_document(path)["keys"]:
        for value in [entry.get("material"), *entry.get("derived", {}).values()]:
            if value:
                assert value not in text


def test_a_key_file_migrated_away_from_reloads_retired(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    provider = FileKeyProvider.create(path)
    blob = provider.wrap(dek(), CONTEXT)
    seal = provider.derive_key(SEAL)
    provider.retire_all([SEAL, SIGNING])
    assert "material" not in path.read_text(encoding="utf-8")
    reloaded = FileKeyProvider(path)
    assert [v.can_unwrap for v in reloaded.versions()] == [False]
    assert reloaded.derive_keys(SEAL) == [seal]
    with pytest.raises(KeyProviderError, match="retired"):
        reloaded.unwrap(blob, CONTEXT)
    with pytest.raises(KeyProviderError, match="can no longer wrap"):
        reloaded.wrap(dek(), CONTEXT)
