"""``labvault keys``: rotate the root key, rewrap every wrapped key, retire old versions,
migrate to another key provider. Prints labels and counts, never key material.

The usual sequence: ``keys rotate`` (running processes wrap under the new version from
their next wrap: the key file is followed, Transit is asked), ``keys rewrap`` (resumable:
rerun it after a crash), ``keys status``, and once backups taken before the rotation may
become unreadable, ``keys retire``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from sqlalchemy import select

from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.checkpoints import SIGNING_LABEL
from labvault.core.audit.events import AuditTrail
from labvault.core.audit.sequencer import SEAL_LABEL
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.providers.base import (
    ActiveVersionChangedError,
    DestroysRetiredVersions,
    KeyProvider,
    KeyVersion,
)
from labvault.core.crypto.providers.chain import KeyChain, active_label
from labvault.core.crypto.rewrap import (
    DEFAULT_BATCH_SIZE,
    UNKNOWN_VERSION,
    Census,
    KeyStore,
    RewrapReport,
    census,
    migrate,
    rewrap,
)
from labvault.core.db import transaction
from labvault.keys.index_commands import register as register_index_commands
from labvault.organizations.models import Organization
from labvault.results.intake import ORDER_KEY_LABEL

if TYPE_CHECKING:
    from labvault.core.config import Settings
    from labvault.core.runtime import Runtime

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help="Root keys: rotation, rewrap, retirement, migration.", no_args_is_help=True
)

PRESERVED_LABELS = (SEAL_LABEL, SIGNING_LABEL, ORDER_KEY_LABEL)
"""Derivations kept when a version is retired: what ``labvault audit verify`` needs, and
the order-number digests (a correction of an order received before the rotation must find
it)."""
KEY_PROVIDER_TARGET = "key-provider"
BatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size", min=1, max=100_000, help="Wrapped keys per transaction (and audit event)."
    ),
]


def key_store(runtime: Runtime) -> KeyStore:
    """Every organization's wrapped keys, each read through sessions bound to it."""
    with runtime.sessions() as session:
        tenants = list(session.scalars(select(Organization.id).order_by(Organization.id)))
    return KeyStore(tenants, runtime.tenant_sessions, runtime.audit_sessions)


def _record(runtime: Runtime, action: AuditAction, job: str, purpose: str) -> None:
    from labvault.cli import _audit_context

    with transaction(runtime.audit_sessions) as session:
        AuditTrail(session, SystemPrincipal(f"cli:{job}"), _audit_context()).record(
            action, tenant_id=None, target_type=KEY_PROVIDER_TARGET, purpose=purpose
        )


@keys_app.command("status")
def status() -> None:
    """Root key versions and how many wrapped keys each one holds.

    For each version: its label, whether it is active and can unwrap, when it was created."""
    from labvault.cli import _runtime, console

    with _runtime() as runtime:
        provider = runtime.key_provider
        counts = census(key_store(runtime), provider)
        console.print(_versions_table(provider, counts))
    _print_census(counts)


def _versions_table(provider: KeyProvider, counts: Census) -> Table:
    table = Table(title=f"Root key versions ({provider.name} key provider)")
    table.add_column("version", overflow="fold")
    for column in ("active", "can unwrap", "created", "wrapped keys"):
        table.add_column(column)
    for version in provider.versions():
        table.add_row(
            version.label,
            "yes" if version.active else "",
            "yes" if version.can_unwrap else "no (retired)",
            version.created.isoformat(timespec="seconds") if version.created else "",
            str(counts.by_version.get(version.label, 0)),
        )
    if counts.by_version.get(UNKNOWN_VERSION):
        table.add_row(
            "(no configured provider)", "", "no", "", str(counts.by_version[UNKNOWN_VERSION])
        )
    return table


def _print_census(counts: Census) -> None:
    from labvault.cli import console

    if counts.not_current:
        console.print(
            f"{counts.not_current} of {counts.total} wrapped keys are not under the active "
            "version: run `labvault keys rewrap`."
        )
    else:
        console.print(f"All {counts.total} wrapped keys are under the active version.")


@keys_app.command("rotate")
def rotate() -> None:
    """Create a new root key version; every process wraps new keys under it from now on."""
    from labvault.cli import _runtime, _seal_events, console

    with _runtime() as runtime:
        version = runtime.key_provider.rotate()
        _record(runtime, AuditAction.KEYS_ROOT_ROTATE, "keys-rotate", "keys-rotate")
        _seal_events(runtime)
    console.print(f"New active root key version: {version.label}.", highlight=False)
    console.print(
        "New keys are wrapped under it from now on; run `labvault keys rewrap` to rewrap "
        "the existing ones."
    )


@keys_app.command("rewrap")
def rewrap_command(batch_size: BatchSize = DEFAULT_BATCH_SIZE) -> None:
    """Rewrap every wrapped key under the active version, in batches.

    Safe to interrupt and run again: it resumes where it stopped."""
    from labvault.cli import _audit_context, _progress, _runtime, _seal_events, console

    with _runtime() as runtime:
        provider = runtime.key_provider
        store = key_store(runtime)
        pending = census(store, provider).not_current
        if not pending:
            console.print("Every wrapped key is already under the active version: nothing to do.")
            return
        with _progress() as progress:
            task = progress.add_task("Rewrapping keys", total=pending)
            report = rewrap(
                store,
                provider,
                batch_size=batch_size,
                on_progress=lambda done: progress.advance(task, done),
                context=_audit_context(),
            )
        _seal_events(runtime)
    _print_report(report, "rewrap")


def _print_report(report: RewrapReport, command: str) -> None:
    from labvault.cli import console

    console.print(
        f"{report.rewrapped} wrapped keys rewrapped in {report.batches} batches"
        + (
            f"; {report.changed_meanwhile} changed or erased meanwhile, left alone"
            if report.changed_meanwhile
            else ""
        )
        + ".",
        highlight=False,
    )
    if report.complete:
        console.print("Every wrapped key is under the active version.")
    else:
        console.print(
            f"{report.remaining} wrapped keys are still under an older version (written "
            "meanwhile, e.g. by a process still configured with the previous provider): run "
            f"`labvault keys {command}` again."
        )


@keys_app.command("retire")
def retire(
    destroy: Annotated[
        bool,
        typer.Option(
            "--destroy",
            help="Transit: also delete the retired versions from OpenBao/Vault for good "
            "(trim), so that no configuration change can make them unwrap again. "
            "Irreversible. The file provider's retirement already deletes their material.",
        ),
    ] = False,
) -> None:
    """Stop every version but the active one from unwrapping, backups included.

    Also a previous provider's: nothing wrapped under them opens again.

    Refused while any wrapped key is still under a version that would be retired, and if
    a rotation happens between that check and the retirement."""
    from labvault.cli import _runtime, _seal_events, console, errors

    with _runtime() as runtime:
        provider = runtime.key_provider
        versions = provider.versions()
        expected_active = _active(versions)
        retiring = [v.label for v in versions if v.can_unwrap and not v.active]
        gone: list[KeyVersion] = []
        if retiring:
            counts = census(key_store(runtime), provider)
            blocking = sum(counts.by_version.get(label, 0) for label in retiring)
            if blocking:
                errors.print(
                    f"[bold red]refused:[/] {blocking} wrapped keys are still under versions "
                    "that would be retired; run `labvault keys rewrap` first. Nothing was "
                    "changed.",
                    highlight=False,
                )
                raise typer.Exit(1)
            try:
                gone = provider.retire(PRESERVED_LABELS, expected_active)
            except ActiveVersionChangedError:
                errors.print(
                    "[bold red]refused:[/] a rotation happened since the check (the active "
                    "root key version changed); run `labvault keys rewrap`, then `labvault "
                    "keys retire` again. Nothing was changed.",
                    highlight=False,
                )
                raise typer.Exit(1) from None
            purpose = f"keys-retire/v:{len(gone)}"
            _record(runtime, AuditAction.KEYS_ROOT_RETIRE, "keys-retire", purpose)
            _seal_events(runtime)  # sealed even if the destruction below fails
        elif not destroy:
            console.print("No root key version to retire: only the active one can unwrap.")
            return
        destroyed = _destroy_retired(provider, expected_active) if destroy else None
        if destroyed:
            purpose = f"keys-retire-destroy/v:{len(destroyed)}"
            _record(runtime, AuditAction.KEYS_ROOT_DESTROY, "keys-retire", purpose)
            _seal_events(runtime)
    _print_retirement(gone, destroy, destroyed)


def _active(versions: list[KeyVersion]) -> str:
    for version in versions:
        if version.active:
            return version.label
    raise KeyProviderError("the key provider has no active root key version")


def _destroy_retired(provider: KeyProvider, expected_active: str) -> list[KeyVersion] | None:
    """Delete retired versions that still exist (Transit); None if no configured provider
    keeps any (the file provider deletes their material when it retires them)."""
    if isinstance(provider, KeyChain):
        parts = [(provider.current, expected_active)]
        parts += [(previous, active_label(previous)) for previous in provider.previous]
    else:
        parts = [(provider, expected_active)]
    keeping = [(part, label) for part, label in parts if isinstance(part, DestroysRetiredVersions)]
    if not keeping:
        return None
    return [version for part, label in keeping for version in part.destroy_retired(label)]


def _print_retirement(
    gone: list[KeyVersion], destroy: bool, destroyed: list[KeyVersion] | None
) -> None:
    from labvault.cli import console

    for version in gone:
        console.print(
            f"Retired {version.label}: nothing wrapped under it opens any more.", highlight=False
        )
    if gone:
        console.print(
            "Audit events sealed under the retired versions still verify (their seal and "
            "signing derivations were kept)."
        )
    if not destroy:
        return
    if destroyed is None:
        console.print(
            "The file key provider deletes a version's material when it retires it: "
            "--destroy is the same as a plain retirement."
        )
    elif not destroyed:
        console.print("No retired root key version left to destroy.")
    for version in destroyed or []:
        console.print(
            f"Destroyed {version.label}: deleted from the key provider for good; no backup "
            "wrapped under it can ever be opened again.",
            highlight=False,
        )


@keys_app.command("migrate")
def migrate_command(
    to: Annotated[str, typer.Option("--to", help="The new provider, e.g. file:/path/new.key.")],
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
) -> None:
    """Move every wrapped key to another key provider (same settings otherwise), resumably."""
    from labvault.cli import (
        CliError,
        _audit_context,
        _progress,
        _runtime,
        _seal_events,
        console,
        errors,
    )

    with _runtime() as runtime:
        default_key_file = runtime.settings.default_key_file
        current = _explicit(runtime.settings.key_provider, default_key_file)
        target_spec = to.strip()
        if _same_provider(target_spec, current, default_key_file):
            raise CliError(f"--to names the current key provider ({current}); nothing to move")
        if _between_transit_keys(runtime.settings, target_spec):
            errors.print(
                "[bold red]refused:[/] --to names a Transit key while a Transit key is "
                "configured (LABVAULT_KEY_PROVIDER or LABVAULT_PREVIOUS_KEY_PROVIDER): Transit's "
                "wrapped keys do not name their key, so the two could not be told apart. Move "
                "between Transit keys by rotating the key instead (`labvault keys rotate`, "
                "`keys rewrap`, `keys retire`). Nothing was changed.",
                highlight=False,
            )
            raise typer.Exit(1)
        source = runtime.key_provider
        target = _target_provider(runtime, target_spec)
        store = key_store(runtime)
        with _progress() as progress:
            task = progress.add_task("Moving keys", total=census(store, target).not_current)
            report = migrate(
                store,
                source,
                target,
                batch_size=batch_size,
                on_progress=lambda done: progress.advance(task, done),
                context=_audit_context(),
            )
        _seal_events(runtime)
    _print_report(report, f"migrate --to {target_spec}")
    if not report.complete:
        raise typer.Exit(1)
    console.print("Now set, for the application and every labvault command:", highlight=False)
    console.print(
        f"  LABVAULT_KEY_PROVIDER={target_spec}", highlight=False, markup=False, soft_wrap=True
    )
    console.print(
        f"  LABVAULT_PREVIOUS_KEY_PROVIDER={current}", highlight=False, markup=False, soft_wrap=True
    )
    console.print(
        "The previous provider keeps verifying audit events sealed before the migration and "
        "unwraps keys that a process not yet restarted with these settings wrote meanwhile "
        "(run `labvault keys rewrap` after the restart). Later, `labvault keys retire` "
        "destroys its ability to unwrap anything, backups included.",
        highlight=False,
    )


def _between_transit_keys(settings: Settings, target: str) -> bool:
    """Whether ``target`` and a configured provider are both Transit keys (see ``KeyChain``)."""
    configured = (settings.key_provider, settings.previous_key_provider or "")
    return target.startswith("transit:") and any(spec.startswith("transit:") for spec in configured)


def _explicit(spec: str, default_key_file: Path) -> str:
    """``file:`` spelled with the key file it means, so that it can be set elsewhere."""
    scheme, _, rest = spec.partition(":")
    if scheme == "file" and not rest:
        return f"file:{default_key_file}"
    return spec


def _same_provider(target: str, current: str, default_key_file: Path) -> bool:
    target = _explicit(target, default_key_file)
    if target.startswith("file:") and current.startswith("file:"):
        return Path(target[5:]).expanduser().resolve() == Path(current[5:]).expanduser().resolve()
    return target == current


def _target_provider(runtime: Runtime, spec: str) -> KeyProvider:
    """The provider to migrate to, with the same settings (Transit options and token);
    a new key file is created (0600) if it does not exist."""
    from labvault.core.crypto.providers import FileKeyProvider, load_key_provider

    scheme, _, rest = spec.partition(":")
    if scheme == "file":
        path = Path(rest).expanduser().resolve() if rest else runtime.settings.default_key_file
        if not path.exists():
            return FileKeyProvider.create(path)
    config = dataclasses.replace(runtime.key_provider_config, spec=spec, previous_spec=None)
    return load_key_provider(config)


# `labvault keys rotate-index` (blind-index keys) lives in its own module.
register_index_commands(keys_app)
