"""Appointments as stored. An appointment at a site is also what puts a patient in that
site's care: the staff relationship rule (``labvault.patients.scope``) is read from here.

What an appointment says about a patient's health (the exams booked, the home address of a
home visit) is sealed under the patient's data key, through
:class:`labvault.patients.services.PatientRepository` only. Site, time, status and box are
the lab's planning, in clear.

Capacity is enforced by the database, not by a read-then-write check: every slot an
appointment occupies is a :class:`SlotClaim` row on one box, and
``UNIQUE (tenant_id, site_id, starts_at, box)`` lets exactly one transaction hold a given
box of a given slot, on SQLite and on PostgreSQL alike, however many try at once.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, RawBytes, utcnow

TABLE = "appointments"


class AppointmentStatus(enum.StrEnum):
    HELD = "held"
    """A slot kept for a patient while they finish the form; gone at ``hold_expires_at``."""
    BOOKED = "booked"
    CHECKED_IN = "checked_in"
    DONE = "done"
    NO_SHOW = "no_show"
    CANCELLED = "cancelled"


class AppointmentKind(enum.StrEnum):
    SITE = "site"
    HOME = "home"


class Appointment(HasRandomId, Base):
    __tablename__ = TABLE
    __table_args__ = (
        # The relationship rule asks "which patients have an appointment at these sites
        # around now": by site and time first.
        Index("ix_appointments_tenant_id_site_id_starts_at", "tenant_id", "site_id", "starts_at"),
        Index("ix_appointments_tenant_id_patient_id", "tenant_id", "patient_id"),
        UniqueConstraint("tenant_id", "id"),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "site_id"], ["sites.tenant_id", "sites.id"], ondelete="RESTRICT"
        ),
        CheckConstraint("ends_at IS NULL OR ends_at > starts_at", name="times_ordered"),
        CheckConstraint("kind IN ('site', 'home')", name="kind_known"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    site_id: Mapped[uuid.UUID]
    """The site that samples (a home visit: the site its sampler leaves from)."""
    starts_at: Mapped[dt.datetime]
    """UTC. A home visit: the start of the time window offered to the patient."""
    ends_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    """UTC. The end of the visit's last slot, or of a home visit's window."""
    status: Mapped[str] = mapped_column(String(16), default=AppointmentStatus.BOOKED.value)
    kind: Mapped[str] = mapped_column(String(8), default=AppointmentKind.SITE.value)
    walk_in: Mapped[bool] = mapped_column(Boolean, default=False)
    """Registered at the desk without booking: served from the walk-in boxes, claims none."""
    exams: Mapped[bytes | None] = mapped_column(RawBytes, default=None)
    """Sealed JSON list of catalog exam ids (health data)."""
    home_address: Mapped[bytes | None] = mapped_column(RawBytes, default=None)
    """Sealed JSON address of a home visit."""
    sampler_staff_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    """A home visit's assigned sampler."""
    booked_by_account_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    booked_by_staff_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    hold_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    checked_in_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    reminder_sent_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    anonymised_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    """Set by the retention job once sealed content is gone (the row stays as planning)."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SlotClaim(HasRandomId, Base):
    """One box of one slot, held by one appointment (a hold, until it expires, or a booking).

    A visit longer than a slot claims one box in each of its consecutive slots. Expired
    holds' claims are deleted by whoever needs the box next (and by the retention job).
    """

    __tablename__ = "slot_claims"
    __table_args__ = (
        UniqueConstraint("tenant_id", "site_id", "starts_at", "box"),
        Index("ix_slot_claims_tenant_id_appointment_id", "tenant_id", "appointment_id"),
        ForeignKeyConstraint(
            ["tenant_id", "appointment_id"],
            ["appointments.tenant_id", "appointments.id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "site_id"], ["sites.tenant_id", "sites.id"], ondelete="CASCADE"
        ),
        CheckConstraint("box >= 0", name="box_positive"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    site_id: Mapped[uuid.UUID]
    starts_at: Mapped[dt.datetime]
    """UTC start of the slot."""
    box: Mapped[int] = mapped_column(Integer)
    appointment_id: Mapped[uuid.UUID]
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    """A hold's expiry; NULL once booked."""


class Preregistration(HasRandomId, Base):
    """What the patient declared before the visit, sealed under the patient's key: INS
    traits as given, complementary insurance, whether third-party payment is asked."""

    __tablename__ = "preregistrations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "appointment_id"),
        ForeignKeyConstraint(
            ["tenant_id", "appointment_id"],
            ["appointments.tenant_id", "appointments.id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    appointment_id: Mapped[uuid.UUID]
    patient_id: Mapped[uuid.UUID]
    details: Mapped[bytes] = mapped_column(RawBytes)
    """Sealed JSON (see ``labvault.preregistration``)."""
    third_party_payment: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PatientDocument(HasRandomId, Base):
    """An uploaded document (an ordonnance): content sealed under the patient's key.

    The media type is sniffed from the content; the uploaded file name is never kept.
    ``delete_after`` is set from the visit's date; the retention job deletes the row then.
    """

    __tablename__ = "patient_documents"
    __table_args__ = (
        Index("ix_patient_documents_tenant_id_patient_id", "tenant_id", "patient_id"),
        Index("ix_patient_documents_delete_after", "delete_after"),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "appointment_id"],
            ["appointments.tenant_id", "appointments.id"],
            ondelete="SET NULL",
        ),
        CheckConstraint("size_bytes > 0", name="size_positive"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    appointment_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    kind: Mapped[str] = mapped_column(String(24), default="prescription")
    media_type: Mapped[str] = mapped_column(String(40))
    size_bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(RawBytes)
    consent_at: Mapped[dt.datetime]
    """When the patient agreed to share it with the lab (no consent, no upload)."""
    uploaded_by_account_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    delete_after: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class IdentityCheck(HasRandomId, Base):
    """A desk check of an identity document: who saw which kind of document, and the
    identity status before and after (PROV→VALI, RECUP→QUAL).

    The kind of document is sealed under the patient's data key (table "identity_checks",
    column "document_kind", row = the check's id), through
    :class:`labvault.patients.services.PatientRepository`: "titre de séjour" says the patient
    is a foreign national. The statuses mirror the patient's ``identity_status``, in clear."""

    __tablename__ = "identity_checks"
    __table_args__ = (
        Index("ix_identity_checks_tenant_id_patient_id", "tenant_id", "patient_id"),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    appointment_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    staff_id: Mapped[uuid.UUID]
    document_kind: Mapped[bytes] = mapped_column(RawBytes)
    status_before: Mapped[str] = mapped_column(String(8))
    status_after: Mapped[str] = mapped_column(String(8))
    checked_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
