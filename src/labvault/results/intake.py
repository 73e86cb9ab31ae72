"""Storing received results: deduplication, patient matching, sealing, the matching queue.

:class:`ResultStore` takes an :class:`~labvault.results.incoming.IncomingResult` (from HL7 v2
or FHIR) in the caller's transaction, acting as the sending system's service principal
(``service:<client id>``):

- a message already received (same client, same SHA-256 of MSH-3|MSH-4|MSH-10) changes
  nothing and answers *duplicate*; two copies delivered at once are told apart by the
  unique constraint, the loser's insert failing in a SAVEPOINT;
- the patient is matched (:mod:`labvault.results.matching`); with certainty, orders,
  reports and observations are written sealed under the patient's data key; otherwise the
  whole result is sealed under a data key of its own and waits in the queue
  (:mod:`labvault.results.queue`), never attached to a guessed patient;
- an unknown or disabled sender, or a result that cannot be stored as given (no order
  number, a document that is not a PDF), is refused (:class:`IngestRejectedError`) and
  nothing but the refusal's audit event is written.

A service principal cannot pass the policy's scope rules for a patient it has no
relationship with yet, so the sealing goes through :class:`ResultAttachment`: a narrow
privileged access, like :class:`~labvault.patients.scope.IdentityVerification`, that may
only seal result data for the one patient just matched and never reads anything.

:class:`StoredResultIntake` is the MLLP listener's :class:`~labvault.results.mllp.ResultIntake`
for one organization: one transaction per message.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
import threading
import uuid
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

from pydantic import ValidationError
from sqlalchemy import Table, delete, insert, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from labvault.appointments.models import Appointment
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import (
    AuditContext,
    AuditedRefusalError,
    AuditTrail,
    audited_transaction,
)
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.keyring import Keyring, TenantKeyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.crypto.providers import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import utcnow
from labvault.patients.scope import NOT_A_RELATIONSHIP, RelationshipWindow, SealingFor
from labvault.patients.services import SUBJECT_TYPE as PATIENT_SUBJECT
from labvault.patients.services import PatientRepository, RowSealer
from labvault.results import content
from labvault.results.clients import find_sender, peer_allowed
from labvault.results.content import Coding, Delivery, OrderDetails, ReportContent
from labvault.results.hl7 import (
    MAX_DOCUMENT_BYTES,
    Hl7Error,
    Hl7ErrorCode,
    Location,
    OruMessage,
)
from labvault.results.incoming import IncomingOrder, IncomingResult, from_oru, to_json
from labvault.results.matching import Match, PatientMatcher, QueueReason
from labvault.results.mllp import IntakeOutcome
from labvault.results.models import (
    MESSAGE_SUBJECT_TYPE,
    MessageStatus,
    ReportStatus,
    ResultMessage,
    ResultObservation,
    ResultObservationVersion,
    ResultOrder,
    ResultReport,
    ResultReportVersion,
    SensitiveExamCode,
    ServiceClient,
    ServiceClientSite,
)

__all__ = [
    "INTAKE_PURPOSE",
    "IngestOutcome",
    "IngestRejectedError",
    "IngestStatus",
    "OrderDigester",
    "ResultAttachment",
    "ResultStore",
    "ResultWriter",
    "StoredResultIntake",
    "UnattachableError",
    "keep_version",
    "service_principal",
]


INTAKE_PURPOSE: Final = "result-intake"
RESULT_RESOURCE: Final = "result"
"""The policy resource of everything the intake seals."""
MESSAGE_TARGET: Final = "result-message"
CLIENT_TARGET: Final = "service-client"
PARIS: Final = zoneinfo.ZoneInfo("Europe/Paris")
PDF_MAGIC: Final = b"%PDF-"
LOINC_ALIASES: Final = frozenset(
    {"ln", "loinc", "http://loinc.org", "urn:oid:2.16.840.1.113883.6.1"}
)
DATA_KEYS_TABLE: Final = cast(Table, DataKeyRecord.__table__)
REPORTS_TABLE: Final = cast(Table, ResultReport.__table__)
OBSERVATIONS_TABLE: Final = cast(Table, ResultObservation.__table__)
REPORT_VERSIONS_TABLE: Final = cast(Table, ResultReportVersion.__table__)
OBSERVATION_VERSIONS_TABLE: Final = cast(Table, ResultObservationVersion.__table__)
LISTENER: Final = SystemPrincipal("mllp:listener")
"""Who refuses a message from a sender labvault does not know (no service principal yet)."""


def service_principal(client: ServiceClient) -> Principal:
    """The principal a sending system acts as."""
    return Principal(PrincipalKind.SERVICE, f"service:{client.id}", role=client.kind)


class IngestStatus(enum.StrEnum):
    ATTACHED = "attached"
    QUEUED = "queued"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    status: IngestStatus
    message_id: uuid.UUID
    reason: QueueReason | None = None
    patient_id: uuid.UUID | None = None
    report_ids: tuple[uuid.UUID, ...] = ()


class IngestRejectedError(AuditedRefusalError):
    """The result is refused as a whole; ``error`` says where and why (never a value)."""

    def __init__(self, error: Hl7Error) -> None:
        super().__init__(str(error))
        self.error = error


class UnattachableError(Exception):
    """The matched patient cannot take the result after all (erased meanwhile, an order
    that is another patient's): the caller queues it with ``reason``."""

    def __init__(self, reason: QueueReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


ORDER_KEY_LABEL: Final = "labvault/v1|results|order-number"
"""The provider derivation behind ``result_orders.order_digest`` (per tenant, below)."""


class OrderDigester:
    """``result_orders.order_digest``: an HMAC-SHA256 of the sender's order number under a
    per-tenant key derived from the key provider (never stored). Order numbers are short
    and often sequential: a plain hash in a dump would give them back by brute force.

    Writes use the active root key version's derivation; lookups match every version's
    (:meth:`candidates`), so a root key rotation does not split an order in two. The keys
    are derived on first use (``keys`` is called once). Rows digested the earlier, unkeyed
    way are not matched: there were none in production when this changed."""

    def __init__(self, tenant_id: uuid.UUID, keys: Callable[[], Sequence[Secret[bytes]]]) -> None:
        self._tenant_id = tenant_id
        self._source = keys
        self._keys: tuple[bytes, ...] | None = None

    def __repr__(self) -> str:
        return f"OrderDigester(tenant={self._tenant_id})"

    @classmethod
    def from_provider(cls, provider: KeyProvider, tenant_id: uuid.UUID) -> OrderDigester:
        return cls(tenant_id, lambda: provider.derive_keys(ORDER_KEY_LABEL))

    def _tenant_keys(self) -> tuple[bytes, ...]:
        if self._keys is None:
            keys = tuple(
                hmac.digest(root.reveal(), b"tenant|" + self._tenant_id.bytes, "sha256")
                for root in self._source()
            )
            if not keys:
                raise KeyProviderError("the key provider derived no order-number key")
            self._keys = keys
        return self._keys

    @staticmethod
    def _under(key: bytes, order: IncomingOrder) -> bytes:
        return hmac.digest(key, order.order_number.encode("utf-8"), "sha256")

    def digest(self, order: IncomingOrder) -> bytes:
        """What a new order row stores: under the active root version's derivation."""
        return self._under(self._tenant_keys()[0], order)

    def candidates(self, order: IncomingOrder) -> tuple[bytes, ...]:
        """What an existing order row of this number may hold."""
        return tuple(self._under(key, order) for key in self._tenant_keys())


def check_result(incoming: IncomingResult) -> None:
    """Refuse what cannot be stored as given, before anything is written."""
    if not incoming.orders:
        raise IngestRejectedError(
            Hl7Error(Hl7ErrorCode.SEGMENT_SEQUENCE, Location("OBR"), "an order")
        )
    numbers: set[str] = set()
    for position, order in enumerate(incoming.orders, start=1):
        where = Location("OBR", position, 3)
        if not order.order_number or len(order.order_number) > 200:
            raise IngestRejectedError(
                Hl7Error(
                    Hl7ErrorCode.REQUIRED_FIELD_MISSING,
                    where,
                    "a filler (OBR-3) or placer (OBR-2) order number",
                )
            )
        if order.order_number in numbers:
            raise IngestRejectedError(
                Hl7Error(Hl7ErrorCode.DATA_TYPE, where, "distinct order numbers in one message")
            )
        numbers.add(order.order_number)
        try:
            OrderDetails(
                placer_order_number=order.placer_order_number,
                filler_order_number=order.filler_order_number,
                exams=order.exams,
                prescriber=order.prescriber,
                notes=order.notes,
            )
        except ValidationError:
            raise IngestRejectedError(
                Hl7Error(Hl7ErrorCode.DATA_TYPE, Location("OBR", position), "values within limits")
            ) from None
        if not order.exams:
            raise IngestRejectedError(
                Hl7Error(
                    Hl7ErrorCode.REQUIRED_FIELD_MISSING, Location("OBR", position, 4), "an exam"
                )
            )
        if order.lis_status not in {"P", "F", "C"}:
            raise IngestRejectedError(
                Hl7Error(
                    Hl7ErrorCode.DATA_TYPE,
                    Location("OBR", position, 25),
                    "a result status among P, F, C",
                )
            )
        if order.pdf is not None and (
            len(order.pdf) > MAX_DOCUMENT_BYTES or not order.pdf.startswith(PDF_MAGIC)
        ):
            raise IngestRejectedError(
                Hl7Error(
                    Hl7ErrorCode.DATA_TYPE,
                    Location("OBX", 1, 5),
                    f"a PDF document of at most {MAX_DOCUMENT_BYTES} bytes",
                )
            )


# --- Sealing for the matched patient -----------------------------------------------------


class ResultAttachment:
    """Seals result rows under ONE patient's data key: the patient just matched (or chosen
    from the queue). It goes through the repository with a :class:`SealingFor` access (a
    privileged path like ``IdentityVerification``, named here): the key is opened once,
    audited by the keyring as its principal, and what comes back can seal, never open; it
    cannot reach any other patient."""

    def __init__(
        self, session: Session, keyring: Keyring, patient_id: uuid.UUID, *, purpose: str
    ) -> None:
        self._repository = PatientRepository(
            session, keyring, SealingFor(patient_id, frozenset({RESULT_RESOURCE}))
        )
        self.patient_id = patient_id
        self._purpose = purpose
        self._sealer: RowSealer | None = None

    def _row_sealer(self) -> RowSealer:
        if self._sealer is None:
            sealer = self._repository.sealer_for(
                self.patient_id, RESULT_RESOURCE, purpose=self._purpose
            )
            if sealer is None:  # erased since it was matched
                raise UnattachableError(QueueReason.IDENTITY_ERASED)
            self._sealer = sealer
        return self._sealer

    def seal(self, table: str, row_id: uuid.UUID, column: str, value: bytes) -> bytes:
        sealed = self._row_sealer().seal_row(table, row_id, {column: value})[column]
        assert sealed is not None  # a value was given
        return sealed


def _system(system: str) -> str:
    lowered = system.strip().lower()
    return "http://loinc.org" if lowered in LOINC_ALIASES else lowered


class ResultWriter:
    """Writes one result's orders, reports and observations for a known patient."""

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        *,
        orders: OrderDigester,
        purpose: str = INTAKE_PURPOSE,
    ):
        self._session = session
        self._keyring = keyring
        self._orders = orders
        self._purpose = purpose
        self._tenant_id = keyring.tenant_id

    def _sensitive(self) -> set[tuple[str, str]]:
        return {
            (_system(system), code.strip())
            for system, code in self._session.execute(
                select(SensitiveExamCode.system, SensitiveExamCode.code).where(
                    SensitiveExamCode.tenant_id == self._tenant_id
                )
            )
        }

    def write(
        self, incoming: IncomingResult, client: ServiceClient, patient_id: uuid.UUID
    ) -> tuple[uuid.UUID, ...]:
        """Upsert every order of ``incoming`` for ``patient_id``; the report ids.

        Raises :class:`UnattachableError` before writing anything when an order number is
        already another patient's, and when the patient's key is gone."""
        candidates = {o.order_number: self._orders.candidates(o) for o in incoming.orders}
        existing = {
            bytes(order.order_digest): order
            for order in self._session.scalars(
                select(ResultOrder).where(
                    ResultOrder.tenant_id == self._tenant_id,
                    ResultOrder.client_id == client.id,
                    ResultOrder.order_digest.in_(
                        [digest for found in candidates.values() for digest in found]
                    ),
                )
            )
        }
        if any(order.patient_id != patient_id for order in existing.values()):
            raise UnattachableError(QueueReason.ORDER_OF_ANOTHER_PATIENT)
        attachment = ResultAttachment(
            self._session, self._keyring, patient_id, purpose=self._purpose
        )
        sensitive = self._sensitive()
        reports: list[uuid.UUID] = []
        for order in incoming.orders:
            found = next(
                (existing[d] for d in candidates[order.order_number] if d in existing), None
            )
            report_id, created = self._write_order(
                attachment, order, client, found, sensitive, self._orders.digest(order)
            )
            reports.append(report_id)
            self._keyring.audit.record(
                AuditAction.RESULT_REPORT_CREATE if created else AuditAction.RESULT_REPORT_UPDATE,
                tenant_id=self._tenant_id,
                target_type=PATIENT_SUBJECT,
                target_id=patient_id,
                purpose=self._purpose,
            )
        return tuple(reports)

    def _write_order(
        self,
        attachment: ResultAttachment,
        order: IncomingOrder,
        client: ServiceClient,
        found: ResultOrder | None,
        sensitive: set[tuple[str, str]],
        digest: bytes,
    ) -> tuple[uuid.UUID, bool]:
        now = utcnow()
        patient_id = attachment.patient_id
        details = OrderDetails(
            placer_order_number=order.placer_order_number,
            filler_order_number=order.filler_order_number,
            exams=order.exams,
            prescriber=order.prescriber,
            collected_at=order.collected_at,
            notes=order.notes,
        )
        flagged = _flagged(order, sensitive)
        report_content = ReportContent(
            title=_title(order.exams[0]),
            delivery=Delivery.PHONE if flagged else Delivery.ONLINE,
            sensitive_codes=flagged,
        )
        if found is None:
            order_row = ResultOrder(
                id=uuid.uuid4(),
                tenant_id=self._tenant_id,
                patient_id=patient_id,
                client_id=client.id,
                order_digest=digest,
                site_id=client.default_site_id,
                appointment_id=self._appointment(patient_id, client, order.collected_at),
                created_at=now,
                updated_at=now,
            )
            order_row.details = attachment.seal(
                ResultOrder.__tablename__, order_row.id, "details", content.dump(details)
            )
            self._session.add(order_row)
            self._session.flush()
            report = ResultReport(
                id=uuid.uuid4(),
                tenant_id=self._tenant_id,
                patient_id=patient_id,
                order_id=order_row.id,
                status=ReportStatus.TO_VALIDATE.value,
                lis_status=order.lis_status,
                version=1,
                received_at=now,
                updated_at=now,
            )
            created = True
        else:
            order_row = found
            order_row.details = attachment.seal(
                ResultOrder.__tablename__, order_row.id, "details", content.dump(details)
            )
            order_row.updated_at = now
            if order_row.appointment_id is None:
                order_row.appointment_id = self._appointment(patient_id, client, order.collected_at)
            report = self._session.scalars(
                select(ResultReport)
                .where(
                    ResultReport.tenant_id == self._tenant_id,
                    ResultReport.order_id == order_row.id,
                )
                .with_for_update()
            ).one()
            # A complement or a correction is a new version: the whole workflow again. The
            # version it replaces is kept first, ciphertext only (see keep_version).
            keep_version(self._session, self._tenant_id, report.id, now)
            report.version += 1
            report.status = ReportStatus.TO_VALIDATE.value
            report.lis_status = order.lis_status
            report.updated_at = now
            report.validated_by = report.validated_at = None
            report.released_at = report.released_by = None
            report.notified_at = report.delivered_at = None
            self._session.execute(
                delete(ResultObservation).where(
                    ResultObservation.tenant_id == self._tenant_id,
                    ResultObservation.report_id == report.id,
                )
            )
            created = False
        report.content = attachment.seal(
            ResultReport.__tablename__, report.id, "content", content.dump(report_content)
        )
        report.pdf = (
            attachment.seal(ResultReport.__tablename__, report.id, "pdf", order.pdf)
            if order.pdf is not None
            else None
        )
        if created:
            self._session.add(report)
        self._session.flush()
        rows = []
        for position, observation in enumerate(order.observations, start=1):
            row_id = uuid.uuid4()
            rows.append(
                {
                    "id": row_id,
                    "tenant_id": self._tenant_id,
                    "patient_id": patient_id,
                    "report_id": report.id,
                    "position": position,
                    "content": attachment.seal(
                        ResultObservation.__tablename__,
                        row_id,
                        "content",
                        content.dump(observation),
                    ),
                }
            )
        if rows:
            self._session.execute(insert(cast(Table, ResultObservation.__table__)), rows)
        return report.id, created

    def _appointment(
        self, patient_id: uuid.UUID, client: ServiceClient, collected_at: dt.datetime | None
    ) -> uuid.UUID | None:
        """The patient's one appointment at the client's default site on the collection day
        (Europe/Paris), if there is exactly one."""
        if collected_at is None or client.default_site_id is None:
            return None
        moment = collected_at if collected_at.tzinfo else collected_at.replace(tzinfo=PARIS)
        day = moment.astimezone(PARIS).date()
        start = dt.datetime.combine(day, dt.time(), PARIS).astimezone(dt.UTC)
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), PARIS).astimezone(dt.UTC)
        found = list(
            self._session.scalars(
                select(Appointment.id)
                .where(
                    Appointment.tenant_id == self._tenant_id,
                    Appointment.patient_id == patient_id,
                    Appointment.site_id == client.default_site_id,
                    Appointment.starts_at >= start,
                    Appointment.starts_at < end,
                    Appointment.status.not_in(NOT_A_RELATIONSHIP),
                )
                .limit(2)
            )
        )
        return found[0] if len(found) == 1 else None


def _title(exam: Coding) -> str:
    return (exam.display or exam.code)[:500]


def _flagged(order: IncomingOrder, sensitive: set[tuple[str, str]]) -> tuple[Coding, ...]:
    """The exam and observation codes of ``order`` that the lab lists as sensitive."""
    codes = [*order.exams, *(observation.code for observation in order.observations)]
    flagged: dict[tuple[str, str], Coding] = {}
    for concept in codes:
        # Every coding of the concept: a LOINC code sent as the alternate counts as much.
        for coding in concept.all_codings():
            key = (_system(coding.system), coding.code.strip())
            if key in sensitive:
                flagged.setdefault(key, coding)
    return tuple(flagged.values())


# --- The store ---------------------------------------------------------------------------


def keep_version(
    session: Session, tenant_id: uuid.UUID, report_id: uuid.UUID, now: dt.datetime
) -> uuid.UUID:
    """Copy the live version of report ``report_id`` (its row and its observations) into
    ``result_report_versions`` / ``result_observation_versions`` before a new message
    replaces it, in this transaction. Database to database, INSERT ... SELECT: the
    ciphertext is copied verbatim, never opened (the intake can only seal), and stays
    bound to its original table, row and column. Returns the kept version's id."""
    version_id = uuid.uuid4()
    versions = REPORT_VERSIONS_TABLE.c
    reports = REPORTS_TABLE.c
    session.execute(
        insert(REPORT_VERSIONS_TABLE).from_select(
            [
                versions.id,
                versions.tenant_id,
                versions.patient_id,
                versions.report_id,
                versions.version,
                versions.lis_status,
                versions.status,
                versions.content,
                versions.pdf,
                versions.validated_by,
                versions.validated_at,
                versions.released_by,
                versions.released_at,
                versions.received_at,
                versions.superseded_at,
            ],
            select(
                literal(version_id, versions.id.type),
                reports.tenant_id,
                reports.patient_id,
                reports.id,
                reports.version,
                reports.lis_status,
                reports.status,
                reports.content,
                reports.pdf,
                reports.validated_by,
                reports.validated_at,
                reports.released_by,
                reports.released_at,
                reports.received_at,
                literal(now, versions.superseded_at.type),
            ).where(reports.tenant_id == tenant_id, reports.id == report_id),
        )
    )
    observations = OBSERVATIONS_TABLE.c
    kept = OBSERVATION_VERSIONS_TABLE.c
    session.execute(
        insert(OBSERVATION_VERSIONS_TABLE).from_select(
            [
                kept.id,
                kept.tenant_id,
                kept.patient_id,
                kept.report_version_id,
                kept.position,
                kept.content,
            ],
            select(
                observations.id,
                observations.tenant_id,
                observations.patient_id,
                literal(version_id, kept.report_version_id.type),
                observations.position,
                observations.content,
            ).where(
                observations.tenant_id == tenant_id,
                observations.report_id == report_id,
            ),
        )
    )
    return version_id


class ResultStore:
    """Ingests results in the caller's transaction, as the keyring's service principal."""

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        window: RelationshipWindow | None = None,
        orders: OrderDigester,
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._tenant_id = keyring.tenant_id
        self._clock = clock
        self._window = window or RelationshipWindow()
        self._orders = orders

    def _client(self, client_id: uuid.UUID) -> ServiceClient:
        """The sending system, if it is the keyring's principal and enabled; else refused."""
        principal = self._keyring.principal
        client = self._session.scalars(
            select(ServiceClient).where(
                ServiceClient.tenant_id == self._tenant_id, ServiceClient.id == client_id
            )
        ).one_or_none()
        if (
            client is None
            or client.disabled_at is not None
            or principal.kind is not PrincipalKind.SERVICE
            or principal.id != f"service:{client_id}"
        ):
            refusal = IngestRejectedError(
                Hl7Error(
                    Hl7ErrorCode.UNKNOWN_KEY,
                    Location("MSH", 1, 3),
                    "a sending system registered and enabled in labvault",
                )
            )
            raise self._keyring.audit.refusal(
                refusal,
                AuditAction.RESULT_MESSAGE_REJECT,
                tenant_id=self._tenant_id,
                target_type=CLIENT_TARGET,
                target_id=client.id if client is not None else None,
                purpose="disabled-sender" if client is not None else "unknown-sender",
            )
        return client

    def _existing(self, client_id: uuid.UUID, digest: bytes) -> uuid.UUID | None:
        return self._session.scalar(
            select(ResultMessage.id).where(
                ResultMessage.tenant_id == self._tenant_id,
                ResultMessage.client_id == client_id,
                ResultMessage.dedup_digest == digest,
            )
        )

    def _duplicate(self, message_id: uuid.UUID) -> IngestOutcome:
        self._keyring.audit.record(
            AuditAction.RESULT_MESSAGE_DUPLICATE,
            tenant_id=self._tenant_id,
            target_type=MESSAGE_TARGET,
            target_id=message_id,
            purpose=INTAKE_PURPOSE,
        )
        return IngestOutcome(IngestStatus.DUPLICATE, message_id)

    def _in_care(self, client: ServiceClient, patient_id: uuid.UUID, now: dt.datetime) -> bool:
        """An appointment of the patient (not cancelled, not a hold) at one of the sites the
        client serves, within the relationship window around ``now``."""
        sites = set(
            self._session.scalars(
                select(ServiceClientSite.site_id).where(
                    ServiceClientSite.tenant_id == self._tenant_id,
                    ServiceClientSite.client_id == client.id,
                )
            )
        )
        if client.default_site_id is not None:
            sites.add(client.default_site_id)
        if not sites:
            return False
        found = self._session.scalar(
            select(Appointment.id)
            .where(
                Appointment.tenant_id == self._tenant_id,
                Appointment.patient_id == patient_id,
                Appointment.site_id.in_(sorted(sites)),
                Appointment.starts_at >= now - self._window.before,
                Appointment.starts_at < now + self._window.after,
                Appointment.status.not_in(NOT_A_RELATIONSHIP),
            )
            .limit(1)
        )
        return found is not None

    def ingest(self, incoming: IncomingResult) -> IngestOutcome:
        """Store ``incoming`` (see the module docstring). Raises :class:`IngestRejectedError`
        for a refusal: the caller's transaction must roll back (``audited_transaction``
        then keeps the refusal's event)."""
        client = self._client(incoming.client_id)
        digest = incoming.key.digest()
        already = self._existing(client.id, digest)
        if already is not None:
            return self._duplicate(already)
        try:
            check_result(incoming)
        except IngestRejectedError as refused:
            raise self._keyring.audit.refusal(
                refused,
                AuditAction.RESULT_MESSAGE_REJECT,
                tenant_id=self._tenant_id,
                target_type=CLIENT_TARGET,
                target_id=client.id,
                purpose="invalid-result",
            ) from None
        now = self._clock()
        message = ResultMessage(
            id=uuid.uuid4(),
            tenant_id=self._tenant_id,
            client_id=client.id,
            dedup_digest=digest,
            status=MessageStatus.QUEUED.value,
            received_at=now,
        )
        # The event first: on SQLite its insert opens the write transaction, so the
        # SAVEPOINT below is nested in it (a SAVEPOINT opening it would commit on release).
        self._keyring.audit.record(
            AuditAction.RESULT_MESSAGE_RECEIVE,
            tenant_id=self._tenant_id,
            target_type=MESSAGE_TARGET,
            target_id=message.id,
            purpose=INTAKE_PURPOSE,
        )
        try:
            with self._session.begin_nested():
                self._session.add(message)
                self._session.flush()
        except IntegrityError:
            # The same message, delivered at the same time, was stored first.
            winner = self._existing(client.id, digest)
            if winner is None:
                raise
            return self._duplicate(winner)
        match = PatientMatcher(self._session, self._keyring).match(incoming.patient)
        if (
            match.patient_id is not None
            and match.method == "traits"
            and not self._in_care(client, match.patient_id, now)
        ):
            # Traits are no secret: attaching on them alone would let any sender put any
            # record in its reach (and learn it exists). Only a patient already in its care.
            match = Match.queued(QueueReason.TRAITS_ONLY)
        if match.patient_id is not None:
            try:
                with self._session.begin_nested():
                    reports = ResultWriter(self._session, self._keyring, orders=self._orders).write(
                        incoming, client, match.patient_id
                    )
            except UnattachableError as unattachable:
                match = Match.queued(unattachable.reason)
            else:
                message.status = MessageStatus.ATTACHED.value
                message.patient_id = match.patient_id
                self._session.flush()
                return IngestOutcome(
                    IngestStatus.ATTACHED, message.id, None, match.patient_id, reports
                )
        assert match.reason is not None
        queue_message(self._session, self._keyring, message, incoming, match.reason)
        return IngestOutcome(IngestStatus.QUEUED, message.id, match.reason)


def queue_message(
    session: Session,
    keyring: Keyring,
    message: ResultMessage,
    incoming: IncomingResult,
    reason: QueueReason,
) -> None:
    """Seal the whole result under a new data key of the message's own and queue it."""
    keys, key_rows = keyring.new_data_keys(MESSAGE_SUBJECT_TYPE, [message.id])
    session.execute(insert(DATA_KEYS_TABLE), key_rows)
    sealed = keys[0].seal_row(
        ResultMessage.__tablename__, message.id, {"content": to_json(incoming)}
    )
    message.status = MessageStatus.QUEUED.value
    message.queue_reason = reason.value
    message.content = sealed["content"]
    session.flush()
    keyring.audit.record(
        AuditAction.RESULT_MESSAGE_QUEUE,
        tenant_id=keyring.tenant_id,
        target_type=MESSAGE_TARGET,
        target_id=message.id,
        purpose=reason.value,
    )


# --- The MLLP listener's intake ------------------------------------------------------------


@dataclass
class IntakeCounters:
    """What the listener did since it started (for logs and the bench)."""

    attached: int = 0
    queued: int = 0
    duplicates: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class StoredResultIntake:
    """``ResultIntake`` storing into one organization's database (one listener per tenant).

    Each message is one transaction: the sender is recognised by MSH-3/MSH-4, then the
    store acts as its service principal. On SQLite (one writer at a time anyway) messages
    are stored one after the other, so concurrent connections wait rather than fail.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        provider: KeyProvider,
        tenant_id: uuid.UUID,
        *,
        context: AuditContext | None = None,
        serialize: bool | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._provider = provider
        self._tenant_id = tenant_id
        self._context = context
        self._after_commit = after_commit
        if serialize is None:
            bind = sessions.kw.get("bind")
            serialize = bind is not None and bind.dialect.name == "sqlite"
        self._lock: threading.Lock | None = threading.Lock() if serialize else None
        self.counters = IntakeCounters()
        self._orders = OrderDigester.from_provider(provider, tenant_id)

    def receive(self, message: OruMessage, *, peer: str) -> IntakeOutcome:
        """Store one message from ``peer`` (``host:port`` from the listener, ``LOCAL_PEER``
        in-process). A sender is its MSH-3/MSH-4 *and* a peer in its allow-list: anything
        else is the same AR (unknown sender, 204), audited, nothing written."""
        if self._lock is None:
            return self._receive(message, peer)
        with self._lock:
            return self._receive(message, peer)

    def _receive(self, message: OruMessage, peer: str) -> IntakeOutcome:
        header = message.header
        try:
            with audited_transaction(self._sessions) as session:
                client = find_sender(
                    session, self._tenant_id, header.sending_application, header.sending_facility
                )
                if client is None or client.disabled_at is not None:
                    raise _unknown_sender(session, self._tenant_id, client, self._context)
                if not peer_allowed(client, peer):
                    # The same answer as an unknown sender: a stranger cannot tell which
                    # MSH-3/MSH-4 pairs are registered.
                    raise AuditTrail(session, LISTENER, self._context).refusal(
                        IngestRejectedError(
                            Hl7Error(
                                Hl7ErrorCode.UNKNOWN_KEY,
                                Location("MSH", 1, 3),
                                "a sending application and facility (MSH-3, MSH-4) "
                                "registered and enabled",
                            )
                        ),
                        AuditAction.RESULT_MESSAGE_REJECT,
                        tenant_id=self._tenant_id,
                        target_type=CLIENT_TARGET,
                        target_id=client.id,
                        purpose="peer-not-allowed",
                    )
                keyring = TenantKeyring(
                    session,
                    self._provider,
                    self._tenant_id,
                    service_principal(client),
                    context=self._context,
                )
                try:
                    incoming = from_oru(message, client.id)
                except Hl7Error as invalid:
                    raise keyring.audit.refusal(
                        IngestRejectedError(invalid),
                        AuditAction.RESULT_MESSAGE_REJECT,
                        tenant_id=self._tenant_id,
                        target_type=CLIENT_TARGET,
                        target_id=client.id,
                        purpose="invalid-result",
                    ) from None
                outcome = ResultStore(session, keyring, orders=self._orders).ingest(incoming)
        except IngestRejectedError as refused:
            self.counters.rejected += 1
            return IntakeOutcome.rejected(refused.error)
        finally:
            if self._after_commit is not None:
                self._after_commit()
        if outcome.status is IngestStatus.DUPLICATE:
            self.counters.duplicates += 1
            return IntakeOutcome.duplicate()
        if outcome.status is IngestStatus.QUEUED:
            self.counters.queued += 1
            assert outcome.reason is not None
            self.counters.by_reason[outcome.reason] = (
                self.counters.by_reason.get(outcome.reason, 0) + 1
            )
        else:
            self.counters.attached += 1
        return IntakeOutcome.accepted()


def _unknown_sender(
    session: Session,
    tenant_id: uuid.UUID,
    client: ServiceClient | None,
    context: AuditContext | None,
) -> IngestRejectedError:
    refusal = IngestRejectedError(
        Hl7Error(
            Hl7ErrorCode.UNKNOWN_KEY,
            Location("MSH", 1, 3),
            "a sending application and facility (MSH-3, MSH-4) registered and enabled",
        )
    )
    trail = AuditTrail(session, LISTENER, context)
    result = trail.refusal(
        refusal,
        AuditAction.RESULT_MESSAGE_REJECT,
        tenant_id=tenant_id,
        target_type=CLIENT_TARGET,
        target_id=client.id if client is not None else None,
        purpose="disabled-sender" if client is not None else "unknown-sender",
    )
    assert isinstance(result, IngestRejectedError)
    return result
