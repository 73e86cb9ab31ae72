"""The MLLP listener over real TCP on 127.0.0.1 (issue 8): ACKs, dedup, framing, limits."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog

from labvault.results.hl7 import (
    Hl7Error,
    Hl7ErrorCode,
    Location,
    MllpDecoder,
    OruMessage,
    frame,
)
from labvault.results.mllp import (
    IntakeOutcome,
    IntakeStatus,
    MemoryResultIntake,
    MllpServer,
    ResultIntake,
)

BIRTH_NAME = "TESTNOMZ"
FIRST_NAME = "Prenomtest"
PATIENT_ID = "IPP424242"
GLUCOSE = "5.42"
READ_TIMEOUT = 3.0


def oru(control_id: str = "MSG00042", *, message_type: str = "ORU^R01^ORU_R01") -> str:
    """A small valid ORU^R01 with synthetic identity and results."""
    segments = [
        "MSH|^~\\&|SIL|LABO-CENTRE|LABVAULT|LV|20260115093000+0100||"
        f"{message_type}|{control_id}|P|2.5|||AL|NE||UNICODE UTF-8",
        f"PID|1||{PATIENT_ID}^^^LABO&1.2.250.1.999.1&ISO^PI||{BIRTH_NAME}^{FIRST_NAME}^^^^^L"
        "||19870314|F",
        "OBR|1|CMD123^SIL|DOS456^LABO|BIO-STD^Bilan standard^L|||20260115074500",
        f"OBX|1|NM|2345-7^Glucose^LN||{GLUCOSE}|mmol/L|3.9-5.5|H|||F",
    ]
    return "\r".join(segments) + "\r"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


@asynccontextmanager
async def serving(intake: ResultIntake | None = None, **options: Any) -> Any:
    server = MllpServer(intake or MemoryResultIntake(), port=0, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Client:
    """A real TCP client speaking MLLP, reading ACKs with its own decoder."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = MllpDecoder()
        self._acks: list[str] = []

    @classmethod
    async def connect(cls, server: MllpServer) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def ack(self) -> str:
        async with asyncio.timeout(READ_TIMEOUT):
            while not self._acks:
                data = await self.reader.read(4096)
                assert data, "connection closed before an ACK"
                self._acks += [p.decode("utf-8") for p in self._decoder.feed(data)]
        return self._acks.pop(0)

    async def closed_by_server(self) -> bytes:
        """Read until EOF (fails on timeout); return whatever came before it."""
        received = b""
        async with asyncio.timeout(READ_TIMEOUT):
            while data := await self.reader.read(4096):
                received += data
        return received

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def segments(ack: str) -> dict[str, list[str]]:
    return {s.split("|", 1)[0]: s.split("|") for s in ack.split("\r") if s}


def assert_ack(ack: str, code: str, control_id: str) -> dict[str, list[str]]:
    parsed = segments(ack)
    assert parsed["MSH"][8] == "ACK^R01^ACK"
    assert parsed["MSA"][1:3] == [code, control_id]
    return parsed


# --- Acknowledgements and deduplication --------------------------------------------------


def test_a_valid_oru_is_stored_and_acknowledged_with_its_control_id() -> None:
    intake = MemoryResultIntake()

    async def scenario() -> None:
        async with serving(intake) as server:
            client = await Client.connect(server)
            await client.send(frame(oru("CTRL-1")))
            parsed = assert_ack(await client.ack(), "AA", "CTRL-1")
            assert "ERR" not in parsed
            # The ACK goes back to the sender: its MSH-5/6 are the message's MSH-3/4.
            assert parsed["MSH"][2:6] == ["LABVAULT", "LABVAULT", "SIL", "LABO-CENTRE"]
            await client.close()

    run(scenario)
    [message] = intake.messages
    assert message.header.control_id == "CTRL-1"
    assert str(message.orders[0].observations[0].value) == GLUCOSE


def test_the_same_message_twice_is_acknowledged_twice_and_stored_once() -> None:
    intake = MemoryResultIntake()

    async def scenario() -> None:
        async with serving(intake) as server:
            client = await Client.connect(server)
            for _ in range(2):
                await client.send(frame(oru("CTRL-DUP")))
                assert_ack(await client.ack(), "AA", "CTRL-DUP")
            await client.send(frame(oru("CTRL-OTHER")))
            assert_ack(await client.ack(), "AA", "CTRL-OTHER")
            await client.close()

    run(scenario)
    assert [m.header.control_id for m in intake.messages] == ["CTRL-DUP", "CTRL-OTHER"]
    assert intake.duplicates == 1


def test_a_control_id_is_only_a_duplicate_for_the_same_sender() -> None:
    intake = MemoryResultIntake()
    other_sender = oru("CTRL-SAME").replace("|SIL|", "|OTHER-SIL|", 1)

    async def scenario() -> None:
        async with serving(intake) as server:
            client = await Client.connect(server)
            await client.send(frame(oru("CTRL-SAME")) + frame(other_sender))
            assert_ack(await client.ack(), "AA", "CTRL-SAME")
            assert_ack(await client.ack(), "AA", "CTRL-SAME")
            await client.close()

    run(scenario)
    assert len(intake.messages) == 2
    assert intake.duplicates == 0


def test_a_malformed_message_gets_ar_with_err_and_the_connection_stays_usable() -> None:
    intake = MemoryResultIntake()
    no_pid = "\r".join(s for s in oru("CTRL-BAD").split("\r") if not s.startswith("PID"))

    async def scenario() -> None:
        async with serving(intake) as server:
            client = await Client.connect(server)
            await client.send(frame(no_pid))
            rejected = assert_ack(await client.ack(), "AR", "CTRL-BAD")
            assert rejected["ERR"][3].startswith(f"{int(Hl7ErrorCode.SEGMENT_SEQUENCE)}^")
            await client.send(frame(oru(message_type="ADT^A01", control_id="CTRL-ADT")))
            adt = assert_ack(await client.ack(), "AR", "CTRL-ADT")
            assert adt["ERR"][2] == "MSH^1^9"
            await client.send(frame(oru("CTRL-GOOD")))
            assert_ack(await client.ack(), "AA", "CTRL-GOOD")
            await client.close()

    run(scenario)
    assert [m.header.control_id for m in intake.messages] == ["CTRL-GOOD"]


def test_unreadable_bytes_in_a_block_get_ar_without_control_id() -> None:
    async def scenario() -> None:
        async with serving() as server:
            client = await Client.connect(server)
            await client.send(frame("not hl7 at all"))
            parsed = assert_ack(await client.ack(), "AR", "")
            assert "ERR" in parsed
            await client.close()

    run(scenario)


class RejectingIntake:
    def receive(self, message: OruMessage, *, peer: str) -> IntakeOutcome:
        return IntakeOutcome.rejected(
            Hl7Error(Hl7ErrorCode.REQUIRED_FIELD_MISSING, Location("PID", 1, 3), "an INS")
        )


class BrokenIntake:
    def receive(self, message: OruMessage, *, peer: str) -> IntakeOutcome:
        raise ConnectionRefusedError("database down")


def test_a_rejection_by_the_intake_is_an_ar_with_its_location() -> None:
    async def scenario() -> None:
        async with serving(RejectingIntake()) as server:
            client = await Client.connect(server)
            await client.send(frame(oru("CTRL-R")))
            parsed = assert_ack(await client.ack(), "AR", "CTRL-R")
            assert parsed["ERR"][2] == "PID^1^3"
            await client.close()

    run(scenario)


def test_an_intake_failure_is_an_ae_so_the_sender_retries() -> None:
    async def scenario() -> None:
        async with serving(BrokenIntake()) as server:
            client = await Client.connect(server)
            await client.send(frame(oru("CTRL-E")))
            parsed = assert_ack(await client.ack(), "AE", "CTRL-E")
            assert parsed["ERR"][3].startswith(f"{int(Hl7ErrorCode.INTERNAL)}^")
            await client.close()

    run(scenario)


class GatedIntake(MemoryResultIntake):
    """A blocking store that waits for the test to open the gate (2 s at most)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def receive(self, message: OruMessage, *, peer: str) -> IntakeOutcome:
        self.entered.set()
        self.gate.wait(timeout=2.0)
        return super().receive(message, peer=peer)


def test_the_intake_runs_off_the_event_loop() -> None:
    intake = GatedIntake()

    async def scenario() -> None:
        async with serving(intake) as server:
            slow, fast = await Client.connect(server), await Client.connect(server)
            started = time.monotonic()
            await slow.send(frame(oru("CTRL-SLOW")))
            while not intake.entered.is_set():
                await asyncio.sleep(0.01)
            # The store is blocked (2 s unless the gate opens); the loop still serves others.
            await fast.send(frame("junk"))
            assert_ack(await fast.ack(), "AR", "")
            assert time.monotonic() - started < 1.5
            intake.gate.set()
            assert_ack(await slow.ack(), "AA", "CTRL-SLOW")
            await slow.close()
            await fast.close()

    run(scenario)


def test_intake_outcome_carries_an_error_exactly_when_rejected() -> None:
    error = Hl7Error(Hl7ErrorCode.INTERNAL, None, "x")
    with pytest.raises(ValueError, match="exactly when rejected"):
        IntakeOutcome(IntakeStatus.ACCEPTED, error)
    with pytest.raises(ValueError, match="exactly when rejected"):
        IntakeOutcome(IntakeStatus.REJECTED)


# --- Framing ---------------------------------------------------------------------------


def test_two_messages_in_one_write_get_two_acks_in_order() -> None:
    intake = MemoryResultIntake()

    async def scenario() -> None:
        async with serving(intake) as server:
            client = await Client.connect(server)
            await client.send(frame(oru("CTRL-A")) + b"\r\n" + frame(oru("CTRL-B")))
            assert_ack(await client.ack(), "AA", "CTRL-A")
            assert_ack(await client.ack(), "AA", "CTRL-B")
            await client.close()

    run(scenario)
    assert len(intake.messages) == 2


def test_one_message_split_over_many_writes() -> None:
    intake = MemoryResultIntake()
    data = frame(oru("CTRL-SPLIT"))

    async def scenario() -> None:
        async with serving(intake) as server:
            client = await Client.connect(server)
            client.writer.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
            for start in range(0, len(data), 37):
                await client.send(data[start : start + 37])
                await asyncio.sleep(0.002)
            assert_ack(await client.ack(), "AA", "CTRL-SPLIT")
            await client.close()

    run(scenario)
    assert len(intake.messages) == 1


def test_junk_outside_a_block_closes_the_connection() -> None:
    intake = MemoryResultIntake()

    async def scenario() -> None:
        async with serving(intake) as server:
            client = await Client.connect(server)
            await client.send(oru("CTRL-RAW").encode())  # no MLLP envelope
            received = await client.closed_by_server()
            # A best-effort NACK precedes the close.
            [answer] = MllpDecoder().feed(received)
            assert_ack(answer.decode(), "AR", "")
            await client.close()

    run(scenario)
    assert intake.messages == []


def test_an_oversized_block_closes_the_connection() -> None:
    intake = MemoryResultIntake()

    async def scenario() -> None:
        async with serving(intake, max_message_bytes=256) as server:
            client = await Client.connect(server)
            await client.send(frame(oru("CTRL-BIG")))  # larger than 256 bytes
            await client.closed_by_server()
            await client.close()
            # The server still serves other connections.
            other = await Client.connect(server)
            await other.send(frame("x" * 100))
            assert_ack(await other.ack(), "AR", "")
            await other.close()

    run(scenario)
    assert intake.messages == []


# --- Limits and lifecycle --------------------------------------------------------------


def test_an_idle_connection_is_closed() -> None:
    async def scenario() -> None:
        async with serving(idle_timeout=0.2) as server:
            client = await Client.connect(server)
            started = time.monotonic()
            assert await client.closed_by_server() == b""
            assert 0.15 < time.monotonic() - started < 2
            await client.close()

    run(scenario)


def test_connections_beyond_the_limit_are_refused() -> None:
    async def scenario() -> None:
        async with serving(max_connections=1) as server:
            first = await Client.connect(server)
            await first.send(frame(oru("CTRL-1")))
            assert_ack(await first.ack(), "AA", "CTRL-1")
            second = await Client.connect(server)
            assert await second.closed_by_server() == b""
            await second.close()
            await first.send(frame(oru("CTRL-2")))
            assert_ack(await first.ack(), "AA", "CTRL-2")
            await first.close()

    run(scenario)


def test_a_trickling_sender_is_cut_off_at_the_message_deadline() -> None:
    """A byte now and then restarts no timer: a started block must end in time."""

    async def scenario() -> None:
        async with serving(idle_timeout=30, message_timeout=0.3) as server:
            client = await Client.connect(server)

            async def trickle() -> None:
                with contextlib.suppress(ConnectionError, OSError):
                    for byte in frame(oru("SLOW-1")):
                        await client.send(bytes([byte]))
                        await asyncio.sleep(0.02)

            trickling = asyncio.create_task(trickle())
            assert await client.closed_by_server() == b""
            trickling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trickling
            assert server.connection_count == 0
            await client.close()

    run(scenario)


def test_each_message_gets_its_own_deadline() -> None:
    """Slow but steady senders are served: the deadline restarts with each block."""

    async def scenario() -> None:
        async with serving(message_timeout=0.5) as server:
            client = await Client.connect(server)
            for number in range(3):
                data = frame(oru(f"STEADY-{number}"))
                for part in (data[:40], data[40:80], data[80:]):
                    await client.send(part)
                    await asyncio.sleep(0.1)
                assert_ack(await client.ack(), "AA", f"STEADY-{number}")
            await client.close()

    run(scenario)


def test_one_peer_cannot_take_every_connection() -> None:
    async def scenario() -> None:
        async with serving(max_per_peer=2) as server:
            held = []
            for number in range(2):
                client = await Client.connect(server)
                await client.send(frame(oru(f"HOLD-{number}")))
                assert_ack(await client.ack(), "AA", f"HOLD-{number}")
                held.append(client)
            third = await Client.connect(server)
            assert await third.closed_by_server() == b""
            await third.close()
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, local_addr=("127.0.0.2", 0)
            )
            other = Client(reader, writer)
            await other.send(frame(oru("OTHER-1")))
            assert_ack(await other.ack(), "AA", "OTHER-1")
            for client in [*held, other]:
                await client.close()

    run(scenario)


def test_the_intake_gets_the_peer_address_and_port() -> None:
    peers: list[str] = []

    class Recording(MemoryResultIntake):
        def receive(self, message: OruMessage, *, peer: str) -> IntakeOutcome:
            peers.append(peer)
            return super().receive(message, peer=peer)

    async def scenario() -> None:
        async with serving(Recording()) as server:
            client = await Client.connect(server)
            await client.send(frame(oru("PEER-1")))
            assert_ack(await client.ack(), "AA", "PEER-1")
            port = client.writer.get_extra_info("sockname")[1]
            await client.close()
        assert peers == [f"127.0.0.1:{port}"]

    run(scenario)


def test_stop_closes_connected_clients_and_the_port() -> None:
    async def scenario() -> None:
        server = MllpServer(MemoryResultIntake(), port=0)
        await server.start()
        port = server.port
        assert port > 0
        client = await Client.connect(server)
        await client.send(frame(oru("CTRL-S")))
        assert_ack(await client.ack(), "AA", "CTRL-S")
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 1
        assert await client.closed_by_server() == b""
        await client.close()
        assert server.connection_count == 0
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(RuntimeError, match="not started"):
            _ = server.port
        await server.stop()  # idempotent

    run(scenario)


def test_stop_lets_a_message_in_progress_get_its_ack() -> None:
    intake = GatedIntake()

    async def scenario() -> None:
        server = MllpServer(intake, port=0)
        await server.start()
        client = await Client.connect(server)
        await client.send(frame(oru("CTRL-LATE")))
        while not intake.entered.is_set():
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.1)
        intake.gate.set()
        await stopping
        assert_ack(await client.ack(), "AA", "CTRL-LATE")
        assert await client.closed_by_server() == b""
        await client.close()

    run(scenario)
    assert len(intake.messages) == 1


# --- Logs --------------------------------------------------------------------------------


def _log_values(logs: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    for entry in logs:
        yield from (str(value) for value in entry.values())


def test_logs_carry_no_message_value_not_even_the_control_id() -> None:
    async def scenario() -> None:
        async with serving() as server:
            client = await Client.connect(server)
            await client.send(frame(oru("CTRL-SECRET")))
            await client.ack()
            bad = oru("CTRL-SECRET2").replace("|NM|", "|XX|")
            await client.send(frame(bad))
            assert_ack(await client.ack(), "AR", "CTRL-SECRET2")
            await client.send(oru("CTRL-SECRET3").encode())
            await client.closed_by_server()
            await client.close()

    with structlog.testing.capture_logs() as logs:
        run(scenario)
    events = [entry["event"] for entry in logs]
    assert "mllp.message_received" in events
    assert "mllp.message_rejected" in events
    assert "mllp.framing_error" in events
    rejected = next(e for e in logs if e["event"] == "mllp.message_rejected")
    assert rejected["error_code"] == int(Hl7ErrorCode.DATA_TYPE)
    assert rejected["error_location"] == "OBX-2"
    text = " ".join(_log_values(logs))
    for value in ("CTRL-SECRET", BIRTH_NAME, FIRST_NAME, PATIENT_ID, GLUCOSE, "19870314"):
        assert value not in text
