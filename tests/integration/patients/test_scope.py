"""The staff relationship rule and the patient's own scope, applied before any decryption."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from access_world import IN_RELATIONSHIP, NOW, PLACEMENTS, TODAY, World, build_world
from labvault.appointments.models import Appointment, AppointmentStatus
from labvault.core.access.policies import FIELD_CLASSES
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import audited_transaction
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.patients.schemas import ContactUpdate
from labvault.patients.scope import (
    AccessDeniedError,
    AccessScope,
    RelationshipWindow,
    patient_scope,
    service_scope,
    staff_scope,
)
from labvault.patients.services import PatientRecord, PatientRepository
from labvault.results.models import ResultOrder, ServiceClient, ServiceClientSite

CONTACT = set(FIELD_CLASSES["patient"]["contact"])
INS = set(FIELD_CLASSES["patient"]["ins"])


@pytest.fixture
def world(runtime: Runtime) -> World:
    return build_world(runtime)


def _visible(
    runtime: Runtime, world: World, role: str, *, now: dt.datetime = NOW, **kwargs: object
) -> dict[str, PatientRecord]:
    principal = world.principals[role]
    with transaction(world.sessions) as session:
        keyring = world.keyring(runtime, session, principal, None)
        scope = staff_scope(
            session,
            principal,
            world.tenant,
            world.staff[role],
            now=now,
            **kwargs,  # type: ignore[arg-type]
        )
        repository = PatientRepository(session, keyring, scope)
        found = {
            name: repository.get(patient_id, purpose="care")
            for name, patient_id in world.patients.items()
        }
        found["foreign"] = repository.get(world.foreign_patient, purpose="care")
    return {name: record for name, record in found.items() if record is not None}


def _reads(runtime: Runtime) -> set[uuid.UUID]:
    """Patient reads of every tenant (the audit log's cross-tenant scope)."""
    with runtime.audit_sessions() as session:
        return {
            uuid.UUID(str(target))
            for target in session.scalars(
                select(AuditEvent.target_id).where(
                    AuditEvent.action == AuditAction.PATIENT_RECORD_READ.value
                )
            )
            if target is not None
        }


def test_receptionist_reaches_exactly_the_patients_in_care_at_its_sites(
    runtime: Runtime, world: World
) -> None:
    before = _reads(runtime)
    visible = _visible(runtime, world, "receptionist")
    assert set(visible) == IN_RELATIONSHIP
    record = visible["today"]
    assert record.birth_name == world.inputs["today"].birth_name
    assert record.email == world.inputs["today"].email
    out_of_scope = {world.patients[n] for n in PLACEMENTS if n not in IN_RELATIONSHIP}
    assert (_reads(runtime) - before).isdisjoint(out_of_scope | {world.foreign_patient}), (
        "a record out of scope was decrypted"
    )


def test_the_window_is_configurable(runtime: Runtime, world: World) -> None:
    narrow = RelationshipWindow(before=dt.timedelta(days=1), after=dt.timedelta(days=2))
    assert set(_visible(runtime, world, "receptionist", window=narrow)) == {
        "today",
        "earlier_today",
        "tomorrow",
    }
    wide = RelationshipWindow(before=dt.timedelta(days=60), after=dt.timedelta(days=60))
    assert set(_visible(runtime, world, "receptionist", window=wide)) == IN_RELATIONSHIP | {
        "45_days_ago",
        "in_45_days",
    }


def test_sampler_sees_todays_patients_identity_only(runtime: Runtime, world: World) -> None:
    visible = _visible(runtime, world, "sampler")
    assert set(visible) == TODAY
    record = visible["today"]
    assert record.birth_name == world.inputs["today"].birth_name
    assert record.fields.isdisjoint(CONTACT | INS)
    assert record.email is None
    assert record.ins_number is None
    late = NOW.replace(hour=22, minute=59)  # 23:59 in Paris: still the same day
    assert set(_visible(runtime, world, "sampler", now=late)) == TODAY
    next_day = NOW.replace(hour=23, minute=1)  # 00:01 in Paris, the next day
    assert set(_visible(runtime, world, "sampler", now=next_day)) == {"tomorrow"}


def test_biologist_gets_identity_and_ins_but_no_contact(runtime: Runtime, world: World) -> None:
    visible = _visible(runtime, world, "biologist")
    assert set(visible) == IN_RELATIONSHIP
    record = visible["today"]
    assert record.ins_number == world.inputs["today"].nir.compact  # type: ignore[union-attr]
    assert record.email is None
    assert record.phone is None


@pytest.mark.parametrize("role", ["organization_admin", "security_officer"])
def test_admin_roles_reach_no_patient_and_their_searches_are_refused_and_recorded(
    runtime: Runtime, world: World, role: str
) -> None:
    assert _visible(runtime, world, role) == {}
    principal = world.principals[role]
    nir = world.inputs["today"].nir
    assert nir is not None

    def search() -> None:
        with audited_transaction(world.sessions) as session:
            keyring = world.keyring(runtime, session, principal, None)
            scope = staff_scope(session, principal, world.tenant, world.staff[role], now=NOW)
            PatientRepository(session, keyring, scope).find_by_nir(nir, purpose="care")

    with pytest.raises(AccessDeniedError):
        search()
    with world.sessions() as session:
        outcomes = set(
            session.scalars(
                select(AuditEvent.outcome).where(
                    AuditEvent.action == AuditAction.PATIENT_SEARCH_NIR.value,
                    AuditEvent.actor_id == principal.id,
                )
            )
        )
    assert outcomes == {"denied"}


def test_searches_return_only_records_in_scope(runtime: Runtime, world: World) -> None:
    principal = world.principals["receptionist"]
    with transaction(world.sessions) as session:
        keyring = world.keyring(runtime, session, principal, None)
        scope = staff_scope(session, principal, world.tenant, world.staff["receptionist"], now=NOW)
        repository = PatientRepository(session, keyring, scope)
        for name, person in world.inputs.items():
            assert person.nir is not None
            found = repository.find_by_nir(person.nir, purpose="care")
            assert [r.id for r in found] == (
                [world.patients[name]] if name in IN_RELATIONSHIP else []
            )
            by_name = repository.find_by_name(
                person.birth_name, person.first_given_name, person.birth_date, purpose="care"
            )
            assert len(by_name) == (1 if name in IN_RELATIONSHIP else 0)


def test_an_inactive_staff_member_reaches_nobody(runtime: Runtime, world: World) -> None:
    from labvault.staff.models import StaffMember

    with transaction(world.sessions) as session:
        member = session.get(StaffMember, world.staff["receptionist"])
        assert member is not None
        member.active = False
    assert _visible(runtime, world, "receptionist") == {}


def test_a_staff_member_of_another_tenant_reaches_nobody_here(
    runtime: Runtime, world: World
) -> None:
    intruder = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="receptionist")
    with transaction(world.sessions) as session:
        keyring = world.keyring(runtime, session, intruder, None)
        scope = staff_scope(session, intruder, world.tenant, world.foreign_staff, now=NOW)
        repository = PatientRepository(session, keyring, scope)
        assert all(repository.get(p, purpose="care") is None for p in world.patients.values())
        assert repository.get(world.foreign_patient, purpose="care") is None


def test_a_patient_reaches_its_own_records_only(runtime: Runtime, world: World) -> None:
    account = Principal(PrincipalKind.PATIENT, str(uuid.uuid4()))
    own = frozenset({world.patients["today"], world.patients["no_appointment"]})
    with transaction(world.sessions) as session:
        keyring = world.keyring(runtime, session, account, None)
        repository = PatientRepository(
            session, keyring, patient_scope(account, world.tenant, own, now=NOW)
        )
        seen = {
            p
            for p in [*world.patients.values(), world.foreign_patient]
            if repository.get(p, purpose="own")
        }
        assert seen == own
        mine = repository.get(world.patients["today"], purpose="own")
        assert mine is not None
        assert mine.email == world.inputs["today"].email
        nir = world.inputs["45_days_ago"].nir
        assert nir is not None
        with pytest.raises(AccessDeniedError):
            repository.find_by_nir(nir, purpose="own")


def test_scopes_cannot_be_borrowed_or_skipped(runtime: Runtime, world: World) -> None:
    receptionist = world.principals["receptionist"]
    with transaction(world.sessions) as session:
        keyring = world.keyring(runtime, session, receptionist, None)
        with pytest.raises(AccessDeniedError, match="only a named system job"):
            PatientRepository(session, keyring)
        someone_else = staff_scope(
            session, world.principals["biologist"], world.tenant, world.staff["biologist"]
        )
        with pytest.raises(AccessDeniedError, match="another principal"):
            PatientRepository(session, keyring, someone_else)
        foreign = TenantKeyring(session, runtime.key_provider, world.other_tenant, receptionist)
        mine = staff_scope(session, receptionist, world.tenant, world.staff["receptionist"])
        with pytest.raises(AccessDeniedError, match="another principal"):
            PatientRepository(session, foreign, mine)
        with pytest.raises(ValueError, match="SYSTEM_ACCESS"):
            AccessScope(
                principal=SystemPrincipal("test:x"),
                tenant_id=world.tenant,
                policy=mine.policy,
                now=NOW,
            )


def test_contact_updates_follow_the_same_scope(runtime: Runtime, world: World) -> None:
    update = ContactUpdate(email="nouvelle.adresse@example.org", phone="")
    results: dict[str, PatientRecord | None] = {}
    for role, name in [
        ("receptionist", "today"),
        ("receptionist", "45_days_ago"),
        ("sampler", "earlier_today"),
        ("biologist", "tomorrow"),
    ]:
        principal = world.principals[role]
        with transaction(world.sessions) as session:
            keyring = world.keyring(runtime, session, principal, None)
            scope = staff_scope(session, principal, world.tenant, world.staff[role], now=NOW)
            repository = PatientRepository(session, keyring, scope)
            results[f"{role}/{name}"] = repository.update_contact(
                world.patients[name], update, purpose="desk"
            )
    changed = results["receptionist/today"]
    assert changed is not None
    assert changed.email == "nouvelle.adresse@example.org"
    assert changed.phone is None
    assert [key for key, value in results.items() if value is not None] == ["receptionist/today"]
    with transaction(world.sessions) as session:
        system = world.keyring(runtime, session, SystemPrincipal("test:check"), None)
        repository = PatientRepository(session, system)
        found = repository.find_by_email("nouvelle.adresse@example.org", purpose="check")
        assert [r.id for r in found] == [world.patients["today"]]
        untouched = repository.get(world.patients["45_days_ago"], purpose="check")
        assert untouched is not None
        assert untouched.email == world.inputs["45_days_ago"].email
        assert found[0].birth_name == world.inputs["today"].birth_name


@pytest.mark.parametrize(
    "fields",
    [{"email": "pas une adresse"}, {"phone": "12"}, {"postal_code": "7500"}, {"nir": "1"}],
)
def test_bad_contact_details_are_refused_before_anything(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        ContactUpdate.model_validate(fields)


def test_a_hold_is_not_a_care_relationship(runtime: Runtime, world: World) -> None:
    """A slot merely held while a patient fills in the booking form (expired or not) puts
    nobody in the site's care; confirmed, the same appointment does."""

    def set_status(status: AppointmentStatus) -> None:
        with transaction(world.sessions) as session:
            session.execute(
                Appointment.__table__.update()
                .where(Appointment.patient_id == world.patients["cancelled"])
                .values(status=status.value, hold_expires_at=NOW + dt.timedelta(minutes=10))
            )

    set_status(AppointmentStatus.HELD)
    assert "cancelled" not in _visible(runtime, world, "receptionist")
    set_status(AppointmentStatus.BOOKED)
    assert "cancelled" in _visible(runtime, world, "receptionist")


# -- orders in the relationship rule, and service clients' scope ----------------------------


def _order(world: World, name: str, site: str, created: dt.datetime) -> None:
    with transaction(world.sessions) as session:
        session.add(
            ResultOrder(
                tenant_id=world.tenant,
                patient_id=world.patients[name],
                order_digest=uuid.uuid4().bytes * 2,
                site_id=world.sites[site],
                details=b"opaque",
                created_at=created,
            )
        )


def _client(world: World, kind: str = "lis", *, sites: tuple[str, ...] = ("main",)) -> uuid.UUID:
    with transaction(world.sessions) as session:
        client = ServiceClient(
            tenant_id=world.tenant, name=f"sgl-{uuid.uuid4().hex[:8]}", kind=kind, created_by="t"
        )
        session.add(client)
        session.flush()
        for site in sites:
            session.add(
                ServiceClientSite(
                    tenant_id=world.tenant, client_id=client.id, site_id=world.sites[site]
                )
            )
        return client.id


def _service_visible(
    runtime: Runtime, world: World, client_id: uuid.UUID, *, kind: str = "lis", **kwargs: object
) -> dict[str, PatientRecord]:
    principal = Principal(PrincipalKind.SERVICE, f"service:{client_id}", role=kind)
    with transaction(world.sessions) as session:
        keyring = world.keyring(runtime, session, principal, None)
        scope = service_scope(
            session,
            principal,
            world.tenant,
            kwargs.pop("as_client", client_id),  # type: ignore[arg-type]
            now=NOW,
        )
        repository = PatientRepository(session, keyring, scope)
        found = {
            name: repository.get(patient_id, purpose="care")
            for name, patient_id in world.patients.items()
        }
        found["foreign"] = repository.get(world.foreign_patient, purpose="care")
    return {name: record for name, record in found.items() if record is not None}


def test_an_order_at_a_site_within_the_window_is_a_care_relationship(
    runtime: Runtime, world: World
) -> None:
    _order(world, "no_appointment", "main", NOW - dt.timedelta(days=3))
    _order(world, "45_days_ago", "main", NOW - dt.timedelta(days=45))
    _order(world, "in_45_days", "annex", NOW - dt.timedelta(days=1))
    assert set(_visible(runtime, world, "biologist")) == IN_RELATIONSHIP | {"no_appointment"}
    assert set(_visible(runtime, world, "receptionist")) == IN_RELATIONSHIP | {"no_appointment"}
    assert set(_visible(runtime, world, "sampler")) == TODAY, "orders do not widen site-today"


def test_a_service_client_reaches_the_patients_of_its_sites_without_contact(
    runtime: Runtime, world: World
) -> None:
    _order(world, "no_appointment", "main", NOW - dt.timedelta(days=3))
    client = _client(world)
    visible = _service_visible(runtime, world, client)
    assert set(visible) == IN_RELATIONSHIP | {"no_appointment"}
    record = visible["today"]
    assert record.birth_name == world.inputs["today"].birth_name
    assert record.ins_number == world.inputs["today"].nir.compact  # type: ignore[union-attr]
    assert record.fields.isdisjoint(CONTACT)
    assert record.email is None
    annex = _client(world, "fhir", sites=("annex",))
    assert set(_service_visible(runtime, world, annex, kind="fhir")) == {"other_site"}
    assert _service_visible(runtime, world, _client(world, sites=())) == {}


def test_a_disabled_borrowed_or_mistyped_service_client_reaches_nobody(
    runtime: Runtime, world: World
) -> None:
    client = _client(world)
    other = _client(world)
    assert _service_visible(runtime, world, client, as_client=other) == {}
    assert _service_visible(runtime, world, client, kind="fhir") == {}, "kind must match"
    with transaction(world.sessions) as session:
        found = session.get(ServiceClient, client)
        assert found is not None
        found.disabled_at = NOW
    assert _service_visible(runtime, world, client) == {}
    with transaction(world.sessions) as session, pytest.raises(ValueError, match="service"):
        service_scope(session, world.principals["biologist"], world.tenant, other)


def test_a_service_client_cannot_update_patients(runtime: Runtime, world: World) -> None:
    client = _client(world)
    principal = Principal(PrincipalKind.SERVICE, f"service:{client}", role="lis")
    with transaction(world.sessions) as session:
        keyring = world.keyring(runtime, session, principal, None)
        repository = PatientRepository(
            session, keyring, service_scope(session, principal, world.tenant, client, now=NOW)
        )
        changed = repository.update_contact(
            world.patients["today"], ContactUpdate(email="x@example.org"), purpose="sync"
        )
    assert changed is None
