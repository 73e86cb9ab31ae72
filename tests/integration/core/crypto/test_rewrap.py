"""The rewrap job on SQLite and PostgreSQL (row-level security): every key moved under the
active root key version, patients still readable, concurrent changes left alone, audit
events that verify, retired versions that no longer open a backup."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from sqlalchemy import delete, func, select, update

from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.checkpoints import SIGNING_LABEL
from labvault.core.audit.models import AuditEvent
from labvault.core.audit.sequencer import SEAL_LABEL
from labvault.core.audit.verify import verify_log
from labvault.core.config import Settings
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.keyring import TenantKeyring, data_key_context
from labvault.core.crypto.models import DataKeyRecord, IndexKeyRecord
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.providers.chain import active_label
from labvault.core.crypto.rewrap import KEY_TABLES, KeyStore, _store_page, census, migrate, rewrap
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.models import Patient
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients

PATIENTS = 7


def _organization(runtime: Runtime, name: str, patients: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with transaction(runtime.admin_sessions) as session:
        tenant = create_organization(session, runtime.key_provider, name).id
    with transaction(runtime.tenant_sessions(tenant)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("test:seed"))
        result = PatientRepository(session, keyring).register_many(
            list(synthetic_patients(patients, seed=len(name)))
        )
    return tenant, [result.created[i] for i in range(patients)]


def _store(runtime: Runtime, tenants: Sequence[uuid.UUID]) -> KeyStore:
    return KeyStore(list(tenants), runtime.tenant_sessions, runtime.audit_sessions)


def _read_all(runtime: Runtime, tenant: uuid.UUID, patients: Sequence[uuid.UUID]) -> list[str]:
    with transaction(runtime.tenant_sessions(tenant)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("test:read"))
        repository = PatientRepository(session, keyring)
        records = [repository.get(patient, purpose="test") for patient in patients]
    return [f"{r.birth_name}|{r.first_names}|{r.nir}" for r in records if r is not None]


def _wrapped(runtime: Runtime, tenant: uuid.UUID) -> dict[uuid.UUID, bytes]:
    with runtime.tenant_sessions(tenant)() as session:
        rows = session.execute(
            select(DataKeyRecord.id, DataKeyRecord.wrapped_key).where(
                DataKeyRecord.tenant_id == tenant
            )
        ).all()
    return {row_id: bytes(blob) for row_id, blob in rows}


def _actions(runtime: Runtime, action: AuditAction) -> list[str | None]:
    with runtime.audit_sessions() as session:
        return list(
            session.scalars(select(AuditEvent.purpose).where(AuditEvent.action == action.value))
        )


def _verify(settings: Settings) -> None:
    """``labvault audit verify`` as a new process would: provider and derivations fresh."""
    fresh = Runtime(settings)
    try:
        audit_log = fresh.audit_log
        audit_log.advance(force_checkpoint=True)
        with fresh.audit_sessions() as session:
            report = verify_log(
                session, audit_log.trusted_keys, audit_log.seal_keys(), audit_log.witness
            )
        assert report.ok, [f.message for f in report.findings]
        assert report.events > 0
    finally:
        fresh.close()


def test_rewrap_after_rotation_keeps_every_patient_readable(
    runtime: Runtime, settings: Settings
) -> None:
    first, first_patients = _organization(runtime, "Labo Un", PATIENTS)
    second, second_patients = _organization(runtime, "Labo Deux", 3)
    runtime.audit_log.advance(force_checkpoint=True)  # sealed and signed under the old root
    before = {
        t: _read_all(runtime, t, p) for t, p in ((first, first_patients), (second, second_patients))
    }
    provider = runtime.key_provider
    assert isinstance(provider, FileKeyProvider)
    backup = _wrapped(runtime, first)  # a database backup taken before the rotation

    provider.rotate()
    store = _store(runtime, [first, second])
    pending = census(store, provider)
    index_keys = pending.total - PATIENTS - 3
    assert index_keys > 0
    assert pending.not_current == pending.total
    progress: list[int] = []

    report = rewrap(store, provider, batch_size=3, on_progress=progress.append)

    assert report.rewrapped == pending.total
    assert report.changed_meanwhile == 0
    assert report.complete
    assert sum(progress) == pending.total
    assert census(store, provider).not_current == 0
    assert {
        t: _read_all(runtime, t, p) for t, p in ((first, first_patients), (second, second_patients))
    } == before
    after = _wrapped(runtime, first)
    assert set(after) == set(backup)
    assert all(after[k] != backup[k] for k in backup)
    batches = _actions(runtime, AuditAction.KEYS_REWRAP_BATCH)
    assert len(batches) == report.batches
    assert sum(int(p.split("/r:")[1].split("/")[0]) for p in batches if p) == pending.total
    assert _actions(runtime, AuditAction.KEYS_REWRAP_COMPLETE) == [
        f"keys-rewrap/r:{pending.total}/s:0"
    ]
    with runtime.tenant_sessions(first)() as session:
        assert set(session.scalars(select(IndexKeyRecord.provider))) == {"file"}

    # A second run has nothing to do and records no batch.
    again = rewrap(store, provider, batch_size=3)
    assert (again.rewrapped, again.batches, again.complete) == (0, 0, True)
    assert len(_actions(runtime, AuditAction.KEYS_REWRAP_BATCH)) == report.batches

    _verify(settings)

    # Retire the old version: the live data still opens, the backup never again.
    provider.retire([SEAL_LABEL, SIGNING_LABEL], active_label(provider))
    assert _read_all(runtime, first, first_patients) == before[first]
    reloaded = FileKeyProvider(provider.path)
    key_id, blob = next(iter(backup.items()))
    with runtime.tenant_sessions(first)() as session:
        subject = session.scalar(select(DataKeyRecord.subject_id).where(DataKeyRecord.id == key_id))
    assert subject is not None
    with pytest.raises(KeyProviderError, match="retired"):
        reloaded.unwrap(blob, data_key_context(first, "patient", subject, key_id))
    _verify(settings)


class MeddlingProvider(FileKeyProvider):
    """The real file provider; while the job holds a page, another writer erases one of its
    keys and rewraps another (as an erasure and a second rewrap job would)."""

    def __init__(self, path: object, meddle: object) -> None:
        super().__init__(path)  # type: ignore[arg-type]
        self.meddle = meddle
        self.calls = 0

    def rewrap_many(self, items):  # type: ignore[no-untyped-def]
        result = super().rewrap_many(items)
        self.calls += 1
        if self.calls == 1:
            self.meddle()  # type: ignore[operator]
        return result


def test_keys_erased_or_changed_meanwhile_are_left_alone(
    runtime: Runtime, settings: Settings
) -> None:
    tenant, patients = _organization(runtime, "Labo Un", 4)
    FileKeyProvider(settings.key_file).rotate()
    sessions = runtime.tenant_sessions(tenant)
    with sessions() as session:
        first_page = list(
            session.execute(
                select(DataKeyRecord.id, DataKeyRecord.wrapped_key, DataKeyRecord.subject_id)
                .where(DataKeyRecord.tenant_id == tenant)
                .order_by(DataKeyRecord.id)
                .limit(2)
            ).all()
        )
    (erased_id, _, erased_subject), (changed_id, changed_blob, changed_subject) = first_page
    other = FileKeyProvider(settings.key_file)
    concurrent_blob = other.rewrap_many(
        [(bytes(changed_blob), data_key_context(tenant, "patient", changed_subject, changed_id))]
    )[0]

    def meddle() -> None:
        with transaction(sessions) as session:
            # As an erasure does: the record lets go of its key, then the key is deleted.
            session.execute(
                update(Patient).where(Patient.id == erased_subject).values(data_key_id=None)
            )
            session.execute(delete(DataKeyRecord).where(DataKeyRecord.id == erased_id))
            session.execute(
                update(DataKeyRecord)
                .where(DataKeyRecord.id == changed_id)
                .values(wrapped_key=concurrent_blob)
            )

    provider = MeddlingProvider(settings.key_file, meddle)
    report = rewrap(_store(runtime, [tenant]), provider, batch_size=100)

    assert report.changed_meanwhile == 2
    assert report.complete
    with sessions() as session:
        assert session.get(DataKeyRecord, erased_id) is None, "an erased key is not brought back"
        kept = session.scalar(
            select(DataKeyRecord.wrapped_key).where(DataKeyRecord.id == changed_id)
        )
        count = session.scalar(select(func.count()).select_from(DataKeyRecord))
    assert kept is not None
    assert bytes(kept) == concurrent_blob
    assert count == 3
    (purpose,) = [
        p for p in _actions(runtime, AuditAction.KEYS_REWRAP_BATCH) if p and "/data/" in p
    ]
    assert purpose == "keys-rewrap/data/r:2/s:2"
    readable = [p for p in patients if p not in {erased_subject}]
    assert len(_read_all(runtime, tenant, readable)) == 3


def test_a_blob_that_does_not_authenticate_stops_the_batch_and_changes_nothing(
    runtime: Runtime, settings: Settings
) -> None:
    tenant, _ = _organization(runtime, "Labo Un", 3)
    provider = FileKeyProvider(settings.key_file)
    provider.rotate()
    with transaction(runtime.tenant_sessions(tenant)) as session:
        row = session.scalars(select(DataKeyRecord).order_by(DataKeyRecord.id).limit(1)).one()
        row.subject_id = uuid.uuid4()  # moved: its wrapping context no longer matches
    before = _wrapped(runtime, tenant)
    with pytest.raises(Exception, match="does not authenticate"):
        rewrap(_store(runtime, [tenant]), provider, batch_size=100)
    assert _wrapped(runtime, tenant) == before
    assert _actions(runtime, AuditAction.KEYS_REWRAP_BATCH) == []


def test_migrate_moves_every_key_to_another_key_file(runtime: Runtime, settings: Settings) -> None:
    tenant, patients = _organization(runtime, "Labo Un", 5)
    before = _read_all(runtime, tenant, patients)
    source = FileKeyProvider(settings.key_file)
    target = FileKeyProvider.create(settings.key_file.parent.parent / "new-keys" / "root.key")
    store = _store(runtime, [tenant])

    report = migrate(store, source, target, batch_size=4)

    assert report.complete
    assert report.rewrapped == census(store, target).total
    assert census(store, target).not_current == 0
    assert all(
        target.owns(blob) and not source.owns(blob) for blob in _wrapped(runtime, tenant).values()
    )
    assert _actions(runtime, AuditAction.KEYS_PROVIDER_MIGRATE) == [
        f"keys-migrate/file-to-file/r:{report.rewrapped}"
    ]
    with transaction(runtime.tenant_sessions(tenant)) as session:
        keyring = TenantKeyring(session, target, tenant, SystemPrincipal("test:read"))
        repository = PatientRepository(session, keyring)
        after = [repository.get(p, purpose="test") for p in patients]
    assert [f"{r.birth_name}|{r.first_names}|{r.nir}" for r in after if r is not None] == before


def test_a_page_is_written_only_into_the_tenant_it_was_read_for(
    runtime: Runtime, settings: Settings
) -> None:
    """The conditional update names the tenant: SQLite has no row-level security to stop a
    page of another tenant's rows (by a bug upstream) from being written through."""
    first, _ = _organization(runtime, "Labo Un", 2)
    second, _ = _organization(runtime, "Labo Deux", 2)
    provider = FileKeyProvider(settings.key_file)
    provider.rotate()
    data_keys = KEY_TABLES[0]
    with runtime.tenant_sessions(second)() as session:
        rows = data_keys.page(session, second, None, 10)
    fresh = provider.rewrap_many([(row.wrapped, row.context) for row in rows])
    before = _wrapped(runtime, second)

    with transaction(runtime.tenant_sessions(first)) as session:
        assert _store_page(session, data_keys, first, provider.name, rows, fresh) == 0

    assert _wrapped(runtime, second) == before
    with transaction(runtime.tenant_sessions(second)) as session:
        assert _store_page(session, data_keys, second, provider.name, rows, fresh) == len(rows)
