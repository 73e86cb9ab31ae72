"""OAuth2 client credentials (RFC 6749 §4.4) for service clients, and the bearer tokens they
present to the FHIR API (RFC 6750).

- A client authenticates with its id and secret (form fields or HTTP Basic); the secret is
  checked against its argon2 hash. An unknown client, a wrong secret, a disabled client and
  a client without a secret all get the same ``invalid_client`` after the same work (a
  dummy hash for the unknown ones), so the endpoint tells nobody which clients exist (I7).
- Requests are rate-limited per submitted client id and per client address, before any
  hashing, like logins (``labvault.core.ratelimit``).
- A token is 256 random bits, opaque; only its SHA-256 is stored (``ServiceToken``), so a
  database dump holds no usable token. It lives a few minutes (``fhir_token_minutes``) and
  carries the requested scopes that the client is registered for (all of them if it asked
  for none). A disabled client's tokens stop working at once: every request re-checks the
  client.
- Every issue and every refusal is audited; events name the client id, never a secret.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.core.access.principals import ANONYMOUS, Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext, AuditTrail, Outcome
from labvault.core.crypto.passwords import PasswordHasher, PasswordHashError
from labvault.core.crypto.secret import Secret
from labvault.core.db import utcnow
from labvault.core.ratelimit import RateLimiter, RateRule
from labvault.fhir.scopes import ScopeError, ScopeSet, parse_scope, parse_scopes
from labvault.results.models import ServiceClient, ServiceToken

__all__ = [
    "TOKEN_ADDRESS_MINUTE",
    "TOKEN_CLIENT_MINUTE",
    "IssuedToken",
    "OAuthError",
    "ServiceCaller",
    "TokenService",
    "basic_credentials",
    "token_digest",
]

TOKEN_BYTES: Final = 32
TARGET_TYPE: Final = "service-client"
TOKEN_CLIENT_MINUTE: Final = RateRule("oauth:client:minute", "20/minute")
"""Token requests per submitted client id (known or not)."""
TOKEN_ADDRESS_MINUTE: Final = RateRule("oauth:address:minute", "60/minute")
"""Token requests per client address (keyed hash)."""
MAX_CREDENTIAL: Final = 256


class OAuthError(Exception):
    """An RFC 6749 §5.2 error answer: ``error`` code, HTTP status, a fixed description."""

    def __init__(
        self, error: str, status: int, description: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.description = description
        self.retry_after = retry_after


INVALID_CLIENT_DESCRIPTION: Final = "Client authentication failed."


def _invalid_client() -> OAuthError:
    return OAuthError("invalid_client", 401, INVALID_CLIENT_DESCRIPTION)


@dataclass(frozen=True, slots=True, repr=False)
class IssuedToken:
    token: Secret[str]
    expires_in: int
    scope: str

    def __repr__(self) -> str:
        return f"IssuedToken(expires_in={self.expires_in})"


@dataclass(frozen=True, slots=True)
class ServiceCaller:
    """Who presents a valid bearer token: its client, principal and granted scopes."""

    client_id: uuid.UUID
    tenant_id: uuid.UUID
    kind: str
    principal: Principal
    scopes: ScopeSet


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def basic_credentials(header: str) -> tuple[str, str] | None:
    """``Authorization: Basic`` (RFC 6749 §2.3.1: both parts form-urlencoded), or ``None``."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    return unquote(client_id), unquote(secret)


def _opaque(value: str) -> str:
    """A rate-limit identifier for untrusted text: never the text itself."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def registered_scopes(client: ServiceClient) -> ScopeSet:
    """The scopes a client is registered for; one this server does not understand grants
    nothing (rather than failing every token of the client)."""
    permissions: set[tuple[str, str]] = set()
    for item in client.scopes.split():
        try:
            permissions |= parse_scope(item)
        except ScopeError:
            continue
    return ScopeSet(frozenset(permissions))


class TokenService:
    """Issues and checks the FHIR API's tokens for one tenant, in the caller's transaction."""

    def __init__(
        self,
        session: Session,
        tenant_id: uuid.UUID,
        *,
        limiter: RateLimiter,
        hasher: PasswordHasher,
        lifetime: dt.timedelta,
        context: AuditContext | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._limiter = limiter
        self._hasher = hasher
        self._lifetime = lifetime
        self._context = context or AuditContext()
        self._clock = clock

    def _audit(self, principal: Principal) -> AuditTrail:
        return AuditTrail(self._session, principal, self._context, clock=self._clock)

    def _refuse(
        self, error: OAuthError, client_id: uuid.UUID | None, outcome: Outcome = Outcome.FAILURE
    ) -> OAuthError:
        self._audit(ANONYMOUS).record(
            AuditAction.SERVICE_TOKEN_FAILURE,
            tenant_id=self._tenant_id,
            target_type=TARGET_TYPE,
            target_id=client_id,
            purpose=error.error.replace("_", "-"),
            outcome=outcome,
        )
        return error

    def issue(
        self, client_id: str, secret: Secret[str], scope: str | None, *, address_key: str
    ) -> IssuedToken:
        """A new token for the client, or :class:`OAuthError` (recorded, nothing issued)."""
        for rule, identifier in (
            (TOKEN_ADDRESS_MINUTE, address_key),
            (TOKEN_CLIENT_MINUTE, _opaque(client_id)),
        ):
            decision = self._limiter.hit_or_deny(rule, identifier)
            if not decision.allowed:
                raise self._refuse(
                    OAuthError(
                        "slow_down",
                        429,
                        "Too many token requests; retry later.",
                        retry_after=decision.retry_after,
                    ),
                    None,
                    Outcome.DENIED,
                )
        client = self._client(client_id)
        if client is None or client.secret_hash is None or client.disabled_at is not None:
            self._hasher.verify_dummy(secret)
            raise self._refuse(_invalid_client(), client.id if client else None)
        try:
            right = self._hasher.verify(client.secret_hash, secret)
        except PasswordHashError:
            right = False
        if not right:
            raise self._refuse(_invalid_client(), client.id)
        try:
            requested = parse_scopes(scope or "")
        except ScopeError:
            raise self._refuse(
                OAuthError("invalid_scope", 400, "The requested scope is malformed or unknown."),
                client.id,
            ) from None
        registered = registered_scopes(client)
        granted = (requested & registered) if scope else registered
        if not granted:
            raise self._refuse(
                OAuthError("invalid_scope", 400, "The client may not have the requested scope."),
                client.id,
            )
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self._clock()
        self._session.add(
            ServiceToken(
                tenant_id=self._tenant_id,
                client_id=client.id,
                token_digest=token_digest(token),
                scopes=str(granted),
                issued_at=now,
                expires_at=now + self._lifetime,
            )
        )
        self._session.flush()
        self._audit(_principal(client)).record(
            AuditAction.SERVICE_TOKEN_ISSUE,
            tenant_id=self._tenant_id,
            target_type=TARGET_TYPE,
            target_id=client.id,
        )
        return IssuedToken(Secret(token), int(self._lifetime.total_seconds()), str(granted))

    def _client(self, client_id: str) -> ServiceClient | None:
        if len(client_id) > MAX_CREDENTIAL:
            return None
        try:
            wanted = uuid.UUID(client_id)
        except ValueError:
            return None
        return self._session.scalars(
            select(ServiceClient).where(
                ServiceClient.tenant_id == self._tenant_id, ServiceClient.id == wanted
            )
        ).one_or_none()

    def authenticate(self, token: str) -> ServiceCaller | None:
        """The caller behind a bearer token; ``None`` for an unknown, expired or revoked
        token, or one whose client was disabled since."""
        if not token or len(token) > MAX_CREDENTIAL:
            return None
        found = self._session.execute(
            select(ServiceToken, ServiceClient)
            .join(
                ServiceClient,
                (ServiceClient.tenant_id == ServiceToken.tenant_id)
                & (ServiceClient.id == ServiceToken.client_id),
            )
            .where(
                ServiceToken.tenant_id == self._tenant_id,
                ServiceToken.token_digest == token_digest(token),
                ServiceToken.revoked_at.is_(None),
                ServiceToken.expires_at > self._clock(),
                ServiceClient.disabled_at.is_(None),
            )
        ).one_or_none()
        if found is None:
            return None
        row, client = found
        try:
            scopes = parse_scopes(row.scopes.split())
        except ScopeError:
            return None
        return ServiceCaller(
            client_id=client.id,
            tenant_id=self._tenant_id,
            kind=client.kind,
            principal=_principal(client),
            scopes=scopes & registered_scopes(client),
        )


def _principal(client: ServiceClient) -> Principal:
    return Principal(PrincipalKind.SERVICE, f"service:{client.id}", role=client.kind)
