"""FHIR R4 read latency through the real ASGI app: p50/p95 per request, against baselines.

    python -m bench.fhir [--patients 100] [--requests 300] [--backend sqlite|postgresql]

Per backend, on a fresh migrated database with a real key file (setup untimed): one
organization, one site, ``--patients`` synthetic patients, one laboratory system registered
with a client secret and read scopes, and one ORU^R01 per patient (one order, five
observations) stored through ``StoredResultIntake``, as the MLLP listener does. Then, through
``create_app`` served in-process by Starlette's TestClient (the whole middleware stack, no
network), with a bearer token from ``POST /fhir/R4/auth/token``, ``--requests`` requests each
(after a warm-up), cycling over the patients, one after the other:

1. ``GET /fhir/R4/metadata``: baseline, the CapabilityStatement (no token, no database);
2. ``GET /fhir/R4/Patient/<unknown id>``: baseline, a bearer request that finds nothing
   (token lookup, scope, policy query; nothing decrypted);
3. ``GET /fhir/R4/Patient/<id>``;
4. ``POST /fhir/R4/Patient/_search`` with ``identifier=urn:oid:1.2.250.1.213.1.4.10|<NIR>``
   (search by INS, through the NIR blind index; a GET with an identifier is refused: the
   NIR would be in the URL);
5. ``GET /fhir/R4/DiagnosticReport/<id>``;
6. ``GET /fhir/R4/Observation/<id>``.

Every answer is checked (status 200, or 404 for the unknown id, and the expected
``resourceType``). Figures: p50/p95 in milliseconds and the p50 as a multiple of the
metadata p50 of the same run. Compare figures only between runs on the same machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from httpx import Response
from rich.table import Table
from sqlalchemy import select

from bench.common import (
    BACKENDS,
    Percentiles,
    console,
    create_bench_organization,
    exit_cleanly_on_sigterm,
    fresh_database,
    machine_table,
    percentiles,
)
from bench.results import APPLICATION, FACILITY, oru
from labvault.app import create_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.models import Organization
from labvault.organizations.services import add_site
from labvault.patients.ins import InsOid
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.results.clients import ServiceClientRegistry
from labvault.results.hl7 import decode_payload, parse_oru
from labvault.results.intake import StoredResultIntake
from labvault.results.models import ResultObservation, ResultReport

ORGANIZATION = "Bench lab"
ORIGIN = "https://bench.labvault.local"
SCOPES = (
    "system/Patient.read",
    "system/DiagnosticReport.read",
    "system/Observation.read",
    "system/Observation.write",
    "system/DiagnosticReport.write",
)
WARM_UP = 20


@dataclass(frozen=True, slots=True)
class World:
    client_id: uuid.UUID
    secret: str
    nirs: list[str]
    patients: list[uuid.UUID]
    reports: list[uuid.UUID]
    observations: list[uuid.UUID]


def _settings(url: str, workdir: Path, key_file: Path) -> Settings:
    return Settings(
        database_url=url,
        data_dir=workdir / "var",
        key_provider=f"file:{key_file}",
        organization=ORGANIZATION,
        public_url=ORIGIN,
        mailer=f"file:{workdir / 'mail'}",
        log_level="warning",  # one access line per request would flood the terminal
    )


def build_world(runtime: Runtime, people: Sequence[PatientInput]) -> World:
    """The organization, its patients, the laboratory system and one result per patient."""
    tenant = create_bench_organization(runtime, ORGANIZATION)
    with transaction(runtime.sessions) as session:
        organization = session.get(Organization, tenant)
        assert organization is not None
        add_site(
            session,
            organization,
            name="Bench site",
            address_line="1 rue du Banc",
            postal_code="75001",
            city="Paris",
            opening_hours={},
            sampling_capacity_per_hour=12,
        )
        keyring = TenantKeyring(
            session, runtime.key_provider, tenant, SystemPrincipal("bench:fhir")
        )
        registered = PatientRepository(session, keyring).register_many(list(people))
        client, issued = ServiceClientRegistry(session, tenant, keyring.audit).add(
            "SIL bench",
            kind="lis",
            hl7_application=APPLICATION,
            hl7_facility=FACILITY,
            sites=["Bench site"],
            scopes=SCOPES,
            with_secret=True,
        )
        assert issued is not None
        client_id, secret = client.id, issued.secret.reveal()
    patients = [registered.created[i] for i in range(len(people))]
    intake = StoredResultIntake(runtime.sessions, runtime.key_provider, tenant)
    for number, person in enumerate(people):
        intake.receive(
            parse_oru(decode_payload(oru(person, number, registered=True))), peer="local"
        )
    if intake.counters.attached != len(people):
        raise SystemExit(f"setup: {intake.counters} (every result should be attached)")
    with transaction(runtime.sessions) as session:
        reports = list(session.scalars(select(ResultReport.id).order_by(ResultReport.id)))
        observations = list(
            session.scalars(select(ResultObservation.id).where(ResultObservation.position == 1))
        )
    nirs = [p.nir.compact for p in people if p.nir is not None]
    if len(nirs) != len(people):
        raise SystemExit("setup: every synthetic patient should have a NIR")
    return World(client_id, secret, nirs, patients, reports, observations)


def token(client: TestClient, world: World) -> str:
    answer = client.post(
        "/fhir/R4/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": str(world.client_id),
            "client_secret": world.secret,
        },
    )
    if answer.status_code != 200:
        raise SystemExit(f"token: {answer.status_code} {answer.text}")
    return str(answer.json()["access_token"])


Request = Callable[[int], Response]


def timed(
    name: str, request: Request, count: int, *, status: int = 200, kind: str | None = None
) -> list[float]:
    """Latencies (ms) of ``count`` requests, after a warm-up; every answer checked."""
    samples: list[float] = []
    for number in range(-WARM_UP, count):
        started = time.perf_counter()
        answer = request(number)
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != status:
            raise SystemExit(f"{name}: {answer.status_code} {answer.text[:300]}")
        if kind is not None and answer.json().get("resourceType") != kind:
            raise SystemExit(f"{name}: not a {kind}")
        if number >= 0:
            samples.append(elapsed)
    return samples


def run_backend(
    backend: str, workdir: Path, people: Sequence[PatientInput], count: int
) -> dict[str, Percentiles]:
    key_file = workdir / f"key-{time.monotonic_ns()}"
    FileKeyProvider.create(key_file)
    with fresh_database(backend, workdir) as url:
        runtime = Runtime(_settings(url, workdir / backend, key_file))
        try:
            world = build_world(runtime, people)
            app = create_app(runtime.settings, runtime)
            with TestClient(app, base_url=ORIGIN) as client:
                bearer = {"Authorization": f"Bearer {token(client, world)}"}
                n = len(world.patients)
                oid = InsOid.TEST.value

                def get(path: str, **params: str) -> Response:
                    answer: Response = client.get(path, headers=bearer, params=params or None)
                    return answer

                paths: list[tuple[str, Request, int, str | None]] = [
                    (
                        "metadata (baseline)",
                        lambda i: client.get("/fhir/R4/metadata"),
                        200,
                        "CapabilityStatement",
                    ),
                    (
                        "Patient/<unknown> 404 (baseline)",
                        lambda i: get(f"/fhir/R4/Patient/{uuid.uuid4()}"),
                        404,
                        "OperationOutcome",
                    ),
                    (
                        "Patient/<id>",
                        lambda i: get(f"/fhir/R4/Patient/{world.patients[i % n]}"),
                        200,
                        "Patient",
                    ),
                    (
                        "POST Patient/_search (INS)",
                        lambda i: client.post(
                            "/fhir/R4/Patient/_search",
                            headers=bearer,
                            data={"identifier": f"urn:oid:{oid}|{world.nirs[i % n]}"},
                        ),
                        200,
                        "Bundle",
                    ),
                    (
                        "DiagnosticReport/<id>",
                        lambda i: get(f"/fhir/R4/DiagnosticReport/{world.reports[i % n]}"),
                        200,
                        "DiagnosticReport",
                    ),
                    (
                        "Observation/<id>",
                        lambda i: get(f"/fhir/R4/Observation/{world.observations[i % n]}"),
                        200,
                        "Observation",
                    ),
                ]
                found = client.post(
                    "/fhir/R4/Patient/_search",
                    headers=bearer,
                    data={"identifier": f"urn:oid:{oid}|{world.nirs[0]}"},
                ).json()
                if found.get("total") != 1:
                    raise SystemExit("setup: the search by INS should find the patient")
                return {
                    name: percentiles(timed(name, request, count, status=status, kind=kind))
                    for name, request, status, kind in paths
                }
        finally:
            runtime.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--backend", choices=BACKENDS, action="append")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.requests < 2:
        parser.error("--patients >= 1 and --requests >= 2")
    backends = tuple(args.backend or BACKENDS)
    exit_cleanly_on_sigterm()
    console.print(machine_table(backends))
    people = list(synthetic_patients(args.patients, seed=42))
    table = Table(
        title=f"FHIR read latency, {args.requests} requests each, {args.patients} patients"
    )
    for column in ("backend", "request", "p50 ms", "p95 ms", "p50 x metadata"):
        table.add_column(column, justify="left" if column in ("backend", "request") else "right")
    with tempfile.TemporaryDirectory(prefix="labvault-bench-fhir-") as directory:
        for backend in backends:
            figures = run_backend(backend, Path(directory), people, args.requests)
            floor = figures["metadata (baseline)"].p50
            for name, figure in figures.items():
                table.add_row(
                    backend,
                    name,
                    f"{figure.p50:.2f}",
                    f"{figure.p95:.2f}",
                    f"{figure.p50 / floor:.1f}x",
                )
    console.print(table)


if __name__ == "__main__":
    main()
