"""A refusal rolls back everything it touched but keeps its "denied" event."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditedRefusalError, AuditTrail, audited_transaction
from labvault.core.audit.models import AuditEvent
from labvault.core.runtime import Runtime
from labvault.organizations.models import Organization
from labvault.organizations.services import create_organization

PRINCIPAL = Principal(PrincipalKind.STAFF, "a1b2c3d4e5f6", role="receptionist")


def _events(runtime: Runtime) -> list[tuple[str, str, str | None]]:
    with runtime.sessions() as session:
        return [
            (row.action, row.outcome, row.purpose)
            for row in session.execute(
                select(AuditEvent.action, AuditEvent.outcome, AuditEvent.purpose)
            )
        ]


def test_the_refusal_event_outlives_the_rolled_back_work(runtime: Runtime) -> None:
    def refused() -> None:
        with audited_transaction(runtime.sessions) as session:
            tenant = create_organization(session, runtime.key_provider, "Labo Refus")
            trail = AuditTrail(session, PRINCIPAL)
            trail.record(AuditAction.PATIENT_SEARCH_NIR, tenant_id=tenant.id, purpose="work")
            raise trail.refusal(
                AuditedRefusalError("no"),
                AuditAction.PATIENT_SEARCH_NAME,
                tenant_id=tenant.id,
                target_type="patient",
                purpose="care",
            )

    with pytest.raises(AuditedRefusalError):
        refused()
    assert _events(runtime) == [(AuditAction.PATIENT_SEARCH_NAME.value, "denied", "care")]
    with runtime.sessions() as session:
        tenant_id = session.scalar(select(AuditEvent.tenant_id))
        assert tenant_id is not None
        assert session.get(Organization, uuid.UUID(str(tenant_id))) is None, "rolled back"


def test_other_errors_keep_nothing(runtime: Runtime) -> None:
    def failing() -> None:
        with audited_transaction(runtime.sessions) as session:
            AuditTrail(session, PRINCIPAL).record(AuditAction.PATIENT_SEARCH_NIR, tenant_id=None)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing()
    assert _events(runtime) == []
