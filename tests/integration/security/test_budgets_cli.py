"""``labvault guard budgets show|set``: an organization's own limits, audited, applied by the
guard's policy; bad input changes nothing. SQLite only (the table is plain CRUD)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from labvault.cli import CliError, app
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.models import AuditEvent
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.security.budget_models import ReadBudgetLimit
from labvault.security.budgets import BudgetLimits, BudgetPolicy, OrganizationLimits

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def test_set_show_and_clear_an_organizations_own_limits(cli_env: object, runtime: Runtime) -> None:
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo Quota").id
    runner = CliRunner()
    shown = runner.invoke(app, ["guard", "budgets", "show"])
    assert shown.exit_code == 0, shown.output
    assert "staff:receptionist        700      1400        14000  default" in shown.output
    assert "exempt" in shown.output

    done = runner.invoke(
        app,
        ["guard", "budgets", "set", "staff:receptionist", "--per-hour", "80",
         "--per-day", "400", "--per-30-days", "4000"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    shown = runner.invoke(app, ["guard", "budgets", "show"])
    assert "staff:receptionist         80       400         4000  organization" in shown.output
    receptionist = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="receptionist")
    policy = BudgetPolicy(organization_limits=OrganizationLimits(runtime.engine))
    assert policy.limits_for(tenant, receptionist) == BudgetLimits(80, 400, 4000)
    with runtime.audit_sessions() as session:
        (event,) = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "guard:budget:set")
        ).all()
    assert (event.actor_id, event.purpose) == ("system:cli:guard-budgets", "staff:receptionist")

    for bad in (
        ["staff:receptionist", "--per-hour", "500", "--per-day", "10", "--per-30-days", "9"],
        ["system", "--per-hour", "1", "--per-day", "1", "--per-30-days", "1"],
        ["staff:receptionist", "--per-hour", "1"],
        ["staff:receptionist", "--clear", "--per-hour", "1"],
    ):
        refused = runner.invoke(app, ["guard", "budgets", "set", *bad])
        assert isinstance(refused.exception, CliError), (bad, refused.output)
    with runtime.sessions() as session:
        (row,) = session.scalars(select(ReadBudgetLimit)).all()
        assert (row.per_hour, row.per_day, row.per_30_days) == (80, 400, 4000)

    cleared = runner.invoke(app, ["guard", "budgets", "set", "staff:receptionist", "--clear"])
    assert cleared.exit_code == 0, cleared.output
    with runtime.sessions() as session:
        assert session.scalars(select(ReadBudgetLimit)).all() == []
