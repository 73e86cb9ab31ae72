"""Recording events: what an event holds, how it is validated, and how it is hashed.

Events are appended by :class:`AuditTrail` in the caller's own transaction, so an access and
its record commit or roll back together. Every field is an id, a registered tag or a keyed
hash, checked against a narrow pattern on the way in: nothing personal fits (invariant I5).
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from typing import cast as type_cast

from sqlalchemy import ColumnElement, Table, Text, cast, func, insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from labvault.core.access.principals import Principal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent, to_micros
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import describe_database_error, transaction, utcnow
from labvault.core.logging import get_logger

_TABLE = type_cast(Table, AuditEvent.__table__)
_log = get_logger("labvault.audit")

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._@/+-]{0,127}")
"""Actor ids, roles, purposes, request ids: no spaces, no newlines, nothing free-form."""

CLIENT_ADDRESS_LABEL = "labvault/v1|audit|client-address"
EVENT_HEADER = "labvault-audit-event/1"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"
    ERROR = "error"


class AuditedRefusalError(Exception):
    """A refusal whose "denied" events must outlive the transaction it rolls back.

    Services attach the events with :meth:`AuditTrail.refusal` and raise; the unit of work
    (:func:`audited_transaction`) rolls back, then records them in a transaction of their
    own, so a refused attempt leaves a trace and nothing else.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.audit_rows: list[dict[str, Any]] = []


class AuditError(Exception):
    """An event that cannot be recorded as given (a bug in the caller, never user input)."""


class AuditUnavailableError(Exception):
    """The audit store refused an event: the access it would have recorded does not happen."""


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Where the access comes from: the request (or CLI run) and the client, hashed."""

    request_id: str | None = None
    client_hash: str | None = None


class ClientAddressHasher:
    """HMAC of a client's IP address under a key the provider derives and nothing stores.

    The address space is small (2^32 for IPv4), so a plain hash would be reversed by brute
    force; a keyed hash still lets an investigation link the events of one address.
    """

    def __init__(self, key: Secret[bytes]) -> None:
        self._key = key

    @classmethod
    def from_provider(cls, provider: KeyProvider) -> ClientAddressHasher:
        return cls(provider.derive_key(CLIENT_ADDRESS_LABEL))

    def __repr__(self) -> str:
        return "ClientAddressHasher(key=**********)"

    def __call__(self, address: str) -> str:
        try:
            canonical = ipaddress.ip_address(address.strip()).compressed
        except ValueError:
            canonical = "invalid"
        return hmac.digest(self._key.reveal(), canonical.encode(), "sha256")[:16].hex()


def _check_token(name: str, value: str | None) -> None:
    if value is not None and not TOKEN_PATTERN.fullmatch(value):
        raise AuditError(f"audit field {name} must be a short token (ids and tags only)")


class AuditTrail:
    """Appends events for one principal in one session's transaction.

    Each call executes its insert at once, so a failing audit store raises here, before the
    caller goes on to decrypt anything (fail closed).
    """

    def __init__(
        self,
        session: Session,
        principal: Principal,
        context: AuditContext | None = None,
        clock: Callable[[], Any] = utcnow,
    ) -> None:
        _check_token("actor id", principal.id)
        _check_token("actor role", principal.role)
        self._session = session
        self._principal = principal
        self._context = context or AuditContext()
        _check_token("request id", self._context.request_id)
        _check_token("client hash", self._context.client_hash)
        self._clock = clock

    @property
    def principal(self) -> Principal:
        return self._principal

    def record(
        self,
        action: AuditAction,
        *,
        tenant_id: uuid.UUID | None,
        target_type: str | None = None,
        target_id: uuid.UUID | None = None,
        purpose: str | None = None,
        outcome: Outcome = Outcome.SUCCESS,
    ) -> uuid.UUID:
        return self.record_many(
            action,
            tenant_id=tenant_id,
            target_type=target_type,
            target_ids=[target_id],
            purpose=purpose,
            outcome=outcome,
        )[0]

    def refusal(
        self,
        error: AuditedRefusalError,
        action: AuditAction,
        *,
        tenant_id: uuid.UUID | None,
        target_type: str | None = None,
        target_id: uuid.UUID | None = None,
        purpose: str | None = None,
    ) -> AuditedRefusalError:
        """Attach a "denied" event to ``error`` instead of writing it in this transaction,
        which the error will roll back: :func:`audited_transaction` writes it afterwards."""
        error.audit_rows.extend(
            self._rows(action, tenant_id, target_type, [target_id], purpose, Outcome.DENIED)
        )
        return error

    def _rows(
        self,
        action: AuditAction,
        tenant_id: uuid.UUID | None,
        target_type: str | None,
        target_ids: Sequence[uuid.UUID | None],
        purpose: str | None,
        outcome: Outcome,
    ) -> list[dict[str, Any]]:
        if not isinstance(action, AuditAction):
            raise AuditError(f"unregistered audit action {action!r}")
        _check_token("target type", target_type)
        _check_token("purpose", purpose)
        outcome = Outcome(outcome)
        occurred_us = to_micros(self._clock())
        principal, context = self._principal, self._context
        return [
            {
                "id": uuid.uuid4(),
                "occurred_us": occurred_us,
                "tenant_id": tenant_id,
                "actor_kind": principal.kind.value,
                "actor_id": principal.id,
                "actor_role": principal.role,
                "actor_site_id": principal.site_id,
                "action": action.value,
                "target_type": target_type,
                "target_id": target_id,
                "purpose": purpose,
                "outcome": outcome.value,
                "request_id": context.request_id,
                "client_hash": context.client_hash,
            }
            for target_id in target_ids
        ]

    def record_many(
        self,
        action: AuditAction,
        *,
        tenant_id: uuid.UUID | None,
        target_type: str | None,
        target_ids: Sequence[uuid.UUID | None],
        purpose: str | None,
        outcome: Outcome = Outcome.SUCCESS,
    ) -> list[uuid.UUID]:
        """One event per target, all at the same instant; returns their ids."""
        rows = self._rows(action, tenant_id, target_type, target_ids, purpose, outcome)
        if rows:
            try:
                self._session.execute(insert(_TABLE), rows)
            except SQLAlchemyError as exc:
                raise AuditUnavailableError(
                    "the audit log could not record this access, so it was refused "
                    f"({describe_database_error(exc)})"
                ) from exc
        return [row["id"] for row in rows]


def _uuid_text(column: Any) -> ColumnElement[str]:
    # SQLite stores UUIDs as 32 hex digits and PostgreSQL prints them with dashes: the same
    # expression gives 32 hex digits on both, so that both hash the same bytes.
    return func.coalesce(func.replace(cast(column, Text), "-", ""), "")


def _text(column: Any) -> ColumnElement[str]:
    return func.coalesce(cast(column, Text), "")


CANONICAL_COLUMNS: tuple[ColumnElement[str], ...] = (
    _uuid_text(_TABLE.c.id),
    _text(_TABLE.c.occurred_us),
    _uuid_text(_TABLE.c.tenant_id),
    _text(_TABLE.c.actor_kind),
    _text(_TABLE.c.actor_id),
    _text(_TABLE.c.actor_role),
    _uuid_text(_TABLE.c.actor_site_id),
    _text(_TABLE.c.action),
    _text(_TABLE.c.target_type),
    _uuid_text(_TABLE.c.target_id),
    _text(_TABLE.c.purpose),
    _text(_TABLE.c.outcome),
    _text(_TABLE.c.request_id),
    _text(_TABLE.c.client_hash),
)
"""An event's hashed content, each field as text, in the order it is hashed."""

CANONICAL_FIELD_COUNT = len(CANONICAL_COLUMNS)
CANONICAL_FIELD_NAMES = (
    "id",
    "occurred_us",
    "tenant_id",
    "actor_kind",
    "actor_id",
    "actor_role",
    "actor_site_id",
    "action",
    "target_type",
    "target_id",
    "purpose",
    "outcome",
    "request_id",
    "client_hash",
)
_NEWLINES = CANONICAL_FIELD_COUNT


def encode_event(fields: Sequence[str]) -> bytes:
    """The bytes a leaf hashes: a header line, then one line per field, as text."""
    return (EVENT_HEADER + "\n" + "\n".join(fields)).encode()


def is_well_formed(encoded: bytes) -> bool:
    """False if a field holds a newline, which no recorded event can (fields are tokens).

    Such a row was written behind the application's back; it must not be allowed to shift
    text from one field to the next without changing the hashed bytes.
    """
    return encoded.count(b"\n") == _NEWLINES


@contextmanager
def audited_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work (:func:`labvault.core.db.transaction`) that keeps refusals' events.

    If the unit raises an :class:`AuditedRefusalError`, everything it did is rolled back, then
    the refusal's events are written in a new transaction and the refusal propagates. If
    even that write fails, the refusal still propagates (nothing was disclosed) and the
    failure is logged.
    """
    try:
        with transaction(factory) as session:
            yield session
    except AuditedRefusalError as refusal:
        if refusal.audit_rows:
            try:
                with transaction(factory) as session:
                    session.execute(insert(_TABLE), refusal.audit_rows)
            except SQLAlchemyError as exc:
                _log.error("audit.refusal-not-recorded", error=describe_database_error(exc))
        raise
