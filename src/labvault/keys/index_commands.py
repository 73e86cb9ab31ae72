"""``labvault keys rotate-index``: replace an organization's blind-index keys and recompute
every blind index, while the platform runs (see :mod:`labvault.core.crypto.index_rotation`).

Lookups keep answering throughout: until the job completes, they match the old and the new
generation. Interrupted (crash, Ctrl-C), it is resumed by running it again. It prints
counts only: no personal value, no digest, no key material.
"""

from __future__ import annotations

from typing import Annotated

import typer

from labvault.core.crypto.index_rotation import (
    DEFAULT_BATCH_SIZE,
    IndexRotation,
    IndexRotationError,
    IndexRotationReport,
)
from labvault.core.db import transaction
from labvault.organizations.services import use_organization

__all__ = ["register", "rotate_index"]


def rotate_index(
    organization: Annotated[
        str | None,
        typer.Option(help="Organization name (optional when there is only one)."),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", min=1, max=10_000, help="Records re-indexed per transaction."),
    ] = DEFAULT_BATCH_SIZE,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Only finish a rotation already running (or records left behind); never "
            "start a new one.",
        ),
    ] = False,
) -> None:
    """New blind-index keys for the organization, then every blind index recomputed.

    Use it when an index key may have been exposed. Each record is decrypted by the job
    (the audit log records one read per record, purpose keys:rotate-index); the old keys
    are deleted once no record uses them."""
    from labvault.cli import CliError, _audit_context, _progress, _runtime, _seal_events, console

    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            organization_row = use_organization(session, organization)
            tenant_id, name = organization_row.id, organization_row.name
        rotation = IndexRotation(
            runtime.tenant_sessions(tenant_id),
            runtime.key_provider,
            tenant_id,
            context=_audit_context(),
            batch_size=batch_size,
        )
        with _progress() as progress:
            task = progress.add_task("Re-indexing records", total=None)
            try:
                report = (rotation.resume if resume else rotation.run)(
                    on_total=lambda total: progress.update(task, total=total),
                    on_batch=lambda moved: progress.advance(task, moved),
                )
            except IndexRotationError as exc:
                raise CliError(str(exc)) from None
        _seal_events(runtime)
    console.print(_summary(name, report), highlight=False)


def _summary(organization: str, report: IndexRotationReport) -> str:
    lines = [
        f"{organization}: "
        + (
            f"new blind-index keys (generation {report.generation}) created; "
            if report.started
            else f"blind-index keys at generation {report.generation}; "
        )
        + f"{report.moved} record(s) re-indexed."
    ]
    if report.completed:
        lines.append("Rotation complete: the previous index keys were deleted.")
    elif report.remaining:
        lines.append(
            f"{report.remaining} record(s) were edited during the run and are still on the "
            "previous keys: run `labvault keys rotate-index --resume` again."
        )
    elif not report.started and not report.moved:
        lines.append("Nothing to do: no rotation was running.")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add ``rotate-index`` to the ``keys`` command group."""
    app.command("rotate-index")(rotate_index)
