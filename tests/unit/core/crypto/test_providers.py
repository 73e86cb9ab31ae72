"""Local key providers (memory, file): wrapping, context binding, key file safety."""

from __future__ import annotations

import base64
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
    return json.loads(path.read_text(encoding="utf-8"))


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
        "wrong-format": (json.dumps(_document(material, format="labvault-keyfile/2")), "not a"),
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
    # The provider loaded before the rotation does not know the new root key.
    with pytest.raises(KeyProviderError, match="not loaded"):
        original.unwrap(wrapped_new, CONTEXT)
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
    provider = load_key_provider(f"file:{path}", str(tmp_path / "default.key"))
    assert isinstance(provider, FileKeyProvider)
    assert provider.path == path
    assert provider.unwrap(created.wrap(dek(), "c"), "c") == dek()


def test_load_key_provider_file_uses_the_default_path(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "root.key"
    FileKeyProvider.create(path)
    provider = load_key_provider("file:", str(path))
    assert isinstance(provider, FileKeyProvider)
    assert provider.path == path


def test_load_key_provider_refuses_unknown_schemes(tmp_path: Path) -> None:
    with pytest.raises(KeyProviderError, match="unknown key provider scheme"):
        load_key_provider("vault:transit", str(tmp_path / "root.key"))


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
