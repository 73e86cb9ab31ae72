"""The exam catalog in the database: per organization, audited, admins only, all or nothing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labvault.catalog.models import Exam
from labvault.catalog.schemas import CatalogError
from labvault.catalog.services import CatalogAccessDeniedError, ExamCatalog
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail, audited_transaction
from labvault.core.audit.models import AuditEvent
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

ADMIN = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="organization_admin")
RECEPTIONIST = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="receptionist")
CORTISOL: dict[str, Any] = {
    "code": "CORT8",
    "label": "Cortisol à 8 h",
    "loinc": "2143-6",
    "sampling_minutes": 5,
    "fasting_hours": 0,
    "window_start": "07:00",
    "window_end": "10:00",
    "preparation_text": "Présentez-vous entre 7 h et 10 h.",
}
GLUCOSE: dict[str, Any] = {
    "code": "GLY",
    "label": "Glycémie à jeun",
    "loinc": "2345-7",
    "sampling_minutes": 5,
    "fasting_hours": 12,
    "home_sampling": True,
}


@dataclass
class Labs:
    a: uuid.UUID
    b: uuid.UUID


@pytest.fixture
def labs(runtime: Runtime) -> Labs:
    ids = []
    for name in ("Labo Catalogue A", "Labo Catalogue B"):
        with transaction(runtime.sessions) as session:
            ids.append(create_organization(session, runtime.key_provider, name).id)
    return Labs(*ids)


def _catalog(session: Session, tenant: uuid.UUID, principal: Principal = ADMIN) -> ExamCatalog:
    return ExamCatalog(session, AuditTrail(session, principal), tenant)


def _create(runtime: Runtime, tenant: uuid.UUID, raw: dict[str, Any]) -> uuid.UUID:
    with audited_transaction(runtime.tenant_sessions(tenant)) as session:
        return _catalog(session, tenant).create(raw).id


def _count(runtime: Runtime, tenant: uuid.UUID) -> int:
    with transaction(runtime.tenant_sessions(tenant)) as session:
        query = select(func.count()).select_from(Exam).where(Exam.tenant_id == tenant)
        return session.scalar(query) or 0


def _events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    with transaction(runtime.audit_sessions) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def test_an_admin_builds_the_catalog_and_each_write_is_audited(
    runtime: Runtime, labs: Labs
) -> None:
    cortisol = _create(runtime, labs.a, CORTISOL)
    glucose = _create(runtime, labs.a, GLUCOSE)
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        exams = _catalog(session, labs.a).exams()
        assert [exam.code for exam in exams] == ["CORT8", "GLY"]
        stored = exams[0]
        assert stored.loinc == "2143-6"
        assert str(stored.window_start) == "07:00:00"
        assert exams[1].home_sampling is True
        assert exams[1].fasting_hours == 12
    created = _events(runtime, AuditAction.CATALOG_EXAM_CREATE)
    assert {(e.target_id, e.tenant_id, e.outcome) for e in created} == {
        (cortisol, labs.a, "success"),
        (glucose, labs.a, "success"),
    }
    with audited_transaction(runtime.tenant_sessions(labs.a)) as session:
        exam = _catalog(session, labs.a).update(
            cortisol, {**CORTISOL, "window_end": "09:30", "sampling_minutes": "10"}
        )
        assert exam.sampling_minutes == 10
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        assert str(_catalog(session, labs.a).get(cortisol).window_end) == "09:30:00"  # type: ignore[union-attr]
    assert [e.target_id for e in _events(runtime, AuditAction.CATALOG_EXAM_UPDATE)] == [cortisol]


def test_bad_input_and_duplicate_codes_write_nothing(runtime: Runtime, labs: Labs) -> None:
    _create(runtime, labs.a, CORTISOL)
    for raw, fragment in [
        ({**GLUCOSE, "loinc": "2345-8"}, "chiffre de contrôle"),
        ({**GLUCOSE, "fasting_hours": 20}, "entre 0 et 16"),
        ({**GLUCOSE, "code": "cort8"}, "existe déjà"),
        ({**GLUCOSE, "sampling_minutes": "0"}, "entre 1 et 240"),
    ]:
        with pytest.raises(CatalogError, match=fragment):
            _create(runtime, labs.a, raw)
    assert _count(runtime, labs.a) == 1
    assert len(_events(runtime, AuditAction.CATALOG_EXAM_CREATE)) == 1
    # Another organization has its own codes.
    _create(runtime, labs.b, CORTISOL)
    assert _count(runtime, labs.b) == 1


def test_an_update_to_an_existing_code_changes_nothing(runtime: Runtime, labs: Labs) -> None:
    cortisol = _create(runtime, labs.a, CORTISOL)
    _create(runtime, labs.a, GLUCOSE)
    with (
        pytest.raises(CatalogError, match="existe déjà"),
        audited_transaction(runtime.tenant_sessions(labs.a)) as session,
    ):
        _catalog(session, labs.a).update(cortisol, {**CORTISOL, "code": "GLY", "label": "X"})
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        assert _catalog(session, labs.a).get(cortisol).label == "Cortisol à 8 h"  # type: ignore[union-attr]
    assert _events(runtime, AuditAction.CATALOG_EXAM_UPDATE) == []


def test_another_organizations_exam_is_not_found(runtime: Runtime, labs: Labs) -> None:
    foreign = _create(runtime, labs.b, CORTISOL)
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        catalog = _catalog(session, labs.a)
        assert catalog.get(foreign) is None
        assert catalog.exams() == []
        with pytest.raises(CatalogError, match="Examen introuvable"):
            catalog.update(foreign, {**CORTISOL, "label": "Piraté"})
        with pytest.raises(CatalogError, match="Examen introuvable"):
            catalog.active_exams([foreign])
        with pytest.raises(CatalogError, match="Examen introuvable"):
            catalog.set_active(uuid.uuid4(), False)
    with transaction(runtime.tenant_sessions(labs.b)) as session:
        assert _catalog(session, labs.b).get(foreign).label == "Cortisol à 8 h"  # type: ignore[union-attr]


def test_deactivated_exams_leave_the_bookable_list(runtime: Runtime, labs: Labs) -> None:
    cortisol = _create(runtime, labs.a, CORTISOL)
    with audited_transaction(runtime.tenant_sessions(labs.a)) as session:
        _catalog(session, labs.a).set_active(cortisol, False)
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        catalog = _catalog(session, labs.a)
        assert catalog.exams() == []
        assert len(catalog.exams(include_inactive=True)) == 1
        with pytest.raises(CatalogError):
            catalog.active_exams([cortisol])
    (event,) = _events(runtime, AuditAction.CATALOG_EXAM_UPDATE)
    assert event.purpose == "deactivate"


@pytest.mark.parametrize(
    "principal",
    [RECEPTIONIST, Principal(PrincipalKind.PATIENT, str(uuid.uuid4()))],
    ids=["receptionist", "patient"],
)
def test_only_admins_change_the_catalog_and_refusals_are_audited(
    runtime: Runtime, labs: Labs, principal: Principal
) -> None:
    with (
        pytest.raises(CatalogAccessDeniedError),
        audited_transaction(runtime.tenant_sessions(labs.a)) as session,
    ):
        _catalog(session, labs.a, principal).create(CORTISOL)
    assert _count(runtime, labs.a) == 0
    (denied,) = _events(runtime, AuditAction.CATALOG_ADMINISTRATION_DENIED)
    assert (denied.outcome, denied.actor_id, denied.tenant_id) == ("denied", principal.id, labs.a)
    # A system job may (the demo, imports).
    with audited_transaction(runtime.tenant_sessions(labs.a)) as session:
        ExamCatalog(session, AuditTrail(session, SystemPrincipal("test:catalog")), labs.a).create(
            CORTISOL
        )
    assert _count(runtime, labs.a) == 1


@pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True
)
def test_row_level_security_hides_other_catalogs(runtime: Runtime, labs: Labs) -> None:
    assert runtime.engine.dialect.name == "postgresql"
    _create(runtime, labs.a, CORTISOL)
    with transaction(runtime.tenant_sessions(labs.b)) as session:
        assert session.scalar(select(func.count()).select_from(Exam)) == 0
