"""``labvault guard honey plant|list``: honey records (``labvault.security.honey``).

``plant`` tops an organization up to its honey density and records where, when and by
whom, under a label for later leak attribution. ``list`` shows the sets, their counts and
where they were planted; never which patients are honey: that takes the honey key, and a
list of ids printed to a terminal would be a list of records to leave alone.
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated

import typer

from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.organizations.services import use_organization
from labvault.security.honey import (
    DEFAULT_LABEL,
    PLANT_JOB,
    HoneyPlantError,
    check_label,
    honey_sets,
    plant_honey,
)

__all__ = ["honey_app"]

PARIS = zoneinfo.ZoneInfo("Europe/Paris")

honey_app = typer.Typer(
    help="Honey records: synthetic patients whose decryption raises the alarm.",
    no_args_is_help=True,
)

OrganizationOption = Annotated[str | None, typer.Option(help="Organization name.")]


@honey_app.command("plant")
def honey_plant(
    organization: OrganizationOption = None,
    density: Annotated[
        float | None,
        typer.Option(
            help="Honey patients per real patient (0.005: 0.5 %, the least); "
            "default LABVAULT_GUARD_HONEY_DENSITY.",
        ),
    ] = None,
    minimum: Annotated[
        int | None,
        typer.Option(help="At least this many, however small the organization."),
    ] = None,
    label: Annotated[
        str,
        typer.Option(help="Attribution label of this set (letters, digits, '.-_')."),
    ] = DEFAULT_LABEL,
) -> None:
    """Plant honey patients up to the density (with a past appointment or two each).

    Run it after each large import too: honey records planted in several rounds mix with
    the real ones in the tables' physical order as well."""
    from labvault.cli import CliError, _audit_context, _runtime, _seal_events, console

    try:
        check_label(label)
    except HoneyPlantError as bad:
        raise CliError(str(bad)) from None
    with _runtime() as runtime:
        settings = runtime.settings
        wanted_density = settings.guard_honey_density if density is None else density
        if wanted_density < 0.005:
            raise CliError("the density cannot be below 0.005 (0.5 %)")
        with transaction(runtime.sessions) as session:
            tenant = use_organization(session, organization)
            keyring = TenantKeyring(
                session,
                runtime.key_provider,
                tenant.id,
                SystemPrincipal(PLANT_JOB),
                context=_audit_context(),
            )
            try:
                report = plant_honey(
                    session,
                    runtime.key_provider,
                    keyring,
                    keyring.audit,
                    density=wanted_density,
                    minimum=settings.guard_honey_minimum if minimum is None else minimum,
                    label=label,
                )
            except HoneyPlantError as bad:
                raise CliError(str(bad)) from None
        _seal_events(runtime)
    if report.set_id is None:
        console.print(
            f"Nothing planted: {report.honey_total} honey records already cover "
            f"{report.population} patients."
        )
        return
    console.print(
        f"Planted honey set {report.set_id}: {report.planted} records, "
        f"{report.appointments} appointments ({report.honey_total} honey records for "
        f"{report.population} patients)."
    )


@honey_app.command("list")
def honey_list(organization: OrganizationOption = None) -> None:
    """The honey sets: when, by whom, density, counts. Never which patients."""
    from labvault.cli import _runtime, console

    with _runtime() as runtime, transaction(runtime.sessions) as session:
        tenant = use_organization(session, organization)
        sets = honey_sets(session, tenant.id)
    if not sets:
        console.print("No honey set: run `labvault guard honey plant`.")
        return
    for entry in sets:
        planted = entry.planted_at.astimezone(PARIS).strftime("%Y-%m-%d %H:%M")
        console.print(
            f"{entry.id}  {entry.label}  planted {planted} (Paris) by {entry.planted_by}, "
            f"density {entry.density_ppm / 10_000:.2f} % of {entry.population} patients: "
            f"{entry.patient_count} records ({entry.marks} on file), "
            f"{entry.appointment_count} appointments",
            highlight=False,
            soft_wrap=True,
        )
