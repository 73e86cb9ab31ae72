"""The demo organization: two sites, one staff member per role, synthetic patients, a week
of appointments and demo accounts (a patient linked to its record, a receptionist, an
organization admin), a small exam catalog and the sites' booking schedules."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
import zoneinfo
from dataclasses import dataclass

from faker import Faker
from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.accounts.invitations import StaffAccountService
from labvault.accounts.models import Account, AccountKind
from labvault.appointments.models import Appointment, SlotClaim
from labvault.catalog.models import Exam
from labvault.catalog.services import ExamCatalog
from labvault.core.access.policies import Interaction
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.crypto.providers import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.runtime import Runtime
from labvault.organizations.models import Organization, Site
from labvault.organizations.services import add_site, create_organization
from labvault.patients.models import Patient
from labvault.patients.services import PatientRepository, SealedItem
from labvault.results.sensitive import seed_default_codes
from labvault.schedules.services import SiteScheduleService
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
    seed_default_codes(session, organization.id)  # sensitive exams: given by phone
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


def create_demo_care(
    session: Session, organization_id: uuid.UUID, provider: KeyProvider | None = None
) -> int:
    """Appointments for the first seeded patients over the coming days at both sites, and
    the demo patient account linked to the first of them (booked tomorrow). Returns the
    number of appointments made.

    With ``provider`` (and the demo catalog), each appointment is a real booking: a blood
    count sealed under the patient's key, an end time and its claim on the site's first box,
    so that the pages, the desk and slot search all see it."""
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
    exam_id = session.scalar(
        select(Exam.id).where(Exam.tenant_id == organization_id, Exam.code == DEMO_BOOKED_EXAM)
    )
    repository = None
    if provider is not None and exam_id is not None:
        keyring = TenantKeyring(session, provider, organization_id, SystemPrincipal(DEMO_JOB))
        repository = PatientRepository(session, keyring)
    today = dt.datetime.now(PARIS).date()
    now = dt.datetime.now(dt.UTC)
    for number, patient_id in enumerate(patients):
        day = today + dt.timedelta(days=1 + number % 5)
        # On the schedules' 10-minute grid (opening at 07:00), one slot each.
        at = dt.datetime.combine(day, dt.time(8, 0), PARIS) + dt.timedelta(minutes=10 * number)
        starts_at = at.astimezone(dt.UTC)
        appointment = Appointment(
            id=uuid.uuid4(),
            tenant_id=organization_id,
            patient_id=patient_id,
            site_id=sites[number % len(sites)],
            starts_at=starts_at,
        )
        if repository is not None:
            sealed = repository.seal_for(
                patient_id,
                "appointment",
                Interaction.CREATE,
                SealedItem(
                    patient_id,
                    "appointments",
                    appointment.id,
                    {"exams": json.dumps({"exam_ids": [str(exam_id)]}).encode()},
                ),
                purpose=DEMO_PURPOSE,
            )
            assert sealed is not None  # a system job reaches every record
            appointment.exams = sealed["exams"]
            appointment.ends_at = starts_at + dt.timedelta(minutes=DEMO_SLOT_MINUTES)
            appointment.confirmed_at = now
        session.add(appointment)
        if repository is not None:
            session.flush()
            session.add(
                SlotClaim(
                    tenant_id=organization_id,
                    site_id=appointment.site_id,
                    starts_at=starts_at,
                    box=0,
                    appointment_id=appointment.id,
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


DEMO_JOB = "cli:demo"
DEMO_PURPOSE = "demo"
DEMO_SLOT_MINUTES = 10
DEMO_BOXES = 3
DEMO_WALK_IN_BOXES = 1
DEMO_BOOKED_EXAM = "NFS"
_FASTING = (
    "Venez à jeun depuis 12 heures : ni repas, ni boisson sucrée, ni café ; de l'eau plate "
    "est permise. Prenez vos médicaments habituels sauf avis contraire de votre médecin."
)
DEMO_EXAMS: tuple[dict[str, object], ...] = (
    {
        "code": "NFS",
        "loinc": "58410-2",
        "label": "Numération formule sanguine (NFS)",
        "sampling_minutes": 5,
        "home_sampling": True,
    },
    {
        "code": "GLY",
        "loinc": "1558-6",
        "label": "Glycémie à jeun",
        "sampling_minutes": 5,
        "home_sampling": True,
        "fasting_hours": 12,
        "preparation_text": _FASTING,
    },
    {
        "code": "EAL",
        "loinc": "24331-1",
        "label": "Bilan lipidique (cholestérol, triglycérides)",
        "sampling_minutes": 5,
        "home_sampling": True,
        "fasting_hours": 12,
        "preparation_text": _FASTING,
    },
    {
        "code": "CORT",
        "loinc": "2143-6",
        "label": "Cortisol du matin",
        "sampling_minutes": 10,
        "window_start": "07:00",
        "window_end": "10:00",
        "preparation_text": "Le prélèvement se fait entre 7 h et 10 h. Restez au calme "
        "quelques minutes avant le prélèvement.",
    },
    {
        "code": "TSH",
        "loinc": "3016-3",
        "label": "TSH (thyréostimuline)",
        "sampling_minutes": 5,
        "home_sampling": True,
        "preparation_text": "Si vous prenez un traitement pour la thyroïde, faites le "
        "prélèvement avant la prise du matin.",
    },
    {
        "code": "HBA1C",
        "loinc": "4548-4",
        "label": "Hémoglobine glyquée (HbA1c)",
        "sampling_minutes": 5,
        "home_sampling": True,
    },
    {
        "code": "ECBU",
        "loinc": "630-4",
        "label": "Examen cytobactériologique des urines (ECBU)",
        "sampling_minutes": 5,
        "no_appointment": True,
        "preparation_text": "Retirez le flacon stérile au laboratoire. Recueillez les urines "
        "du matin après une toilette intime, et rapportez le flacon dans les 2 heures.",
    },
)
"""A small catalog with real LOINC codes: fasting, a morning window, home sampling and an
exam that needs no appointment, so that every rule of slot search shows in the demo."""


def create_demo_booking_setup(session: Session, organization_id: uuid.UUID) -> int:
    """The demo catalog and the demo sites' schedules (10-minute slots, 3 boxes of which 1
    kept for walk-ins), added only where missing: safe to run on every ``labvault demo``.
    Returns the number of exams added."""
    audit = AuditTrail(session, SystemPrincipal(DEMO_JOB))
    catalog = ExamCatalog(session, audit, organization_id)
    existing = {exam.code for exam in catalog.exams(include_inactive=True)}
    added = 0
    for exam in DEMO_EXAMS:
        if exam["code"] not in existing:
            catalog.create(exam)
            added += 1
    schedules = SiteScheduleService(session, audit, organization_id)
    for site in session.scalars(
        select(Site).where(Site.tenant_id == organization_id).order_by(Site.name)
    ):
        if schedules.schedule(site.id) is None:
            schedules.set_schedule(
                site.id,
                opening_hours=site.opening_hours,
                slot_minutes=DEMO_SLOT_MINUTES,
                sampling_boxes=DEMO_BOXES,
                walk_in_boxes=DEMO_WALK_IN_BOXES,
            )
    return added


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
