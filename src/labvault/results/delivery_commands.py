"""``labvault results deliver``: hand released reports whose delivery failed (disk full,
the gateway's directory unwritable...) to the prescribers' channel again.

It runs as the named system principal ``cli:results-deliver``; each report's opening and
delivery is audited as that job. Output: counts only, never a patient or a value."""

from __future__ import annotations

from typing import Annotated

import typer

from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.organizations.services import use_organization
from labvault.results.delivery import FileResultDelivery
from labvault.results.review import REDELIVERY_PRINCIPAL, deliver_pending

__all__ = ["results_deliver"]


def results_deliver(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Reports per run.")] = 100,
    organization: Annotated[str | None, typer.Option(help="Organization name.")] = None,
) -> None:
    """Deliver released reports not yet handed to the prescribers' gateway."""
    from labvault.cli import CliError, _audit_context, _runtime, _seal_events, console

    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            tenant = use_organization(session, organization)
            keyring = TenantKeyring(
                session,
                runtime.key_provider,
                tenant.id,
                REDELIVERY_PRINCIPAL,
                context=_audit_context(),
            )
            delivery = FileResultDelivery(runtime.settings.resolved_result_drop_dir)
            delivered, failed = deliver_pending(
                session, keyring, delivery, organization=tenant.name, limit=limit
            )
        _seal_events(runtime)
    console.print(f"{delivered} report(s) delivered, {failed} failed.")
    if failed:
        raise CliError(f"{failed} report(s) could not be delivered; see the log")
