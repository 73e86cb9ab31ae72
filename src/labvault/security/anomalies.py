"""Anomaly rules over the audit log: what a stolen account looks like after the fact.

Budgets (``security.budgets``) stop a scraper at a hard ceiling; these rules look for the
shapes a careful one takes below it, from the audit log alone (every decrypt is an event):

- ``volume``: distinct patients read in the last hour against the principal's own median
  over its active hours of the previous 14 days (an idle hour is no baseline), with a floor
  so that a new or quiet principal is not flagged for a normal morning;
- ``off-hours``: distinct patients read in one Europe/Paris night or weekend period;
- ``search-ratio``: many searches with few records opened after them (probing which NIRs
  or phone numbers exist);
- ``sequential``: records opened in the order they were created, or in id order (random
  UUIDs: only a crawler walking a sorted list gets them in order), or at robotic, regular
  intervals.

Aggregation is SQLAlchemy Core that runs as is on SQLite and PostgreSQL; the little
statistics on top (medians, runs, spreads) are done in Python on per-principal rows bounded
by the window. :func:`scan` records each finding once per rule, principal and overlapping
window (``anomaly_findings``) and raises a :class:`~labvault.security.alerts.Alert` for it.
Findings and alerts hold ids, counts and times only, never a personal value (I5).
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import statistics
import uuid
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent, to_micros
from labvault.patients.models import Patient
from labvault.security.alerts import KIND_LABELS, Alert, AlertSink
from labvault.security.guard_models import AnomalyFinding
from labvault.security.models import AlertSeverity

__all__ = [
    "ANOMALY_LABELS",
    "AnomalyThresholds",
    "Finding",
    "Rule",
    "evaluate",
    "off_hours_periods",
    "scan",
]

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
HOUR = dt.timedelta(hours=1)
HOUR_US = 3_600_000_000
WATCHED_KINDS = (
    PrincipalKind.STAFF.value,
    PrincipalKind.SERVICE.value,
    PrincipalKind.PATIENT.value,
)
"""Whose reads are watched. System jobs (reminders, retention) read in bulk by design and
name themselves; they are bounded by their own code, not by these rules."""
READ_ACTION = AuditAction.PATIENT_RECORD_READ.value
SEARCH_ACTIONS = (
    AuditAction.PATIENT_SEARCH_NIR.value,
    AuditAction.PATIENT_SEARCH_EMAIL.value,
    AuditAction.PATIENT_SEARCH_PHONE.value,
    AuditAction.PATIENT_SEARCH_NAME.value,
    AuditAction.FHIR_SEARCH.value,
)


class Rule(enum.StrEnum):
    VOLUME = "volume"
    OFF_HOURS = "off-hours"
    SEARCH_RATIO = "search-ratio"
    SEQUENTIAL = "sequential"

    @property
    def alert_kind(self) -> str:
        return f"anomaly-{self.value}"


ANOMALY_LABELS: dict[str, str] = {rule.alert_kind: KIND_LABELS[rule.alert_kind] for rule in Rule}
"""French labels of the alert kinds, for the security page and the officers' mail."""


@dataclass(frozen=True, slots=True)
class AnomalyThresholds:
    """When a rule fires. Defaults fit a busy site: a receptionist opens 30 to 60 files in
    a peak hour, a biologist validates a few hundred reports a day in batches."""

    volume_floor: int = 60
    """Distinct patients in an hour below which ``volume`` never fires."""
    volume_factor: float = 4.0
    """``volume`` fires above this many times the principal's median active hour."""
    baseline_days: int = 14
    off_hours_patients: int = 20
    """Distinct patients in one night or weekend period that ``off-hours`` flags."""
    night_starts: dt.time = dt.time(20, 0)
    night_ends: dt.time = dt.time(7, 0)
    search_minimum: int = 30
    """Searches in an hour before ``search-ratio`` looks at the follow-ups."""
    search_follow_up_ratio: float = 0.2
    """``search-ratio`` fires when distinct patients opened / searches is below this."""
    sequential_minimum: int = 20
    """Distinct patients in an hour before ``sequential`` looks at their order."""
    sequential_share: float = 0.9
    """Share of consecutive reads that go the same way (creation time or id) to flag."""
    regular_spread: float = 0.1
    """Coefficient of variation of the intervals between reads under which timing is
    robotic (a person's is well above 0.5)."""


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Rule
    actor_kind: str
    actor_id: str
    window_start: dt.datetime
    window_end: dt.datetime
    figures: dict[str, float | int] = field(default_factory=dict)
    """Counts and ratios only: what the security officer needs to judge the finding."""

    @property
    def severity(self) -> AlertSeverity:
        return AlertSeverity.CRITICAL if self.rule is Rule.VOLUME else AlertSeverity.WARNING


def _reads(tenant_id: uuid.UUID, start: dt.datetime, end: dt.datetime) -> list[ColumnElement[bool]]:
    return [
        AuditEvent.tenant_id == tenant_id,
        AuditEvent.action == READ_ACTION,
        AuditEvent.target_type == "patient",
        AuditEvent.outcome == "success",
        AuditEvent.actor_kind.in_(WATCHED_KINDS),
        AuditEvent.occurred_us >= to_micros(start),
        AuditEvent.occurred_us < to_micros(end),
    ]


def _distinct_patients(
    session: Session, tenant_id: uuid.UUID, start: dt.datetime, end: dt.datetime
) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(
            AuditEvent.actor_kind,
            AuditEvent.actor_id,
            func.count(AuditEvent.target_id.distinct()),
        )
        .where(*_reads(tenant_id, start, end))
        .group_by(AuditEvent.actor_kind, AuditEvent.actor_id)
    ).all()
    return {(kind, actor): int(count) for kind, actor, count in rows}


def volume(
    session: Session, tenant_id: uuid.UUID, now: dt.datetime, limits: AnomalyThresholds
) -> list[Finding]:
    """Last hour against the median of the principal's active hours before it."""
    start = now - HOUR
    current = _distinct_patients(session, tenant_id, start, now)
    suspects = {key: n for key, n in current.items() if n >= limits.volume_floor}
    if not suspects:
        return []
    since = start - dt.timedelta(days=limits.baseline_days)
    # Hour buckets counted from ``since``: integer arithmetic, the same on both backends.
    bucket = (AuditEvent.occurred_us - to_micros(since)) // HOUR_US
    rows = session.execute(
        select(AuditEvent.actor_id, bucket, func.count(AuditEvent.target_id.distinct()))
        .where(
            *_reads(tenant_id, since, start),
            AuditEvent.actor_id.in_([actor for _, actor in suspects]),
        )
        .group_by(AuditEvent.actor_id, bucket)
    ).all()
    hourly: dict[str, list[int]] = defaultdict(list)
    for actor, _bucket, count in rows:
        hourly[actor].append(int(count))
    found = []
    for (kind, actor), count in sorted(suspects.items()):
        median = statistics.median(hourly[actor]) if hourly[actor] else 0
        if count >= max(limits.volume_floor, limits.volume_factor * median):
            found.append(
                Finding(
                    Rule.VOLUME,
                    kind,
                    actor,
                    start,
                    now,
                    {
                        "patients": count,
                        "baseline_median": float(median),
                        "baseline_hours": len(hourly[actor]),
                    },
                )
            )
    return found


def off_hours_periods(
    start: dt.datetime, end: dt.datetime, limits: AnomalyThresholds
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The Paris nights and weekends overlapping ``[start, end)``, in UTC, each whole.

    Computed from local dates with ``zoneinfo`` so that DST nights are an hour shorter or
    longer, not shifted. A weekend runs from Friday evening to Monday morning; the periods
    are whole (not clipped), so each has one stable start to deduplicate on."""
    periods: list[tuple[dt.datetime, dt.datetime]] = []
    day = start.astimezone(PARIS).date() - dt.timedelta(days=3)
    last = end.astimezone(PARIS).date() + dt.timedelta(days=1)
    while day <= last:
        # The night beginning this evening ends next morning, or on Monday for a Friday.
        if day.weekday() < 5:
            follow = 3 if day.weekday() == 4 else 1
            begins = dt.datetime.combine(day, limits.night_starts, PARIS)
            ends = dt.datetime.combine(day + dt.timedelta(days=follow), limits.night_ends, PARIS)
            utc = (begins.astimezone(dt.UTC), ends.astimezone(dt.UTC))
            if utc[0] < end and utc[1] > start:
                periods.append(utc)
        day += dt.timedelta(days=1)
    return periods


def off_hours(
    session: Session,
    tenant_id: uuid.UUID,
    now: dt.datetime,
    limits: AnomalyThresholds,
    since: dt.datetime | None = None,
) -> list[Finding]:
    """Distinct patients per principal in each night or weekend period since ``since``."""
    since = since or now - dt.timedelta(days=1)
    periods = off_hours_periods(since, now, limits)
    if not periods:
        return []
    found = []
    for begins, ends in periods:
        counts = _distinct_patients(session, tenant_id, max(begins, since), min(ends, now))
        for (kind, actor), count in sorted(counts.items()):
            if count >= limits.off_hours_patients:
                found.append(
                    Finding(Rule.OFF_HOURS, kind, actor, begins, ends, {"patients": count})
                )
    return found


def search_ratio(
    session: Session, tenant_id: uuid.UUID, now: dt.datetime, limits: AnomalyThresholds
) -> list[Finding]:
    """Searches in the last hour against the distinct records opened in it."""
    start = now - HOUR
    rows = session.execute(
        select(AuditEvent.actor_kind, AuditEvent.actor_id, func.count())
        .where(
            AuditEvent.tenant_id == tenant_id,
            AuditEvent.action.in_(SEARCH_ACTIONS),
            AuditEvent.actor_kind.in_(WATCHED_KINDS),
            AuditEvent.occurred_us >= to_micros(start),
            AuditEvent.occurred_us < to_micros(now),
        )
        .group_by(AuditEvent.actor_kind, AuditEvent.actor_id)
    ).all()
    searches = {(kind, actor): int(n) for kind, actor, n in rows if n >= limits.search_minimum}
    if not searches:
        return []
    opened = _distinct_patients(session, tenant_id, start, now)
    found = []
    for key, count in sorted(searches.items()):
        reads = opened.get(key, 0)
        ratio = reads / count
        if ratio < limits.search_follow_up_ratio:
            found.append(
                Finding(
                    Rule.SEARCH_RATIO,
                    key[0],
                    key[1],
                    start,
                    now,
                    {"searches": count, "patients": reads, "ratio": round(ratio, 3)},
                )
            )
    return found


def _same_direction_share(values: Sequence[Any]) -> float:
    """The larger share of consecutive pairs going up or going down (ties count for both):
    about 0.5 for a random order, 1.0 for a walk along a sorted list."""
    pairs = list(itertools.pairwise(values))
    if not pairs:
        return 0.0
    up = sum(1 for a, b in pairs if a <= b)
    down = sum(1 for a, b in pairs if a >= b)
    return max(up, down) / len(pairs)


def _spread(moments: Sequence[int]) -> float | None:
    """Coefficient of variation of the gaps between distinct moments (None: too few)."""
    distinct = sorted(set(moments))
    gaps = [b - a for a, b in itertools.pairwise(distinct)]
    if len(gaps) < 2:
        return None
    mean = statistics.fmean(gaps)
    return statistics.pstdev(gaps) / mean if mean else None


def sequential(
    session: Session, tenant_id: uuid.UUID, now: dt.datetime, limits: AnomalyThresholds
) -> list[Finding]:
    """Records opened in creation or id order, or at regular intervals, in the last hour.

    Each patient counts once, at its first read in the window; patients read in the same
    instant (one batch) carry no order and are sorted by id, which a random walk would not
    keep, so a batch is not taken for a crawl: only instants between batches count."""
    start = now - HOUR
    counts = _distinct_patients(session, tenant_id, start, now)
    suspects = [key for key, n in counts.items() if n >= limits.sequential_minimum]
    if not suspects:
        return []
    first = (
        select(
            AuditEvent.actor_kind.label("kind"),
            AuditEvent.actor_id.label("actor"),
            AuditEvent.target_id.label("patient"),
            func.min(AuditEvent.occurred_us).label("at"),
        )
        .where(
            *_reads(tenant_id, start, now),
            AuditEvent.actor_id.in_([actor for _, actor in suspects]),
        )
        .group_by(AuditEvent.actor_kind, AuditEvent.actor_id, AuditEvent.target_id)
        .subquery()
    )
    rows = session.execute(
        select(first.c.kind, first.c.actor, first.c.at, Patient.created_at, Patient.id)
        .where(Patient.id == first.c.patient, Patient.tenant_id == tenant_id)
        .order_by(first.c.kind, first.c.actor, first.c.at, Patient.id)
    ).all()
    walks: dict[tuple[str, str], list[tuple[int, dt.datetime, uuid.UUID]]] = defaultdict(list)
    for kind, actor, at, created, patient in rows:
        walks[(kind, actor)].append((int(at), created, patient))
    found = []
    for (kind, actor), walk in sorted(walks.items()):
        if len(walk) < limits.sequential_minimum:
            continue
        by_instant = _one_per_instant(walk)
        created_share = _same_direction_share([c for _, c, _ in by_instant])
        id_share = _same_direction_share([p.hex for _, _, p in by_instant])
        spread = _spread([at for at, _, _ in walk])
        ordered = len(by_instant) > limits.sequential_minimum // 2 and (
            max(created_share, id_share) >= limits.sequential_share
        )
        robotic = spread is not None and spread < limits.regular_spread
        if ordered or robotic:
            found.append(
                Finding(
                    Rule.SEQUENTIAL,
                    kind,
                    actor,
                    start,
                    now,
                    {
                        "patients": len(walk),
                        "instants": len(by_instant),
                        "creation_order": round(created_share, 3),
                        "id_order": round(id_share, 3),
                        "timing_spread": -1.0 if spread is None else round(spread, 3),
                    },
                )
            )
    return found


def _one_per_instant(
    walk: Sequence[tuple[int, dt.datetime, uuid.UUID]],
) -> list[tuple[int, dt.datetime, uuid.UUID]]:
    """The first patient of each instant: a batch's internal order is ours, not the actor's."""
    seen: set[int] = set()
    kept = []
    for item in walk:
        if item[0] not in seen:
            seen.add(item[0])
            kept.append(item)
    return kept


def evaluate(
    session: Session,
    tenant_id: uuid.UUID,
    now: dt.datetime,
    limits: AnomalyThresholds | None = None,
    *,
    since: dt.datetime | None = None,
    rules: Iterable[Rule] = tuple(Rule),
) -> list[Finding]:
    """Every rule's findings at ``now`` (nothing written). ``since`` widens the off-hours
    look-back (default: one day)."""
    limits = limits or AnomalyThresholds()
    wanted = set(rules)
    found: list[Finding] = []
    if Rule.VOLUME in wanted:
        found += volume(session, tenant_id, now, limits)
    if Rule.OFF_HOURS in wanted:
        found += off_hours(session, tenant_id, now, limits, since)
    if Rule.SEARCH_RATIO in wanted:
        found += search_ratio(session, tenant_id, now, limits)
    if Rule.SEQUENTIAL in wanted:
        found += sequential(session, tenant_id, now, limits)
    return found


@dataclass(frozen=True, slots=True)
class ScanReport:
    findings: list[Finding]
    """Every finding of this scan."""
    new: list[tuple[uuid.UUID, Finding]]
    """The findings recorded (and alerted) by this scan, with their record's id."""


def _already_found(session: Session, tenant_id: uuid.UUID, finding: Finding) -> bool:
    return (
        session.scalar(
            select(AnomalyFinding.id)
            .where(
                AnomalyFinding.tenant_id == tenant_id,
                AnomalyFinding.rule == finding.rule.value,
                AnomalyFinding.actor_id == finding.actor_id,
                AnomalyFinding.window_start < finding.window_end,
                AnomalyFinding.window_end > finding.window_start,
            )
            .limit(1)
        )
        is not None
    )


def scan(
    session: Session,
    tenant_id: uuid.UUID,
    now: dt.datetime,
    alerts: AlertSink,
    limits: AnomalyThresholds | None = None,
    *,
    since: dt.datetime | None = None,
    rules: Iterable[Rule] = tuple(Rule),
) -> ScanReport:
    """Evaluate every rule, record the new findings and raise one alert for each.

    A finding is new unless the same rule already flagged the same principal over an
    overlapping window: a scraper at work for three hours raises one volume alert per hour
    of work, not one per scan. Runs in the caller's transaction."""
    findings = evaluate(session, tenant_id, now, limits, since=since, rules=rules)
    new: list[tuple[uuid.UUID, Finding]] = []
    for finding in findings:
        if _already_found(session, tenant_id, finding):
            continue
        row = AnomalyFinding(
            tenant_id=tenant_id,
            rule=finding.rule.value,
            actor_kind=finding.actor_kind,
            actor_id=finding.actor_id,
            window_start=finding.window_start,
            window_end=finding.window_end,
            figures=dict(finding.figures),
            created_at=now,
        )
        session.add(row)
        session.flush()
        alerts.raise_alert(
            Alert(
                tenant_id=tenant_id,
                kind=finding.rule.alert_kind,
                severity=finding.severity,
                actor=Principal(PrincipalKind(finding.actor_kind), finding.actor_id),
                target_type="anomaly-finding",
                target_id=row.id,
            )
        )
        new.append((row.id, finding))
    return ScanReport(findings, new)


def window_text(finding: Finding) -> str:
    """``30/11 21:00 → 01/12 07:00`` in Paris time, for tables and pages."""
    begins = finding.window_start.astimezone(PARIS).strftime("%d/%m %H:%M")
    ends = finding.window_end.astimezone(PARIS).strftime("%d/%m %H:%M")
    return f"{begins} → {ends}"
