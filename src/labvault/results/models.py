"""Lab results as stored: orders, reports, observations, the intake journal, the sending
systems and their tokens, shares with other doctors.

Every health value (exam codes and names, values, units, ranges, flags, conclusions, the PDF,
the prescriber) is sealed under the patient's data key through
:class:`labvault.patients.services.PatientRepository`, bound to its table, column and row
(``content``/``details``/``pdf``). What stays in clear is the lab's workflow: who sent what
when, the report's status, who validated it and when. A message that matched no patient with
certainty is sealed under a data key of its own (subject type ``result-message``) until a
person attaches it or discards it; that key is deleted then.

Identifiers that come from a laboratory system are kept only as digests, needed for
deduplication, never for display: order numbers as an HMAC under a per-tenant key derived
from the key provider (they are short and sequential), message control ids as SHA-256.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import (
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

MESSAGE_SUBJECT_TYPE = "result-message"
"""The data-key subject of a message waiting in the matching queue."""


class ServiceClientKind(enum.StrEnum):
    LIS = "lis"
    """A laboratory information system: sends results (HL7 v2 over MLLP, or FHIR)."""
    FHIR = "fhir"
    """Another system reading or writing through the FHIR API only."""


class ServiceClient(HasRandomId, Base):
    """A system that talks to labvault for a tenant: one service principal per sending
    system (principal id ``service:<id>``), with its SMART-style scopes, the sites it
    serves, its HL7 sender identity (MSH-3, MSH-4) and its OAuth2 client secret (an argon2
    hash; ``None`` for an MLLP-only sender)."""

    __tablename__ = "service_clients"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        UniqueConstraint("tenant_id", "hl7_application", "hl7_facility"),
        UniqueConstraint("tenant_id", "id"),
        CheckConstraint("kind IN ('lis', 'fhir')", name="kind_known"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(1000), default="")
    """Space-separated, e.g. ``system/Observation.write system/Patient.read``."""
    hl7_application: Mapped[str | None] = mapped_column(String(227), default=None)
    hl7_facility: Mapped[str | None] = mapped_column(String(227), default=None)
    default_site_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sites.id", ondelete="SET NULL"), default=None
    )
    """The site its orders belong to when a message names none."""
    secret_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    hl7_peers: Mapped[str | None] = mapped_column(String(1000), default=None)
    """The network addresses its MLLP connections may come from: space-separated CIDR
    networks (``10.0.0.5/32 10.0.1.0/24``); ``None`` refuses every network peer."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    disabled_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    disabled_reason: Mapped[str | None] = mapped_column(String(64), default=None)


class ServiceClientSite(Base):
    """The sites a service client serves: its reads reach patients in their care."""

    __tablename__ = "service_client_sites"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "client_id"],
            ["service_clients.tenant_id", "service_clients.id"],
            ondelete="CASCADE",
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    client_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    site_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True
    )


class ServiceToken(HasRandomId, Base):
    """An OAuth2 access token (client credentials), short-lived; only its SHA-256 digest is
    kept, so a database dump holds no usable token."""

    __tablename__ = "service_tokens"
    __table_args__ = (
        UniqueConstraint("token_digest"),
        Index("ix_service_tokens_tenant_id_client_id", "tenant_id", "client_id"),
        Index("ix_service_tokens_expires_at", "expires_at"),
        ForeignKeyConstraint(
            ["tenant_id", "client_id"],
            ["service_clients.tenant_id", "service_clients.id"],
            ondelete="CASCADE",
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    client_id: Mapped[uuid.UUID]
    token_digest: Mapped[bytes] = mapped_column(RawBytes)
    scopes: Mapped[str] = mapped_column(String(1000))
    issued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class MessageStatus(enum.StrEnum):
    ATTACHED = "attached"
    """Matched with certainty and stored under the patient's key."""
    QUEUED = "queued"
    """No certain match: sealed under its own key, waiting for a person."""
    RESOLVED = "resolved"
    """A person attached it to a patient."""
    DISCARDED = "discarded"
    """A person discarded it (wrong lab, test message); its key is deleted."""


class ResultMessage(HasRandomId, Base):
    """Every result message received: deduplication on the sender and its message control
    id (MSH-10), and the matching queue."""

    __tablename__ = "result_messages"
    __table_args__ = (
        UniqueConstraint("tenant_id", "client_id", "dedup_digest"),
        Index("ix_result_messages_tenant_id_status", "tenant_id", "status"),
        ForeignKeyConstraint(
            ["tenant_id", "client_id"],
            ["service_clients.tenant_id", "service_clients.id"],
            ondelete="RESTRICT",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        CheckConstraint(
            "status IN ('attached', 'queued', 'resolved', 'discarded')", name="status_known"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    client_id: Mapped[uuid.UUID]
    dedup_digest: Mapped[bytes] = mapped_column(RawBytes)
    """SHA-256 of the sending application, facility and message control id."""
    status: Mapped[str] = mapped_column(String(16))
    queue_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    """Why it waits (``labvault.results.matching.QueueReason``): ``no-identifier``,
    ``invalid-identifier``, ``no-candidate``, ``several-candidates``, ``traits-differ``,
    ``traits-only``, ``identity-erased``, ``order-of-another-patient``; never a value."""
    patient_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    content: Mapped[bytes | None] = mapped_column(RawBytes, default=None)
    """A queued message's text, sealed under its own data key; ``None`` otherwise."""
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    resolved_by: Mapped[str | None] = mapped_column(String(128), default=None)


class ResultOrder(HasRandomId, Base):
    """An order (demande d'examens): the exams requested, the prescriber and the specimen,
    sealed in ``details``; linked to the appointment when one is known."""

    __tablename__ = "result_orders"
    __table_args__ = (
        UniqueConstraint("tenant_id", "client_id", "order_digest"),
        UniqueConstraint("tenant_id", "id"),
        Index("ix_result_orders_tenant_id_patient_id", "tenant_id", "patient_id"),
        Index(
            "ix_result_orders_tenant_id_site_id_created_at", "tenant_id", "site_id", "created_at"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "client_id"],
            ["service_clients.tenant_id", "service_clients.id"],
            ondelete="RESTRICT",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "appointment_id"],
            ["appointments.tenant_id", "appointments.id"],
            ondelete="SET NULL",
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    client_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    order_digest: Mapped[bytes] = mapped_column(RawBytes)
    """SHA-256 of the sender's order number (filler, else placer): a correction updates the
    same order."""
    site_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sites.id", ondelete="SET NULL"), default=None
    )
    appointment_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    details: Mapped[bytes] = mapped_column(RawBytes)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ReportStatus(enum.StrEnum):
    TO_VALIDATE = "to-validate"
    """Received from the laboratory system; no one outside the lab sees it."""
    VALIDATED = "validated"
    """A biologist validated it; not yet released (a result to be given by phone waits
    here until the biologist records the call)."""
    RELEASED = "released"
    """Visible to the patient and delivered to the prescriber."""


class ResultReport(HasRandomId, Base):
    """A report (compte rendu): one per order. ``content`` (sealed) holds the conclusion,
    the delivery decision (online or by phone) and notes; ``pdf`` the rendered report.

    The delivery decision is sealed on purpose: "to be given by phone" says the exam is
    sensitive (HIV, genetics, pregnancy). Only the workflow status is in clear.
    """

    __tablename__ = "result_reports"
    __table_args__ = (
        UniqueConstraint("tenant_id", "order_id"),
        UniqueConstraint("tenant_id", "id"),
        Index("ix_result_reports_tenant_id_status", "tenant_id", "status"),
        Index("ix_result_reports_tenant_id_patient_id", "tenant_id", "patient_id"),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "order_id"],
            ["result_orders.tenant_id", "result_orders.id"],
            ondelete="CASCADE",
        ),
        CheckConstraint("status IN ('to-validate', 'validated', 'released')", name="status_known"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    order_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(String(16))
    lis_status: Mapped[str] = mapped_column(String(1))
    """OBR-25 of the last message: P (preliminary), F (final), C (corrected)."""
    version: Mapped[int] = mapped_column(Integer, default=1)
    """Bumped by every message that changes it; a validation names the version it saw."""
    content: Mapped[bytes] = mapped_column(RawBytes)
    pdf: Mapped[bytes | None] = mapped_column(RawBytes, default=None)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    validated_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    """The biologist (a staff member's id)."""
    validated_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    released_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    released_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    notified_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    """Handed to the prescriber's :class:`ResultDelivery`."""


class ResultObservation(HasRandomId, Base):
    """One observation (a value with its code, unit, range and flags), sealed in
    ``content``; ``position`` keeps the report's order."""

    __tablename__ = "result_observations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "report_id", "position"),
        Index("ix_result_observations_tenant_id_patient_id", "tenant_id", "patient_id"),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "report_id"],
            ["result_reports.tenant_id", "result_reports.id"],
            ondelete="CASCADE",
        ),
        CheckConstraint("position >= 1", name="position_positive"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    report_id: Mapped[uuid.UUID]
    position: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(RawBytes)


class ResultReportVersion(HasRandomId, Base):
    """A superseded version of a report, kept when a correction or a complement replaces it
    (traceability of amended reports): every version, validated or not, with its workflow
    status and who validated and released it.

    ``content`` and ``pdf`` are the live row's ciphertext copied verbatim by the intake,
    which only holds a sealing capability and never decrypts. They stay bound to their
    original associated data: a reader opens them as ``result_reports`` / ``report_id`` /
    ``content`` (or ``pdf``) under the patient's data key, never as this table's row. A blob
    moved to another report's version does not open, and erasing the patient (deleting
    the data key) makes every kept version unreadable too.
    """

    __tablename__ = "result_report_versions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "report_id", "version"),
        UniqueConstraint("tenant_id", "id"),
        Index("ix_result_report_versions_tenant_id_patient_id", "tenant_id", "patient_id"),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "report_id"],
            ["result_reports.tenant_id", "result_reports.id"],
            ondelete="CASCADE",
        ),
        CheckConstraint("status IN ('to-validate', 'validated', 'released')", name="status_known"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    report_id: Mapped[uuid.UUID]
    version: Mapped[int] = mapped_column(Integer)
    """The version number it had while it was the live one."""
    lis_status: Mapped[str] = mapped_column(String(1))
    status: Mapped[str] = mapped_column(String(16))
    """Its workflow status when it was superseded."""
    content: Mapped[bytes] = mapped_column(RawBytes)
    """Sealed as ``result_reports`` / ``report_id`` / ``content``."""
    pdf: Mapped[bytes | None] = mapped_column(RawBytes, default=None)
    """Sealed as ``result_reports`` / ``report_id`` / ``pdf``."""
    validated_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    validated_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    released_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    released_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    received_at: Mapped[dt.datetime]
    superseded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ResultObservationVersion(Base):
    """An observation of a superseded report version. ``id`` is the original
    ``result_observations`` row's id: ``content`` is that row's ciphertext copied verbatim,
    still bound to ``result_observations`` / ``id`` / ``content``, and opens only as such."""

    __tablename__ = "result_observation_versions"
    __table_args__ = (
        # The default name (67 characters) would be cut by PostgreSQL's 63.
        UniqueConstraint(
            "tenant_id",
            "report_version_id",
            "position",
            name="uq_result_observation_versions_tenant_id_version_position",
        ),
        Index("ix_result_observation_versions_tenant_id_patient_id", "tenant_id", "patient_id"),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "report_version_id"],
            ["result_report_versions.tenant_id", "result_report_versions.id"],
            ondelete="CASCADE",
        ),
        CheckConstraint("position >= 1", name="position_positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    report_version_id: Mapped[uuid.UUID]
    position: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(RawBytes)


class ResultShare(HasRandomId, Base):
    """A patient's time-limited share of one report with another doctor: a random link
    whose SHA-256 digest only is kept; the recipient's name is sealed."""

    __tablename__ = "result_shares"
    __table_args__ = (
        UniqueConstraint("token_digest"),
        Index("ix_result_shares_tenant_id_report_id", "tenant_id", "report_id"),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(
            ["tenant_id", "report_id"],
            ["result_reports.tenant_id", "result_reports.id"],
            ondelete="CASCADE",
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    patient_id: Mapped[uuid.UUID]
    report_id: Mapped[uuid.UUID]
    token_digest: Mapped[bytes] = mapped_column(RawBytes)
    recipient: Mapped[bytes] = mapped_column(RawBytes)
    created_by_account_id: Mapped[uuid.UUID]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    views: Mapped[int] = mapped_column(Integer, default=0)
    last_viewed_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class SensitiveExamCode(HasRandomId, Base):
    """An exam whose results are never published online automatically (HIV, genetics,
    pregnancy...): a biologist gives them by phone first. Lab configuration, in clear."""

    __tablename__ = "sensitive_exam_codes"
    __table_args__ = (UniqueConstraint("tenant_id", "system", "code"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    system: Mapped[str] = mapped_column(String(64))
    """``http://loinc.org`` or the laboratory system's local coding system (OBX-3.3)."""
    code: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
