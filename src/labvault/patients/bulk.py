"""Bulk registration of patients (CSV imports, synthetic seeding).

Validating, sealing and indexing a patient costs a few hundred microseconds of CPU;
storing it, a few dozen. So records are prepared in chunks, in worker processes when
asked, and stored by this process in batches, each batch in one transaction: a crash
never leaves a half-written patient and a failing batch writes nothing. Each worker
builds its own sealer from a :class:`~labvault.core.crypto.keyring.SealerFactory`, which
names where keys are, never the keys.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from labvault.core.crypto.keyring import Keyring, Sealer, SealerFactory
from labvault.core.db import transaction
from labvault.patients.ins import InsOid
from labvault.patients.schemas import PatientInput, describe_errors
from labvault.patients.services import PatientRepository, PreparedPatient, prepare_patients

DEFAULT_BATCH_SIZE = 2000
CHUNK_SIZE = 500
MAX_CHUNKS_IN_FLIGHT = 16  # 8,000 rows prepared ahead: a few MB, whatever the file size
MAX_FIELD_LENGTH = 1000


class BatchConflictError(RuntimeError):
    """Concurrent writers kept conflicting with one batch; that batch wrote nothing."""


@dataclass(frozen=True, slots=True)
class RowProblem:
    row: int  # as a spreadsheet numbers it: the header is row 1
    field: str
    reason: str


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    created: int = 0
    existing: int = 0
    rejected_rows: int = 0
    problems: list[RowProblem] = field(default_factory=list)


# (row number, the row's fields by column name, or why the row could not even be read)
Record = tuple[int, dict[str, str] | list[RowProblem]]
Outcome = tuple[int, PreparedPatient | list[RowProblem]]


def to_input(
    row_number: int, raw: dict[str, str], ins_oid: InsOid
) -> PatientInput | list[RowProblem]:
    """Validate one row given in the import columns (see ``importer.COLUMNS``)."""
    too_long = [name for name, value in raw.items() if len(value) > MAX_FIELD_LENGTH]
    if too_long:
        return [RowProblem(row_number, name, "is too long") for name in too_long]
    data: dict[str, object] = dict(raw)
    data["address_line"] = data.pop("address", None)
    if (raw.get("nir") or "").strip():
        data["ins_oid"] = ins_oid
    try:
        return PatientInput.model_validate(data)
    except ValidationError as exc:
        return [RowProblem(row_number, name, reason) for name, reason in describe_errors(exc)]


def prepare_records(records: list[Record], sealer: Sealer, ins_oid: InsOid) -> list[Outcome]:
    """Validate, seal and index a chunk of records, keeping their order."""
    checked: list[tuple[int, PatientInput | list[RowProblem]]] = [
        (row, fields if isinstance(fields, list) else to_input(row, fields, ins_oid))
        for row, fields in records
    ]
    valid = [person for _, person in checked if isinstance(person, PatientInput)]
    prepared = iter(prepare_patients(valid, sealer))
    return [
        (row, next(prepared) if isinstance(person, PatientInput) else person)
        for row, person in checked
    ]


_worker_sealer: Sealer | None = None


def _start_worker(factory: SealerFactory) -> None:
    global _worker_sealer  # one sealer per worker process, built once
    _worker_sealer = factory.build()


def _prepare_in_worker(records: list[Record], ins_oid: InsOid) -> list[Outcome]:
    assert _worker_sealer is not None, "worker started without a sealer"
    return prepare_records(records, _worker_sealer, ins_oid)


def _prepared_chunks(
    records: Iterable[Record], sealer: SealerFactory, workers: int, ins_oid: InsOid
) -> Iterator[list[Outcome]]:
    source = iter(records)
    chunks = iter(lambda: list(itertools.islice(source, CHUNK_SIZE)), [])
    # Built here in any case: a missing or exposed key fails now, with its own message,
    # rather than as a broken worker pool.
    local = sealer.build()
    if workers <= 0:
        for chunk in chunks:
            yield prepare_records(chunk, local, ins_oid)
        return
    # forkserver: workers start from a clean process, not from a copy of this one with its
    # database connections, threads and unwrapped keys.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(sealer,)
    ) as pool:
        pending: deque[Future[list[Outcome]]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(_prepare_in_worker, chunk, ins_oid))
                # Keep workers busy while this process stores a batch: with a shallow
                # queue they would sit idle during every commit.
                if len(pending) >= MAX_CHUNKS_IN_FLIGHT + workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def register_records(
    records: Iterable[Record],
    *,
    sessions: sessionmaker[Session],
    open_keyring: Callable[[Session], Keyring],
    sealer: SealerFactory,
    workers: int = 0,
    ins_oid: InsOid = InsOid.NIR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> ImportReport:
    """Register every valid record, report the others; ``on_batch`` gets rows stored."""
    report = ImportReport()
    batch: list[PreparedPatient] = []

    def store() -> None:
        # Duplicates are found by a read before the insert; a concurrent import of the same
        # people can slip in between. The unique NIR index refuses it, and one retry in a
        # new transaction then sees those patients as already present.
        for attempt in (1, 2):
            try:
                with transaction(sessions) as session:
                    repository = PatientRepository(session, open_keyring(session))
                    result = repository.store_prepared(batch)
                break
            except IntegrityError:
                if attempt == 2:
                    raise BatchConflictError(
                        "a batch conflicted twice with concurrent writes of the same patients; "
                        "nothing of that batch was written: run the same import again"
                    ) from None
        report.created += len(result.created)
        report.existing += len(result.existing)
        if on_batch is not None:
            on_batch(len(batch))
        batch.clear()

    for chunk in _prepared_chunks(records, sealer, workers, ins_oid):
        for _, outcome in chunk:
            report.rows += 1
            if isinstance(outcome, PreparedPatient):
                batch.append(outcome)
                if len(batch) >= batch_size:
                    store()
            else:
                report.rejected_rows += 1
                report.problems.extend(outcome)
    if batch:
        store()
    return report
