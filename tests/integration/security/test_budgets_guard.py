"""The budget guard in the decrypt choke point: a staff account that pages through patients
gets at most its hourly budget, then the read is refused before any key is unwrapped (and
nothing of it audited as read), the account is locked with its sessions revoked, an alert
and a ``guard:budget:exceeded`` event survive the caller's rollback; the API answers a
problem+json that names nobody. Both backends, the embedded database store."""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from test_lockout import EMAIL, Lab, _principal

from labvault.accounts.models import AccountStatus
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.security.alerts import KIND_LABELS
from labvault.security.budget_backends import DatabaseBudgetStore
from labvault.security.budgets import (
    BudgetExceededError,
    BudgetGuard,
    BudgetPolicy,
)
from labvault.security.lockout import wait_for_deferred

HOURLY = 7


@pytest.fixture
def lab(runtime: Runtime) -> Lab:
    return Lab(runtime)


def _patients(runtime: Runtime, lab: Lab, count: int) -> list[uuid.UUID]:
    with transaction(runtime.tenant_sessions(lab.tenant_id)) as session:
        keyring = TenantKeyring(
            session, runtime.key_provider, lab.tenant_id, SystemPrincipal("test:seed")
        )
        people = list(synthetic_patients(count, seed=909))
        return list(PatientRepository(session, keyring).register_many(people).created.values())


def _guard(runtime: Runtime, lab: Lab) -> BudgetGuard:
    guard = BudgetGuard.from_runtime(runtime, DatabaseBudgetStore(runtime.engine))
    guard.policy = BudgetPolicy({"staff:receptionist": (HOURLY, 3 * HOURLY, 10 * HOURLY)})
    return guard


def test_a_scraping_account_gets_at_most_its_hourly_budget_then_is_locked(
    runtime: Runtime, lab: Lab
) -> None:
    account = lab.staff()
    token = lab.session_token(account)
    principal = _principal(account)
    patients = _patients(runtime, lab, 12)
    guard = _guard(runtime, lab)
    opened: set[uuid.UUID] = set()
    refused: list[tuple[int, str]] = []
    for start in range(0, len(patients), 3):
        batch = patients[start : start + 3]
        try:
            with transaction(runtime.tenant_sessions(lab.tenant_id)) as session:
                keyring = TenantKeyring(
                    session, runtime.key_provider, lab.tenant_id, principal, [guard]
                )
                # The caller writes first, as a search does (its audit event): on SQLite it
                # holds the write lock when the guard runs.
                keyring.audit.record_many(
                    AuditAction.PATIENT_SEARCH_NAME,
                    tenant_id=lab.tenant_id,
                    target_type="patient",
                    target_ids=[None],
                    purpose="care",
                )
                keys = keyring.open_data_keys("patient", batch, "care")
                opened.update(keys)
        except BudgetExceededError as refusal:
            refused.append((start, str(refusal)))
            break
    wait_for_deferred()
    assert refused == [(6, "read budget exceeded (1h)")], "2 batches of 3 fit in 7, not 3"
    assert len(opened) == 6 <= HOURLY
    with runtime.audit_sessions() as session:
        read = session.scalar(
            select(func.count()).where(
                AuditEvent.action == "patient:record:read", AuditEvent.actor_id == principal.id
            )
        )
        exceeded = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "guard:budget:exceeded")
        ).all()
    assert read == 6, "the refused batch was not recorded as read: nothing was decrypted"
    assert [(e.actor_id, e.purpose, e.outcome) for e in exceeded] == [
        (principal.id, "1h", "denied")
    ]
    assert lab.account().status == AccountStatus.LOCKED.value
    assert not lab.live(token)
    assert [a.kind for a in lab.alerts()] == ["read-budget-exceeded"]
    assert "read-budget-exceeded" in KIND_LABELS  # the officers' mail and page say what it is
    assert EMAIL not in repr(lab.alerts()[0].__dict__)


def test_with_the_lock_off_the_read_is_refused_and_alerted_but_nobody_is_locked(
    runtime: Runtime, lab: Lab
) -> None:
    account = lab.staff()
    principal = _principal(account)
    patients = _patients(runtime, lab, 3)
    guard = _guard(runtime, lab)
    guard._lock_on_exceed = False
    guard.policy = BudgetPolicy({"staff:receptionist": (2, 2, 2)})
    with (
        pytest.raises(BudgetExceededError),
        transaction(runtime.tenant_sessions(lab.tenant_id)) as session,
    ):
        TenantKeyring(
            session, runtime.key_provider, lab.tenant_id, principal, [guard]
        ).open_data_keys("patient", patients, "care")
    wait_for_deferred()
    assert lab.account().status == AccountStatus.ACTIVE.value
    assert [a.kind for a in lab.alerts()] == ["read-budget-exceeded"]


def test_system_jobs_and_other_subjects_are_not_charged(runtime: Runtime, lab: Lab) -> None:
    patients = _patients(runtime, lab, 5)
    guard = _guard(runtime, lab)
    guard.policy = BudgetPolicy({"staff:receptionist": (0, 0, 0)})
    with transaction(runtime.tenant_sessions(lab.tenant_id)) as session:
        job = SystemPrincipal("cli:patients-export")
        keyring = TenantKeyring(session, runtime.key_provider, lab.tenant_id, job, [guard])
        assert len(keyring.open_data_keys("patient", patients, "export")) == 5
    assert lab.alerts() == []


def test_the_api_answers_a_refusal_with_a_problem_that_names_nobody(runtime: Runtime) -> None:
    from labvault.app import create_app
    from labvault.security.budgets import HOUR

    app: FastAPI = create_app(runtime.settings, runtime)

    @app.get("/api/v1/test-budget")
    def refuse() -> None:
        raise BudgetExceededError(HOUR)

    @app.get("/test-budget")
    def refuse_page() -> None:
        raise BudgetExceededError(HOUR)

    with TestClient(app, base_url="https://testserver") as client:
        answer = client.get("/api/v1/test-budget")
        page = client.get("/test-budget")
    assert answer.status_code == 429
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = answer.json()
    assert body["type"].endswith("/read-budget-exceeded")
    assert set(body) == {"type", "title", "status", "detail"}
    assert page.status_code == 429
    assert page.headers["content-type"].startswith("text/html")


def test_an_unreachable_store_refuses_the_read(runtime: Runtime, lab: Lab) -> None:
    """No count, no read: the guard fails closed, and the API says 503."""
    from labvault.app import create_app
    from labvault.security.budget_backends import RedisBudgetStore
    from labvault.security.budgets import BudgetUnavailableError

    account = lab.staff()
    patients = _patients(runtime, lab, 1)
    guard = BudgetGuard.from_runtime(runtime, RedisBudgetStore("redis://127.0.0.1:9/0"))
    with (
        pytest.raises(BudgetUnavailableError),
        transaction(runtime.tenant_sessions(lab.tenant_id)) as session,
    ):
        TenantKeyring(
            session, runtime.key_provider, lab.tenant_id, _principal(account), [guard]
        ).open_data_keys("patient", patients, "care")
    assert lab.account().status == AccountStatus.ACTIVE.value, "an outage locks nobody"

    app: FastAPI = create_app(runtime.settings, runtime)

    @app.get("/api/v1/test-budget-store")
    def refuse() -> None:
        raise BudgetUnavailableError

    with TestClient(app, base_url="https://testserver") as client:
        answer = client.get("/api/v1/test-budget-store")
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/problem+json")
