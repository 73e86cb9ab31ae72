"""Site schedules and closures in the database: validated, audited, per organization."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labvault.catalog.services import CatalogAccessDeniedError, ExamCatalog, exam_rule
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail, audited_transaction
from labvault.core.audit.models import AuditEvent
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.models import Site
from labvault.organizations.services import add_site, create_organization
from labvault.schedules.models import SiteClosure, SiteSchedule
from labvault.schedules.services import ScheduleError, SiteScheduleService
from labvault.schedules.slots import compatible_slots

ADMIN = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="organization_admin")
SAMPLER = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="sampler")
HOURS = {day: [["07:00", "12:00"], ["14:00", "18:00"]] for day in ("mon", "tue", "wed", "thu")}
NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)  # a Sunday
MONDAY = dt.date(2026, 12, 7)


@dataclass
class Labs:
    a: uuid.UUID
    site_a: uuid.UUID
    b: uuid.UUID
    site_b: uuid.UUID


@pytest.fixture
def labs(runtime: Runtime) -> Labs:
    ids: list[uuid.UUID] = []
    for name in ("Labo Horaires A", "Labo Horaires B"):
        with transaction(runtime.sessions) as session:
            organization = create_organization(session, runtime.key_provider, name)
            site = add_site(
                session,
                organization,
                name="Centre",
                address_line="1 rue de la Paix",
                postal_code="69001",
                city="Lyon",
                opening_hours={},
                sampling_capacity_per_hour=0,
            )
            ids += [organization.id, site.id]
    return Labs(*ids)


def _service(
    session: Session, tenant: uuid.UUID, principal: Principal = ADMIN
) -> SiteScheduleService:
    return SiteScheduleService(session, AuditTrail(session, principal), tenant, clock=lambda: NOW)


def _set(runtime: Runtime, tenant: uuid.UUID, site: uuid.UUID, **changes: Any) -> None:
    arguments: dict[str, Any] = {
        "opening_hours": HOURS,
        "slot_minutes": 15,
        "sampling_boxes": 3,
        "walk_in_boxes": 1,
        **changes,
    }
    with audited_transaction(runtime.tenant_sessions(tenant)) as session:
        _service(session, tenant).set_schedule(site, **arguments)


def _events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    with transaction(runtime.audit_sessions) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def _rows(runtime: Runtime, tenant: uuid.UUID, model: type[Any]) -> int:
    with transaction(runtime.tenant_sessions(tenant)) as session:
        query = select(func.count()).select_from(model).where(model.tenant_id == tenant)
        return session.scalar(query) or 0


def test_a_schedule_gives_slots_and_a_closure_removes_days(runtime: Runtime, labs: Labs) -> None:
    _set(runtime, labs.a, labs.site_a)
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        service = _service(session, labs.a)
        slots = service.slots(labs.site_a, MONDAY, MONDAY + dt.timedelta(days=3))
        assert len(slots) == 4 * 36
        assert {slot.capacity for slot in slots} == {2}
        assert session.get(Site, labs.site_a).opening_hours == HOURS  # type: ignore[union-attr]
    (updated,) = _events(runtime, AuditAction.SCHEDULE_SITE_UPDATE)
    assert (updated.target_type, updated.target_id) == ("site", labs.site_a)

    with audited_transaction(runtime.tenant_sessions(labs.a)) as session:
        closure = _service(session, labs.a).add_closure(
            labs.site_a, starts_on="2026-12-08", ends_on=dt.date(2026, 12, 9), reason="Travaux"
        )
        closure_id = closure.id
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        slots = _service(session, labs.a).slots(labs.site_a, MONDAY, MONDAY + dt.timedelta(days=3))
        assert {slot.starts_at.date() for slot in slots} == {MONDAY, MONDAY + dt.timedelta(3)}
    (added,) = _events(runtime, AuditAction.SCHEDULE_CLOSURE_ADD)
    assert (added.target_type, added.target_id) == ("closure", closure_id)

    with audited_transaction(runtime.tenant_sessions(labs.a)) as session:
        _service(session, labs.a).remove_closure(closure_id)
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        assert len(_service(session, labs.a).slots(labs.site_a, MONDAY, MONDAY)) == 36
    assert len(_events(runtime, AuditAction.SCHEDULE_CLOSURE_REMOVE)) == 1


def test_slots_compatible_with_catalog_exams(runtime: Runtime, labs: Labs) -> None:
    _set(runtime, labs.a, labs.site_a)
    with audited_transaction(runtime.tenant_sessions(labs.a)) as session:
        exam = ExamCatalog(session, AuditTrail(session, ADMIN), labs.a).create(
            {
                "code": "CORT8",
                "label": "Cortisol",
                "sampling_minutes": 20,
                "window_start": "07:00",
                "window_end": "10:00",
            }
        )
        rules = [exam_rule(exam)]
        slots = _service(session, labs.a).slots(labs.site_a, MONDAY, MONDAY)
        fitting = compatible_slots(slots, rules, 15)
        assert fitting[0].starts_at.strftime("%H:%M") == "07:00"
        assert fitting[-1].starts_at.strftime("%H:%M") == "09:30"


def test_a_site_without_schedule_has_no_slots(runtime: Runtime, labs: Labs) -> None:
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        service = _service(session, labs.a)
        assert service.schedule(labs.site_a) is None
        assert service.slots(labs.site_a, MONDAY, MONDAY) == []


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"opening_hours": {"mon": [["07:00", "12:00"], ["11:00", "13:00"]]}}, "chevauchent"),
        ({"opening_hours": {"mon": [["7h", "12:00"]]}}, "HH:MM"),
        ({"slot_minutes": 0}, "créneau"),
        ({"slot_minutes": "0"}, "créneau"),
        ({"sampling_boxes": 0}, "box de prélèvement"),
        ({"walk_in_boxes": 4}, "pas plus que"),
        ({"walk_in_boxes": -1}, "sans rendez-vous"),
        ({"sampling_boxes": True}, "box de prélèvement"),
    ],
)
def test_a_bad_schedule_changes_nothing(
    runtime: Runtime, labs: Labs, changes: dict[str, Any], fragment: str
) -> None:
    _set(runtime, labs.a, labs.site_a)
    with pytest.raises(ScheduleError, match=fragment):
        _set(
            runtime,
            labs.a,
            labs.site_a,
            **{"opening_hours": {"fri": [["08:00", "09:00"]]}, **changes},
        )
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        assert session.get(Site, labs.site_a).opening_hours == HOURS  # type: ignore[union-attr]
        row = session.scalar(select(SiteSchedule).where(SiteSchedule.site_id == labs.site_a))
        assert row is not None
        assert (row.slot_minutes, row.sampling_boxes, row.walk_in_boxes) == (15, 3, 1)
    assert len(_events(runtime, AuditAction.SCHEDULE_SITE_UPDATE)) == 1


@pytest.mark.parametrize(
    ("dates", "fragment"),
    [
        (("0", "2026-12-09"), "date invalide"),
        ((0, "2026-12-09"), "date invalide"),
        (("2026-02-30", "2026-03-01"), "date invalide"),
        (("2026-12-09", "2026-12-08"), "précéder"),
        (("2026-11-01", "2026-11-30"), "déjà passée"),
        (("2026-12-08", "2028-12-08"), "366"),
    ],
)
def test_a_bad_closure_writes_nothing(
    runtime: Runtime, labs: Labs, dates: tuple[object, object], fragment: str
) -> None:
    with (
        pytest.raises(ScheduleError, match=fragment),
        audited_transaction(runtime.tenant_sessions(labs.a)) as session,
    ):
        _service(session, labs.a).add_closure(
            labs.site_a, starts_on=dates[0], ends_on=dates[1], reason="Inventaire"
        )
    assert _rows(runtime, labs.a, SiteClosure) == 0
    assert _events(runtime, AuditAction.SCHEDULE_CLOSURE_ADD) == []


@pytest.mark.parametrize("reason", ["", "   ", "x" * 201, "Fermé\x00"])
def test_a_closure_needs_a_clean_reason(runtime: Runtime, labs: Labs, reason: str) -> None:
    with (
        pytest.raises(ScheduleError, match="Motif"),
        audited_transaction(runtime.tenant_sessions(labs.a)) as session,
    ):
        _service(session, labs.a).add_closure(
            labs.site_a, starts_on=MONDAY, ends_on=MONDAY, reason=reason
        )
    assert _rows(runtime, labs.a, SiteClosure) == 0


def test_another_organizations_site_and_closures_are_not_found(
    runtime: Runtime, labs: Labs
) -> None:
    _set(runtime, labs.b, labs.site_b)
    with audited_transaction(runtime.tenant_sessions(labs.b)) as session:
        foreign = _service(session, labs.b).add_closure(
            labs.site_b, starts_on=MONDAY, ends_on=MONDAY, reason="Grève"
        )
        foreign_id = foreign.id
    with transaction(runtime.tenant_sessions(labs.a)) as session:
        service = _service(session, labs.a)
        for call in (
            lambda: service.set_schedule(
                labs.site_b, opening_hours=HOURS, slot_minutes=10, sampling_boxes=1
            ),
            lambda: service.add_closure(
                labs.site_b, starts_on=MONDAY, ends_on=MONDAY, reason="Piratage"
            ),
            lambda: service.slots(labs.site_b, MONDAY, MONDAY),
            lambda: service.closures(labs.site_b),
        ):
            with pytest.raises(ScheduleError, match="Site introuvable"):
                call()
        with pytest.raises(ScheduleError, match="Fermeture introuvable"):
            service.remove_closure(foreign_id)
    assert _rows(runtime, labs.b, SiteClosure) == 1
    with transaction(runtime.tenant_sessions(labs.b)) as session:
        row = session.scalar(select(SiteSchedule).where(SiteSchedule.site_id == labs.site_b))
        assert row is not None
        assert row.slot_minutes == 15


def test_only_admins_change_schedules_and_refusals_are_audited(
    runtime: Runtime, labs: Labs
) -> None:
    with (
        pytest.raises(CatalogAccessDeniedError),
        audited_transaction(runtime.tenant_sessions(labs.a)) as session,
    ):
        _service(session, labs.a, SAMPLER).set_schedule(
            labs.site_a, opening_hours=HOURS, slot_minutes=15, sampling_boxes=2
        )
    assert _rows(runtime, labs.a, SiteSchedule) == 0
    (denied,) = _events(runtime, AuditAction.CATALOG_ADMINISTRATION_DENIED)
    assert (denied.outcome, denied.target_type, denied.target_id) == ("denied", "site", labs.site_a)
