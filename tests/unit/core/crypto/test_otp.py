"""TOTP (RFC 6238) with replay refusal, and the codes sent by email or printed for recovery."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labvault.core.crypto.otp import (
    TOTP_STEP_SECONDS,
    match_totp,
    new_email_code,
    new_recovery_code,
    new_totp_secret,
    normalize_code,
    provisioning_uri,
    totp_code,
    totp_secret_text,
)
from labvault.core.crypto.secret import Secret

RFC_SECRET = Secret(b"12345678901234567890")


@pytest.mark.parametrize(
    ("moment", "code"),
    [
        (59, "287082"),
        (1111111109, "081804"),
        (1111111111, "050471"),
        (1234567890, "005924"),
        (2000000000, "279037"),
        (20000000000, "353130"),
    ],
)
def test_rfc_6238_sha1_vectors(moment: int, code: str) -> None:
    assert totp_code(RFC_SECRET, moment) == code
    assert match_totp(RFC_SECRET, code, after_step=0, at=moment) == moment // 30


def test_one_step_of_drift_either_way_and_no_more() -> None:
    now = 1_800_000_000
    for offset, accepted in ((-60, False), (-30, True), (0, True), (30, True), (60, False)):
        code = totp_code(RFC_SECRET, now + offset)
        found = match_totp(RFC_SECRET, code, after_step=0, at=now)
        assert (found is not None) is accepted, offset


def test_a_code_is_good_once() -> None:
    now = 1_800_000_000
    code = totp_code(RFC_SECRET, now)
    step = match_totp(RFC_SECRET, code, after_step=0, at=now)
    assert step is not None
    assert match_totp(RFC_SECRET, code, after_step=step, at=now) is None
    assert match_totp(RFC_SECRET, code, after_step=step, at=now + 25) is None
    older = totp_code(RFC_SECRET, now - TOTP_STEP_SECONDS)
    assert match_totp(RFC_SECRET, older, after_step=step, at=now) is None


@given(st.text(max_size=12))
def test_anything_else_is_refused_without_error(code: str) -> None:
    secret = new_totp_secret()
    now = 1_800_000_000
    result = match_totp(secret, code, after_step=0, at=now)
    if result is not None:
        assert normalize_code(code) == totp_code(secret, result * TOTP_STEP_SECONDS)


def test_the_provisioning_uri_carries_the_secret_and_no_address() -> None:
    secret = new_totp_secret()
    uri = provisioning_uri(secret, issuer="Labo Démo", account_label="compte-3F2A")
    parsed = urlparse(uri)
    assert parsed.scheme == "otpauth"
    assert parsed.netloc == "totp"
    query = parse_qs(parsed.query)
    assert query["secret"] == [totp_secret_text(secret)]
    assert query["digits"] == ["6"]
    assert "@" not in uri
    assert "**" in repr(secret)


def test_email_and_recovery_codes_are_random_and_well_formed() -> None:
    codes = {new_email_code().reveal() for _ in range(200)}
    assert all(len(c) == 6 and c.isdigit() for c in codes)
    assert len(codes) > 190
    recovery = new_recovery_code().reveal()
    assert len(recovery) == 14
    assert recovery.count("-") == 2
    assert normalize_code(recovery.upper().replace("-", " ")) == recovery.replace("-", "")
