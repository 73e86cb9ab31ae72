"""The ``labvault`` command line (Typer + Rich)."""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

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

from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import ConfigurationError, Settings, load_settings
from labvault.core.contact import parse_email, parse_phone
from labvault.core.crypto.errors import CryptoError
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.models import IndexKeyRecord
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import describe_database_error, transaction
from labvault.core.migrate import is_up_to_date, upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.services import (
    InvalidOrganizationNameError,
    OrganizationNotFoundError,
    create_organization,
    get_organization,
)
from labvault.patients.bulk import BatchConflictError, register_records
from labvault.patients.importer import CsvFileError, import_patients, write_rejects
from labvault.patients.ins import InsOid
from labvault.patients.nir import Nir, NirError
from labvault.patients.services import PatientRecord, PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows

app = typer.Typer(
    help="labvault: patient platform for medical-analysis laboratories, encrypted by default.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
import_app = typer.Typer(help="Import data from files.", no_args_is_help=True)
patients_app = typer.Typer(help="Patients.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(import_app, name="import")
app.add_typer(patients_app, name="patients")

console = Console()
errors = Console(stderr=True)
PARALLEL_FROM_ROWS = 20_000
WORKERS_HELP = (
    "Worker processes that validate and encrypt (-1: for large jobs, one per core but one)."
)


class CliError(Exception):
    """Shown to the operator as is, with exit status 2."""


def main() -> None:
    try:
        app()
    except (
        BatchConflictError,
        CliError,
        ConfigurationError,
        CryptoError,
        CsvFileError,
        InvalidOrganizationNameError,
        OrganizationNotFoundError,
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
    runtime.key_provider  # noqa: B018 - fail now if the key file is missing or exposed
    upgrade(runtime.engine)
    return runtime


def _refuse_new_key_over_existing_data(settings: Settings) -> None:
    """A missing key file next to a database full of wrapped keys is a lost or misnamed key,
    not a fresh install: a new key would not open that data, and would mix two roots."""
    runtime = Runtime(settings)
    try:
        if not inspect(runtime.engine).has_table(IndexKeyRecord.__tablename__):
            return
        with runtime.sessions() as session:
            holds_keys = session.scalar(select(IndexKeyRecord.id).limit(1)) is not None
    finally:
        runtime.close()
    if holds_keys:
        raise CliError(
            f"the key file {settings.key_file} does not exist, but the database already holds "
            "keys wrapped under a root key: restore the key file from its backup, or point "
            "LABVAULT_KEY_PROVIDER at it; a new key would not open this data"
        )


def _progress(transfer: bool = False) -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
    columns.append(TransferSpeedColumn() if transfer else MofNCompleteColumn())
    columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, transient=False)


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
        with transaction(runtime.sessions) as session:
            if organization is not None:
                try:
                    get_organization(session, organization)
                    console.print(f"Organization {organization!r} already exists.")
                except OrganizationNotFoundError:
                    create_organization(session, runtime.key_provider, organization)
                    console.print(f"Created organization {organization!r}.")
    finally:
        runtime.close()
    console.print(f"labvault is initialised in {settings.resolved_data_dir}.")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations."""
    runtime = Runtime(load_settings())
    try:
        upgrade(runtime.engine)
    finally:
        runtime.close()
    console.print("The database schema is up to date.")


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
        runtime.key_provider  # noqa: B018 - refuse to start without a usable key
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
        tenant_id = get_organization(session, organization).id
        sealer = runtime.sealer_spec(session, tenant_id)
    principal = SystemPrincipal("cli:seed")
    rows = synthetic_patient_rows(count, seed=seed_value)
    with _progress() as progress:
        task = progress.add_task("Synthetic patients", total=count)
        report = register_records(
            ((number + 2, row) for number, row in enumerate(rows)),
            sessions=runtime.sessions,
            open_keyring=lambda session: TenantKeyring(
                session, runtime.key_provider, tenant_id, principal
            ),
            sealer=sealer,
            workers=_workers(workers, count),
            ins_oid=InsOid.TEST,
            on_batch=lambda stored: progress.advance(task, stored),
        )
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
    from labvault.demo import DEMO_ORGANIZATION, create_demo_organization, demo_exists

    settings = load_settings()
    runtime = _ensure_initialised(settings)
    try:
        with transaction(runtime.sessions) as session:
            fresh = not demo_exists(session)
            if fresh:
                create_demo_organization(session, runtime.key_provider)
        if fresh and patients:
            _seed_patients(runtime, patients, DEMO_ORGANIZATION, seed_value=2026)
            console.print(
                f"Demo organization {DEMO_ORGANIZATION!r} created with {patients} patients."
            )
        else:
            console.print(f"Demo organization {DEMO_ORGANIZATION!r} is ready.")
    finally:
        runtime.close()
    if serve_app:
        console.print(
            f"\n[bold green]labvault is running:[/] open http://{host}:{port}/ (Ctrl+C to stop)"
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
            tenant_id = get_organization(session, organization).id
            sealer = runtime.sealer_spec(session, tenant_id)
        estimated_rows = file.stat().st_size // 150
        with _progress(transfer=True) as progress:
            task = progress.add_task(f"Importing {file.name}", total=file.stat().st_size)
            report = import_patients(
                file,
                sessions=runtime.sessions,
                open_keyring=lambda session: TenantKeyring(
                    session, runtime.key_provider, tenant_id, principal
                ),
                sealer=sealer,
                workers=_workers(workers, estimated_rows),
                ins_oid=oids[oid],
                batch_size=batch_size,
                on_progress=lambda done: progress.advance(task, done),
            )
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
    with _runtime() as runtime, transaction(runtime.sessions) as session:
        tenant_id = get_organization(session, organization).id
        keyring = TenantKeyring(
            session, runtime.key_provider, tenant_id, SystemPrincipal("cli:patients-find")
        )
        found = search(PatientRepository(session, keyring))
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
            str(p.id), p.birth_name, p.used_name or "", p.first_names, p.birth_date.isoformat(),
            p.sex.value, nir, p.email or "", p.phone or "", address,
        )  # fmt: skip
    return table


if __name__ == "__main__":
    main()
