"""Honey records: planted like real patients and indistinguishable from them at rest; any
decryption of one stops the whole request before a key is unwrapped, locks the principal
and raises an alert that outlives the refused transaction; legitimate views leave them out
first. Both backends (row-level security on PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest
from sqlalchemy import Table, select
from typer.testing import CliRunner

from access_world import NOW, World, build_world
from labvault.appointments.models import Appointment
from labvault.cli import CliError, app
from labvault.core.access.policies import Interaction
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.index_rotation import JOB_PRINCIPAL as INDEX_ROTATION_JOB
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.crypto.passwords import Argon2Parameters, PasswordHasher
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import create_db_engine, transaction
from labvault.core.runtime import Runtime
from labvault.patients.models import ENCRYPTED_FIELDS, Patient
from labvault.patients.schemas import PatientInput
from labvault.patients.scope import staff_scope
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.results.clients import ServiceClientRegistry
from labvault.results.models import ServiceClient, ServiceClientKind
from labvault.security.alerts import KIND_LABELS
from labvault.security.honey import (
    ALERT_KIND,
    HONEY_AWARE_JOBS,
    HoneyGuards,
    HoneyMembership,
    HoneyPlantError,
    HoneyRecordTouchedError,
    PlantReport,
    check_label,
    honey_sets,
    honey_target,
    is_honey_aware,
    plant_honey,
)
from labvault.security.honey_models import HoneyMark
from labvault.security.lockout import wait_for_deferred
from labvault.security.models import SecurityAlert

REAL_EXTRA = 60
CHEAP = PasswordHasher(Argon2Parameters(time_cost=5, memory_cost=7168))
SETUP = SystemPrincipal("test:honey-setup")


class CountingProvider:
    """The runtime's provider, counting unwraps: "nothing decrypted" made observable."""

    def __init__(self, inner: KeyProvider) -> None:
        self._inner = inner
        self.unwrapped: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def unwrap(self, wrapped: bytes, context: str) -> Secret[bytes]:
        self.unwrapped.append(context.split("|")[3])
        return self._inner.unwrap(wrapped, context)

    def unwrap_many(self, items: Sequence[tuple[bytes, str]]) -> list[Secret[bytes]]:
        self.unwrapped.extend(context.split("|")[3] for _, context in items)
        return self._inner.unwrap_many(items)


@dataclass
class Honeyed:
    world: World
    report: PlantReport
    honey: frozenset[uuid.UUID]
    real: frozenset[uuid.UUID]


def _plant(runtime: Runtime, world: World, **options: Any) -> PlantReport:
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(
            session, runtime.key_provider, world.tenant, SystemPrincipal("cli:guard-honey-plant")
        )
        return plant_honey(
            session,
            runtime.key_provider,
            keyring,
            keyring.audit,
            density=options.get("density", 0.05),
            minimum=options.get("minimum", 5),
            label=options.get("label", "test-set"),
        )


@pytest.fixture
def honeyed(runtime: Runtime) -> Honeyed:
    world = build_world(runtime)
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, world.tenant, SETUP)
        PatientRepository(session, keyring).register_many(
            list(synthetic_patients(REAL_EXTRA, seed=909))
        )
    report = _plant(runtime, world)
    with world.sessions() as session:
        everyone = set(session.scalars(select(Patient.id).where(Patient.tenant_id == world.tenant)))
        honey = HoneyMembership(session, runtime.key_provider, world.tenant).honey_ids(everyone)
    return Honeyed(world, report, honey, frozenset(everyone - honey))


def _raw_patients(admin_url: str) -> dict[uuid.UUID, dict[str, Any]]:
    """The rows as a thief with the database's owner role reads them."""
    engine = create_db_engine(admin_url)
    try:
        with engine.connect() as connection:
            table = cast(Table, Patient.__table__)
            return {row.id: dict(row._mapping) for row in connection.execute(select(table))}
    finally:
        engine.dispose()


def test_planting_follows_density_and_minimum(honeyed: Honeyed) -> None:
    report = honeyed.report
    assert report.set_id is not None
    assert report.population == len(honeyed.real) == REAL_EXTRA + len(honeyed.world.patients)
    assert report.planted == len(honeyed.honey) == honey_target(report.population, 0.05, 5)
    assert report.appointments > 0


def test_honey_records_are_indistinguishable_at_rest(
    runtime: Runtime, honeyed: Honeyed, admin_database_url: str
) -> None:
    rows = _raw_patients(admin_database_url)
    honey = [rows[i] for i in honeyed.honey]
    real = [rows[i] for i in honeyed.real]
    clear = ("ins_oid", "identity_status", "index_generation", "erased_at", "data_key_id")
    columns = (*ENCRYPTED_FIELDS, "nir_index", "email_index", "phone_index", "name_index")

    def shape(row: dict[str, Any]) -> tuple[object, ...]:
        return (
            *(row[c] is None for c in columns),
            row["ins_oid"],
            row["identity_status"],
            row["index_generation"],
            row["erased_at"] is None,
        )

    real_shapes = {shape(row) for row in real}
    for row in honey:
        # The pattern of empty columns and every clear value is one real records have.
        assert shape(row) in real_shapes
        assert row["tenant_id"] == honeyed.world.tenant
        assert all(row[c] is not None for c in clear if c not in ("erased_at",))
        assert row["ins_oid"] != "1.2.250.1.213.1.4.10" or any(
            r["ins_oid"] == "1.2.250.1.213.1.4.10" for r in real
        )
        # Created with a batch of real records (every real record here came in a batch:
        # one created alone would lend a time minutes around its own), not at planting.
        assert row["created_at"] in {r["created_at"] for r in real}
        for column in ENCRYPTED_FIELDS:
            if row[column] is None:
                continue
            lengths = [len(r[column]) for r in real if r[column] is not None]
            assert min(lengths) <= len(row[column]) <= max(lengths), column
    # Same data keys: subject type, provider, one per record.
    with honeyed.world.sessions() as session:
        keys = session.execute(
            select(DataKeyRecord.subject_id, DataKeyRecord.subject_type, DataKeyRecord.provider)
        ).all()
        honey_keys = [k for k in keys if k.subject_id in honeyed.honey]
        assert {k.subject_type for k in honey_keys} == {"patient"}
        assert len(honey_keys) == len(honeyed.honey)
        assert {k.provider for k in honey_keys} == {runtime.key_provider.name}
        # Their appointments are shaped like real past ones (site, time, status, exams).
        appointments = list(session.scalars(select(Appointment)))
        honey_visits = [a for a in appointments if a.patient_id in honeyed.honey]
        real_visits = [a for a in appointments if a.patient_id in honeyed.real]
        assert honey_visits
        for visit in honey_visits:
            assert any(
                (r.site_id, r.starts_at, r.status, r.exams is None)
                == (visit.site_id, visit.starts_at, visit.status, visit.exams is None)
                for r in real_visits
            )
        # The marks name no patient id.
        marks = [bytes(m) for m in session.scalars(select(HoneyMark.mark))]
        assert len(marks) == len(honeyed.honey)
        assert not {m[:16] for m in marks} & {h.bytes for h in honeyed.honey}
    # The audit log lists no honey record (one event names the set, none a patient).
    with runtime.audit_sessions() as session:
        targets = set(session.scalars(select(AuditEvent.target_id)))
        assert not targets & honeyed.honey
        planted = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == AuditAction.GUARD_HONEY_PLANT.value)
            )
        )
        assert [e.target_id for e in planted] == [honeyed.report.set_id]


def _service_principal(runtime: Runtime, tenant_id: uuid.UUID) -> Principal:
    with transaction(runtime.tenant_sessions(tenant_id)) as session:
        registry = ServiceClientRegistry(session, tenant_id, AuditTrail(session, SETUP), CHEAP)
        client, _ = registry.add(
            "Extraction", kind=ServiceClientKind.FHIR, scopes=["system/Patient.read"]
        )
        return Principal(PrincipalKind.SERVICE, f"service:{client.id}", role="fhir")


def test_bulk_decrypt_stops_at_the_first_honey_record_and_the_alarm_outlives_the_rollback(
    runtime: Runtime, honeyed: Honeyed
) -> None:
    world = honeyed.world
    principal = _service_principal(runtime, world.tenant)
    provider = CountingProvider(runtime.key_provider)
    guards = HoneyGuards(cast(KeyProvider, provider), HoneyGuards.from_runtime(runtime).responder)
    first_honey = sorted(honeyed.honey)[0]
    batch = [*sorted(honeyed.real)[:3], first_honey, *sorted(honeyed.real)[3:6]]

    def scrape() -> None:
        with transaction(world.sessions) as session:
            keyring = TenantKeyring(
                session,
                cast(KeyProvider, provider),
                world.tenant,
                principal,
                guards=[guards.for_session(session, world.tenant)],
            )
            # The request wrote before it decrypted (SQLite: it holds the write lock).
            keyring.audit.record(
                AuditAction.PATIENT_SEARCH_NAME, tenant_id=world.tenant, purpose="scrape"
            )
            keyring.open_data_keys("patient", batch, "scrape")

    with pytest.raises(HoneyRecordTouchedError) as refused:
        scrape()
    assert str(first_honey) not in str(refused.value)
    # Only the honey key was unwrapped: no patient key of the batch, real or honey.
    assert provider.unwrapped == ["honey-key"]
    wait_for_deferred()
    with world.sessions() as session:
        alerts = list(session.scalars(select(SecurityAlert)))
        client = session.scalars(select(ServiceClient)).one()
    assert [(a.kind, a.severity, a.actor_id, a.target_id) for a in alerts] == [
        (ALERT_KIND, "critical", principal.id, first_honey)
    ]
    assert client.disabled_at is not None
    assert client.disabled_reason == "honey-record"
    with runtime.audit_sessions() as session:
        events = list(session.scalars(select(AuditEvent)))
    touched = [e for e in events if e.action == AuditAction.GUARD_HONEY_TOUCHED.value]
    assert [(e.actor_id, e.target_id, e.outcome) for e in touched] == [
        (principal.id, first_honey, "denied")
    ]
    assert any(e.action == AuditAction.GUARD_PRINCIPAL_LOCK.value for e in events)
    # The refused request's own writes were rolled back: its search and its reads.
    assert not [e for e in events if e.purpose == "scrape"]


def test_an_injected_system_job_is_refused_and_alerted(runtime: Runtime, honeyed: Honeyed) -> None:
    world = honeyed.world
    guards = HoneyGuards.from_runtime(runtime)

    def export() -> None:
        with transaction(world.sessions) as session:
            keyring = TenantKeyring(
                session,
                runtime.key_provider,
                world.tenant,
                SystemPrincipal("cli:patients-find"),
                guards=[guards.for_session(session, world.tenant)],
            )
            everyone = sorted(honeyed.real | honeyed.honey)
            PatientRepository(session, keyring).get_many(everyone, purpose="export")

    with pytest.raises(HoneyRecordTouchedError):
        export()
    wait_for_deferred()
    with world.sessions() as session:
        alerts = list(session.scalars(select(SecurityAlert)))
    assert [(a.kind, a.actor_id) for a in alerts] == [(ALERT_KIND, "system:cli:patients-find")]


def test_staff_reach_honey_records_through_their_sites_and_a_read_by_id_trips(
    runtime: Runtime, honeyed: Honeyed
) -> None:
    """Honey appointments put honey records in a site's care: a stolen receptionist
    account that opens its site's patients by id meets them."""
    world = honeyed.world
    _plant(runtime, world, density=0.3, label="more")
    principal = world.principals["receptionist"]
    guards = HoneyGuards.from_runtime(runtime)
    with world.sessions() as session:
        everyone = set(session.scalars(select(Patient.id).where(Patient.tenant_id == world.tenant)))
        honey = HoneyMembership(session, runtime.key_provider, world.tenant).honey_ids(everyone)
    reachable: list[uuid.UUID] = []

    def read() -> None:
        with transaction(world.sessions) as session:
            keyring = TenantKeyring(
                session,
                runtime.key_provider,
                world.tenant,
                principal,
                guards=[guards.for_session(session, world.tenant)],
            )
            scope = staff_scope(
                session, principal, world.tenant, world.staff["receptionist"], now=NOW
            )
            repository = PatientRepository(session, keyring, scope)
            reachable.extend(repository.in_scope_ids(sorted(honey), "patient", Interaction.READ))
            repository.get(reachable[0], purpose="consultation")

    with pytest.raises(HoneyRecordTouchedError):
        read()
    wait_for_deferred()
    with runtime.audit_sessions() as session:
        touched = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == AuditAction.GUARD_HONEY_TOUCHED.value)
            )
        )
    assert [(e.actor_id, e.target_id) for e in touched] == [(principal.id, reachable[0])]


def test_legitimate_views_filter_honey_before_decrypting(
    runtime: Runtime, honeyed: Honeyed
) -> None:
    """The demonstration the lists apply: candidates first, honey left out, then decrypt."""
    world = honeyed.world
    guards = HoneyGuards.from_runtime(runtime)
    with transaction(world.sessions) as session:
        guard = guards.for_session(session, world.tenant)
        keyring = TenantKeyring(
            session, runtime.key_provider, world.tenant, SystemPrincipal("test:lists"), [guard]
        )
        repository = PatientRepository(session, keyring)
        membership = guard.membership
        # A list of the main site's appointments (honey patients have some there).
        rows = list(
            session.scalars(select(Appointment).where(Appointment.site_id == world.sites["main"]))
        )
        assert {r.patient_id for r in rows} & honeyed.honey
        shown = membership.without_honey(rows, lambda row: row.patient_id)
        opened = repository.get_many([r.patient_id for r in shown], purpose="schedule")
        assert {p.id for p in opened} == {r.patient_id for r in shown}
        assert not {p.id for p in opened} & honeyed.honey
        # The same as a WHERE condition, for a query whose candidates are known.
        candidates = sorted(honeyed.real | honeyed.honey)
        kept = set(
            session.scalars(
                select(Patient.id).where(
                    Patient.id.in_(candidates), membership.exclusion(Patient.id, candidates)
                )
            )
        )
        assert kept == honeyed.real
    with world.sessions() as session:
        assert not list(session.scalars(select(SecurityAlert)))


def test_membership_unwraps_the_honey_key_once(runtime: Runtime, honeyed: Honeyed) -> None:
    provider = CountingProvider(runtime.key_provider)
    with honeyed.world.sessions() as session:
        membership = HoneyMembership(session, cast(KeyProvider, provider), honeyed.world.tenant)
        for patient_id in sorted(honeyed.real | honeyed.honey):
            membership.is_honey(patient_id)
        assert membership.honey_ids(honeyed.honey) == honeyed.honey
        assert membership.set_of(sorted(honeyed.honey)[0]) == honeyed.report.set_id
        assert membership.set_of(sorted(honeyed.real)[0]) is None
    assert provider.unwrapped == ["honey-key"]


def test_a_honey_aware_job_reads_them_without_alarm(runtime: Runtime, honeyed: Honeyed) -> None:
    world = honeyed.world
    guards = HoneyGuards.from_runtime(runtime)
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(
            session,
            runtime.key_provider,
            world.tenant,
            SystemPrincipal("cli:keys-rotate-index"),
            guards=[guards.for_session(session, world.tenant)],
        )
        assert set(keyring.open_data_keys("patient", sorted(honeyed.honey), "x")) == honeyed.honey
    with world.sessions() as session:
        assert not list(session.scalars(select(SecurityAlert)))


def test_planting_again_tops_up_only(runtime: Runtime, honeyed: Honeyed) -> None:
    again = _plant(runtime, honeyed.world)
    assert again.set_id is None
    assert again.planted == 0
    denser = _plant(runtime, honeyed.world, density=0.1, label="second")
    assert denser.planted > 0
    with honeyed.world.sessions() as session:
        sets = honey_sets(session, honeyed.world.tenant)
    assert [(s.label, s.marks) for s in sets] == [
        ("test-set", honeyed.report.planted),
        ("second", denser.planted),
    ]


def test_cli_plants_and_lists_without_naming_patients(
    cli_env: object, runtime: Runtime, honeyed: Honeyed
) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["guard", "honey", "list", "--organization", "Labo Alpha"])
    assert listed.exit_code == 0, listed.output
    assert "test-set" in listed.output
    assert not any(str(i) in listed.output for i in honeyed.honey)
    planted = runner.invoke(
        app, ["guard", "honey", "plant", "--organization", "Labo Alpha", "--density", "0.2"]
    )
    assert planted.exit_code == 0, planted.output
    assert "Planted honey set" in planted.output
    bad = runner.invoke(app, ["guard", "honey", "plant", "--label", "Jean Dupont!"])
    assert isinstance(bad.exception, CliError)
    with honeyed.world.sessions() as session:
        assert len(honey_sets(session, honeyed.world.tenant)) == 2


def test_the_honey_aware_jobs_are_the_jobs_that_run() -> None:
    assert INDEX_ROTATION_JOB in HONEY_AWARE_JOBS
    assert is_honey_aware(SystemPrincipal(INDEX_ROTATION_JOB))
    assert not is_honey_aware(SystemPrincipal("job:reminders"))
    assert not is_honey_aware(Principal(PrincipalKind.STAFF, "cli:keys-rotate-index"))
    assert ALERT_KIND in KIND_LABELS  # the officers' mail and page say what it is


def test_plant_input_is_checked() -> None:
    assert honey_target(0, 0.005, 5) == 5
    assert honey_target(10_000, 0.005, 5) == 50
    assert honey_target(10_001, 0.005, 5) == 51
    for density in (0, -1, 0.9):
        with pytest.raises(HoneyPlantError):
            honey_target(100, density, 5)
    for label in ("", "a b", "x" * 65, "é"):
        with pytest.raises(HoneyPlantError):
            check_label(label)
    assert check_label("export-2026.11_A") == "export-2026.11_A"


def test_a_real_patient_who_shares_a_honey_records_traits_gets_a_record_of_their_own(
    runtime: Runtime, honeyed: Honeyed
) -> None:
    """Deduplication on (birth name, first name, birth date) must not map a newcomer onto a
    honey record: every later action on that id would trip the guard for a legitimate user."""
    world = honeyed.world
    guards = HoneyGuards.from_runtime(runtime)
    decoy = sorted(honeyed.honey)[0]
    with transaction(world.sessions) as session:
        reader = TenantKeyring(
            session,
            runtime.key_provider,
            world.tenant,
            SystemPrincipal("cli:keys-rotate-index"),  # honey-aware: reads it without alarm
            guards=[guards.for_session(session, world.tenant)],
        )
        record = PatientRepository(session, reader).get(decoy, purpose="test")
        assert record is not None
    twin = PatientInput.model_validate(
        {
            "birth_name": record.birth_name,
            "first_names": record.first_names,
            "birth_date": record.birth_date.isoformat(),
            "sex": record.sex,
        }
    )
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(
            session,
            runtime.key_provider,
            world.tenant,
            SETUP,
            guards=[guards.for_session(session, world.tenant)],
        )
        result = PatientRepository(session, keyring).register_many([twin])
    assert result.existing == {}
    assert len(result.created) == 1
    assert result.created[0] != decoy
    with world.sessions() as session:
        assert not list(session.scalars(select(SecurityAlert)))
