"""The production setup of docs/keys.md, on a real OpenBao: the decrypt quota, the audit device."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.providers.transit import TransitKeyProvider
from labvault.core.crypto.secret import Secret
from openbao import OpenBaoServer

pytestmark = pytest.mark.openbao

DEK = Secret(bytes(range(32)))
CONTEXT = "labvault/v1|data_key|tenant|patient|subject|key"


def test_the_documented_quota_caps_unwrapping_and_not_wrapping(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider
) -> None:
    """docs/keys.md: `sys/quotas/rate-limit/labvault-decrypt path=transit/decrypt/<key>`."""
    key = transit_provider.options.key
    name = f"decrypt-{key}"
    openbao.request(
        "POST",
        f"sys/quotas/rate-limit/{name}",
        {"path": f"transit/decrypt/{key}", "rate": 3, "interval": "1s", "block_interval": "5s"},
    )
    try:
        # No retries: what a caller sees at once when the second ceiling is reached.
        app = openbao.provider(key, retries=0)
        wrapped = app.wrap(DEK, CONTEXT)
        opened, refusals = 0, []
        for _ in range(10):
            try:
                opened += app.unwrap(wrapped, CONTEXT) == DEK
            except KeyProviderError as refused:
                refusals.append(str(refused))
        assert opened <= 3
        assert refusals
        assert all("429" in message for message in refusals)
        assert not any(base64.b64encode(DEK.reveal()).decode() in m for m in refusals)
        # Wrapping new keys is another path: the quota does not stop registrations.
        for _ in range(10):
            app.wrap(DEK, CONTEXT)
        # Blocked for block_interval even at a slow pace: the ceiling is not a sliding window
        # a patient scraper could ride just under.
        time.sleep(1.1)
        with pytest.raises(KeyProviderError, match="429"):
            app.unwrap(wrapped, CONTEXT)
    finally:
        openbao.request("DELETE", f"sys/quotas/rate-limit/{name}")


def test_the_audit_device_records_every_unwrap_without_key_material(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider, tmp_path: Path
) -> None:
    """docs/keys.md: `bao audit enable file file_path=...`; values are HMAC'd by OpenBao."""
    log = tmp_path / "audit.log"
    device = f"file-{transit_provider.options.key}"
    openbao.request(
        "POST", f"sys/audit/{device}", {"type": "file", "options": {"file_path": str(log)}}
    )
    try:
        wrapped = transit_provider.wrap(DEK, CONTEXT)
        assert transit_provider.unwrap_many([(wrapped, CONTEXT)] * 3) == [DEK] * 3
    finally:
        openbao.request("DELETE", f"sys/audit/{device}")
    text = log.read_text(encoding="utf-8")
    entries = [json.loads(line) for line in text.splitlines()]
    decrypts = [
        entry
        for entry in entries
        if entry.get("type") == "response"
        and entry["request"]["path"] == f"transit/decrypt/{transit_provider.options.key}"
    ]
    assert len(decrypts) == 1  # one batch call for the three keys
    for secret in (
        base64.b64encode(DEK.reveal()).decode(),
        wrapped.decode(),
        base64.b64encode(CONTEXT.encode()).decode(),
    ):
        assert secret not in text
