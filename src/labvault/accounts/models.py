"""Accounts and what authenticates them. Personal values are sealed under the account's key.

An account is a login, not a person's file: a patient account is linked to a Patient
record once the patient proves it is theirs; a staff account to a StaffMember.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, RawBytes, utcnow

SUBJECT_TYPE = "account"
ENCRYPTED_FIELDS = ("email", "security_phrase")


class AccountKind(enum.StrEnum):
    PATIENT = "patient"
    STAFF = "staff"


class AccountStatus(enum.StrEnum):
    PENDING_EMAIL = "pending_email"
    """Signed up; the email address is not proven yet. Cannot log in."""
    INVITED = "invited"
    """A staff account whose emailed invitation is not accepted yet: no password anyone
    knows, no login, no reset link (see ``labvault.accounts.invitations``)."""
    ACTIVE = "active"
    LOCKED = "locked"
    """Too many failures or a security officer's decision: no login, no session."""
    CLOSING = "closing"
    """Deletion requested: no login; erased by the retention job."""


class LockReason(enum.StrEnum):
    TOO_MANY_FAILURES = "too-many-failures"
    SECURITY_DECISION = "security-decision"
    """A security officer or an automatic guard (exfiltration budget, honey record)."""


class DependentRelationship(enum.StrEnum):
    PARENT = "parent"
    LEGAL_GUARDIAN = "legal-guardian"


class DependentVerification(enum.StrEnum):
    """How the guardian's right to act for the dependent was established."""

    CONTACT_CODE = "contact-code"
    """A one-time code sent to the contact on the dependent's record, entered by the guardian."""
    LAB_DESK = "lab-desk"
    """Documents seen at the lab desk by a staff member (the audit log names who)."""


class Account(HasRandomId, Base):
    __tablename__ = "accounts"
    __table_args__ = (
        # One account per email address and kind in a tenant, found by blind index.
        Index(
            "uq_accounts_tenant_id_kind_email_index",
            "tenant_id",
            "kind",
            "email_index",
            unique=True,
        ),
        # A Patient record is linked to at most one account (NULLs are not compared).
        Index("uq_accounts_tenant_id_patient_id", "tenant_id", "patient_id", unique=True),
        UniqueConstraint("tenant_id", "id"),
        ForeignKeyConstraint(
            ["tenant_id", "data_key_id"],
            ["data_keys.tenant_id", "data_keys.id"],
            ondelete="RESTRICT",
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    data_key_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    email: Mapped[bytes] = mapped_column(RawBytes)
    email_index: Mapped[bytes] = mapped_column(RawBytes(32))
    index_generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """The index-key generation its blind indexes were computed with (see ``keys rotate-index``)."""
    security_phrase: Mapped[bytes | None] = mapped_column(RawBytes)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str | None] = mapped_column(String(32))
    patient_id: Mapped[uuid.UUID | None]
    staff_id: Mapped[uuid.UUID | None]
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_at: Mapped[dt.datetime | None]
    lock_reason: Mapped[str | None] = mapped_column(String(32))
    """A :class:`LockReason` value: why the account is locked, for the admin who unlocks it."""
    closing_requested_at: Mapped[dt.datetime | None]
    """When the owner asked for deletion; the account is erased after the grace period."""
    email_verified_at: Mapped[dt.datetime | None]
    password_changed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AccountSession(HasRandomId, Base):
    """A server-side session: the cookie holds a random token, the database its SHA-256."""

    __tablename__ = "account_sessions"
    __table_args__ = (
        Index("uq_account_sessions_token_hash", "token_hash", unique=True),
        Index("ix_account_sessions_account_id", "account_id"),
        ForeignKeyConstraint(
            ["tenant_id", "account_id"], ["accounts.tenant_id", "accounts.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    account_id: Mapped[uuid.UUID]
    token_hash: Mapped[bytes] = mapped_column(RawBytes(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    idle_expires_at: Mapped[dt.datetime]
    absolute_expires_at: Mapped[dt.datetime]
    second_factor_at: Mapped[dt.datetime | None]
    """None while only the password is proven: such a session opens nothing but the
    second-factor step."""
    second_factor: Mapped[str | None] = mapped_column(String(16))
    step_up_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    client_hash: Mapped[str | None] = mapped_column(String(32))


class OneTimeCode(HasRandomId, Base):
    """A short code sent by email, stored as a keyed hash, for one purpose, briefly."""

    __tablename__ = "one_time_codes"
    __table_args__ = (
        Index("ix_one_time_codes_account_id_purpose", "account_id", "purpose"),
        ForeignKeyConstraint(
            ["tenant_id", "account_id"], ["accounts.tenant_id", "accounts.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    account_id: Mapped[uuid.UUID]
    purpose: Mapped[str] = mapped_column(String(32))
    code_hash: Mapped[bytes] = mapped_column(RawBytes(32))
    expires_at: Mapped[dt.datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    used_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TotpCredential(HasRandomId, Base):
    """An authenticator app's shared secret, sealed; the last step used, to refuse replays.

    An account has at most one confirmed credential and one pending (not confirmed yet): a
    new app replaces the old one only once one of its codes is confirmed."""

    __tablename__ = "totp_credentials"
    __table_args__ = (
        Index(
            "uq_totp_credentials_account_id_confirmed",
            "account_id",
            unique=True,
            sqlite_where=text("confirmed_at IS NOT NULL"),
            postgresql_where=text("confirmed_at IS NOT NULL"),
        ),
        Index(
            "uq_totp_credentials_account_id_pending",
            "account_id",
            unique=True,
            sqlite_where=text("confirmed_at IS NULL"),
            postgresql_where=text("confirmed_at IS NULL"),
        ),
        ForeignKeyConstraint(
            ["tenant_id", "account_id"], ["accounts.tenant_id", "accounts.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    account_id: Mapped[uuid.UUID]
    secret: Mapped[bytes] = mapped_column(RawBytes)
    last_step: Mapped[int] = mapped_column(BigInteger, default=0)
    confirmed_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RecoveryCode(HasRandomId, Base):
    """A single-use recovery code, stored as a keyed hash (the codes are random, 60 bits)."""

    __tablename__ = "recovery_codes"
    __table_args__ = (
        Index("uq_recovery_codes_account_id_code_hash", "account_id", "code_hash", unique=True),
        ForeignKeyConstraint(
            ["tenant_id", "account_id"], ["accounts.tenant_id", "accounts.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    account_id: Mapped[uuid.UUID]
    code_hash: Mapped[bytes] = mapped_column(RawBytes(32))
    used_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AccountDependent(HasRandomId, Base):
    """A guardian's account acting for another person's Patient record (a minor child).

    The right ends at the dependent's 18th birthday: it is checked against the birth date,
    decrypted when the guardian acts, never stored in clear here (it is personal data).
    """

    __tablename__ = "account_dependents"
    __table_args__ = (
        Index(
            "uq_account_dependents_account_id_patient_id", "account_id", "patient_id", unique=True
        ),
        Index("ix_account_dependents_tenant_id_patient_id", "tenant_id", "patient_id"),
        ForeignKeyConstraint(
            ["tenant_id", "account_id"], ["accounts.tenant_id", "accounts.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    account_id: Mapped[uuid.UUID]
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    relationship: Mapped[str] = mapped_column(String(16))
    verified_by: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]
