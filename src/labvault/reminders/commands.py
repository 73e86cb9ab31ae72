"""``labvault reminders send``: the day-before reminders, for every organization.

Run it once a day (cron, systemd timer), e.g. at 18:00: it reminds tomorrow's appointments.
Idempotent: an appointment reminded once is never reminded again, so a second run, or a run
after a crash, sends only what is still due. It prints counts only, never a name, an address
or an id; exit status 1 when some reminder could not be sent (they are retried next run).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

import typer
from sqlalchemy import select

from labvault.core.db import utcnow
from labvault.organizations.models import Organization
from labvault.reminders.services import ReminderJob, ReminderReport, default_day
from labvault.reminders.sms import load_sms_sender

__all__ = ["reminders_app"]

reminders_app = typer.Typer(help="Appointment reminders (email and SMS).", no_args_is_help=True)


def _parse_day(value: str | None) -> dt.date:
    from labvault.cli import CliError

    if value is None:
        return default_day(utcnow())
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            raise ValueError
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CliError("--day must be a date written YYYY-MM-DD, e.g. 2026-12-01") from None


@reminders_app.command("send")
def send(
    day: Annotated[
        str | None,
        typer.Option(help="Remind the appointments of this day (Paris), YYYY-MM-DD; default: "
        "tomorrow."),
    ] = None,
) -> None:  # fmt: skip
    """Remind every booked appointment of the day not reminded yet, by email and SMS.

    SMS when a phone is known. The message holds the date, time, site, a link to the account
    and the security phrase; never an exam or a name."""
    from labvault.cli import CliError, _audit_context, _progress, _runtime, _seal_events, console

    target = _parse_day(day)
    report = ReminderReport()
    with _runtime() as runtime:
        settings = runtime.settings
        try:
            mailer = runtime.mailer
            sms = load_sms_sender(
                settings.sms_transport, settings.resolved_data_dir, environment=settings.environment
            )
        except ValueError as exc:
            raise CliError(str(exc)) from None
        job = ReminderJob(
            runtime.key_provider,
            mailer,
            sms,
            public_url=settings.public_url,
            context=_audit_context(),
        )
        with runtime.sessions() as session:
            tenants = list(session.scalars(select(Organization.id).order_by(Organization.id)))
        # One tenant-bound transaction per appointment: on PostgreSQL row-level security
        # shows each organization's rows only to sessions bound to it.
        due: dict[object, int] = {}
        for tenant_id in tenants:
            with runtime.tenant_sessions(tenant_id)() as session:
                due[tenant_id] = len(job.due(session, tenant_id, target))
        try:
            with _progress() as progress:
                task = progress.add_task(
                    f"Reminders for {target.isoformat()}", total=sum(due.values())
                )
                for tenant_id in tenants:
                    if not due[tenant_id]:
                        continue
                    report.add(
                        job.run(
                            runtime.tenant_sessions(tenant_id),
                            tenant_id,
                            target,
                            on_progress=lambda done: progress.advance(task, done),
                        )
                    )
        finally:
            _seal_events(runtime)
    if sms is None:
        console.print("SMS disabled (LABVAULT_SMS_SENDER=none:): reminders go by email only.")
    console.print(
        f"{report.sent} reminder(s) sent for {target.isoformat()} ({report.emails} email(s), "
        f"{report.sms} SMS); {report.unreachable} without email or phone, {report.failed} "
        f"failed, {report.skipped} already reminded or changed meanwhile.",
        highlight=False,
    )
    if report.failed:
        raise typer.Exit(1)
