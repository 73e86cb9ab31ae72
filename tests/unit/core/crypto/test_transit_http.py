"""The Transit provider's HTTP behaviour where a real OpenBao cannot be made to misbehave:
an overloaded or silent server (a loopback HTTP server standing in for one), none at all.

What is checked: an AppRole login is never sent twice (a secret id limited in uses would be
burnt by the replay), and no error keeps an httpx exception (whose request carries the
X-Vault-Token header) in its chain.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.providers.transit import TransitKeyProvider, TransitOptions
from labvault.core.crypto.secret import Secret

TOKEN = "s.token-that-must-not-leak"
SECRET_ID = "secret-id-that-must-not-leak"
DEK = Secret(b"k" * 32)


class MisbehavingServer(ThreadingHTTPServer):
    """Answers every request with 503, or (``slow``) only after the client gave up."""

    daemon_threads = True

    def __init__(self, *, slow: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.slow = slow
        self.paths: list[str] = []

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: MisbehavingServer

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self) -> None:
        self.server.paths.append(self.path)
        if self.server.slow:
            time.sleep(0.5)
        body = b'{"errors": ["overloaded"]}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "slow": the client timed out and closed the connection, as intended.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(params=[False, True], ids=["5xx", "timeout"])
def misbehaving(request: pytest.FixtureRequest) -> Iterator[MisbehavingServer]:
    server = MisbehavingServer(slow=bool(request.param))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _approle(address: str, tmp_path: Path, **overrides: object) -> TransitKeyProvider:
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(SECRET_ID)
    options = TransitOptions(
        address=address,
        mount="transit",
        key="labvault",
        role_id="role",
        secret_id_file=str(secret_file),
        timeout_seconds=0.2,
        retries=3,
    )
    transport = overrides.pop("transport", None)
    assert isinstance(transport, httpx.BaseTransport | None)
    return TransitKeyProvider(options, transport=transport)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception reachable through ``__cause__`` and ``__context__``."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        pending += [current.__cause__, current.__context__]
    return seen


def _assert_clean(error: BaseException) -> None:
    assert error.__cause__ is None
    assert error.__context__ is None
    for linked in _chain(error):
        assert not isinstance(linked, httpx.HTTPError), type(linked)
    shown = "".join(traceback.format_exception(error))
    assert TOKEN not in shown
    assert SECRET_ID not in shown


def test_an_approle_login_is_sent_once_even_when_the_server_fails_or_is_silent(
    misbehaving: MisbehavingServer, tmp_path: Path
) -> None:
    provider = _approle(misbehaving.address, tmp_path)
    with pytest.raises(KeyProviderError, match="AppRole login") as caught:
        provider.wrap(DEK, "ctx")
    time.sleep(0.6 if misbehaving.slow else 0)  # let a replay, if any, reach the server
    assert misbehaving.paths == ["/v1/auth/approle/login"]
    _assert_clean(caught.value)


class CountingTransport(httpx.HTTPTransport):
    """The real HTTP transport, counting the attempts (to see retries, not to fake answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        return super().handle_request(request)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_login_that_could_not_connect_is_retried(tmp_path: Path) -> None:
    transport = CountingTransport()
    provider = _approle(f"http://127.0.0.1:{_closed_port()}", tmp_path, transport=transport)
    with pytest.raises(KeyProviderError, match="cannot reach the server after 4 attempts") as c:
        provider.wrap(DEK, "ctx")
    assert transport.attempts == 4  # nothing was sent: trying again spends nothing
    _assert_clean(c.value)


def test_no_error_keeps_the_httpx_exception_that_holds_the_token(
    misbehaving: MisbehavingServer,
) -> None:
    for address in (misbehaving.address, f"http://127.0.0.1:{_closed_port()}"):
        options = TransitOptions(
            address=address, mount="transit", key="labvault", timeout_seconds=0.2, retries=1
        )
        provider = TransitKeyProvider(options, token=Secret(TOKEN))
        for call in (provider.versions, lambda p=provider: p.wrap(DEK, "ctx")):
            with pytest.raises(KeyProviderError) as caught:
                call()
            _assert_clean(caught.value)
