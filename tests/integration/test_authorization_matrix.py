"""The authorization matrix, generated from the application's routes and the route table.

- Every route FastAPI serves has an entry in ``labvault.core.access.routes_table.ROUTES``
  and every entry a route: a new route without a decision fails here.
- Every ``policy`` route x every role (the five staff roles and a patient account) x records
  that are the caller's own / in care at its site today / in care later in the window /
  outside the window / at another site only / cancelled / only a held slot / of another
  tenant / absent: 2xx exactly when the compiled default policy grants the interaction and
  the record is in the grant's record scope (the relationship rule is restated below from
  the world's appointments, not copied from the code under test), 404 otherwise.
  Routes whose object is an appointment (``path:appointment_id``) or a document
  (``path:document_id``) are asked about an appointment (and its document) of each of those
  records: one made once for the routes that only read, a fresh one per role and record for
  the routes that change it (cancel, check-in, upload...), placed so that it is actionable
  (today for a check-in, past for a no-show...) without widening any role's scope, and
  cancelled once asked; what a booking creates is cancelled too. Every such route must
  have at least one allowed (role, record): a route every caller gets 404 from fails.
- Every ``roles`` route: every role outside the entry, and a patient account, get the
  entry's refusal; the allowed roles get something else.

One world per backend (module-scoped): two tenants, staff of every role at the main site of
tenant A, patients placed around the relationship window (``tests/access_world.py``,
placed around the real clock: the routes measure the window from "now"; the record
``today`` kept within today in Paris, late in the evening too), schedules on tenant A's
sites and one exam (so that a hold or a move can land).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select, update

import access_world
import results_world
from access_world import PLACEMENTS, World, build_world
from helpers import CHEAP_HASHER, app_url, owner_url
from labvault.accounts.models import Account, AccountKind, AccountSession
from labvault.accounts.services import AccountService
from labvault.app import create_app
from labvault.appointments.models import (
    Appointment,
    AppointmentKind,
    AppointmentStatus,
    PatientDocument,
)
from labvault.catalog.services import ExamCatalog
from labvault.core.access.policies import (
    PATIENT_SUBJECT,
    STAFF_SUBJECTS,
    CompiledPolicy,
    Interaction,
    RecordScope,
    compile_policy,
    default_policy,
)
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.access.routes_table import (
    BREAK_GLASS_ROLES,
    ROUTES,
    Requirement,
    RouteAccess,
    route_keys,
)
from labvault.core.audit.events import AuditTrail
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.migrate import upgrade
from labvault.core.ratelimit import RateDecision, RateRule
from labvault.core.runtime import Runtime
from labvault.organizations.models import Site
from labvault.patients.nir import Nir, synthetic_nir
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository, SealedItem
from labvault.patients.synthetic import synthetic_patients
from labvault.schedules.services import SiteScheduleService
from labvault.security.breakglass import BREAK_GLASS_ROLES as SERVICE_BREAK_GLASS_ROLES

ORIGIN = "https://testserver"
SESSION_COOKIE = "__Host-labvault-session"
PASSWORD = "une phrase de passe assez longue"
PHRASE = "le merle moqueur de Quimper"
SYSTEM = SystemPrincipal("test:authorization-matrix")
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
ORGANIZATION = "Labo Alpha"

ROLES: tuple[str, ...] = (*sorted(STAFF_SUBJECTS), PATIENT_SUBJECT)
"""Every caller the matrix asks for: each staff role, and a patient account."""

OWN = "no_appointment"
"""The world's record the patient account is linked to (no appointment: no staff reaches it)."""

RECORDS: tuple[str, ...] = (
    "own",
    "today",
    "in_20_days",
    "45_days_ago",
    "cancelled",
    "held",
    "other_site",
    "other_tenant",
    "absent",
)
"""The kinds of records each object route is asked about."""

MATRIX_PLACEMENTS: dict[str, tuple[str, dt.timedelta, AppointmentStatus] | None] = {
    **PLACEMENTS,
    "held": ("main", dt.timedelta(days=1), AppointmentStatus.HELD),
}
"""The world's placements, and one of this module's: a record whose only appointment at the
main site is a slot held (not yet confirmed), which puts nobody in the site's care."""

FORCED_STATUS = {"cancelled": AppointmentStatus.CANCELLED, "held": AppointmentStatus.HELD}
"""Appointments made for these records keep their record's status, whatever a route needs."""


class AllowEverything:
    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return RateDecision(allowed=True, retry_after=0.0, remaining=rule.amount)

    def test(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return self.hit(rule, *identifiers)

    def hit_or_deny(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return self.hit(rule, *identifiers)

    def reset(self, rule: RateRule, *identifiers: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Caller:
    role: str
    account_id: uuid.UUID
    token: str
    csrf: str

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "Cookie": f"{SESSION_COOKIE}={self.token}",
            "X-CSRF-Token": self.csrf,
            "Origin": ORIGIN,
            **(extra or {}),
        }


@dataclass
class Matrix:
    runtime: Runtime
    world: World
    client: TestClient
    now: dt.datetime
    callers: dict[str, Caller]
    record_ids: dict[str, uuid.UUID]
    own_ids: frozenset[uuid.UUID]
    nirs: dict[uuid.UUID, str] = field(default_factory=dict)
    grant_id: uuid.UUID | None = None
    report_id: uuid.UUID | None = None
    """A report to validate of the record ``today`` (the biologist's review routes)."""
    alert_id: uuid.UUID | None = None
    starts: dict[str, dt.datetime] = field(default_factory=dict)
    """When each placed record's appointment starts (``today`` kept within today, Paris)."""
    foreign_site: uuid.UUID | None = None
    appointments: dict[str, uuid.UUID] = field(default_factory=dict)
    """An appointment of each record, for the routes that only read it."""
    documents: dict[str, uuid.UUID] = field(default_factory=dict)
    """A document of each record (on the appointment above)."""
    exam_id: uuid.UUID | None = None
    """A bookable exam of tenant A (the sites of tenant A have schedules: a move can land)."""
    moves: int = 0
    """Slots already used by reschedules (each lands on a slot of its own)."""

    def call(self, role: str, method: str, url: str, **kwargs: Any) -> Response:
        headers = self.callers[role].headers(kwargs.pop("headers", None))
        if "data" in kwargs:  # a page's form carries the session's CSRF token
            kwargs["data"] = {**kwargs["data"], "csrf_token": self.callers[role].csrf}
        self.client.cookies.clear()
        return self.client.request(method, url, headers=headers, **kwargs)


# --------------------------------------------------------------------------- the world


def _database(backend: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'var' / 'db' / 'labvault.sqlite3'}"
        runtime = Runtime(Settings(data_dir=tmp / "var", database_url=url))
        upgrade(runtime.engine)
        runtime.close()
        return url
    server = request.getfixturevalue("postgres")
    return app_url(server.new_database())


def _service(runtime: Runtime, session: Any, tenant_id: uuid.UUID) -> AccountService:
    return AccountService(
        session,
        tenant_id=tenant_id,
        provider=runtime.key_provider,
        mailer=runtime.mailer,
        limiter=AllowEverything(),
        settings=runtime.settings,
        hasher=CHEAP_HASHER,
        clock=utcnow,
    )


def _sign_in(
    runtime: Runtime,
    world: World,
    email: str,
    *,
    kind: AccountKind,
    role: str | None = None,
    staff_id: uuid.UUID | None = None,
    patient_id: uuid.UUID | None = None,
) -> Caller:
    """An active account with a fully signed-in session (second factor and a fresh step-up
    done): how one logs in is tested elsewhere, the matrix needs the session."""
    with transaction(world.sessions) as session:
        service = _service(runtime, session, world.tenant)
        account = service.provision(
            email,
            Secret(PASSWORD),
            kind=kind,
            security_phrase=PHRASE,
            by=SYSTEM,
            role=role,
            staff_id=staff_id,
        )
        if patient_id is not None:
            session.execute(
                update(Account).where(Account.id == account.id).values(patient_id=patient_id)
            )
        session.flush()
        token, record = service.sessions.create(
            tenant_id=world.tenant,
            account_id=account.id,
            policy=service._policy(account),
            client_hash=None,
            second_factor="totp",
        )
        session.execute(
            update(AccountSession).where(AccountSession.id == record.id).values(step_up_at=utcnow())
        )
        csrf = service.sessions.csrf_token(token.reveal())
        return Caller(role or PATIENT_SUBJECT, account.id, token.reveal(), csrf)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Matrix]:
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"matrix-{backend}")
    url = _database(backend, tmp, request)
    settings = Settings(
        data_dir=tmp / "var",
        database_url=url,
        admin_database_url=owner_url(url),
        organization=ORGANIZATION,
    )
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    now = utcnow()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(access_world, "NOW", now)  # the routes measure the window from now
        world = build_world(runtime)
    held, held_person = _add_held(runtime, world, now)
    starts = _keep_today_today(world, now)
    callers = {
        role: _sign_in(
            runtime,
            world,
            f"{role.replace('_', '-')}@alpha.example.org",
            kind=AccountKind.STAFF,
            role=role,
            staff_id=world.staff[role],
        )
        for role in sorted(STAFF_SUBJECTS)
    }
    callers[PATIENT_SUBJECT] = _sign_in(
        runtime,
        world,
        "patient.compte@example.org",
        kind=AccountKind.PATIENT,
        patient_id=world.patients[OWN],
    )
    record_ids = {name: world.patients[name] for name in RECORDS if name in world.patients}
    record_ids |= {
        "own": world.patients[OWN],
        "other_tenant": world.foreign_patient,
        "absent": uuid.uuid4(),
        "held": held,
    }
    people = list(synthetic_patients(len(PLACEMENTS) + 1, seed=505))  # as build_world
    nirs = {world.patients[name]: _compact(world.inputs[name].nir) for name in world.patients}
    nirs[world.foreign_patient] = _compact(people[-1].nir)
    nirs[held] = _compact(held_person.nir)
    nirs[record_ids["absent"]] = synthetic_nir(
        random.Random(7), sex=1, birth_date=dt.date(1961, 3, 9)
    ).compact
    with TestClient(create_app(settings, runtime), base_url=ORIGIN) as client:
        matrix = Matrix(
            runtime=runtime,
            world=world,
            client=client,
            now=now,
            callers=callers,
            record_ids=record_ids,
            own_ids=frozenset({world.patients[OWN]}),
            nirs=nirs,
            starts=starts,
            foreign_site=_foreign_site(runtime, world),
            exam_id=_bookable(world),
        )
        for record in RECORDS:
            site, starts_at = _placed(matrix, record)
            matrix.appointments[record], matrix.documents[record] = new_object(
                matrix, record, site, starts_at, Need(document=True)
            )
        # A real grant and its alert, for the security officer's routes: on a record no
        # other check of this module asks about (its relationship is out of the window).
        opened = matrix.call(
            "biologist",
            "POST",
            "/api/v1/break-glass",
            json={
                "nir": nirs[world.patients["in_45_days"]],
                "reason": "emergency",
                "justification": "Valeur critique signalée par le médecin traitant",
            },
        )
        assert opened.status_code == 201, opened.text
        matrix.grant_id = uuid.UUID(opened.json()["grant_id"])
        listed = matrix.call("security_officer", "GET", "/api/v1/security/alerts")
        assert listed.status_code == 200, listed.text
        matrix.alert_id = uuid.UUID(listed.json()[0]["id"])
        # A report to validate for the biologist's review routes, of a record in the main
        # site's care; its order names no site, so it widens nobody's scope.
        matrix.report_id = results_world.add_report(
            runtime,
            world.sessions,
            world.tenant,
            world.patients["today"],
            [results_world.hemoglobin()],
        )
        yield matrix
    runtime.close()


# --------------------------------------------------------------------------- the oracle


def compiled_for(role: str) -> CompiledPolicy:
    if role == PATIENT_SUBJECT:
        principal = Principal(PrincipalKind.PATIENT, "matrix")
    else:
        principal = Principal(PrincipalKind.STAFF, "matrix", role=role)
    return compile_policy(default_policy(), principal)


def in_record_scope(matrix: Matrix, role: str, records: RecordScope, record: str) -> bool:
    """The relationship rule, restated: an appointment (not cancelled, not a hold) at one of
    the caller's sites (every staff member of the world works at the main site) within the
    window, or today (Paris) for ``site-today``; ``own`` for the patient's own record."""
    if records is RecordScope.OWN:
        return role == PATIENT_SUBJECT and matrix.record_ids[record] in matrix.own_ids
    if role == PATIENT_SUBJECT or records is RecordScope.ALL:
        return False
    placement = MATRIX_PLACEMENTS.get(record)
    if placement is None:  # own (no appointment), other tenant, absent
        return False
    site, _, status = placement
    return _reaches(matrix, records, site, matrix.starts[record], status)


def _reaches(
    matrix: Matrix,
    records: RecordScope,
    site: str,
    starts_at: dt.datetime,
    status: AppointmentStatus,
) -> bool:
    """Whether an appointment so placed puts its patient in a staff grant's scope (neither
    a cancelled appointment nor a mere hold does)."""
    if site != "main" or status in (AppointmentStatus.CANCELLED, AppointmentStatus.HELD):
        return False
    if records is RecordScope.SITE_TODAY:
        return starts_at.astimezone(PARIS).date() == utcnow().astimezone(PARIS).date()
    settings = matrix.runtime.settings
    before = dt.timedelta(days=settings.relationship_days_before)
    after = dt.timedelta(days=settings.relationship_days_after)
    now = utcnow()
    return now - before <= starts_at < now + after


NOT_FOR_SITE_TODAY = frozenset(
    {
        "POST /api/v1/appointments/{appointment_id}/cancel",
        "POST /api/v1/appointments/{appointment_id}/reschedule",
    }
)
"""Booking API changes a ``site-today`` grant (the sampler's appointment:update) does not
make: BookingService refuses them (the desk's actions cover a sampler's work), whatever
the record."""


def expected_allowed(
    matrix: Matrix, entry: RouteAccess, role: str, record: str, key: str = ""
) -> bool:
    kind = "patient" if role == PATIENT_SUBJECT else "staff"
    if kind not in entry.account_kinds or (entry.roles and role not in entry.roles):
        return False
    assert entry.resource is not None
    assert entry.interaction is not None
    compiled = compiled_for(role)
    grant = compiled.grant_for(entry.resource, entry.interaction)
    if grant is None:
        return False
    if key in NOT_FOR_SITE_TODAY and grant.records is RecordScope.SITE_TODAY:
        return False
    for name in entry.needs_fields:
        # "<resource>.<field>": a field the caller's read of that other resource reveals.
        resource, _, field_name = name.rpartition(".")
        if resource:
            revealed = compiled.fields(resource, Interaction.READ)
        else:
            revealed = compiled.fields(entry.resource, entry.interaction)
        if field_name not in revealed:
            return False
    return in_record_scope(matrix, role, grant.records, record)


def expected_granted(entry: RouteAccess, role: str) -> bool:
    """Whether the caller may use the interaction at all (a search, a search form)."""
    kind = "patient" if role == PATIENT_SUBJECT else "staff"
    if kind not in entry.account_kinds or (entry.roles and role not in entry.roles):
        return False
    assert entry.resource is not None
    assert entry.interaction is not None
    return compiled_for(role).allows(entry.resource, entry.interaction)


# --------------------------------------------------------------------------- objects


def _within_today(moment: dt.datetime, now: dt.datetime) -> dt.datetime:
    """``moment`` moved into now's Paris day if it fell outside it (late in the evening,
    "now + 2 h" is tomorrow): the record ``today`` must be today whatever the hour."""
    day = now.astimezone(PARIS).date()
    start = dt.datetime.combine(day, dt.time(0, 1), PARIS)
    end = dt.datetime.combine(day, dt.time(23, 59), PARIS)
    return min(max(moment, start), end).astimezone(dt.UTC)


def _add_held(runtime: Runtime, world: World, now: dt.datetime) -> tuple[uuid.UUID, PatientInput]:
    """A patient of tenant A whose only appointment is a live hold at the main site."""
    person = next(iter(synthetic_patients(1, seed=606)))
    placement = MATRIX_PLACEMENTS["held"]
    assert placement is not None
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, world.tenant, SYSTEM)
        patient_id = PatientRepository(session, keyring).register_many([person]).created[0]
        session.add(
            Appointment(
                tenant_id=world.tenant,
                patient_id=patient_id,
                site_id=world.sites[placement[0]],
                starts_at=now + placement[1],
                status=placement[2].value,
                hold_expires_at=now + dt.timedelta(days=1),
            )
        )
    return patient_id, person


def _keep_today_today(world: World, now: dt.datetime) -> dict[str, dt.datetime]:
    """Each placed record's start, the record ``today``'s moved into today if needed."""
    starts = {
        name: now + placement[1]
        for name, placement in MATRIX_PLACEMENTS.items()
        if placement is not None
    }
    today = _within_today(starts["today"], now)
    if today != starts["today"]:
        with transaction(world.sessions) as session:
            session.execute(
                update(Appointment)
                .where(Appointment.patient_id == world.patients["today"])
                .values(starts_at=today)
            )
        starts["today"] = today
    return starts


def _foreign_site(runtime: Runtime, world: World) -> uuid.UUID:
    with runtime.tenant_sessions(world.other_tenant)() as session:
        found = session.scalar(select(Site.id).where(Site.tenant_id == world.other_tenant))
    assert found is not None
    return found


OPEN_EVERY_DAY = {
    day: [["07:00", "12:00"], ["14:00", "18:00"]]
    for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
}


def _bookable(world: World) -> uuid.UUID:
    """Schedules on tenant A's sites and one exam: what a reschedule needs to land."""
    with transaction(world.sessions) as session:
        audit = AuditTrail(session, SYSTEM)
        schedules = SiteScheduleService(session, audit, world.tenant)
        for site in ("main", "annex"):
            schedules.set_schedule(
                world.sites[site],
                opening_hours=OPEN_EVERY_DAY,
                slot_minutes=15,
                sampling_boxes=4,
                walk_in_boxes=1,
            )
        catalog = ExamCatalog(session, audit, world.tenant)
        exam = catalog.create(
            {
                "code": "NFS",
                "label": "Numération formule sanguine",
                "sampling_minutes": 5,
                "home_sampling": True,
            }
        )
        return exam.id


def _next_move(matrix: Matrix) -> str:
    """A free slot three days ahead (Paris), a new one each time."""
    day = (utcnow() + dt.timedelta(days=3)).astimezone(PARIS).date()
    minutes = 15 * (matrix.moves % 16)
    matrix.moves += 1
    at = dt.datetime.combine(day, dt.time(8, 0), PARIS) + dt.timedelta(minutes=minutes)
    return at.astimezone(dt.UTC).isoformat()


@dataclass(frozen=True)
class Need:
    """What an appointment must be for a route to act on it when the caller may."""

    when: str = "placed"
    """``placed`` (as the record's own), ``future``, ``today`` or ``past``."""
    status: AppointmentStatus = AppointmentStatus.BOOKED
    kind: AppointmentKind = AppointmentKind.SITE
    document: bool = False
    """A document on it too: the route's object is the document."""
    exams: bool = False
    """Its exams sealed in it (a reschedule re-checks them)."""


FRESH: dict[str, Need] = {
    "POST /api/v1/appointments/{appointment_id}/cancel": Need("future"),
    "POST /api/v1/appointments/{appointment_id}/reschedule": Need("future", exams=True),
    "PUT /api/v1/appointments/{appointment_id}/preregistration": Need("future"),
    "POST /api/v1/appointments/{appointment_id}/documents": Need("future"),
    "DELETE /api/v1/documents/{document_id}": Need("future", document=True),
    "POST /api/v1/desk/appointments/{appointment_id}/check-in": Need("today"),
    "POST /api/v1/desk/appointments/{appointment_id}/identity-check": Need("today"),
    "POST /api/v1/desk/appointments/{appointment_id}/no-show": Need("past"),
    "POST /api/v1/desk/appointments/{appointment_id}/done": Need(
        status=AppointmentStatus.CHECKED_IN
    ),
    "POST /api/v1/desk/appointments/{appointment_id}/sampler": Need(
        "future", kind=AppointmentKind.HOME
    ),
}
"""Routes that change their object, or need it in a state the shared one is not in: a fresh
one per role and record, ready for the change (a check-in or an identity check needs a
booked appointment today, a no-show one whose time has passed...)."""


def _placed(matrix: Matrix, record: str) -> tuple[str, dt.datetime]:
    """Where and when the record's appointment is: the world's placement; the patient
    account's own record (no appointment in the world) at the annex, where no staff works."""
    if record in matrix.starts:
        placement = MATRIX_PLACEMENTS[record]
        assert placement is not None
        return placement[0], matrix.starts[record]
    return "annex", utcnow() + dt.timedelta(days=10)


def _candidate(matrix: Matrix, record: str, when: str) -> tuple[str, dt.datetime]:
    site, placed = _placed(matrix, record)
    now = utcnow()
    if when == "today":
        return site, _within_today(now + dt.timedelta(hours=1), now)
    if when == "past" and placed > now:
        if record == "today":
            return site, _within_today(now - dt.timedelta(hours=1), now)
        return site, now - dt.timedelta(days=1)
    return site, placed


RELATIONSHIP_SCOPES = frozenset({RecordScope.SITE_RELATIONSHIP, RecordScope.SITE_TODAY})


def _placement_for(
    matrix: Matrix, key: str, entry: RouteAccess, role: str, record: str
) -> tuple[str, dt.datetime]:
    """The route's need, unless meeting it would widen the role's scope (a sampler's
    "today" check-in on the record ``in_20_days``): then the record's own placement."""
    site, starts_at = _candidate(matrix, record, FRESH[key].when)
    if role == PATIENT_SUBJECT or entry.resource is None or entry.interaction is None:
        return site, starts_at
    grant = compiled_for(role).grant_for(entry.resource, entry.interaction)
    if grant is None or grant.records not in RELATIONSHIP_SCOPES:
        return site, starts_at
    status = FORCED_STATUS.get(record, FRESH[key].status)
    if _reaches(matrix, grant.records, site, starts_at, status) and not in_record_scope(
        matrix, role, grant.records, record
    ):
        return _placed(matrix, record)
    return site, starts_at


def _pdf() -> bytes:
    """A minimal one-page PDF the upload's sniffing accepts."""
    stream = b"BT /F1 12 Tf 72 720 Td (Ordonnance) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def new_object(
    matrix: Matrix, record: str, site: str, starts_at: dt.datetime, need: Need
) -> tuple[uuid.UUID, uuid.UUID]:
    """An appointment of ``record``'s patient (and a sealed document on it): in tenant B for
    ``other_tenant``, random ids nobody holds for ``absent``."""
    if record == "absent":
        return uuid.uuid4(), uuid.uuid4()
    world = matrix.world
    if record == "other_tenant":
        tenant, sessions = world.other_tenant, matrix.runtime.tenant_sessions(world.other_tenant)
        site_id = matrix.foreign_site
    else:
        tenant, sessions, site_id = world.tenant, world.sessions, world.sites[site]
    assert site_id is not None
    patient_id = matrix.record_ids[record]
    status = FORCED_STATUS.get(record, need.status)
    appointment_id, document_id = uuid.uuid4(), uuid.uuid4()
    with transaction(sessions) as session:
        session.add(
            Appointment(
                id=appointment_id,
                tenant_id=tenant,
                patient_id=patient_id,
                site_id=site_id,
                starts_at=starts_at,
                ends_at=starts_at + dt.timedelta(minutes=15),
                status=status.value,
                kind=need.kind.value,
            )
        )
        session.flush()
        keyring = TenantKeyring(session, matrix.runtime.key_provider, tenant, SYSTEM)
        if need.exams and record != "other_tenant":
            exams = json.dumps({"exam_ids": [str(matrix.exam_id)]}).encode()
            sealed_exams = PatientRepository(session, keyring).seal_for(
                patient_id,
                "appointment",
                Interaction.CREATE,
                SealedItem(patient_id, "appointments", appointment_id, {"exams": exams}),
                purpose="test:authorization-matrix",
            )
            assert sealed_exams is not None
            session.execute(
                update(Appointment)
                .where(Appointment.id == appointment_id)
                .values(exams=sealed_exams["exams"])
            )
        if need.document:
            content = _pdf()
            sealed = PatientRepository(session, keyring).seal_for(
                patient_id,
                "prescription",
                Interaction.CREATE,
                SealedItem(patient_id, "patient_documents", document_id, {"content": content}),
                purpose="test:authorization-matrix",
            )
            assert sealed is not None
            assert sealed["content"] is not None
            session.add(
                PatientDocument(
                    id=document_id,
                    tenant_id=tenant,
                    patient_id=patient_id,
                    appointment_id=appointment_id,
                    kind="prescription",
                    media_type="application/pdf",
                    size_bytes=len(content),
                    content=sealed["content"],
                    consent_at=utcnow(),
                    created_at=utcnow(),
                )
            )
    return appointment_id, document_id


def retire(matrix: Matrix, record: str, appointment_id: uuid.UUID) -> None:
    """A fresh appointment, once asked about, is cancelled: a cancelled appointment puts
    nobody in anybody's scope, so the next cases see the world as placed (a check-in today
    on ``in_20_days`` would otherwise make that record a sampler's for the rest of the run)."""
    if record in ("absent", "other_tenant"):
        return
    with transaction(matrix.world.sessions) as session:
        session.execute(
            update(Appointment)
            .where(Appointment.id == appointment_id)
            .values(status=AppointmentStatus.CANCELLED.value)
        )


def object_id(
    matrix: Matrix, key: str, entry: RouteAccess, role: str, record: str
) -> tuple[uuid.UUID, uuid.UUID | None]:
    """What the route is asked about for ``record`` (the patient, or an appointment or a
    document of the patient), and the fresh appointment made for it if the route changes
    its object (to retire once asked)."""
    param = entry.object_param
    if param not in ("appointment_id", "document_id"):
        return matrix.record_ids[record], None
    fresh = None
    if key in FRESH:
        site, starts_at = _placement_for(matrix, key, entry, role, record)
        appointment, document = new_object(matrix, record, site, starts_at, FRESH[key])
        fresh = appointment
    else:
        appointment, document = matrix.appointments[record], matrix.documents[record]
    return (appointment if param == "appointment_id" else document), fresh


# --------------------------------------------------------------------------- requests

RequestBuilder = Callable[[Matrix, uuid.UUID], tuple[str, str, dict[str, Any]]]


def _path(key: str, entry: RouteAccess, record_id: uuid.UUID) -> tuple[str, str]:
    method, _, template = key.partition(" ")
    assert entry.object_param is not None
    return method, template.replace("{" + entry.object_param + "}", str(record_id))


OBJECT_REQUESTS: dict[str, RequestBuilder] = {
    "PATCH /api/v1/patients/{patient_id}/contact": lambda m, record_id: (
        "PATCH",
        f"/api/v1/patients/{record_id}/contact",
        {"json": {"email": "nouvelle.adresse@example.org"}},
    ),
    "POST /api/v1/patients/search": lambda m, record_id: (
        "POST",
        "/api/v1/patients/search",
        {"json": {"nir": m.nirs[record_id]}},
    ),
    "POST /patients/recherche": lambda m, record_id: (
        "POST",
        "/patients/recherche",
        {"data": {"nir": m.nirs[record_id]}},
    ),
    "GET /patients/recherche": lambda m, record_id: ("GET", "/patients/recherche", {}),
    "GET /api/v1/appointments": lambda m, record_id: (
        "GET",
        f"/api/v1/appointments?patient_id={record_id}",
        {},
    ),
    "POST /api/v1/appointments/holds": lambda m, record_id: (
        "POST",
        "/api/v1/appointments/holds",
        {
            "json": {
                "patient_id": str(record_id),
                "site_id": str(_booking_site(m, record_id)),
                "exam_ids": [str(m.exam_id)],
                "starts_at": _next_move(m),
            }
        },
    ),
    "POST /api/v1/appointments/home-visits": lambda m, record_id: (
        "POST",
        "/api/v1/appointments/home-visits",
        {
            "json": {
                "patient_id": str(record_id),
                "site_id": str(_booking_site(m, record_id)),
                "exam_ids": [str(m.exam_id)],
                "day": (utcnow() + dt.timedelta(days=3)).astimezone(PARIS).date().isoformat(),
                "window": "morning",
                "address": {"line": "3 rue des Lilas", "postal_code": "75020", "city": "Paris"},
            }
        },
    ),
}
"""Request builders for policy routes that need more than their path (a body, a query)."""


CREATES_APPOINTMENT = frozenset(
    {"POST /api/v1/appointments/holds", "POST /api/v1/appointments/home-visits"}
)
"""Routes whose success makes an appointment: retired once made, as fresh objects are."""


def _booking_site(matrix: Matrix, record_id: uuid.UUID) -> uuid.UUID:
    """Where a booking for the record goes: its own placement's site (the annex for the
    patient account's record), so that a booking that succeeds widens nobody's scope."""
    record = next(name for name, value in matrix.record_ids.items() if value == record_id)
    return matrix.world.sites[_placed(matrix, record)[0]]


def _found(answer: Response, record_id: uuid.UUID) -> bool:
    """Whether a search's answer lists the record (JSON page or HTML results table)."""
    if answer.headers.get("content-type", "").startswith("application/json"):
        return any(item["id"] == str(record_id) for item in answer.json()["items"])
    return f"patients/{record_id}" in answer.text


def _declaration(matrix: Matrix) -> dict[str, Any]:
    """A valid pre-registration: the patient account's own record's traits."""
    person = matrix.world.inputs[OWN]
    return {
        "birth_name": person.birth_name,
        "first_names": person.first_names,
        "birth_date": person.birth_date.isoformat(),
        "sex": person.sex.value,
        "nir": person.nir.formatted() if person.nir else None,
        "third_party_payment": False,
    }


BODIES: dict[str, Callable[[Matrix], dict[str, Any]]] = {
    "PUT /api/v1/appointments/{appointment_id}/preregistration": lambda m: {
        "json": _declaration(m)
    },
    "POST /api/v1/appointments/{appointment_id}/documents": lambda m: {
        "files": {"file": ("ordonnance.pdf", _pdf(), "application/pdf")},
        "data": {"consent": "true"},
    },
    "POST /api/v1/appointments/{appointment_id}/reschedule": lambda m: {
        "json": {"starts_at": _next_move(m)}
    },
    "POST /api/v1/desk/appointments/{appointment_id}/identity-check": lambda m: {
        "json": {"document_kind": "cni"}
    },
    "POST /api/v1/desk/appointments/{appointment_id}/sampler": lambda m: {
        "json": {"sampler_staff_id": str(m.world.staff["sampler"])}
    },
}
"""Bodies of path-object routes that need one to succeed (the object stays in the path)."""


def object_request(
    matrix: Matrix, key: str, entry: RouteAccess, record_id: uuid.UUID
) -> tuple[str, str, dict[str, Any]]:
    if key in OBJECT_REQUESTS:
        return OBJECT_REQUESTS[key](matrix, record_id)
    where = entry.object_from or ""
    assert where.startswith("path:"), (
        f"{key}: add a request builder to OBJECT_REQUESTS (its object is in {where or 'none'})"
    )
    method, url = _path(key, entry, record_id)
    return method, url, BODIES[key](matrix) if key in BODIES else {}


POLICY_ROUTES = sorted(
    key for key, entry in ROUTES.items() if entry.requirement is Requirement.POLICY
)
ROLE_ROUTES = sorted(key for key, entry in ROUTES.items() if entry.requirement is Requirement.ROLES)


# --------------------------------------------------------------------------- the table


def _app_keys() -> list[str]:
    settings = Settings(data_dir=Path("/nonexistent"), database_url="sqlite://")
    return list(route_keys(create_app(settings, Runtime(settings)).routes))


def test_every_route_has_exactly_one_entry_and_every_entry_a_route() -> None:
    keys = _app_keys()
    assert len(keys) == len(set(keys)), "a route is served twice"
    missing = sorted(set(keys) - set(ROUTES))
    assert not missing, (
        f"routes without an access decision in core/access/routes_table.py: {missing}"
    )
    stale = sorted(set(ROUTES) - set(keys))
    assert not stale, f"routes_table.py entries for routes that no longer exist: {stale}"


def test_object_routes_name_a_parameter_the_route_has() -> None:
    for key, entry in ROUTES.items():
        if entry.object_from is None or not entry.object_from.startswith("path:"):
            continue
        assert "{" + str(entry.object_param) + "}" in key, key


def test_policy_entries_are_grantable_by_the_default_policy() -> None:
    """An entry naming an interaction nobody is granted is a typo or a dead route."""
    for key in POLICY_ROUTES:
        entry = ROUTES[key]
        assert entry.resource is not None
        assert entry.interaction is not None
        assert any(
            compiled_for(role).allows(entry.resource, entry.interaction) for role in ROLES
        ), key


def test_the_route_table_machinery_catches_a_new_route_and_a_removed_one() -> None:
    """The two checks above can fail: a route added to an app, and an entry whose route is
    gone, are both reported."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/api/v1/nouvelle-route/{patient_id}")
    def _new(patient_id: uuid.UUID) -> None:
        return None

    keys = set(route_keys(app.routes))
    assert "GET /api/v1/nouvelle-route/{patient_id}" in keys - set(ROUTES)
    assert "GET /api/v1/health" in set(ROUTES) - keys


# --------------------------------------------------------------------------- policy routes


@pytest.mark.parametrize("key", POLICY_ROUTES or ["(none yet)"])
def test_policy_routes_answer_exactly_what_the_policy_and_the_relationship_allow(
    matrix: Matrix, key: str
) -> None:
    if key == "(none yet)":
        pytest.skip("no policy-guarded route is registered yet")
    entry = ROUTES[key]
    mismatches: list[str] = []
    granted_somewhere = False
    for role in ROLES:
        for record in RECORDS if entry.object_from else RECORDS[:1]:
            record_id = matrix.record_ids[record]
            target, fresh = object_id(matrix, key, entry, role, record)
            method, url, kwargs = object_request(matrix, key, entry, target)
            answer = matrix.call(role, method, url, follow_redirects=False, **kwargs)
            if fresh is None and key in CREATES_APPOINTMENT and answer.status_code == 201:
                fresh = uuid.UUID(answer.json()["id"])
            if fresh is not None:
                retire(matrix, record, fresh)
            if entry.interaction is Interaction.SEARCH or entry.object_from is None:
                # A search (or its form): 404 for a role that may not; otherwise 200 and
                # only the records in scope.
                status = 200 if expected_granted(entry, role) else 404
                if answer.status_code != status:
                    mismatches.append(f"{role} x {record}: {answer.status_code}, expected {status}")
                elif status == 200 and entry.object_from is not None:
                    visible = expected_allowed(matrix, entry, role, record)
                    if _found(answer, record_id) != visible:
                        mismatches.append(f"{role} x {record}: found is not {visible}")
                continue
            allowed = expected_allowed(matrix, entry, role, record, key)
            granted_somewhere = granted_somewhere or allowed
            if allowed and not 200 <= answer.status_code < 300:
                mismatches.append(f"{role} x {record}: {answer.status_code}, expected 2xx")
            if not allowed and answer.status_code != 404:
                mismatches.append(f"{role} x {record}: {answer.status_code}, expected 404")
    assert not mismatches, f"{key}:\n" + "\n".join(mismatches)
    if entry.interaction is not Interaction.SEARCH and entry.object_from is not None:
        assert granted_somewhere, f"{key}: no role may use it on any record: a dead route"


# --------------------------------------------------------------------------- role routes


def _role_request(matrix: Matrix, key: str, entry: RouteAccess) -> tuple[str, str, dict[str, Any]]:
    """A request well-formed enough that only the caller's role can refuse it."""
    method, _, url = key.partition(" ")
    in_care = matrix.record_ids["today"]
    someone = matrix.callers["sampler"].account_id
    url = (
        url.replace("{account_id}", str(someone))
        .replace("{grant_id}", str(matrix.grant_id))
        .replace("{alert_id}", str(matrix.alert_id))
        .replace("{report_id}", str(matrix.report_id))
    )
    absent_nir = matrix.nirs[matrix.record_ids["absent"]]
    kwargs: dict[str, Any] = {}
    if url.startswith("/api/v1/"):
        if url == "/api/v1/staff/patient-links":
            kwargs["json"] = {
                "patient_id": str(in_care),
                "email": "patient.compte@example.org",
                "code": "000000",
            }
        elif url == "/api/v1/staff/dependents/revoke":
            kwargs["json"] = {"patient_id": str(in_care), "email": "patient.compte@example.org"}
        elif url == "/api/v1/admin/staff" and method == "POST":
            kwargs["json"] = {
                "email": "nouvel.agent@alpha.example.org",
                "first_name": "Noé",
                "last_name": "Nouveau",
                "role": "sampler",
                "site_ids": [str(matrix.world.sites["main"])],
            }
        elif url == "/api/v1/break-glass":
            kwargs["json"] = {  # nobody has this NIR: an allowed role gets 422, no grant
                "nir": absent_nir,
                "reason": "emergency",
                "justification": "Valeur critique signalée par le médecin traitant",
            }
        elif url.endswith("/review"):
            kwargs["json"] = {"outcome": "justified"}
        elif url.endswith("/validate"):
            kwargs["json"] = {"version": 1}
        elif url.endswith("/phone-call"):
            kwargs["json"] = {"note": "Résultat communiqué au patient par téléphone"}
        kwargs["headers"] = {"Accept": "application/json"}
    elif method == "POST":
        kwargs["data"] = {
            "csrf_token": "",  # replaced per caller
            "patient_id": str(in_care),
            "email": "patient.compte@example.org",
            "code": "000000",
            "account_id": str(someone),
            "first_name": "Noé",
            "last_name": "Nouveau",
            "role": "sampler",
            "site_ids": str(matrix.world.sites["main"]),
            "nir": absent_nir,
            "reason": "emergency",
            "justification": "Valeur critique signalée par le médecin traitant",
            "outcome": "justified",
        }
    return method, url, kwargs


POSITIVE_ELSEWHERE = {
    "DELETE /api/v1/break-glass/{grant_id}": "security/test_security_api.py (own grants)",
    "POST /api/v1/staff/patient-links": "accounts/test_linking.py (needs a patient's desk code)",
    "POST /api/v1/staff/dependents/revoke": "accounts/test_linking.py (needs a dependent)",
    "POST /compte/guichet": "accounts/test_linking.py (needs a patient's desk code)",
    "GET /laboratoire/rapprochement/{message_id}": "results/test_queue_pages.py (a queued one)",
    "POST /laboratoire/rapprochement/{message_id}/rattacher": "results/test_queue_pages.py",
    "POST /laboratoire/rapprochement/{message_id}/ecarter": "results/test_queue_pages.py",
}
"""Role routes whose allowed caller answers this matrix's well-formed but unknown request
with the same 404 as a refusal (by design, I7); their allowed case is tested where named."""


@pytest.mark.parametrize("key", ROLE_ROUTES)
def test_role_routes_refuse_every_other_role_and_patients(matrix: Matrix, key: str) -> None:
    entry = ROUTES[key]
    refusals: dict[str, tuple[int, bytes]] = {}
    for role in ROLES:
        method, url, kwargs = _role_request(matrix, key, entry)
        if "data" in kwargs:
            kwargs["data"] = {**kwargs["data"], "csrf_token": matrix.callers[role].csrf}
        answer = matrix.call(role, method, url, **kwargs, follow_redirects=False)
        if role in entry.roles:
            if key not in POSITIVE_ELSEWHERE:
                assert answer.status_code != entry.refusal, (key, role, answer.text[:300])
        else:
            assert answer.status_code == entry.refusal, (key, role, answer.status_code)
            refusals[role] = (answer.status_code, _without_request_id(answer.content))
    assert len(set(refusals.values())) == 1, f"{key}: the refusal differs by role"


def _without_request_id(body: bytes) -> bytes:
    """Error pages and problems may carry a per-request reference; the rest must match."""
    import re

    return re.sub(
        rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|"
        rb"\b[0-9a-f]{16,32}\b",
        b"<id>",
        body,
    )


# --------------------------------------------------------------------------- account kinds


PATIENT_ONLY_GETS = sorted(
    key
    for key, entry in ROUTES.items()
    if entry.requirement is Requirement.ACCOUNT
    and entry.account_kinds == {"patient"}
    and key.startswith("GET ")
)


@pytest.mark.parametrize("key", PATIENT_ONLY_GETS)
def test_patient_account_routes_refuse_staff(matrix: Matrix, key: str) -> None:
    url = key.partition(" ")[2]
    assert matrix.call(PATIENT_SUBJECT, "GET", url).status_code == 200
    for role in sorted(STAFF_SUBJECTS):
        answer = matrix.call(role, "GET", url, follow_redirects=False)
        assert answer.status_code == ROUTES[key].refusal, (key, role, answer.status_code)


def test_the_table_s_break_glass_roles_are_the_service_s() -> None:
    assert frozenset(BREAK_GLASS_ROLES) == SERVICE_BREAK_GLASS_ROLES


def _compact(nir: Nir | None) -> str:
    assert nir is not None
    return nir.compact


# --------------------------------------------------------------------------- service routes

SERVICE_ROUTES = sorted(
    key for key, entry in ROUTES.items() if entry.requirement is Requirement.SERVICE
)


def test_service_entries_name_a_scope_and_a_grant_services_have() -> None:
    """Each FHIR entry's scope parses, and its policy interaction (if any) is one a kind of
    service client is granted: the API's positive cases (scope x policy x the client's
    sites) are tested in tests/integration/fhir."""
    from labvault.fhir.scopes import parse_scope

    assert SERVICE_ROUTES
    for key in SERVICE_ROUTES:
        entry = ROUTES[key]
        assert entry.scope is not None
        assert parse_scope(entry.scope), key
        if entry.resource is None:
            continue
        assert entry.interaction is not None
        assert any(
            compile_policy(
                default_policy(), Principal(PrincipalKind.SERVICE, "service:x", role=kind)
            ).allows(entry.resource, entry.interaction)
            for kind in ("lis", "fhir")
        ), key


def test_service_routes_ignore_sessions_and_ask_for_a_bearer_token(matrix: Matrix) -> None:
    """A signed-in session of any role counts for nothing on the FHIR API: 401 and a Bearer
    challenge, the same answer for everybody."""
    record = matrix.record_ids[RECORDS[0]]
    for key in SERVICE_ROUTES:
        method, _, path = key.partition(" ")
        url = path.replace("{resource_id}", str(record))
        answers = set()
        for role in ROLES:
            answer = matrix.call(role, method, url, follow_redirects=False)
            assert answer.status_code == 401, (key, role, answer.status_code)
            assert answer.headers["www-authenticate"].startswith("Bearer"), key
            answers.add(_without_request_id(answer.content))
        assert len(answers) == 1, key
