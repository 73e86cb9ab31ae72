"""Known devices are remembered as long as their cookie lives: ``labvault accounts purge``
forgets those whose last login is older than LABVAULT_KNOWN_DEVICE_RETENTION_DAYS (400 by
default), audited per account, and a later login from such a device is announced as new.
Both database backends, through the real command line."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select
from test_staff_invitations import EMAIL, Lab, audit_events, lab
from typer.testing import CliRunner

from labvault.accounts.devices import DeviceRegistry, KnownDevice, new_device_token
from labvault.cli import app as cli
from labvault.core.config import Settings
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.staff.models import StaffRole

__all__ = ["lab"]

runner = CliRunner()
OTHER = "dominique.petit@example.org"


def _see(lab: Lab, account_id: object, token: str, days_ago: float) -> bool:
    moment = utcnow() - dt.timedelta(days=days_ago)
    with transaction(lab.runtime.tenant_sessions(lab.tenant_id)) as session:
        registry = DeviceRegistry(session, lab.tenant_id, lambda: moment)
        return registry.see(account_id, token)  # type: ignore[arg-type]


def _devices(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(KnownDevice)) or 0)


def test_purge_forgets_devices_not_seen_for_the_retention_period(
    lab: Lab, runtime: Runtime, cli_env: Settings
) -> None:
    assert runtime.settings.known_device_retention_days == 400
    first = lab.active(EMAIL, StaffRole.SAMPLER)
    second = lab.active(OTHER, StaffRole.BIOLOGIST)
    old, recent, edge = (new_device_token().reveal() for _ in range(3))
    assert _see(lab, first.id, old, days_ago=401)
    assert _see(lab, first.id, recent, days_ago=401)
    assert not _see(lab, first.id, recent, days_ago=10), "seen again since: kept"
    assert _see(lab, second.id, edge, days_ago=399)
    assert _devices(runtime) == 3

    purged = runner.invoke(cli, ["accounts", "purge"])
    assert purged.exit_code == 0, purged.output
    assert "1 known device(s) forgotten (not seen for 400 days)" in purged.output
    assert str(first.id) not in purged.output
    assert _devices(runtime) == 2
    (expired,) = audit_events(runtime, "account:device:expire")
    assert expired.target_id == first.id
    assert expired.purpose == "retention"

    again = runner.invoke(cli, ["accounts", "purge"])
    assert "0 known device(s) forgotten" in again.output, "idempotent"
    assert len(audit_events(runtime, "account:device:expire")) == 1
    # The forgotten browser is a new device again; the others are still known.
    assert _see(lab, first.id, old, days_ago=0)
    assert not _see(lab, first.id, recent, days_ago=0)
    assert not _see(lab, second.id, edge, days_ago=0)


def test_the_retention_is_a_setting(
    lab: Lab, runtime: Runtime, cli_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = lab.active(EMAIL, StaffRole.SAMPLER)
    _see(lab, account.id, new_device_token().reveal(), days_ago=31)
    _see(lab, account.id, new_device_token().reveal(), days_ago=29)
    monkeypatch.setenv("LABVAULT_KNOWN_DEVICE_RETENTION_DAYS", "30")
    purged = runner.invoke(cli, ["accounts", "purge"])
    assert "1 known device(s) forgotten (not seen for 30 days)" in purged.output, purged.output
    assert _devices(runtime) == 1
    monkeypatch.setenv("LABVAULT_KNOWN_DEVICE_RETENTION_DAYS", "0")
    refused = runner.invoke(cli, ["accounts", "purge"])
    assert refused.exit_code != 0
    assert _devices(runtime) == 1
