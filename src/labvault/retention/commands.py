"""``labvault retention run``: purge expired holds and prescriptions, anonymise old
appointments, for every organization (see :mod:`labvault.retention.services`).

Idempotent: run it daily; a second run in a row changes nothing. ``--dry-run`` prints what
would go and changes nothing. It prints counts only.
"""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import select

from labvault.core.db import transaction, utcnow
from labvault.organizations.models import Organization
from labvault.retention.services import RetentionReport, RetentionSettings, run_retention

__all__ = ["retention_app"]

retention_app = typer.Typer(help="Data retention of appointments.", no_args_is_help=True)


@retention_app.command("run")
def run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be removed; change nothing.")
    ] = False,
) -> None:
    """Apply the retention periods: holds, prescriptions, old appointments, slot claims.

    Deletes expired holds, and prescriptions LABVAULT_PRESCRIPTION_RETENTION_DAYS after the
    visit (its current date); erases the pre-registration, exams and home address of
    appointments older than LABVAULT_APPOINTMENT_RETENTION_DAYS (the planning row stays);
    releases slot claims left by cancelled, missed or finished appointments."""
    from labvault.cli import _audit_context, _progress, _runtime, _seal_events, console

    report = RetentionReport()
    now = utcnow()
    with _runtime() as runtime:
        rules = RetentionSettings(
            appointment_retention_days=runtime.settings.appointment_retention_days,
            prescription_retention_days=runtime.settings.prescription_retention_days,
        )
        with runtime.sessions() as session:
            tenants = list(session.scalars(select(Organization.id).order_by(Organization.id)))
        with _progress() as progress:
            task = progress.add_task("Retention, by organization", total=len(tenants))
            # One transaction per organization, bound to it (row-level security on
            # PostgreSQL): an organization is either done or untouched.
            for tenant_id in tenants:
                with transaction(runtime.tenant_sessions(tenant_id)) as session:
                    report.add(
                        run_retention(
                            session,
                            tenant_id,
                            rules,
                            now=now,
                            dry_run=dry_run,
                            context=_audit_context(),
                        )
                    )
                progress.advance(task)
        if not dry_run:
            _seal_events(runtime)
    verb = "would be" if dry_run else "were"
    console.print(
        f"{report.holds} expired hold(s), {report.documents} prescription(s) and "
        f"{report.preregistrations} pre-registration(s) {verb} deleted; "
        f"{report.appointments} appointment(s) {verb} anonymised, "
        f"{report.claims} leftover slot claim(s) {verb} released"
        f" (appointment retention: {runtime.settings.appointment_retention_days} days).",
        highlight=False,
    )
    if dry_run:
        console.print("Dry run: nothing was changed.")
