"""``labvault guard``: the exfiltration guard's commands (anomaly scan, watch, locked list).

``guard scan`` runs the anomaly rules once over each organization's audit log (or one with
``--organization``), records new findings, raises their alerts through the configured sinks
and prints a table of rule, principal id, window and counts: never a name or a patient id.
``guard watch --interval 60`` does it forever (a systemd service, or a container next to the
web workers); a cron entry running ``guard scan`` every few minutes does the same.

``guard unlock`` only SHOWS locked principals and pending requests: an unlock needs two
different security officers with a fresh second factor, which a shell cannot prove, so it
happens on the security console (``/securite/comptes-bloques``) and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
import zoneinfo
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import select

from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.organizations.models import Organization
from labvault.organizations.services import OrganizationNotFoundError, get_organization
from labvault.security.alerts import AlertSink
from labvault.security.anomalies import AnomalyThresholds, Finding, ScanReport, scan, window_text
from labvault.security.sinks import alert_dispatcher, external_sinks, keyring_factory
from labvault.security.unlock import locked_principals

__all__ = ["SCANNER", "guard_app", "scan_tenant"]

guard_app = typer.Typer(
    help="The exfiltration guard: anomaly scans, locked principals.", no_args_is_help=True
)

SCANNER = SystemPrincipal("guard:anomaly-scan")
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
LOCKED_PAGE = "/securite/comptes-bloques"


def scan_tenant(
    runtime: Runtime,
    tenant_id: uuid.UUID,
    now: dt.datetime,
    *,
    since: dt.datetime | None = None,
    limits: AnomalyThresholds | None = None,
    external: Sequence[AlertSink] | None = None,
) -> ScanReport:
    """One organization's scan in one transaction of its own (tenant-bound): the findings,
    their alerts and the scan's audit event commit together; the webhook and JSON-lines
    sinks (``external``, default: from the settings) deliver once it has committed."""
    with transaction(runtime.tenant_sessions(tenant_id)) as session:
        audit = AuditTrail(session, SCANNER)
        audit.record(
            AuditAction.GUARD_ANOMALY_SCAN,
            tenant_id=tenant_id,
            target_type="audit-log",
            purpose="anomaly-rules",
        )
        dispatcher = alert_dispatcher(
            runtime.settings,
            session,
            audit,
            keyrings=keyring_factory(session, runtime.key_provider),
            mailer=runtime.mailer,
            external=external,
        )
        return scan(session, tenant_id, now, dispatcher, limits, since=since)


def _tenants(runtime: Runtime, organization: str | None) -> list[tuple[uuid.UUID, str]]:
    from labvault.cli import CliError

    with runtime.sessions() as session:
        if organization is not None:
            try:
                found = get_organization(session, organization)
            except OrganizationNotFoundError as exc:
                raise CliError(str(exc)) from None
            return [(found.id, found.name)]
        return [
            (o.id, o.name)
            for o in session.scalars(select(Organization).order_by(Organization.name))
        ]


def _figures(finding: Finding) -> str:
    return ", ".join(f"{name}={value}" for name, value in sorted(finding.figures.items()))


def _table(rows: list[tuple[str, Finding, bool]]) -> Table:
    table = Table(title="Anomaly findings", show_lines=False)
    for column in ("Organization", "Rule", "Principal", "Window (Paris)", "Figures", "New"):
        wide = column == "Principal"
        table.add_column(column, no_wrap=wide or column == "Rule", min_width=44 if wide else None)
    for organization, finding, new in rows:
        table.add_row(
            organization,
            finding.rule.value,
            f"{finding.actor_kind} {finding.actor_id}",
            window_text(finding),
            _figures(finding),
            "yes" if new else "already alerted",
        )
    return table


def _scan_all(runtime: Runtime, organization: str | None, since: dt.datetime | None) -> int:
    from labvault.cli import console

    now = utcnow()
    outside = external_sinks(runtime.settings)
    rows: list[tuple[str, Finding, bool]] = []
    for tenant_id, name in _tenants(runtime, organization):
        report = scan_tenant(runtime, tenant_id, now, since=since, external=outside)
        new = {id(finding) for _, finding in report.new}
        rows += [(name, finding, id(finding) in new) for finding in report.findings]
    if rows:
        console.print(_table(rows))
    fresh = sum(1 for _, _, new in rows if new)
    console.print(
        f"{len(rows)} finding(s), {fresh} new (alerted) at "
        f"{now.astimezone(PARIS):%d/%m/%Y %H:%M} (Paris).",
        highlight=False,
    )
    return fresh


OrganizationOption = Annotated[
    str | None, typer.Option(help="Only this organization (default: every one).")
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        help="Look back to this moment for night and weekend reads (ISO 8601, Paris time "
        "unless it says otherwise); default: one day."
    ),
]


@guard_app.command("scan")
def guard_scan(organization: OrganizationOption = None, since: SinceOption = None) -> None:
    """Run the anomaly rules once; new findings raise alerts. Exit status 1 if any is new."""
    from labvault.cli import _parse_time, _runtime, _seal_events

    moment = _parse_time(since, "--since")
    with _runtime() as runtime:
        try:
            fresh = _scan_all(runtime, organization, moment)
        finally:
            _seal_events(runtime)
    if fresh:
        raise typer.Exit(1)


@guard_app.command("watch")
def guard_watch(
    interval: Annotated[
        int, typer.Option(min=10, max=3600, help="Seconds between two scans.")
    ] = 60,
    organization: OrganizationOption = None,
    times: Annotated[
        int, typer.Option(min=0, hidden=True, help="Stop after this many scans (0: never).")
    ] = 0,
) -> None:
    """Scan every ``--interval`` seconds until stopped (Ctrl-C, SIGTERM)."""
    from labvault.cli import _runtime, _seal_events, console

    done = 0
    with _runtime() as runtime:
        try:
            while True:
                _scan_all(runtime, organization, None)
                _seal_events(runtime)
                done += 1
                if times and done >= times:
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            console.print("Stopped.")


@guard_app.command("unlock")
def guard_unlock(organization: OrganizationOption = None) -> None:
    """Show locked principals and pending unlock requests (this command cannot unlock).

    Unlocking needs two security officers on the security console."""
    from labvault.cli import _runtime, console

    now = utcnow()
    with _runtime() as runtime:
        table = Table(title="Locked principals")
        for column in ("Organization", "Kind", "Id", "Locked (Paris)", "Reason", "Unlock"):
            # Ids whole, on one line: the operator copies them into the console's search.
            table.add_column(
                column, no_wrap=column == "Id", min_width=44 if column == "Id" else None
            )
        count = 0
        for tenant_id, name in _tenants(runtime, organization):
            with runtime.tenant_sessions(tenant_id)() as session:
                for locked in locked_principals(session, tenant_id, now):
                    count += 1
                    pending = locked.pending
                    since = locked.locked_at
                    table.add_row(
                        name,
                        locked.kind + (f" ({locked.role})" if locked.role else ""),
                        locked.id,
                        "" if since is None else f"{since.astimezone(PARIS):%d/%m/%Y %H:%M}",
                        locked.reason or "",
                        "—"
                        if pending is None
                        else f"requested by {pending.requested_by} ({pending.reason})",
                    )
    if count:
        console.print(table)
    console.print(
        f"{count} locked principal(s). Unlocking needs two different security officers, each "
        f"with a fresh second factor, on the security console ({LOCKED_PAGE}); the command "
        "line cannot unlock.",
        highlight=False,
    )
