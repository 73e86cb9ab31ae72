"""``labvault patients erase`` and legal holds (``patients hold place|release``, ``holds``).

Each acts as a named system principal with a keyring that holds no key: erasing and
holding decrypt nothing. Output names ids, reason codes and dates only.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

import typer

from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import audited_transaction
from labvault.core.db import transaction, utcnow
from labvault.organizations.services import use_organization
from labvault.patients.erasure import (
    ErasureReport,
    KeylessKeyring,
    LegalHoldError,
    RecordNotFoundError,
    erase_patient,
)
from labvault.patients.holds import (
    HoldNotFoundError,
    InvalidHoldError,
    describe_hold,
    holds_of,
    local_today,
    place_hold,
    release_hold,
)
from labvault.patients.models import ErasureRequester, LegalHold, LegalHoldReason

__all__ = ["hold_app", "patients_erase", "patients_holds"]

hold_app = typer.Typer(help="Legal holds: records that must not be erased.", no_args_is_help=True)

OrganizationOption = Annotated[str | None, typer.Option(help="Organization name.")]


def patients_erase(
    patient_id: Annotated[str, typer.Argument(help="The patient's id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    organization: OrganizationOption = None,
) -> None:
    """Erase a patient record by destroying its data key (crypto-shredding).

    The ciphertext stays but nothing can decrypt it any more; searches no longer find the
    record; upcoming appointments are cancelled. Refused (exit 1, nothing changed) while a
    legal hold is active. Erasing an erased record again changes nothing.
    """
    from labvault.cli import CliError, _audit_context, _parse_uuid, _runtime, _seal_events, console

    subject = _parse_uuid(patient_id, "PATIENT_ID")
    if not yes:
        typer.confirm(
            f"Erase patient record {subject}? Its data key is destroyed: nothing can ever "
            "read it again.",
            abort=True,
        )
    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            tenant_id = use_organization(session, organization).id
        try:
            # Bound to the tenant: the refusal's event, written in a transaction of its
            # own, passes row-level security too.
            with audited_transaction(runtime.tenant_sessions(tenant_id)) as session:
                keyring = KeylessKeyring(
                    session, tenant_id, SystemPrincipal("cli:patients-erase"), _audit_context()
                )
                report = erase_patient(
                    session,
                    keyring,
                    subject,
                    ErasureRequester.CLI,
                    drop_dir=runtime.settings.resolved_result_drop_dir,
                )
        except LegalHoldError as held:
            _seal_events(runtime)  # the refusal is in the log
            console.print(f"Not erased: {held}", highlight=False)
            raise typer.Exit(1) from None
        except RecordNotFoundError as unknown:
            raise CliError(str(unknown)) from None
        _seal_events(runtime)
    console.print(_describe(report), highlight=False)


def _describe(report: ErasureReport) -> str:
    if report.already_erased:
        return f"Patient record {report.patient_id} is already erased: nothing to do."
    return (
        f"Patient record {report.patient_id} erased: data key destroyed, blind indexes "
        f"cleared; {report.appointments_cancelled} appointment(s) cancelled, "
        f"{report.slot_claims_released} slot claim(s) released, "
        f"{report.appointments_anonymised} appointment(s) anonymised, "
        f"{report.preregistrations_deleted} pre-registration(s) and "
        f"{report.documents_deleted} document(s) deleted, "
        f"{report.account_links_removed} account link(s) removed, "
        f"{report.accounts_deleted} own account(s) deleted."
    )


def patients_holds(
    patient_id: Annotated[str, typer.Argument(help="The patient's id.")],
    organization: OrganizationOption = None,
) -> None:
    """List a record's legal holds, released ones included."""
    from labvault.cli import _parse_uuid, _runtime, console

    subject = _parse_uuid(patient_id, "PATIENT_ID")
    with _runtime() as runtime, transaction(runtime.sessions) as session:
        tenant_id = use_organization(session, organization).id
        holds = holds_of(session, tenant_id, subject)
    if not holds:
        console.print("No legal hold on this record.")
        return
    today = local_today(utcnow())
    console.print(f"{len(holds)} legal hold(s):")
    for hold in holds:
        released = (
            f", released {hold.released_at.isoformat(timespec='seconds')} by {hold.released_by}"
            if hold.released_at
            else ""
        )
        console.print(
            f"{hold.id}  {_state(hold, today):8}  {describe_hold(hold)}; placed "
            f"{hold.placed_at.isoformat(timespec='seconds')} by {hold.placed_by}{released}",
            highlight=False,
            soft_wrap=True,
        )


def _state(hold: LegalHold, today: dt.date) -> str:
    if hold.released_at is not None:
        return "released"
    if hold.until is not None and hold.until < today:
        return "ended"
    return "active"


@hold_app.command("place")
def hold_place(
    patient_id: Annotated[str, typer.Argument(help="The patient's id.")],
    reason: Annotated[LegalHoldReason, typer.Option(help="Why the record must be kept.")],
    until: Annotated[
        str | None, typer.Option(help="Last day, YYYY-MM-DD (default: until released).")
    ] = None,
    organization: OrganizationOption = None,
) -> None:
    """Keep a record from erasure until a date, or until the hold is released."""
    from labvault.cli import CliError, _audit_context, _parse_uuid, _runtime, _seal_events, console

    subject = _parse_uuid(patient_id, "PATIENT_ID")
    last_day = _parse_day(until, CliError)
    with _runtime() as runtime:
        try:
            with transaction(runtime.sessions) as session:
                tenant_id = use_organization(session, organization).id
                keyring = KeylessKeyring(
                    session, tenant_id, SystemPrincipal("cli:patients-hold"), _audit_context()
                )
                hold = place_hold(session, keyring, subject, reason, last_day)
                hold_id, described = hold.id, describe_hold(hold)
        except (RecordNotFoundError, InvalidHoldError) as refused:
            raise CliError(str(refused)) from None
        _seal_events(runtime)
    console.print(f"Legal hold {hold_id} placed ({described}).", highlight=False)


@hold_app.command("release")
def hold_release(
    hold_id: Annotated[str, typer.Argument(help="The hold's id (see `patients holds`).")],
    organization: OrganizationOption = None,
) -> None:
    """End a legal hold now."""
    from labvault.cli import CliError, _audit_context, _parse_uuid, _runtime, _seal_events, console

    subject = _parse_uuid(hold_id, "HOLD_ID")
    with _runtime() as runtime:
        try:
            with transaction(runtime.sessions) as session:
                tenant_id = use_organization(session, organization).id
                keyring = KeylessKeyring(
                    session, tenant_id, SystemPrincipal("cli:patients-hold"), _audit_context()
                )
                _, released = release_hold(session, keyring, subject)
        except HoldNotFoundError as unknown:
            raise CliError(str(unknown)) from None
        _seal_events(runtime)
    verb = "released" if released else "was already released"
    console.print(f"Legal hold {subject} {verb}.", highlight=False)


def _parse_day(value: str | None, error: type[Exception]) -> dt.date | None:
    if value is None:
        return None
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            raise ValueError
        return dt.date.fromisoformat(value)
    except ValueError:
        raise error("--until must be a date written YYYY-MM-DD") from None
