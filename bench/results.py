"""ORU^R01 ingestion through the real stored intake: messages/s, against baselines.

    python -m bench.results [--messages 400] [--backend sqlite|postgresql] [--repeat 3]

Per backend, on a fresh migrated database with a real key file, one organization, one
site, one registered laboratory system and ``--messages`` synthetic patients (setup
untimed), ``--messages`` ORU^R01 messages (one per patient: INS in PID-3, one order, five
observations; one in ten names a patient who is not registered, so it is queued) are
timed through:

1. **parse**: ``decode_payload`` + ``parse_oru`` only (the listener's CPU floor);
2. **memory**: parse + ``MemoryResultIntake`` (the in-memory twin: dedup in a dict);
3. **stored**: parse + ``StoredResultIntake.receive``: one transaction per message, sender
   lookup, dedup insert, INS matching through the blind index with the candidate's traits
   decrypted and compared, order/report/observations sealed under the patient's key (or
   the whole message under a key of its own), audit events;
4. **duplicates**: the same messages again through the stored intake (dedup path only).

Figures: best and median messages/s of ``--repeat`` runs (each stored run on a fresh
database), and the ratio stored/parse (how many times slower storing makes a message).
Messages are sent one after the other, as one MLLP connection does (a sender waits for
each ACK). Compare figures only between runs on the same machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.table import Table

from bench.common import (
    BACKENDS,
    console,
    create_bench_organization,
    exit_cleanly_on_sigterm,
    fresh_database,
    machine_table,
    open_runtime,
)
from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.db import transaction
from labvault.organizations.models import Organization
from labvault.organizations.services import add_site
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.results.clients import ServiceClientRegistry
from labvault.results.hl7 import decode_payload, parse_oru
from labvault.results.intake import StoredResultIntake
from labvault.results.mllp import MemoryResultIntake

APPLICATION, FACILITY = "SIL-BENCH", "BENCH"


def oru(person: PatientInput, number: int, *, registered: bool) -> bytes:
    nir = person.nir.compact if person.nir is not None else ""
    birth_name = person.birth_name if registered else f"{person.birth_name}x"
    first = person.first_names.split()[0]
    segments = [
        f"MSH|^~\\&|{APPLICATION}|{FACILITY}|LABVAULT|LV|20260115093000+0100||ORU^R01^ORU_R01|"
        f"B{number:08d}|P|2.5|||AL|NE||UNICODE UTF-8",
        f"PID|1||{nir}^^^INS-NIR&1.2.250.1.213.1.4.8&ISO^INS||"
        f"{birth_name}^{first}^{person.first_names}^^^^L||{person.birth_date:%Y%m%d}|"
        f"{person.sex.value}",
        f"ORC|RE|C{number}^SIL|D{number}^LABO||CM",
        f"OBR|1|C{number}^SIL|D{number}^LABO|BIO-STD^Bilan standard^L|||20260115074500|||||||||"
        "10003456789^Martin^Paul||||||20260115092500|||F",
        "OBX|1|NM|2345-7^Glucose^LN||5.42|mmol/L|3.9-5.5|H|||F",
        "OBX|2|NM|718-7^Hémoglobine^LN||13.7|g/dL|12.0-16.0|N|||F",
        "OBX|3|NM|2160-0^Créatinine^LN||71|umol/L|45-90|N|||F",
        "OBX|4|NM|6690-2^Leucocytes^LN||6.2|10*9/L|4.0-10.0|N|||F",
        "OBX|5|ST|5778-6^Couleur^LN||Jaune||||||F",
    ]
    return ("\r".join(segments) + "\r").encode()


def payloads(people: Sequence[PatientInput]) -> list[bytes]:
    return [oru(p, i, registered=i % 10 != 9) for i, p in enumerate(people)]


def rate(count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def parse_all(messages: Sequence[bytes]) -> None:
    for payload in messages:
        parse_oru(decode_payload(payload))


def memory_all(messages: Sequence[bytes]) -> None:
    intake = MemoryResultIntake()
    for payload in messages:
        intake.receive(parse_oru(decode_payload(payload)), peer="local")


def stored_run(
    backend: str, workdir: Path, people: Sequence[PatientInput], messages: Sequence[bytes]
) -> tuple[float, float, dict[str, int]]:
    """Messages/s stored, then as duplicates, on a fresh database; outcome counts."""
    key_file = workdir / f"key-{time.monotonic_ns()}"
    FileKeyProvider.create(key_file)
    with fresh_database(backend, workdir) as url:
        runtime = open_runtime(url, key_file=key_file)
        try:
            tenant = create_bench_organization(runtime)
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
                    session, runtime.key_provider, tenant, SystemPrincipal("bench:results")
                )
                PatientRepository(session, keyring).register_many(list(people))
                ServiceClientRegistry(session, tenant, keyring.audit).add(
                    "SIL bench",
                    kind="lis",
                    hl7_application=APPLICATION,
                    hl7_facility=FACILITY,
                    sites=["Bench site"],
                )
            intake = StoredResultIntake(runtime.sessions, runtime.key_provider, tenant)

            def store() -> None:
                for payload in messages:
                    intake.receive(parse_oru(decode_payload(payload)), peer="local")

            stored = rate(len(messages), store)
            duplicates = rate(len(messages), store)
            counters = intake.counters
            outcomes = {
                "attached": counters.attached,
                "queued": counters.queued,
                "duplicate": counters.duplicates,
                "rejected": counters.rejected,
            }
            if outcomes["rejected"] or outcomes["duplicate"] != len(messages):
                raise SystemExit(f"unexpected outcomes: {outcomes}")
            return stored, duplicates, outcomes
        finally:
            runtime.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--backend", choices=BACKENDS, action="append")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    backends = tuple(args.backend or BACKENDS)
    exit_cleanly_on_sigterm()
    console.print(machine_table(backends))
    people = list(synthetic_patients(args.messages, seed=42))
    messages = payloads(people)
    parse_rates = [rate(len(messages), lambda: parse_all(messages)) for _ in range(args.repeat)]
    memory_rates = [rate(len(messages), lambda: memory_all(messages)) for _ in range(args.repeat)]
    table = Table(title=f"ORU^R01 ingestion, {len(messages)} messages, {args.repeat} runs")
    for column in ("path", "best msg/s", "median msg/s", "best: x slower than parse"):
        table.add_column(column, justify="right" if column != "path" else "left")
    best_parse = max(parse_rates)

    def row(name: str, rates: Sequence[float]) -> None:
        best = max(rates)
        table.add_row(
            name, f"{best:,.0f}", f"{statistics.median(rates):,.0f}", f"{best_parse / best:.1f}x"
        )

    row("parse only", parse_rates)
    row("parse + memory intake", memory_rates)
    summary: list[str] = []
    with tempfile.TemporaryDirectory(prefix="labvault-bench-results-") as directory:
        workdir = Path(directory)
        for backend in backends:
            stored: list[float] = []
            duplicates: list[float] = []
            outcomes: dict[str, int] = {}
            for _ in range(args.repeat):
                s, d, outcomes = stored_run(backend, workdir, people, messages)
                stored.append(s)
                duplicates.append(d)
            row(f"stored ({backend})", stored)
            row(f"duplicates ({backend})", duplicates)
            summary.append(
                f"{backend}: {outcomes['attached']} attached, {outcomes['queued']} queued per run"
            )
    console.print(table)
    for line in summary:
        console.print(line, highlight=False)


if __name__ == "__main__":
    main()
