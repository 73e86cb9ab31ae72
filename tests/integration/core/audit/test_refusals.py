"""A refusal rolls back everything it touched but keeps its "denied" event."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditedRefusalError, AuditTrail, audited_transaction
from labvault.core.audit.models import AuditEvent
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.models import Organization, Site
from labvault.organizations.services import add_site, create_organization

PRINCIPAL = Principal(PrincipalKind.STAFF, "a1b2c3d4e5f6", role="receptionist")


def _events(runtime: Runtime) -> list[tuple[str, str, str | None]]:
    with runtime.audit_sessions() as session:
        return [
            (row.action, row.outcome, row.purpose)
            for row in session.execute(
                select(AuditEvent.action, AuditEvent.outcome, AuditEvent.purpose)
            )
        ]


def test_the_refusal_event_outlives_the_rolled_back_work(runtime: Runtime) -> None:
    with transaction(runtime.sessions) as session:
        tenant_id = create_organization(session, runtime.key_provider, "Labo Refus").id
    sessions = runtime.tenant_sessions(tenant_id)

    def refused() -> None:
        with audited_transaction(sessions) as session:
            add_site(
                session,
                session.get_one(Organization, tenant_id),
                name="Annexe",
                address_line="2 rue Haute",
                postal_code="33000",
                city="Bordeaux",
                opening_hours={},
                sampling_capacity_per_hour=1,
            )
            trail = AuditTrail(session, PRINCIPAL)
            trail.record(AuditAction.PATIENT_SEARCH_NIR, tenant_id=tenant_id, purpose="work")
            raise trail.refusal(
                AuditedRefusalError("no"),
                AuditAction.PATIENT_SEARCH_NAME,
                tenant_id=tenant_id,
                target_type="patient",
                purpose="care",
            )

    with pytest.raises(AuditedRefusalError):
        refused()
    assert _events(runtime) == [(AuditAction.PATIENT_SEARCH_NAME.value, "denied", "care")]
    with sessions() as session:
        assert session.scalars(select(Site.id)).all() == [], "the work was rolled back"


def test_other_errors_keep_nothing(runtime: Runtime) -> None:
    with transaction(runtime.sessions) as session:
        tenant_id = create_organization(session, runtime.key_provider, "Labo Erreur").id

    def failing() -> None:
        with audited_transaction(runtime.tenant_sessions(tenant_id)) as session:
            trail = AuditTrail(session, PRINCIPAL)
            trail.record(AuditAction.PATIENT_SEARCH_NIR, tenant_id=tenant_id)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing()
    assert _events(runtime) == []
