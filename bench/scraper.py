"""The scraper (issue 9): how many patients a stolen staff session or service token obtains
through the real application before the exfiltration guard cuts it off.

    python -m bench.scraper [--budget 25] [--patients 75] [--backend sqlite --backend postgresql]

Per backend, on a fresh migrated database with a real key file (setup untimed): one
organization, one site, ``--patients`` synthetic patients (default: 3x the budget), each
with a past appointment at the site (in every relationship window), and an hourly read
budget of ``--budget`` distinct patients for receptionists and FHIR clients
(``LABVAULT_GUARD_BUDGETS``; a day 3x, 30 days 10x). Through ``create_app`` served
in-process by Starlette's TestClient (the whole middleware stack):

1. **staff session**: a receptionist of the site is invited and logs in through the API
   (invitation accepted, authenticator enrolled); the scraper holds that valid session
   cookie and walks ``GET /api/v1/patients/<id>`` over every patient, one after the other,
   until refused;
2. **service token**: a FHIR client of the site gets a token from
   ``POST /fhir/R4/auth/token`` and walks ``GET /fhir/R4/Patient/<id>`` the same way.

Each row says: the budget, the distinct patients whose identity it obtained, the requests it
made, the answer that stopped it, whether a ``read-budget-exceeded`` alert was raised, whether
the session or token stopped working (and the account was locked, or the client disabled),
and the time from its first request to the refusal. The baseline, in the same run, is the
same walk by a fresh principal with the guard uninstalled from the database: it obtains
every patient. Always exits 0.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.testclient import TestClient
from httpx import Response
from rich import box
from rich.table import Table
from sqlalchemy import select

from bench.common import (
    BACKENDS,
    console,
    exit_cleanly_on_sigterm,
    fresh_database,
    machine_table,
    verdict,
)
from labvault.accounts.invitations import StaffAccountService
from labvault.accounts.models import Account, AccountStatus
from labvault.app import create_app
from labvault.appointments.models import Appointment, AppointmentStatus
from labvault.core.access.decrypt import uninstall_guards
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.otp import totp_code
from labvault.core.crypto.passwords import DEFAULT_HASHER
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.results.clients import ServiceClientRegistry
from labvault.results.models import ServiceClient
from labvault.security.budgets import ALERT_KIND
from labvault.security.lockout import wait_for_deferred
from labvault.security.models import SecurityAlert
from labvault.staff.models import StaffRole

ORGANIZATION = "Bench scraper lab"
SITE = "Bench scraper site"
ORIGIN = "https://testserver"
PASSWORD = "une phrase de passe assez longue"
SETUP = SystemPrincipal("bench:scraper")
LINK = re.compile(r"/compte/invitation#(\S+)")


@dataclass
class World:
    runtime: Runtime
    tenant: uuid.UUID
    patients: list[uuid.UUID]


@dataclass
class Outcome:
    """One scraper's walk and what followed it."""

    principal: str
    guarded: bool
    obtained: set[uuid.UUID] = field(default_factory=set)
    requests: int = 0
    stopped_by: int | None = None
    """The status that stopped it; None: it walked every id."""
    seconds: float = 0.0
    alerted: bool = False
    revoked: bool = False
    locked: bool = False


def _settings(url: str, workdir: Path, key_file: Path, budget: int) -> Settings:
    limits = (budget, 3 * budget, 10 * budget)
    return Settings(
        database_url=url,
        data_dir=workdir / "var",
        key_provider=f"file:{key_file}",
        organization=ORGANIZATION,
        public_url=ORIGIN,
        mailer=f"file:{workdir / 'mail'}",
        log_level="error",  # access lines and the guard's own warnings would flood the terminal
        guard_budgets={"staff:receptionist": limits, "service:fhir": limits},
    )


def build_world(runtime: Runtime, count: int) -> World:
    now = utcnow()
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, ORGANIZATION)
        site = add_site(
            session,
            organization,
            name=SITE,
            address_line="1 rue du Banc",
            postal_code="75001",
            city="Paris",
            opening_hours={},
            sampling_capacity_per_hour=12,
        )
        tenant, site_id = organization.id, site.id
    with transaction(runtime.tenant_sessions(tenant)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SETUP)
        created = (
            PatientRepository(session, keyring)
            .register_many(list(synthetic_patients(count, seed=77)))
            .created
        )
        patients = [created[i] for i in range(count)]
        for number, patient in enumerate(patients):
            session.add(
                Appointment(
                    tenant_id=tenant,
                    patient_id=patient,
                    site_id=site_id,
                    starts_at=now - dt.timedelta(days=1 + number % 5, hours=number % 7),
                    status=AppointmentStatus.DONE.value,
                )
            )
    return World(runtime, tenant, patients)


# --- the two stolen credentials ------------------------------------------------------------


def _invitation_token(runtime: Runtime, email: str) -> str:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    for message in reversed(mailer.messages()):
        part = message.get_body(("plain",))
        found = LINK.search(str(part.get_content())) if part is not None else None
        if message["To"] == email and found:
            return found.group(1)
    raise SystemExit("setup: no invitation was mailed")


def staff_session(world: World, client: TestClient, email: str) -> tuple[uuid.UUID, dict[str, str]]:
    """A receptionist logged in through the API; its account id and request headers."""
    runtime = world.runtime
    with transaction(runtime.tenant_sessions(world.tenant)) as session:
        site_id = session.scalars(select(Appointment.site_id).limit(1)).one()
        account_id = (
            StaffAccountService(
                session,
                tenant_id=world.tenant,
                provider=runtime.key_provider,
                mailer=runtime.mailer,
                limiter=runtime.rate_limiter,
                settings=runtime.settings,
                hasher=DEFAULT_HASHER,  # invitations hash nothing; the login uses the app's
            )
            .invite_staff(SETUP, email, "Camille", "Banc", StaffRole.RECEPTIONIST, [site_id])
            .account_id
        )
    client.cookies.clear()
    step = client.post(
        "/api/v1/auth/invitation/accept",
        json={"token": _invitation_token(runtime, email), "password": PASSWORD},
    )
    if step.status_code != 200:
        raise SystemExit(f"setup: invitation {step.status_code} {step.text[:200]}")
    pending = {"X-CSRF-Token": step.json()["csrf_token"]}
    text = client.post("/api/v1/auth/enrolment/totp", headers=pending).json()["secret"]
    secret = Secret(base64.b32decode(text + "=" * (-len(text) % 8)))
    done = client.post(
        "/api/v1/auth/enrolment/totp/confirm", json={"code": totp_code(secret)}, headers=pending
    )
    if done.status_code != 200:
        raise SystemExit(f"setup: enrolment {done.status_code} {done.text[:200]}")
    return account_id, {"X-CSRF-Token": done.json()["csrf_token"], "Accept": "application/json"}


def service_token(world: World, client: TestClient, name: str) -> tuple[uuid.UUID, str]:
    """A FHIR client of the site and its bearer token."""
    with transaction(world.runtime.tenant_sessions(world.tenant)) as session:
        registered, issued = ServiceClientRegistry(
            session, world.tenant, AuditTrail(session, SETUP)
        ).add(name, kind="fhir", sites=[SITE], scopes=["system/Patient.read"], with_secret=True)
        assert issued is not None
        client_id, secret = registered.id, issued.secret.reveal()
    answer = client.post(
        "/fhir/R4/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": str(client_id),
            "client_secret": secret,
        },
    )
    if answer.status_code != 200:
        raise SystemExit(f"setup: token {answer.status_code} {answer.text[:200]}")
    return client_id, str(answer.json()["access_token"])


# --- the walk ---------------------------------------------------------------------------------


def walk(
    outcome: Outcome,
    ids: Sequence[uuid.UUID],
    read: Callable[[uuid.UUID], Response],
    obtained: Callable[[Response], bool],
) -> None:
    """Read ``ids`` one after the other until an answer yields no identity."""
    started = time.perf_counter()
    for patient in ids:
        outcome.requests += 1
        answer = read(patient)
        if obtained(answer):
            outcome.obtained.add(patient)
            continue
        outcome.stopped_by = answer.status_code
        break
    outcome.seconds = time.perf_counter() - started
    wait_for_deferred()


def _alerted(world: World, actor_id: str) -> bool:
    with world.runtime.tenant_sessions(world.tenant)() as session:
        kinds = session.scalars(
            select(SecurityAlert.kind).where(SecurityAlert.actor_id.in_([actor_id]))
        ).all()
    return ALERT_KIND in kinds


def staff_scraper(world: World, client: TestClient, email: str, *, guarded: bool) -> Outcome:
    account_id, headers = staff_session(world, client, email)
    outcome = Outcome("staff session", guarded)
    walk(
        outcome,
        world.patients,
        lambda p: client.get(f"/api/v1/patients/{p}", headers=headers),
        lambda a: a.status_code == 200 and bool(a.json().get("birth_name")),
    )
    outcome.revoked = client.get("/api/v1/auth/me").status_code == 401
    with world.runtime.tenant_sessions(world.tenant)() as session:
        account = session.get_one(Account, account_id)
        outcome.locked = account.status == AccountStatus.LOCKED.value
    outcome.alerted = _alerted(world, f"staff:{account_id}") or _alerted(world, str(account_id))
    return outcome


def service_scraper(world: World, client: TestClient, name: str, *, guarded: bool) -> Outcome:
    client_id, bearer = service_token(world, client, name)
    headers = {"Authorization": f"Bearer {bearer}"}
    outcome = Outcome("fhir token", guarded)

    def identity(answer: Response) -> bool:
        if answer.status_code != 200:
            return False
        body = answer.json()
        return body.get("resourceType") == "Patient" and bool(body.get("name"))

    walk(
        outcome,
        world.patients,
        lambda p: client.get(f"/fhir/R4/Patient/{p}", headers=headers),
        identity,
    )
    outcome.revoked = (
        client.get(f"/fhir/R4/Patient/{world.patients[0]}", headers=headers).status_code == 401
    )
    with world.runtime.tenant_sessions(world.tenant)() as session:
        outcome.locked = session.get_one(ServiceClient, client_id).disabled_at is not None
    outcome.alerted = _alerted(world, f"service:{client_id}")
    return outcome


def run_backend(backend: str, workdir: Path, budget: int, patients: int) -> list[Outcome]:
    key_file = workdir / f"key-{time.monotonic_ns()}"
    FileKeyProvider.create(key_file)
    with fresh_database(backend, workdir) as url:
        runtime = Runtime(_settings(url, workdir / backend, key_file, budget))
        try:
            world = build_world(runtime, patients)
            app = create_app(runtime.settings, runtime)  # installs the guard
            with TestClient(app, base_url=ORIGIN) as client:
                outcomes = [
                    staff_scraper(world, client, "scraper@example.org", guarded=True),
                    service_scraper(world, client, "Scraper", guarded=True),
                ]
                uninstall_guards(runtime.engine)  # the baseline: the same walks, unguarded
                outcomes += [
                    staff_scraper(world, client, "baseline@example.org", guarded=False),
                    service_scraper(world, client, "Baseline", guarded=False),
                ]
            return outcomes
        finally:
            runtime.close()


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--budget", type=int, default=25, help="hourly budget (patients)")
    parser.add_argument("--patients", type=int, help="patients in scope (default 3x budget)")
    parser.add_argument("--backend", choices=BACKENDS, action="append")
    args = parser.parse_args(argv)
    patients = args.patients or 3 * args.budget
    if args.budget < 1 or patients <= args.budget:
        parser.error("--budget >= 1 and --patients > --budget")
    backends = tuple(args.backend or BACKENDS)
    exit_cleanly_on_sigterm()
    console.print(machine_table(backends))
    table = Table(
        title=f"Scraper cut-off: hourly budget {args.budget}, {patients} patients in scope",
        box=box.SIMPLE_HEAD,
    )
    columns = (
        "backend",
        "scraper",
        "guard",
        "obtained",
        "requests",
        "stop",
        "alert",
        "revoked",
        "locked",
        "cut-off s",
        "target",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:3] else "right", no_wrap=True)
    with tempfile.TemporaryDirectory(prefix="labvault-bench-scraper-") as directory:
        for backend in backends:
            for outcome in run_backend(backend, Path(directory), args.budget, patients):
                got = len(outcome.obtained)
                if outcome.guarded:
                    ok = (
                        got <= args.budget
                        and outcome.stopped_by == 429
                        and outcome.alerted
                        and outcome.revoked
                        and outcome.locked
                    )
                else:
                    ok = got == patients  # the baseline: everything
                table.add_row(
                    backend,
                    outcome.principal,
                    "on" if outcome.guarded else "off",
                    str(got),
                    str(outcome.requests),
                    str(outcome.stopped_by or "-"),
                    _yes(outcome.alerted),
                    _yes(outcome.revoked),
                    _yes(outcome.locked),
                    f"{outcome.seconds:.2f}" if outcome.stopped_by else "-",
                    verdict(ok),
                )
    console.print(table)
    console.print(
        "target: guarded, obtained <= budget, stopped by the guard's 429, alert raised, "
        "session or token revoked, account locked or client disabled; guard off (the baseline, "
        "a fresh principal, same walk): every patient."
    )


if __name__ == "__main__":
    main()
