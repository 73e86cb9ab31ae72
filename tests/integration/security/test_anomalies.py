"""Anomaly rules over the audit log, on SQLite and PostgreSQL: events seeded with the audit
trail API at chosen instants, patients registered for real (the sequential rule joins them)."""

from __future__ import annotations

import datetime as dt
import random
import uuid
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.bulk import to_input
from labvault.patients.ins import InsOid
from labvault.patients.models import Patient
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows
from labvault.security.alerts import Alert
from labvault.security.anomalies import AnomalyThresholds, Rule, evaluate, scan
from labvault.security.guard_models import AnomalyFinding
from labvault.security.models import SecurityAlert
from labvault.security.sinks import alert_dispatcher

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NOW = dt.datetime(2026, 11, 30, 11, 0, tzinfo=PARIS).astimezone(dt.UTC)
"""A Monday, 11:00 in Paris."""
LIMITS = AnomalyThresholds(volume_floor=10, volume_factor=4.0)
PATIENTS = 30


def staff(name: str) -> Principal:
    return Principal(PrincipalKind.STAFF, str(uuid.uuid5(uuid.NAMESPACE_URL, name)), "receptionist")


@dataclass
class Lab:
    runtime: Runtime
    tenant: uuid.UUID
    patients: list[uuid.UUID]
    """In creation order (created_at set one hour apart)."""

    def sessions(self) -> sessionmaker[Session]:
        return self.runtime.tenant_sessions(self.tenant)

    def record(
        self,
        principal: Principal,
        events: Iterable[tuple[dt.datetime, uuid.UUID | None]],
        action: AuditAction = AuditAction.PATIENT_RECORD_READ,
    ) -> None:
        with transaction(self.sessions()) as session:
            for moment, target in events:
                AuditTrail(session, principal, clock=lambda m=moment: m).record(
                    action,
                    tenant_id=self.tenant,
                    target_type="patient" if target is not None else None,
                    target_id=target,
                    purpose="care",
                )

    def evaluate(self, *rules: Rule, now: dt.datetime = NOW) -> list[tuple[str, str]]:
        with self.sessions()() as session:
            found = evaluate(session, self.tenant, now, LIMITS, rules=rules or tuple(Rule))
        return sorted((f.rule.value, f.actor_id) for f in found)


@pytest.fixture
def lab(runtime: Runtime) -> Lab:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo Anomalies").id
    rows = list(synthetic_patient_rows(PATIENTS, seed=9))
    people = [to_input(n, row, InsOid.TEST) for n, row in enumerate(rows, start=2)]
    with transaction(runtime.tenant_sessions(tenant)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("test:a"))
        PatientRepository(session, keyring).register_many(
            [p for p in people if not isinstance(p, list)]
        )
        ids = list(session.scalars(select(Patient.id)))
        random.Random(3).shuffle(ids)  # creation order unrelated to id order
        for hours, patient in enumerate(ids):
            session.execute(
                update(Patient)
                .where(Patient.id == patient)
                .values(created_at=NOW - dt.timedelta(days=400) + dt.timedelta(hours=hours))
            )
    return Lab(runtime, tenant, ids)


def _irregular(
    start: dt.datetime, patients: list[uuid.UUID], seed: int
) -> list[tuple[dt.datetime, uuid.UUID | None]]:
    """Reads a person makes: gaps between 5 s and 2 min, nothing regular."""
    rng = random.Random(seed)
    moment = start
    events: list[tuple[dt.datetime, uuid.UUID | None]] = []
    for patient in patients:
        moment += dt.timedelta(seconds=rng.randint(5, 120))
        events.append((moment, patient))
    return events


def _shuffled(patients: list[uuid.UUID], count: int, seed: int) -> list[uuid.UUID]:
    picked = list(patients[:count])
    random.Random(seed).shuffle(picked)
    return picked


def test_volume_compares_the_last_hour_with_the_principal_s_own_median(lab: Lab) -> None:
    usual, busy, quiet, job = staff("usual"), staff("busy"), staff("quiet"), SystemPrincipal("j")
    start = NOW - dt.timedelta(minutes=55)
    usual_history, busy_history = [], []
    for day in range(1, 8):  # 7 days at 9:00 and 10:00 Paris: 3 (usual) or 15 (busy) an hour
        for hour in (9, 10):
            base = NOW.astimezone(PARIS).replace(hour=hour, minute=5) - dt.timedelta(days=day)
            usual_history += [(base + dt.timedelta(minutes=m), lab.patients[m]) for m in range(3)]
            busy_history += [(base + dt.timedelta(minutes=m), lab.patients[m]) for m in range(15)]
    lab.record(usual, usual_history)
    lab.record(usual, _irregular(start, _shuffled(lab.patients, 14, 1), 1))  # 14 >= 4 x 3
    lab.record(busy, busy_history)
    lab.record(busy, _irregular(start, _shuffled(lab.patients, 14, 2), 2))  # median 15: normal
    lab.record(quiet, _irregular(start, _shuffled(lab.patients, 9, 3), 3))  # under the floor
    lab.record(job, _irregular(start, lab.patients, 4))  # system jobs are not watched
    assert lab.evaluate(Rule.VOLUME) == [("volume", usual.id)]


def test_off_hours_counts_each_paris_night_or_weekend_once(lab: Lab) -> None:
    night, morning = staff("night"), staff("morning")
    sunday_night = dt.datetime(2026, 11, 29, 23, 0, tzinfo=PARIS).astimezone(dt.UTC)
    monday_morning = dt.datetime(2026, 11, 30, 7, 30, tzinfo=PARIS).astimezone(dt.UTC)
    lab.record(night, _irregular(sunday_night, _shuffled(lab.patients, 25, 5), 5))
    lab.record(morning, _irregular(monday_morning, _shuffled(lab.patients, 25, 6), 6))
    with lab.sessions()() as session:
        found = evaluate(session, lab.tenant, NOW, LIMITS, rules=[Rule.OFF_HOURS])
    assert [(f.actor_id, f.figures["patients"]) for f in found] == [(night.id, 25)]
    weekend = found[0]
    assert weekend.window_start == dt.datetime(2026, 11, 27, 20, 0, tzinfo=PARIS)
    assert weekend.window_end == dt.datetime(2026, 11, 30, 7, 0, tzinfo=PARIS)


def test_many_searches_with_few_records_opened_is_probing(lab: Lab) -> None:
    prober, desk = staff("prober"), staff("desk")
    start = NOW - dt.timedelta(minutes=50)
    searches = [(start + dt.timedelta(seconds=40 * n), None) for n in range(40)]
    lab.record(prober, searches, AuditAction.PATIENT_SEARCH_NIR)
    lab.record(prober, _irregular(start, lab.patients[:2], 7))
    lab.record(desk, searches, AuditAction.PATIENT_SEARCH_NAME)
    lab.record(desk, _irregular(start, _shuffled(lab.patients, 25, 8), 8))
    with lab.sessions()() as session:
        found = evaluate(session, lab.tenant, NOW, LIMITS, rules=[Rule.SEARCH_RATIO])
    assert [(f.actor_id, f.figures) for f in found] == [
        (prober.id, {"searches": 40, "patients": 2, "ratio": 0.05})
    ]


def test_sequential_means_creation_or_id_order_or_robotic_timing(lab: Lab) -> None:
    walker, crawler, robot, person = staff("walker"), staff("crawler"), staff("robot"), staff("p")
    start = NOW - dt.timedelta(minutes=58)
    lab.record(walker, _irregular(start, lab.patients[:25], 9))  # creation order
    lab.record(crawler, _irregular(start, sorted(lab.patients, key=lambda p: p.hex)[:25], 10))
    shuffled = _shuffled(lab.patients, 25, 11)
    lab.record(robot, [(start + dt.timedelta(seconds=12 * n), p) for n, p in enumerate(shuffled)])
    lab.record(person, _irregular(start, shuffled, 12))
    assert lab.evaluate(Rule.SEQUENTIAL) == sorted(
        [("sequential", walker.id), ("sequential", crawler.id), ("sequential", robot.id)]
    )


def test_a_batch_read_in_one_instant_is_not_a_walk(lab: Lab) -> None:
    """A list page opens many keys in one call (one instant): its order is ours, not the
    reader's, and one instant has no timing."""
    lister = staff("lister")
    start = NOW - dt.timedelta(minutes=30)
    lab.record(lister, [(start, p) for p in lab.patients[:25]])
    assert lab.evaluate(Rule.SEQUENTIAL) == []


class Collect:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def raise_alert(self, alert: Alert) -> None:
        self.alerts.append(alert)


def test_scan_records_each_finding_once_per_window_and_raises_one_alert(lab: Lab) -> None:
    walker = staff("walker")
    lab.record(walker, _irregular(NOW - dt.timedelta(minutes=58), lab.patients[:25], 13))
    sink = Collect()
    scanner = SystemPrincipal("test:scan")
    for minutes in (0, 5, 50):
        with transaction(lab.sessions()) as session:
            dispatcher = alert_dispatcher(
                lab.runtime.settings,
                session,
                AuditTrail(session, scanner),
                external=[sink],
            )
            report = scan(session, lab.tenant, NOW + dt.timedelta(minutes=minutes), dispatcher,
                          LIMITS, rules=[Rule.SEQUENTIAL])  # fmt: skip
            assert len(report.findings) == (1 if minutes < 50 else 0)
            assert len(report.new) == (1 if minutes == 0 else 0)
    # Two hours later, the same reader walks again: a new window, a new alert.
    later = NOW + dt.timedelta(hours=2)
    lab.record(walker, _irregular(later - dt.timedelta(minutes=50), lab.patients[:25], 14))
    with transaction(lab.sessions()) as session:
        dispatcher = alert_dispatcher(
            lab.runtime.settings, session, AuditTrail(session, scanner), external=[sink]
        )
        assert len(scan(session, lab.tenant, later, dispatcher, LIMITS).new) == 1
    assert [(a.kind, a.actor.id, a.target_type) for a in sink.alerts] == [
        ("anomaly-sequential", walker.id, "anomaly-finding")
    ] * 2
    with lab.sessions()() as session:
        alerts = session.scalars(select(SecurityAlert).order_by(SecurityAlert.created_at)).all()
        findings = session.scalars(select(AnomalyFinding)).all()
        raised = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == AuditAction.SECURITY_ALERT_RAISE.value)
        )
    assert [(a.kind, a.actor_id) for a in alerts] == [("anomaly-sequential", walker.id)] * 2
    assert {a.target_id for a in alerts} == {f.id for f in findings}
    assert raised == 2
    patient_ids = {str(p) for p in lab.patients} | {p.hex for p in lab.patients}
    for finding in findings:  # counts and ratios only: no patient in a finding (I5)
        assert all(isinstance(v, int | float) for v in finding.figures.values())
        assert not patient_ids & {str(v) for v in finding.figures.values()}


def test_a_tenant_s_scan_sees_only_its_own_events(lab: Lab, runtime: Runtime) -> None:
    lab.record(staff("walker"), _irregular(NOW - dt.timedelta(minutes=58), lab.patients[:25], 15))
    with transaction(runtime.sessions) as session:
        other = create_organization(session, runtime.key_provider, "Labo Voisin").id
    with runtime.tenant_sessions(other)() as session:
        assert evaluate(session, other, NOW, LIMITS) == []
    assert lab.evaluate(Rule.SEQUENTIAL) == [("sequential", staff("walker").id)]
