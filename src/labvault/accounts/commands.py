"""``labvault accounts``: jobs on accounts from the command line.

``labvault accounts purge`` erases the accounts whose deletion grace period has ended
(``labvault.accounts.closure.purge_closed_accounts``), as the explicit system principal
``cli:accounts-purge``. Idempotent: run it daily (cron, systemd timer); a second run in a row
erases nothing. It prints counts only, never an address or an id.
"""

from __future__ import annotations

import typer

from labvault.accounts.closure import purge_closed_accounts
from labvault.core.db import transaction

__all__ = ["accounts_app"]

accounts_app = typer.Typer(help="Patient and staff accounts.", no_args_is_help=True)


@accounts_app.command("purge")
def purge() -> None:
    """Erase the accounts whose deletion was requested more than
    LABVAULT_ACCOUNT_DELETION_GRACE_DAYS ago, with their data keys (crypto-shredding).

    Patient records are kept (the laboratory must keep them by law): only the accounts, and
    their links to those records, go.
    """
    from labvault.cli import _audit_context, _runtime, _seal_events, console

    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            report = purge_closed_accounts(
                session,
                grace_days=runtime.settings.account_deletion_grace_days,
                context=_audit_context(),
            )
        _seal_events(runtime)
    console.print(
        f"{report.accounts} account(s) erased, {report.data_keys} data key(s) destroyed "
        f"(grace period: {runtime.settings.account_deletion_grace_days} days).",
        highlight=False,
    )
