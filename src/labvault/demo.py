"""The demo organization: two sites, one staff member per role, synthetic patients, a week
of appointments and demo accounts (a patient linked to its record, a receptionist, an
organization admin)."""

from __future__ import annotations

import datetime as dt
import random
import uuid
import zoneinfo
from dataclasses import dataclass

from faker import Faker
from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.accounts.invitations import StaffAccountService
from labvault.accounts.models import Account, AccountKind
from labvault.appointments.models import Appointment
from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.crypto.providers import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.runtime import Runtime
from labvault.organizations.models import Organization, Site
from labvault.organizations.services import add_site, create_organization
from labvault.patients.models import Patient
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository

DEMO_ORGANIZATION = "Laboratoires Démo Bio"
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
_WEEKDAY_HOURS = [["07:00", "12:30"], ["14:00", "18:00"]]
OPENING_HOURS = {
    "mon": _WEEKDAY_HOURS,
    "tue": _WEEKDAY_HOURS,
    "wed": _WEEKDAY_HOURS,
    "thu": _WEEKDAY_HOURS,
    "fri": _WEEKDAY_HOURS,
    "sat": [["08:00", "12:00"]],
}


def demo_exists(session: Session) -> bool:
    return (
        session.scalar(select(Organization).where(Organization.name == DEMO_ORGANIZATION))
        is not None
    )


def create_demo_organization(session: Session, provider: KeyProvider) -> Organization:
    """Organization, two sites and staff; patients are added by the caller (it shows progress)."""
    organization = create_organization(session, provider, DEMO_ORGANIZATION)
    centre = add_site(
        session,
        organization,
        name="Site Centre",
        address_line="12 rue de la République",
        postal_code="69002",
        city="Lyon",
        opening_hours=OPENING_HOURS,
        sampling_capacity_per_hour=12,
    )
    gare = add_site(
        session,
        organization,
        name="Site Gare",
        address_line="3 place de la Gare",
        postal_code="69003",
        city="Lyon",
        opening_hours={key: OPENING_HOURS[key] for key in ("mon", "tue", "wed", "thu", "fri")},
        sampling_capacity_per_hour=8,
    )
    keyring = TenantKeyring(session, provider, organization.id, SystemPrincipal("cli:demo"))
    staff = StaffRepository(session, keyring)
    fake = Faker("fr_FR")
    fake.seed_instance(2026)
    rng = random.Random(2026)  # noqa: S311 - picks demo data, not secrets
    for number, role in enumerate(StaffRole):
        first, last = fake.first_name(), fake.last_name()
        sites = (
            [centre.id, gare.id]
            if role is not StaffRole.SAMPLER
            else [rng.choice([centre.id, gare.id])]
        )
        staff.add(
            first_name=first,
            last_name=last,
            email=f"staff{number + 1}.{role.value.replace('_', '-')}@example.org",
            role=role,
            site_ids=sites,
        )
    return organization


@dataclass(frozen=True, slots=True)
class DemoAccount:
    email: str
    password: str
    kind: AccountKind
    note: str


DEMO_ACCOUNTS = (
    DemoAccount(
        "patient.demo@example.org",
        "girafe orange sous la pluie",
        AccountKind.PATIENT,
        "linked to a demo patient record with an appointment tomorrow; log in at "
        "/compte/connexion, the second factor is a code sent to the demo mailbox",
    ),
    DemoAccount(
        "staff1.receptionist@example.org",
        "tilleul vert du jardin",
        AccountKind.STAFF,
        "receptionist: log in at /compte/connexion-professionnel; the first login enrols an "
        "authenticator app; then /patients/recherche finds the patients booked this week",
    ),
    DemoAccount(
        "staff4.organization-admin@example.org",
        "pivoine bleue au marché",
        AccountKind.STAFF,
        "organization admin: log in at /compte/connexion-professionnel; the first login "
        "registers a passkey (use http://localhost:8000), then /administration/personnel",
    ),
)
"""Known passwords, for the demo only: `labvault demo` prints them. Staff accounts belong
to staff members of create_demo_organization and have no second factor yet."""

DEMO_BOOKINGS = 24
"""Seeded patients given an appointment this week, so that staff scopes are not empty."""


def create_demo_care(session: Session, organization_id: uuid.UUID) -> int:
    """Appointments for the first seeded patients over the coming days at both sites, and
    the demo patient account linked to the first of them (booked tomorrow). Returns the
    number of appointments made."""
    sites = list(
        session.scalars(
            select(Site.id).where(Site.tenant_id == organization_id).order_by(Site.name)
        )
    )
    patients = list(
        session.scalars(
            select(Patient.id)
            .where(Patient.tenant_id == organization_id)
            .order_by(Patient.created_at, Patient.id)
            .limit(DEMO_BOOKINGS)
        )
    )
    if not sites or not patients:
        return 0
    today = dt.datetime.now(PARIS).date()
    for number, patient_id in enumerate(patients):
        day = today + dt.timedelta(days=1 + number % 5)
        at = dt.datetime.combine(day, dt.time(8, 0), PARIS) + dt.timedelta(minutes=15 * number)
        session.add(
            Appointment(
                tenant_id=organization_id,
                patient_id=patient_id,
                site_id=sites[number % len(sites)],
                starts_at=at.astimezone(dt.UTC),
            )
        )
    account = session.scalar(
        select(Account).where(
            Account.tenant_id == organization_id, Account.kind == AccountKind.PATIENT.value
        )
    )
    if account is not None and account.patient_id is None:
        account.patient_id = patients[0]
    return len(patients)


def create_demo_accounts(session: Session, runtime: Runtime, organization: Organization) -> None:
    """Active demo accounts: the patient's second factor is a code sent to the demo mailbox;
    the staff account enrols an authenticator app at its first login."""
    service = StaffAccountService(
        session,
        tenant_id=organization.id,
        provider=runtime.key_provider,
        mailer=runtime.mailer,
        limiter=runtime.rate_limiter,
        settings=runtime.settings,
        hasher=PasswordHasher(),
    )
    for account in DEMO_ACCOUNTS:
        if account.kind is AccountKind.STAFF:
            service.provision_staff_account(
                account.email,
                Secret(account.password),
                security_phrase="tournesol du matin",
                by=SystemPrincipal("cli:demo"),
            )
            continue
        service.provision(
            account.email,
            Secret(account.password),
            kind=account.kind,
            security_phrase="tournesol du matin",
            by=SystemPrincipal("cli:demo"),
        )
