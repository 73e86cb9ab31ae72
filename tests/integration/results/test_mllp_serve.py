"""``labvault mllp serve`` as a real process, and a real MLLP client (python-hl7's) over
TCP: AA for a matched result (rows stored), AA for one queued, AR for an unknown sender
and for a malformed message, then a graceful stop on SIGTERM. Also: a non-loopback host is
refused without ``--allow-remote``."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hl7.client import MLLPClient  # type: ignore[import-untyped]
from results_intake_world import IntakeWorld, build_intake_world, oru
from sqlalchemy import select as sql_select
from typer.testing import CliRunner

from labvault.cli import CliError, app
from labvault.core.config import Settings
from labvault.core.runtime import Runtime
from labvault.results.models import ResultMessage, ResultReport

LABVAULT = str(Path(sys.executable).with_name("labvault"))


def ack_code(answer: bytes) -> str:
    text = answer.strip(b"\x0b\x1c\r").decode()
    match = re.search(r"MSA\|([A-Z]{2})\|", text)
    assert match is not None, "no MSA segment in the answer"
    return match.group(1)


def wait_for_port(process: subprocess.Popen[str], lines: queue.Queue[str]) -> int:
    """The port from the listener's "MLLP listening on host:port" line (read in a thread:
    select() on the pipe misses lines already buffered by the text reader)."""
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 30
    seen = ""
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen += line
        found = re.search(r"MLLP listening on [^:]+:(\d+)", line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"the listener did not start: {seen!r}")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_real_client_against_the_listener(
    runtime: Runtime, cli_env: Settings, backend: str
) -> None:
    world: IntakeWorld = build_intake_world(runtime)
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [LABVAULT, "mllp", "serve", "--organization", "Labo Alpha", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines: queue.Queue[str] = queue.Queue()
        port = wait_for_port(process, lines)
        with MLLPClient("127.0.0.1", port) as client:
            assert ack_code(client.send_message(oru(world.people["ins"]))) == "AA"
            queued = oru(world.people["traits"], control_id="MSG0002", birth_name="Nulpart")
            assert ack_code(client.send_message(queued)) == "AA"
            assert ack_code(client.send_message(oru(world.people["ins"]))) == "AA"  # duplicate
            pirate = oru(world.people["ins"], control_id="MSG0003", sending=("X", "Y"))
            assert ack_code(client.send_message(pirate)) == "AR"
            assert ack_code(client.send_message("MSH|^~\\&|A|B|C|D|x||ADT^A01|1|P|2.5\r")) == "AR"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        assert "Traceback" not in process.stderr.read()
        time.sleep(0.2)  # the reader thread drains the last lines
        out = "".join(lines.get_nowait() for _ in range(lines.qsize()))
        assert "1 attached, 1 queued, 1 duplicate(s), 1 refused" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with runtime.sessions() as session:
        statuses = sorted(session.scalars(sql_select(ResultMessage.status)))
        assert statuses == ["attached", "queued"]
        report = session.scalars(sql_select(ResultReport)).one()
        assert report.patient_id == world.patients["ins"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_remote_host_needs_allow_remote(cli_env: Settings, backend: str) -> None:
    result = CliRunner().invoke(
        app, ["mllp", "serve", "--organization", "Labo Alpha", "--host", "0.0.0.0"]
    )
    assert isinstance(result.exception, CliError)
    assert "no TLS" in str(result.exception)
