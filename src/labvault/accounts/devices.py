"""Devices an account has signed in from, to tell its owner about a login from a new one.

A browser carries a long-lived random token in the ``__Host-labvault-device`` cookie
(HttpOnly, Secure, SameSite=Strict); the database keeps, per account, a SHA-256 of the
account id and that token. The account id is hashed in so that one browser used for two
accounts (a family computer) leaves two unrelated rows: the table cannot link accounts.
The token is 256 random bits, so a plain hash suffices (as for sessions).

Nothing about the device is stored: no address, no user agent, no place. The notice says
when the login happened and nothing else (issue item 7; DESIGN I5).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import uuid
from collections.abc import Callable
from typing import cast

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, Table, delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from labvault.core.crypto.secret import Secret
from labvault.core.db import Base, HasRandomId, RawBytes, utcnow

DEVICE_COOKIE = "__Host-labvault-device"
DEVICE_COOKIE_MAX_AGE = 400 * 24 * 3600
"""400 days, the longest lifetime browsers keep a cookie for (RFC 6265bis)."""
DEVICE_TOKEN_BYTES = 32
_DEVICE_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


class KnownDevice(HasRandomId, Base):
    """A device (a browser's cookie) that completed a login to the account."""

    __tablename__ = "known_devices"
    __table_args__ = (
        Index("uq_known_devices_account_id_device_hash", "account_id", "device_hash", unique=True),
        ForeignKeyConstraint(
            ["tenant_id", "account_id"], ["accounts.tenant_id", "accounts.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    account_id: Mapped[uuid.UUID]
    device_hash: Mapped[bytes] = mapped_column(RawBytes(32))
    first_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


_KNOWN_DEVICES = cast(Table, KnownDevice.__table__)


def new_device_token() -> Secret[str]:
    return Secret(secrets.token_urlsafe(DEVICE_TOKEN_BYTES))


def is_device_token(value: str | None) -> bool:
    """Whether a cookie's value has the form of a token we issue (anything else is ignored)."""
    return value is not None and _DEVICE_TOKEN.fullmatch(value) is not None


def device_hash(account_id: uuid.UUID, token: str) -> bytes:
    return hashlib.sha256(f"labvault/v1|device|{account_id}|{token}".encode()).digest()


class DeviceRegistry:
    """Remembers an account's devices, in the caller's transaction."""

    def __init__(
        self,
        session: Session,
        tenant_id: uuid.UUID,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._clock = clock

    def see(self, account_id: uuid.UUID, token: str) -> bool:
        """Record a login of the account from the device; True the first time only.

        One statement that inserts or does nothing: two logins racing from the same new
        device insert one row, and only one of them is told "new".
        """
        now = self._clock()
        digest = device_hash(account_id, token)
        values = {
            "id": uuid.uuid4(),
            "tenant_id": self._tenant_id,
            "account_id": account_id,
            "device_hash": digest,
            "first_seen_at": now,
            "last_seen_at": now,
        }
        dialect = self._session.get_bind().dialect.name
        builder = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = (
            builder(_KNOWN_DEVICES)
            .values(values)
            .on_conflict_do_nothing(index_elements=["account_id", "device_hash"])
            .returning(_KNOWN_DEVICES.c.id)
        )
        if self._session.execute(statement).first() is not None:
            return True
        self._session.execute(
            update(KnownDevice)
            .where(KnownDevice.account_id == account_id, KnownDevice.device_hash == digest)
            .values(last_seen_at=now)
        )
        return False

    def forget_all(self, account_id: uuid.UUID) -> int:
        """Forget every device of the account (after a password reset): the next login from
        any of them is announced again."""
        result = self._session.execute(
            delete(KnownDevice).where(KnownDevice.account_id == account_id)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


__all__ = [
    "DEVICE_COOKIE",
    "DEVICE_COOKIE_MAX_AGE",
    "DeviceRegistry",
    "KnownDevice",
    "device_hash",
    "is_device_token",
    "new_device_token",
]
