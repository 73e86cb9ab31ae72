"""Which patients a principal may reach: its compiled policy turned into SQL, per request.

The record scopes of a policy grant (``own``, ``site-relationship``, ``site-today``) become
``WHERE`` clauses on ``patients.id``, applied *before* any key is unwrapped, so a record out
of scope is never decrypted, never counted against a budget, and looks exactly like one that
does not exist.

The staff relationship rule: a staff member reaches a patient who has an appointment (not
cancelled, and not a mere hold) at one of the staff member's sites within the relationship
window (by default 30 days back and 30 days ahead), or who has a result order at one of
those sites created within the window, or for whom they hold a live break-glass grant.
Orders join the rule when results arrive: a laboratory system's order puts the patient in
the care of the site that samples or analyses it. ``site-today`` stays about today's
appointments only (the sampler's day), orders do not widen it.

Service clients (a laboratory system, a FHIR client: ``service:<client id>``) reach
patients through the same relationship with the sites the client serves
(:class:`~labvault.results.models.ServiceClientSite`), in the same window, with no
break-glass: a machine never escalates. A disabled client reaches nobody.

System jobs are not scoped: they name themselves (``SystemPrincipal("cli:...")``) and get
:data:`SYSTEM_ACCESS`, on purpose and greppably.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, and_, false, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from labvault.appointments.models import Appointment, AppointmentStatus
from labvault.core.access.policies import (
    CompiledPolicy,
    Grant,
    Interaction,
    Policy,
    RecordScope,
    compile_policy,
    default_policy,
)
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.events import AuditedRefusalError
from labvault.core.config import Settings
from labvault.core.db import utcnow
from labvault.results.models import ResultOrder, ServiceClient, ServiceClientSite
from labvault.security.models import BreakGlassGrant
from labvault.staff.models import StaffMember, StaffSite

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NOT_A_RELATIONSHIP = (AppointmentStatus.CANCELLED.value, AppointmentStatus.HELD.value)
"""A cancelled appointment, or a slot merely held while the patient fills in the form, puts
nobody in a site's care."""


class AccessDeniedError(AuditedRefusalError, PermissionError):
    """The interaction is not granted at all. Routes answer it as "not found" (404)."""


@dataclass(frozen=True, slots=True)
class RelationshipWindow:
    before: dt.timedelta = dt.timedelta(days=30)
    after: dt.timedelta = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class AccessScope:
    """What one principal may reach in one tenant, resolved once per request.

    ``own_patient_ids`` are a patient account's own record and its current dependents';
    ``staff_id`` and ``site_ids`` a staff member's identity and sites; ``client_id`` and
    ``site_ids`` a service client's. ``now`` fixes the instant the window is measured from,
    so one request sees one consistent scope.
    """

    principal: Principal
    tenant_id: uuid.UUID
    policy: CompiledPolicy
    now: dt.datetime
    own_patient_ids: frozenset[uuid.UUID] = frozenset()
    staff_id: uuid.UUID | None = None
    site_ids: frozenset[uuid.UUID] = frozenset()
    client_id: uuid.UUID | None = None
    window: RelationshipWindow = field(default_factory=RelationshipWindow)

    def __post_init__(self) -> None:
        if isinstance(self.principal, SystemPrincipal):
            raise ValueError("system jobs use SYSTEM_ACCESS, not a policy scope")
        if self.now.tzinfo is None:
            raise ValueError("the scope's instant must be timezone-aware")

    def grant(self, resource: str, interaction: Interaction) -> Grant:
        found = self.policy.grant_for(resource, interaction)
        if found is None:
            raise AccessDeniedError(f"{interaction} on {resource} is not granted")
        return found

    def patients_clause(
        self, patient_id: InstrumentedAttribute[uuid.UUID], grant: Grant
    ) -> ColumnElement[bool]:
        """A condition on a patient id column: true exactly for the records in scope."""
        if grant.records is RecordScope.OWN:
            if self.principal.kind is not PrincipalKind.PATIENT or not self.own_patient_ids:
                return false()
            return patient_id.in_(sorted(self.own_patient_ids))
        if grant.records in (RecordScope.SITE_RELATIONSHIP, RecordScope.SITE_TODAY):
            conditions: list[ColumnElement[bool]] = []
            if self.principal.kind is PrincipalKind.STAFF and self.staff_id is not None:
                conditions.append(self._break_glass(patient_id))
            elif self.principal.kind is not PrincipalKind.SERVICE or self.client_id is None:
                return false()
            start, end = self._window(grant.records)
            if self.site_ids:
                conditions.append(
                    patient_id.in_(
                        select(Appointment.patient_id).where(
                            Appointment.tenant_id == self.tenant_id,
                            Appointment.site_id.in_(sorted(self.site_ids)),
                            Appointment.starts_at >= start,
                            Appointment.starts_at < end,
                            Appointment.status.not_in(NOT_A_RELATIONSHIP),
                        )
                    )
                )
                if grant.records is RecordScope.SITE_RELATIONSHIP:
                    conditions.append(
                        patient_id.in_(
                            select(ResultOrder.patient_id).where(
                                ResultOrder.tenant_id == self.tenant_id,
                                ResultOrder.site_id.in_(sorted(self.site_ids)),
                                ResultOrder.created_at >= start,
                                ResultOrder.created_at < end,
                            )
                        )
                    )
            return or_(*conditions) if conditions else false()
        # RecordScope.ALL is refused for patient data when the policy is parsed.
        return false()

    def _window(self, records: RecordScope) -> tuple[dt.datetime, dt.datetime]:
        if records is RecordScope.SITE_TODAY:
            day = self.now.astimezone(PARIS).date()
            start = dt.datetime.combine(day, dt.time(), PARIS)
            end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), PARIS)
            return start.astimezone(dt.UTC), end.astimezone(dt.UTC)
        return self.now - self.window.before, self.now + self.window.after

    def _break_glass(self, patient_id: InstrumentedAttribute[uuid.UUID]) -> ColumnElement[bool]:
        return patient_id.in_(
            select(BreakGlassGrant.patient_id).where(
                BreakGlassGrant.tenant_id == self.tenant_id,
                BreakGlassGrant.staff_id == self.staff_id,
                BreakGlassGrant.expires_at > self.now,
                BreakGlassGrant.revoked_at.is_(None),
            )
        )


@dataclass(frozen=True, slots=True)
class SystemAccess:
    """Unscoped access for a named system job: every record, every field."""

    def patients_clause(self) -> ColumnElement[bool]:
        return true()


SYSTEM_ACCESS = SystemAccess()


@dataclass(frozen=True, slots=True)
class IdentityVerification:
    """Reading a few fields of any record of the tenant to check what someone claims about
    it (an account proving a record is its own, a guardian's right to act for a minor).

    A privileged path like break-glass, named where it is used and limited to the fields it
    declares; each opening is audited as the caller, with the caller's purpose. It never
    creates or changes anything.
    """

    fields: frozenset[str]

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("an identity verification names the fields it reads")


@dataclass(frozen=True, slots=True)
class SealingFor:
    """Adding sealed rows of ``resources`` to ONE record: a laboratory system's result for
    the patient the intake has just matched with certainty (or a person chose from the
    matching queue). A privileged path like :class:`IdentityVerification`, named where it
    is used: it may only ``create``, so it never reads a field, and reaches no other record.
    """

    patient_id: uuid.UUID
    resources: frozenset[str]

    def __post_init__(self) -> None:
        if not self.resources:
            raise ValueError("a sealing access names the resources it writes")


def in_scope(
    scope: AccessScope | SystemAccess | IdentityVerification | SealingFor,
    patient_id: InstrumentedAttribute[uuid.UUID],
    resource: str,
    interaction: Interaction,
) -> tuple[ColumnElement[bool], frozenset[str] | None]:
    """The WHERE condition and the revealed fields (``None``: all) for one interaction.

    Raises :class:`AccessDeniedError` when the interaction is not granted at all.
    """
    if isinstance(scope, SystemAccess):
        return scope.patients_clause(), None
    if isinstance(scope, SealingFor):
        if interaction is not Interaction.CREATE or resource not in scope.resources:
            raise AccessDeniedError(f"a sealing access cannot {interaction} {resource}")
        return patient_id == scope.patient_id, frozenset()
    if isinstance(scope, IdentityVerification):
        if interaction not in (Interaction.READ, Interaction.SEARCH):
            raise AccessDeniedError(f"an identity verification cannot {interaction}")
        return true(), scope.fields
    grant = scope.grant(resource, interaction)
    return and_(scope.patients_clause(patient_id, grant)), scope.policy.fields(
        resource, interaction
    )


def window_from(settings: Settings) -> RelationshipWindow:
    return RelationshipWindow(
        before=dt.timedelta(days=settings.relationship_days_before),
        after=dt.timedelta(days=settings.relationship_days_after),
    )


def staff_scope(
    session: Session,
    principal: Principal,
    tenant_id: uuid.UUID,
    staff_id: uuid.UUID,
    *,
    window: RelationshipWindow | None = None,
    policy: Policy | None = None,
    now: dt.datetime | None = None,
) -> AccessScope:
    """A staff member's scope: its role's policy and the sites it works at today.

    An inactive or unknown staff member, or one of another tenant, gets no sites and no
    staff id, so its relationship clauses match nothing.
    """
    active = session.scalar(
        select(StaffMember.id).where(
            StaffMember.tenant_id == tenant_id,
            StaffMember.id == staff_id,
            StaffMember.active.is_(True),
        )
    )
    sites: frozenset[uuid.UUID] = frozenset()
    if active is not None:
        sites = frozenset(
            session.scalars(
                select(StaffSite.site_id).where(
                    StaffSite.tenant_id == tenant_id, StaffSite.staff_id == staff_id
                )
            )
        )
    return AccessScope(
        principal=principal,
        tenant_id=tenant_id,
        policy=compile_policy(policy or default_policy(), principal),
        now=now or utcnow(),
        staff_id=active,
        site_ids=sites,
        window=window or RelationshipWindow(),
    )


def patient_scope(
    principal: Principal,
    tenant_id: uuid.UUID,
    own_patient_ids: frozenset[uuid.UUID],
    *,
    policy: Policy | None = None,
    now: dt.datetime | None = None,
) -> AccessScope:
    """A patient account's scope: the records it acts for (its own, its dependents')."""
    return AccessScope(
        principal=principal,
        tenant_id=tenant_id,
        policy=compile_policy(policy or default_policy(), principal),
        now=now or utcnow(),
        own_patient_ids=own_patient_ids,
    )


def service_scope(
    session: Session,
    principal: Principal,
    tenant_id: uuid.UUID,
    client_id: uuid.UUID,
    *,
    window: RelationshipWindow | None = None,
    policy: Policy | None = None,
    now: dt.datetime | None = None,
) -> AccessScope:
    """A service client's scope: its kind's policy and the sites it serves.

    A disabled or unknown client, one of another tenant, or a principal that is not this
    client (``service:<client id>``) gets no client id and no sites: its relationship
    clauses match nothing (fail closed, like an inactive staff member).
    """
    if principal.kind is not PrincipalKind.SERVICE:
        raise ValueError("a service scope is for a service principal")
    active = None
    if principal.id == f"service:{client_id}":
        active = session.scalar(
            select(ServiceClient.id).where(
                ServiceClient.tenant_id == tenant_id,
                ServiceClient.id == client_id,
                ServiceClient.kind == principal.role,
                ServiceClient.disabled_at.is_(None),
            )
        )
    sites: frozenset[uuid.UUID] = frozenset()
    if active is not None:
        sites = frozenset(
            session.scalars(
                select(ServiceClientSite.site_id).where(
                    ServiceClientSite.tenant_id == tenant_id,
                    ServiceClientSite.client_id == client_id,
                )
            )
        )
    return AccessScope(
        principal=principal,
        tenant_id=tenant_id,
        policy=compile_policy(policy or default_policy(), principal),
        now=now or utcnow(),
        client_id=active,
        site_ids=sites,
        window=window or RelationshipWindow(),
    )
