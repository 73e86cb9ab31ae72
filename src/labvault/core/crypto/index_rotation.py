"""Blind-index key rotation (``labvault keys rotate-index``), while the platform runs.

If an index key may have been exposed, its digests can be brute-forced (the NIR has only
~10^11 values), so the operator replaces every index key of the organization and every
blind index is recomputed:

1. ``start``: a new generation of index keys (one per kind), wrapped by the provider
   (``keys:index:rotate``). From then on every keyring holds both generations: writes use
   the new one, lookups match either (``BlindIndexer.*_candidates``).
2. Batches: rows whose ``index_generation`` is behind are decrypted by the package that
   owns them (one audited read per record, purpose ``keys:rotate-index``), re-indexed and
   written back only if nobody changed them meanwhile. Each batch is one transaction, so a
   crash loses at most a batch, and a rerun resumes where the rows say it stopped.
3. ``complete``: once no row is behind, the older generation's keys are deleted
   (``keys:index:complete``). A rerun then finds nothing to do.

Writers of blind indexes check, in their transaction, that the generations they computed
with are still exactly the organization's (``keyring.require_index_generations``, which
locks the index-key rows FOR SHARE on PostgreSQL) and refuse otherwise. ``complete``
deletes the old generation first (its DELETE waits for those writers), then counts the
rows behind again in the same transaction and rolls back if a writer left any.

No personal value leaves the owning packages: this module sees ids and counts only.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from labvault.accounts.services import AccountIndexes
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext
from labvault.core.crypto.blind_index import MAX_GENERATIONS
from labvault.core.crypto.keyring import Keyring, TenantKeyring, create_index_keys
from labvault.core.crypto.models import IndexKeyRecord
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.reindex import Reindex
from labvault.core.db import transaction
from labvault.patients.services import PatientRepository
from labvault.staff.services import StaffRepository

DEFAULT_BATCH_SIZE = 500
JOB_PRINCIPAL = "cli:keys-rotate-index"
ORGANIZATION_TARGET = "organization"
MAX_PASSES = 3
"""Sweeps over the rows per run: a row skipped because it was edited meanwhile by a
request still on the old generation is retried by the next sweep."""


class IndexRotationError(RuntimeError):
    """The rotation cannot proceed; the message says what the operator should do."""


class RotationRunningError(IndexRotationError):
    """A rotation is already running for this organization: resume it instead."""


class _RowsBehindError(Exception):
    """Rows still behind once the old generation was deleted: roll the deletion back."""


class Reindexable(Protocol):
    """What a package owning blind-indexed rows offers the job (see ``core.crypto.reindex``)."""

    def pending_reindex(self, *, after: uuid.UUID | None, limit: int) -> Sequence[uuid.UUID]: ...
    def count_pending_reindex(self) -> int: ...
    def plan_reindex(self, ids: Sequence[uuid.UUID], /) -> Sequence[Reindex]: ...
    def apply_reindex(self, plans: Sequence[Reindex], /) -> int: ...


def _patients(session: Session, keyring: Keyring) -> Reindexable:
    return PatientRepository(session, keyring)


def _staff(session: Session, keyring: Keyring) -> Reindexable:
    return StaffRepository(session, keyring)


def _accounts(session: Session, keyring: Keyring) -> Reindexable:
    return AccountIndexes(session, keyring)


OWNERS: tuple[tuple[str, Callable[[Session, Keyring], Reindexable]], ...] = (
    ("patients", _patients),
    ("staff_members", _staff),
    ("accounts", _accounts),
)


@dataclass(frozen=True, slots=True)
class IndexRotationReport:
    """What a run did, in counts (nothing personal, nothing secret)."""

    generation: int
    started: bool
    """This run created ``generation`` (else it resumed or found nothing to do)."""
    moved: int
    """Rows re-indexed by this run."""
    completed: bool
    """This run deleted the older generation's keys."""
    remaining: int
    """Rows still behind (edited concurrently on every sweep): rerun the command."""


@dataclass(frozen=True, slots=True)
class IndexRotation:
    """The rotation of one organization's index keys.

    ``sessions`` must be bound to the organization (``Runtime.tenant_sessions``).
    """

    sessions: sessionmaker[Session]
    provider: KeyProvider
    tenant_id: uuid.UUID
    context: AuditContext | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("the batch size must be at least 1")

    def _keyring(self, session: Session) -> TenantKeyring:
        principal = SystemPrincipal(JOB_PRINCIPAL)
        return TenantKeyring(
            session, self.provider, self.tenant_id, principal, context=self.context
        )

    def generations(self) -> list[int]:
        """The generations of index keys held, oldest first (two while a rotation runs)."""
        with transaction(self.sessions) as session:
            return _generations(session, self.tenant_id)

    def running(self) -> bool:
        return len(self.generations()) > 1

    def start(self) -> int:
        """Create the next generation of index keys; returns it.

        Raises :class:`RotationRunningError` while a rotation is running (two starting at
        once: the unique (tenant, kind, generation) constraint lets one only).
        """
        with transaction(self.sessions) as session:
            held = _generations(session, self.tenant_id)
            if not held:
                raise IndexRotationError("this organization has no blind-index keys")
            if len(held) >= MAX_GENERATIONS:
                raise RotationRunningError(
                    "an index-key rotation is already running for this organization: "
                    "resume it (rerun `labvault keys rotate-index`)"
                )
            generation = held[-1] + 1
            create_index_keys(session, self.provider, self.tenant_id, generation)
            try:
                session.flush()
            except IntegrityError:
                raise RotationRunningError(
                    "another index-key rotation started meanwhile: resume it"
                ) from None
            self._keyring(session).audit.record(
                AuditAction.KEYS_INDEX_ROTATE,
                tenant_id=self.tenant_id,
                target_type=ORGANIZATION_TARGET,
                target_id=self.tenant_id,
                purpose=f"index-generation:{generation}",
            )
        return generation

    def pending(self) -> int:
        """Rows of the organization whose indexes predate the newest generation."""
        with transaction(self.sessions) as session:
            keyring = self._keyring(session)
            return sum(owner(session, keyring).count_pending_reindex() for _, owner in OWNERS)

    def run_batches(
        self, *, max_batches: int | None = None, on_batch: Callable[[int], None] | None = None
    ) -> int:
        """Re-index rows behind the newest generation, a batch per transaction; rows moved.

        Sweeps the rows in id order (resuming a crashed run costs nothing: moved rows are
        no longer behind), then sweeps again for rows skipped because they were edited
        meanwhile, up to ``MAX_PASSES``. ``max_batches`` stops early (tests, operators who
        want to pace the job); ``on_batch`` gets each batch's count of rows moved.
        """
        moved = batches = 0
        for _ in range(MAX_PASSES):
            for _, owner in OWNERS:
                after: uuid.UUID | None = None
                while max_batches is None or batches < max_batches:
                    with transaction(self.sessions) as session:
                        rows = owner(session, self._keyring(session))
                        ids = rows.pending_reindex(after=after, limit=self.batch_size)
                        if not ids:
                            break
                        count = rows.apply_reindex(rows.plan_reindex(ids))
                    after, moved, batches = ids[-1], moved + count, batches + 1
                    if on_batch is not None:
                        on_batch(count)
            if (max_batches is not None and batches >= max_batches) or not self.pending():
                break
        return moved

    def complete(self) -> bool:
        """Delete the older generations' keys once no row needs them; whether it did.

        The DELETE comes first: on PostgreSQL it waits for every writer still holding the
        index-key rows FOR SHARE (``require_index_generations``); the rows behind are then
        counted again in this transaction, which rolls back if a writer left any (a resume
        moves them, then completes). On SQLite the DELETE takes the write lock: no writer
        commits between it and the count."""
        try:
            with transaction(self.sessions) as session:
                held = _generations(session, self.tenant_id)
                if len(held) < 2:
                    return False
                keyring = self._keyring(session)
                owners = [owner(session, keyring) for _, owner in OWNERS]
                if any(rows.count_pending_reindex() for rows in owners):
                    return False
                session.execute(
                    delete(IndexKeyRecord).where(
                        IndexKeyRecord.tenant_id == self.tenant_id,
                        IndexKeyRecord.generation < held[-1],
                    )
                )
                if any(rows.count_pending_reindex() for rows in owners):
                    raise _RowsBehindError
                keyring.audit.record(
                    AuditAction.KEYS_INDEX_COMPLETE,
                    tenant_id=self.tenant_id,
                    target_type=ORGANIZATION_TARGET,
                    target_id=self.tenant_id,
                    purpose=f"index-generation:{held[-1]}",
                )
        except _RowsBehindError:
            return False
        return True

    def resume(
        self,
        *,
        on_total: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> IndexRotationReport:
        """Finish what is left: re-index rows behind, then complete. Never starts a rotation.

        Idempotent: with nothing running and no row behind, it changes nothing and records
        nothing. Rows written after completion by a request still holding the old
        generation (its keyring was opened before the rotation started) are behind too: a
        resume moves them (recomputing needs the values and the newest key only).
        """
        generation = self.generations()[-1]
        if on_total is not None:
            on_total(self.pending())
        moved = self.run_batches(on_batch=on_batch)
        completed = self.complete()
        return IndexRotationReport(generation, False, moved, completed, self.pending())

    def run(
        self,
        *,
        on_total: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> IndexRotationReport:
        """Start a rotation, or resume the one running (after a crash); then finish it."""
        started = not self.running()
        if started:
            self.start()
        report = self.resume(on_total=on_total, on_batch=on_batch)
        return dataclasses.replace(report, started=started)


def _generations(session: Session, tenant_id: uuid.UUID) -> list[int]:
    return sorted(
        set(
            session.scalars(
                select(IndexKeyRecord.generation).where(IndexKeyRecord.tenant_id == tenant_id)
            )
        )
    )
