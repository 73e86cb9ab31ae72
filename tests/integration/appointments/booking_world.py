"""The access world plus what booking needs: schedules on its sites and an exam catalog, in
both tenants, and helpers building a :class:`BookingService` for a principal and a clock."""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from access_world import World
from labvault.appointments.services import BookingService
from labvault.catalog.services import ExamCatalog
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.models import Organization, Site
from labvault.organizations.services import add_site
from labvault.patients.scope import SYSTEM_ACCESS, patient_scope, staff_scope
from labvault.schedules.services import SiteScheduleService

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
SETUP = SystemPrincipal("test:booking")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOURS = {day: [["07:00", "12:00"], ["14:00", "18:00"]] for day in DAYS}
"""Open every day, so "tomorrow" always has slots whatever day the suite runs."""
SLOT_MINUTES = 15

EXAMS: dict[str, dict[str, Any]] = {
    "glucose": {"code": "GLY", "label": "Glycémie à jeun", "sampling_minutes": 5,
                "fasting_hours": 12, "home_sampling": True},
    "cortisol": {"code": "CORT", "label": "Cortisol du matin", "sampling_minutes": 10,
                 "window_start": "07:00", "window_end": "10:00"},
    "long": {"code": "HGPO", "label": "Hyperglycémie provoquée", "sampling_minutes": 40},
    "urine": {"code": "ECBU", "label": "Examen d'urine", "sampling_minutes": 5,
              "no_appointment": True},
    "blood": {"code": "NFS", "label": "Numération formule sanguine", "sampling_minutes": 5,
              "home_sampling": True},
    "retired": {"code": "OLD", "label": "Ancien examen", "sampling_minutes": 5},
}  # fmt: skip


@dataclass
class BookingWorld:
    world: World
    runtime: Runtime
    exams: dict[str, uuid.UUID]
    foreign_site: uuid.UUID
    foreign_exam: uuid.UUID
    bare_site: uuid.UUID
    """A site of tenant A without a schedule: nothing to book there."""
    account_ids: dict[str, uuid.UUID] = field(default_factory=dict)

    @property
    def main(self) -> uuid.UUID:
        """Capacity 1 per slot (2 boxes, 1 kept for walk-ins)."""
        return self.world.sites["main"]

    @property
    def annex(self) -> uuid.UUID:
        """Capacity 3 per slot (4 boxes, 1 kept for walk-ins)."""
        return self.world.sites["annex"]

    def patient_principal(self, name: str) -> Principal:
        account = self.account_ids.setdefault(name, uuid.uuid4())
        return Principal(PrincipalKind.PATIENT, str(account))

    def service(
        self,
        session: Session,
        principal: Principal,
        clock: Callable[[], dt.datetime],
        *,
        own: frozenset[uuid.UUID] = frozenset(),
    ) -> BookingService:
        keyring = TenantKeyring(session, self.runtime.key_provider, self.world.tenant, principal)
        scope: Any
        if isinstance(principal, SystemPrincipal):
            scope = SYSTEM_ACCESS
        elif principal.kind is PrincipalKind.PATIENT:
            scope = patient_scope(principal, self.world.tenant, own, now=clock())
        else:
            role = principal.role or ""
            scope = staff_scope(
                session, principal, self.world.tenant, self.world.staff[role], now=clock()
            )
        return BookingService(session, keyring, scope, self.runtime.settings, clock=clock)

    def for_patient(
        self, session: Session, name: str, clock: Callable[[], dt.datetime], *extra: str
    ) -> BookingService:
        """A patient account acting for record ``name`` (and the dependents ``extra``)."""
        own = frozenset(self.world.patients[n] for n in (name, *extra))
        return self.service(session, self.patient_principal(name), clock, own=own)


def _schedule(
    session: Session, tenant: uuid.UUID, site: uuid.UUID, boxes: int, walk_in: int
) -> None:
    service = SiteScheduleService(session, AuditTrail(session, SETUP), tenant)
    service.set_schedule(
        site,
        opening_hours=HOURS,
        slot_minutes=SLOT_MINUTES,
        sampling_boxes=boxes,
        walk_in_boxes=walk_in,
    )


def build_booking_world(runtime: Runtime, world: World) -> BookingWorld:
    exams: dict[str, uuid.UUID] = {}
    with transaction(world.sessions) as session:
        _schedule(session, world.tenant, world.sites["main"], 2, 1)
        _schedule(session, world.tenant, world.sites["annex"], 4, 1)
        catalog = ExamCatalog(session, AuditTrail(session, SETUP), world.tenant)
        for name, raw in EXAMS.items():
            exams[name] = catalog.create(raw).id
        catalog.set_active(exams["retired"], False)
        organization = session.get(Organization, world.tenant)
        bare = add_site(
            session,
            organization,  # type: ignore[arg-type]
            name="Alpha Sud",
            address_line="2 rue du Sud",
            postal_code="75014",
            city="Paris",
            opening_hours=HOURS,
            sampling_capacity_per_hour=4,
        ).id
    foreign_sessions = runtime.tenant_sessions(world.other_tenant)
    with transaction(foreign_sessions) as session:
        foreign_site = session.scalar(select(Site.id).where(Site.tenant_id == world.other_tenant))
        assert foreign_site is not None
        _schedule(session, world.other_tenant, foreign_site, 2, 0)
        catalog = ExamCatalog(session, AuditTrail(session, SETUP), world.other_tenant)
        foreign_exam = catalog.create(EXAMS["glucose"]).id
    return BookingWorld(
        world=world,
        runtime=runtime,
        exams=exams,
        foreign_site=foreign_site,
        foreign_exam=foreign_exam,
        bare_site=bare,
    )


def next_slot(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    """A Paris wall time as an aware UTC datetime."""
    return dt.datetime.combine(day, dt.time(hour, minute), PARIS).astimezone(dt.UTC)
