"""IDOR fuzzing: a patient account asking for 10,000 random and 10,000 real but foreign ids
gets 0 foreign records; a receptionist asking for every patient id of its tenant gets only
those in care at its sites.

Foreign = the other patients of the same tenant AND the patients of another tenant. Through
HTTP (``GET /api/v1/patients/{id}``) for a sample of each kind (20,000 TestClient calls
take minutes), and for the full 20,000 through the very call the route makes: a
``PatientRepository`` bound to the caller's scope (``accounts/callers.py``), ``.get()``.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy import select
from test_authorization_matrix import PATIENT_SUBJECT, Matrix, matrix

from access_world import IN_RELATIONSHIP
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.patients.models import Patient
from labvault.patients.scope import patient_scope, staff_scope, window_from
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients

__all__ = ["matrix"]  # the module-scoped world (one per backend), reused here

RANDOM_IDS = 10_000
FOREIGN_IDS = 10_000
HTTP_SAMPLE = 500
"""Per kind (random, foreign of this tenant, foreign of the other tenant) through HTTP."""
BULK_PER_TENANT = 5_000
"""Extra patients in each tenant, so that 10,000 distinct foreign ids are real."""
READ_PURPOSE = "patient-record"  # the route's (labvault.patients.routes.READ_PURPOSE)
RNG = random.Random(20261129)


@dataclass
class Fuzz:
    matrix: Matrix
    own: uuid.UUID
    same_tenant: list[uuid.UUID]
    other_tenant: list[uuid.UUID]

    def foreign(self, count: int) -> list[uuid.UUID]:
        """``count`` distinct real foreign ids, drawn from both tenants."""
        return RNG.sample(self.same_tenant + self.other_tenant, count)


def _bulk(matrix: Matrix, tenant: uuid.UUID, seed: int) -> None:
    runtime = matrix.runtime
    with transaction(runtime.tenant_sessions(tenant)) as session:
        keyring = TenantKeyring(
            session, runtime.key_provider, tenant, SystemPrincipal("test:idor-bulk")
        )
        PatientRepository(session, keyring).register_many(
            list(synthetic_patients(BULK_PER_TENANT, seed=seed))
        )


def _ids(matrix: Matrix, tenant: uuid.UUID) -> list[uuid.UUID]:
    with matrix.runtime.tenant_sessions(tenant)() as session:
        return sorted(session.scalars(select(Patient.id).where(Patient.tenant_id == tenant)))


@pytest.fixture(scope="module")
def fuzz(matrix: Matrix) -> Fuzz:
    world = matrix.world
    _bulk(matrix, world.tenant, seed=9001)
    _bulk(matrix, world.other_tenant, seed=9002)
    own = matrix.record_ids["own"]
    same = [i for i in _ids(matrix, world.tenant) if i != own]
    other = _ids(matrix, world.other_tenant)
    assert len(same) >= BULK_PER_TENANT
    assert len(other) >= BULK_PER_TENANT
    return Fuzz(matrix, own, same, other)


def test_a_patient_gets_no_foreign_record_over_http(fuzz: Fuzz) -> None:
    matrix = fuzz.matrix

    def get(patient_id: uuid.UUID) -> int:
        return matrix.call(PATIENT_SUBJECT, "GET", f"/api/v1/patients/{patient_id}").status_code

    assert get(fuzz.own) == 200, "the machinery can see a record: a 404 below means something"
    asked = (
        [uuid.uuid4() for _ in range(HTTP_SAMPLE)]
        + RNG.sample(fuzz.same_tenant, HTTP_SAMPLE)
        + RNG.sample(fuzz.other_tenant, HTTP_SAMPLE)
    )
    answers = {get(patient_id) for patient_id in asked}
    assert answers == {404}


def test_a_patient_gets_no_foreign_record_from_its_scoped_repository(fuzz: Fuzz) -> None:
    """The route's own call, 10,000 random and 10,000 real foreign ids: 0 records."""
    matrix = fuzz.matrix
    runtime = matrix.runtime
    account_id = matrix.callers[PATIENT_SUBJECT].account_id
    principal = Principal(PrincipalKind.PATIENT, str(account_id))
    asked = [uuid.uuid4() for _ in range(RANDOM_IDS)] + fuzz.foreign(FOREIGN_IDS)
    assert len(asked) == RANDOM_IDS + FOREIGN_IDS
    with transaction(matrix.world.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, matrix.world.tenant, principal)
        scope = patient_scope(principal, matrix.world.tenant, frozenset({fuzz.own}))
        repository = PatientRepository(session, keyring, scope)
        assert repository.get(fuzz.own, purpose=READ_PURPOSE) is not None
        found = [r for r in (repository.get(i, purpose=READ_PURPOSE) for i in asked) if r]
    assert found == []


def test_a_receptionist_asking_for_every_id_of_its_tenant_gets_only_those_in_care(
    fuzz: Fuzz,
) -> None:
    matrix = fuzz.matrix
    runtime = matrix.runtime
    world = matrix.world
    in_care = {world.patients[name] for name in IN_RELATIONSHIP}
    every = [fuzz.own, *fuzz.same_tenant]
    assert in_care <= set(every)

    # Over HTTP: the world's records and a sample of the others.
    asked = list(world.patients.values()) + RNG.sample(fuzz.same_tenant, HTTP_SAMPLE)
    seen = {
        patient_id
        for patient_id in asked
        if matrix.call("receptionist", "GET", f"/api/v1/patients/{patient_id}").status_code == 200
    }
    assert seen == in_care

    # Every id of the tenant through the route's scoped repository call.
    role = "receptionist"
    principal = Principal(PrincipalKind.STAFF, str(matrix.callers[role].account_id), role=role)
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, world.tenant, principal)
        scope = staff_scope(
            session,
            principal,
            world.tenant,
            world.staff[role],
            window=window_from(runtime.settings),
            now=utcnow(),
        )
        repository = PatientRepository(session, keyring, scope)
        found = {r.id for r in (repository.get(i, purpose=READ_PURPOSE) for i in every) if r}
    assert found == in_care
    assert utcnow() - matrix.now < dt.timedelta(hours=1)
