"""A ciphertext moved to another row, column or tenant fails loudly instead of decrypting."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.errors import DecryptionError
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.models import Patient
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients


def _setup(runtime: Runtime, name: str = "Labo") -> tuple[uuid.UUID, list[uuid.UUID]]:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, name).id
        keyring = TenantKeyring(
            session, runtime.key_provider, tenant, SystemPrincipal("test:setup")
        )
        result = PatientRepository(session, keyring).register_many(
            list(synthetic_patients(2, seed=11))
        )
    return tenant, [result.created[0], result.created[1]]


def _get(runtime: Runtime, tenant: uuid.UUID, patient_id: uuid.UUID) -> object:
    with transaction(runtime.tenant_sessions(tenant)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("test:read"))
        return PatientRepository(session, keyring).get(patient_id, purpose="test")


def _set(runtime: Runtime, patient_id: uuid.UUID, **values: object) -> None:
    """As an attacker with the owner's rights (row-level security does not stop them)."""
    with transaction(runtime.admin_sessions) as session:
        session.execute(update(Patient).where(Patient.id == patient_id).values(**values))


def _column(runtime: Runtime, patient_id: uuid.UUID, column: str) -> bytes:
    with transaction(runtime.admin_sessions) as session:
        return bytes(
            session.scalar(select(getattr(Patient, column)).where(Patient.id == patient_id))
        )


def test_untouched_patients_read_back(runtime: Runtime) -> None:
    tenant, (first, second) = _setup(runtime)
    assert _get(runtime, tenant, first) is not None
    assert _get(runtime, tenant, second) is not None


def test_value_moved_to_another_column_of_the_same_row_fails(runtime: Runtime) -> None:
    tenant, (first, _) = _setup(runtime)
    _set(runtime, first, city=_column(runtime, first, "birth_name"))
    with pytest.raises(DecryptionError, match=r"patients\.city of row"):
        _get(runtime, tenant, first)


def test_value_moved_to_another_patient_fails(runtime: Runtime) -> None:
    tenant, (first, second) = _setup(runtime)
    _set(runtime, second, birth_name=_column(runtime, first, "birth_name"))
    with pytest.raises(DecryptionError, match="sealed under another data key"):
        _get(runtime, tenant, second)


def test_whole_row_swapped_with_its_key_still_fails(runtime: Runtime) -> None:
    """Even when the data key follows, the row id in the associated data does not match."""
    tenant, (first, second) = _setup(runtime)
    with transaction(runtime.admin_sessions) as session:
        source = session.get(Patient, first)
        assert source is not None
        copied = {c: getattr(source, c) for c in ("birth_name", "first_names", "data_key_id")}
    _set(runtime, second, **copied)
    with pytest.raises(DecryptionError, match=f"row {second}"):
        _get(runtime, tenant, second)


def test_flipped_bit_fails(runtime: Runtime) -> None:
    tenant, (first, _) = _setup(runtime)
    blob = bytearray(_column(runtime, first, "first_names"))
    blob[-5] ^= 0x01
    _set(runtime, first, first_names=bytes(blob))
    with pytest.raises(DecryptionError, match="does not authenticate"):
        _get(runtime, tenant, first)


def test_wrapped_key_moved_between_subjects_fails(runtime: Runtime) -> None:
    tenant, (first, second) = _setup(runtime)
    with transaction(runtime.admin_sessions) as session:
        keys = {
            p.id: p.data_key_id
            for p in session.scalars(select(Patient).where(Patient.id.in_([first, second])))
        }
        wrapped = session.scalar(
            select(DataKeyRecord.wrapped_key).where(DataKeyRecord.id == keys[first])
        )
        session.execute(
            update(DataKeyRecord)
            .where(DataKeyRecord.id == keys[second])
            .values(wrapped_key=wrapped)
        )
    with pytest.raises(DecryptionError, match="wrapped key does not authenticate"):
        _get(runtime, tenant, second)


def test_another_tenant_cannot_open_a_patient(runtime: Runtime) -> None:
    _, (first, _) = _setup(runtime, "Labo A")
    other, (theirs, _) = _setup(runtime, "Labo B")
    assert _get(runtime, other, first) is None
    # The schema refuses to move a patient to another tenant away from its data key.
    with pytest.raises(IntegrityError), transaction(runtime.admin_sessions) as session:
        session.execute(update(Patient).where(Patient.id == first).values(tenant_id=other))
    # A wrapped key copied into another tenant's row does not unwrap there: the wrapping
    # context names the tenant and the subject.
    with transaction(runtime.admin_sessions) as session:
        stolen = session.scalar(
            select(DataKeyRecord.wrapped_key).where(DataKeyRecord.subject_id == first)
        )
        session.execute(
            update(DataKeyRecord)
            .where(DataKeyRecord.subject_id == theirs)
            .values(wrapped_key=stolen)
        )
    with pytest.raises(DecryptionError, match="does not authenticate for this context"):
        _get(runtime, other, theirs)
