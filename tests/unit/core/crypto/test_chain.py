"""KeyChain: wraps with the current provider, unwraps with whichever owns the blob."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from labvault.core.crypto.errors import DecryptionError, KeyProviderError
from labvault.core.crypto.providers import FileKeyProvider, KeyProvider, MemoryKeyProvider
from labvault.core.crypto.providers.base import ActiveVersionChangedError
from labvault.core.crypto.providers.chain import KeyChain, active_label
from labvault.core.crypto.providers.transit import TransitKeyProvider, TransitOptions
from labvault.core.crypto.secret import Secret

SEAL = "labvault/v1|audit|event-seal"


def material(n: int) -> Secret[bytes]:
    return Secret(bytes([n]) * 32)


def ctx(n: int) -> str:
    return f"labvault/v1|test|{n}"


@pytest.fixture
def providers(tmp_path: Path) -> tuple[FileKeyProvider, FileKeyProvider]:
    return (
        FileKeyProvider.create(tmp_path / "old" / "root.key"),
        FileKeyProvider.create(tmp_path / "new" / "root.key"),
    )


def test_chain_is_a_key_provider(providers: tuple[FileKeyProvider, FileKeyProvider]) -> None:
    previous, current = providers
    chain = KeyChain(current, [previous])
    assert isinstance(chain, KeyProvider)
    assert chain.name == "file"
    assert "material" not in repr(chain)
    with pytest.raises(TypeError):
        pickle.dumps(chain)


def test_wrap_goes_to_current_and_unwrap_to_the_owner(
    providers: tuple[FileKeyProvider, FileKeyProvider],
) -> None:
    previous, current = providers
    old_blob = previous.wrap(material(1), ctx(1))
    chain = KeyChain(current, [previous])
    new_blob = chain.wrap(material(2), ctx(2))
    assert current.owns(new_blob)
    assert not previous.owns(new_blob)
    assert chain.unwrap(old_blob, ctx(1)) == material(1)
    assert chain.unwrap(new_blob, ctx(2)) == material(2)
    assert chain.owns(old_blob)
    assert chain.owns(new_blob)
    assert chain.is_current(new_blob)
    assert not chain.is_current(old_blob)
    assert chain.version_of(old_blob) == previous.versions()[0].label
    assert chain.version_of(new_blob) == current.versions()[0].label


def test_unwrap_many_batches_per_provider_and_keeps_order(
    providers: tuple[FileKeyProvider, FileKeyProvider],
) -> None:
    previous, current = providers
    calls: list[tuple[str, int]] = []

    class Counting(MemoryKeyProvider):
        def unwrap_many(self, items):  # type: ignore[no-untyped-def]
            calls.append(("memory", len(items)))
            return super().unwrap_many(items)

    memory = Counting()
    blobs = [
        (current if n % 3 == 0 else previous if n % 3 == 1 else memory).wrap(material(n), ctx(n))
        for n in range(9)
    ]
    chain = KeyChain(current, [previous, memory])
    opened = chain.unwrap_many([(blob, ctx(n)) for n, blob in enumerate(blobs)])
    assert opened == [material(n) for n in range(9)]
    assert calls == [("memory", 3)]


def test_rewrap_many_moves_previous_blobs_to_current(
    providers: tuple[FileKeyProvider, FileKeyProvider],
) -> None:
    previous, current = providers
    blobs = [previous.wrap(material(0), ctx(0)), current.wrap(material(1), ctx(1))]
    current.rotate()
    chain = KeyChain(current, [previous])
    rewrapped = chain.rewrap_many([(blob, ctx(n)) for n, blob in enumerate(blobs)])
    assert all(chain.is_current(blob) and current.owns(blob) for blob in rewrapped)
    assert current.unwrap_many([(b, ctx(n)) for n, b in enumerate(rewrapped)]) == [
        material(0),
        material(1),
    ]


def test_rewrap_many_fails_whole_on_one_bad_blob(
    providers: tuple[FileKeyProvider, FileKeyProvider],
) -> None:
    previous, current = providers
    chain = KeyChain(current, [previous])
    with pytest.raises(DecryptionError):
        chain.rewrap_many(
            [
                (previous.wrap(material(0), ctx(0)), ctx(0)),
                (current.wrap(material(1), ctx(1)), ctx(2)),
            ]
        )


def test_a_blob_of_no_configured_provider_is_refused(
    providers: tuple[FileKeyProvider, FileKeyProvider],
) -> None:
    previous, current = providers
    stranger = MemoryKeyProvider().wrap(material(0), ctx(0))
    chain = KeyChain(current, [previous])
    assert not chain.owns(stranger)
    with pytest.raises(KeyProviderError, match="none of the configured key providers"):
        chain.unwrap(stranger, ctx(0))
    with pytest.raises(KeyProviderError, match="none of the configured key providers"):
        chain.version_of(stranger)


def test_derivations_current_first_then_previous(
    providers: tuple[FileKeyProvider, FileKeyProvider],
) -> None:
    previous, current = providers
    chain = KeyChain(current, [previous])
    assert chain.derive_key(SEAL) == current.derive_key(SEAL)
    assert chain.derive_keys(SEAL) == [current.derive_key(SEAL), previous.derive_key(SEAL)]


def test_versions_rotate_and_retire(providers: tuple[FileKeyProvider, FileKeyProvider]) -> None:
    previous, current = providers
    old_blob = previous.wrap(material(0), ctx(0))
    first_current = current.wrap(material(1), ctx(1))
    chain = KeyChain(current, [previous])
    old_label = previous.versions()[0].label
    new = chain.rotate()
    assert new == current.versions()[-1]
    labels = [(v.label, v.active, v.can_unwrap) for v in chain.versions()]
    assert labels == [
        (old_label, False, True),
        (current.versions()[0].label, False, True),
        (new.label, True, True),
    ]
    previous_seal = previous.derive_key(SEAL)
    gone = chain.retire([SEAL], new.label)
    assert {v.label for v in gone} == {old_label, current.versions()[0].label}
    assert [v.can_unwrap for v in chain.versions()] == [False, False, True]
    for blob, n in ((old_blob, 0), (first_current, 1)):
        with pytest.raises(KeyProviderError, match="retired"):
            chain.unwrap(blob, ctx(n))
    assert previous_seal in chain.derive_keys(SEAL)
    # The previous key file no longer holds any material.
    assert "material" not in previous.path.read_text(encoding="utf-8")
    assert chain.unwrap(chain.wrap(material(3), ctx(3)), ctx(3)) == material(3)


def _transit(key: str) -> TransitKeyProvider:
    """A Transit provider that is never called: building one contacts no server."""
    options = TransitOptions(address="http://127.0.0.1:1", mount="transit", key=key)
    return TransitKeyProvider(options, token=Secret("never-sent"))


def test_two_transit_providers_are_refused_even_nested(
    providers: tuple[FileKeyProvider, FileKeyProvider],
) -> None:
    # Their blobs both start with "vault:v": the new key would claim the old one's.
    old_key, new_key = _transit("old"), _transit("new")
    assert not old_key.blobs_name_their_key
    with pytest.raises(KeyProviderError, match="rotate the key instead"):
        KeyChain(new_key, [old_key])
    # `keys migrate` nests the configured chain inside a new one.
    configured = KeyChain(old_key, [providers[0]])
    with pytest.raises(KeyProviderError, match="cannot be told apart"):
        KeyChain(new_key, [configured])


def test_providers_whose_blobs_name_their_key_may_share_a_name(
    providers: tuple[FileKeyProvider, FileKeyProvider],
) -> None:
    previous, current = providers
    assert previous.blobs_name_their_key
    assert MemoryKeyProvider().blobs_name_their_key
    chain = KeyChain(current, [previous])
    assert chain.blobs_name_their_key
    assert not KeyChain(_transit("k"), [previous]).blobs_name_their_key
    assert KeyChain(current, [KeyChain(previous, [MemoryKeyProvider()])]).providers


def test_retire_is_refused_if_another_process_rotated_after_the_check(
    providers: tuple[FileKeyProvider, FileKeyProvider],
) -> None:
    previous, current = providers
    chain = KeyChain(current, [previous])
    checked = active_label(chain)  # what `keys retire` counted the wrapped keys against
    FileKeyProvider(current.path).rotate()  # another operator, meanwhile
    files = {path: path.read_bytes() for path in (previous.path, current.path)}

    with pytest.raises(ActiveVersionChangedError, match="rotation happened"):
        chain.retire([SEAL], checked)

    assert {path: path.read_bytes() for path in files} == files, "nothing changed"
    assert all(version.can_unwrap for version in chain.versions())
    gone = chain.retire([SEAL], active_label(chain))
    assert len(gone) == 2  # the current file's first version, the previous file's only one
