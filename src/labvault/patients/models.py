"""Patients as stored: every personal field is ciphertext; lookups use blind indexes."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, String, UniqueConstraint
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
    data_key_id: Mapped[uuid.UUID]

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

    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
