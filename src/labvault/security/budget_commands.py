"""``labvault guard budgets show|set``: read budgets (``labvault.security.budgets``).

``show`` prints the limits that apply to each principal kind and role of an organization
and where each comes from (the organization's own, ``LABVAULT_GUARD_BUDGETS``, or the
defaults). ``set`` gives the organization its own limits for one kind and role (or clears
them with ``--clear``); workers apply a change within a minute.
"""

from __future__ import annotations

from typing import Annotated

import typer

from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.db import transaction
from labvault.organizations.services import use_organization
from labvault.security.budgets import (
    BudgetLimits,
    BudgetPolicy,
    OrganizationLimits,
    effective_limits,
    parse_budget_key,
    set_organization_limits,
)

__all__ = ["budgets_app"]

SET_JOB = "cli:guard-budgets"

budgets_app = typer.Typer(
    help="Read budgets: distinct patients a principal may open per hour, day, 30 days.",
    no_args_is_help=True,
)

OrganizationOption = Annotated[str | None, typer.Option(help="Organization name.")]


@budgets_app.command("show")
def budgets_show(organization: OrganizationOption = None) -> None:
    """The limits in force for each principal kind and role, and where they come from."""
    from labvault.cli import CliError, _runtime, console

    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            tenant = use_organization(session, organization)
        try:
            policy = BudgetPolicy(runtime.settings.guard_budgets)
        except ValueError as bad:
            raise CliError(f"LABVAULT_GUARD_BUDGETS: {bad}") from None
        own = OrganizationLimits(runtime.engine)(tenant.id)
        store = runtime.settings.guard_budget_store.split("://")[0]
    console.print(
        f"Read budgets of {tenant.name} (distinct patients; counters: {store}; "
        f"lock on excess: {'on' if runtime.settings.guard_lock_on_budget else 'off'})",
        highlight=False,
    )
    console.print("principal            per hour   per day  per 30 days  source", highlight=False)
    for kind, role, limits, source in effective_limits(policy, own):
        name = kind if role == "*" else f"{kind}:{role}"
        console.print(
            f"{name:<20} {limits.per_hour:>8} {limits.per_day:>9} {limits.per_30_days:>12}  "
            f"{source}",
            highlight=False,
        )
    console.print("system jobs          exempt (named and audited)", highlight=False)


@budgets_app.command("set")
def budgets_set(
    principal: Annotated[
        str,
        typer.Argument(
            help="Kind and role: staff:receptionist, staff:biologist, staff:* (every other "
            "staff role), patient, service:lis, service:fhir."
        ),
    ],
    per_hour: Annotated[int | None, typer.Option(min=0)] = None,
    per_day: Annotated[int | None, typer.Option(min=0)] = None,
    per_30_days: Annotated[int | None, typer.Option("--per-30-days", min=0)] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Drop the organization's own limits for it.")
    ] = False,
    organization: OrganizationOption = None,
) -> None:
    """Give the organization its own limits for one principal kind and role."""
    from labvault.cli import CliError, _audit_context, _runtime, _seal_events, console

    values = (per_hour, per_day, per_30_days)
    if clear == any(v is not None for v in values) or (not clear and None in values):
        raise CliError("give --per-hour, --per-day and --per-30-days, or --clear alone")
    try:
        parse_budget_key(principal)
        limits = None if clear else BudgetLimits(*values)  # type: ignore[arg-type]
    except ValueError as bad:
        raise CliError(str(bad)) from None
    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            tenant = use_organization(session, organization)
            audit = AuditTrail(session, SystemPrincipal(SET_JOB), _audit_context())
            set_organization_limits(session, audit, tenant.id, principal, limits)
        _seal_events(runtime)
    if limits is None:
        console.print(f"{principal}: back to the deployment's limits.", highlight=False)
    else:
        console.print(
            f"{principal}: {limits.per_hour} per hour, {limits.per_day} per day, "
            f"{limits.per_30_days} per 30 days (applies within a minute).",
            highlight=False,
        )
