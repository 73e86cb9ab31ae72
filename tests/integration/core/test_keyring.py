"""The decrypt choke point: guards see exactly whose keys are unwrapped; keys never travel."""

from __future__ import annotations

import base64
import json
import pickle
import uuid

import pytest
from sqlalchemy import delete, func, select, update

from labvault.core.access.decrypt import DecryptDeniedError, DecryptRequest
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.blind_index import IndexKind
from labvault.core.crypto.errors import CryptoError, DecryptionError, KeyProviderError
from labvault.core.crypto.keyring import (
    DataKeyNotFoundError,
    TenantKeyring,
    create_index_keys,
    index_key_context,
)
from labvault.core.crypto.models import DataKeyRecord, IndexKeyRecord
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.models import Patient
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients


class RecordingGuard:
    def __init__(self, refuse: set[uuid.UUID] | None = None) -> None:
        self.requests: list[DecryptRequest] = []
        self.refuse = refuse or set()

    def before_decrypt(self, request: DecryptRequest) -> None:
        self.requests.append(request)
        if self.refuse & set(request.subject_ids):
            raise DecryptDeniedError("refused by test guard")


def _setup(runtime: Runtime) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
        keyring = TenantKeyring(
            session, runtime.key_provider, tenant, SystemPrincipal("test:setup")
        )
        result = PatientRepository(session, keyring).register_many(
            list(synthetic_patients(3, seed=4))
        )
    return tenant, [result.created[i] for i in range(3)]


def test_guards_see_exactly_the_subjects_whose_keys_are_unwrapped(runtime: Runtime) -> None:
    tenant, (first, second, _) = _setup(runtime)
    guard = RecordingGuard()
    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(
            session, runtime.key_provider, tenant, SystemPrincipal("test:read"), [guard]
        )
        keys = keyring.open_data_keys("patient", [first, first], purpose="test")
        assert set(keys) == {first}
        record = PatientRepository(session, keyring).get(second, purpose="care")
    assert record is not None
    assert [(r.subject_type, r.subject_ids, r.purpose) for r in guard.requests] == [
        ("patient", (first,), "test"),
        ("patient", (second,), "care"),
    ]
    assert guard.requests[0].principal.id == "system:test:read"


def test_a_refusing_guard_stops_the_read_before_any_key_is_unwrapped(runtime: Runtime) -> None:
    tenant, (first, _, _) = _setup(runtime)
    unwrapped: list[object] = []
    provider = runtime.key_provider
    original = provider.unwrap_many

    def spy(items):  # type: ignore[no-untyped-def]
        unwrapped.extend(items)
        return original(items)

    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(
            session, provider, tenant, SystemPrincipal("test:read"), [RecordingGuard({first})]
        )
        keyring.indexer  # noqa: B018 - unwrap the index keys first, so that only data keys count
        provider.unwrap_many = spy  # type: ignore[method-assign]
        try:
            with pytest.raises(DecryptDeniedError):
                PatientRepository(session, keyring).get(first, purpose="test")
        finally:
            del provider.unwrap_many
    assert unwrapped == []


def test_a_wrapped_key_moved_to_another_subject_does_not_unwrap(runtime: Runtime) -> None:
    """The caller cannot pair an allowed subject with someone else's key."""
    tenant, (first, second, _) = _setup(runtime)
    with transaction(runtime.sessions) as session:
        victim = session.scalar(
            select(DataKeyRecord.wrapped_key).where(DataKeyRecord.subject_id == second)
        )
        session.execute(
            update(DataKeyRecord)
            .where(DataKeyRecord.subject_id == first)
            .values(wrapped_key=victim)
        )
    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("t:r"))
        with pytest.raises(DecryptionError, match="does not authenticate for this context"):
            keyring.open_data_keys("patient", [first], purpose="test")


def test_keys_refuse_to_be_pickled_and_the_worker_spec_carries_none(runtime: Runtime) -> None:
    tenant, (first, _, _) = _setup(runtime)
    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("t:p"))
        keys = keyring.open_data_keys("patient", [first], purpose="test")
        spec = runtime.sealer_spec(session, tenant)
        sealer = spec.build()
        for holder in (keyring, keyring.indexer, keys[first], runtime.key_provider, sealer):
            with pytest.raises(TypeError, match=r"pickle|sealer"):
                pickle.dumps(holder)
        wrapped = set(session.scalars(select(IndexKeyRecord.wrapped_key)))
    shipped = pickle.dumps(spec)
    document = json.loads(runtime.settings.key_file.read_text())
    for root in document["keys"]:
        material = base64.b64decode(root["material"])
        assert material not in shipped
        assert root["material"].encode() not in shipped
    for _, keys in sealer.indexer._generations:
        for index_key in keys.values():
            assert index_key not in shipped
    assert {blob for _, _, blob in spec.wrapped_index_keys} == {bytes(w) for w in wrapped}


def test_a_subject_opened_twice_is_audited_twice_and_unwrapped_once(runtime: Runtime) -> None:
    """With Transit every unwrap is a network call: one per subject per request, not per use."""
    tenant, (first, second, _) = _setup(runtime)
    calls: list[int] = []
    provider = runtime.key_provider
    original = provider.unwrap_many

    def counting(items):  # type: ignore[no-untyped-def]
        calls.append(len(items))
        return original(items)

    with runtime.sessions() as session:
        before = session.scalar(select(func.count()).select_from(AuditEvent))
    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(session, provider, tenant, SystemPrincipal("test:read"))
        provider.unwrap_many = counting  # type: ignore[method-assign]
        try:
            once = keyring.open_data_keys("patient", [first], purpose="care")
            again = keyring.open_data_keys("patient", [first, second], purpose="billing")
        finally:
            del provider.unwrap_many  # type: ignore[method-assign]
    assert calls == [1, 1]  # `first` is not unwrapped a second time
    assert again[first] is once[first]
    with runtime.sessions() as session:
        after = session.scalar(select(func.count()).select_from(AuditEvent))
    assert after - before == 3  # first (care), first (billing), second (billing)
    with transaction(runtime.sessions) as session:
        fresh = TenantKeyring(session, provider, tenant, SystemPrincipal("test:read"))
        provider.unwrap_many = counting  # type: ignore[method-assign]
        try:
            fresh.open_data_keys("patient", [first], purpose="care")
        finally:
            del provider.unwrap_many  # type: ignore[method-assign]
    assert calls == [1, 1, 1]  # a new keyring (a new request) unwraps again: no global cache


def test_a_missing_data_key_names_its_subjects_and_the_found_keys_stay_open(
    runtime: Runtime,
) -> None:
    """An erased subject (its key deleted after the caller's scope check) raises the specific
    ``DataKeyNotFoundError`` naming it; the other subjects' keys are unwrapped and kept, so
    the caller can leave the erased one out and ask again."""
    tenant, (first, second, _) = _setup(runtime)
    with transaction(runtime.sessions) as session:
        session.execute(update(Patient).where(Patient.id == second).values(data_key_id=None))
        session.execute(delete(DataKeyRecord).where(DataKeyRecord.subject_id == second))
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("t:r"))
        with pytest.raises(DataKeyNotFoundError, match="1 patient data key") as missing:
            keyring.open_data_keys("patient", [first, second], purpose="test")
        assert missing.value.subject_ids == (second,)
        assert isinstance(missing.value, KeyProviderError)
        assert str(second) not in str(missing.value)
        assert set(keyring.open_data_keys("patient", [first], purpose="test")) == {first}


def test_the_generation_1_context_is_unchanged_and_later_ones_name_their_generation() -> None:
    tenant = uuid.UUID(int=7)
    assert (
        index_key_context(tenant, IndexKind.NIR, 1)
        == "labvault/v1|index_key|00000000-0000-0000-0000-000000000007|nir"
    )
    assert index_key_context(tenant, IndexKind.NIR, 2).endswith("|nir|g2")
    with pytest.raises(ValueError, match="start at 1"):
        index_key_context(tenant, IndexKind.NIR, 0)


def test_an_old_generations_index_key_copied_into_a_new_generation_row_does_not_unwrap(
    runtime: Runtime,
) -> None:
    """A database writer cannot make a rotation keep using an exposed key by copying its
    wrapped blob into the new generation's row: the blob is bound to its generation."""
    tenant, _ = _setup(runtime)
    with transaction(runtime.sessions) as session:
        create_index_keys(session, runtime.key_provider, tenant, generation=2)
    with transaction(runtime.sessions) as session:
        rows = session.execute(
            select(IndexKeyRecord.kind, IndexKeyRecord.wrapped_key).where(
                IndexKeyRecord.tenant_id == tenant, IndexKeyRecord.generation == 1
            )
        ).all()
        old = {kind: bytes(blob) for kind, blob in rows}
        for kind, blob in old.items():
            session.execute(
                update(IndexKeyRecord)
                .where(
                    IndexKeyRecord.tenant_id == tenant,
                    IndexKeyRecord.generation == 2,
                    IndexKeyRecord.kind == kind,
                )
                .values(wrapped_key=blob)
            )
    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("t:r"))
        with pytest.raises(CryptoError):
            _ = keyring.indexer.generations
