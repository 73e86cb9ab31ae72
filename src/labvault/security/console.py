"""What the web layer needs of break-glass and alerts, for a signed-in caller.

Builds the break-glass service (with the alert dispatcher: the database row for the
security page, then a mail to the security officers) and the security officers' review, and
keeps the alert list and its acknowledgement. Nothing here reads a personal value: grants
and alerts name patients and principals by id only.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import select

from labvault.accounts.callers import Caller, CallerNotFoundError
from labvault.core.access.principals import Principal
from labvault.core.audit.actions import AuditAction
from labvault.core.crypto.keyring import Keyring, TenantKeyring
from labvault.core.db import utcnow
from labvault.security.alerts import AlertDispatcher, DatabaseAlertSink, MailAlertSink
from labvault.security.breakglass import BreakGlassReview, BreakGlassService
from labvault.security.models import BreakGlassGrant, SecurityAlert
from labvault.staff.models import StaffRole

__all__ = [
    "AlertSummary",
    "acknowledge_alert",
    "alerts",
    "break_glass_service",
    "grant_of",
    "is_security_officer",
    "review_of",
]

MAX_ALERTS = 200


def break_glass_service(caller: Caller) -> BreakGlassService:
    """The caller's break-glass service; a caller that is not a staff member gets 404."""
    staff_id = caller.staff_id
    if staff_id is None:
        raise CallerNotFoundError
    keyring = caller.keyring()
    runtime = caller.runtime

    def keyrings(tenant_id: uuid.UUID, principal: Principal) -> Keyring:
        return TenantKeyring(
            caller.session,
            runtime.key_provider,
            tenant_id,
            principal,
            context=caller.context.audit,
        )

    dispatcher = AlertDispatcher(
        [
            DatabaseAlertSink(caller.session, keyring.audit),
            MailAlertSink(caller.session, keyrings, runtime.mailer),
        ]
    )
    return BreakGlassService(
        caller.session,
        keyring,
        staff_id=staff_id,
        alerts=dispatcher,
        hours=runtime.settings.break_glass_hours,
        clock=lambda: caller.now,
    )


def grant_of(caller: Caller, patient_id: uuid.UUID) -> BreakGlassGrant | None:
    """The caller's newest live grant on ``patient_id`` (ids and times only)."""
    return caller.session.scalar(
        select(BreakGlassGrant)
        .where(
            BreakGlassGrant.tenant_id == caller.tenant_id,
            BreakGlassGrant.staff_id == caller.staff_id,
            BreakGlassGrant.patient_id == patient_id,
            BreakGlassGrant.revoked_at.is_(None),
            BreakGlassGrant.expires_at > caller.now,
        )
        .order_by(BreakGlassGrant.created_at.desc())
        .limit(1)
    )


def is_security_officer(caller: Caller) -> bool:
    return caller.role == StaffRole.SECURITY_OFFICER.value and caller.staff_id is not None


def review_of(caller: Caller) -> BreakGlassReview:
    """The security officer's review; anyone else gets 404."""
    if not is_security_officer(caller):
        raise CallerNotFoundError
    assert caller.staff_id is not None
    return BreakGlassReview(
        caller.session, caller.keyring(), officer_id=caller.staff_id, clock=lambda: caller.now
    )


@dataclass(frozen=True, slots=True)
class AlertSummary:
    id: uuid.UUID
    kind: str
    severity: str
    actor_kind: str
    actor_id: str
    target_type: str | None
    target_id: uuid.UUID | None
    created_at: dt.datetime
    acknowledged_at: dt.datetime | None


def alerts(caller: Caller, *, limit: int = MAX_ALERTS) -> list[AlertSummary]:
    """The tenant's alerts, unacknowledged first, newest first (security officers only)."""
    if not is_security_officer(caller):
        raise CallerNotFoundError
    rows = caller.session.scalars(
        select(SecurityAlert)
        .where(SecurityAlert.tenant_id == caller.tenant_id)
        .order_by(SecurityAlert.created_at.desc(), SecurityAlert.id)
        .limit(limit)
    )
    found = [
        AlertSummary(
            a.id,
            a.kind,
            a.severity,
            a.actor_kind,
            a.actor_id,
            a.target_type,
            a.target_id,
            a.created_at,
            a.acknowledged_at,
        )
        for a in rows
    ]
    return sorted(found, key=lambda a: a.acknowledged_at is not None)


def acknowledge_alert(caller: Caller, alert_id: uuid.UUID) -> bool | None:
    """Acknowledge one alert: ``None`` if there is no such alert, ``False`` if it already
    was acknowledged. Audited."""
    if not is_security_officer(caller):
        raise CallerNotFoundError
    alert = caller.session.get(SecurityAlert, alert_id)
    if alert is None or alert.tenant_id != caller.tenant_id:
        return None
    if alert.acknowledged_at is not None:
        return False
    alert.acknowledged_at = utcnow()
    alert.acknowledged_by = caller.staff_id
    caller.keyring().audit.record(
        AuditAction.SECURITY_ALERT_ACKNOWLEDGE,
        tenant_id=caller.tenant_id,
        target_type="security-alert",
        target_id=alert.id,
        purpose=alert.kind,
    )
    return True
