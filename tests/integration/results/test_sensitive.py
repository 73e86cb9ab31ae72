"""The sensitive exams (``labvault.results.sensitive``): ``labvault init`` seeds the
defaults for a new organization, ``labvault results sensitive list|add|remove`` changes the
list (audited, bad input refused with nothing written), and ``sensitive_codes`` is what the
intake reads. SQLite only: plain rows of one table, nothing that differs on PostgreSQL (its
row-level security is checked for every table by the migration tests)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from labvault.cli import app
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.runtime import Runtime
from labvault.organizations.services import get_organization
from labvault.results.content import LOINC
from labvault.results.sensitive import DEFAULT_CODES, sensitive_codes

ORGANIZATION = "Laboratoire Test"
runner = CliRunner()


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _codes(runtime: Runtime) -> frozenset[tuple[str, str]]:
    with runtime.admin_sessions() as session:
        tenant = get_organization(session, ORGANIZATION)
    with runtime.tenant_sessions(tenant.id)() as session:
        return sensitive_codes(session, tenant.id)


def _events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    with runtime.admin_sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def test_init_seeds_the_defaults_and_the_cli_changes_them(
    cli_env: Settings, runtime: Runtime
) -> None:
    result = runner.invoke(app, ["init", "--organization", ORGANIZATION])
    assert result.exit_code == 0, result.output
    defaults = {(code.system, code.code) for code in DEFAULT_CODES}
    assert _codes(runtime) == defaults
    # HIV screening and viral load, HTLV, hCG, karyotype are all in.
    assert {"56888-1", "20447-9", "29901-6", "2106-3", "29770-5"} <= {c for _, c in defaults}

    listed = runner.invoke(app, ["results", "sensitive", "list"])
    assert listed.exit_code == 0, listed.output
    assert "56888-1" in listed.output

    added = runner.invoke(
        app, ["results", "sensitive", "add", "urn:oid:1.2.250.1.9", "GENET1", "Panel génétique"]
    )
    assert added.exit_code == 0, added.output
    assert ("urn:oid:1.2.250.1.9", "GENET1") in _codes(runtime)
    again = runner.invoke(
        app, ["results", "sensitive", "add", "urn:oid:1.2.250.1.9", "GENET1", "Doublon"]
    )
    assert again.exit_code == 0
    assert "nothing changed" in again.output

    removed = runner.invoke(app, ["results", "sensitive", "remove", LOINC, "2106-3"])
    assert removed.exit_code == 0, removed.output
    assert (LOINC, "2106-3") not in _codes(runtime)
    absent = runner.invoke(app, ["results", "sensitive", "remove", LOINC, "2106-3"])
    assert absent.exit_code != 0
    assert "nothing changed" in str(absent.exception)

    assert len(_events(runtime, AuditAction.RESULT_SENSITIVE_ADD)) == 1
    (removal,) = _events(runtime, AuditAction.RESULT_SENSITIVE_REMOVE)
    assert removal.actor_id == "system:cli:results-sensitive"


@pytest.mark.parametrize(
    ("system", "code", "label"),
    [(LOINC, "   ", "Vide"), (LOINC, "X" * 65, "Trop long"), (LOINC, "A\x00B", "Contrôle")],
)
def test_bad_codes_are_refused_and_nothing_is_written(
    cli_env: Settings, runtime: Runtime, system: str, code: str, label: str
) -> None:
    assert runner.invoke(app, ["init", "--organization", ORGANIZATION]).exit_code == 0
    before = _codes(runtime)
    result = runner.invoke(app, ["results", "sensitive", "add", system, code, label])
    assert result.exit_code != 0
    assert "Refused" in str(result.exception)
    assert _codes(runtime) == before
    assert _events(runtime, AuditAction.RESULT_SENSITIVE_ADD) == []
