"""``labvault guard scan`` and ``guard watch``: findings in a table of ids and counts (no
patient), alerts through the configured sinks, each finding alerted once."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from labvault.cli import app
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.bulk import to_input
from labvault.patients.ins import InsOid
from labvault.patients.models import Patient
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows
from labvault.security.models import SecurityAlert

runner = CliRunner()


@pytest.fixture
def backend() -> str:
    """The rules are tested on both backends elsewhere; the command's wiring on one."""
    return "sqlite"


def _seed(runtime: Runtime) -> tuple[uuid.UUID, Principal, list[uuid.UUID]]:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
    people = [
        to_input(n, row, InsOid.TEST)
        for n, row in enumerate(synthetic_patient_rows(25, seed=4), start=2)
    ]
    walker = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), "receptionist")
    now = utcnow()
    with transaction(runtime.tenant_sessions(tenant)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("t:s"))
        PatientRepository(session, keyring).register_many(
            [p for p in people if not isinstance(p, list)]
        )
        patients = sorted(session.scalars(select(Patient.id)))
        random.Random(1).shuffle(patients)
        for n, patient in enumerate(patients):  # a robot: one record every 10 seconds
            moment = now - dt.timedelta(minutes=30) + dt.timedelta(seconds=10 * n)
            AuditTrail(session, walker, clock=lambda m=moment: m).record(
                AuditAction.PATIENT_RECORD_READ,
                tenant_id=tenant,
                target_type="patient",
                target_id=patient,
                purpose="care",
            )
    return tenant, walker, patients


def test_guard_scan_alerts_once_and_prints_ids_and_counts_only(
    runtime: Runtime, cli_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABVAULT_ALERT_SINKS", "jsonl")
    tenant, walker, patients = _seed(runtime)
    first = runner.invoke(app, ["guard", "scan"])
    assert first.exit_code == 1, first.output  # something new was found
    assert "sequential" in first.output
    assert walker.id in first.output
    assert "new (alerted)" in first.output
    for patient in patients:
        assert str(patient) not in first.output
    again = runner.invoke(app, ["guard", "scan", "--organization", "Labo"])
    assert again.exit_code == 0, again.output
    assert "0 new (alerted)" in again.output
    watched = runner.invoke(app, ["guard", "watch", "--interval", "10", "--times", "1"])
    assert watched.exit_code == 0, watched.output
    with runtime.tenant_sessions(tenant)() as session:
        alerts = session.scalars(select(SecurityAlert)).all()
        scans = session.scalars(
            select(AuditEvent.actor_id).where(
                AuditEvent.action == AuditAction.GUARD_ANOMALY_SCAN.value
            )
        ).all()
    # Off-hours too when the test runs at night in Paris: each rule alerts once all the same.
    kinds = sorted(a.kind for a in alerts)
    assert "anomaly-sequential" in kinds
    assert set(kinds) <= {"anomaly-sequential", "anomaly-off-hours"}
    assert len(set(kinds)) == len(kinds)
    assert {a.actor_id for a in alerts} == {walker.id}
    assert scans == ["system:guard:anomaly-scan"] * 3
    lines = cli_env.resolved_alert_jsonl_path.read_text().splitlines()
    assert sorted(json.loads(line)["kind"] for line in lines) == kinds


def test_guard_scan_names_an_unknown_organization_clearly(
    runtime: Runtime, cli_env: Settings
) -> None:
    _seed(runtime)
    result = runner.invoke(app, ["guard", "scan", "--organization", "Inconnu"])
    assert type(result.exception).__name__ == "CliError"  # main() prints it, exit status 2
    assert str(result.exception) == "no organization named 'Inconnu'"
    bad = runner.invoke(app, ["guard", "scan", "--since", "hier"])
    assert type(bad.exception).__name__ == "CliError"
    assert "--since must be a date or time in ISO 8601" in str(bad.exception)
