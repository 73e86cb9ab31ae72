"""The demo organization: two sites, one staff member per role, synthetic patients, a week
of appointments and demo accounts (a patient linked to its record, a receptionist, a
biologist, an organization admin), a small exam catalog, the sites' booking schedules, and
lab results received from a demo laboratory system through the real intake path."""

from __future__ import annotations

import base64
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
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.events import AuditTrail, audited_transaction
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.crypto.providers import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.models import Organization, Site
from labvault.organizations.services import add_site, create_organization
from labvault.patients.ins import InsOid
from labvault.patients.models import Patient
from labvault.patients.nir import synthetic_nir
from labvault.patients.scope import staff_scope
from labvault.patients.services import SUBJECT_TYPE, PatientRepository, SealedItem
from labvault.results.clients import LOCAL_PEER, ServiceClientRegistry, find_sender
from labvault.results.delivery import FileResultDelivery
from labvault.results.hl7 import decode_payload, parse_oru
from labvault.results.intake import StoredResultIntake
from labvault.results.mllp import IntakeStatus
from labvault.results.models import ResultReport
from labvault.results.notify import ResultNotifier
from labvault.results.review import ReviewService
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
        "linked to a demo patient record with an appointment tomorrow and released lab "
        "results (with earlier values, so trends show); log in at /compte/connexion, the "
        "second factor is a code sent to the demo mailbox; results at /compte/resultats "
        "(Vos résultats)",
    ),
    DemoAccount(
        "staff1.receptionist@example.org",
        "tilleul vert du jardin",
        AccountKind.STAFF,
        "receptionist: log in at /compte/connexion-professionnel; the first login enrols an "
        "authenticator app; then /patients/recherche finds the patients booked this week",
    ),
    DemoAccount(
        "staff3.biologist@example.org",
        "coquelicot rouge du pré",
        AccountKind.STAFF,
        "biologist: log in at /compte/connexion-professionnel; the first login enrols an "
        "authenticator app; /biologie/resultats lists the reports to validate and a "
        "sensitive one, validated, to give by phone; /laboratoire/rapprochement the result "
        "waiting for its patient",
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


# --- Lab results ---------------------------------------------------------------------------

DEMO_LIS_NAME = "SIL demo"
DEMO_LIS_APPLICATION = "SIL-DEMO"
DEMO_LIS_FACILITY = "LABO-DEMO"
DEMO_LIS_SITES = ("Site Centre", "Site Gare")
"""The demo laboratory system serves both sites; its orders are the first one's."""
DEMO_BIOLOGIST = "staff3.biologist@example.org"
DEMO_PRESCRIBER = "10101234567^Durand^Claire"
"""A synthetic RPPS-shaped prescriber (OBR-16)."""
DEMO_HIV_CODE = "56888-1"
DEMO_CONCLUSION = "Résultats de démonstration (données synthétiques)."


@dataclass(frozen=True, slots=True)
class DemoObservation:
    """One OBX: LOINC code, label, value as HL7 sends it, unit, range, abnormal flag."""

    code: str
    label: str
    value: str
    unit: str = ""
    reference_range: str = ""
    flag: str = ""
    value_type: str = "NM"


@dataclass(frozen=True, slots=True)
class DemoResult:
    """One ORU^R01 the demo laboratory system sends, and what the demo biologist does.

    ``patient`` indexes the demo's result patients (0 is the demo patient account's record);
    ``None`` is a person labvault does not know (the message waits in the matching queue).
    ``validate`` has the biologist validate it: an online report is then released, a
    sensitive one waits for its phone call."""

    patient: int | None
    exam: str
    days_ago: int
    observations: tuple[DemoObservation, ...]
    validate: bool = False
    pdf: bool = False


def _panel(
    glucose: str, hba1c: str, cholesterol: str, triglycerides: str
) -> tuple[DemoObservation, ...]:
    def flag(value: str, low: float, high: float) -> str:
        number = float(value)
        return "H" if number > high else "L" if number < low else "N"

    return (
        DemoObservation(
            "1558-6", "Glycémie à jeun", glucose, "mmol/L", "4.1-6.1", flag(glucose, 4.1, 6.1)
        ),
        DemoObservation(
            "4548-4", "Hémoglobine glyquée (HbA1c)", hba1c, "%", "4.0-6.0", flag(hba1c, 4, 6)
        ),
        DemoObservation(
            "2093-3",
            "Cholestérol total",
            cholesterol,
            "mmol/L",
            "0.0-5.2",
            flag(cholesterol, 0, 5.2),
        ),
        DemoObservation(
            "2571-8",
            "Triglycérides",
            triglycerides,
            "mmol/L",
            "0.5-1.7",
            flag(triglycerides, 0.5, 1.7),
        ),
    )


_METABOLIC = "BIO-META^Glycémie, HbA1c et bilan lipidique^L"
_BLOOD_COUNT = (
    DemoObservation("718-7", "Hémoglobine", "13.9", "g/dL", "12.0-16.0", "N"),
    DemoObservation("6690-2", "Leucocytes", "6.8", "10*9/L", "4.0-10.0", "N"),
    DemoObservation("777-3", "Plaquettes", "231", "10*9/L", "150-400", "N"),
)
DEMO_RESULTS: tuple[DemoResult, ...] = (
    DemoResult(0, _METABOLIC, 270, _panel("5.2", "5.6", "5.6", "1.9"), validate=True),
    DemoResult(0, _METABOLIC, 150, _panel("5.8", "5.9", "5.3", "1.6"), validate=True),
    DemoResult(0, _METABOLIC, 40, _panel("6.4", "6.2", "4.9", "1.4"), validate=True, pdf=True),
    DemoResult(
        0,
        "BIO-NFSG^NFS et glycémie à jeun^L",
        3,
        (
            DemoObservation("1558-6", "Glycémie à jeun", "6.0", "mmol/L", "4.1-6.1", "N"),
            *_BLOOD_COUNT,
        ),
    ),
    DemoResult(
        1,
        "3016-3^TSH (thyréostimuline)^LN",
        2,
        (DemoObservation("3016-3", "TSH", "2.1", "mUI/L", "0.4-4.0", "N"),),
    ),
    DemoResult(
        2,
        "58410-2^Numération formule sanguine (NFS)^LN",
        1,
        (
            DemoObservation("718-7", "Hémoglobine", "11.2", "g/dL", "12.0-16.0", "L"),
            *_BLOOD_COUNT[1:],
        ),
    ),
    DemoResult(
        3,
        f"{DEMO_HIV_CODE}^Sérologie VIH 1+2 (Ac et Ag p24)^LN",
        2,
        (
            DemoObservation(
                DEMO_HIV_CODE,
                "VIH 1+2 Ac et Ag p24",
                "NEG^Négatif^L",
                value_type="CWE",
            ),
        ),
        validate=True,
    ),
    DemoResult(
        None,
        "3016-3^TSH (thyréostimuline)^LN",
        1,
        (DemoObservation("3016-3", "TSH", "5.3", "mUI/L", "0.4-4.0", "H"),),
    ),
)
"""Three released metabolic panels for the demo patient (values that drift, so trends
show) and a fourth to validate; two reports of other patients to validate; an HIV serology
(a default sensitive code) validated and waiting for its phone call; a result for someone
unknown, queued. Synthetic values only."""


@dataclass(frozen=True, slots=True)
class DemoResultCounts:
    released: int = 0
    to_validate: int = 0
    awaiting_call: int = 0
    queued: int = 0


@dataclass(frozen=True, slots=True, repr=False)
class _Person:
    """The identity traits an ORU^R01 carries in PID (never logged: repr hides them)."""

    birth_name: str
    first_names: str
    birth_date: dt.date
    sex: str
    nir: str | None

    def __repr__(self) -> str:
        return "_Person(<redacted>)"


def _hl7(value: str) -> str:
    """HL7 v2 escaping of a free value inside a component (delimiters |^~\\&)."""
    return (
        value.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def _hl7_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def demo_pdf(title: str) -> bytes:
    """A small valid one-page PDF naming no patient and no value (the report's attachment)."""
    text = title.encode("ascii", "replace").replace(b"(", b"[").replace(b")", b"]")
    stream = b"BT /F1 14 Tf 72 760 Td (" + text + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def demo_oru(number: int, person: _Person, result: DemoResult, now: dt.datetime) -> bytes:
    """The ORU^R01 of ``result`` for ``person``: INS (test OID) in PID-3 when it has a NIR."""
    identifiers = [f"DEMO{number:06d}^^^LABO-DEMO&1.2.250.1.999.1&ISO^PI"]
    if person.nir is not None:
        identifiers.insert(0, f"{person.nir}^^^ASIP-SANTE-INS-NIR&{InsOid.TEST.value}&ISO^INS")
    first = person.first_names.split()[0]
    collected = dt.datetime.combine(
        now.astimezone(PARIS).date() - dt.timedelta(days=result.days_ago),
        dt.time(7, 45),
        PARIS,
    )
    reported = collected + dt.timedelta(hours=3)
    order = f"DEMO-{number:04d}"
    segments = [
        f"MSH|^~\\&|{DEMO_LIS_APPLICATION}|{DEMO_LIS_FACILITY}|LABVAULT|LV|{_hl7_time(now)}||"
        f"ORU^R01^ORU_R01|{order}|P|2.5|||AL|NE||UNICODE UTF-8",
        f"PID|1||{'~'.join(identifiers)}||"
        f"{_hl7(person.birth_name)}^{_hl7(first)}^{_hl7(person.first_names)}^^^^L||"
        f"{person.birth_date:%Y%m%d}|{person.sex}",
        f"ORC|RE|CMD-{order}^SIL|{order}^LABO||CM",
        f"OBR|1|CMD-{order}^SIL|{order}^LABO|{result.exam}|||{_hl7_time(collected)}|||||||||"
        f"{DEMO_PRESCRIBER}||||||{_hl7_time(reported)}|||F",
    ]
    for position, item in enumerate(result.observations, start=1):
        segments.append(
            f"OBX|{position}|{item.value_type}|{item.code}^{_hl7(item.label)}^LN||{item.value}|"
            f"{item.unit}|{item.reference_range}|{item.flag}|||F"
        )
    if result.pdf:
        data = base64.b64encode(demo_pdf("Compte rendu de demonstration")).decode()
        segments.append(
            f"OBX|{len(result.observations) + 1}|ED|PDF^Compte rendu^L||"
            f"^application^pdf^Base64^{data}||||||F"
        )
    return ("\r".join(segments) + "\r").encode()


def _result_patients(session: Session, keyring: TenantKeyring, count: int) -> list[_Person]:
    """The demo patient account's record first, then the next seeded patients (as
    create_demo_care orders them), their traits opened as the demo job."""
    tenant_id = keyring.tenant_id
    linked = session.scalar(
        select(Account.patient_id).where(
            Account.tenant_id == tenant_id,
            Account.kind == AccountKind.PATIENT.value,
            Account.patient_id.is_not(None),
        )
    )
    # A list: records no list may show (honey records) are left out before decrypting.
    ordered = keyring.visible(
        SUBJECT_TYPE,
        list(
            session.scalars(
                select(Patient.id)
                .where(Patient.tenant_id == tenant_id, Patient.erased_at.is_(None))
                .order_by(Patient.created_at, Patient.id)
                .limit(count + 1)
            )
        ),
    )
    chosen = ([linked] if linked is not None else []) + [p for p in ordered if p != linked]
    chosen = chosen[:count]
    records = {
        record.id: record
        for record in PatientRepository(session, keyring).get_many(chosen, purpose=DEMO_PURPOSE)
    }
    people = []
    for patient_id in chosen:
        record = records[patient_id]
        if not (record.birth_name and record.first_names and record.birth_date and record.sex):
            raise RuntimeError("a demo patient lacks identity traits (a bug in the demo)")
        people.append(
            _Person(
                record.birth_name,
                record.first_names,
                record.birth_date,
                record.sex.value,
                record.ins_number if record.ins_oid is not InsOid.NIA else None,
            )
        )
    return people


def _stranger() -> _Person:
    """Someone labvault does not know: synthetic traits and a NIR with a valid key (test
    OID). No record has both, so the message waits in the matching queue, never attached."""
    birth_date = dt.date(1984, 3, 14)
    nir = synthetic_nir(random.Random(8080), sex=2, birth_date=birth_date)  # noqa: S311
    return _Person("Inconnue-Demo", "Camille", birth_date, "F", nir.compact)


def create_demo_results(runtime: Runtime, organization_id: uuid.UUID) -> DemoResultCounts:
    """Results of the demo, received from a registered demo laboratory system through the
    real intake (``StoredResultIntake``: matching, sealing, the queue, audit), then
    validated by the demo biologist through ``ReviewService`` (release, email, prescriber
    delivery, retention hold), each in its own transaction like the real paths.

    Seeding is a CLI job: the biologist's step-up is taken as done (nobody is there to
    give it); everything else is what the pages and the listener do. Nothing is added when
    the demo laboratory system is already registered, or without the demo biologist's
    account or enough patients (then the counts are zero)."""
    needed = 1 + max(r.patient for r in DEMO_RESULTS if r.patient is not None)
    sessions = runtime.tenant_sessions(organization_id)
    with transaction(sessions) as session:
        if find_sender(session, organization_id, DEMO_LIS_APPLICATION, DEMO_LIS_FACILITY):
            return DemoResultCounts()
        biologist = session.scalars(
            select(Account).where(
                Account.tenant_id == organization_id,
                Account.kind == AccountKind.STAFF.value,
                Account.role == StaffRole.BIOLOGIST.value,
                Account.staff_id.is_not(None),
            )
        ).first()
        keyring = TenantKeyring(
            session, runtime.key_provider, organization_id, SystemPrincipal(DEMO_JOB)
        )
        people = _result_patients(session, keyring, needed)
        if biologist is None or len(people) < needed:
            return DemoResultCounts()
        biologist_account, biologist_staff = biologist.id, biologist.staff_id
        ServiceClientRegistry(session, organization_id, keyring.audit).add(
            DEMO_LIS_NAME,
            kind="lis",
            hl7_application=DEMO_LIS_APPLICATION,
            hl7_facility=DEMO_LIS_FACILITY,
            sites=DEMO_LIS_SITES,
        )
    assert biologist_staff is not None
    intake = StoredResultIntake(sessions, runtime.key_provider, organization_id)
    now = dt.datetime.now(dt.UTC)
    stranger = _stranger()
    to_validate: list[uuid.UUID] = []
    seen: set[uuid.UUID] = set()
    for number, result in enumerate(DEMO_RESULTS, start=1):
        person = people[result.patient] if result.patient is not None else stranger
        outcome = intake.receive(
            parse_oru(decode_payload(demo_oru(number, person, result, now))), peer=LOCAL_PEER
        )
        if outcome.status is not IntakeStatus.ACCEPTED:
            raise RuntimeError("a demo result was refused (a bug in the demo)")
        with sessions() as session:
            new = (
                set(
                    session.scalars(
                        select(ResultReport.id).where(ResultReport.tenant_id == organization_id)
                    )
                )
                - seen
            )
        seen |= new
        if result.validate:
            to_validate.extend(sorted(new))
    with audited_transaction(sessions) as session:
        released, awaiting = _validate(
            session, runtime, organization_id, biologist_account, biologist_staff, to_validate
        )
    counters = intake.counters
    return DemoResultCounts(
        released=released,
        to_validate=counters.attached - released - awaiting,
        awaiting_call=awaiting,
        queued=counters.queued,
    )


def _validate(
    session: Session,
    runtime: Runtime,
    organization_id: uuid.UUID,
    account_id: uuid.UUID,
    staff_id: uuid.UUID,
    report_ids: list[uuid.UUID],
) -> tuple[int, int]:
    """The demo biologist validates ``report_ids`` in this order (oldest first); returns
    (released, waiting for the phone call)."""
    principal = Principal(PrincipalKind.STAFF, str(account_id), role=StaffRole.BIOLOGIST.value)
    keyring = TenantKeyring(session, runtime.key_provider, organization_id, principal)
    service = ReviewService(
        session,
        keyring,
        staff_scope(session, principal, organization_id, staff_id),
        provider=runtime.key_provider,
        staff_id=staff_id,
        require_step_up=lambda: None,  # a CLI seeding job: see create_demo_results
        delivery=FileResultDelivery(runtime.settings.resolved_result_drop_dir),
        notifier=ResultNotifier(
            session,
            runtime.key_provider,
            organization_id,
            mailer=runtime.mailer,
            organization=DEMO_ORGANIZATION,
            public_url=runtime.settings.public_url,
        ),
        organization=DEMO_ORGANIZATION,
    )
    released = awaiting = 0
    for report_id in report_ids:
        report = session.get(ResultReport, report_id)
        assert report is not None
        outcome = service.validate(report.id, report.version, DEMO_CONCLUSION)
        if outcome.released:
            released += 1
        else:
            awaiting += 1
    return released, awaiting
