"""Two tenants with sites, staff of every role and patients placed around the relationship
window: the world the access-control tests ask questions of."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from labvault.appointments.models import Appointment, AppointmentStatus
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository

NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
"""A Wednesday morning, Paris time 11:00."""

PLACEMENTS: dict[str, tuple[str, dt.timedelta, AppointmentStatus] | None] = {
    "today": ("main", dt.timedelta(hours=2), AppointmentStatus.BOOKED),
    "earlier_today": ("main", dt.timedelta(hours=-2), AppointmentStatus.DONE),
    "tomorrow": ("main", dt.timedelta(days=1), AppointmentStatus.BOOKED),
    "in_20_days": ("main", dt.timedelta(days=20), AppointmentStatus.BOOKED),
    "29_days_ago": ("main", dt.timedelta(days=-29), AppointmentStatus.DONE),
    "45_days_ago": ("main", dt.timedelta(days=-45), AppointmentStatus.DONE),
    "in_45_days": ("main", dt.timedelta(days=45), AppointmentStatus.BOOKED),
    "cancelled": ("main", dt.timedelta(days=2), AppointmentStatus.CANCELLED),
    "other_site": ("annex", dt.timedelta(hours=1), AppointmentStatus.BOOKED),
    "no_appointment": None,
}
"""Each patient of tenant A by name: (site, offset from NOW, status) of its appointment."""

IN_RELATIONSHIP = {"today", "earlier_today", "tomorrow", "in_20_days", "29_days_ago"}
TODAY = {"today", "earlier_today"}


@dataclass
class World:
    tenant: uuid.UUID
    other_tenant: uuid.UUID
    sessions: sessionmaker[Session]
    """Sessions bound to tenant A (row-level security on PostgreSQL)."""
    sites: dict[str, uuid.UUID]
    staff: dict[str, uuid.UUID]
    """Staff ids by role value, all working at the main site."""
    principals: dict[str, Principal]
    patients: dict[str, uuid.UUID]
    inputs: dict[str, PatientInput]
    foreign_patient: uuid.UUID
    foreign_staff: uuid.UUID
    extra: dict[str, uuid.UUID] = field(default_factory=dict)

    def keyring(
        self, runtime: Runtime, session: Session, principal: Principal, tenant: uuid.UUID | None
    ) -> TenantKeyring:
        return TenantKeyring(session, runtime.key_provider, tenant or self.tenant, principal)


def _site(session: Session, organization: object, name: str) -> uuid.UUID:
    site = add_site(
        session,
        organization,  # type: ignore[arg-type]
        name=name,
        address_line="1 rue de la Paix",
        postal_code="75002",
        city="Paris",
        opening_hours={},
        sampling_capacity_per_hour=12,
    )
    return site.id


def build_world(runtime: Runtime) -> World:
    """Tenant A in one transaction, tenant B in another: on PostgreSQL each transaction is
    bound to the tenant it creates (row-level security)."""
    people = list(synthetic_patients(len(PLACEMENTS) + 1, seed=505))
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo Alpha")
        tenant_id = tenant.id
        sites = {
            "main": _site(session, tenant, "Alpha Centre"),
            "annex": _site(session, tenant, "Alpha Nord"),
        }
        setup = TenantKeyring(
            session, runtime.key_provider, tenant_id, SystemPrincipal("test:world")
        )
        staff_repository = StaffRepository(session, setup)
        staff: dict[str, uuid.UUID] = {}
        principals: dict[str, Principal] = {}
        for number, role in enumerate(StaffRole):
            staff[role.value] = staff_repository.add(
                first_name="Camille",
                last_name=f"Agent{number}",
                email=f"agent{number}@alpha.example.org",
                role=role,
                site_ids=[sites["main"]],
            )
            principals[role.value] = Principal(
                PrincipalKind.STAFF, str(uuid.uuid4()), role=role.value, site_id=sites["main"]
            )
        created = PatientRepository(session, setup).register_many(people[: len(PLACEMENTS)])
        patients = {name: created.created[i] for i, name in enumerate(PLACEMENTS)}
        inputs = {name: people[i] for i, name in enumerate(PLACEMENTS)}
        for name, placement in PLACEMENTS.items():
            if placement is None:
                continue
            site, offset, status = placement
            session.add(
                Appointment(
                    tenant_id=tenant_id,
                    patient_id=patients[name],
                    site_id=sites[site],
                    starts_at=NOW + offset,
                    status=status.value,
                )
            )
    with transaction(runtime.sessions) as session:
        other = create_organization(session, runtime.key_provider, "Labo Beta")
        other_site = _site(session, other, "Beta Centre")
        beta = TenantKeyring(session, runtime.key_provider, other.id, SystemPrincipal("test:world"))
        foreign = PatientRepository(session, beta).register_many(people[len(PLACEMENTS) :])
        foreign_patient = foreign.created[0]
        session.add(
            Appointment(
                tenant_id=other.id,
                patient_id=foreign_patient,
                site_id=other_site,
                starts_at=NOW + dt.timedelta(hours=1),
            )
        )
        foreign_staff = StaffRepository(session, beta).add(
            first_name="Dominique",
            last_name="Beta",
            email="receptionist@beta.example.org",
            role=StaffRole.RECEPTIONIST,
            site_ids=[other_site],
        )
        other_id = other.id
    return World(
        tenant=tenant_id,
        other_tenant=other_id,
        sessions=runtime.tenant_sessions(tenant_id),
        sites=sites,
        staff=staff,
        principals=principals,
        patients=patients,
        inputs=inputs,
        foreign_patient=foreign_patient,
        foreign_staff=foreign_staff,
    )
