"""One-time passwords: TOTP (RFC 6238) for authenticator apps, and short codes sent by email.

TOTP comes from ``cryptography``; what is here is the policy around it: a 160-bit secret,
SHA-1 and 6 digits and 30-second steps (what every authenticator app supports), one step
of clock drift either way, and the step that matched, so the caller can refuse a replay
(a code is good once).
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
import time
from urllib.parse import quote, urlencode

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from labvault.core.crypto.secret import Secret

TOTP_SECRET_BYTES = 20
TOTP_DIGITS = 6
TOTP_STEP_SECONDS = 30
TOTP_DRIFT_STEPS = 1
EMAIL_CODE_DIGITS = 6


def new_totp_secret() -> Secret[bytes]:
    return Secret(os.urandom(TOTP_SECRET_BYTES))


def totp_secret_text(secret: Secret[bytes]) -> str:
    """The base32 text an authenticator app takes when the QR code cannot be scanned."""
    return base64.b32encode(secret.reveal()).decode().rstrip("=")


def provisioning_uri(secret: Secret[bytes], *, issuer: str, account_label: str) -> str:
    """``otpauth://`` URI for a QR code. The label should not be an email address: it is
    shown on the phone's lock screen by some apps; use the issuer and a short reference."""
    label = quote(f"{issuer}:{account_label}")
    query = urlencode(
        {
            "secret": totp_secret_text(secret),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": TOTP_DIGITS,
            "period": TOTP_STEP_SECONDS,
        }
    )
    return f"otpauth://totp/{label}?{query}"


def _totp(secret: Secret[bytes]) -> TOTP:
    # HMAC-SHA1, as RFC 6238 and every authenticator app use it: HMAC does not rely on
    # SHA-1 being collision resistant.
    return TOTP(secret.reveal(), TOTP_DIGITS, SHA1(), TOTP_STEP_SECONDS, enforce_key_length=True)  # noqa: S303


def totp_code(secret: Secret[bytes], at: float | None = None) -> str:
    """The code for time ``at`` (for tests and enrolment checks)."""
    moment = int(time.time() if at is None else at)
    return _totp(secret).generate(moment).decode()


def match_totp(
    secret: Secret[bytes], code: str, *, after_step: int, at: float | None = None
) -> int | None:
    """The time step that ``code`` is valid for, within one step of drift, if it is later
    than ``after_step`` (the last step accepted for this secret); else ``None``.

    Every candidate step is compared, in constant time, so timing says nothing about which.
    """
    candidate = code.strip().replace(" ", "")
    if len(candidate) != TOTP_DIGITS or not candidate.isascii() or not candidate.isdigit():
        return None
    now = int(time.time() if at is None else at)
    totp = _totp(secret)
    matched: int | None = None
    current = now // TOTP_STEP_SECONDS
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        expected = totp.generate(step * TOTP_STEP_SECONDS)
        if hmac.compare_digest(expected, candidate.encode()) and step > after_step:
            matched = step
    return matched


def new_email_code() -> Secret[str]:
    """Six random digits: 10^6 possibilities, so attempts are capped by the caller."""
    return Secret(f"{secrets.randbelow(10**EMAIL_CODE_DIGITS):0{EMAIL_CODE_DIGITS}d}")


def new_recovery_code() -> Secret[str]:
    """12 base32 characters (60 bits) in groups of four, easy to copy by hand."""
    raw = base64.b32encode(os.urandom(10)).decode()[:12].lower()
    return Secret(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")


def normalize_code(code: str) -> str:
    return code.strip().lower().replace(" ", "").replace("-", "")
