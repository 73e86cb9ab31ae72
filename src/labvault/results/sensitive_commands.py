"""``labvault results sensitive list|add|remove``: the organization's sensitive exams
(results given by phone before any online publication). Changes are audited as the named
system principal ``cli:results-sensitive``; the list is lab configuration, never patients'
data, so it is printed as is."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.db import transaction
from labvault.organizations.services import use_organization
from labvault.results.sensitive import (
    InvalidSensitiveCodeError,
    add_code,
    list_codes,
    remove_code,
)

__all__ = ["sensitive_app"]

sensitive_app = typer.Typer(
    help="Sensitive exams: results given by phone before any online publication.",
    no_args_is_help=True,
)
PRINCIPAL = SystemPrincipal("cli:results-sensitive")

OrganizationOption = Annotated[str | None, typer.Option(help="Organization name.")]
SystemArgument = Annotated[
    str, typer.Argument(help="Coding system, e.g. http://loinc.org or the LIS's own.")
]
CodeArgument = Annotated[str, typer.Argument(help="The exam or observation code.")]


@sensitive_app.command("list")
def sensitive_list(organization: OrganizationOption = None) -> None:
    """The sensitive exam codes of the organization."""
    from labvault.cli import _runtime, console

    with _runtime() as runtime, transaction(runtime.sessions) as session:
        tenant_id = use_organization(session, organization).id
        codes = list_codes(session, tenant_id)
    if not codes:
        console.print("No sensitive exam code.")
        return
    table = Table("system", "code", "label")
    for code in codes:
        table.add_row(code.system, code.code, code.label)
    console.print(table)


@sensitive_app.command("add")
def sensitive_add(
    system: SystemArgument,
    code: CodeArgument,
    label: Annotated[str, typer.Argument(help="What the exam is, for the lab's staff.")],
    organization: OrganizationOption = None,
) -> None:
    """Add a sensitive exam code (audited)."""
    from labvault.cli import CliError, _audit_context, _runtime, _seal_events, console

    with _runtime() as runtime:
        try:
            with transaction(runtime.sessions) as session:
                tenant_id = use_organization(session, organization).id
                audit = AuditTrail(session, PRINCIPAL, _audit_context())
                added = add_code(session, audit, tenant_id, system, code, label)
        except InvalidSensitiveCodeError as refused:
            raise CliError(f"Refused: {refused}.") from None
        _seal_events(runtime)
    console.print("Added." if added else "Already listed: nothing changed.")


@sensitive_app.command("remove")
def sensitive_remove(
    system: SystemArgument, code: CodeArgument, organization: OrganizationOption = None
) -> None:
    """Remove a sensitive exam code (audited)."""
    from labvault.cli import CliError, _audit_context, _runtime, _seal_events, console

    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            tenant_id = use_organization(session, organization).id
            audit = AuditTrail(session, PRINCIPAL, _audit_context())
            removed = remove_code(session, audit, tenant_id, system, code)
        _seal_events(runtime)
    if not removed:
        raise CliError("No such sensitive exam code: nothing changed.")
    console.print("Removed.")
