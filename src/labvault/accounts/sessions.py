"""Server-side sessions: the browser holds a random token, the database only its hash.

A stolen database yields no usable session; a session is revoked by deleting nothing but
setting ``revoked_at``, so the history stays. Tokens are 256 random bits; SHA-256 suffices
to store them (there is nothing to brute-force). The CSRF token is an HMAC of the session
token under a key the provider derives, so it needs no storage and changes with the session.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from labvault.accounts.models import AccountKind, AccountSession
from labvault.core.config import Settings
from labvault.core.crypto.secret import Secret
from labvault.core.db import utcnow

TOKEN_BYTES = 32
TOUCH_EVERY = dt.timedelta(seconds=60)
CSRF_LABEL = "labvault/v1|accounts|csrf"


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle: dt.timedelta
    absolute: dt.timedelta

    @classmethod
    def for_kind(cls, settings: Settings, kind: AccountKind) -> SessionPolicy:
        if kind is AccountKind.STAFF:
            return cls(
                dt.timedelta(minutes=settings.staff_session_idle_minutes),
                dt.timedelta(hours=settings.staff_session_absolute_hours),
            )
        return cls(
            dt.timedelta(minutes=settings.session_idle_minutes),
            dt.timedelta(hours=settings.session_absolute_hours),
        )


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> Secret[str]:
    return Secret(secrets.token_urlsafe(TOKEN_BYTES))


class SessionStore:
    """Creates, finds, touches and revokes sessions in the caller's transaction."""

    def __init__(
        self,
        session: Session,
        csrf_key: Secret[bytes],
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._csrf_key = csrf_key
        self._clock = clock

    def create(
        self,
        *,
        tenant_id: uuid.UUID,
        account_id: uuid.UUID,
        policy: SessionPolicy,
        client_hash: str | None,
        second_factor: str | None = None,
    ) -> tuple[Secret[str], AccountSession]:
        """A new session and its token: the token is shown once, to be put in the cookie."""
        now = self._clock()
        token = new_token()
        record = AccountSession(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            account_id=account_id,
            token_hash=hash_token(token.reveal()),
            created_at=now,
            last_seen_at=now,
            idle_expires_at=now + policy.idle,
            absolute_expires_at=now + policy.absolute,
            second_factor=second_factor,
            second_factor_at=now if second_factor else None,
            client_hash=client_hash,
        )
        self._session.add(record)
        self._session.flush()
        return token, record

    def find(
        self, token: str, policy_of: Callable[[uuid.UUID], SessionPolicy]
    ) -> AccountSession | None:
        """The live session for ``token``, its idle deadline pushed back; ``None`` if it is
        unknown, revoked or expired (the three look the same to the caller)."""
        if not token or len(token) > 200:
            return None
        record = self._session.scalar(
            select(AccountSession).where(AccountSession.token_hash == hash_token(token))
        )
        now = self._clock()
        if record is None or record.revoked_at is not None:
            return None
        if now >= record.idle_expires_at or now >= record.absolute_expires_at:
            return None
        if now - record.last_seen_at >= TOUCH_EVERY:
            record.last_seen_at = now
            record.idle_expires_at = min(
                now + policy_of(record.account_id).idle, record.absolute_expires_at
            )
        return record

    def revoke(self, session_id: uuid.UUID, account_id: uuid.UUID) -> bool:
        """Revoke one of the account's sessions; False if it is not one of them."""
        result = self._session.execute(
            update(AccountSession)
            .where(
                AccountSession.id == session_id,
                AccountSession.account_id == account_id,
                AccountSession.revoked_at.is_(None),
            )
            .values(revoked_at=self._clock())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def revoke_all(self, account_id: uuid.UUID, *, keep: uuid.UUID | None = None) -> int:
        """Revoke every session of the account (but ``keep``): password change, lock."""
        query = update(AccountSession).where(
            AccountSession.account_id == account_id, AccountSession.revoked_at.is_(None)
        )
        if keep is not None:
            query = query.where(AccountSession.id != keep)
        result = self._session.execute(query.values(revoked_at=self._clock()))
        return int(result.rowcount)  # type: ignore[attr-defined]

    def live(self, account_id: uuid.UUID) -> list[AccountSession]:
        now = self._clock()
        return list(
            self._session.scalars(
                select(AccountSession)
                .where(
                    AccountSession.account_id == account_id,
                    AccountSession.revoked_at.is_(None),
                    AccountSession.idle_expires_at > now,
                    AccountSession.absolute_expires_at > now,
                )
                .order_by(AccountSession.last_seen_at.desc())
            )
        )

    def csrf_token(self, token: str) -> str:
        mac = hmac.digest(self._csrf_key.reveal(), token.encode(), "sha256")
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def check_csrf(self, token: str, presented: str | None) -> bool:
        if not presented or not presented.isascii():
            return False
        return hmac.compare_digest(self.csrf_token(token), presented)
