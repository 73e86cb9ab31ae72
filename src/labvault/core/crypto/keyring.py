"""Per-request (or per-job) access to one tenant's keys: the single decrypt choke point.

Data keys are created and unwrapped only here. Unwrapped keys live as long as the
keyring, which lives as long as one request or one job batch: never in a global cache.
Every keyring carries an :class:`~labvault.core.audit.events.AuditTrail` bound to its
session and principal: opening a subject's key records one event per subject, in the same
transaction, before anything is unwrapped (invariant I3).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.core.access.decrypt import (
    DecryptGuard,
    DecryptRequest,
    SubjectFilter,
    installed_guards,
    run_guards,
)
from labvault.core.access.principals import Principal
from labvault.core.audit.actions import read_action
from labvault.core.audit.events import AuditContext, AuditTrail
from labvault.core.crypto.blind_index import INDEX_KEY_BYTES, BlindIndexer, IndexKind
from labvault.core.crypto.envelope import DataKey, FieldKey
from labvault.core.crypto.errors import CryptoError, KeyProviderError
from labvault.core.crypto.models import DataKeyRecord, IndexKeyRecord
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.providers.config import KeyProviderConfig
from labvault.core.crypto.secret import Secret


def data_key_context(
    tenant_id: uuid.UUID, subject_type: str, subject_id: uuid.UUID, key_id: uuid.UUID
) -> str:
    """Binds a wrapped data key to its tenant and subject: moved to another row, it won't unwrap."""
    return f"labvault/v1|data_key|{tenant_id}|{subject_type}|{subject_id}|{key_id}"


def index_key_context(tenant_id: uuid.UUID, kind: IndexKind, generation: int) -> str:
    """Binds a wrapped index key to its tenant, kind and generation: a database writer cannot
    copy an old (possibly exposed) generation's blob into the new generation's row.

    Generation 1 keeps the context it always had, so existing keys keep unwrapping."""
    if generation < 1:
        raise ValueError("index key generations start at 1")
    base = f"labvault/v1|index_key|{tenant_id}|{kind.value}"
    return base if generation == 1 else f"{base}|g{generation}"


class DataKeyNotFoundError(KeyProviderError):
    """Data keys asked for are not on file: their subjects were erased (often by an erasure
    that committed after the caller's scope check) or belong to another tenant.

    Repositories turn it into their uniform "not found"; ``subject_ids`` names the missing
    subjects (random ids only), so a list can leave them out and go on."""

    def __init__(self, subject_type: str, subject_ids: Sequence[uuid.UUID]) -> None:
        super().__init__(
            f"{len(subject_ids)} {subject_type} data key(s) not found "
            "(erased subject or another tenant's)"
        )
        self.subject_type = subject_type
        self.subject_ids = tuple(subject_ids)


class IndexKeysChangedError(CryptoError):
    """The organization's index-key generations changed (``keys rotate-index`` started or
    completed) between loading the keys and writing blind indexes with them: nothing was
    written. Running the operation again uses the current keys (imports are idempotent)."""

    def __init__(self) -> None:
        super().__init__(
            "the organization's index keys changed during this operation (an index-key "
            "rotation started or completed); nothing of it was written: run it again"
        )


def require_index_generations(
    session: Session, tenant_id: uuid.UUID, generations: Iterable[int]
) -> None:
    """Refuse a write of blind indexes computed with ``generations`` unless they are exactly
    the generations the organization holds; call it in the writing transaction, after its
    first write.

    On PostgreSQL the index-key rows are locked FOR SHARE until the transaction ends, so
    ``IndexRotation.complete`` (whose DELETE of the old generation waits for the lock)
    cannot retire a generation under a writer that still uses it. SQLite serialises
    writers: after a first write, nothing commits between this check and the commit.
    Without it, a writer holding old keys would write digests no lookup finds and check
    duplicates (NIR) against the old digests only."""
    held = set(
        session.scalars(
            select(IndexKeyRecord.generation)
            .where(IndexKeyRecord.tenant_id == tenant_id)
            .with_for_update(read=True)
        )
    )
    if held != set(generations):
        raise IndexKeysChangedError


class Indexer(Protocol):
    """Writes take the newest generation's digest; lookups match every ``*_candidates``."""

    @property
    def generation(self) -> int: ...
    @property
    def generations(self) -> tuple[int, ...]: ...
    def nir(self, compact_nir: str) -> bytes: ...
    def email(self, address: str) -> bytes: ...
    def staff_email(self, address: str) -> bytes: ...
    def phone(self, number: str) -> bytes: ...
    def name_birth_date(self, birth_name: str, first_name: str, birth_date: dt.date) -> bytes: ...
    def nir_candidates(self, compact_nir: str) -> tuple[bytes, ...]: ...
    def email_candidates(self, address: str) -> tuple[bytes, ...]: ...
    def staff_email_candidates(self, address: str) -> tuple[bytes, ...]: ...
    def phone_candidates(self, number: str) -> tuple[bytes, ...]: ...
    def name_birth_date_candidates(
        self, birth_name: str, first_name: str, birth_date: dt.date
    ) -> tuple[bytes, ...]: ...


class Sealer(Protocol):
    """The write side of a keyring: new data keys and blind indexes. It decrypts nothing."""

    @property
    def tenant_id(self) -> uuid.UUID: ...

    @property
    def indexer(self) -> Indexer: ...

    def new_data_keys(
        self, subject_type: str, subject_ids: Sequence[uuid.UUID]
    ) -> tuple[list[FieldKey], list[dict[str, Any]]]: ...


class SealerFactory(Protocol):
    """A picklable recipe that builds a :class:`Sealer` inside a worker process."""

    def build(self) -> Sealer: ...


class Keyring(Sealer, Protocol):
    """What services need; :class:`TenantKeyring` is the real one."""

    @property
    def principal(self) -> Principal: ...

    @property
    def audit(self) -> AuditTrail: ...

    def open_data_keys(
        self, subject_type: str, subject_ids: Sequence[uuid.UUID], purpose: str
    ) -> dict[uuid.UUID, FieldKey]: ...

    def visible(self, subject_type: str, subject_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]: ...


def create_index_keys(
    session: Session, provider: KeyProvider, tenant_id: uuid.UUID, generation: int = 1
) -> None:
    """Give a tenant a generation of blind-index keys (one per kind), wrapped.

    Generation 1 when the tenant is created; the next one when ``keys rotate-index`` starts.
    """
    for kind in IndexKind:
        material = Secret(os.urandom(INDEX_KEY_BYTES))
        session.add(
            IndexKeyRecord(
                tenant_id=tenant_id,
                kind=kind.value,
                generation=generation,
                wrapped_key=provider.wrap(material, index_key_context(tenant_id, kind, generation)),
                provider=provider.name,
            )
        )


def _new_data_keys(
    provider: KeyProvider,
    tenant_id: uuid.UUID,
    subject_type: str,
    subject_ids: Sequence[uuid.UUID],
) -> tuple[list[FieldKey], list[dict[str, Any]]]:
    generated = [DataKey.generate() for _ in subject_ids]
    wrapped = provider.wrap_many(
        [
            (material, data_key_context(tenant_id, subject_type, subject_id, key.id))
            for (key, material), subject_id in zip(generated, subject_ids, strict=True)
        ]
    )
    rows = [
        {
            "id": key.id,
            "tenant_id": tenant_id,
            "subject_type": subject_type,
            "subject_id": subject_id,
            "wrapped_key": blob,
            "provider": provider.name,
        }
        for (key, _), subject_id, blob in zip(generated, subject_ids, wrapped, strict=True)
    ]
    return [key for key, _ in generated], rows


def _unwrap_index_keys(
    provider: KeyProvider, tenant_id: uuid.UUID, wrapped: Mapping[tuple[int, IndexKind], bytes]
) -> BlindIndexer:
    """Every generation held (two while a rotation runs), each with a key per kind."""
    generations = {generation for generation, _ in wrapped}
    if not generations or any(
        {kind for g, kind in wrapped if g == generation} != set(IndexKind)
        for generation in generations
    ):
        raise KeyProviderError("this organization's blind-index keys are missing")
    slots = list(wrapped)
    secrets = provider.unwrap_many(
        [(wrapped[slot], index_key_context(tenant_id, slot[1], slot[0])) for slot in slots]
    )
    by_generation: dict[int, dict[IndexKind, Secret[bytes]]] = {}
    for (generation, kind), secret in zip(slots, secrets, strict=True):
        by_generation.setdefault(generation, {})[kind] = secret
    return BlindIndexer.from_generations(by_generation)


@dataclass(frozen=True, slots=True)
class TenantSealer:
    """A :class:`Sealer` for bulk jobs, usable in a worker process (no session needed)."""

    provider: KeyProvider
    tenant_id: uuid.UUID
    indexer: BlindIndexer

    def __reduce__(self) -> NoReturn:
        raise TypeError("a sealer holds unwrapped keys; send a TenantSealerSpec instead")

    def new_data_keys(
        self, subject_type: str, subject_ids: Sequence[uuid.UUID]
    ) -> tuple[list[FieldKey], list[dict[str, Any]]]:
        return _new_data_keys(self.provider, self.tenant_id, subject_type, subject_ids)


@dataclass(frozen=True, slots=True)
class TenantSealerSpec:
    """How a worker builds its own :class:`TenantSealer`: where the keys are, not the keys.

    It carries the key provider's configuration and the tenant's *wrapped* index keys (kind,
    generation, blob); each worker unwraps them itself, so no key material crosses a
    process boundary.
    """

    key_provider: KeyProviderConfig
    tenant_id: uuid.UUID
    wrapped_index_keys: tuple[tuple[str, int, bytes], ...]

    def build(self) -> TenantSealer:
        from labvault.core.crypto.providers import load_key_provider

        provider = load_key_provider(self.key_provider)
        wrapped = {(gen, IndexKind(kind)): blob for kind, gen, blob in self.wrapped_index_keys}
        return TenantSealer(
            provider, self.tenant_id, _unwrap_index_keys(provider, self.tenant_id, wrapped)
        )


def wrapped_index_keys(
    session: Session, tenant_id: uuid.UUID
) -> dict[tuple[int, IndexKind], bytes]:
    """The tenant's wrapped index keys by (generation, kind): every generation still held."""
    rows = session.execute(
        select(IndexKeyRecord.generation, IndexKeyRecord.kind, IndexKeyRecord.wrapped_key).where(
            IndexKeyRecord.tenant_id == tenant_id
        )
    ).all()
    return {(generation, IndexKind(kind)): bytes(blob) for generation, kind, blob in rows}


def wrapped_index_key_rows(
    session: Session, tenant_id: uuid.UUID
) -> tuple[tuple[str, int, bytes], ...]:
    """``wrapped_index_keys`` as ``TenantSealerSpec`` ships it: (kind, generation, blob)."""
    return tuple(
        (kind.value, generation, blob)
        for (generation, kind), blob in wrapped_index_keys(session, tenant_id).items()
    )


class TenantKeyring:
    def __init__(
        self,
        session: Session,
        provider: KeyProvider,
        tenant_id: uuid.UUID,
        principal: Principal,
        guards: Iterable[DecryptGuard] | None = None,
        *,
        context: AuditContext | None = None,
    ) -> None:
        self._session = session
        self._provider = provider
        self._tenant_id = tenant_id
        self._principal = principal
        # None: the guards installed for this database (read budgets, honey records).
        self._guards = installed_guards(session, tenant_id) if guards is None else tuple(guards)
        self._audit = AuditTrail(session, principal, context)
        self._indexer: BlindIndexer | None = None
        # Unwrapped once per keyring (one request or one job batch): a second open of the
        # same subject is guarded and audited again but costs no second provider call.
        self._opened: dict[tuple[str, uuid.UUID], FieldKey] = {}

    def __repr__(self) -> str:
        return f"TenantKeyring(tenant={self._tenant_id}, principal={self._principal.id})"

    @property
    def tenant_id(self) -> uuid.UUID:
        return self._tenant_id

    @property
    def principal(self) -> Principal:
        return self._principal

    @property
    def audit(self) -> AuditTrail:
        """Records events in this keyring's transaction, as its principal."""
        return self._audit

    @property
    def indexer(self) -> BlindIndexer:
        if self._indexer is None:
            self._indexer = _unwrap_index_keys(
                self._provider, self._tenant_id, wrapped_index_keys(self._session, self._tenant_id)
            )
        return self._indexer

    def __reduce__(self) -> NoReturn:
        raise TypeError("a keyring holds unwrapped keys and cannot be pickled")

    def new_data_keys(
        self, subject_type: str, subject_ids: Sequence[uuid.UUID]
    ) -> tuple[list[FieldKey], list[dict[str, Any]]]:
        """Fresh data keys for ``subject_ids`` and the wrapped ``data_keys`` rows to insert."""
        return _new_data_keys(self._provider, self._tenant_id, subject_type, subject_ids)

    def visible(self, subject_type: str, subject_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """``subject_ids`` without those no list may show (honey records), in order. Lists
        call it before they decrypt; a read by id does not, so a honey id trips its guard."""
        hidden: set[uuid.UUID] = set()
        for guard in self._guards:
            if isinstance(guard, SubjectFilter):
                hidden |= guard.hidden(subject_type, subject_ids)
        return [subject for subject in subject_ids if subject not in hidden]

    def open_data_keys(
        self, subject_type: str, subject_ids: Sequence[uuid.UUID], purpose: str
    ) -> dict[uuid.UUID, FieldKey]:
        """Unwrap the data keys of ``subject_ids``, by subject id.

        Every guard sees exactly the subjects whose keys are unwrapped, first; if one raises,
        nothing is unwrapped. Then one audit event per subject is appended in this
        transaction; if that fails, nothing is unwrapped either. Keys are looked up by
        subject, never by a key id the caller supplies, and each is bound to its subject by
        the wrapping context.
        """
        wanted = tuple(dict.fromkeys(subject_ids))
        if not wanted:
            return {}
        action = read_action(subject_type)
        run_guards(
            self._guards,
            DecryptRequest(
                principal=self._principal,
                tenant_id=self._tenant_id,
                subject_type=subject_type,
                subject_ids=wanted,
                purpose=purpose,
            ),
        )
        self._audit.record_many(
            action,
            tenant_id=self._tenant_id,
            target_type=subject_type,
            target_ids=wanted,
            purpose=purpose,
        )
        unopened = [s for s in wanted if (subject_type, s) not in self._opened]
        if unopened:
            self._unwrap(subject_type, unopened)
        return {s: self._opened[(subject_type, s)] for s in wanted}

    def _unwrap(self, subject_type: str, subject_ids: Sequence[uuid.UUID]) -> None:
        """One provider call for every key of ``subject_ids``, kept for this keyring's life."""
        rows = self._session.execute(
            select(DataKeyRecord.subject_id, DataKeyRecord.id, DataKeyRecord.wrapped_key).where(
                DataKeyRecord.tenant_id == self._tenant_id,
                DataKeyRecord.subject_type == subject_type,
                DataKeyRecord.subject_id.in_(subject_ids),
            )
        ).all()
        found = {subject_id: (key_id, bytes(blob)) for subject_id, key_id, blob in rows}
        present = [subject for subject in subject_ids if subject in found]
        if present:
            # The keys found are kept even when some are missing: a caller that leaves the
            # missing subjects out and asks again costs no second provider call.
            secrets = self._provider.unwrap_many(
                [
                    (found[s][1], data_key_context(self._tenant_id, subject_type, s, found[s][0]))
                    for s in present
                ]
            )
            for s, secret in zip(present, secrets, strict=True):
                self._opened[(subject_type, s)] = DataKey(found[s][0], secret)
        missing = [subject for subject in subject_ids if subject not in found]
        if missing:
            raise DataKeyNotFoundError(subject_type, missing)
