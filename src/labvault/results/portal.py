"""What a patient account sees of its results: released reports of the records it acts for.

Why it is built this way:

- Only ``released`` reports exist for a patient: a report still to validate, validated but
  waiting for a phone call, another patient's, another tenant's or an unknown id are one
  and the same audited "not found" (I7), decided before any key is unwrapped.
- Every sealed value (report content, order details, observations, the PDF) is opened
  through :meth:`PatientRepository.open_for` under the policy's ``result`` read: the policy
  decides first, the keyring audits each opening in the same transaction (fails closed).
- Trends are the previous values of the same code in the patient's other released reports:
  they are opened in the same batch as the report's own observations, under the same key.
- "Nouveau" is derived from the audit log (a report no patient account has opened yet), so
  that no column says when a patient read what.

:class:`ReportReader` is the part that does not depend on who reads: the portal uses it with
the account's scope, a share link (``labvault.results.sharing``) with a system principal
named after the share.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.core.access.policies import Interaction
from labvault.core.access.principals import PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditedRefusalError, Outcome
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.keyring import Keyring
from labvault.organizations.models import Site
from labvault.patients.scope import AccessScope
from labvault.patients.services import PatientRepository, SealedItem
from labvault.results.content import (
    Coding,
    ObservationContent,
    OrderDetails,
    ReportContent,
    load,
)
from labvault.results.models import (
    ReportStatus,
    ResultObservation,
    ResultOrder,
    ResultReport,
)

__all__ = [
    "FLAG_WORDS",
    "PORTAL_PURPOSE",
    "REPORT_TARGET",
    "RESOURCE",
    "ObservationLine",
    "ReportDetail",
    "ReportReader",
    "ReportSummary",
    "ResultNotFoundError",
    "ResultPortal",
    "TrendPoint",
    "flag_words",
    "format_value",
]

RESOURCE: Final = "result"
PORTAL_PURPOSE: Final = "results"
PDF_PURPOSE: Final = "result-pdf"
REPORT_TARGET: Final = "result-report"
REPORTS_TABLE: Final = ResultReport.__tablename__
ORDERS_TABLE: Final = ResultOrder.__tablename__
OBSERVATIONS_TABLE: Final = ResultObservation.__tablename__
MAX_REPORTS: Final = 200
"""The newest released reports a list shows (and a trend looks back over)."""
TREND_POINTS: Final = 5
"""How many previous values of a code a trend shows."""

FLAG_WORDS: Final[dict[str, str]] = {
    "L": "Inférieur à la normale",
    "H": "Supérieur à la normale",
    "LL": "Très inférieur à la normale (valeur critique)",
    "HH": "Très supérieur à la normale (valeur critique)",
    "<": "Inférieur au seuil de mesure",
    ">": "Supérieur au seuil de mesure",
    "N": "Normal",
    "A": "Anormal",
    "AA": "Très anormal (valeur critique)",
    "U": "En nette hausse",
    "D": "En nette baisse",
    "B": "En amélioration",
    "W": "En dégradation",
    "S": "Sensible",
    "R": "Résistant",
    "I": "Intermédiaire",
    "MS": "Modérément sensible",
    "VS": "Très sensible",
    "POS": "Positif",
    "NEG": "Négatif",
    "IND": "Indéterminé",
    "DET": "Détecté",
    "ND": "Non détecté",
}
"""HL7 table 0078 (abnormal flags), in words: a patient never has to decode ``HH``."""
NORMAL_FLAGS: Final = frozenset({"N", "NEG", "ND", "S", "VS"})


class ResultNotFoundError(AuditedRefusalError, LookupError):
    """The report is absent, not released, or not the caller's: one answer (404)."""


def flag_words(flags: Iterable[str]) -> tuple[str, ...]:
    """The flags as words; an unknown flag is "Signalé par le laboratoire" (never echoed)."""
    words: list[str] = []
    for flag in flags:
        word = FLAG_WORDS.get(flag.strip().upper(), "Signalé par le laboratoire")
        if word not in words:
            words.append(word)
    return tuple(words)


def _abnormal(flags: Iterable[str]) -> bool:
    return any(f.strip() and f.strip().upper() not in NORMAL_FLAGS for f in flags)


def format_value(observation: ObservationContent) -> str:
    """The value as a French reader writes it: ``4,5`` for a number, the text of a coded
    value (``code^text`` → ``text``), the sender's text otherwise."""
    if observation.number is not None:
        return _french_number(observation.number)
    text = observation.text.strip()
    if observation.value_type == "CE" or observation.value_type == "CWE":
        parts = text.split("^")
        if len(parts) > 1 and parts[1].strip():
            return parts[1].strip()
    return text


def _french_number(number: Decimal) -> str:
    return format(number, "f").replace(".", ",")


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive UTC datetimes."""
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _label(code: Coding) -> str:
    return code.display.strip() or code.code


# --- what the pages show ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class ReportSummary:
    """One released report as a list shows it. Its repr names the id only."""

    id: uuid.UUID
    patient_id: uuid.UUID
    title: str
    site: str | None
    sampled_at: dt.datetime | None
    released_at: dt.datetime | None
    new: bool
    has_pdf: bool

    def __repr__(self) -> str:
        return f"ReportSummary({self.id})"

    @property
    def date(self) -> dt.datetime | None:
        """When it is dated for the patient: the sampling, else its release."""
        return self.sampled_at or self.released_at


@dataclass(frozen=True, slots=True)
class TrendPoint:
    at: dt.datetime | None
    value: str
    unit: str
    flags: tuple[str, ...]

    def __repr__(self) -> str:
        return "TrendPoint(<redacted>)"


@dataclass(frozen=True, slots=True, repr=False)
class ObservationLine:
    position: int
    code: Coding
    label: str
    value: str
    unit: str
    reference_range: str
    flags: tuple[str, ...]
    """In words (:data:`FLAG_WORDS`)."""
    abnormal: bool
    preliminary: bool
    notes: tuple[str, ...]
    observed_at: dt.datetime | None
    previous: tuple[TrendPoint, ...] = ()
    """The same code's earlier values, newest first (at most :data:`TREND_POINTS`)."""

    def __repr__(self) -> str:
        return f"ObservationLine({self.position})"


@dataclass(frozen=True, slots=True, repr=False)
class ReportDetail:
    summary: ReportSummary
    conclusion: str
    notes: tuple[str, ...]
    prescriber: str
    observations: tuple[ObservationLine, ...] = field(default_factory=tuple)

    def __repr__(self) -> str:
        return f"ReportDetail({self.summary.id})"


# --- reading, whoever reads ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Opened:
    report: ResultReport
    content: ReportContent
    order: OrderDetails | None
    site: str | None


class ReportReader:
    """Released reports opened through ``repository`` (its principal's policy decides, its
    keyring audits), with ``purpose`` on every opening."""

    def __init__(
        self, session: Session, repository: PatientRepository, tenant_id: uuid.UUID, purpose: str
    ) -> None:
        self._session = session
        self._repository = repository
        self._tenant_id = tenant_id
        self._purpose = purpose

    def released(self, report_id: uuid.UUID) -> ResultReport | None:
        """The report if it exists in this tenant and is released (nothing opened)."""
        return self._session.scalars(
            select(ResultReport).where(
                ResultReport.tenant_id == self._tenant_id,
                ResultReport.id == report_id,
                ResultReport.status == ReportStatus.RELEASED.value,
            )
        ).one_or_none()

    def released_of(self, patient_ids: Iterable[uuid.UUID]) -> list[ResultReport]:
        """The newest released reports of these patients (nothing opened)."""
        wanted = sorted(set(patient_ids))
        if not wanted:
            return []
        return list(
            self._session.scalars(
                select(ResultReport)
                .where(
                    ResultReport.tenant_id == self._tenant_id,
                    ResultReport.patient_id.in_(wanted),
                    ResultReport.status == ReportStatus.RELEASED.value,
                )
                .order_by(ResultReport.released_at.desc(), ResultReport.id)
                .limit(MAX_REPORTS)
            )
        )

    def summaries(
        self, reports: Sequence[ResultReport], opened_ids: frozenset[uuid.UUID] = frozenset()
    ) -> list[ReportSummary]:
        """Each report with its title, site and dates (opened under the patients' keys);
        reports whose key is out of reach are left out."""
        return [
            self._summary(item, new=item.report.id not in opened_ids)
            for item in self._open(reports)
        ]

    def detail(
        self, report: ResultReport, *, new: bool = False, trends: bool = True
    ) -> ReportDetail:
        """The report, its observations and, with ``trends``, for each the same code's
        earlier values in the patient's other released reports (a share link shows one
        report only: no trends, nothing of the other reports is opened)."""
        history = (
            [r for r in self.released_of([report.patient_id]) if r.id != report.id]
            if trends
            else []
        )
        opened = {item.report.id: item for item in self._open([report, *history])}
        if report.id not in opened:
            raise LookupError("report key out of reach")
        rows = list(
            self._session.scalars(
                select(ResultObservation)
                .where(
                    ResultObservation.tenant_id == self._tenant_id,
                    ResultObservation.report_id.in_(sorted(opened)),
                )
                .order_by(ResultObservation.report_id, ResultObservation.position)
            )
        )
        values = self._repository.open_for(
            RESOURCE,
            [
                SealedItem(row.patient_id, OBSERVATIONS_TABLE, row.id, {"content": row.content})
                for row in rows
            ],
            purpose=self._purpose,
        )
        by_report: dict[uuid.UUID, list[tuple[int, ObservationContent]]] = {}
        for row in rows:
            blob = values.get(row.id, {}).get("content")
            if blob is None:
                continue
            by_report.setdefault(row.report_id, []).append(
                (row.position, load(ObservationContent, blob))
            )
        this = opened[report.id]
        summary = self._summary(this, new=new)
        lines = []
        for position, observation in by_report.get(report.id, []):
            lines.append(
                ObservationLine(
                    position=position,
                    code=observation.code,
                    label=_label(observation.code),
                    value=format_value(observation),
                    unit=observation.unit,
                    reference_range=observation.reference_range,
                    flags=flag_words(observation.abnormal_flags),
                    abnormal=_abnormal(observation.abnormal_flags),
                    preliminary=observation.status == "P",
                    notes=observation.notes,
                    observed_at=_aware(observation.observed_at),
                    previous=self._previous(
                        observation, summary, opened, by_report, exclude=report.id
                    ),
                )
            )
        prescriber = this.order.prescriber.name if this.order is not None else ""
        return ReportDetail(
            summary=summary,
            conclusion=this.content.conclusion,
            notes=this.content.notes,
            prescriber=prescriber,
            observations=tuple(lines),
        )

    def pdf(self, report: ResultReport) -> bytes | None:
        """The report's PDF, opened; ``None`` when it has none (or its key is out of reach)."""
        if report.pdf is None:
            return None
        opened = self._repository.open_for(
            RESOURCE,
            [SealedItem(report.patient_id, REPORTS_TABLE, report.id, {"pdf": report.pdf})],
            purpose=self._purpose,
        )
        return opened.get(report.id, {}).get("pdf")

    # -- internals -------------------------------------------------------------------------

    def _open(self, reports: Sequence[ResultReport]) -> list[_Opened]:
        if not reports:
            return []
        orders = {
            order.id: order
            for order in self._session.scalars(
                select(ResultOrder).where(
                    ResultOrder.tenant_id == self._tenant_id,
                    ResultOrder.id.in_(sorted({r.order_id for r in reports})),
                )
            )
        }
        site_ids = sorted({o.site_id for o in orders.values() if o.site_id is not None})
        sites: dict[uuid.UUID, str] = {}
        if site_ids:
            for site_id, name in self._session.execute(
                select(Site.id, Site.name).where(
                    Site.tenant_id == self._tenant_id, Site.id.in_(site_ids)
                )
            ):
                sites[site_id] = name
        items = [
            SealedItem(r.patient_id, REPORTS_TABLE, r.id, {"content": r.content}) for r in reports
        ]
        items += [
            SealedItem(o.patient_id, ORDERS_TABLE, o.id, {"details": o.details})
            for o in orders.values()
        ]
        opened = self._repository.open_for(RESOURCE, items, purpose=self._purpose)
        result = []
        for report in reports:
            content = opened.get(report.id, {}).get("content")
            if content is None:
                continue
            order = orders.get(report.order_id)
            details = opened.get(order.id, {}).get("details") if order is not None else None
            result.append(
                _Opened(
                    report=report,
                    content=load(ReportContent, content),
                    order=load(OrderDetails, details) if details is not None else None,
                    site=sites.get(order.site_id) if order and order.site_id else None,
                )
            )
        return result

    @staticmethod
    def _summary(item: _Opened, *, new: bool) -> ReportSummary:
        report = item.report
        title = item.content.title.strip()
        if not title and item.order is not None and item.order.exams:
            title = ", ".join(_label(exam) for exam in item.order.exams)
        return ReportSummary(
            id=report.id,
            patient_id=report.patient_id,
            title=title or "Compte rendu d'analyses",
            site=item.site,
            sampled_at=_aware(item.order.collected_at) if item.order is not None else None,
            released_at=_aware(report.released_at),
            new=new,
            has_pdf=report.pdf is not None,
        )

    def _previous(
        self,
        observation: ObservationContent,
        summary: ReportSummary,
        opened: dict[uuid.UUID, _Opened],
        by_report: dict[uuid.UUID, list[tuple[int, ObservationContent]]],
        *,
        exclude: uuid.UUID,
    ) -> tuple[TrendPoint, ...]:
        key = (observation.code.system, observation.code.code)
        current = _aware(observation.observed_at) or summary.date
        points: list[tuple[dt.datetime | None, TrendPoint]] = []
        for report_id, observations in by_report.items():
            if report_id == exclude:
                continue
            other = self._summary(opened[report_id], new=False)
            for _, earlier in observations:
                if (earlier.code.system, earlier.code.code) != key:
                    continue
                at = _aware(earlier.observed_at) or other.date
                if current is not None and at is not None and at > current:
                    continue  # a later report: not "previous"
                points.append(
                    (
                        at,
                        TrendPoint(
                            at=at,
                            value=format_value(earlier),
                            unit=earlier.unit,
                            flags=flag_words(earlier.abnormal_flags),
                        ),
                    )
                )
        floor = dt.datetime.min.replace(tzinfo=dt.UTC)
        points.sort(key=lambda pair: pair[0] or floor, reverse=True)
        return tuple(point for _, point in points[:TREND_POINTS])


# --- the patient account's portal -------------------------------------------------------------


class ResultPortal:
    """A patient account's released reports: its own record's and its dependents'."""

    def __init__(self, session: Session, keyring: Keyring, scope: AccessScope) -> None:
        if scope.principal.kind is not PrincipalKind.PATIENT:
            raise ValueError("the results portal is for patient accounts")
        self._session = session
        self._keyring = keyring
        self._scope = scope
        self._repository = PatientRepository(session, keyring, scope)
        self._reader = ReportReader(session, self._repository, keyring.tenant_id, PORTAL_PURPOSE)

    @property
    def tenant_id(self) -> uuid.UUID:
        return self._keyring.tenant_id

    def reachable(self) -> frozenset[uuid.UUID]:
        """The records whose results the account may read today (policy ``result`` read)."""
        return self._repository.in_scope_ids(
            sorted(self._scope.own_patient_ids), RESOURCE, Interaction.READ
        )

    def reports(self) -> list[ReportSummary]:
        """Released reports of the reachable records, newest first."""
        reports = self._reader.released_of(self.reachable())
        return self._reader.summaries(reports, self._opened_ids([r.id for r in reports]))

    def report(self, report_id: uuid.UUID) -> ReportDetail:
        """One released report, opened; marks it as opened (an audit event) for "nouveau".
        Raises the audited :class:`ResultNotFoundError`."""
        found = self.require(report_id, AuditAction.RESULT_PORTAL_READ, PORTAL_PURPOSE)
        new = found.id not in self._opened_ids([found.id])
        try:
            detail = self._reader.detail(found, new=new)
        except LookupError:
            raise self.refused(report_id, AuditAction.RESULT_PORTAL_READ, PORTAL_PURPOSE) from None
        self._keyring.audit.record(
            AuditAction.RESULT_PORTAL_READ,
            tenant_id=self.tenant_id,
            target_type=REPORT_TARGET,
            target_id=found.id,
            purpose=PORTAL_PURPOSE,
        )
        return detail

    def pdf(self, report_id: uuid.UUID) -> bytes:
        """The report's PDF; the audited 404 when there is none or it is not the caller's."""
        found = self.require(report_id, AuditAction.RESULT_PORTAL_DOWNLOAD, PDF_PURPOSE)
        reader = ReportReader(self._session, self._repository, self.tenant_id, PDF_PURPOSE)
        content = reader.pdf(found)
        if content is None:
            raise self.refused(report_id, AuditAction.RESULT_PORTAL_DOWNLOAD, PDF_PURPOSE)
        self._keyring.audit.record(
            AuditAction.RESULT_PORTAL_DOWNLOAD,
            tenant_id=self.tenant_id,
            target_type=REPORT_TARGET,
            target_id=found.id,
            purpose=PDF_PURPOSE,
        )
        return content

    def require(self, report_id: uuid.UUID, action: AuditAction, purpose: str) -> ResultReport:
        """The released report of a reachable record, nothing opened; else the audited 404."""
        found = self._reader.released(report_id)
        if found is None or found.patient_id not in self.reachable():
            raise self.refused(report_id, action, purpose)
        return found

    def refused(
        self, report_id: uuid.UUID, action: AuditAction, purpose: str
    ) -> ResultNotFoundError:
        """The uniform "not found", carrying its "denied" event (written after the unit of
        work is rolled back, by ``audited_transaction``)."""
        error = self._keyring.audit.refusal(
            ResultNotFoundError("not found"),
            action,
            tenant_id=self.tenant_id,
            target_type=REPORT_TARGET,
            target_id=report_id,
            purpose=purpose,
        )
        assert isinstance(error, ResultNotFoundError)
        return error

    def _opened_ids(self, report_ids: Sequence[uuid.UUID]) -> frozenset[uuid.UUID]:
        """Reports a patient account has already opened (read from the audit log)."""
        if not report_ids:
            return frozenset()
        found = self._session.scalars(
            select(AuditEvent.target_id)
            .where(
                AuditEvent.target_type == REPORT_TARGET,
                AuditEvent.target_id.in_(sorted(set(report_ids))),
                AuditEvent.tenant_id == self.tenant_id,
                AuditEvent.action == AuditAction.RESULT_PORTAL_READ.value,
                AuditEvent.actor_kind == PrincipalKind.PATIENT.value,
                AuditEvent.outcome == Outcome.SUCCESS.value,
            )
            .distinct()
        )
        return frozenset(r for r in found if r is not None)
