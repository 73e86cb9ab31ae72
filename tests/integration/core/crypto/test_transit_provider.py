"""TransitKeyProvider against a real OpenBao dev server."""

from __future__ import annotations

import pickle
import time
import uuid
from pathlib import Path

import httpx
import pytest

from labvault.core.crypto.errors import DecryptionError, KeyProviderError
from labvault.core.crypto.providers.base import ActiveVersionChangedError, KeyProvider
from labvault.core.crypto.providers.transit import TransitKeyProvider, TransitOptions
from labvault.core.crypto.secret import Secret
from openbao import OpenBaoServer

pytestmark = pytest.mark.openbao

DEK = Secret(bytes(range(32)))


def _key_name() -> str:
    return f"labvault-{uuid.uuid4().hex[:12]}"


def test_it_is_a_key_provider_named_transit(transit_provider: TransitKeyProvider) -> None:
    assert isinstance(transit_provider, KeyProvider)
    assert transit_provider.name == "transit"


def test_wrap_unwrap_round_trip_stores_transit_ciphertext(
    transit_provider: TransitKeyProvider,
) -> None:
    wrapped = transit_provider.wrap(DEK, "tenant-a|patient|1")
    assert wrapped.startswith(b"vault:v1:")
    assert DEK.reveal() not in wrapped
    assert transit_provider.owns(wrapped)
    assert transit_provider.unwrap(wrapped, "tenant-a|patient|1") == DEK


def test_a_blob_only_unwraps_for_its_own_context(transit_provider: TransitKeyProvider) -> None:
    wrapped = transit_provider.wrap(DEK, "tenant-a|patient|1")
    for other in ("tenant-b|patient|1", "tenant-a|patient|2"):
        with pytest.raises(DecryptionError, match="does not authenticate"):
            transit_provider.unwrap(wrapped, other)


def test_batches_round_trip_across_chunks(transit_provider: TransitKeyProvider) -> None:
    secrets = [Secret(i.to_bytes(2, "big") * 16) for i in range(260)]  # > one batch (200)
    items = [(secret, f"ctx|{i}") for i, secret in enumerate(secrets)]
    wrapped = transit_provider.wrap_many(items)
    assert len(wrapped) == 260
    opened = transit_provider.unwrap_many([(w, f"ctx|{i}") for i, w in enumerate(wrapped)])
    assert opened == secrets


def test_one_bad_item_fails_the_batch_naming_its_position_only(
    transit_provider: TransitKeyProvider,
) -> None:
    plain = [Secret(b"P" * 32), Secret(b"Q" * 32)]
    wrapped = transit_provider.wrap_many([(plain[0], "ctx|0"), (plain[1], "ctx|1")])
    with pytest.raises(DecryptionError) as caught:
        transit_provider.unwrap_many([(wrapped[0], "ctx|0"), (wrapped[1], "ctx|other")])
    message = str(caught.value)
    assert "item 1 of the decrypt batch" in message
    assert "ctx|" not in message
    for secret in plain:
        assert secret.reveal().decode() not in message
    with pytest.raises(DecryptionError, match="not a wrapped key"):
        transit_provider.unwrap_many([(b"\x01garbage", "ctx|0")])


def test_rotate_then_rewrap_moves_blobs_to_the_new_version_server_side(
    transit_provider: TransitKeyProvider,
) -> None:
    key = transit_provider.options.key
    wrapped = transit_provider.wrap_many([(DEK, "ctx|0"), (DEK, "ctx|1")])
    assert transit_provider.version_of(wrapped[0]) == f"transit:{key}:v1"
    assert transit_provider.is_current(wrapped[0])

    version = transit_provider.rotate()
    assert (version.label, version.active, version.can_unwrap) == (f"transit:{key}:v2", True, True)
    assert not transit_provider.is_current(wrapped[0])
    assert [v.label for v in transit_provider.versions()] == [
        f"transit:{key}:v1",
        f"transit:{key}:v2",
    ]

    rewrapped = transit_provider.rewrap_many([(wrapped[0], "ctx|0"), (wrapped[1], "ctx|1")])
    assert all(blob.startswith(b"vault:v2:") for blob in rewrapped)
    assert all(transit_provider.is_current(blob) for blob in rewrapped)
    assert transit_provider.unwrap(rewrapped[1], "ctx|1") == DEK
    with pytest.raises(DecryptionError):
        transit_provider.rewrap_many([(wrapped[0], "ctx|1")])


def test_retire_stops_old_blobs_from_unwrapping(transit_provider: TransitKeyProvider) -> None:
    key = transit_provider.options.key
    old = transit_provider.wrap(DEK, "ctx")
    # A single version: nothing to retire.
    assert transit_provider.retire([], f"transit:{key}:v1") == []
    transit_provider.rotate()
    new = transit_provider.wrap(DEK, "ctx")

    retired = transit_provider.retire(["audit-seal"], f"transit:{key}:v2")
    assert [(v.label, v.can_unwrap) for v in retired] == [(f"transit:{key}:v1", False)]
    assert [v.can_unwrap for v in transit_provider.versions()] == [False, True]
    with pytest.raises(KeyProviderError, match="retired key version"):
        transit_provider.unwrap(old, "ctx")
    assert transit_provider.unwrap(new, "ctx") == DEK


def test_derived_keys_are_stable_across_instances_rotation_and_retirement(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider
) -> None:
    first = transit_provider.derive_key("audit-seal")
    assert len(first.reveal()) == 32
    assert first != transit_provider.derive_key("checkpoint-signing")
    active = transit_provider.rotate()
    transit_provider.retire([], active.label)
    again = openbao.provider(transit_provider.options.key)
    assert again.derive_key("audit-seal") == first
    assert again.derive_keys("audit-seal") == [first]


def test_derive_keys_lists_every_derivation_key_version_latest_first(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider
) -> None:
    before = transit_provider.derive_key("audit-seal")
    openbao.request("POST", f"transit/keys/{transit_provider.options.derivation_key_name}/rotate")
    keys = transit_provider.derive_keys("audit-seal")
    assert len(keys) == 2
    assert keys[1] == before
    assert keys[0] == transit_provider.derive_key("audit-seal") != before


def test_approle_login_and_relogin_after_the_token_expires(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider, tmp_path: Path
) -> None:
    key = transit_provider.options.key
    role_id, secret_id = openbao.approle([openbao.app_policy(key)], token_ttl="2s")
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(secret_id + "\n")
    app = TransitKeyProvider(openbao.options(key, role_id=role_id, secret_id_file=str(secret_file)))
    wrapped = app.wrap(DEK, "ctx")
    time.sleep(2.5)  # the AppRole token has expired: the provider logs in again
    assert app.unwrap(wrapped, "ctx") == DEK


def test_a_wrong_secret_id_gives_a_clear_error(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider, tmp_path: Path
) -> None:
    role_id, _ = openbao.approle(["default"])
    secret_file = tmp_path / "secret-id"
    secret_file.write_text("not-the-secret-id")
    app = TransitKeyProvider(
        openbao.options(
            transit_provider.options.key, role_id=role_id, secret_id_file=str(secret_file)
        )
    )
    with pytest.raises(KeyProviderError, match="AppRole login") as caught:
        app.wrap(DEK, "ctx")
    assert "not-the-secret-id" not in str(caught.value)


def test_a_wrong_token_gives_a_clear_error_without_the_token(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider
) -> None:
    key = transit_provider.options.key
    app = openbao.provider(key, token="s.wrong-token-value")
    with pytest.raises(KeyProviderError) as caught:
        app.wrap(DEK, "ctx")
    message = str(caught.value)
    assert "permission denied" in message
    assert openbao.address in message
    assert key in message
    assert "wrong-token-value" not in message
    assert openbao.root_token not in message


def test_a_missing_key_is_named_in_the_error(openbao: OpenBaoServer) -> None:
    with pytest.raises(KeyProviderError, match=r"not found.*labvault init"):
        openbao.provider(_key_name()).versions()


def test_an_unreachable_server_fails_clearly_after_retries_within_the_timeout(
    openbao: OpenBaoServer,
) -> None:
    from openbao import free_port

    options = TransitOptions(
        address=f"http://127.0.0.1:{free_port()}", mount="transit", key="k", retries=2
    )
    provider = TransitKeyProvider(options, token=Secret(openbao.root_token))
    started = time.monotonic()
    with pytest.raises(KeyProviderError, match="cannot reach the server after 3 attempts"):
        provider.wrap(DEK, "ctx")
    assert time.monotonic() - started < options.timeout_seconds


def test_ensure_keys_refuses_a_wrapping_key_without_derivation(openbao: OpenBaoServer) -> None:
    key = _key_name()
    openbao.request("POST", f"transit/keys/{key}", {"type": "aes256-gcm96"})
    with pytest.raises(KeyProviderError, match="derived=true"):
        openbao.provider(key).ensure_keys()


def test_ensure_keys_is_idempotent(transit_provider: TransitKeyProvider) -> None:
    transit_provider.ensure_keys()
    assert [v.label for v in transit_provider.versions()] == [
        f"transit:{transit_provider.options.key}:v1"
    ]


def test_repr_hides_the_token_and_the_provider_does_not_pickle(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider
) -> None:
    assert openbao.root_token not in repr(transit_provider)
    assert transit_provider.options.key in repr(transit_provider)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(transit_provider)


def test_foreign_blobs_are_not_owned(transit_provider: TransitKeyProvider) -> None:
    assert not transit_provider.owns(b"\x01" + bytes(40))
    assert not transit_provider.is_current(b"\x01" + bytes(40))
    with pytest.raises(KeyProviderError):
        transit_provider.version_of(b"\x01" + bytes(40))


class CountingTransport(httpx.HTTPTransport):
    """The real HTTP transport, counting what is sent (to see retries, not to fake answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request.url.path)
        return super().handle_request(request)


def test_auth_and_validation_failures_are_not_retried(openbao: OpenBaoServer) -> None:
    transport = CountingTransport()
    provider = TransitKeyProvider(
        openbao.options(_key_name(), retries=3), token=Secret("wrong"), transport=transport
    )
    with pytest.raises(KeyProviderError, match="permission denied"):
        provider.wrap(DEK, "ctx")
    assert len(transport.sent) == 1


def test_server_errors_are_retried_then_reported(openbao: OpenBaoServer) -> None:
    # A "hmac" key without a size makes the server fail with a 500: retried, then reported.
    transport = CountingTransport()
    key = _key_name()
    provider = TransitKeyProvider(
        openbao.options(key, retries=2), token=Secret(openbao.root_token), transport=transport
    )
    with pytest.raises(KeyProviderError, match="answered 500"):
        provider._call("POST", f"keys/{key}", {"type": "hmac"})
    assert transport.sent == [f"/v1/transit/keys/{key}"] * 3


def test_a_namespace_is_sent_with_every_call(openbao: OpenBaoServer) -> None:
    namespace = f"lab{uuid.uuid4().hex[:8]}"
    openbao.request("POST", f"sys/namespaces/{namespace}", {})
    httpx.post(
        f"{openbao.address}/v1/sys/mounts/transit",
        headers={"X-Vault-Token": openbao.root_token, "X-Vault-Namespace": namespace},
        json={"type": "transit"},
    ).raise_for_status()
    key = _key_name()
    provider = openbao.provider(key, namespace=namespace)
    provider.ensure_keys()
    assert provider.unwrap(provider.wrap(DEK, "ctx"), "ctx") == DEK
    with pytest.raises(KeyProviderError, match="not found"):
        openbao.provider(key).versions()  # not in the root namespace


def test_retire_is_refused_if_a_rotation_happened_after_the_check(
    transit_provider: TransitKeyProvider,
) -> None:
    key = transit_provider.options.key
    transit_provider.rotate()
    checked = f"transit:{key}:v2"  # every key was counted under v2
    blob = transit_provider.wrap(DEK, "ctx")
    transit_provider.rotate()  # another operator, or auto-rotation: v3 is the latest now

    with pytest.raises(ActiveVersionChangedError, match="rotation happened"):
        transit_provider.retire([], checked)

    assert [v.can_unwrap for v in transit_provider.versions()] == [True, True, True]
    assert transit_provider.unwrap(blob, "ctx") == DEK
    with pytest.raises(KeyProviderError, match="not a version of this key"):
        transit_provider.retire([], "transit:another-key:v3")


def test_destroying_retired_versions_is_irreversible(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider
) -> None:
    key = transit_provider.options.key
    backup = transit_provider.wrap(DEK, "ctx")  # a copy in a database backup
    active = transit_provider.rotate().label
    with pytest.raises(KeyProviderError, match="retire them first"):
        transit_provider.destroy_retired(active)
    transit_provider.retire([], active)

    # Retired only: an operator lowering min_decryption_version opens the backup again.
    openbao.request("POST", f"transit/keys/{key}/config", {"min_decryption_version": 1})
    assert transit_provider.unwrap(backup, "ctx") == DEK
    transit_provider.retire([], active)

    destroyed = transit_provider.destroy_retired(active)

    assert [(v.label, v.can_unwrap) for v in destroyed] == [(f"transit:{key}:v1", False)]
    assert [v.label for v in transit_provider.versions()] == [active]
    with pytest.raises(httpx.HTTPStatusError):
        openbao.request("POST", f"transit/keys/{key}/config", {"min_decryption_version": 1})
    with pytest.raises(KeyProviderError, match="retired key version"):
        transit_provider.unwrap(backup, "ctx")
    assert transit_provider.destroy_retired(active) == []  # nothing left to destroy
    # The next rotation, retirement and destruction work the same way.
    blob = transit_provider.wrap(DEK, "ctx")
    newest = transit_provider.rotate().label
    assert transit_provider.wrap(DEK, "ctx").startswith(b"vault:v3:")
    transit_provider.retire([], newest)
    assert [v.label for v in transit_provider.destroy_retired(newest)] == [active]
    with pytest.raises(KeyProviderError, match="retired key version"):
        transit_provider.unwrap(blob, "ctx")


@pytest.mark.parametrize("flag", ["exportable", "allow_plaintext_backup"])
def test_ensure_keys_refuses_a_wrapping_key_whose_material_can_leave(
    openbao: OpenBaoServer, flag: str
) -> None:
    key = _key_name()
    openbao.request(
        "POST", f"transit/keys/{key}", {"type": "aes256-gcm96", "derived": True, flag: True}
    )
    with pytest.raises(KeyProviderError, match=f"{flag}=true") as caught:
        openbao.provider(key).ensure_keys()
    assert "Create a new key" in str(caught.value)


def test_proxy_variables_are_ignored(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token must not travel through a proxy named by the environment (nor fail on one)."""
    from openbao import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, nowhere)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    provider = openbao.provider(transit_provider.options.key, retries=0)
    assert provider.unwrap(provider.wrap(DEK, "ctx"), "ctx") == DEK
