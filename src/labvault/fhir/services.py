"""Reads and searches of the FHIR API, for one service caller in one unit of work.

Every interaction checks the token's SMART scope first (:class:`ScopeRefusedError`, a 403),
then goes through the application's repositories bound to the client's
:func:`~labvault.patients.scope.service_scope`: the access policy of its kind
(``service:lis``/``service:fhir``) and the relationship with the sites it serves decide
which patients exist for it, before any key is unwrapped; every opening is audited by the
keyring. Whatever is absent, out of scope, of another tenant or not granted is the same
"not found" (I7); a search finds nothing instead.

Which results a service client sees: only the orders it sent itself, and their reports and
observations, whatever their state (a laboratory system reads back what it sent). Being
in relationship with a patient does not open the patient's results from other sites or
systems: a client that pushes one result for a patient must not gain their whole history.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from labvault.appointments.models import Appointment, AppointmentStatus, SlotClaim
from labvault.catalog.schemas import CatalogError
from labvault.core.access.policies import Interaction
from labvault.core.audit.actions import AuditAction
from labvault.core.crypto.keyring import TenantKeyring
from labvault.fhir import mapping
from labvault.fhir.bundle import BundleError, incoming_from_bundle
from labvault.fhir.oauth import ServiceCaller
from labvault.fhir.scopes import PERMISSIONS
from labvault.organizations.models import Site
from labvault.patients.ins import InsOid
from labvault.patients.nir import Nir, NirError
from labvault.patients.scope import AccessScope
from labvault.patients.services import PatientRecord, PatientRepository, SealedItem
from labvault.results.content import ObservationContent, OrderDetails, ReportContent, load
from labvault.results.intake import IngestOutcome, OrderDigester, ResultStore
from labvault.results.models import (
    ResultObservation,
    ResultOrder,
    ResultReport,
)
from labvault.schedules.models import SiteSchedule
from labvault.schedules.services import SiteScheduleService
from labvault.schedules.slots import Slot

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "FhirInputError",
    "FhirReader",
    "FhirWriter",
    "NotGrantedError",
    "ScopeRefusedError",
    "SearchPage",
]

PURPOSE: Final = "fhir"
DEFAULT_COUNT: Final = 20
MAX_COUNT: Final = 50
MAX_OFFSET: Final = 1000
INS_SYSTEMS: Final = {f"urn:oid:{oid.value}": oid for oid in (InsOid.NIR, InsOid.TEST)}
"""The identifier systems a Patient search accepts: the INS built on the NIR, and its test
twin (synthetic identities)."""

T = TypeVar("T")

_REPORT_ORDER: Final = and_(
    ResultOrder.tenant_id == ResultReport.tenant_id, ResultOrder.id == ResultReport.order_id
)
"""A report joined to its order (within one tenant)."""


class ScopeRefusedError(Exception):
    """The token lacks the scope the interaction needs (answered 403)."""

    def __init__(self, resource_type: str, letter: str) -> None:
        super().__init__(f"system/{resource_type}.{letter}")
        self.scope = f"system/{resource_type}.{letter}"


class FhirInputError(ValueError):
    """A malformed search or request: a fixed message naming the parameter, never a value."""


class NotGrantedError(Exception):
    """The access policy of the client's kind does not grant the interaction (403)."""


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of a search: the resources, the total in scope, and where the page starts."""

    resources: list[dict[str, Any]]
    total: int
    offset: int
    count: int
    params: Mapping[str, str]
    """The criteria to repeat in the paging links (never an identifier value)."""


def paging(params: Mapping[str, str]) -> tuple[int, int]:
    """``_count`` (default 20, at most 50) and ``_offset`` (at most 1000)."""
    count, offset = DEFAULT_COUNT, 0
    if "_count" in params:
        count = _integer(params["_count"], "_count", 0, MAX_COUNT)
    if "_offset" in params:
        offset = _integer(params["_offset"], "_offset", 0, MAX_OFFSET)
    return count, offset


def _integer(text: str, name: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise FhirInputError(f"{name}: an integer from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise FhirInputError(f"{name}: an integer from {low} to {high}")
    return value


def parse_id(text: str, name: str = "id") -> uuid.UUID | None:
    """A resource id of this server (a UUID); ``None`` for anything else (it cannot exist)."""
    if len(text) != 36:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


MAX_SLOT_DAYS: Final = 31


def _date_range(text: str, today: dt.date) -> tuple[dt.date, dt.date]:
    """``start=geAAAA-MM-JJ`` (a week from that day) or ``start=leAAAA-MM-JJ`` (from today
    to that day); without it, a week from today."""
    first, last = today, today + dt.timedelta(days=6)
    if text:
        prefix, value = text[:2], text[2:]
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            raise FhirInputError("start: geAAAA-MM-JJ or leAAAA-MM-JJ") from None
        if prefix == "ge":
            first, last = day, day + dt.timedelta(days=6)
        elif prefix == "le":
            last = day
        else:
            raise FhirInputError("start: geAAAA-MM-JJ or leAAAA-MM-JJ")
    if last < first or (last - first).days >= MAX_SLOT_DAYS:
        raise FhirInputError(f"start: at most {MAX_SLOT_DAYS} days, from today on")
    return first, last


def _patient_param(params: Mapping[str, str]) -> uuid.UUID | None:
    """``patient=<id>``, ``patient=Patient/<id>`` or ``subject=Patient/<id>``."""
    values = [params[name] for name in ("patient", "subject") if name in params]
    if len(values) != 1:
        raise FhirInputError("give exactly one of patient or subject")
    value = values[0]
    if value.startswith("Patient/"):
        value = value[len("Patient/") :]
    elif "subject" in params:
        raise FhirInputError("subject: a reference Patient/<id>")
    return parse_id(value)


class FhirReader:
    """The FHIR reads of one service caller, in the request's transaction."""

    def __init__(
        self,
        session: Session,
        keyring: TenantKeyring,
        scope: AccessScope,
        caller: ServiceCaller,
        *,
        now: dt.datetime,
        orders: OrderDigester,
        horizon_days: int = 90,
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._order_digests = orders
        self._scope = scope
        self._caller = caller
        self._tenant = caller.tenant_id
        self._now = now
        self._horizon = dt.timedelta(days=horizon_days)
        self._patients = PatientRepository(session, keyring, scope)

    def writer(self) -> FhirWriter:
        """The same caller's writes, in the same unit of work."""
        return FhirWriter(
            self._session, self._keyring, self._scope, self._caller, self._order_digests
        )

    # -- scopes and audit --------------------------------------------------------------

    def require(self, resource_type: str, letter: str) -> None:
        if letter not in PERMISSIONS or not self._caller.scopes.allows(resource_type, letter):
            raise ScopeRefusedError(resource_type, letter)

    def _record(
        self, action: AuditAction, resource_type: str, patient_ids: Sequence[uuid.UUID]
    ) -> None:
        self._keyring.audit.record_many(
            action,
            tenant_id=self._tenant,
            target_type="patient",
            target_ids=list(dict.fromkeys(patient_ids)),
            purpose=resource_type,
        )

    def _searched(self, resource_type: str) -> None:
        self._keyring.audit.record(
            AuditAction.FHIR_SEARCH, tenant_id=self._tenant, purpose=resource_type
        )

    def _in_scope(self, patient_ids: Sequence[uuid.UUID], resource: str) -> frozenset[uuid.UUID]:
        return self._patients.in_scope_ids(patient_ids, resource, Interaction.READ)

    # -- Patient -----------------------------------------------------------------------

    def patient(self, patient_id: uuid.UUID) -> dict[str, Any] | None:
        self.require("Patient", "r")
        record = self._patients.get(patient_id, purpose=PURPOSE)
        return None if record is None else mapping.patient_resource(record)

    def search_patients(self, params: Mapping[str, str]) -> SearchPage:
        """By INS (``identifier=<system>|<NIR>``) or by ``_id``; a search without either
        is refused: listing patients is not what a laboratory system needs, and exactly what
        an exfiltration would."""
        self.require("Patient", "s")
        count, offset = paging(params)
        _only(params, {"identifier", "_id"})
        records: list[PatientRecord]
        shown: dict[str, str] = {}
        if "identifier" in params:
            system, bar, value = params["identifier"].partition("|")
            oid = INS_SYSTEMS.get(system)
            if not bar or oid is None:
                raise FhirInputError(
                    "identifier: urn:oid:1.2.250.1.213.1.4.8|<NIR> (or the test OID "
                    "1.2.250.1.213.1.4.10)"
                )
            try:
                nir = Nir.parse(value)
            except NirError:
                raise FhirInputError("identifier: not a valid NIR") from None
            records = [
                record
                for record in self._patients.find_by_nir(nir, purpose=PURPOSE)
                if record.ins_oid in (None, oid)
            ]
            if "_id" in params:
                wanted = parse_id(params["_id"])
                records = [record for record in records if record.id == wanted]
        elif "_id" in params:
            wanted = parse_id(params["_id"])
            found = self._patients.get(wanted, purpose=PURPOSE) if wanted else None
            records = [found] if found else []
            shown["_id"] = params["_id"]
        else:
            raise FhirInputError("Patient search needs identifier or _id")
        page = records[offset : offset + count]
        return SearchPage(
            [mapping.patient_resource(r) for r in page], len(records), offset, count, shown
        )

    # -- sites and schedules (no personal data) ----------------------------------------

    def location(self, site_id: uuid.UUID) -> dict[str, Any] | None:
        self.require("Location", "r")
        site = self._session.scalars(
            select(Site).where(Site.tenant_id == self._tenant, Site.id == site_id)
        ).one_or_none()
        return None if site is None else mapping.location_resource(site)

    def search_locations(self, params: Mapping[str, str]) -> SearchPage:
        self.require("Location", "s")
        count, offset = paging(params)
        _only(params, {"_id"})
        query = select(Site).where(Site.tenant_id == self._tenant)
        if "_id" in params:
            query = query.where(Site.id == parse_id(params["_id"]))
        return self._page(
            query.order_by(Site.name, Site.id), params, count, offset, mapping.location_resource
        )

    def schedule(self, schedule_id: uuid.UUID) -> dict[str, Any] | None:
        self.require("Schedule", "r")
        row = self._session.scalars(
            select(SiteSchedule).where(
                SiteSchedule.tenant_id == self._tenant, SiteSchedule.id == schedule_id
            )
        ).one_or_none()
        return None if row is None else mapping.schedule_resource(row)

    def search_schedules(self, params: Mapping[str, str]) -> SearchPage:
        self.require("Schedule", "s")
        count, offset = paging(params)
        _only(params, {"_id", "actor"})
        query = select(SiteSchedule).where(SiteSchedule.tenant_id == self._tenant)
        if "_id" in params:
            query = query.where(SiteSchedule.id == parse_id(params["_id"]))
        if "actor" in params:
            actor = params["actor"].removeprefix("Location/")
            query = query.where(SiteSchedule.site_id == parse_id(actor))
        return self._page(
            query.order_by(SiteSchedule.id), params, count, offset, mapping.schedule_resource
        )

    def _page(
        self,
        query: Select[T],
        params: Mapping[str, str],
        count: int,
        offset: int,
        render: Callable[[T], dict[str, Any]],
    ) -> SearchPage:
        total = self._session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = list(self._session.scalars(query.offset(offset).limit(count)))
        return SearchPage([render(row) for row in rows], total, offset, count, _shown(params))

    # -- Slot (computed from the site's schedule and its live claims) -------------------

    def _slots(
        self, schedule: SiteSchedule, first: dt.date, last: dt.date
    ) -> list[tuple[SiteSchedule, Slot]]:
        zone = ZoneInfo(self._site_zone(schedule.site_id))
        last = min(last, (self._now + self._horizon).astimezone(zone).date())
        if last < first:
            return []
        start = dt.datetime.combine(first, dt.time(), zone).astimezone(dt.UTC)
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), zone).astimezone(dt.UTC)
        taken = {
            starts_at: count
            for starts_at, count in self._session.execute(
                select(SlotClaim.starts_at, func.count())
                .where(
                    SlotClaim.tenant_id == self._tenant,
                    SlotClaim.site_id == schedule.site_id,
                    SlotClaim.starts_at >= start,
                    SlotClaim.starts_at < end,
                    or_(SlotClaim.expires_at.is_(None), SlotClaim.expires_at > self._now),
                )
                .group_by(SlotClaim.starts_at)
            )
        }
        service = SiteScheduleService(
            self._session, self._keyring.audit, self._tenant, clock=lambda: self._now
        )
        try:
            slots = service.slots(schedule.site_id, first, last, taken)
        except CatalogError:
            return []
        return [(schedule, slot) for slot in slots]

    def _site_zone(self, site_id: uuid.UUID) -> str:
        zone = self._session.scalar(
            select(Site.timezone).where(Site.tenant_id == self._tenant, Site.id == site_id)
        )
        return zone or "Europe/Paris"

    def _schedule_row(self, schedule_id: uuid.UUID | None) -> SiteSchedule | None:
        if schedule_id is None:
            return None
        return self._session.scalars(
            select(SiteSchedule).where(
                SiteSchedule.tenant_id == self._tenant, SiteSchedule.id == schedule_id
            )
        ).one_or_none()

    def slot(self, slot_ref: str) -> dict[str, Any] | None:
        self.require("Slot", "r")
        parsed = mapping.parse_slot_id(slot_ref)
        schedule = self._schedule_row(parsed[0]) if parsed else None
        if parsed is None or schedule is None:
            return None
        day = parsed[1].astimezone(ZoneInfo(self._site_zone(schedule.site_id))).date()
        for row, slot in self._slots(schedule, day, day):
            if slot.starts_at.astimezone(dt.UTC) == parsed[1]:
                return mapping.slot_resource(row, slot)
        return None

    def search_slots(self, params: Mapping[str, str]) -> SearchPage:
        """``schedule=<id>`` (required) and ``start=geAAAA-MM-JJ`` / ``start=leAAAA-MM-JJ``
        (default: from today, 7 days; at most 31 days)."""
        self.require("Slot", "s")
        count, offset = paging(params)
        _only(params, {"schedule", "start"})
        if "schedule" not in params:
            raise FhirInputError("Slot search needs schedule")
        schedule = self._schedule_row(parse_id(params["schedule"].removeprefix("Schedule/")))
        if schedule is None:
            return SearchPage([], 0, offset, count, _shown(params))
        today = self._now.astimezone(ZoneInfo(self._site_zone(schedule.site_id))).date()
        first, last = _date_range(params.get("start", ""), today)
        slots = self._slots(schedule, first, last)
        page = slots[offset : offset + count]
        return SearchPage(
            [mapping.slot_resource(row, slot) for row, slot in page],
            len(slots),
            offset,
            count,
            _shown(params),
        )

    # -- Appointment -------------------------------------------------------------------

    def _appointments(self) -> Select[Appointment]:
        # A slot merely held while a patient fills in the form is nobody's appointment yet.
        return select(Appointment).where(
            Appointment.tenant_id == self._tenant,
            Appointment.status != AppointmentStatus.HELD.value,
        )

    def appointment(self, appointment_id: uuid.UUID) -> dict[str, Any] | None:
        self.require("Appointment", "r")
        row = self._session.scalars(
            self._appointments().where(Appointment.id == appointment_id)
        ).one_or_none()
        if row is None or not self._in_scope([row.patient_id], "appointment"):
            return None
        self._record(AuditAction.FHIR_RESOURCE_READ, "Appointment", [row.patient_id])
        return mapping.appointment_resource(row)

    def search_appointments(self, params: Mapping[str, str]) -> SearchPage:
        self.require("Appointment", "s")
        count, offset = paging(params)
        _only(params, {"patient", "subject"})
        patient_id = _patient_param(params)
        self._searched("Appointment")
        if patient_id is None or not self._in_scope([patient_id], "appointment"):
            return SearchPage([], 0, offset, count, _shown(params))
        query = self._appointments().where(Appointment.patient_id == patient_id)
        page = self._page(
            query.order_by(Appointment.starts_at.desc(), Appointment.id),
            params,
            count,
            offset,
            mapping.appointment_resource,
        )
        if page.resources:
            self._record(AuditAction.FHIR_RESOURCE_READ, "Appointment", [patient_id])
        return page

    # -- results -----------------------------------------------------------------------

    def _visible(self) -> ColumnElement[bool]:
        """The caller's own orders only (see the module docstring)."""
        return ResultOrder.client_id == self._caller.client_id

    def _reports(self) -> Select[ResultReport, ResultOrder]:
        return (
            select(ResultReport, ResultOrder)
            .join(ResultOrder, _REPORT_ORDER)
            .where(ResultReport.tenant_id == self._tenant, self._visible())
        )

    def _open(
        self, rows: Iterable[ResultReport | ResultOrder | ResultObservation], column: str
    ) -> dict[uuid.UUID, bytes | None]:
        """Open the sealed ``column`` of ``rows``: rows without it or out of scope are absent."""
        items = [
            SealedItem(row.patient_id, row.__tablename__, row.id, {column: blob})
            for row in rows
            if (blob := getattr(row, column)) is not None
        ]
        if not items:
            return {}
        opened = self._patients.open_for("result", items, purpose=PURPOSE)
        return {row_id: values[column] for row_id, values in opened.items()}

    def _report_resources(
        self, pairs: Sequence[tuple[ResultReport, ResultOrder]]
    ) -> list[dict[str, Any]]:
        reports = [report for report, _ in pairs]
        opened = self._open(reports, "content")
        observations: dict[uuid.UUID, list[uuid.UUID]] = {}
        if opened:
            for report_id, observation_id in self._session.execute(
                select(ResultObservation.report_id, ResultObservation.id)
                .where(
                    ResultObservation.tenant_id == self._tenant,
                    ResultObservation.report_id.in_(sorted(opened)),
                )
                .order_by(ResultObservation.report_id, ResultObservation.position)
            ):
                observations.setdefault(report_id, []).append(observation_id)
        return [
            mapping.diagnostic_report_resource(
                report, load(ReportContent, opened[report.id]), observations.get(report.id, [])
            )
            for report in reports
            if report.id in opened
        ]

    def diagnostic_report(self, report_id: uuid.UUID) -> dict[str, Any] | None:
        return self._read_result(_REPORTS, report_id)

    def search_diagnostic_reports(self, params: Mapping[str, str]) -> SearchPage:
        return self._search_results(_REPORTS, params)

    def _read_result(self, kind: _ResultKind, row_id: uuid.UUID) -> dict[str, Any] | None:
        """One of the caller's results, rendered; ``None`` when it is absent, not the
        caller's or out of scope (rendering drops what the keyring does not open)."""
        self.require(kind.resource_type, "r")
        query = kind.query(self).where(kind.model.id == row_id)
        found = kind.render(self, _pairs(self._session.execute(query)))
        return found[0] if found else None

    def _search_results(self, kind: _ResultKind, params: Mapping[str, str]) -> SearchPage:
        """The caller's results of one patient (``patient`` or ``subject``), one page; an
        unknown or out-of-scope patient finds nothing."""
        self.require(kind.resource_type, "s")
        count, offset = paging(params)
        _only(params, {"patient", "subject"})
        patient_id = _patient_param(params)
        self._searched(kind.resource_type)
        if patient_id is None or not self._in_scope([patient_id], "result"):
            return SearchPage([], 0, offset, count, _shown(params))
        query = kind.query(self).order_by(*kind.order).where(kind.model.patient_id == patient_id)
        total = self._session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = _pairs(self._session.execute(query.offset(offset).limit(count)))
        return SearchPage(kind.render(self, rows), total, offset, count, _shown(params))

    def _orders(self) -> Select[ResultOrder, ResultReport]:
        return (
            select(ResultOrder, ResultReport)
            .outerjoin(ResultReport, _REPORT_ORDER)
            .where(ResultOrder.tenant_id == self._tenant, self._visible())
        )

    def _order_resources(
        self, pairs: Sequence[tuple[ResultOrder, ResultReport | None]]
    ) -> list[dict[str, Any]]:
        opened = self._open([order for order, _ in pairs], "details")
        return [
            mapping.service_request_resource(order, load(OrderDetails, opened[order.id]), report)
            for order, report in pairs
            if order.id in opened
        ]

    def service_request(self, order_id: uuid.UUID) -> dict[str, Any] | None:
        return self._read_result(_ORDERS, order_id)

    def search_service_requests(self, params: Mapping[str, str]) -> SearchPage:
        return self._search_results(_ORDERS, params)

    def _observations(self) -> Select[ResultObservation, ResultReport]:
        return (
            select(ResultObservation, ResultReport)
            .join(
                ResultReport,
                and_(
                    ResultReport.tenant_id == ResultObservation.tenant_id,
                    ResultReport.id == ResultObservation.report_id,
                ),
            )
            .join(ResultOrder, _REPORT_ORDER)
            .where(ResultObservation.tenant_id == self._tenant, self._visible())
        )

    def _observation_resources(
        self, pairs: Sequence[tuple[ResultObservation, ResultReport]]
    ) -> list[dict[str, Any]]:
        opened = self._open([row for row, _ in pairs], "content")
        return [
            mapping.observation_resource(row.id, report, load(ObservationContent, opened[row.id]))
            for row, report in pairs
            if row.id in opened
        ]

    def observation(self, observation_id: uuid.UUID) -> dict[str, Any] | None:
        return self._read_result(_OBSERVATIONS, observation_id)

    def search_observations(self, params: Mapping[str, str]) -> SearchPage:
        return self._search_results(_OBSERVATIONS, params)

    def _documents(self) -> Select[ResultReport, ResultOrder]:
        return self._reports().where(ResultReport.pdf.is_not(None))

    def _document_resources(
        self, pairs: Sequence[tuple[ResultReport, ResultOrder]]
    ) -> list[dict[str, Any]]:
        reports = [report for report, _ in pairs]
        opened = self._open(reports, "pdf")
        return [
            mapping.document_reference_resource(report, pdf)
            for report in reports
            if (pdf := opened.get(report.id)) is not None
        ]

    def document_reference(self, report_id: uuid.UUID) -> dict[str, Any] | None:
        return self._read_result(_DOCUMENTS, report_id)

    def search_document_references(self, params: Mapping[str, str]) -> SearchPage:
        return self._search_results(_DOCUMENTS, params)


@dataclass(frozen=True, slots=True)
class _ResultKind:
    """One result resource type: its rows (``model`` first, paired with its order or report,
    the caller's own only), the newest-first order of a search, and how rows are rendered
    (opened under the patient's key; those the keyring refuses are dropped)."""

    resource_type: str
    model: type[ResultReport] | type[ResultOrder] | type[ResultObservation]
    query: Callable[[FhirReader], Select[Any, Any]]
    order: tuple[Any, ...]
    render: Callable[[FhirReader, list[Any]], list[dict[str, Any]]]


_NEWEST_REPORTS: Final = (ResultReport.received_at.desc(), ResultReport.id)
_REPORTS: Final = _ResultKind(
    "DiagnosticReport",
    ResultReport,
    FhirReader._reports,
    _NEWEST_REPORTS,
    FhirReader._report_resources,
)
_ORDERS: Final = _ResultKind(
    "ServiceRequest",
    ResultOrder,
    FhirReader._orders,
    (ResultOrder.created_at.desc(), ResultOrder.id),
    FhirReader._order_resources,
)
_OBSERVATIONS: Final = _ResultKind(
    "Observation",
    ResultObservation,
    FhirReader._observations,
    (*_NEWEST_REPORTS, ResultObservation.position),
    FhirReader._observation_resources,
)
_DOCUMENTS: Final = _ResultKind(
    "DocumentReference",
    ResultReport,
    FhirReader._documents,
    _NEWEST_REPORTS,
    FhirReader._document_resources,
)


def _pairs(rows: Iterable[Any]) -> list[Any]:
    """Rows of two entities as plain pairs."""
    return [(first, second) for first, second in rows]


class FhirWriter:
    """Results pushed by a laboratory system (``POST /fhir/R4``): mapped to the transport-
    neutral result and handed to the same store as HL7 v2 (deduplication, matching,
    sealing, the queue)."""

    def __init__(
        self,
        session: Session,
        keyring: TenantKeyring,
        scope: AccessScope,
        caller: ServiceCaller,
        orders: OrderDigester,
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._scope = scope
        self._caller = caller
        self._orders = orders

    def push(self, document: Mapping[str, Any], *, now: dt.datetime) -> IngestOutcome:
        for kind in ("DiagnosticReport", "Observation"):
            if not self._caller.scopes.allows(kind, "c"):
                raise ScopeRefusedError(kind, "c")
        if not self._scope.policy.allows("result", Interaction.CREATE):
            raise NotGrantedError("result:create")
        try:
            incoming = incoming_from_bundle(document, self._caller.client_id, received_at=now)
        except BundleError as error:
            raise FhirInputError(str(error)) from None
        except ValidationError:  # a content limit of labvault's own (it quotes: not shown)
            raise FhirInputError("Bundle: values within labvault's limits") from None
        store = ResultStore(
            self._session, self._keyring, window=self._scope.window, orders=self._orders
        )
        return store.ingest(incoming)


PAGING = frozenset({"_count", "_offset"})


def _only(params: Mapping[str, str], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed - PAGING)
    if unknown:
        # Only the names this server knows are quoted back: a parameter's name is the
        # client's text, and could be anything.
        raise FhirInputError(
            f"unsupported search parameter; this search takes {', '.join(sorted(allowed))}"
        )


def _shown(params: Mapping[str, str]) -> dict[str, str]:
    """Criteria repeated in paging links: ids only, never an identifier's value."""
    return {k: v for k, v in params.items() if k not in PAGING and k != "identifier"}
