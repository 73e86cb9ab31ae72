"""``labvault keys rotate-index`` as an operator runs it: counts only, resumable."""

from __future__ import annotations

import typer
from sqlalchemy import select
from typer.testing import CliRunner, Result

from helpers import leaked
from labvault.cli import app as labvault_app
from labvault.core.config import Settings
from labvault.core.crypto.index_rotation import IndexRotation
from labvault.core.crypto.models import IndexKeyRecord
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.keys.index_commands import register
from labvault.organizations.models import Organization
from labvault.patients.synthetic import synthetic_patient_rows

runner = CliRunner()
PATIENTS = 5


def _keys_app() -> typer.Typer:
    """A ``keys`` group holding only this command, wired as the lead wires it."""
    keys = typer.Typer(no_args_is_help=True)

    @keys.callback()
    def group() -> None:
        """Keys."""

    register(keys)
    return keys


def _run(*args: str) -> Result:
    return runner.invoke(_keys_app(), list(args))


def _text(result: Result) -> str:
    return " ".join(result.output.split())


def _seeded(runtime: Runtime) -> list[dict[str, str]]:
    assert runner.invoke(labvault_app, ["init", "--organization", "Labo Index"]).exit_code == 0
    seeded = runner.invoke(labvault_app, ["seed", "--patients", str(PATIENTS), "--seed", "9"])
    assert seeded.exit_code == 0, seeded.output
    return list(synthetic_patient_rows(PATIENTS, seed=9))


def _generations(runtime: Runtime) -> set[int]:
    with runtime.sessions() as session:
        return set(session.scalars(select(IndexKeyRecord.generation)))


def test_rotate_index_then_resume_after_a_crash(cli_env: Settings, runtime: Runtime) -> None:
    people = _seeded(runtime)
    first = _run("rotate-index", "--batch-size", "2")
    assert first.exit_code == 0, first.output
    assert "new blind-index keys (generation 2) created; 5 record(s) re-indexed" in _text(first)
    assert "Rotation complete" in first.output
    assert _generations(runtime) == {2}
    personal = {value for person in people for value in person.values() if len(value) > 3}
    assert leaked(first.output.encode(), personal) == []

    nothing = _run("rotate-index", "--resume")
    assert nothing.exit_code == 0, nothing.output
    assert "Nothing to do" in nothing.output
    assert _generations(runtime) == {2}

    # A run killed after its first batch: the next generation exists, some rows moved.
    with transaction(runtime.sessions) as session:
        tenant = session.scalars(select(Organization.id)).one()
    crashed = IndexRotation(runtime.tenant_sessions(tenant), runtime.key_provider, tenant, None, 2)
    assert crashed.start() == 3
    assert crashed.run_batches(max_batches=1) == 2
    resumed = _run("rotate-index", "--organization", "Labo Index", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "blind-index keys at generation 3; 3 record(s) re-indexed" in _text(resumed)
    assert "Rotation complete" in resumed.output
    assert _generations(runtime) == {3}
    found = runner.invoke(labvault_app, ["patients", "find", "--email", people[0]["email"]])
    assert found.exit_code == 0, found.output
    assert "1 patient(s)" in found.output


def test_an_unknown_organization_is_refused(cli_env: Settings, runtime: Runtime) -> None:
    _seeded(runtime)
    result = _run("rotate-index", "--organization", "Labo Inconnu")
    assert result.exit_code != 0
    assert _generations(runtime) == {1}
