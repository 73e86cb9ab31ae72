"""The OpenBao policies shipped in docs/openbao/ give the provider what it needs, and no more."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.providers.transit import TransitKeyProvider
from labvault.core.crypto.secret import Secret
from openbao import OpenBaoServer

pytestmark = pytest.mark.openbao

POLICIES = Path(__file__).resolve().parents[4] / "docs" / "openbao"
DEK = Secret(b"d" * 32)


def _policy_token(openbao: OpenBaoServer, document: str, key: str) -> str:
    """Write the shipped policy with this test's key names in place of "labvault"."""
    text = (POLICIES / document).read_text(encoding="utf-8")
    text = text.replace("/labvault-derivation", "/@derivation@").replace("/labvault", f"/{key}")
    text = text.replace("/@derivation@", f"/{key}-derivation")
    name = f"{document.removesuffix('.hcl')}-{key}"
    openbao.request("PUT", f"sys/policies/acl/{name}", {"policy": text})
    return openbao.create_token([name])


def _key() -> str:
    return f"labvault-{uuid.uuid4().hex[:12]}"


def test_the_operator_policy_creates_rotates_and_retires(openbao: OpenBaoServer) -> None:
    key = _key()
    operator = openbao.provider(key, token=_policy_token(openbao, "labvault-operator.hcl", key))
    operator.ensure_keys()
    old = operator.wrap(DEK, "ctx")
    operator.rotate()
    assert [v.label for v in operator.retire([], f"transit:{key}:v2")] == [f"transit:{key}:v1"]
    with pytest.raises(KeyProviderError, match="retired"):
        operator.unwrap(old, "ctx")
    # `keys retire --destroy`: the retired version is trimmed, for good.
    destroyed = operator.destroy_retired(f"transit:{key}:v2")
    assert [v.label for v in destroyed] == [f"transit:{key}:v1"]
    assert [v.label for v in operator.versions()] == [f"transit:{key}:v2"]


def test_the_app_policy_wraps_unwraps_rewraps_and_derives_only(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider
) -> None:
    key = transit_provider.options.key
    token = _policy_token(openbao, "labvault-app.hcl", key)
    app = openbao.provider(key, token=token)
    wrapped = app.wrap(DEK, "ctx")
    assert app.unwrap(wrapped, "ctx") == DEK
    assert app.is_current(wrapped)
    assert app.derive_keys("audit-seal") == [app.derive_key("audit-seal")]
    transit_provider.rotate()
    [moved] = app.rewrap_many([(wrapped, "ctx")])
    assert moved.startswith(b"vault:v2:")
    assert [v.label for v in app.versions()][-1] == f"transit:{key}:v2"

    with pytest.raises(KeyProviderError, match="permission denied"):
        app.rotate()
    with pytest.raises(KeyProviderError, match="operator token"):
        app.retire([], f"transit:{key}:v2")
    transit_provider.retire([], f"transit:{key}:v2")
    with pytest.raises(KeyProviderError, match="operator token"):
        app.destroy_retired(f"transit:{key}:v2")
    assert len(transit_provider.versions()) == 2, "nothing was destroyed"
    with pytest.raises(KeyProviderError, match="permission denied"):
        openbao.provider(_key(), token=token).ensure_keys()
    exported = httpx.get(
        f"{openbao.address}/v1/transit/export/encryption-key/{key}",
        headers={"X-Vault-Token": token},
    )
    assert exported.status_code == 403
