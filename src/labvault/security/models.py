"""Break-glass grants and security alerts. Neither holds a personal value in clear: the
justification a staff member writes is sealed under the grant's own data key."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, RawBytes, utcnow

GRANT_SUBJECT_TYPE = "break-glass"
GRANT_ENCRYPTED_FIELDS = ("justification",)


class BreakGlassReason(enum.StrEnum):
    """Why the usual relationship rule is bypassed: a closed list, recorded in the audit
    log; the free-text justification stays sealed with the grant."""

    EMERGENCY = "emergency"
    """A result or a patient needs attention now (critical value, call from a physician)."""
    WALK_IN = "walk-in"
    """The patient is at the desk with no appointment recorded yet."""
    CONTINUITY = "continuity"
    """Another site's patient whose care this site takes over."""
    PATIENT_REQUEST = "patient-request"
    """The patient asks, by phone or in writing, for something only their file answers."""


class BreakGlassGrant(HasRandomId, Base):
    """One staff member may open one patient's file outside the relationship rule, briefly."""

    __tablename__ = "break_glass_grants"
    __table_args__ = (
        Index("ix_break_glass_grants_tenant_id_staff_id", "tenant_id", "staff_id"),
        Index("ix_break_glass_grants_tenant_id_created_at", "tenant_id", "created_at"),
        ForeignKeyConstraint(
            ["tenant_id", "staff_id"], ["staff_members.tenant_id", "staff_members.id"]
        ),
        ForeignKeyConstraint(
            ["tenant_id", "patient_id"], ["patients.tenant_id", "patients.id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(["tenant_id", "data_key_id"], ["data_keys.tenant_id", "data_keys.id"]),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    staff_id: Mapped[uuid.UUID]
    patient_id: Mapped[uuid.UUID]
    reason: Mapped[str] = mapped_column(String(32))
    data_key_id: Mapped[uuid.UUID]
    justification: Mapped[bytes] = mapped_column(RawBytes)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    reviewed_at: Mapped[dt.datetime | None]
    reviewed_by: Mapped[uuid.UUID | None]
    """The security officer's staff id who reviewed the grant."""
    review_outcome: Mapped[str | None] = mapped_column(String(16))


class AlertSeverity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class SecurityAlert(HasRandomId, Base):
    """Something the security officers must look at. Names principals and records by id."""

    __tablename__ = "security_alerts"
    __table_args__ = (Index("ix_security_alerts_tenant_id_created_at", "tenant_id", "created_at"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    kind: Mapped[str] = mapped_column(String(48))
    severity: Mapped[str] = mapped_column(String(16))
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[uuid.UUID | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    acknowledged_at: Mapped[dt.datetime | None]
    acknowledged_by: Mapped[uuid.UUID | None]
