"""Honey records never show in a list a legitimate user sees, and a list never decrypts one;
a read by id still trips the guard (alert, lock), so a scraper that walks ids is caught.

The world: the caller world (staff with accounts, appointments around the real now) with
honey patients planted, each given what the lists look at (a visit today and tomorrow at
the main site, a home visit today with a sealed address, a report to validate and a
released one awaiting delivery). Then, list by list, as its legitimate user: no honey
row, no honey key unwrapped, no honey id in that user's audit events, no alert, nobody
locked; and the same user's read of a honey record by id is refused and locks them.

SQLite for all; the desk and the review queue on PostgreSQL too (row-level security)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from caller_world import CallerWorld, build_caller_world
from labvault.accounts.models import Account, AccountStatus, LockReason
from labvault.appointments.models import Appointment, AppointmentKind
from labvault.core.access.decrypt import install_guards, uninstall_guards
from labvault.core.access.policies import Interaction
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.passwords import Argon2Parameters, PasswordHasher
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.desk.services import DeskService, DocumentKind
from labvault.fhir.oauth import ServiceCaller
from labvault.fhir.scopes import ScopeSet
from labvault.fhir.services import FhirReader
from labvault.patients.models import Patient
from labvault.patients.nir import Nir
from labvault.patients.scope import service_scope, staff_scope
from labvault.patients.services import PatientRepository, SealedItem
from labvault.reminders.services import PARIS, ReminderJob
from labvault.results.clients import ServiceClientRegistry
from labvault.results.delivery import FileResultDelivery
from labvault.results.intake import OrderDigester
from labvault.results.models import ReportStatus, ResultOrder, ResultReport, ServiceClient
from labvault.results.review import REDELIVERY_PRINCIPAL, ReviewService, deliver_pending
from labvault.security.alerts import DatabaseAlertSink
from labvault.security.breakglass import (
    BreakGlassRefusedError,
    BreakGlassService,
    PatientDesignation,
)
from labvault.security.honey import ALERT_KIND as HONEY_ALERT
from labvault.security.honey import (
    PLANT_JOB,
    HoneyGuards,
    HoneyMembership,
    HoneyRecordTouchedError,
    plant_honey,
)
from labvault.security.lockout import wait_for_deferred
from labvault.security.models import BreakGlassReason, SecurityAlert
from results_world import add_report, glucose, hemoglobin

SETUP = SystemPrincipal("test:honey-lists")
CHEAP = PasswordHasher(Argon2Parameters(time_cost=5, memory_cost=7168))
ADDRESS = {"line": "3 rue des Tilleuls", "postal_code": "75011", "city": "Paris"}
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


class CountingProvider:
    """The runtime's provider, noting the subject of every unwrapped key: "nothing was
    decrypted for a honey record" made observable."""

    def __init__(self, inner: KeyProvider) -> None:
        self._inner = inner
        self.subjects: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _note(self, context: str) -> None:
        parts = context.split("|")  # labvault/v1|data_key|tenant|type|subject|key
        if parts[1] == "data_key":
            self.subjects.add(parts[4])

    def unwrap(self, wrapped: bytes, context: str) -> Secret[bytes]:
        self._note(context)
        return self._inner.unwrap(wrapped, context)

    def unwrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[Secret[bytes]]:
        for _, context in items:
            self._note(context)
        return self._inner.unwrap_many(items)


@dataclass
class HoneyWorld:
    cw: CallerWorld
    honey: frozenset[uuid.UUID]
    real_today: uuid.UUID
    """A real patient with a visit today and a home visit today."""
    visits: dict[uuid.UUID, uuid.UUID]
    """Each honey patient's visit today at the main site."""
    home_visits: dict[uuid.UUID, uuid.UUID]
    later: dict[uuid.UUID, uuid.UUID]
    """Each honey patient's visit tomorrow (booked, not reminded yet)."""
    reports: dict[uuid.UUID, uuid.UUID]
    """Each honey patient's report to validate."""
    released: dict[uuid.UUID, uuid.UUID]
    """Each honey patient's released report, not delivered yet."""
    tomorrow: dt.date
    """The Paris day of the world's ``tomorrow`` visit (reminders)."""
    provider: CountingProvider

    @property
    def runtime(self) -> Runtime:
        return self.cw.runtime

    @property
    def tenant(self) -> uuid.UUID:
        return self.cw.world.tenant

    def guards(self) -> HoneyGuards:
        return HoneyGuards(
            cast(KeyProvider, self.provider), HoneyGuards.from_runtime(self.runtime).responder
        )

    def keyring(self, session: Session, principal: Principal) -> TenantKeyring:
        """A keyring as the runtime will build it: with the honey guard."""
        return TenantKeyring(
            session,
            cast(KeyProvider, self.provider),
            self.tenant,
            principal,
            guards=[self.guards().for_session(session, self.tenant)],
        )

    def staff(self, role: str) -> Principal:
        return Principal(PrincipalKind.STAFF, str(self.cw.accounts[role]), role=role)


def _setup_keyring(session: Session, runtime: Runtime, tenant: uuid.UUID) -> TenantKeyring:
    """The world's builder: no guard (it seals honey records' content on purpose)."""
    return TenantKeyring(session, runtime.key_provider, tenant, SETUP, guards=[])


def _today_visit(session: Session, patient_id: uuid.UUID) -> Appointment:
    return session.scalars(select(Appointment).where(Appointment.patient_id == patient_id)).one()


@pytest.fixture
def hw(runtime: Runtime) -> Iterator[HoneyWorld]:
    cw = build_caller_world(runtime)
    # Whatever guards the runtime installs, the builder seals honey content without them;
    # the tests give each keyring its guard explicitly (the reminders test installs one).
    uninstall_guards(runtime.engine)
    world = cw.world
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(
            session, runtime.key_provider, world.tenant, SystemPrincipal(PLANT_JOB), guards=[]
        )
        plant_honey(session, runtime.key_provider, keyring, keyring.audit, density=0.05, minimum=3)
    with world.sessions() as session:
        everyone = set(session.scalars(select(Patient.id).where(Patient.tenant_id == world.tenant)))
        honey = HoneyMembership(session, runtime.key_provider, world.tenant).honey_ids(everyone)
    assert len(honey) == 3
    real_today = world.patients["today"]
    visits: dict[uuid.UUID, uuid.UUID] = {}
    home_visits: dict[uuid.UUID, uuid.UUID] = {}
    later_visits: dict[uuid.UUID, uuid.UUID] = {}
    with transaction(world.sessions) as session:
        repository = PatientRepository(session, _setup_keyring(session, runtime, world.tenant))
        today_at = _today_visit(session, real_today).starts_at
        tomorrow_at = _today_visit(session, world.patients["tomorrow"]).starts_at
        for patient_id in [*sorted(honey), real_today]:
            if patient_id in honey:
                visit = Appointment(
                    tenant_id=world.tenant,
                    patient_id=patient_id,
                    site_id=world.sites["main"],
                    starts_at=today_at,
                )
                later = Appointment(
                    tenant_id=world.tenant,
                    patient_id=patient_id,
                    site_id=world.sites["main"],
                    starts_at=tomorrow_at,
                )
                session.add_all([visit, later])
                session.flush()
                visits[patient_id] = visit.id
                later_visits[patient_id] = later.id
            home = Appointment(
                tenant_id=world.tenant,
                patient_id=patient_id,
                site_id=world.sites["main"],
                starts_at=today_at,
                kind=AppointmentKind.HOME.value,
            )
            session.add(home)
            session.flush()
            sealed = repository.seal_for(
                patient_id,
                "appointment",
                Interaction.CREATE,
                SealedItem(
                    patient_id,
                    "appointments",
                    home.id,
                    {"home_address": json.dumps(ADDRESS).encode()},
                ),
                purpose="test-setup",
            )
            assert sealed is not None
            home.home_address = sealed["home_address"]
            home_visits[patient_id] = home.id
    tomorrow = tomorrow_at.astimezone(PARIS).date()
    reports, released = {}, {}
    for patient_id in sorted(honey):
        reports[patient_id] = add_report(
            runtime, world.sessions, world.tenant, patient_id, [hemoglobin(), glucose()]
        )
        released[patient_id] = add_report(
            runtime,
            world.sessions,
            world.tenant,
            patient_id,
            [glucose()],
            status=ReportStatus.RELEASED,
        )
    with transaction(world.sessions) as session:
        for report_id in released.values():
            report = session.get(ResultReport, report_id)
            assert report is not None
            report.released_at = utcnow()
    # A real report in the queue, so the list is not empty for a wrong reason.
    add_report(runtime, world.sessions, world.tenant, real_today, [hemoglobin()])
    yield HoneyWorld(
        cw,
        frozenset(honey),
        real_today,
        visits,
        home_visits,
        later_visits,
        reports,
        released,
        tomorrow,
        CountingProvider(runtime.key_provider),
    )
    uninstall_guards(runtime.engine)


def _events_of(hw: HoneyWorld, actor: str) -> list[AuditEvent]:
    with hw.runtime.audit_sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.actor_id == actor)))


def assert_untouched(hw: HoneyWorld, principal: Principal) -> None:
    """Nothing of a honey record was decrypted or recorded for ``principal``; no alarm."""
    assert not hw.provider.subjects & {str(h) for h in hw.honey}
    events = _events_of(hw, principal.id)
    assert events  # the list was recorded...
    assert not {e.target_id for e in events} & hw.honey  # ...without a honey record in it
    assert not [e for e in events if e.action == AuditAction.GUARD_HONEY_TOUCHED.value]
    with hw.cw.world.sessions() as session:
        alerts = session.scalars(select(SecurityAlert.kind))
        assert HONEY_ALERT not in set(alerts)
        locked = session.scalars(
            select(Account.id).where(Account.status == AccountStatus.LOCKED.value)
        )
        assert not list(locked)


def assert_tripped(hw: HoneyWorld, principal: Principal, honey_id: uuid.UUID) -> None:
    """The read by id was refused: alert naming the honey record, principal locked."""
    wait_for_deferred()
    with hw.cw.world.sessions() as session:
        alerts = list(session.scalars(select(SecurityAlert)))
        assert [(a.kind, a.actor_id, a.target_id) for a in alerts if a.kind == HONEY_ALERT] == [
            (HONEY_ALERT, principal.id, honey_id)
        ]
        if principal.kind is PrincipalKind.STAFF:
            account = session.get(Account, uuid.UUID(principal.id))
            assert account is not None
            assert account.status == AccountStatus.LOCKED.value
            assert account.lock_reason == LockReason.SECURITY_DECISION.value
    touched = [
        e for e in _events_of(hw, principal.id) if e.action == AuditAction.GUARD_HONEY_TOUCHED.value
    ]
    assert [(e.target_id, e.outcome) for e in touched] == [(honey_id, "denied")]


def desk(hw: HoneyWorld, session: Session, role: str) -> DeskService:
    principal = hw.staff(role)
    scope = staff_scope(session, principal, hw.tenant, hw.cw.world.staff[role])
    return DeskService(session, hw.keyring(session, principal), scope)


# -- the desk: the day's schedule and the home-visit round ----------------------------------


def test_the_desk_schedule_leaves_honey_visits_out_and_a_check_by_id_trips(
    hw: HoneyWorld,
) -> None:
    principal = hw.staff("receptionist")
    site = hw.cw.world.sites["main"]
    with transaction(hw.cw.world.sessions) as session:
        service = desk(hw, session, "receptionist")
        rows = service.schedule(site, service.today())
        tomorrow = service.schedule(site, hw.tomorrow)
    listed = {row.patient_id for row in [*rows, *tomorrow]}
    assert {hw.real_today, hw.cw.world.patients["tomorrow"]} <= listed
    assert not listed & hw.honey
    assert all(row.birth_name for row in rows)  # no row of an unopened record either
    assert_untouched(hw, principal)
    honey_id, visit = next(iter(sorted(hw.visits.items())))
    with pytest.raises(HoneyRecordTouchedError), transaction(hw.cw.world.sessions) as session:
        desk(hw, session, "receptionist").identity_check(visit, DocumentKind.NATIONAL_ID.value)
    assert_tripped(hw, principal, honey_id)


@sqlite_only
def test_the_round_leaves_honey_home_visits_out_and_assigning_one_by_id_trips(
    hw: HoneyWorld,
) -> None:
    principal = hw.staff("receptionist")
    site = hw.cw.world.sites["main"]
    with transaction(hw.cw.world.sessions) as session:
        service = desk(hw, session, "receptionist")
        rows = service.round(site, service.today())
    assert [(row.patient_id, row.address_line) for row in rows] == [
        (hw.real_today, ADDRESS["line"])
    ]
    assert_untouched(hw, principal)
    honey_id = sorted(hw.honey)[0]
    with pytest.raises(HoneyRecordTouchedError), transaction(hw.cw.world.sessions) as session:
        desk(hw, session, "receptionist").assign_sampler(
            hw.home_visits[honey_id], hw.cw.world.staff["sampler"]
        )
    assert_tripped(hw, principal, honey_id)
    with hw.cw.world.sessions() as session:
        visit = session.get(Appointment, hw.home_visits[honey_id])
        assert visit is not None
        assert visit.sampler_staff_id is None  # the refused request wrote nothing


# -- results: the biologist's queue, the redelivery job, FHIR searches -------------------------


def review(hw: HoneyWorld, session: Session) -> ReviewService:
    principal = hw.staff("biologist")
    staff_id = hw.cw.world.staff["biologist"]
    return ReviewService(
        session,
        hw.keyring(session, principal),
        staff_scope(session, principal, hw.tenant, staff_id),
        provider=hw.runtime.key_provider,
        staff_id=staff_id,
        require_step_up=lambda: None,
        delivery=FileResultDelivery(hw.runtime.settings.resolved_result_drop_dir),
        notifier=None,
        organization="Labo Alpha",
    )


def test_the_review_queue_leaves_honey_reports_out_and_opening_one_by_id_trips(
    hw: HoneyWorld,
) -> None:
    principal = hw.staff("biologist")
    with transaction(hw.cw.world.sessions) as session:
        items = review(hw, session).queue()
    assert [item.patient_id for item in items] == [hw.real_today]
    assert all(item.patient_name for item in items)
    assert_untouched(hw, principal)
    honey_id = sorted(hw.honey)[0]
    with pytest.raises(HoneyRecordTouchedError), transaction(hw.cw.world.sessions) as session:
        review(hw, session).report(hw.reports[honey_id])
    assert_tripped(hw, principal, honey_id)


@sqlite_only
def test_redelivery_leaves_honey_reports_out(hw: HoneyWorld, tmp_path: Path) -> None:
    real = add_report(
        hw.runtime,
        hw.cw.world.sessions,
        hw.tenant,
        hw.real_today,
        [glucose()],
        status=ReportStatus.RELEASED,
    )
    with transaction(hw.cw.world.sessions) as session:
        report = session.get(ResultReport, real)
        assert report is not None
        report.released_at = utcnow()
    delivery = FileResultDelivery(tmp_path / "drop")
    with transaction(hw.cw.world.sessions) as session:
        keyring = hw.keyring(session, REDELIVERY_PRINCIPAL)
        counts = deliver_pending(session, keyring, delivery, organization="Labo Alpha")
    assert counts == (1, 0)
    assert sorted(p.name for p in (tmp_path / "drop").iterdir()) == [f"{real}-v1.fhir.json"]
    assert_untouched(hw, REDELIVERY_PRINCIPAL)
    with hw.cw.world.sessions() as session:
        waiting = session.scalars(
            select(ResultReport.id).where(ResultReport.delivered_at.is_(None))
        )
        assert set(hw.released.values()) <= set(waiting)  # left for nobody, not failed


@sqlite_only
def test_a_fhir_search_names_its_patient_so_it_is_a_read_by_id_and_trips(
    hw: HoneyWorld,
) -> None:
    """FHIR searches need ``patient=``: the caller names the record, as a read by id does,
    so a honey id given there is not filtered but refused, and the client disabled."""
    with transaction(hw.cw.world.sessions) as session:
        registry = ServiceClientRegistry(session, hw.tenant, AuditTrail(session, SETUP), CHEAP)
        client, _ = registry.add(
            "SIL Miel",
            kind="lis",
            sites=["Alpha Centre"],
            scopes=["system/DiagnosticReport.read"],
        )
        client_id = client.id
        # A client reads the results of the orders it sent only: make the honey record's
        # released report one of this client's, so the search has something to open.
        honey_report = session.get(ResultReport, hw.released[sorted(hw.honey)[0]])
        assert honey_report is not None
        session.execute(
            update(ResultOrder)
            .where(ResultOrder.id == honey_report.order_id)
            .values(client_id=client_id)
        )
    principal = Principal(PrincipalKind.SERVICE, f"service:{client_id}", role="lis")
    caller = ServiceCaller(
        client_id,
        hw.tenant,
        "lis",
        principal,
        ScopeSet(frozenset({("DiagnosticReport", "s"), ("DiagnosticReport", "r")})),
    )
    honey_id = sorted(hw.honey)[0]

    def search() -> None:
        with transaction(hw.cw.world.sessions) as session:
            scope = service_scope(session, principal, hw.tenant, client_id)
            keyring = hw.keyring(session, principal)
            reader = FhirReader(
                session,
                keyring,
                scope,
                caller,
                now=utcnow(),
                orders=OrderDigester.from_provider(cast(KeyProvider, hw.provider), hw.tenant),
            )
            reader.search_diagnostic_reports({"patient": f"Patient/{honey_id}"})

    with pytest.raises(HoneyRecordTouchedError):
        search()
    assert_tripped(hw, principal, honey_id)
    with hw.cw.world.sessions() as session:
        found = session.get(ServiceClient, client_id)
        assert found is not None
        assert found.disabled_reason == "honey-record"


# -- break-glass: naming a patient by NIR or traits -----------------------------------------


@sqlite_only
def test_break_glass_never_picks_a_honey_record(hw: HoneyWorld) -> None:
    """Naming a patient is a search: a honey record's NIR or traits match nothing (and
    nothing is decrypted); a real patient is found as before."""
    principal = hw.staff("receptionist")
    honey_id = sorted(hw.honey)[0]
    with hw.cw.world.sessions() as session:
        setup = PatientRepository(session, _setup_keyring(session, hw.runtime, hw.tenant))
        record = setup.get(honey_id, purpose="test-setup")
        assert record is not None
        assert record.ins_number
        assert record.birth_date
        designations = [
            PatientDesignation(nir=Nir.parse(record.ins_number)),
            PatientDesignation(
                birth_name=record.birth_name,
                first_name=(record.first_names or "").split()[0],
                birth_date=record.birth_date,
            ),
        ]
    real = hw.cw.world.inputs["no_appointment"]
    assert real.nir is not None

    def open_for(designation: PatientDesignation) -> uuid.UUID:
        with transaction(hw.cw.world.sessions) as session:
            keyring = hw.keyring(session, principal)
            service = BreakGlassService(
                session,
                keyring,
                staff_id=hw.cw.world.staff["receptionist"],
                alerts=DatabaseAlertSink(session, keyring.audit),
                hours=2,
            )
            return service.open(
                designation, BreakGlassReason.EMERGENCY, "Patient inconscient aux urgences."
            )

    for designation in designations:
        with pytest.raises(BreakGlassRefusedError, match="Aucun dossier"):
            open_for(designation)
    assert open_for(PatientDesignation(nir=real.nir)) == (hw.cw.world.patients["no_appointment"])
    assert_untouched(hw, principal)


# -- reminders -------------------------------------------------------------------------------


@sqlite_only
def test_reminders_leave_honey_visits_out_and_reminding_one_by_id_trips(
    hw: HoneyWorld,
) -> None:
    """The job's keyring comes from the guards installed for the database (as the
    runtime's will), not from the test."""
    guards = hw.guards()
    install_guards(hw.runtime.engine, lambda session, tenant: [guards.for_session(session, tenant)])
    job = ReminderJob(
        cast(KeyProvider, hw.provider),
        hw.runtime.mailer,
        None,
        public_url="https://labo.example.fr",
    )
    sessions = hw.cw.world.sessions
    with sessions() as session:
        due = job.due(session, hw.tenant, hw.tomorrow)
    assert due
    assert not set(due) & set(hw.later.values())
    report = job.run(sessions, hw.tenant, hw.tomorrow)
    assert report.due == len(due)
    assert_untouched(hw, job.principal)
    with sessions() as session:
        reminded = session.scalars(
            select(Appointment.id).where(Appointment.reminder_sent_at.is_not(None))
        )
        assert not set(reminded) & set(hw.later.values())
    honey_id = sorted(hw.honey)[0]
    with pytest.raises(HoneyRecordTouchedError), transaction(sessions) as session:
        job.send_one(session, hw.tenant, hw.later[honey_id], hw.tomorrow)
    assert_tripped(hw, job.principal, honey_id)
    with sessions() as session:
        visit = session.get(Appointment, hw.later[honey_id])
        assert visit is not None
        assert visit.reminder_sent_at is None  # the refused claim was rolled back
