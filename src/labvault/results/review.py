"""The biologist's workflow: the reports to validate, one report with its previous values,
validation (step-up), the phone call of a sensitive result, release to the patient and
delivery to the prescriber.

Who
    Everything goes through the staff member's :class:`PatientRepository` and its policy:
    the queue and the validation need ``result:update`` (the biologist's grant), on patients
    in the relationship scope of the biologist's sites. Anything else is "not found"
    (:class:`ReportNotFoundError`, answered 404 like an unknown id, I7).

What is decrypted
    The queue opens the patients' identity (name, birth date) and each report's sealed
    content (title, phone delivery) for the rows it shows: at most :data:`QUEUE_LIMIT`, the
    oldest first. A report page opens that report, its order, its observations and those of
    the patient's earlier reports (previous value of the same code) and, for a corrected
    report, those of the last superseded version that had been validated or released (kept
    in ``result_observation_versions``, opened in their original ``result_observations``
    place). Every opening is
    audited by the keyring (``patient:record:read`` with the purpose), plus
    ``result:review:list`` / ``result:review:read``.

Validating
    A fresh step-up is required (``require_step_up``). The caller names the version it saw:
    a correction that arrived meanwhile bumped it, and the validation is refused (nothing
    written; the refusal audited). A report whose sealed delivery is ONLINE is released at
    once (the patient is emailed, the prescriber's document dropped); a PHONE one stays
    validated until :meth:`ReviewService.record_phone_call`. Validation places the legal
    hold ``lab-report-retention`` (10 years) unless one running as long is in force: a
    report must be kept that long. The hold, the email and the delivery act as named system
    principals (``results:retention-hold``, ``results:notify``), greppable escalations.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from labvault.core.access.policies import Interaction
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext, AuditedRefusalError
from labvault.core.crypto.keyring import Keyring, TenantKeyring
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.db import utcnow
from labvault.core.logging import get_logger
from labvault.patients.holds import active_hold, local_today, place_hold
from labvault.patients.models import LegalHoldReason, Patient
from labvault.patients.scope import AccessDeniedError, AccessScope
from labvault.patients.scope import in_scope as policy_scope
from labvault.patients.services import SUBJECT_TYPE, PatientRecord, PatientRepository, SealedItem
from labvault.results.content import (
    Coding,
    ContentError,
    Delivery,
    ObservationContent,
    OrderDetails,
    ReportContent,
    dump,
    load,
)
from labvault.results.delivery import DeliveryError, PrescriberDocument, ResultDelivery
from labvault.results.models import (
    ReportStatus,
    ResultObservation,
    ResultObservationVersion,
    ResultOrder,
    ResultReport,
    ResultReportVersion,
)
from labvault.results.notify import ResultNotifier

__all__ = [
    "DELIVERY_PURPOSE",
    "FLAG_WORDS",
    "HOLD_PRINCIPAL",
    "HOLD_YEARS",
    "QUEUE_LIMIT",
    "READ_PURPOSE",
    "REDELIVERY_PRINCIPAL",
    "RESOURCE",
    "VALIDATE_PURPOSE",
    "InvalidReviewInputError",
    "ObservationView",
    "Outcome",
    "PreviousValue",
    "QueueItem",
    "ReportNotFoundError",
    "ReportView",
    "ReviewRefusedError",
    "ReviewService",
    "ValidatedValue",
    "ValidatedVersion",
    "VersionChangedError",
    "WrongStateError",
    "deliver_pending",
    "flag_words",
    "prescriber_document",
]

RESOURCE: Final = "result"
READ_PURPOSE: Final = "result-review"
VALIDATE_PURPOSE: Final = "result-validation"
DELIVERY_PURPOSE: Final = "result-delivery"
QUEUE_LIMIT: Final = 50
"""Rows decrypted for one queue page: the oldest first; the rest wait for the next page."""
HISTORY_REPORTS: Final = 20
"""Earlier reports opened for previous values (the most recent ones)."""
HOLD_YEARS: Final = 10
HOLD_PRINCIPAL: Final = SystemPrincipal("results:retention-hold")
MAX_CONCLUSION: Final = 20_000
MAX_PHONE_NOTE: Final = 2_000
REPORTS_TABLE: Final = ResultReport.__tablename__
ORDERS_TABLE: Final = ResultOrder.__tablename__
OBSERVATIONS_TABLE: Final = ResultObservation.__tablename__
IN_QUEUE: Final = (ReportStatus.TO_VALIDATE.value, ReportStatus.VALIDATED.value)
SHOWN_TO_SOMEONE: Final = (ReportStatus.VALIDATED.value, ReportStatus.RELEASED.value)
"""A superseded version a biologist validated (and maybe the patient was shown)."""

FLAG_WORDS: Final = {
    "H": "élevé",
    "HH": "très élevé (critique)",
    "L": "bas",
    "LL": "très bas (critique)",
    "A": "anormal",
    "AA": "très anormal (critique)",
    "N": "normal",
    ">": "au-dessus du seuil de mesure",
    "<": "en dessous du seuil de mesure",
}

_log = get_logger("labvault.results")


def flag_words(flags: Sequence[str]) -> tuple[str, ...]:
    """The abnormal flags (HL7 table 0078) in French words; unknown ones as they are."""
    return tuple(FLAG_WORDS.get(flag, flag) for flag in flags if flag)


class ReportNotFoundError(AuditedRefusalError, LookupError):
    """Unknown, another tenant's, out of scope, or not granted: one answer (404)."""

    def __init__(self) -> None:
        super().__init__("Introuvable.")


class ReviewRefusedError(AuditedRefusalError):
    """A refusal the biologist can act on; its text is French and names no value."""


class VersionChangedError(ReviewRefusedError):
    def __init__(self) -> None:
        super().__init__(
            "Ce compte rendu a changé depuis que vous l'avez ouvert (un complément ou une "
            "correction est arrivé). Relisez-le, puis validez à nouveau."
        )


class WrongStateError(ReviewRefusedError):
    def __init__(self, message: str = "Ce compte rendu n'est pas (ou plus) à valider.") -> None:
        super().__init__(message)


class InvalidReviewInputError(ValueError):
    """A form value that cannot be used (too long, empty); nothing was written."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a validation or a phone call record did."""

    status: ReportStatus
    released: bool = False
    notified: int = 0
    delivered: bool = False
    hold_placed: bool = False


@dataclass(frozen=True, slots=True, repr=False)
class QueueItem:
    report_id: uuid.UUID
    patient_id: uuid.UUID
    patient_name: str
    birth_date: dt.date | None
    received_at: dt.datetime
    status: ReportStatus
    lis_status: str
    title: str
    phone: bool

    def __repr__(self) -> str:
        return f"QueueItem(report_id={self.report_id})"


@dataclass(frozen=True, slots=True, repr=False)
class PreviousValue:
    value: str
    unit: str
    flags: tuple[str, ...]
    at: dt.datetime

    def __repr__(self) -> str:
        return "PreviousValue(<redacted>)"


@dataclass(frozen=True, slots=True, repr=False)
class ValidatedValue:
    """An observation of the last validated version this report replaced."""

    position: int
    code: Coding
    value: str
    unit: str
    reference_range: str
    flags: tuple[str, ...]

    def __repr__(self) -> str:
        return f"ValidatedValue(position={self.position})"


@dataclass(frozen=True, slots=True, repr=False)
class ValidatedVersion:
    """The most recent superseded version of the report that had been validated or
    released: what a correction replaced. ``unmatched``: its observations that match none
    of the current ones (by code, else by position)."""

    version: int
    status: ReportStatus
    validated_at: dt.datetime | None
    released_at: dt.datetime | None
    unmatched: tuple[ValidatedValue, ...] = ()

    def __repr__(self) -> str:
        return f"ValidatedVersion(version={self.version})"


@dataclass(frozen=True, slots=True, repr=False)
class ObservationView:
    position: int
    code: Coding
    value: str
    unit: str
    reference_range: str
    flags: tuple[str, ...]
    flag_words: tuple[str, ...]
    status: str
    notes: tuple[str, ...]
    previous: PreviousValue | None = None
    validated_before: ValidatedValue | None = None
    """The same observation in :attr:`ReportView.validated_version`, if any."""

    def __repr__(self) -> str:
        return f"ObservationView(position={self.position})"


@dataclass(frozen=True, slots=True, repr=False)
class ReportView:
    report_id: uuid.UUID
    patient: PatientRecord
    status: ReportStatus
    version: int
    lis_status: str
    received_at: dt.datetime
    validated_at: dt.datetime | None
    released_at: dt.datetime | None
    content: ReportContent
    order: OrderDetails
    observations: tuple[ObservationView, ...] = field(default_factory=tuple)
    validated_version: ValidatedVersion | None = None
    """For a corrected report (version > 1): the last validated or released version it
    replaced, whose values are shown next to the current ones."""

    @property
    def phone(self) -> bool:
        return self.content.delivery is Delivery.PHONE

    @property
    def awaiting_call(self) -> bool:
        return self.phone and self.status is ReportStatus.VALIDATED

    def __repr__(self) -> str:
        return f"ReportView(report_id={self.report_id}, version={self.version})"


def display_value(observation: ObservationContent) -> str:
    if observation.number is not None:
        return format(observation.number, "f").replace(".", ",")
    return observation.text


class ReviewService:
    """One biologist's review, bound to the caller's keyring, scope and transaction."""

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        scope: AccessScope,
        *,
        provider: KeyProvider,
        staff_id: uuid.UUID | None,
        require_step_up: Callable[[], None],
        delivery: ResultDelivery,
        notifier: ResultNotifier | None,
        organization: str,
        context: AuditContext | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._scope = scope
        self._provider = provider
        self._staff_id = staff_id
        self._require_step_up = require_step_up
        self._delivery = delivery
        self._notifier = notifier
        self._organization = organization
        self._context = context
        self._clock = clock
        self._tenant_id = keyring.tenant_id
        self._repository = PatientRepository(session, keyring, scope)

    # -- reads ------------------------------------------------------------------------------

    def queue(self, *, limit: int = QUEUE_LIMIT) -> list[QueueItem]:
        """Reports to validate, and validated ones awaiting their phone call, oldest first."""
        reports = list(
            self._session.scalars(
                self._reports_in_scope()
                .where(ResultReport.status.in_(IN_QUEUE))
                .order_by(ResultReport.received_at, ResultReport.id)
                .limit(max(1, min(limit, QUEUE_LIMIT)))
            )
        )
        self._keyring.audit.record(
            AuditAction.RESULT_REVIEW_LIST, tenant_id=self._tenant_id, purpose=READ_PURPOSE
        )
        # Records no list may show (honey records) are left out before anything is opened.
        shown = set(self._keyring.visible(SUBJECT_TYPE, [r.patient_id for r in reports]))
        reports = [r for r in reports if r.patient_id in shown]
        if not reports:
            return []
        contents = self._repository.open_for(
            RESOURCE,
            [
                SealedItem(r.patient_id, REPORTS_TABLE, r.id, {"content": r.content})
                for r in reports
            ],
            purpose=READ_PURPOSE,
        )
        people = {
            p.id: p
            for p in self._repository.get_many(
                [r.patient_id for r in reports], purpose=READ_PURPOSE
            )
        }
        items = []
        for report in reports:
            opened = contents.get(report.id)
            person = people.get(report.patient_id)
            if opened is None or person is None:
                continue  # erased meanwhile: absent
            content = load(ReportContent, opened["content"])
            items.append(
                QueueItem(
                    report_id=report.id,
                    patient_id=report.patient_id,
                    patient_name=_name(person),
                    birth_date=person.birth_date,
                    received_at=report.received_at,
                    status=ReportStatus(report.status),
                    lis_status=report.lis_status,
                    title=content.title,
                    phone=content.delivery is Delivery.PHONE,
                )
            )
        return items

    def report(self, report_id: uuid.UUID) -> ReportView:
        """One report as the review page shows it; :class:`ReportNotFoundError` else."""
        report = self._find(report_id)
        view = self._view(report)
        self._keyring.audit.record(
            AuditAction.RESULT_REVIEW_READ,
            tenant_id=self._tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=report.patient_id,
            purpose=READ_PURPOSE,
        )
        return view

    # -- writes -----------------------------------------------------------------------------

    def validate(
        self, report_id: uuid.UUID, seen_version: int, conclusion: str | None = None
    ) -> Outcome:
        """Validate the report the biologist saw (``seen_version``); see the module's doc."""
        if conclusion is not None:
            conclusion = conclusion.strip()
            if len(conclusion) > MAX_CONCLUSION:
                raise InvalidReviewInputError(
                    f"La conclusion ne peut pas dépasser {MAX_CONCLUSION} caractères."
                )
        self._find(report_id)  # not granted, out of scope, unknown: 404 before the step-up
        self._require_step_up()
        report = self._find(report_id, lock=True)
        if report.status != ReportStatus.TO_VALIDATE.value:
            raise self._refused(WrongStateError(), report)
        if report.version != seen_version:
            raise self._refused(VersionChangedError(), report)
        content = self._content(report)
        now = self._clock()
        values: dict[str, object] = {
            "status": ReportStatus.VALIDATED.value,
            "validated_by": self._staff_id,
            "validated_at": now,
            "updated_at": now,
        }
        if conclusion:
            content = content.model_copy(update={"conclusion": conclusion})
            values["content"] = self._seal(report, content)
        # Conditional on what was checked: a correction committed since (SQLite takes no
        # row lock) leaves the row unchanged and the validation refused.
        if not self._write(report, values, status=ReportStatus.TO_VALIDATE, version=seen_version):
            raise self._refused(VersionChangedError(), report)
        self._record(AuditAction.RESULT_REPORT_VALIDATE, report, VALIDATE_PURPOSE)
        hold_placed = self._hold(report.patient_id, now)
        if content.delivery is Delivery.PHONE:
            return Outcome(ReportStatus.VALIDATED, hold_placed=hold_placed)
        return self._release(report, content, now, hold_placed=hold_placed)

    def record_phone_call(self, report_id: uuid.UUID, note: str) -> Outcome:
        """The biologist gave a sensitive result by phone: keep their note (sealed) and
        release the report."""
        note = note.strip()
        if not note:
            raise InvalidReviewInputError("Indiquez à qui et quand le résultat a été communiqué.")
        if len(note) > MAX_PHONE_NOTE:
            raise InvalidReviewInputError(
                f"La note d'appel ne peut pas dépasser {MAX_PHONE_NOTE} caractères."
            )
        self._find(report_id)
        self._require_step_up()
        report = self._find(report_id, lock=True)
        if report.status != ReportStatus.VALIDATED.value:
            raise self._refused(
                WrongStateError("Ce compte rendu n'attend pas d'appel téléphonique."), report
            )
        content = self._content(report)
        if content.delivery is not Delivery.PHONE:
            raise self._refused(
                WrongStateError("Ce compte rendu n'attend pas d'appel téléphonique."), report
            )
        now = self._clock()
        content = content.model_copy(update={"phone_note": note})
        values = {"content": self._seal(report, content), "updated_at": now}
        if not self._write(report, values, status=ReportStatus.VALIDATED, version=report.version):
            raise self._refused(VersionChangedError(), report)
        self._record(AuditAction.RESULT_REPORT_PHONE, report, VALIDATE_PURPOSE)
        return self._release(report, content, now)

    # -- internals --------------------------------------------------------------------------

    def _reports_in_scope(self) -> Select[ResultReport]:
        """Reports of live patients the caller may update results of (the queue's rule)."""
        try:
            where, _ = policy_scope(
                self._scope, ResultReport.patient_id, RESOURCE, Interaction.UPDATE
            )
        except AccessDeniedError as denied:
            raise self._keyring.audit.refusal(
                ReportNotFoundError(),
                AuditAction.RESULT_REVIEW_LIST,
                tenant_id=self._tenant_id,
                purpose=READ_PURPOSE,
            ) from denied
        return select(ResultReport).where(
            ResultReport.tenant_id == self._tenant_id,
            ResultReport.patient_id.in_(_live_patients(self._tenant_id)),
            where,
        )

    def _find(self, report_id: uuid.UUID, *, lock: bool = False) -> ResultReport:
        query = self._reports_in_scope().where(ResultReport.id == report_id)
        if lock:
            query = query.with_for_update(of=ResultReport)
        report = self._session.scalars(query).one_or_none()
        if report is None:
            raise ReportNotFoundError
        return report

    def _refused(self, error: ReviewRefusedError, report: ResultReport) -> ReviewRefusedError:
        self._keyring.audit.refusal(
            error,
            AuditAction.RESULT_REPORT_REFUSED,
            tenant_id=self._tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=report.patient_id,
            purpose=VALIDATE_PURPOSE,
        )
        return error

    def _record(self, action: AuditAction, report: ResultReport, purpose: str) -> None:
        self._keyring.audit.record(
            action,
            tenant_id=self._tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=report.patient_id,
            purpose=purpose,
        )

    def _content(self, report: ResultReport) -> ReportContent:
        opened = self._repository.open_for(
            RESOURCE,
            [SealedItem(report.patient_id, REPORTS_TABLE, report.id, {"content": report.content})],
            purpose=VALIDATE_PURPOSE,
        )
        if report.id not in opened:
            raise ReportNotFoundError
        return load(ReportContent, opened[report.id]["content"])

    def _seal(self, report: ResultReport, content: ReportContent) -> bytes:
        sealed = self._repository.seal_for(
            report.patient_id,
            RESOURCE,
            Interaction.UPDATE,
            SealedItem(report.patient_id, REPORTS_TABLE, report.id, {"content": dump(content)}),
            purpose=VALIDATE_PURPOSE,
        )
        if sealed is None or sealed.get("content") is None:
            raise ReportNotFoundError
        blob = sealed["content"]
        assert blob is not None
        return blob

    def _write(
        self,
        report: ResultReport,
        values: dict[str, object],
        *,
        status: ReportStatus,
        version: int,
    ) -> bool:
        result = self._session.execute(
            update(ResultReport)
            .where(
                ResultReport.tenant_id == self._tenant_id,
                ResultReport.id == report.id,
                ResultReport.status == status.value,
                ResultReport.version == version,
            )
            .values(values)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return False
        self._session.refresh(report)
        return True

    def _hold(self, patient_id: uuid.UUID, now: dt.datetime) -> bool:
        """The 10-year retention hold, unless one running at least as long is in force."""
        today = local_today(now)
        until = _add_years(today, HOLD_YEARS)
        current = active_hold(self._session, self._tenant_id, patient_id, now)
        if current is not None and (current.until is None or current.until >= until):
            return False
        keyring = TenantKeyring(
            self._session, self._provider, self._tenant_id, HOLD_PRINCIPAL, context=self._context
        )
        place_hold(
            self._session,
            keyring,
            patient_id,
            LegalHoldReason.LAB_REPORT_RETENTION,
            until,
            now=now,
        )
        return True

    def _release(
        self,
        report: ResultReport,
        content: ReportContent,
        now: dt.datetime,
        *,
        hold_placed: bool = False,
    ) -> Outcome:
        released = self._write(
            report,
            {
                "status": ReportStatus.RELEASED.value,
                "released_at": now,
                "released_by": self._staff_id,
                "updated_at": now,
            },
            status=ReportStatus.VALIDATED,
            version=report.version,
        )
        if not released:
            raise self._refused(VersionChangedError(), report)
        self._record(AuditAction.RESULT_REPORT_RELEASE, report, VALIDATE_PURPOSE)
        notified = 0
        if self._notifier is not None:
            notified = self._notifier.notify(report.patient_id)
            if notified:
                self._stamp(report, notified_at=now)
        delivered = self._deliver(report, content, now)
        return Outcome(
            ReportStatus.RELEASED,
            released=True,
            notified=notified,
            delivered=delivered,
            hold_placed=hold_placed,
        )

    def _stamp(self, report: ResultReport, **values: object) -> None:
        self._session.execute(
            update(ResultReport)
            .where(ResultReport.tenant_id == self._tenant_id, ResultReport.id == report.id)
            .values(values)
            .execution_options(synchronize_session=False)
        )

    def _deliver(self, report: ResultReport, content: ReportContent, now: dt.datetime) -> bool:
        """Hand the released version to the prescriber's channel. A channel failure leaves
        ``delivered_at`` empty (logged, never the content): the release stands."""
        document = prescriber_document(
            self._session,
            self._repository,
            report,
            content,
            organization=self._organization,
            released_at=now,
        )
        if document is None or not _hand_over(self._delivery, document):
            return False
        self._stamp(report, delivered_at=now)
        self._record(AuditAction.RESULT_REPORT_DELIVER, report, DELIVERY_PURPOSE)
        return True

    def _order(self, report: ResultReport, purpose: str) -> OrderDetails:
        return _open_order(self._session, self._repository, report, purpose)

    def _observations(
        self, reports: Sequence[ResultReport], purpose: str
    ) -> dict[uuid.UUID, list[tuple[int, ObservationContent]]]:
        return _open_observations(self._session, self._repository, reports, purpose)

    def _view(self, report: ResultReport) -> ReportView:
        patient = self._repository.get(report.patient_id, purpose=READ_PURPOSE)
        if patient is None:
            raise ReportNotFoundError
        content = self._content_for_read(report)
        order = self._order(report, READ_PURPOSE)
        earlier = list(
            self._session.scalars(
                select(ResultReport)
                .where(
                    ResultReport.tenant_id == self._tenant_id,
                    ResultReport.patient_id == report.patient_id,
                    ResultReport.id != report.id,
                    ResultReport.received_at <= report.received_at,
                )
                .order_by(ResultReport.received_at.desc(), ResultReport.id)
                .limit(HISTORY_REPORTS)
            )
        )
        opened = self._observations([report, *earlier], READ_PURPOSE)
        previous: dict[tuple[str, str], PreviousValue] = {}
        for older in earlier:  # newest first: the first value seen for a code is the latest
            for _, observation in opened.get(older.id, []):
                key = (observation.code.system, observation.code.code)
                if key in previous:
                    continue
                previous[key] = PreviousValue(
                    value=display_value(observation),
                    unit=observation.unit,
                    flags=flag_words(observation.abnormal_flags),
                    at=observation.observed_at or older.received_at,
                )
        current = opened.get(report.id, [])
        kept, kept_values = self._validated_version(report)
        matched = _match(current, kept_values)
        observations = tuple(
            ObservationView(
                position=position,
                code=observation.code,
                value=display_value(observation),
                unit=observation.unit,
                reference_range=observation.reference_range,
                flags=observation.abnormal_flags,
                flag_words=flag_words(observation.abnormal_flags),
                status=observation.status,
                notes=observation.notes,
                previous=previous.get((observation.code.system, observation.code.code)),
                validated_before=matched.get(position),
            )
            for position, observation in current
        )
        validated_version = None
        if kept is not None:
            used = {value.position for value in matched.values()}
            validated_version = ValidatedVersion(
                version=kept.version,
                status=ReportStatus(kept.status),
                validated_at=kept.validated_at,
                released_at=kept.released_at,
                unmatched=tuple(v for v in kept_values if v.position not in used),
            )
        return ReportView(
            report_id=report.id,
            patient=patient,
            status=ReportStatus(report.status),
            version=report.version,
            lis_status=report.lis_status,
            received_at=report.received_at,
            validated_at=report.validated_at,
            released_at=report.released_at,
            content=content,
            order=order,
            observations=observations,
            validated_version=validated_version,
        )

    def _validated_version(
        self, report: ResultReport
    ) -> tuple[ResultReportVersion | None, list[ValidatedValue]]:
        """The most recent superseded version that had been validated or released, and its
        observations, opened through the same audited path as the current ones: the kept
        ciphertext is still bound to its original ``result_observations`` row."""
        if report.version <= 1:
            return None, []
        kept = self._session.scalars(
            select(ResultReportVersion)
            .where(
                ResultReportVersion.tenant_id == self._tenant_id,
                ResultReportVersion.report_id == report.id,
                ResultReportVersion.status.in_(SHOWN_TO_SOMEONE),
            )
            .order_by(ResultReportVersion.version.desc())
            .limit(1)
        ).one_or_none()
        if kept is None:
            return None, []
        rows = list(
            self._session.scalars(
                select(ResultObservationVersion)
                .where(
                    ResultObservationVersion.tenant_id == self._tenant_id,
                    ResultObservationVersion.report_version_id == kept.id,
                )
                .order_by(ResultObservationVersion.position)
            )
        )
        opened = self._repository.open_for(
            RESOURCE,
            [
                SealedItem(o.patient_id, OBSERVATIONS_TABLE, o.id, {"content": o.content})
                for o in rows
            ],
            purpose=READ_PURPOSE,
        )
        values = []
        for row in rows:
            if row.id not in opened:
                continue
            observation = load(ObservationContent, opened[row.id]["content"])
            values.append(
                ValidatedValue(
                    position=row.position,
                    code=observation.code,
                    value=display_value(observation),
                    unit=observation.unit,
                    reference_range=observation.reference_range,
                    flags=flag_words(observation.abnormal_flags),
                )
            )
        return kept, values

    def _content_for_read(self, report: ResultReport) -> ReportContent:
        opened = self._repository.open_for(
            RESOURCE,
            [SealedItem(report.patient_id, REPORTS_TABLE, report.id, {"content": report.content})],
            purpose=READ_PURPOSE,
        )
        if report.id not in opened:
            raise ReportNotFoundError
        try:
            return load(ReportContent, opened[report.id]["content"])
        except ContentError:
            _log.error("result.content_unreadable", report_id=str(report.id))
            raise


def _match(
    current: Sequence[tuple[int, ObservationContent]], earlier: Sequence[ValidatedValue]
) -> dict[int, ValidatedValue]:
    """Each current observation's counterpart in an earlier version (by position): the
    same code first, else the one at the same position that no code claimed."""
    by_code: dict[tuple[str, str], ValidatedValue] = {}
    for value in earlier:
        by_code.setdefault((value.code.system, value.code.code), value)
    matched: dict[int, ValidatedValue] = {}
    used: set[int] = set()
    for position, observation in current:
        found = by_code.get((observation.code.system, observation.code.code))
        if found is not None and found.position not in used:
            matched[position] = found
            used.add(found.position)
    at = {value.position: value for value in earlier}
    for position, _ in current:
        if position in matched:
            continue
        found = at.get(position)
        if found is not None and found.position not in used:
            matched[position] = found
            used.add(found.position)
    return matched


def _open_order(
    session: Session, repository: PatientRepository, report: ResultReport, purpose: str
) -> OrderDetails:
    order = session.scalars(
        select(ResultOrder).where(
            ResultOrder.tenant_id == report.tenant_id, ResultOrder.id == report.order_id
        )
    ).one()
    opened = repository.open_for(
        RESOURCE,
        [SealedItem(order.patient_id, ORDERS_TABLE, order.id, {"details": order.details})],
        purpose=purpose,
    )
    if order.id not in opened:
        raise ReportNotFoundError
    return load(OrderDetails, opened[order.id]["details"])


def _open_observations(
    session: Session,
    repository: PatientRepository,
    reports: Sequence[ResultReport],
    purpose: str,
) -> dict[uuid.UUID, list[tuple[int, ObservationContent]]]:
    """Each report's observations in position order, opened (one tenant's reports)."""
    by_report: dict[uuid.UUID, list[tuple[int, ObservationContent]]] = {r.id: [] for r in reports}
    if not reports:
        return by_report
    rows = list(
        session.scalars(
            select(ResultObservation)
            .where(
                ResultObservation.tenant_id == reports[0].tenant_id,
                ResultObservation.report_id.in_([r.id for r in reports]),
            )
            .order_by(ResultObservation.report_id, ResultObservation.position)
        )
    )
    opened = repository.open_for(
        RESOURCE,
        [SealedItem(o.patient_id, OBSERVATIONS_TABLE, o.id, {"content": o.content}) for o in rows],
        purpose=purpose,
    )
    for row in rows:
        if row.id in opened:
            content = load(ObservationContent, opened[row.id]["content"])
            by_report[row.report_id].append((row.position, content))
    return by_report


def prescriber_document(
    session: Session,
    repository: PatientRepository,
    report: ResultReport,
    content: ReportContent,
    *,
    organization: str,
    released_at: dt.datetime,
) -> PrescriberDocument | None:
    """What the prescriber receives for ``report`` (``None``: the record is gone)."""
    patient = repository.get(report.patient_id, purpose=DELIVERY_PURPOSE)
    if patient is None:
        return None
    order = _open_order(session, repository, report, DELIVERY_PURPOSE)
    opened = _open_observations(session, repository, [report], DELIVERY_PURPOSE)
    return PrescriberDocument(
        report_id=report.id,
        version=report.version,
        organization=organization,
        patient=patient,
        order=order,
        report=content,
        observations=tuple(o for _, o in opened[report.id]),
        validated_at=report.validated_at or released_at,
        released_at=released_at,
    )


def _hand_over(delivery: ResultDelivery, document: PrescriberDocument) -> bool:
    try:
        receipt = delivery.deliver(document)
    except DeliveryError as exc:
        _log.error("result.delivery_failed", report_id=str(document.report_id), reason=str(exc))
        return False
    _log.info("result.delivered", report_id=str(document.report_id), channel=receipt.channel)
    return True


REDELIVERY_PRINCIPAL: Final = SystemPrincipal("cli:results-deliver")


def deliver_pending(
    session: Session,
    keyring: Keyring,
    delivery: ResultDelivery,
    *,
    organization: str,
    limit: int = 100,
) -> tuple[int, int]:
    """Deliver released reports whose delivery failed (``delivered_at`` empty), oldest
    release first; ``(delivered, failed)``. A named system job (``cli:results-deliver``)
    reads them: each opening and each delivery is audited as that job."""
    if not isinstance(keyring.principal, SystemPrincipal):
        raise AccessDeniedError("only a named system job delivers pending reports")
    repository = PatientRepository(session, keyring)
    reports = list(
        session.scalars(
            select(ResultReport)
            .where(
                ResultReport.tenant_id == keyring.tenant_id,
                ResultReport.patient_id.in_(_live_patients(keyring.tenant_id)),
                ResultReport.status == ReportStatus.RELEASED.value,
                ResultReport.delivered_at.is_(None),
            )
            .order_by(ResultReport.released_at, ResultReport.id)
            .limit(limit)
        )
    )
    # A list: records no list may show (honey records) are left out before any opening.
    shown = set(keyring.visible(SUBJECT_TYPE, [r.patient_id for r in reports]))
    reports = [r for r in reports if r.patient_id in shown]
    delivered = failed = 0
    for report in reports:
        opened = repository.open_for(
            RESOURCE,
            [SealedItem(report.patient_id, REPORTS_TABLE, report.id, {"content": report.content})],
            purpose=DELIVERY_PURPOSE,
        )
        document = (
            prescriber_document(
                session,
                repository,
                report,
                load(ReportContent, opened[report.id]["content"]),
                organization=organization,
                released_at=report.released_at or utcnow(),
            )
            if report.id in opened
            else None
        )
        if document is None or not _hand_over(delivery, document):
            failed += 1
            continue
        session.execute(
            update(ResultReport)
            .where(ResultReport.tenant_id == keyring.tenant_id, ResultReport.id == report.id)
            .values(delivered_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        keyring.audit.record(
            AuditAction.RESULT_REPORT_DELIVER,
            tenant_id=keyring.tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=report.patient_id,
            purpose=DELIVERY_PURPOSE,
        )
        delivered += 1
    return delivered, failed


def _name(person: PatientRecord) -> str:
    family = person.used_name or person.birth_name or ""
    return f"{family} {person.first_names or ''}".strip()


def _add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _live_patients(tenant_id: uuid.UUID) -> Select[uuid.UUID]:
    """The tenant's records not erased (their reports are unreadable: never listed)."""
    return select(Patient.id).where(Patient.tenant_id == tenant_id, Patient.erased_at.is_(None))
