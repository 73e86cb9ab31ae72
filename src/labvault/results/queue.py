"""The matching queue: results no patient could be matched to with certainty.

A queued message is sealed under a data key of its own (subject ``result-message``). The
list shows only its reason and time (nothing is decrypted). Opening one unwraps its key
(audited, ``result:message:read``) for a biologist, a receptionist or a named system job.
Attaching it to a patient re-checks that the chosen record is in the caller's scope, writes
the result sealed under the patient's key (as an intake would) and destroys the message's
key; discarding destroys the key. Either way the sealed copy in ``result_messages`` becomes
unreadable and is cleared.

Staff see only the messages of the sending systems that serve one of their sites (the rest
is the same "unknown" as a handled message), and only what their role's policy grants: a
receptionist gets the claimed identity, not the orders (exam names, order numbers, values),
which need ``result`` read (biologists). Discarding crypto-shreds a result, so it names a
reason from :class:`DiscardReason` (kept in the audit event's purpose) and, for staff,
needs a recent step-up (``require_step_up``; a staff queue built without one refuses).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import ColumnElement, delete, or_, select
from sqlalchemy.orm import Session

from labvault.core.access.policies import Interaction
from labvault.core.access.principals import PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.crypto.keyring import DataKeyNotFoundError, Keyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import utcnow
from labvault.patients.scope import AccessDeniedError, AccessScope, SystemAccess
from labvault.patients.services import SUBJECT_TYPE as PATIENT_SUBJECT
from labvault.patients.services import PatientRepository
from labvault.results.incoming import IncomingResult, from_json
from labvault.results.intake import (
    MESSAGE_TARGET,
    OrderDigester,
    ResultWriter,
    UnattachableError,
)
from labvault.results.models import (
    MESSAGE_SUBJECT_TYPE,
    MessageStatus,
    ResultMessage,
    ServiceClient,
    ServiceClientSite,
)

__all__ = [
    "DiscardReason",
    "DiscardReasonError",
    "MatchingQueue",
    "QueueError",
    "QueueItem",
    "QueuedMessage",
]

QUEUE_PURPOSE: Final = "result-queue"
QUEUE_ROLES: Final = frozenset({"biologist", "receptionist"})


class DiscardReason(enum.StrEnum):
    """Why a queued message is discarded: a closed list, recorded in the audit event."""

    WRONG_LABORATORY = "wrong-laboratory"
    """The message is for another laboratory."""
    TEST_MESSAGE = "test-message"
    """A test or connection-check message of the sending system."""
    SENT_IN_ERROR = "sent-in-error"
    """Sent by mistake and cancelled by the laboratory."""
    DUPLICATE = "duplicate"
    """A copy of a result already attached to the right record."""


class QueueError(ValueError):
    """The message cannot be handled as asked (a clear French message, no value)."""


class DiscardReasonError(QueueError):
    """A discard without a reason from the closed list: nothing happens."""

    def __init__(self) -> None:
        super().__init__("Choisissez le motif pour lequel ce message est écarté.")


@dataclass(frozen=True, slots=True)
class QueueItem:
    """A queued message as listed: no decryption."""

    id: uuid.UUID
    reason: str
    received_at: dt.datetime
    client_id: uuid.UUID


@dataclass(frozen=True, slots=True, repr=False)
class QueuedMessage:
    """A queued message opened for a person to decide. ``shows_results`` is false when the
    caller's role may not read results: ``result.orders`` is then empty."""

    item: QueueItem
    result: IncomingResult
    shows_results: bool = True

    def __repr__(self) -> str:
        return f"QueuedMessage(id={self.item.id})"


class MatchingQueue:
    """The queue of one tenant, for the keyring's principal (see the module docstring).

    ``access`` is the principal's patient scope (a staff member's) or ``SystemAccess`` for a
    named system job; it decides which patients a message may be attached to.
    """

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        access: AccessScope | SystemAccess,
        *,
        orders: OrderDigester,
        require_step_up: Callable[[], None] | None = None,
    ) -> None:
        principal = keyring.principal
        allowed = principal.kind is PrincipalKind.SYSTEM or (
            principal.kind is PrincipalKind.STAFF and principal.role in QUEUE_ROLES
        )
        if not allowed:
            raise AccessDeniedError("the matching queue is for biologists and receptionists")
        self._session = session
        self._keyring = keyring
        self._access = access
        self._tenant_id = keyring.tenant_id
        self._require_step_up = require_step_up
        self._orders = orders

    def _visible(self) -> list[ColumnElement[bool]]:
        """Queued messages of the tenant; for staff, only those of the sending systems that
        serve one of their sites (a system job sees them all)."""
        clauses = [
            ResultMessage.tenant_id == self._tenant_id,
            ResultMessage.status == MessageStatus.QUEUED.value,
        ]
        if isinstance(self._access, AccessScope):
            sites = sorted(self._access.site_ids)
            clauses.append(
                or_(
                    ResultMessage.client_id.in_(
                        select(ServiceClientSite.client_id).where(
                            ServiceClientSite.tenant_id == self._tenant_id,
                            ServiceClientSite.site_id.in_(sites),
                        )
                    ),
                    ResultMessage.client_id.in_(
                        select(ServiceClient.id).where(
                            ServiceClient.tenant_id == self._tenant_id,
                            ServiceClient.default_site_id.in_(sites),
                        )
                    ),
                )
            )
        return clauses

    def _shows_results(self) -> bool:
        return not isinstance(self._access, AccessScope) or self._access.policy.allows(
            "result", Interaction.READ
        )

    def list(self) -> list[QueueItem]:
        return [
            QueueItem(m.id, m.queue_reason or "", m.received_at, m.client_id)
            for m in self._session.scalars(
                select(ResultMessage)
                .where(*self._visible())
                .order_by(ResultMessage.received_at, ResultMessage.id)
            )
        ]

    def _queued(self, message_id: uuid.UUID, *, lock: bool = False) -> ResultMessage | None:
        query = select(ResultMessage).where(ResultMessage.id == message_id, *self._visible())
        return self._session.scalars(query.with_for_update() if lock else query).one_or_none()

    def open(self, message_id: uuid.UUID) -> QueuedMessage | None:
        """The message as the caller's role may see it (a receptionist: the claimed identity,
        no orders), or ``None`` for an unknown, out-of-sites or already handled one."""
        opened = self._open(message_id)
        if opened is None or self._shows_results():
            return opened
        identity = dataclasses.replace(opened.result, orders=())
        return QueuedMessage(opened.item, identity, shows_results=False)

    def _open(self, message_id: uuid.UUID) -> QueuedMessage | None:
        """The whole message (for attaching it): audited as a read of the message."""
        message = self._queued(message_id)
        if message is None or message.content is None:
            return None
        try:
            key = self._keyring.open_data_keys(MESSAGE_SUBJECT_TYPE, [message.id], QUEUE_PURPOSE)[
                message.id
            ]
        except DataKeyNotFoundError:
            return None
        opened = key.open_row(ResultMessage.__tablename__, message.id, {"content": message.content})
        data = opened["content"]
        assert data is not None
        item = QueueItem(
            message.id, message.queue_reason or "", message.received_at, message.client_id
        )
        return QueuedMessage(item, from_json(data))

    def attach(self, message_id: uuid.UUID, patient_id: uuid.UUID) -> tuple[uuid.UUID, ...]:
        """Attach the message to ``patient_id``; the report ids. ``None``-like refusals
        raise :class:`QueueError` (unknown message, patient not in scope, order conflict)."""
        patients = PatientRepository(self._session, self._keyring, self._access)
        if not patients.exists(patient_id):
            raise QueueError("Dossier patient introuvable.")
        message = self._queued(message_id, lock=True)
        if message is None:
            raise QueueError("Message introuvable ou déjà traité.")
        opened = self._open(message_id)
        if opened is None:
            raise QueueError("Message introuvable ou déjà traité.")
        client = self._session.scalars(
            select(ServiceClient).where(
                ServiceClient.tenant_id == self._tenant_id,
                ServiceClient.id == message.client_id,
            )
        ).one()
        try:
            with self._session.begin_nested():
                reports = ResultWriter(
                    self._session, self._keyring, orders=self._orders, purpose=QUEUE_PURPOSE
                ).write(opened.result, client, patient_id)
        except UnattachableError as refused:
            raise QueueError(
                "Ce numéro de demande est déjà rattaché à un autre patient."
                if refused.reason.value == "order-of-another-patient"
                else "Dossier patient introuvable."
            ) from None
        self._close(message, MessageStatus.RESOLVED, patient_id)
        self._keyring.audit.record(
            AuditAction.RESULT_MESSAGE_ATTACH,
            tenant_id=self._tenant_id,
            target_type=PATIENT_SUBJECT,
            target_id=patient_id,
            purpose=QUEUE_PURPOSE,
        )
        return reports

    def discard(self, message_id: uuid.UUID, reason: str) -> None:
        """Discard a queued message for ``reason`` (a :class:`DiscardReason` value): its key
        is destroyed. Unknown message first (:class:`QueueError`), then the reason
        (:class:`DiscardReasonError`), then, for staff, the step-up; nothing is written
        before all three pass."""
        message = self._queued(message_id, lock=True)
        if message is None:
            raise QueueError("Message introuvable ou déjà traité.")
        try:
            why = DiscardReason(reason)
        except ValueError:
            raise DiscardReasonError from None
        if self._keyring.principal.kind is not PrincipalKind.SYSTEM:
            if self._require_step_up is None:
                raise AccessDeniedError("discarding needs a step-up check")
            self._require_step_up()
        self._close(message, MessageStatus.DISCARDED, None)
        self._keyring.audit.record(
            AuditAction.RESULT_MESSAGE_DISCARD,
            tenant_id=self._tenant_id,
            target_type=MESSAGE_TARGET,
            target_id=message.id,
            purpose=f"{QUEUE_PURPOSE}:{why.value}",
        )

    def _close(
        self, message: ResultMessage, status: MessageStatus, patient_id: uuid.UUID | None
    ) -> None:
        self._session.execute(
            delete(DataKeyRecord).where(
                DataKeyRecord.tenant_id == self._tenant_id,
                DataKeyRecord.subject_type == MESSAGE_SUBJECT_TYPE,
                DataKeyRecord.subject_id == message.id,
            )
        )
        message.status = status.value
        message.patient_id = patient_id
        message.content = None
        message.resolved_at = utcnow()
        message.resolved_by = self._keyring.principal.id
        self._session.flush()
