"""The ``labvault`` command line (Typer + Rich)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from sqlalchemy import inspect, select
from sqlalchemy.exc import SQLAlchemyError

from labvault.accounts.commands import accounts_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.checkpoints import CheckpointError, TrustedKeys, dumps
from labvault.core.audit.events import AuditContext, AuditTrail, AuditUnavailableError
from labvault.core.audit.merkle import ProofError
from labvault.core.audit.proofs import (
    ProofUnavailableError,
    inclusion_proof,
    verify_inclusion_proof,
)
from labvault.core.audit.search import SearchError, search_events
from labvault.core.audit.sequencer import AuditLogCorruptError
from labvault.core.audit.verify import ParallelScan, verify_log
from labvault.core.audit.witness import WitnessError
from labvault.core.config import ConfigurationError, Settings, load_settings
from labvault.core.contact import parse_email, parse_phone
from labvault.core.crypto.errors import CryptoError
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers import FileKeyProvider, ensure_provider_keys
from labvault.core.db import describe_database_error, transaction
from labvault.core.db_roles import RoleError, current_role_problems, grant_app_role
from labvault.core.migrate import is_up_to_date, upgrade
from labvault.core.runtime import Runtime
from labvault.core.tenancy import AUDIT_LOG_SCOPE
from labvault.core.web.request_context import new_request_id
from labvault.exports.commands import attribute as guard_attribute
from labvault.keys.commands import keys_app
from labvault.organizations.models import Organization
from labvault.organizations.services import (
    InvalidOrganizationNameError,
    OrganizationNotFoundError,
    create_organization,
    get_organization,
    use_organization,
)
from labvault.patients.bulk import BatchConflictError, register_records
from labvault.patients.commands import hold_app, patients_erase, patients_holds
from labvault.patients.importer import CsvFileError, import_patients, write_rejects
from labvault.patients.ins import InsOid
from labvault.patients.nir import Nir, NirError
from labvault.patients.services import PatientRecord, PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows
from labvault.reminders.commands import reminders_app
from labvault.results.commands import mllp_app, results_app
from labvault.results.delivery_commands import results_deliver
from labvault.results.sensitive import seed_default_codes
from labvault.results.sensitive_commands import sensitive_app
from labvault.retention.commands import retention_app
from labvault.security.budget_commands import budgets_app
from labvault.security.guard import protect
from labvault.security.guard_commands import guard_app
from labvault.security.honey_commands import honey_app
from labvault.staff.commands import staff_app

app = typer.Typer(
    help="labvault: patient platform for medical-analysis laboratories, encrypted by default.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
import_app = typer.Typer(help="Import data from files.", no_args_is_help=True)
patients_app = typer.Typer(help="Patients.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.add_typer(import_app, name="import")
app.add_typer(patients_app, name="patients")
app.add_typer(staff_app, name="staff")
app.add_typer(accounts_app, name="accounts")
app.add_typer(reminders_app, name="reminders")
app.add_typer(retention_app, name="retention")
patients_app.command("erase")(patients_erase)
patients_app.command("holds")(patients_holds)
patients_app.add_typer(hold_app, name="hold")
app.add_typer(keys_app, name="keys")
app.add_typer(results_app, name="results")
results_app.add_typer(sensitive_app, name="sensitive")
results_app.command("deliver")(results_deliver)
app.add_typer(mllp_app, name="mllp")
app.add_typer(guard_app, name="guard")
guard_app.add_typer(honey_app, name="honey")
guard_app.add_typer(budgets_app, name="budgets")
guard_app.command("attribute")(guard_attribute)

# Piped or captured output (a script, a log, a test) is not cut at 80 columns: a table's
# ids must come out whole. A terminal keeps its own width.
PIPED_WIDTH = 240
console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
errors = Console(stderr=True)
PARALLEL_FROM_ROWS = 20_000
WORKERS_HELP = (
    "Worker processes that validate and encrypt (-1: for large jobs, one per core but one)."
)


class CliError(Exception):
    """Shown to the operator as is, with exit status 2."""


@functools.cache
def _audit_context() -> AuditContext:
    """One request id per command run: its events can be told apart from every other run's."""
    return AuditContext(request_id=new_request_id())


def _seal_events(runtime: Runtime) -> None:
    """Sequence this run's events and sign a checkpoint covering them before exiting."""
    runtime.audit_log.advance(force_checkpoint=True)


def main() -> None:
    try:
        app()
    except (
        AuditLogCorruptError,
        AuditUnavailableError,
        BatchConflictError,
        CheckpointError,
        CliError,
        ConfigurationError,
        CryptoError,
        CsvFileError,
        InvalidOrganizationNameError,
        OrganizationNotFoundError,
        ProofUnavailableError,
        RoleError,
        SearchError,
        WitnessError,
    ) as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except SQLAlchemyError as exc:
        errors.print(f"[bold red]error:[/] {describe_database_error(exc)}", highlight=False)
        sys.exit(2)


# -- helpers ------------------------------------------------------------------------------


@contextmanager
def _runtime(*, require_schema: bool = True) -> Iterator[Runtime]:
    runtime = Runtime(load_settings())
    try:
        if require_schema and not is_up_to_date(runtime.engine):
            raise CliError("the database schema is not up to date; run `labvault db upgrade`")
        if require_schema:
            protect(runtime)  # a command is no way around the read budgets and honey records
        yield runtime
    finally:
        runtime.close()


def _ensure_initialised(settings: Settings) -> Runtime:
    """Data dir, key file and schema; idempotent."""
    data_dir = settings.resolved_data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if settings.key_provider.startswith("file:") and not settings.key_file.exists():
        _refuse_new_key_over_existing_data(settings)
        FileKeyProvider.create(settings.key_file)
        console.print(f"Created the root key file {settings.key_file} (mode 0600).")
        console.print(
            "[yellow]Back it up apart from the database: without it the data is unreadable.[/]"
        )
    runtime = Runtime(settings)
    # Fail now if the key file is missing or exposed; create a Transit provider's keys.
    ensure_provider_keys(runtime.key_provider)
    _upgrade_schema(runtime)
    return runtime


def _upgrade_schema(runtime: Runtime) -> str | None:
    """Migrate as the schema owner; then, if the app connects as another role, keep that
    role's privileges in step with the schema. Returns the role granted, if any."""
    upgrade(runtime.admin_engine)
    role = _app_role(runtime)
    if role is not None:
        with runtime.admin_engine.begin() as connection:
            grant_app_role(connection, role)
    return role


def _app_role(runtime: Runtime) -> str | None:
    """The application's own role on PostgreSQL, when it differs from the owner's."""
    app_url, admin_url = runtime.engine.url, runtime.admin_engine.url
    if app_url.get_backend_name() != "postgresql" or app_url.username == admin_url.username:
        return None
    return app_url.username


def _refuse_new_key_over_existing_data(settings: Settings) -> None:
    """A missing key file next to a database full of wrapped keys is a lost or misnamed key,
    not a fresh install: a new key would not open that data, and would mix two roots."""
    runtime = Runtime(settings)
    try:
        if not inspect(runtime.admin_engine).has_table(Organization.__tablename__):
            return
        # The tenant list, not the keys: it is visible to every role, row-level security or
        # not, and every organization holds wrapped keys from its creation on.
        with runtime.admin_sessions() as session:
            holds_keys = session.scalar(select(Organization.id).limit(1)) is not None
    finally:
        runtime.close()
    if holds_keys:
        raise CliError(
            f"the key file {settings.key_file} does not exist, but the database already holds "
            "keys wrapped under a root key: restore the key file from its backup, or point "
            "LABVAULT_KEY_PROVIDER at it; a new key would not open this data"
        )


def _progress(transfer: bool = False, *, on: Console = console) -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
    columns.append(TransferSpeedColumn() if transfer else MofNCompleteColumn())
    columns.append(TimeRemainingColumn())
    return Progress(*columns, console=on, transient=False)


# -- commands -----------------------------------------------------------------------------


@app.command()
def init(
    organization: Annotated[
        str | None, typer.Option(help="Create this organization (the tenant) if it does not exist.")
    ] = None,
) -> None:
    """Create the data directory, the key file and the schema, and the first organization."""
    settings = load_settings()
    runtime = _ensure_initialised(settings)
    try:
        with transaction(runtime.admin_sessions) as session:
            if organization is not None:
                try:
                    use_organization(session, organization)
                    console.print(f"Organization {organization!r} already exists.")
                except OrganizationNotFoundError:
                    created = create_organization(session, runtime.key_provider, organization)
                    seed_default_codes(session, created.id)  # sensitive exams, editable
                    console.print(f"Created organization {organization!r}.")
    finally:
        runtime.close()
    console.print(f"labvault is initialised in {settings.resolved_data_dir}.")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (as LABVAULT_ADMIN_DATABASE_URL's role, the owner)."""
    runtime = Runtime(load_settings())
    try:
        role = _upgrade_schema(runtime)
    finally:
        runtime.close()
    console.print("The database schema is up to date.")
    if role is not None:
        console.print(f"The application role {role} holds exactly its privileges.")


@db_app.command("grant")
def db_grant(
    role: Annotated[
        str | None,
        typer.Option(help="The application's role; default: LABVAULT_DATABASE_URL's user."),
    ] = None,
) -> None:
    """Give the application's PostgreSQL role exactly its privileges (see docs/deployment.md).

    Runs as the owner (LABVAULT_ADMIN_DATABASE_URL). Refuses a role that is superuser,
    BYPASSRLS or the owner: row-level security would not apply to it.
    """
    with _runtime() as runtime:
        if runtime.admin_engine.url.get_backend_name() != "postgresql":
            raise CliError("database roles exist on PostgreSQL only; SQLite needs no grant")
        role = role or _app_role(runtime)
        if role is None:
            raise CliError(
                "LABVAULT_DATABASE_URL connects as the owner: name the application's role "
                "with --role, and point LABVAULT_DATABASE_URL at it"
            )
        with runtime.admin_engine.begin() as connection:
            grants = grant_app_role(connection, role)
    console.print(f"Granted {role} its privileges on {len(grants)} tables.")


@db_app.command("check-role")
def db_check_role() -> None:
    """Check that LABVAULT_DATABASE_URL's role is subject to row-level security (exit 1 if not)."""
    with _runtime() as runtime, runtime.engine.connect() as connection:
        problems = current_role_problems(connection)
    if runtime.engine.url.get_backend_name() != "postgresql":
        console.print("SQLite: one deployment per database file; no row-level security.")
        return
    for problem in problems:
        console.print(f"[bold red]problem:[/] {escape(problem)}")
    if problems:
        raise typer.Exit(1)
    console.print("[bold green]The application role is subject to row-level security.[/]")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Serve the web application."""
    import uvicorn

    from labvault.app import create_app

    settings = load_settings()
    with _runtime() as runtime:
        runtime.key_provider.versions()  # refuse to start without a reachable, usable key
        with runtime.engine.connect() as connection:
            problems = current_role_problems(connection)
    if problems:
        message = (
            "the database role escapes row-level security ("
            + "; ".join(problems)
            + "): connect LABVAULT_DATABASE_URL as the application role (docs/deployment.md)"
        )
        if settings.environment == "production":
            raise CliError(message)
        errors.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False)
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_config=None)


@app.command()
def seed(
    patients: Annotated[int, typer.Option(min=1, help="How many synthetic patients.")] = 1000,
    organization: Annotated[str | None, typer.Option(help="Organization name.")] = None,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed.")] = 1,
    workers: Annotated[int, typer.Option(min=-1, max=64, help=WORKERS_HELP)] = -1,
) -> None:
    """Add synthetic patients (Faker fr_FR, valid NIR keys, test INS OID)."""
    with _runtime() as runtime:
        created = _seed_patients(runtime, patients, organization, seed_value, workers)
    console.print(f"Added {created} synthetic patients.")


def _seed_patients(
    runtime: Runtime, count: int, organization: str | None, seed_value: int, workers: int = -1
) -> int:
    with transaction(runtime.sessions) as session:
        tenant_id = use_organization(session, organization).id
        sealer = runtime.sealer_spec(session, tenant_id)
    principal = SystemPrincipal("cli:seed")
    rows = synthetic_patient_rows(count, seed=seed_value)
    with _progress() as progress:
        task = progress.add_task("Synthetic patients", total=count)
        report = register_records(
            ((number + 2, row) for number, row in enumerate(rows)),
            sessions=runtime.tenant_sessions(tenant_id),
            open_keyring=lambda session: TenantKeyring(
                session, runtime.key_provider, tenant_id, principal, context=_audit_context()
            ),
            sealer=sealer,
            workers=_workers(workers, count),
            ins_oid=InsOid.TEST,
            on_batch=lambda stored: progress.advance(task, stored),
        )
    _seal_events(runtime)
    if report.problems:
        raise CliError(f"{report.rejected_rows} synthetic patients failed validation (a bug)")
    return report.created


def _workers(requested: int, rows: int) -> int:
    """Worker processes for a bulk job: on request, else for large jobs one per core but one.

    This process stores every batch and needs a core of its own: on two cores, two workers
    and this process fighting for them import slower than one worker (bench.import_patients).
    """
    if requested >= 0:
        return requested
    if rows < PARALLEL_FROM_ROWS:
        return 0
    return max(1, min((os.cpu_count() or 1) - 1, 4))


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    patients: Annotated[int, typer.Option(min=0, help="Synthetic patients to create.")] = 200,
    serve_app: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve afterwards.")] = True,
) -> None:
    """Initialise if needed, seed a demo organization and serve it."""
    from labvault.demo import (
        DEMO_ACCOUNTS,
        DEMO_ORGANIZATION,
        create_demo_accounts,
        create_demo_booking_setup,
        create_demo_care,
        create_demo_organization,
        create_demo_results,
        demo_exists,
    )

    settings = load_settings()
    runtime = _ensure_initialised(settings)
    try:
        with transaction(runtime.admin_sessions) as session:
            fresh = not demo_exists(session)
            if fresh:
                organization = create_demo_organization(session, runtime.key_provider)
                create_demo_accounts(session, runtime, organization)
        with runtime.admin_sessions() as session:
            demo_id = get_organization(session, DEMO_ORGANIZATION).id
        with transaction(runtime.tenant_sessions(demo_id)) as session:
            create_demo_booking_setup(session, demo_id)  # idempotent: older demos get it too
        _seal_events(runtime)
        if fresh and patients:
            _seed_patients(runtime, patients, DEMO_ORGANIZATION, seed_value=2026)
            with transaction(runtime.tenant_sessions(demo_id)) as session:
                booked = create_demo_care(session, demo_id, runtime.key_provider)
            results = create_demo_results(runtime, demo_id)
            _seal_events(runtime)
            console.print(
                f"Demo organization {DEMO_ORGANIZATION!r} created with {patients} patients "
                f"({booked} booked this week)."
            )
            if results.released or results.queued:
                console.print(
                    f"Lab results from the demo laboratory system: {results.released} released "
                    f"to the demo patient, {results.to_validate} to validate, "
                    f"{results.awaiting_call} to give by phone, {results.queued} waiting in the "
                    "matching queue."
                )
        else:
            console.print(f"Demo organization {DEMO_ORGANIZATION!r} is ready.")
    finally:
        runtime.close()
    console.print("\nDemo accounts:")
    for account in DEMO_ACCOUNTS:
        console.print(f"  {account.kind.value}: {account.email} / {account.password}")
        console.print(f"    ({account.note})", highlight=False)
    mail_dir = settings.mailer.removeprefix("file:") or str(settings.resolved_data_dir / "mail")
    if settings.mailer.startswith("file:"):
        console.print(f"Mail lands in {mail_dir} (one .eml file per message).")
    console.print(
        "Lab results: the demo patient's at /compte/resultats (Vos résultats); the "
        "biologist's reports to validate at /biologie/resultats; results waiting for their "
        "patient at /laboratoire/rapprochement.",
        highlight=False,
    )
    if serve_app:
        # localhost rather than 127.0.0.1: browsers allow passkeys on a name, not an address.
        shown = "localhost" if host == "127.0.0.1" else host
        console.print(
            f"\n[bold green]labvault is running:[/] open http://{shown}:{port}/ (Ctrl+C to stop)"
        )
        console.print(f"Health: http://{host}:{port}/api/v1/health")
        serve(host=host, port=port)


@import_app.command("patients")
def import_patients_command(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV file.")
    ],
    organization: Annotated[str | None, typer.Option(help="Organization name.")] = None,
    rejects: Annotated[
        Path | None, typer.Option(help="Where to write rejected rows (default FILE.rejects.csv).")
    ] = None,
    oid: Annotated[
        str,
        typer.Option(help="INS OID of the NIRs in the file: 'nir' (real) or 'test' (synthetic)."),
    ] = "nir",
    batch_size: Annotated[
        int, typer.Option(min=1, max=50_000, help="Rows per transaction.")
    ] = 2000,
    workers: Annotated[int, typer.Option(min=-1, max=64, help=WORKERS_HELP)] = -1,
) -> None:
    """Import patients from a CSV file (see the README for the columns)."""
    oids = {"nir": InsOid.NIR, "test": InsOid.TEST}
    if oid not in oids:
        raise CliError("--oid must be 'nir' or 'test'")
    principal = SystemPrincipal("cli:import-patients")
    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            tenant_id = use_organization(session, organization).id
            sealer = runtime.sealer_spec(session, tenant_id)
        estimated_rows = file.stat().st_size // 150
        with _progress(transfer=True) as progress:
            task = progress.add_task(f"Importing {file.name}", total=file.stat().st_size)
            report = import_patients(
                file,
                sessions=runtime.tenant_sessions(tenant_id),
                open_keyring=lambda session: TenantKeyring(
                    session, runtime.key_provider, tenant_id, principal, context=_audit_context()
                ),
                sealer=sealer,
                workers=_workers(workers, estimated_rows),
                ins_oid=oids[oid],
                batch_size=batch_size,
                on_progress=lambda done: progress.advance(task, done),
            )
        _seal_events(runtime)
    console.print(
        f"{report.rows} rows: [green]{report.created} imported[/], "
        f"{report.existing} already present, [red]{report.rejected_rows} rejected[/]."
    )
    if report.problems:
        reject_path = rejects or file.with_name(file.name + ".rejects.csv")
        write_rejects(report.problems, reject_path)
        for problem in report.problems[:20]:
            console.print(
                f"  row {problem.row}: {problem.field}: {problem.reason}", highlight=False
            )
        if len(report.problems) > 20:
            console.print(f"  ... and {len(report.problems) - 20} more problems.")
        console.print(f"Rejected rows are listed in {reject_path} (row numbers and reasons only).")
        raise typer.Exit(1)


@patients_app.command("find")
def patients_find(
    nir: Annotated[str | None, typer.Option(help="NIR, with or without spaces.")] = None,
    email: Annotated[str | None, typer.Option(help="Email address.")] = None,
    phone: Annotated[str | None, typer.Option(help="Phone number.")] = None,
    name: Annotated[
        str | None, typer.Option(help="Birth name (with --first-name and --birth-date).")
    ] = None,
    first_name: Annotated[str | None, typer.Option(help="First given name.")] = None,
    birth_date: Annotated[str | None, typer.Option(help="Birth date, YYYY-MM-DD.")] = None,
    organization: Annotated[str | None, typer.Option(help="Organization name.")] = None,
) -> None:
    """Find patients by exact NIR, email, phone, or birth name + first name + birth date.

    Acts as the explicit system principal: this is a privileged, audited read.
    """
    search = _patient_search(nir, email, phone, name, first_name, birth_date)
    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            tenant_id = use_organization(session, organization).id
            keyring = TenantKeyring(
                session,
                runtime.key_provider,
                tenant_id,
                SystemPrincipal("cli:patients-find"),
                context=_audit_context(),
            )
            found = search(PatientRepository(session, keyring))
        _seal_events(runtime)
    if not found:
        console.print("No matching patient.")
        raise typer.Exit(1)
    console.print(_patients_table(found))


def _patient_search(
    nir: str | None,
    email: str | None,
    phone: str | None,
    name: str | None,
    first_name: str | None,
    birth_date: str | None,
) -> Callable[[PatientRepository], list[PatientRecord]]:
    given = [option for option in (nir, email, phone, name) if option is not None]
    if len(given) != 1:
        raise CliError("give exactly one of --nir, --email, --phone or --name")
    purpose = "cli:patients-find"
    if nir is not None:
        try:
            parsed = Nir.parse(nir)
        except NirError as exc:
            raise CliError(f"--nir: {exc}") from None
        return lambda repo: repo.find_by_nir(parsed, purpose=purpose)
    if email is not None:
        try:
            normalized_email = parse_email(email)
        except ValueError as exc:
            raise CliError(f"--email {exc}") from None
        return lambda repo: repo.find_by_email(normalized_email, purpose=purpose)
    if phone is not None:
        try:
            normalized_phone = parse_phone(phone)
        except ValueError as exc:
            raise CliError(f"--phone {exc}") from None
        return lambda repo: repo.find_by_phone(normalized_phone, purpose=purpose)
    if first_name is None or birth_date is None:
        raise CliError("--name needs --first-name and --birth-date")
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", birth_date):
            raise ValueError
        born = dt.date.fromisoformat(birth_date)
    except ValueError:
        raise CliError("--birth-date must be a date written YYYY-MM-DD") from None
    assert name is not None
    return lambda repo: repo.find_by_name(name, first_name, born, purpose=purpose)


def _patients_table(found: list[PatientRecord]) -> Table:
    table = Table(title=f"{len(found)} patient(s)")
    for column in (
        "id",
        "birth name",
        "used name",
        "first names",
        "born",
        "sex",
        "NIR",
        "email",
        "phone",
        "address",
    ):
        table.add_column(column)
    for p in found:
        nir = p.nir.formatted() if p.nir else (p.ins_number or "")
        address = " ".join(v for v in (p.address_line, p.postal_code, p.city) if v)
        table.add_row(
            str(p.id), p.birth_name or "", p.used_name or "", p.first_names or "",
            p.birth_date.isoformat() if p.birth_date else "", p.sex.value if p.sex else "",
            nir, p.email or "", p.phone or "", address,
        )  # fmt: skip
    return table


@patients_app.command("history")
def patients_history(
    patient_id: Annotated[str, typer.Argument(help="The patient's id.")],
    organization: Annotated[str | None, typer.Option(help="Organization name.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, newest first.")] = False,
) -> None:
    """Who opened this patient's file, when, as which role, at which site, and why."""
    from labvault.patients.history import access_history

    subject = _parse_uuid(patient_id, "PATIENT_ID")
    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            tenant_id = use_organization(session, organization).id
            keyring = TenantKeyring(
                session,
                runtime.key_provider,
                tenant_id,
                SystemPrincipal("cli:patients-history"),
                context=_audit_context(),
            )
            entries = access_history(session, keyring, subject)
        _seal_events(runtime)
    if as_json:
        for entry in entries:
            document = dataclasses.asdict(entry)
            document["at"] = entry.at.isoformat().replace("+00:00", "Z")
            sys.stdout.write(dumps(document) + "\n")
        return
    table = Table(title=f"Historique des accès ({len(entries)})")
    for column in ("date (Europe/Paris)", "action", "par", "réf.", "rôle", "site", "motif"):
        table.add_column(column)
    paris = ZoneInfo("Europe/Paris")
    for entry in entries:
        table.add_row(
            entry.at.astimezone(paris).strftime("%d/%m/%Y %H:%M:%S"), entry.label, entry.actor,
            entry.actor_reference, entry.role or "", entry.site or "", entry.purpose or "",
        )  # fmt: skip
    console.print(table)


# -- audit ------------------------------------------------------------------------------


def _parse_uuid(value: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CliError(f"{name} must be an id like 3f2a9c4e-...") from None


def _parse_time(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"{name} must be a date or time in ISO 8601, e.g. 2026-11-29T14:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo("Europe/Paris"))
    return moment


def _record_investigation(runtime: Runtime, action: AuditAction, purpose: str) -> None:
    with transaction(runtime.audit_sessions) as session:
        AuditTrail(session, SystemPrincipal(purpose), _audit_context()).record(
            action, tenant_id=None, target_type="audit-log", purpose=purpose
        )


@audit_app.command("verify")
def audit_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    workers: Annotated[
        int,
        typer.Option(min=-1, max=64, help="Checking processes for large logs (-1: one per core)."),
    ] = -1,
) -> None:
    """Recompute the whole log: exit 1 and name the first inconsistent event if tampered."""
    with _runtime() as runtime:
        audit_log = runtime.audit_log
        # On stderr, so that --json output on stdout stays a clean document.
        with runtime.audit_sessions() as session, _progress(on=errors) as progress:
            task = progress.add_task("Verifying the audit log", total=None)
            report = verify_log(
                session,
                audit_log.trusted_keys,
                audit_log.seal_keys(),
                audit_log.witness,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                parallel=ParallelScan(
                    database_url=runtime.settings.sqlalchemy_url,
                    scope=AUDIT_LOG_SCOPE,
                    key_provider=runtime.key_provider_config,
                    workers=workers if workers >= 0 else (os.cpu_count() or 1),
                ),
            )
        _record_investigation(runtime, AuditAction.AUDIT_LOG_VERIFY, "cli:audit-verify")
    if as_json:
        document = {
            "ok": report.ok,
            "events": report.events,
            "checkpoints": report.checkpoints,
            "witnessed": report.witnessed,
            "pending": report.pending,
            "unanchored": report.unanchored,
            "findings": [
                {
                    "kind": f.kind.value,
                    "message": f.message,
                    "position": f.position,
                    "event_id": None if f.event_id is None else str(f.event_id),
                }
                for f in report.findings
            ],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        console.print(
            f"{report.events} events, {report.checkpoints} checkpoints "
            f"({report.witnessed} witnessed), {report.pending} not yet sequenced, "
            f"{report.unanchored} after the last checkpoint."
        )
        for finding in report.findings:
            console.print(f"[bold red]{finding.kind.value}:[/] {escape(finding.message)}")
        if report.ok:
            console.print("[bold green]The audit log is intact.[/]")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sequence pending events and sign a checkpoint now (the app does it every few seconds)."""
    with _runtime() as runtime:
        report = runtime.audit_log.advance(force_checkpoint=True)
    console.print(
        f"{report.sequenced} events sequenced; the log holds {report.tree_size} events, "
        f"{len(report.checkpoints)} new checkpoint(s)."
    )


@audit_app.command("proof")
def audit_proof(
    event_id: Annotated[str, typer.Argument(help="The event's id.")],
    output: Annotated[Path | None, typer.Option(help="Write the proof to this file.")] = None,
) -> None:
    """An inclusion proof of one event against the latest signed checkpoint."""
    subject = _parse_uuid(event_id, "EVENT_ID")
    with _runtime() as runtime:
        runtime.audit_log.advance(force_checkpoint=True)
        with runtime.audit_sessions() as session:
            document = inclusion_proof(session, subject)
        _record_investigation(runtime, AuditAction.AUDIT_PROOF_CREATE, "cli:audit-proof")
    # Compact: a proof at 100 million events still fits in 2 KB.
    text = json.dumps(document, separators=(",", ":")) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"Proof written to {output} ({len(document['audit_path'])} hashes).")


@audit_app.command("public-key")
def audit_public_key(
    output: Annotated[Path | None, typer.Option(help="Write the key to this file.")] = None,
) -> None:
    """The checkpoint signing public key(s), for verifiers without database or key access."""
    settings = load_settings()
    runtime = Runtime(settings)
    try:
        text = json.dumps(TrustedKeys.from_provider(runtime.key_provider).to_json(), indent=2)
    finally:
        runtime.close()
    if output is None:
        sys.stdout.write(text + "\n")
    else:
        output.write_text(text + "\n", encoding="utf-8")
        console.print(f"Public key written to {output}.")


@audit_app.command("check-proof")
def audit_check_proof(
    proof: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Proof file.")],
    public_key: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="From `labvault audit public-key`.")
    ],
) -> None:
    """Check an inclusion proof offline: no database, no key provider, no settings."""
    try:
        trusted = TrustedKeys.from_json(json.loads(public_key.read_text(encoding="utf-8")))
        document = json.loads(proof.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"unreadable file: {exc}") from None
    try:
        verified = verify_inclusion_proof(document, trusted)
    except (ProofError, CheckpointError) as exc:
        console.print(f"[bold red]The proof is invalid:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    checkpoint = verified.checkpoint
    console.print(
        f"[bold green]Valid:[/] event {uuid.UUID(verified.event['id'])} "
        f"({verified.event['action']}) is "
        f"entry {verified.leaf_index} of the log whose checkpoint at size "
        f"{checkpoint.tree_size} is signed by key {checkpoint.key_id}."
    )


@audit_app.command("search")
def audit_search(
    actor: Annotated[str | None, typer.Option(help="Actor id (e.g. system:cli:seed).")] = None,
    patient: Annotated[str | None, typer.Option(help="Patient id.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Action tag, or a prefix like 'patient:*'.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="From (ISO 8601; Paris time if bare).")] = None,
    until: Annotated[str | None, typer.Option(help="Until, excluded.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many events.")] = None,
) -> None:
    """Events matching every filter given, oldest first, as JSON lines (for investigations)."""
    patient_id = _parse_uuid(patient, "--patient") if patient is not None else None
    start, end = _parse_time(since, "--since"), _parse_time(until, "--until")
    with _runtime() as runtime:
        with runtime.audit_sessions() as session:
            for document in search_events(
                session,
                actor=actor,
                patient=patient_id,
                action=action,
                since=start,
                until=end,
                limit=limit,
            ):
                sys.stdout.write(dumps(document) + "\n")
        _record_investigation(runtime, AuditAction.AUDIT_LOG_SEARCH, "cli:audit-search")


if __name__ == "__main__":
    main()
