"""The ``audit`` and ``patients history`` commands, as an investigator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select, text
from typer.testing import CliRunner

from labvault.cli import app
from labvault.core.config import Settings
from labvault.core.runtime import Runtime
from labvault.patients.models import Patient

runner = CliRunner()


def _seeded(patients: int = 30) -> None:
    assert runner.invoke(app, ["init", "--organization", "Labo Audit"]).exit_code == 0
    result = runner.invoke(app, ["seed", "--patients", str(patients)])
    assert result.exit_code == 0, result.output


def _lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_verify_passes_then_names_an_edited_event(cli_env: Settings, runtime: Runtime) -> None:
    _seeded()
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "The audit log is intact." in result.output

    with runtime.admin_engine.begin() as connection:  # an attacker with the owner's rights
        connection.execute(text("UPDATE audit_events SET purpose = 'other' WHERE seq = 7"))
        event_id = connection.execute(text("SELECT id FROM audit_events WHERE seq = 7")).scalar()
    result = runner.invoke(app, ["audit", "verify", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    (finding,) = report["findings"]
    assert finding["kind"] == "modified"
    assert finding["position"] == 7
    assert finding["event_id"].replace("-", "") == str(event_id).replace("-", "")


def test_search_filters_by_action_actor_patient_and_time(
    cli_env: Settings, runtime: Runtime
) -> None:
    _seeded(12)
    with runtime.sessions() as session:
        patient_id = session.scalars(select(Patient.id).limit(1)).one()
    created = _lines(runner.invoke(app, ["audit", "search", "--action", "patient:*"]).output)
    assert len(created) == 12
    assert {event["action"] for event in created} == {"patient:record:create"}
    assert [event["seq"] for event in created] == sorted(e["seq"] for e in created)  # type: ignore[type-var]
    by_actor = _lines(runner.invoke(app, ["audit", "search", "--actor", "system:cli:seed"]).output)
    assert len(by_actor) == 12
    one = _lines(runner.invoke(app, ["audit", "search", "--patient", str(patient_id)]).output)
    assert [event["target_id"] for event in one] == [str(patient_id)]
    future = runner.invoke(app, ["audit", "search", "--since", "2999-01-01"])
    assert future.exit_code == 0
    assert future.output.strip() == ""
    searched = _lines(
        runner.invoke(app, ["audit", "search", "--action", "audit:log:search"]).output
    )
    assert len(searched) == 4, "each earlier search was itself recorded"


def test_search_refuses_bad_filters(cli_env: Settings) -> None:
    _seeded(1)
    for args, message in (
        (["--action", "patient:record:delete"], "not a registered action"),
        (["--action", "nothing:*"], "no registered action"),
        (["--patient", "12"], "--patient must be an id"),
        (["--since", "yesterday"], "ISO 8601"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "labvault.cli", "audit", "search", *args],
            env={**os.environ},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)


def test_a_proof_checks_offline_and_a_doctored_one_does_not(
    cli_env: Settings, tmp_path: Path
) -> None:
    _seeded(40)
    events = _lines(runner.invoke(app, ["audit", "search", "--limit", "25"]).output)
    proof, key = tmp_path / "proof.json", tmp_path / "key.json"
    result = runner.invoke(app, ["audit", "proof", str(events[20]["id"]), "--output", str(proof)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["audit", "public-key", "--output", str(key)]).exit_code == 0
    assert proof.stat().st_size < 2048

    offline = {"PATH": os.environ["PATH"], "LABVAULT_DATA_DIR": str(tmp_path / "nowhere")}
    command = [sys.executable, "-m", "labvault.cli", "audit", "check-proof", str(proof)]
    command += ["--public-key", str(key)]
    checked = subprocess.run(command, env=offline, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Valid" in checked.stdout
    assert not (tmp_path / "nowhere").exists(), "checking a proof touches no data directory"

    document = json.loads(proof.read_text())
    document["event"]["actor_id"] = "system:cli:someone-else"
    proof.write_text(json.dumps(document))
    checked = subprocess.run(command, env=offline, capture_output=True, text=True, check=False)
    assert checked.returncode == 1
    assert "invalid" in checked.stdout


def test_patients_history_lists_the_file_openings(cli_env: Settings, runtime: Runtime) -> None:
    _seeded(3)
    with runtime.sessions() as session:
        patient_id = session.scalars(select(Patient.id).limit(1)).one()
    result = runner.invoke(app, ["patients", "history", str(patient_id)])
    assert result.exit_code == 0, result.output
    # The history lists its own reading: looking at who looked is an access too.
    assert "Historique des accès (2)" in result.output
    result = runner.invoke(app, ["patients", "history", str(patient_id), "--json"])
    *reads, entry = _lines(result.stdout)
    assert [read["label"] for read in reads] == ["Consultation de l'historique des accès"] * 2
    assert entry["label"] == "Création de votre dossier"
    assert entry["actor"] == "Traitement automatique du laboratoire"
    assert entry["purpose"] == "Enregistrement"
    assert str(entry["at"]).endswith("Z")
    result = runner.invoke(app, ["patients", "history", "not-an-id"])
    assert result.exit_code != 0
