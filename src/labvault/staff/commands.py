"""``labvault staff``: staff invitations from the command line.

An organization admin invites staff; from the command line the operator does it as the
explicit system principal ``cli:staff-invite`` (greppable, and recorded in every event).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.markup import escape
from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.accounts.invitations import Invitation, StaffAccountService
from labvault.accounts.services import InvalidInputError
from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.db import transaction
from labvault.core.mail import FileMailer, Mailer, MailerError, SmtpMailer
from labvault.core.runtime import Runtime
from labvault.organizations.models import Site
from labvault.organizations.services import use_organization
from labvault.staff.models import StaffRole

__all__ = ["staff_app"]

staff_app = typer.Typer(help="Staff members and their accounts.", no_args_is_help=True)

ROLE_HELP = "Role: " + ", ".join(role.value for role in StaffRole) + "."


def _site_ids(session: Session, tenant_id: uuid.UUID, names: Sequence[str]) -> list[uuid.UUID]:
    """The ids of the organization's sites named ``names`` (exact names)."""
    found: dict[str, uuid.UUID] = {
        name: site_id
        for name, site_id in session.execute(
            select(Site.name, Site.id).where(Site.tenant_id == tenant_id, Site.name.in_(names))
        )
    }
    unknown = [name for name in names if name not in found]
    if unknown:
        known = sorted(session.scalars(select(Site.name).where(Site.tenant_id == tenant_id)))
        raise InvalidInputError(
            f"unknown site {unknown[0]!r}; the organization's sites: "
            + (", ".join(repr(name) for name in known) or "none")
        )
    return [found[name] for name in dict.fromkeys(names)]


def where_mail_goes(mailer: Mailer) -> str:
    """Where a message sent through ``mailer`` ends up, for the operator."""
    if isinstance(mailer, FileMailer):
        return f"written to {mailer.directory} (one .eml file per message)"
    if isinstance(mailer, SmtpMailer):
        return f"sent through the SMTP server {mailer.server.host}:{mailer.server.port}"
    return f"handed to {type(mailer).__name__}"


def _invite(
    runtime: Runtime,
    principal: SystemPrincipal,
    *,
    email: str,
    first_name: str,
    last_name: str,
    role: StaffRole,
    sites: Sequence[str],
    organization: str | None,
) -> Invitation:
    from labvault.cli import _audit_context  # the run's request id (labvault.cli imports us)

    with transaction(runtime.sessions) as session:
        tenant_id = use_organization(session, organization).id
        service = StaffAccountService(
            session,
            tenant_id=tenant_id,
            provider=runtime.key_provider,
            mailer=runtime.mailer,
            limiter=runtime.rate_limiter,
            settings=runtime.settings,
            hasher=PasswordHasher(),
            context=_audit_context(),
        )
        return service.invite_staff(
            principal, email, first_name, last_name, role, _site_ids(session, tenant_id, sites)
        )


@staff_app.command("invite")
def invite(
    email: Annotated[str, typer.Argument(help="The invitee's professional email address.")],
    first_name: Annotated[str, typer.Option("--first-name", help="First name (greets them).")],
    last_name: Annotated[str, typer.Option("--last-name", help="Last name.")],
    role: Annotated[StaffRole, typer.Option(help=ROLE_HELP, case_sensitive=False)],
    site: Annotated[
        list[str] | None, typer.Option("--site", help="A site they work at, by name (repeat).")
    ] = None,
    organization: Annotated[str | None, typer.Option(help="Organization name.")] = None,
) -> None:
    """Create a staff member and email them a 7-day, single-use link to activate their account.

    Acts as the explicit system principal ``cli:staff-invite``.
    """
    from labvault.cli import CliError, _runtime, _seal_events, console

    principal = SystemPrincipal("cli:staff-invite")
    with _runtime() as runtime:
        try:
            invitation = _invite(
                runtime,
                principal,
                email=email,
                first_name=first_name,
                last_name=last_name,
                role=role,
                sites=site or [],
                organization=organization,
            )
        except (InvalidInputError, MailerError) as exc:
            raise CliError(str(exc)) from None
        _seal_events(runtime)
        where = where_mail_goes(runtime.mailer)
    console.print(
        f"Invited staff member {invitation.staff_id} ({role.value}); account "
        f"{invitation.account_id} awaits activation.",
        highlight=False,
    )
    console.print(
        f"The invitation to {escape(email.strip())} was {escape(where)}; its link works once, "
        f"until {invitation.expires_at:%Y-%m-%d %H:%M} UTC.",
        highlight=False,
    )
