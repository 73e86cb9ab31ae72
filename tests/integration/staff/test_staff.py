"""Staff members: sealed at rest like patients, and bound to their own tenant's sites."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.models import Site
from labvault.organizations.services import add_site, create_organization
from labvault.staff.models import StaffMember, StaffRole, StaffSite
from labvault.staff.services import StaffRepository, UnknownSiteError


def _lab(runtime: Runtime, name: str) -> tuple[uuid.UUID, uuid.UUID]:
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, name)
        site = add_site(
            session,
            organization,
            name="Centre",
            address_line="1 place de la Mairie",
            postal_code="75001",
            city="Paris",
            opening_hours={},
            sampling_capacity_per_hour=4,
        )
        return organization.id, site.id


def _staff(runtime: Runtime, tenant: uuid.UUID, session):  # type: ignore[no-untyped-def]
    keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("test:staff"))
    return StaffRepository(session, keyring)


def test_staff_members_are_sealed_and_read_back(runtime: Runtime) -> None:
    tenant, site = _lab(runtime, "Labo A")
    with transaction(runtime.sessions) as session:
        staff_id = _staff(runtime, tenant, session).add(
            first_name="Hélène",
            last_name="Garnier-Lefèvre",
            email="H.Garnier@Example.org",
            role=StaffRole.BIOLOGIST,
            site_ids=[site],
        )
    with transaction(runtime.sessions) as session:
        stored = session.get(StaffMember, staff_id)
        assert stored is not None
        assert b"Garnier" not in stored.last_name
        assert b"example" not in stored.email.lower()
        (member,) = _staff(runtime, tenant, session).list(purpose="test")
    assert (member.first_name, member.last_name) == ("Hélène", "Garnier-Lefèvre")
    assert member.email == "H.Garnier@example.org"
    assert member.site_ids == (site,)
    assert "Garnier" not in repr(member)


def test_a_staff_member_cannot_be_given_another_tenants_site(runtime: Runtime) -> None:
    tenant, _ = _lab(runtime, "Labo A")
    _, foreign_site = _lab(runtime, "Labo B")
    with transaction(runtime.sessions) as session, pytest.raises(UnknownSiteError):
        _staff(runtime, tenant, session).add(
            first_name="Paul",
            last_name="Martin",
            email="paul@example.org",
            role=StaffRole.SAMPLER,
            site_ids=[foreign_site],
        )


def test_the_database_refuses_a_cross_tenant_site_assignment(runtime: Runtime) -> None:
    """Isolation holds in the schema too, for code that would skip the service's check."""
    tenant, site = _lab(runtime, "Labo A")
    _, foreign_site = _lab(runtime, "Labo B")
    with transaction(runtime.sessions) as session:
        staff_id = _staff(runtime, tenant, session).add(
            first_name="Paul",
            last_name="Martin",
            email="paul@example.org",
            role=StaffRole.SAMPLER,
            site_ids=[site],
        )
    with pytest.raises(IntegrityError), transaction(runtime.sessions) as session:
        session.execute(
            insert(StaffSite).values(staff_id=staff_id, site_id=foreign_site, tenant_id=tenant)
        )
    with transaction(runtime.sessions) as session:
        assert list(session.scalars(select(StaffSite.site_id))) == [site]
        assert session.scalar(select(Site.tenant_id).where(Site.id == foreign_site)) != tenant


def test_staff_email_must_be_valid(runtime: Runtime) -> None:
    tenant, site = _lab(runtime, "Labo A")
    with transaction(runtime.sessions) as session, pytest.raises(ValueError, match="email"):
        _staff(runtime, tenant, session).add(
            first_name="Paul",
            last_name="Martin",
            email="paul at example",
            role=StaffRole.SAMPLER,
            site_ids=[site],
        )
