"""``labvault guard attribute FILE``: which export a leaked file came from.

It reads the file as text (a CSV with its rows shuffled, some deleted, the delimiter or the
column order changed, or any text holding such lines), computes the keyed digests of every
candidate identity of each line under each organization's fingerprint key, and matches
them against the fingerprint digests of the recorded exports. It prints each export that
matched (id, when, kind, staff member, recipient account, fingerprint rows found out of
those it carried) and exits 1 when none did. The file is read, never stored or printed;
each organization with a match records ``export:leak:attribute`` (target: the export).
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select

from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.exports.fingerprints import FingerprintKeys, find_digests, split_digests
from labvault.exports.models import ExportRecord
from labvault.organizations.models import Organization

__all__ = ["ATTRIBUTION_JOB", "Attribution", "attribute", "attribute_lines"]

ATTRIBUTION_JOB = SystemPrincipal("cli:guard-attribute")
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Attribution:
    """One export a leaked file matched."""

    organization: str
    record: ExportRecord
    matched: int


def attribute_lines(
    runtime: Runtime, lines: list[str], organization: str | None = None
) -> list[Attribution]:
    """The exports whose fingerprint rows appear in ``lines``, most matches first."""
    keys = FingerprintKeys(runtime.derived_keys)
    with runtime.sessions() as session:
        query = select(Organization.id, Organization.name).order_by(Organization.name)
        if organization is not None:
            query = query.where(Organization.name == organization)
        tenants = list(session.execute(query))
    if organization is not None and not tenants:
        from labvault.cli import CliError

        raise CliError(f"no organization named {organization!r}")
    tenant_keys = {tenant_id: keys.tenant_key(tenant_id) for tenant_id, _ in tenants}
    found = find_digests(lines, list(tenant_keys.values()))
    results: list[Attribution] = []
    for tenant_id, name in tenants:
        seen = found[tenant_keys[tenant_id]]
        if not seen:
            continue
        with transaction(runtime.tenant_sessions(tenant_id)) as session:
            matched: list[Attribution] = []
            records = session.scalars(
                select(ExportRecord).where(ExportRecord.tenant_id == tenant_id)
            )
            for record in records:
                hits = sum(1 for d in split_digests(record.fingerprint_digests) if d in seen)
                if hits:
                    session.expunge(record)
                    matched.append(Attribution(name, record, hits))
            audit = AuditTrail(session, ATTRIBUTION_JOB)
            for match in matched:
                audit.record(
                    AuditAction.EXPORT_LEAK_ATTRIBUTE,
                    tenant_id=tenant_id,
                    target_type="export",
                    target_id=match.record.id,
                    purpose="leak-attribution",
                )
        results += matched
    return sorted(results, key=lambda a: (-a.matched, a.record.created_at))


def _describe(item: Attribution) -> str:
    """One export, one line each field (ids wrap badly in a table on a narrow terminal)."""
    record = item.record
    return "\n".join(
        (
            f"Export {record.id}",
            f"  organization:      {item.organization}",
            f"  kind:              {record.kind}",
            f"  created:           {record.created_at.astimezone(PARIS):%d/%m/%Y %H:%M} (Paris)",
            f"  staff member:      {record.staff_id or '-'}",
            f"  recipient account: {record.recipient_account_id}",
            f"  rows:              {record.row_count}",
            f"  fingerprint rows:  {item.matched}/{record.fingerprint_count} found",
        )
    )


FileArgument = Annotated[
    Path, typer.Argument(help="The leaked file (CSV or any text).", exists=True, dir_okay=False)
]
OrganizationOption = Annotated[
    str | None, typer.Option(help="Only this organization (default: every one).")
]


def attribute(file: FileArgument, organization: OrganizationOption = None) -> None:
    """Name the export(s) a leaked file came from, by their fingerprint rows (exit 1: none)."""
    from labvault.cli import CliError, _runtime, _seal_events, console

    if file.stat().st_size > MAX_BYTES:
        raise CliError("the file is larger than 256 MiB")
    raw = file.read_bytes()
    text = raw.decode("utf-8-sig", errors="replace")
    with _runtime() as runtime:
        found = attribute_lines(runtime, text.splitlines(), organization)
        _seal_events(runtime)
    if not found:
        console.print("No export's fingerprint rows were found in this file.")
        raise typer.Exit(1)
    for item in found:
        console.print(_describe(item), highlight=False, soft_wrap=True)
    console.print(
        f"{len(found)} export(s) matched; the first is the likeliest source.", highlight=False
    )
