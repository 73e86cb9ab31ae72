"""The exfiltration guard's own records: anomaly findings and four-eyes unlock requests.

Neither holds a personal value: principals by kind and id, staff by id, counts, times and
closed-list reasons (a closed list needs no sealing, unlike free text).
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from labvault.core.db import Base, HasRandomId, utcnow


class AnomalyFinding(HasRandomId, Base):
    """One rule's finding on one principal over one window, recorded once (deduplication)."""

    __tablename__ = "anomaly_findings"
    __table_args__ = (
        UniqueConstraint("tenant_id", "rule", "actor_id", "window_start"),
        Index("ix_anomaly_findings_tenant_id_actor_id", "tenant_id", "actor_id", "window_end"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    rule: Mapped[str] = mapped_column(String(32))
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(128))
    window_start: Mapped[dt.datetime]
    window_end: Mapped[dt.datetime]
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Counts and ratios only (``{"patients": 63, "baseline_median": 5.0}``)."""
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class UnlockReason(enum.StrEnum):
    """Why the first security officer asks to lift a guard's lock: a closed list, so that
    nothing free-form (a name, a diagnosis) ends up next to it."""

    FALSE_POSITIVE = "false-positive"
    """Investigated: the reads were legitimate work."""
    CREDENTIALS_RENEWED = "credentials-renewed"
    """The credentials were compromised and have been renewed (password, factors, secret)."""
    TEST = "test"
    """A planned test of the guard (exercise, penetration test)."""


class UnlockOutcome(enum.StrEnum):
    APPROVED = "approved"
    CANCELLED = "cancelled"


class UnlockRequest(HasRandomId, Base):
    """The first half of a four-eyes unlock: one security officer asks, another approves."""

    __tablename__ = "unlock_requests"
    __table_args__ = (
        Index("ix_unlock_requests_tenant_id_principal_id", "tenant_id", "principal_id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    principal_kind: Mapped[str] = mapped_column(String(16))
    principal_id: Mapped[str] = mapped_column(String(128))
    """An account id (staff or patient), or ``service:<client id>``."""
    reason: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[uuid.UUID]
    """The requesting security officer's staff id."""
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    decided_by: Mapped[uuid.UUID | None]
    decided_at: Mapped[dt.datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
