"""``labvault accounts``: jobs on accounts from the command line.

``labvault accounts purge`` erases the accounts whose deletion grace period has ended
(``labvault.accounts.closure.purge_closed_accounts``) and forgets the known devices not
seen for ``LABVAULT_KNOWN_DEVICE_RETENTION_DAYS`` (``forget_stale_devices``), as the explicit
system principal ``cli:accounts-purge``. Idempotent: run it daily (cron, systemd timer); a
second run in a row erases nothing. It prints counts only, never an address or an id.
"""

from __future__ import annotations

import typer
from sqlalchemy import select

from labvault.accounts.closure import forget_stale_devices, purge_closed_accounts
from labvault.core.db import transaction
from labvault.organizations.models import Organization

__all__ = ["accounts_app"]

accounts_app = typer.Typer(help="Patient and staff accounts.", no_args_is_help=True)


@accounts_app.command("purge")
def purge() -> None:
    """Erase the accounts whose deletion grace period is over, with their data keys.

    The grace period is LABVAULT_ACCOUNT_DELETION_GRACE_DAYS; the keys are destroyed
    (crypto-shredding).

    Each account's own Patient record is erased too (crypto-shredding) unless a legal hold
    keeps it; dependents' records are only unlinked. Also forgets the known devices whose
    last login is older than LABVAULT_KNOWN_DEVICE_RETENTION_DAYS (400 by default, their
    cookie's lifetime).
    """
    from labvault.cli import _audit_context, _runtime, _seal_events, console

    accounts = data_keys = devices = records_erased = records_held = records_released = 0
    with _runtime() as runtime:
        with runtime.sessions() as session:
            tenants = list(session.scalars(select(Organization.id).order_by(Organization.id)))
        # One transaction per organization: on PostgreSQL each is bound to its tenant
        # (row-level security), so every organization's accounts are reached.
        for tenant_id in tenants:
            with transaction(runtime.tenant_sessions(tenant_id)) as session:
                report = purge_closed_accounts(
                    session,
                    grace_days=runtime.settings.account_deletion_grace_days,
                    context=_audit_context(),
                    drop_dir=runtime.settings.resolved_result_drop_dir,
                )
                devices += forget_stale_devices(
                    session,
                    retention_days=runtime.settings.known_device_retention_days,
                    context=_audit_context(),
                )
            accounts += report.accounts
            data_keys += report.data_keys
            records_erased += report.records_erased
            records_held += report.records_held
            records_released += report.records_released
        _seal_events(runtime)
    console.print(
        f"{accounts} account(s) erased, {data_keys} data key(s) destroyed "
        f"(grace period: {runtime.settings.account_deletion_grace_days} days).",
        highlight=False,
    )
    console.print(
        f"{records_erased} patient record(s) erased, {records_held} kept under a legal hold, "
        f"{records_released} erased now that their legal hold has ended.",
        highlight=False,
    )
    console.print(
        f"{devices} known device(s) forgotten (not seen for "
        f"{runtime.settings.known_device_retention_days} days).",
        highlight=False,
    )
