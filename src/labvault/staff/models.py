"""Staff members: their names and emails are personal data too, so they are sealed."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import (
    Boolean,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, RawBytes, utcnow

ENCRYPTED_FIELDS: tuple[str, ...] = ("first_name", "last_name", "email")


class StaffRole(enum.StrEnum):
    RECEPTIONIST = "receptionist"
    SAMPLER = "sampler"
    BIOLOGIST = "biologist"
    ORGANIZATION_ADMIN = "organization_admin"
    SECURITY_OFFICER = "security_officer"


class StaffMember(HasRandomId, Base):
    __tablename__ = "staff_members"
    __table_args__ = (
        Index("uq_staff_members_tenant_id_email_index", "tenant_id", "email_index", unique=True),
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
    first_name: Mapped[bytes] = mapped_column(RawBytes)
    last_name: Mapped[bytes] = mapped_column(RawBytes)
    email: Mapped[bytes] = mapped_column(RawBytes)
    email_index: Mapped[bytes] = mapped_column(RawBytes(32))
    index_generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """The index-key generation its blind indexes were computed with (see ``keys rotate-index``)."""
    role: Mapped[str] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class StaffSite(Base):
    """Which sites a staff member works at (drives the relationship scope later)."""

    __tablename__ = "staff_sites"
    __table_args__ = (
        # Both ends must belong to the row's tenant: no staff member of one lab at another's site.
        ForeignKeyConstraint(
            ["tenant_id", "staff_id"],
            ["staff_members.tenant_id", "staff_members.id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "site_id"], ["sites.tenant_id", "sites.id"], ondelete="CASCADE"
        ),
    )

    staff_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    site_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), index=True
    )
