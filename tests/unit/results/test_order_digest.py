"""Order numbers are kept as keyed digests (finding 9): a dump must not give sequential
order numbers back by hashing candidates."""

from __future__ import annotations

import hashlib
import uuid

from labvault.core.crypto.secret import Secret
from labvault.results.incoming import IncomingOrder
from labvault.results.intake import OrderDigester

ORDER = IncomingOrder(placer_order_number="CMD-1", filler_order_number="260115001", exams=())


def test_the_digest_is_keyed_per_tenant_and_not_a_plain_hash() -> None:
    keys = [Secret(b"k" * 32)]
    first = OrderDigester(uuid.uuid4(), lambda: keys)
    second = OrderDigester(uuid.uuid4(), lambda: keys)
    digest = first.digest(ORDER)
    assert digest != hashlib.sha256(b"260115001").digest()
    assert digest != second.digest(ORDER)
    assert first.digest(ORDER) == digest  # deterministic: deduplication still works
    assert "k" * 8 not in repr(first)


def test_lookups_match_every_root_version_and_writes_use_the_active_one() -> None:
    tenant = uuid.uuid4()
    old, new = Secret(b"o" * 32), Secret(b"n" * 32)
    calls: list[int] = []

    def keys() -> list[Secret[bytes]]:
        calls.append(1)
        return [new, old]

    rotated = OrderDigester(tenant, keys)
    before = OrderDigester(tenant, lambda: [old]).digest(ORDER)
    assert rotated.digest(ORDER) != before
    assert rotated.candidates(ORDER) == (rotated.digest(ORDER), before)
    assert len(calls) == 1  # derived once
