"""MLLP listener for ORU^R01 lab results (issue 8): TCP in, ACK/NACK out, storage behind a seam.

Each connection is read into an ``MllpDecoder``; every complete block is decoded, parsed and
handed to a ``ResultIntake`` (run in a worker thread so a synchronous store never blocks the
event loop), then acknowledged on the same connection, in order:

- accepted or duplicate (same MSH-10 from the same sending application and facility): AA,
  so a sender that retries after a lost ACK is not stuck, and nothing is stored twice;
- ``Hl7Error`` from parsing or rejected by the intake: AR with an ERR segment, and the
  connection stays open for the next message;
- the intake failing unexpectedly (storage down): AE, the sender should retry later;
- broken framing (``MllpError``: junk outside a block, oversized block): an AR without
  control id when the socket still takes it, then the connection is closed.

Slow senders cannot hold the listener: once a block has started it must end within
``message_timeout`` (however the bytes trickle in), a connection idle between messages is
closed after ``idle_timeout``, and one peer address holds at most ``max_per_peer`` of the
``max_connections``. Which peer may speak for which sender is the intake's check: it gets
the peer as ``host:port`` (``[v6]:port``).

Logs carry only counts, the peer address and error codes/locations, never a value from a
message (invariant I5), not even its control id.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from dataclasses import dataclass
from typing import Any, Final, Protocol

from labvault.core.logging import get_logger
from labvault.results.hl7 import (
    MAX_MESSAGE_BYTES,
    AckCode,
    Hl7Error,
    Hl7ErrorCode,
    MllpDecoder,
    MllpError,
    OruMessage,
    ack,
    decode_payload,
    frame,
    nack,
    parse_oru,
    read_control_id,
)

__all__ = [
    "Identity",
    "IntakeOutcome",
    "IntakeStatus",
    "MemoryResultIntake",
    "MllpServer",
    "ResultIntake",
    "dedup_key",
]

_log = get_logger("labvault.results.mllp")

READ_CHUNK_BYTES: Final = 65_536
DEFAULT_MAX_CONNECTIONS: Final = 32
DEFAULT_IDLE_TIMEOUT: Final = 300.0
DEFAULT_MESSAGE_TIMEOUT: Final = 30.0
DEFAULT_MAX_PER_PEER: Final = 4
DEFAULT_STOP_GRACE: Final = 10.0


class IntakeStatus(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class IntakeOutcome:
    """What the intake did with a message; ``error`` is set exactly when it was rejected."""

    status: IntakeStatus
    error: Hl7Error | None = None

    def __post_init__(self) -> None:
        if (self.status is IntakeStatus.REJECTED) != (self.error is not None):
            raise ValueError("an intake outcome carries an error exactly when rejected")

    @classmethod
    def accepted(cls) -> IntakeOutcome:
        return cls(IntakeStatus.ACCEPTED)

    @classmethod
    def duplicate(cls) -> IntakeOutcome:
        return cls(IntakeStatus.DUPLICATE)

    @classmethod
    def rejected(cls, error: Hl7Error) -> IntakeOutcome:
        return cls(IntakeStatus.REJECTED, error)


class ResultIntake(Protocol):
    """Where parsed results go (the storage seam). Called from a worker thread.

    Must be idempotent on (MSH-3, MSH-4, MSH-10): a message already received answers
    ``duplicate`` and is not stored again. Raising anything but a rejection means "could
    not store now": the sender gets AE and retries.
    """

    def receive(self, message: OruMessage, *, peer: str) -> IntakeOutcome: ...


DedupKey = tuple[str, str, str]


def dedup_key(message: OruMessage) -> DedupKey:
    """The identity of a message for deduplication: sending application, facility, MSH-10."""
    header = message.header
    return (header.sending_application, header.sending_facility, header.control_id)


class MemoryResultIntake:
    """In-memory intake for tests and dry runs: keeps accepted messages, dedups by MSH-10."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: dict[DedupKey, OruMessage] = {}
        self.duplicates = 0

    def receive(self, message: OruMessage, *, peer: str) -> IntakeOutcome:
        key = dedup_key(message)
        with self._lock:
            if key in self._messages:
                self.duplicates += 1
                return IntakeOutcome.duplicate()
            self._messages[key] = message
            return IntakeOutcome.accepted()

    @property
    def messages(self) -> list[OruMessage]:
        with self._lock:
            return list(self._messages.values())


@dataclass(frozen=True, slots=True)
class Identity:
    """labvault's own MSH-3/MSH-4 in the acknowledgements it sends."""

    application: str = "LABVAULT"
    facility: str = "LABVAULT"


class _CloseConnectionError(Exception):
    """Raised inside a connection handler to end it (logged by the caller)."""


@dataclass
class _Connection:
    peer: str
    host: str
    writer: asyncio.StreamWriter
    busy: bool = False  # a message is being processed: let it finish on stop()
    messages: int = 0


class MllpServer:
    """Asyncio MLLP listener; ``start()``, then ``port``, then ``stop()`` (graceful)."""

    def __init__(
        self,
        intake: ResultIntake,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        identity: Identity | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_peer: int = DEFAULT_MAX_PER_PEER,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        message_timeout: float = DEFAULT_MESSAGE_TIMEOUT,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        if min(max_connections, max_per_peer, max_message_bytes) < 1 or (
            min(idle_timeout, message_timeout) <= 0
        ):
            raise ValueError(
                "max_connections, max_per_peer, idle_timeout, message_timeout and "
                "max_message_bytes must be > 0"
            )
        self._intake = intake
        self._host = host
        self._requested_port = port
        self._identity = identity or Identity()
        self._max_connections = max_connections
        self._max_per_peer = max_per_peer
        self._idle_timeout = idle_timeout
        self._message_timeout = message_timeout
        self._max_message_bytes = max_message_bytes
        self._stop_grace = stop_grace
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], _Connection] = {}
        self._stopping = False

    @property
    def port(self) -> int:
        """The bound port (the actual one when started with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the MLLP server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the MLLP server is already started")
        self._stopping = False
        self._server = await asyncio.start_server(
            self._handle, self._host, self._requested_port, limit=READ_CHUNK_BYTES
        )
        _log.info("mllp.listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        """Stop accepting, close idle connections, let messages in progress get their ACK."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        for task, connection in list(self._connections.items()):
            if not connection.busy:
                task.cancel()
        pending = list(self._connections)
        if pending:
            _done, late = await asyncio.wait(pending, timeout=self._stop_grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await server.wait_closed()
        _log.info("mllp.stopped", connections_closed=len(pending))

    async def __aenter__(self) -> MllpServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # --- Per connection -------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, peer = _peer(writer)
        task = asyncio.current_task()
        assert task is not None
        from_peer = sum(1 for c in self._connections.values() if c.host == host)
        if self._stopping or len(self._connections) >= self._max_connections:
            _log.warning("mllp.connection_refused", peer=peer, limit=self._max_connections)
            await _close(writer)
            return
        if from_peer >= self._max_per_peer:
            _log.warning("mllp.connection_refused", peer=peer, per_peer_limit=self._max_per_peer)
            await _close(writer)
            return
        connection = _Connection(peer, host, writer)
        self._connections[task] = connection
        _log.info("mllp.connection_opened", peer=peer, connections=len(self._connections))
        reason = "closed by peer"
        try:
            await self._serve(reader, connection)
        except _CloseConnectionError as closing:
            reason = str(closing)
        except asyncio.CancelledError:
            reason = "server stopping"
        except (ConnectionError, OSError) as error:
            reason = f"socket error ({type(error).__name__})"
        finally:
            del self._connections[task]
            await _close(writer)
            _log.info(
                "mllp.connection_closed", peer=peer, reason=reason, messages=connection.messages
            )

    async def _serve(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        decoder = MllpDecoder(self._max_message_bytes)
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # when the block being received must have ended
        while not self._stopping:
            idle_until = loop.time() + self._idle_timeout
            try:
                until = idle_until if deadline is None else min(idle_until, deadline)
                async with asyncio.timeout_at(until):
                    data = await reader.read(READ_CHUNK_BYTES)
            except TimeoutError:
                if deadline is not None:
                    raise _CloseConnectionError("message timeout") from None
                raise _CloseConnectionError("idle timeout") from None
            if not data:
                if not decoder.idle:
                    raise _CloseConnectionError("closed by peer inside a block")
                return
            try:
                payloads = decoder.feed(data)
            except MllpError as error:
                await self._framing_error(connection, error)
                raise _CloseConnectionError("framing error") from None
            for payload in payloads:
                connection.busy = True
                try:
                    answer = await self._answer(payload, connection.peer)
                    connection.messages += 1
                    connection.writer.write(frame(answer))
                    await connection.writer.drain()
                finally:
                    connection.busy = False
            if payloads or decoder.idle:
                deadline = None  # a block ended: the next one gets its own time
            if not decoder.idle and deadline is None:
                deadline = loop.time() + self._message_timeout

    async def _answer(self, payload: bytes, peer: str) -> str:
        """The ACK text for one MLLP payload (never raises for bad input)."""
        text: str | None = None
        try:
            text = decode_payload(payload)
            message = parse_oru(text)
        except Hl7Error as error:
            return self._reject(error, text, peer)
        try:
            outcome = await asyncio.to_thread(self._intake.receive, message, peer=peer)
        except Exception as error:  # storage down or a bug: the sender must retry
            _log.error("mllp.intake_failed", peer=peer, error_type=type(error).__name__)
            failure = Hl7Error(Hl7ErrorCode.INTERNAL, None, "the message to be stored; retry")
            return self._ack(message, "AE", failure)
        if outcome.status is IntakeStatus.REJECTED:
            assert outcome.error is not None
            return self._reject(outcome.error, text, peer, message)
        _log.info(
            "mllp.message_received",
            peer=peer,
            outcome=outcome.status.value,
            orders=len(message.orders),
            observations=sum(len(order.observations) for order in message.orders),
        )
        return self._ack(message, "AA")

    def _ack(self, message: OruMessage, code: AckCode, error: Hl7Error | None = None) -> str:
        header = message.header
        return ack(
            header.control_id,
            sending_application=self._identity.application,
            sending_facility=self._identity.facility,
            receiving_application=header.sending_application,
            receiving_facility=header.sending_facility,
            code=code,
            error=error,
            version=header.version,
        )

    def _reject(
        self, error: Hl7Error, text: str | None, peer: str, message: OruMessage | None = None
    ) -> str:
        _log.warning(
            "mllp.message_rejected",
            peer=peer,
            error_code=int(error.code),
            error_location=str(error.location) if error.location else None,
        )
        if message is not None:
            return self._ack(message, "AR", error)
        return nack(
            error,
            message_control_id=read_control_id(text) if text is not None else None,
            sending_application=self._identity.application,
            sending_facility=self._identity.facility,
        )

    async def _framing_error(self, connection: _Connection, error: MllpError) -> None:
        """Tell the sender why before closing, if the socket still takes it."""
        _log.warning("mllp.framing_error", peer=connection.peer, error=str(error))
        refusal = Hl7Error(Hl7ErrorCode.INTERNAL, None, f"valid MLLP framing ({error})")
        answer = nack(
            refusal,
            sending_application=self._identity.application,
            sending_facility=self._identity.facility,
        )
        with contextlib.suppress(ConnectionError, OSError):
            connection.writer.write(frame(answer))
            async with asyncio.timeout(1.0):
                await connection.writer.drain()


def _peer(writer: asyncio.StreamWriter) -> tuple[str, str]:
    """The peer's host (for the per-peer cap) and ``host:port`` (``[v6]:port``)."""
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return host, f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return "unknown", "unknown"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
