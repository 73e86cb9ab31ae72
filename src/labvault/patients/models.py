"""Patients as stored: every personal field is ciphertext; lookups use blind indexes."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import (
    CheckConstraint,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, RawBytes, utcnow

# Personal fields, each sealed under the patient's data key (see core.crypto.envelope).
ENCRYPTED_FIELDS: tuple[str, ...] = (
    "birth_name",
    "used_name",
    "first_names",
    "birth_date",
    "sex",
    "birth_place_code",
    "ins_number",
    "email",
    "phone",
    "address_line",
    "postal_code",
    "city",
)


class Patient(HasRandomId, Base):
    __tablename__ = "patients"
    __table_args__ = (
        # A NIR identifies one person: at most one patient per NIR within a tenant.
        Index("uq_patients_tenant_id_nir_index", "tenant_id", "nir_index", unique=True),
        Index("ix_patients_tenant_id_email_index", "tenant_id", "email_index"),
        Index("ix_patients_tenant_id_phone_index", "tenant_id", "phone_index"),
        Index("ix_patients_tenant_id_name_index", "tenant_id", "name_index"),
        # Target of tenant-scoped foreign keys (appointments, grants): same tenant only.
        UniqueConstraint("tenant_id", "id"),
        # The data key must be the same tenant's (I8: isolation inside the database too).
        ForeignKeyConstraint(
            ["tenant_id", "data_key_id"],
            ["data_keys.tenant_id", "data_keys.id"],
            ondelete="RESTRICT",
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    data_key_id: Mapped[uuid.UUID | None]
    """``None`` once the record is erased: its data key is destroyed (crypto-shredding)."""

    birth_name: Mapped[bytes] = mapped_column(RawBytes)
    used_name: Mapped[bytes | None] = mapped_column(RawBytes)
    first_names: Mapped[bytes] = mapped_column(RawBytes)
    birth_date: Mapped[bytes] = mapped_column(RawBytes)
    sex: Mapped[bytes] = mapped_column(RawBytes)
    birth_place_code: Mapped[bytes | None] = mapped_column(RawBytes)
    ins_number: Mapped[bytes | None] = mapped_column(RawBytes)
    email: Mapped[bytes | None] = mapped_column(RawBytes)
    phone: Mapped[bytes | None] = mapped_column(RawBytes)
    address_line: Mapped[bytes | None] = mapped_column(RawBytes)
    postal_code: Mapped[bytes | None] = mapped_column(RawBytes)
    city: Mapped[bytes | None] = mapped_column(RawBytes)

    # INS metadata: which number system (NIR, NIA, test) and how far identity was checked.
    ins_oid: Mapped[str | None] = mapped_column(String(64))
    identity_status: Mapped[str] = mapped_column(String(8), default="PROV")

    nir_index: Mapped[bytes | None] = mapped_column(RawBytes(32))
    email_index: Mapped[bytes | None] = mapped_column(RawBytes(32))
    phone_index: Mapped[bytes | None] = mapped_column(RawBytes(32))
    name_index: Mapped[bytes] = mapped_column(RawBytes(32))
    index_generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """The index-key generation its blind indexes were computed with (see ``keys rotate-index``)."""

    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    # Erasure tombstone (``labvault.patients.erasure``): ids, codes and a time, nothing personal.
    # The sealed columns above stay as they were, unreadable: their data key is gone.
    erased_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    erased_by_kind: Mapped[str | None] = mapped_column(String(16), default=None)
    """The erasing principal's kind (``system``, ``staff``...), as in the audit log."""
    erased_by_id: Mapped[str | None] = mapped_column(String(128), default=None)
    """The erasing principal's id (e.g. ``system:cli:patients-erase``), as in the audit log."""
    erasure_requested_by: Mapped[str | None] = mapped_column(String(8), default=None)
    """Who asked: an :class:`ErasureRequester` value."""


class ErasureRequester(enum.StrEnum):
    """Who asked for a record's erasure."""

    PATIENT = "patient"
    """The patient, by deleting their account (``labvault accounts purge``)."""
    STAFF = "staff"
    CLI = "cli"
    """An operator, with ``labvault patients erase``."""


class LegalHoldReason(enum.StrEnum):
    """Why a record must be kept: a closed list (free text could hold personal data)."""

    LAB_REPORT_RETENTION = "lab-report-retention"
    """Medical-analysis reports are kept 10 years."""
    LITIGATION = "litigation"
    AUTHORITY_REQUEST = "authority-request"
    """A court, the health authority or the police asked for the record to be kept."""


class LegalHold(HasRandomId, Base):
    """A record that must not be erased until ``until`` (``None``: until released)."""

    __tablename__ = "legal_holds"
    __table_args__ = (
        Index("ix_legal_holds_tenant_id_patient_id", "tenant_id", "patient_id"),
        # A hold keeps its record: nothing may delete the row underneath it.
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="RESTRICT"
        ),
        CheckConstraint(
            "reason IN ('lab-report-retention', 'litigation', 'authority-request')",
            name="reason_known",
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    reason: Mapped[str] = mapped_column(String(32))
    until: Mapped[dt.date | None] = mapped_column(Date, default=None)
    """Last day of the hold (Europe/Paris), inclusive; ``None``: until released."""
    placed_by: Mapped[str] = mapped_column(String(128))
    """The principal id that placed it, as in the audit log."""
    placed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    released_by: Mapped[str | None] = mapped_column(String(128), default=None)
    released_at: Mapped[dt.datetime | None] = mapped_column(default=None)
