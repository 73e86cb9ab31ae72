"""Reset-link tokens, device tokens and the dates put in notices: pure functions."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from labvault.accounts.devices import device_hash, is_device_token, new_device_token
from labvault.accounts.services import link_selector as _reset_selector
from labvault.accounts.services import link_token as _reset_token
from labvault.accounts.services import paris_time


def test_a_reset_token_names_its_row_and_carries_256_random_bits() -> None:
    record_id = uuid.uuid4()
    token = _reset_token(record_id).reveal()
    selector, dot, verifier = token.partition(".")
    assert (selector, dot) == (record_id.hex, ".")
    assert len(verifier) == 43, "32 bytes in base64url"
    assert _reset_selector(token) == record_id
    assert _reset_token(record_id).reveal() != token, "fresh randomness each time"
    masked = _reset_token(record_id)
    assert masked.reveal() not in repr(masked), "kept out of logs and tracebacks"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "no-dot-at-all",
        f"{uuid.uuid4().hex}.",
        f"{uuid.uuid4().hex}.short",
        f"{uuid.uuid4().hex[:31]}z.{'a' * 43}",
        f"{uuid.uuid4()}.{'a' * 43}",
        f"{uuid.uuid4().hex}.{'a' * 100}",
    ],
    ids=["empty", "no-dot", "no-secret", "short-secret", "bad-hex", "dashed-uuid", "long-secret"],
)
def test_anything_else_is_no_reset_token(token: str) -> None:
    assert _reset_selector(token) is None


def test_device_tokens_and_their_hashes() -> None:
    token = new_device_token().reveal()
    assert is_device_token(token)
    for other in (None, "", token[:-1], token + "a", "é" * 43, "a b" + token[3:]):
        assert not is_device_token(other)
    first, second = uuid.uuid4(), uuid.uuid4()
    assert len(device_hash(first, token)) == 32
    assert device_hash(first, token) == device_hash(first, token)
    assert device_hash(first, token) != device_hash(second, token), "rows of two accounts differ"


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (dt.datetime(2027, 1, 15, 8, 5, tzinfo=dt.UTC), "15 janvier 2027 à 9 h 05"),  # UTC+1
        (dt.datetime(2027, 7, 1, 12, 30, tzinfo=dt.UTC), "1er juillet 2027 à 14 h 30"),  # UTC+2
        (dt.datetime(2027, 3, 28, 0, 59, tzinfo=dt.UTC), "28 mars 2027 à 1 h 59"),
        (dt.datetime(2027, 3, 28, 1, 0, tzinfo=dt.UTC), "28 mars 2027 à 3 h 00"),  # DST starts
        (dt.datetime(2027, 12, 31, 23, 30, tzinfo=dt.UTC), "1er janvier 2028 à 0 h 30"),
    ],
)
def test_notices_give_the_time_in_paris(moment: dt.datetime, expected: str) -> None:
    assert paris_time(moment) == expected
