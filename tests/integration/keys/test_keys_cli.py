"""``labvault keys`` as an operator runs it: status, rotate, rewrap, retire, migrate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from labvault.cli import app
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.rewrap import Census, census
from labvault.core.runtime import Runtime
from labvault.patients.synthetic import synthetic_patient_rows

runner = CliRunner()
PATIENTS = 12


def _run(*args: str) -> Result:
    return runner.invoke(app, list(args))


def _text(result: Result) -> str:
    """The output with Rich's line wrapping undone."""
    return " ".join(result.output.split())


def _seeded() -> dict[str, str]:
    assert _run("init", "--organization", "Labo Clés").exit_code == 0
    result = _run("seed", "--patients", str(PATIENTS), "--seed", "5")
    assert result.exit_code == 0, result.output
    return next(iter(synthetic_patient_rows(PATIENTS, seed=5)))


def _find(patient: dict[str, str]) -> None:
    result = _run("patients", "find", "--email", patient["email"])
    assert result.exit_code == 0, result.output
    assert patient["birth_name"].upper() in result.output.upper()


def _verify() -> None:
    result = _run("audit", "verify")
    assert result.exit_code == 0, result.output
    assert "The audit log is intact." in result.output


def _events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    with runtime.audit_sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def test_rotate_rewrap_retire(cli_env: Settings, runtime: Runtime) -> None:
    patient = _seeded()
    status = _run("keys", "status")
    assert status.exit_code == 0, status.output
    assert "under the active version" in _text(status)
    nothing = _run("keys", "retire")
    assert nothing.exit_code == 0
    assert "No root key version to retire" in _text(nothing)

    rotated = _run("keys", "rotate")
    assert rotated.exit_code == 0, rotated.output
    assert "New active root key version: file:" in _text(rotated)
    assert "labvault keys rewrap" in _text(rotated)
    assert "not under the active version: run `labvault keys rewrap`" in _text(
        _run("keys", "status")
    )
    key_file = cli_env.key_file.read_bytes()

    refused = _run("keys", "retire")
    assert refused.exit_code == 1
    assert "refused:" in _text(refused)
    assert "run `labvault keys rewrap` first. Nothing was changed." in _text(refused)
    assert cli_env.key_file.read_bytes() == key_file
    assert _events(runtime, AuditAction.KEYS_ROOT_RETIRE) == []

    rewrapped = _run("keys", "rewrap", "--batch-size", "5")
    assert rewrapped.exit_code == 0, rewrapped.output
    assert "Every wrapped key is under the active version." in _text(rewrapped)
    again = _run("keys", "rewrap")
    assert again.exit_code == 0
    assert "nothing to do" in _text(again)
    _find(patient)
    _verify()

    retired = _run("keys", "retire")
    assert retired.exit_code == 0, retired.output
    assert "Retired file:" in _text(retired)
    document = json.loads(cli_env.key_file.read_text(encoding="utf-8"))
    assert ["material" in entry for entry in document["keys"]] == [False, True]
    _find(patient)
    _verify()
    assert "no (retired)" in _text(_run("keys", "status"))
    assert "key" not in " ".join(
        str(event.purpose) for event in _events(runtime, AuditAction.KEYS_ROOT_ROTATE)
    ).replace("keys-rotate", "")
    assert len(_events(runtime, AuditAction.KEYS_ROOT_ROTATE)) == 1
    assert len(_events(runtime, AuditAction.KEYS_ROOT_RETIRE)) == 1
    assert len(_events(runtime, AuditAction.KEYS_REWRAP_COMPLETE)) == 1


def test_migrate_to_another_key_file(
    cli_env: Settings, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = _seeded()
    old_spec = f"file:{cli_env.key_file}"
    new_file = tmp_path / "new-keys" / "root.key"
    with runtime.sessions() as session:
        backup = [bytes(b) for b in session.scalars(select(DataKeyRecord.wrapped_key))]

    same = _run("keys", "migrate", "--to", old_spec)
    assert "names the current key provider" in str(same.exception)  # main(): exit 2

    moved = _run("keys", "migrate", "--to", f"file:{new_file}", "--batch-size", "4")
    assert moved.exit_code == 0, moved.output
    text = _text(moved)
    assert f"LABVAULT_KEY_PROVIDER=file:{new_file}" in text
    assert f"LABVAULT_PREVIOUS_KEY_PROVIDER={old_spec}" in text
    assert "labvault keys retire" in text
    assert new_file.stat().st_mode & 0o077 == 0
    assert len(_events(runtime, AuditAction.KEYS_PROVIDER_MIGRATE)) == 1
    target = FileKeyProvider(new_file)
    with runtime.sessions() as session:
        assert all(
            target.owns(bytes(b)) for b in session.scalars(select(DataKeyRecord.wrapped_key))
        )

    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", f"file:{new_file}")
    monkeypatch.setenv("LABVAULT_PREVIOUS_KEY_PROVIDER", old_spec)
    assert "under the active version" in _text(_run("keys", "status"))
    _find(patient)
    _verify()  # events sealed under the old key file still verify

    retired = _run("keys", "retire")
    assert retired.exit_code == 0, retired.output
    assert "material" not in cli_env.key_file.read_text(encoding="utf-8")
    assert "material" in new_file.read_text(encoding="utf-8")
    old = FileKeyProvider(cli_env.key_file)
    assert all(not version.can_unwrap for version in old.versions())
    assert backup
    assert all(old.owns(blob) for blob in backup)
    _find(patient)
    _verify()


def test_retire_is_refused_if_a_rotation_happens_after_the_check(
    cli_env: Settings, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another operator rotates between the census and the retirement: before, "every version
    but the active one" then included the version that wraps every key."""
    patient = _seeded()
    assert _run("keys", "rotate").exit_code == 0
    assert _run("keys", "rewrap").exit_code == 0
    key_file: list[bytes] = []

    def census_then_rotation(*args: Any, **kwargs: Any) -> Census:
        counts = census(*args, **kwargs)
        FileKeyProvider(cli_env.key_file).rotate()
        key_file.append(cli_env.key_file.read_bytes())
        return counts

    with monkeypatch.context() as patched:
        patched.setattr("labvault.keys.commands.census", census_then_rotation)
        refused = _run("keys", "retire")

    assert refused.exit_code == 1, refused.output
    text = _text(refused)
    assert "a rotation happened since the check" in text
    assert "run `labvault keys rewrap`, then `labvault keys retire` again" in text
    assert "Nothing was changed." in text
    assert cli_env.key_file.read_bytes() == key_file[0]
    assert _events(runtime, AuditAction.KEYS_ROOT_RETIRE) == []
    _find(patient)
    # As told: rewrap, then retire.
    assert _run("keys", "rewrap").exit_code == 0
    retired = _run("keys", "retire")
    assert retired.exit_code == 0, retired.output
    _find(patient)
    _verify()


def test_retire_destroy_with_the_key_file_is_a_plain_retirement(cli_env: Settings) -> None:
    _seeded()
    assert _run("keys", "rotate").exit_code == 0
    assert _run("keys", "rewrap").exit_code == 0
    retired = _run("keys", "retire", "--destroy")
    assert retired.exit_code == 0, retired.output
    text = _text(retired)
    assert "Retired file:" in text
    assert "--destroy is the same as a plain retirement" in text
    document = json.loads(cli_env.key_file.read_text(encoding="utf-8"))
    assert ["material" in entry for entry in document["keys"]] == [False, True]
