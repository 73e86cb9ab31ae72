"""Issue 9's "two app processes on one Redis enforce one budget", through the real
application: two ``labvault serve`` processes on one SQLite file, one key file and one
Redis, and a scraper with a stolen FHIR token that alternates its reads between them. It
obtains the hourly budget in all (not twice it), then both processes refuse it.

The lock on excess is switched off here so that the refusals on both sides are the shared
counter's (429), not the revoked token's (401): what is shown is the budget itself."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import require_component
from helpers import CHEAP_HASHER
from labvault.appointments.models import Appointment, AppointmentStatus
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.results.clients import ServiceClientRegistry

REDIS_URL = os.environ.get("LABVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_PREFIX = "labvault:budget"
"""The prefix ``load_budget_store`` gives ``RedisBudgetStore``; keys then name the tenant,
which is this test's own (a random id): only its keys are deleted afterwards."""
BUDGET = 10
PATIENTS = 3 * BUDGET
ORGANIZATION = "Labo Deux Serveurs"
SITE = "Centre Deux Serveurs"
SETUP = SystemPrincipal("test:two-apps")
LABVAULT = str(Path(sys.executable).with_name("labvault"))


@dataclass
class Lab:
    tenant: uuid.UUID
    patients: list[uuid.UUID]
    client_id: uuid.UUID
    secret: str


def _build(runtime: Runtime) -> Lab:
    """One organization, one site, ``PATIENTS`` patients seen at the site in the last days
    (in the FHIR client's relationship window), and a FHIR client of the site."""
    now = utcnow()
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, ORGANIZATION)
        site = add_site(
            session,
            organization,
            name=SITE,
            address_line="3 rue des Lilas",
            postal_code="31000",
            city="Toulouse",
            opening_hours={},
            sampling_capacity_per_hour=12,
        )
        tenant, site_id = organization.id, site.id
    with transaction(runtime.tenant_sessions(tenant)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SETUP)
        people = list(synthetic_patients(PATIENTS, seed=9090))
        created = PatientRepository(session, keyring).register_many(people).created
        patients = [created[i] for i in range(PATIENTS)]
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
        registered, issued = ServiceClientRegistry(
            session, tenant, AuditTrail(session, SETUP), CHEAP_HASHER
        ).add(
            "Client FHIR",
            kind="fhir",
            sites=[SITE],
            scopes=["system/Patient.read"],
            with_secret=True,
        )
        assert issued is not None
        client_id, secret = registered.id, issued.secret.reveal()
    return Lab(tenant, patients, client_id, secret)


@pytest.fixture
def lab(runtime: Runtime) -> Iterator[Lab]:
    """The lab, with Redis answering; this tenant's counters (its own prefix: the tenant
    id is random) are deleted afterwards, and only them."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        require_component(f"Redis is not reachable at {REDIS_URL}: {type(exc).__name__}")
    built = _build(runtime)
    try:
        yield built
    finally:
        for key in client.scan_iter(f"{REDIS_PREFIX}:{built.tenant}:*"):
            client.delete(key)
        client.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str
    log: Path


def _start(settings: Settings, tmp_path: Path, name: str) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABVAULT_")}
    env |= {
        "PYTHONUNBUFFERED": "1",
        "LABVAULT_DATA_DIR": str(settings.data_dir),
        "LABVAULT_DATABASE_URL": settings.sqlalchemy_url,
        "LABVAULT_ADMIN_DATABASE_URL": settings.sqlalchemy_admin_url,
        "LABVAULT_ORGANIZATION": ORGANIZATION,
        "LABVAULT_GUARD_BUDGET_STORE": REDIS_URL,
        "LABVAULT_GUARD_BUDGETS": json.dumps({"service:fhir": [BUDGET, 3 * BUDGET, 10 * BUDGET]}),
        "LABVAULT_GUARD_LOCK_ON_BUDGET": "false",
    }
    port = _free_port()
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [LABVAULT, "serve", "--port", str(port)], stdout=out, stderr=out, env=env
        )
    return Server(process, f"http://127.0.0.1:{port}", log)


def _wait_ready(server: Server, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if httpx.get(f"{server.base}/api/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{server.base} did not start: {server.log.read_text()[-2000:]}")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def servers(settings: Settings, tmp_path: Path, lab: Lab) -> Iterator[list[Server]]:
    """Two application processes on the lab's database, key file and Redis."""
    started = [_start(settings, tmp_path, name) for name in ("app-a", "app-b")]
    try:
        deadline = time.monotonic() + 60
        for server in started:
            _wait_ready(server, deadline)
        yield started
    finally:
        for server in started:
            _stop(server)


def _got_identity(answer: httpx.Response) -> bool:
    return (
        answer.status_code == 200
        and answer.json().get("resourceType") == "Patient"
        and bool(answer.json().get("name"))
    )


def _throttled(answer: httpx.Response) -> bool:
    return answer.status_code == 429 and answer.json()["issue"][0]["code"] == "throttled"


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["sqlite"])
def test_two_app_processes_on_one_redis_enforce_one_budget(lab: Lab, servers: list[Server]) -> None:
    token = httpx.post(
        f"{servers[0].base}/fhir/R4/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": str(lab.client_id),
            "client_secret": lab.secret,
        },
        timeout=10,
    )
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}

    obtained: dict[int, set[uuid.UUID]] = {0: set(), 1: set()}
    refused_at: int | None = None
    after: dict[int, list[bool]] = {0: [], 1: []}
    with httpx.Client(headers=headers, timeout=10) as http:
        for number, patient in enumerate(lab.patients):
            side = number % 2  # the scraper alternates between the two processes
            answer = http.get(f"{servers[side].base}/fhir/R4/Patient/{patient}")
            if _got_identity(answer):
                obtained[side].add(patient)
            else:
                assert _throttled(answer), (answer.status_code, answer.text)
                refused_at = number if refused_at is None else refused_at
            if refused_at is not None:
                after[side].append(_throttled(answer))

    everything = obtained[0] | obtained[1]
    assert len(everything) <= BUDGET, "one budget for both processes, not one each"
    assert len(everything) == BUDGET, "a legitimate hour's worth is not refused"
    assert len(obtained[0]) == len(obtained[1]) == BUDGET // 2, "both processes served"
    assert refused_at == BUDGET
    assert after[0], "the refusal reached both processes"
    assert after[1], "the refusal reached both processes"
    assert all(after[0] + after[1]), "then both processes refuse"

    for server in servers:
        assert "Traceback" not in server.log.read_text(), server.log.read_text()[-2000:]

    # One counter in Redis for the principal, holding the budget's worth of patients.
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(f"{REDIS_PREFIX}:{lab.tenant}:*"))
        assert [key.decode() for key in keys] == [
            f"{REDIS_PREFIX}:{lab.tenant}:service:{lab.client_id}"
        ]
        assert client.zcard(keys[0]) == BUDGET
    finally:
        client.close()
