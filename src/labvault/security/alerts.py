"""Security alerts: recorded for the security page, and mailed to the security officers.

An alert names principals and records by id and kind only, never a personal value (I5):
the mail says what happened and where to look, the security page shows the rest to whoever
may see it. Sinks are pluggable (``AlertSink``); the exfiltration guard adds a webhook and
a JSON-lines sink for a SIEM.
"""

from __future__ import annotations

import uuid
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.core.access.principals import Principal, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.crypto.keyring import Keyring
from labvault.core.db import utcnow
from labvault.core.logging import get_logger
from labvault.core.mail import Mailer, MailerError
from labvault.core.mail.message import OutgoingMessage
from labvault.security.models import AlertSeverity, SecurityAlert
from labvault.staff.models import StaffMember, StaffRole
from labvault.staff.services import StaffRepository

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
SECURITY_PAGE = "/securite/alertes"

_log = get_logger("labvault.security.alerts")

KIND_LABELS: dict[str, str] = {
    "break-glass": "accès exceptionnel (bris de glace) à un dossier patient",
    "desk-walk-in-limit": "limite quotidienne de recherches de patients sans rendez-vous "
    "atteinte par un compte d'accueil",
    # Read budgets (labvault.security.budgets).
    "read-budget-exceeded": "budget de lecture dépassé : trop de dossiers patients différents "
    "ouverts par un même compte ou client, accès refusé (et compte ou client bloqué)",
    # Honey records (labvault.security.honey).
    "honey-record-touched": "ouverture d'un dossier piège (patient fictif qu'aucun écran "
    "n'affiche) : accès refusé, compte ou client bloqué",
    # The anomaly rules (labvault.security.anomalies): kind "anomaly-<rule>".
    "anomaly-volume": "volume de dossiers consultés très supérieur à l'habitude de ce compte",
    "anomaly-off-hours": "nombreux dossiers consultés la nuit ou le week-end",
    "anomaly-search-ratio": "nombreuses recherches de patients suivies de peu de consultations",
    "anomaly-sequential": "dossiers consultés dans un ordre ou à un rythme automatiques",
}


KeyringFactory = Callable[[uuid.UUID, Principal], Keyring]
"""Builds a keyring in the caller's transaction for a tenant and a principal."""


@dataclass(frozen=True, slots=True)
class Alert:
    tenant_id: uuid.UUID
    kind: str
    severity: AlertSeverity
    actor: Principal
    target_type: str | None = None
    target_id: uuid.UUID | None = None


class AlertSink(Protocol):
    def raise_alert(self, alert: Alert) -> None:
        """Deliver the alert; may raise only for a bug, never for an outage it can log."""


class DatabaseAlertSink:
    """Keeps the alert for the security page, in the caller's transaction, audited."""

    def __init__(self, session: Session, audit: AuditTrail) -> None:
        self._session = session
        self._audit = audit

    def raise_alert(self, alert: Alert) -> None:
        row = SecurityAlert(
            tenant_id=alert.tenant_id,
            kind=alert.kind,
            severity=alert.severity.value,
            actor_kind=alert.actor.kind.value,
            actor_id=alert.actor.id,
            target_type=alert.target_type,
            target_id=alert.target_id,
            created_at=utcnow(),
        )
        self._session.add(row)
        self._session.flush()
        self._audit.record(
            AuditAction.SECURITY_ALERT_RAISE,
            tenant_id=alert.tenant_id,
            target_type="security-alert",
            target_id=row.id,
            purpose=alert.kind,
        )


class MailAlertSink:
    """Mails every active security officer of the tenant. A mail outage is logged, not
    raised: the alert is already on the security page."""

    def __init__(self, session: Session, keyring_factory: KeyringFactory, mailer: Mailer) -> None:
        self._session = session
        self._keyring_factory = keyring_factory
        self._mailer = mailer

    def raise_alert(self, alert: Alert) -> None:
        officers = list(
            self._session.scalars(
                select(StaffMember.id).where(
                    StaffMember.tenant_id == alert.tenant_id,
                    StaffMember.role == StaffRole.SECURITY_OFFICER.value,
                    StaffMember.active.is_(True),
                )
            )
        )
        if not officers:
            _log.warning("alert.no-security-officer", kind=alert.kind)
            return
        keyring = self._keyring_factory(alert.tenant_id, SystemPrincipal("security:alert-mail"))
        records = StaffRepository(self._session, keyring).list(purpose="security-alert")
        when = utcnow().astimezone(PARIS).strftime("%d/%m/%Y à %H:%M")
        label = KIND_LABELS.get(alert.kind, alert.kind)
        for record in records:
            if record.id not in officers:
                continue
            try:
                self._mailer.send(
                    OutgoingMessage(
                        to=record.email,
                        subject="Alerte de sécurité labvault",
                        text=(
                            f"Une alerte de sécurité ({alert.severity.value}) a été levée le "
                            f"{when} : {label}.\n\nConsultez la page « Alertes » de l'espace "
                            f"sécurité ({SECURITY_PAGE}) pour l'examiner."
                        ),
                        category="security:alert",
                    )
                )
            except MailerError as exc:
                _log.error("alert.mail-failed", kind=alert.kind, error=str(exc))


class AlertDispatcher:
    """Every sink, in order: the record first, so a failing mail cannot lose the alert."""

    def __init__(self, sinks: Sequence[AlertSink]) -> None:
        self._sinks = tuple(sinks)

    def raise_alert(self, alert: Alert) -> None:
        for sink in self._sinks:
            sink.raise_alert(alert)
