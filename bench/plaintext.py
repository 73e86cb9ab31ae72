"""A keyring that does no cryptography: the baseline the encrypted path is compared with.

BENCHMARK ONLY. :class:`PlaintextKeyring` stores personal fields and blind indexes in
clear text. It lives in ``bench/``, which is not part of the installed ``labvault``
package, and no setting, key provider name or entry point refers to it: it can never be
configured in production. Never import it from ``src/``.

It implements the :class:`~labvault.core.crypto.keyring.Keyring` Protocol so that the
real services (``import_patients``, ``PatientRepository``) run the very same code path,
minus the cryptography:

- data keys "seal" and "open" by returning the bytes unchanged; their ``data_keys`` rows
  are still inserted, with ``wrapped_key=b""`` (same number of rows and statements);
- the indexer returns the canonical (normalised) value as UTF-8 bytes instead of an
  HMAC-SHA256 of it, with the same normalisation functions as ``BlindIndexer``;
- no index keys are read or unwrapped, no data key is generated or wrapped.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from labvault.core.access.principals import Principal, SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.crypto.blind_index import canonical_name_birth_date
from labvault.core.crypto.envelope import FieldKey
from labvault.core.crypto.normalize import normalize_email, normalize_phone

PROVIDER_NAME = "plaintext-bench"


class PlaintextFieldKey:
    """A :class:`~labvault.core.crypto.envelope.FieldKey` twin whose seal is the identity."""

    __slots__ = ("_id",)

    def __init__(self, key_id: uuid.UUID) -> None:
        self._id = key_id

    @property
    def id(self) -> uuid.UUID:
        return self._id

    def seal(self, plaintext: bytes, table: str, column: str, row_id: uuid.UUID) -> bytes:
        return plaintext

    def open(self, blob: bytes, table: str, column: str, row_id: uuid.UUID) -> bytes:
        return bytes(blob)

    def seal_row(
        self, table: str, row_id: uuid.UUID, values: Mapping[str, bytes | None]
    ) -> dict[str, bytes | None]:
        return dict(values)

    def open_row(
        self, table: str, row_id: uuid.UUID, blobs: Mapping[str, bytes | None]
    ) -> dict[str, bytes | None]:
        return {c: None if b is None else bytes(b) for c, b in blobs.items()}


class PlaintextIndexer:
    """Canonical values as bytes: what ``BlindIndexer`` would feed to HMAC-SHA256."""

    __slots__ = ()

    def nir(self, compact_nir: str) -> bytes:
        return compact_nir.upper().encode()

    def email(self, address: str) -> bytes:
        return normalize_email(address).encode()

    def staff_email(self, address: str) -> bytes:
        return normalize_email(address).encode()

    def phone(self, number: str) -> bytes:
        return normalize_phone(number).encode()

    def name_birth_date(self, birth_name: str, first_name: str, birth_date: dt.date) -> bytes:
        return canonical_name_birth_date(birth_name, first_name, birth_date).encode()

    # One generation, never rotated: each lookup has a single candidate.

    @property
    def generation(self) -> int:
        return 1

    @property
    def generations(self) -> tuple[int, ...]:
        return (1,)

    def nir_candidates(self, compact_nir: str) -> tuple[bytes, ...]:
        return (self.nir(compact_nir),)

    def email_candidates(self, address: str) -> tuple[bytes, ...]:
        return (self.email(address),)

    def staff_email_candidates(self, address: str) -> tuple[bytes, ...]:
        return (self.staff_email(address),)

    def phone_candidates(self, number: str) -> tuple[bytes, ...]:
        return (self.phone(number),)

    def name_birth_date_candidates(
        self, birth_name: str, first_name: str, birth_date: dt.date
    ) -> tuple[bytes, ...]:
        return (self.name_birth_date(birth_name, first_name, birth_date),)


@dataclass(frozen=True, slots=True)
class PlaintextSealerSpec:
    """Builds a :class:`PlaintextKeyring` in an import worker, as ``TenantSealerSpec`` does."""

    tenant_id: uuid.UUID

    def build(self) -> PlaintextKeyring:
        return PlaintextKeyring(self.tenant_id, SystemPrincipal("bench:plaintext"))


class PlaintextKeyring:
    """The :class:`~labvault.core.crypto.keyring.Keyring` Protocol without cryptography."""

    def __init__(
        self, tenant_id: uuid.UUID, principal: Principal, session: Session | None = None
    ) -> None:
        self._tenant_id = tenant_id
        self._principal = principal
        self._indexer = PlaintextIndexer()
        self._audit = AuditTrail(session, principal) if session is not None else None

    def __repr__(self) -> str:
        return f"PlaintextKeyring(tenant={self._tenant_id}, principal={self._principal.id})"

    @property
    def tenant_id(self) -> uuid.UUID:
        return self._tenant_id

    @property
    def principal(self) -> Principal:
        return self._principal

    @property
    def audit(self) -> AuditTrail:
        """Audited like the real keyring: the baseline differs only by the cryptography."""
        if self._audit is None:
            raise TypeError("a worker's sealer has no session and records nothing")
        return self._audit

    @property
    def indexer(self) -> PlaintextIndexer:
        return self._indexer

    def new_data_keys(
        self, subject_type: str, subject_ids: Sequence[uuid.UUID]
    ) -> tuple[list[FieldKey], list[dict[str, Any]]]:
        keys: list[FieldKey] = [PlaintextFieldKey(uuid.uuid4()) for _ in subject_ids]
        rows = [
            {
                "id": key.id,
                "tenant_id": self._tenant_id,
                "subject_type": subject_type,
                "subject_id": subject_id,
                "wrapped_key": b"",
                "provider": PROVIDER_NAME,
            }
            for key, subject_id in zip(keys, subject_ids, strict=True)
        ]
        return keys, rows

    def open_data_keys(
        self, subject_type: str, subject_ids: Sequence[uuid.UUID], purpose: str
    ) -> dict[uuid.UUID, FieldKey]:
        """The baseline only measures writes; reads are compared against a plain SELECT."""
        raise NotImplementedError("the plaintext baseline does not read patients back")

    def visible(self, subject_type: str, subject_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        return list(subject_ids)
