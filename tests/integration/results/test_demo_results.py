"""``labvault demo`` seeds lab results through the real intake and review paths: released
reports with trends for the demo patient account (and for nobody else), reports waiting
for the demo biologist, a sensitive one waiting for its phone call, one in the matching
queue; all sealed (a scan of the database finds none of their values) and audited."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from helpers import leaked, pg_dump, sqlite_files
from labvault.accounts.models import Account
from labvault.app import create_app
from labvault.cli import app
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.demo import (
    DEMO_ACCOUNTS,
    DEMO_BIOLOGIST,
    DEMO_CONCLUSION,
    DEMO_ORGANIZATION,
    DEMO_PRESCRIBER,
)
from labvault.organizations.services import get_organization
from labvault.patients.scope import patient_scope, staff_scope
from labvault.patients.services import PatientRepository, SealedItem
from labvault.results.delivery import FileResultDelivery
from labvault.results.models import MessageStatus, ReportStatus, ResultMessage, ResultReport
from labvault.results.portal import ResultNotFoundError, ResultPortal
from labvault.results.review import ReviewService

runner = CliRunner()

SEALED_TEXTS = (
    "Cholestérol total",
    "Triglycérides",
    "Glycémie, HbA1c et bilan lipidique",
    "Sérologie VIH 1+2",
    "VIH 1+2 Ac et Ag p24",
    "Négatif",
    "mmol/L",
    "10*9/L",
    DEMO_CONCLUSION,
    DEMO_PRESCRIBER.split("^")[0],
    "Compte rendu de demonstration",
    "CMD-DEMO-0001",  # order numbers are kept as digests only
    "DEMO-0008",
)
"""Texts that exist only inside the demo's results (the catalog's exam labels are stored in
clear on purpose, so they are not here)."""

PATIENTS = 6


def _portal(
    session: object, runtime: Runtime, tenant: uuid.UUID, patient_id: uuid.UUID
) -> ResultPortal:
    principal = Principal(PrincipalKind.PATIENT, str(uuid.uuid4()))
    keyring = TenantKeyring(session, runtime.key_provider, tenant, principal)  # type: ignore[arg-type]
    scope = patient_scope(principal, tenant, frozenset({patient_id}))
    return ResultPortal(session, keyring, scope)  # type: ignore[arg-type]


def test_the_demo_seeds_results_sealed_and_seen_by_their_patient_only(
    cli_env: Settings, runtime: Runtime, backend: str
) -> None:
    result = runner.invoke(app, ["demo", "--no-serve", "--patients", str(PATIENTS)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (
        "3 released to the demo patient, 3 to validate, 1 to give by phone, "
        "1 waiting in the matching queue" in said
    )
    for where in ("/compte/resultats", "/biologie/resultats", "/laboratoire/rapprochement"):
        assert where in said
    again = runner.invoke(app, ["demo", "--no-serve", "--patients", str(PATIENTS)])
    assert again.exit_code == 0, again.output

    with transaction(runtime.sessions) as session:
        tenant = get_organization(session, DEMO_ORGANIZATION).id
        statuses = dict(
            session.execute(
                select(ResultReport.status, func.count()).group_by(ResultReport.status)
            ).all()
        )
        assert statuses == {
            ReportStatus.RELEASED.value: 3,
            ReportStatus.TO_VALIDATE.value: 3,
            ReportStatus.VALIDATED.value: 1,
        }, "seeded once, and not again on the second run"
        queued = list(session.scalars(select(ResultMessage.status)))
        assert sorted(queued).count(MessageStatus.QUEUED.value) == 1
        # Received through the intake as the laboratory system, not written by the demo.
        received = session.scalars(
            select(AuditEvent.actor_kind).where(
                AuditEvent.action == AuditAction.RESULT_MESSAGE_RECEIVE.value
            )
        ).all()
        assert received == [PrincipalKind.SERVICE.value] * 8
        demo_patient = session.scalar(select(Account.patient_id).where(Account.kind == "patient"))
        assert demo_patient is not None
        others = sorted(
            {r.patient_id for r in session.scalars(select(ResultReport))} - {demo_patient}
        )
        assert len(others) == 3
        biologist = session.scalars(select(Account).where(Account.role == "biologist")).one()
        desk = session.scalars(select(Account).where(Account.role == "receptionist")).one()
        pending = session.scalars(
            select(ResultReport.id).where(
                ResultReport.patient_id == demo_patient,
                ResultReport.status == ReportStatus.TO_VALIDATE.value,
            )
        ).one()

    with transaction(runtime.sessions) as session:
        # The demo patient account: three released reports, trends over the earlier two.
        portal = _portal(session, runtime, tenant, demo_patient)
        reports = portal.reports()
        assert len(reports) == 3
        newest = portal.report(reports[0].id)
        trends = [line for line in newest.observations if line.previous]
        assert len(trends) == 4
        assert all(len(line.previous) == 2 for line in trends)
        assert portal.pdf(reports[0].id).startswith(b"%PDF-")
        with pytest.raises(ResultNotFoundError):
            portal.report(pending)  # not validated yet: not the patient's to see
        # Another patient sees none of it, not even by id.
        stranger = _portal(session, runtime, tenant, others[0])
        assert stranger.reports() == []
        with pytest.raises(ResultNotFoundError):
            stranger.report(reports[0].id)
        # A receptionist may not read results at all (the policy decides, no key opened).
        principal = Principal(PrincipalKind.STAFF, str(desk.id), role="receptionist")
        keyring = TenantKeyring(session, runtime.key_provider, tenant, principal)
        scope = staff_scope(session, principal, tenant, desk.staff_id)  # type: ignore[arg-type]
        row = session.get(ResultReport, reports[0].id)
        assert row is not None
        opened = PatientRepository(session, keyring, scope).open_for(
            "result",
            [SealedItem(row.patient_id, "result_reports", row.id, {"content": row.content})],
            purpose="test",
        )
        assert opened == {}

    with transaction(runtime.sessions) as session:
        # The demo biologist: three to validate and the HIV serology awaiting its call.
        principal = Principal(PrincipalKind.STAFF, str(biologist.id), role="biologist")
        keyring = TenantKeyring(session, runtime.key_provider, tenant, principal)
        assert biologist.staff_id is not None
        review = ReviewService(
            session,
            keyring,
            staff_scope(session, principal, tenant, biologist.staff_id),
            provider=runtime.key_provider,
            staff_id=biologist.staff_id,
            require_step_up=lambda: None,
            delivery=FileResultDelivery(runtime.settings.resolved_result_drop_dir),
            notifier=None,
            organization=DEMO_ORGANIZATION,
        )
        queue = review.queue()
        assert len(queue) == 4
        (call,) = [item for item in queue if item.phone]
        assert call.status is ReportStatus.VALIDATED

    # The printed biologist credentials log in (the first login enrols an authenticator app).
    (account,) = [a for a in DEMO_ACCOUNTS if a.email == DEMO_BIOLOGIST]
    assert f"staff: {account.email} / {account.password}" in result.output
    with TestClient(
        create_app(runtime.settings, runtime), base_url="https://testserver"
    ) as test_client:
        step = test_client.post(
            "/api/v1/auth/staff/login", json={"email": account.email, "password": account.password}
        )
    assert step.status_code == 200, step.text
    assert step.json()["enrol"] == ["totp"]

    # The notifications say "a document is available", nothing of the results.
    mails = [p.read_bytes() for p in Path(cli_env.resolved_data_dir, "mail").glob("*.eml")]
    assert len(mails) >= 3
    assert all(leaked(mail, SEALED_TEXTS) == [] for mail in mails)
    runtime.engine.dispose()
    if backend == "sqlite":
        for path in sqlite_files(cli_env.sqlalchemy_url):
            assert leaked(path.read_bytes(), SEALED_TEXTS) == []
    else:
        assert leaked(pg_dump(cli_env.sqlalchemy_url), SEALED_TEXTS) == []
