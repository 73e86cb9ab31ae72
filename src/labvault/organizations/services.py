"""Creating tenants and their sites."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.core.crypto.keyring import create_index_keys
from labvault.core.crypto.providers import KeyProvider
from labvault.core.tenancy import bind_tenant
from labvault.organizations.models import Organization, Site


class OrganizationNotFoundError(LookupError):
    pass


class InvalidOrganizationNameError(ValueError):
    pass


def normalize_organization_name(name: str) -> str:
    """Single-spaced and trimmed; 1 to 200 characters."""
    normalized = " ".join(name.split())
    if not normalized or len(normalized) > 200:
        raise InvalidOrganizationNameError("an organization name is 1 to 200 characters")
    return normalized


def create_organization(session: Session, provider: KeyProvider, name: str) -> Organization:
    """A new tenant with its own blind-index keys; ``session`` is bound to it from now on.

    Inserting into the tenant list takes the schema owner's session on PostgreSQL
    (``Runtime.admin_sessions``): the application's role only reads it.
    """
    name = normalize_organization_name(name)
    organization = Organization(id=uuid.uuid4(), name=name)
    session.add(organization)
    session.flush()
    bind_tenant(session, organization.id)
    create_index_keys(session, provider, organization.id)
    session.flush()
    return organization


def get_organization(session: Session, name: str | None = None) -> Organization:
    """The organization named ``name``; without a name, the only one there is."""
    if name is not None:
        name = normalize_organization_name(name)
        found = session.scalar(select(Organization).where(Organization.name == name))
        if found is None:
            raise OrganizationNotFoundError(f"no organization named {name!r}")
        return found
    organizations = list(session.scalars(select(Organization).limit(2)))
    if len(organizations) != 1:
        raise OrganizationNotFoundError(
            "there is no organization yet; run `labvault init --organization NAME`"
            if not organizations
            else "there are several organizations; name one with --organization"
        )
    return organizations[0]


def use_organization(session: Session, name: str | None = None) -> Organization:
    """:func:`get_organization`, binding ``session`` to it (row-level security) from now on.

    For jobs that learn their tenant from an option (the CLI's ``--organization``); the web
    app's sessions are bound to the deployment's organization already.
    """
    organization = get_organization(session, name)
    bind_tenant(session, organization.id)
    return organization


def add_site(
    session: Session,
    organization: Organization,
    *,
    name: str,
    address_line: str,
    postal_code: str,
    city: str,
    opening_hours: dict[str, Any],
    sampling_capacity_per_hour: int,
) -> Site:
    site = Site(
        id=uuid.uuid4(),
        tenant_id=organization.id,
        name=name,
        address_line=address_line,
        postal_code=postal_code,
        city=city,
        opening_hours=opening_hours,
        sampling_capacity_per_hour=sampling_capacity_per_hour,
    )
    session.add(site)
    session.flush()
    return site
