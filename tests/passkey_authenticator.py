"""A software WebAuthn authenticator (and the browser's part of the ceremony) for tests.

ES256 keys (EC P-256, from ``cryptography``), "none" attestation, and answers in the JSON
form browsers give (``PublicKeyCredential.toJSON()``): exactly what py_webauthn verifies.
The origin and RP ID it claims can be changed per call, to play a phishing site; so can the
sign count, to play a cloned authenticator.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, AT = 0x01, 0x04, 0x40
"""authenticatorData flags: user present, user verified, attested credential data."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftPasskey:
    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    sign_count: int = 0

    def cose_public_key(self) -> bytes:
        numbers = self.private_key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,  # kty: EC2
                3: -7,  # alg: ES256
                -1: 1,  # crv: P-256
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )


def _options(options: Mapping[str, Any] | str) -> Mapping[str, Any]:
    return json.loads(options) if isinstance(options, str) else options


def _client_data(kind: str, challenge: str, origin: str) -> bytes:
    return json.dumps(
        {"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": False},
        separators=(",", ":"),
    ).encode()


class SoftAuthenticator:
    """Makes and uses passkeys for ``origin`` (the page the browser would be on)."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def create(
        self,
        options: Mapping[str, Any] | str,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: str | None = None,
        user_verified: bool = True,
    ) -> tuple[dict[str, Any], SoftPasskey]:
        """Answer registration options: the credential JSON to post, and the new passkey."""
        opts = _options(options)
        passkey = SoftPasskey(
            credential_id=os.urandom(32),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            rp_id=rp_id or opts["rp"]["id"],
            user_handle=unb64url(opts["user"]["id"]),
        )
        client_data = _client_data(
            "webauthn.create", challenge or opts["challenge"], origin or self.origin
        )
        flags = UP | AT | (UV if user_verified else 0)
        auth_data = (
            hashlib.sha256(passkey.rp_id.encode()).digest()
            + bytes([flags])
            + struct.pack(">I", passkey.sign_count)
            + bytes(16)  # AAGUID: none
            + struct.pack(">H", len(passkey.credential_id))
            + passkey.credential_id
            + passkey.cose_public_key()
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        credential = {
            "id": b64url(passkey.credential_id),
            "rawId": b64url(passkey.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["internal", "hybrid"],
            },
            "clientExtensionResults": {},
        }
        return credential, passkey

    def get(
        self,
        options: Mapping[str, Any] | str,
        passkey: SoftPasskey,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        sign_count: int | None = None,
    ) -> dict[str, Any]:
        """Answer authentication options with ``passkey``; the sign count goes up by one
        unless ``sign_count`` says otherwise."""
        opts = _options(options)
        allowed = [unb64url(item["id"]) for item in opts.get("allowCredentials", [])]
        assert not allowed or passkey.credential_id in allowed, "not an allowed credential"
        passkey.sign_count = passkey.sign_count + 1 if sign_count is None else sign_count
        client_data = _client_data("webauthn.get", opts["challenge"], origin or self.origin)
        auth_data = (
            hashlib.sha256((rp_id or passkey.rp_id).encode()).digest()
            + bytes([UP | UV])
            + struct.pack(">I", passkey.sign_count)
        )
        signature = passkey.private_key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        return {
            "id": b64url(passkey.credential_id),
            "rawId": b64url(passkey.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(passkey.user_handle),
            },
            "clientExtensionResults": {},
        }
