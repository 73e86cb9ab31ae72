"""Alert sinks: a signed webhook against a real loopback HTTP server, a JSON-lines file for a
SIEM, and the settings that choose them. Payloads name kinds and ids only."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.server
import json
import os
import socket
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.config import ConfigurationError, Settings, load_settings
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.security.alerts import Alert
from labvault.security.lockout import LockoutDeps, lock_principal
from labvault.security.models import AlertSeverity, SecurityAlert
from labvault.security.sinks import (
    PAYLOAD_TYPE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    JsonLinesAlertSink,
    WebhookAlertSink,
    alert_dispatcher,
    external_sinks,
    guard_sinks,
)

SECRET = b"un secret partage assez long pour HMAC"
TENANT = uuid.uuid4()
ACCOUNT = uuid.uuid4()
FINDING = uuid.uuid4()
ALERT = Alert(
    TENANT,
    "anomaly-volume",
    AlertSeverity.CRITICAL,
    Principal(PrincipalKind.STAFF, str(ACCOUNT), "receptionist"),
    "anomaly-finding",
    FINDING,
)


SCANNER = SystemPrincipal("test:sinks")


class Collect:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def raise_alert(self, alert: Alert) -> None:
        self.alerts.append(alert)


class Receiver:
    """A loopback HTTP server answering the statuses queued, then 200; keeps each request."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _sink(url: str, **kwargs: object) -> WebhookAlertSink:
    return WebhookAlertSink(url, Secret(SECRET), sleep=lambda _: None, **kwargs)  # type: ignore[arg-type]


def test_the_webhook_posts_a_signed_document_of_ids_and_kinds(receiver: Receiver) -> None:
    _sink(receiver.url).raise_alert(ALERT)
    [(headers, body)] = receiver.requests
    timestamp = headers[TIMESTAMP_HEADER]
    expected = hmac.new(SECRET, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], f"sha256={expected}")
    assert headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert uuid.UUID(document.pop("id"))
    assert document.pop("time").endswith("Z")
    assert document == {
        "type": PAYLOAD_TYPE,
        "tenant_id": str(TENANT),
        "kind": "anomaly-volume",
        "severity": "critical",
        "actor": {"kind": "staff", "id": str(ACCOUNT)},
        "target": {"type": "anomaly-finding", "id": str(FINDING)},
    }
    tampered = body.replace(b"critical", b"info")
    forged = hmac.new(SECRET, timestamp.encode() + b"." + tampered, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] != f"sha256={forged}"


def test_the_webhook_retries_outages_but_not_refusals(receiver: Receiver) -> None:
    receiver.statuses = [503, 429]
    assert _sink(receiver.url, retries=2).deliver({"kind": "x"}) is True
    assert len(receiver.requests) == 3
    receiver.requests.clear()
    receiver.statuses = [400]
    assert _sink(receiver.url, retries=2).deliver({"kind": "x"}) is False
    assert len(receiver.requests) == 1, "a 4xx is the receiver's answer: no retry"
    receiver.requests.clear()
    receiver.statuses = [500, 500, 500]
    _sink(receiver.url, retries=2).raise_alert(ALERT)  # gives up, logs, never raises
    assert len(receiver.requests) == 3


def test_an_unreachable_or_silent_receiver_does_not_raise() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts the connection, never answers: the timeout ends it
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        assert _sink(url, timeout=0.2, retries=0).deliver({"kind": "x"}) is False
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert _sink(f"http://127.0.0.1:{port}/", retries=1).deliver({"kind": "x"}) is False


@pytest.mark.parametrize(
    "url",
    [
        "http://siem.example.org/alerts",
        "ftp://127.0.0.1/alerts",
        "https://user:pass@siem.example.org/alerts",
        "not a url",
    ],
)
def test_the_webhook_is_https_except_on_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="LABVAULT_ALERT_WEBHOOK_URL"):
        _sink(url)


def test_https_and_loopback_addresses_are_accepted() -> None:
    for url in ("https://siem.example.org/a", "http://localhost:8080/a", "http://[::1]:9/a"):
        assert "secret=**********" in repr(_sink(url))


def test_json_lines_are_appended_to_an_owner_only_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "siem" / "alerts.jsonl"
    sink = JsonLinesAlertSink(path)
    sink.raise_alert(ALERT)
    sink.raise_alert(ALERT)
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2
    assert len(synced) == 2
    assert [json.loads(line)["kind"] for line in lines] == ["anomaly-volume"] * 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)
    sink.raise_alert(ALERT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "a loosened file is tightened again"


def test_a_json_lines_failure_is_logged_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    JsonLinesAlertSink(blocker / "alerts.jsonl").raise_alert(ALERT)


def test_settings_choose_the_sinks_and_refuse_an_incomplete_webhook(tmp_path: Path) -> None:
    base = {"data_dir": tmp_path / "var"}
    assert external_sinks(Settings(**base)) == []  # type: ignore[arg-type]
    chosen = external_sinks(
        Settings(
            **base,  # type: ignore[arg-type]
            alert_sinks="email, jsonl,webhook",
            alert_webhook_url="https://siem.example.org/a",
            alert_webhook_secret="s" * 32,  # type: ignore[arg-type]
        )
    )
    assert [type(s).__name__ for s in chosen] == ["JsonLinesAlertSink", "WebhookAlertSink"]
    jsonl = chosen[0]
    assert isinstance(jsonl, JsonLinesAlertSink)
    assert jsonl.path == (tmp_path / "var").resolve() / "alerts" / "alerts.jsonl"
    with pytest.raises(ConfigurationError, match="LABVAULT_ALERT_WEBHOOK_SECRET"):
        load_settings(**base, alert_sinks="webhook", alert_webhook_url="https://a.example/")
    with pytest.raises(ConfigurationError, match="unknown sink 'sms'"):
        load_settings(**base, alert_sinks="email,sms")
    with pytest.raises(ConfigurationError, match="https"):
        load_settings(
            **base,
            alert_sinks="webhook",
            alert_webhook_url="http://siem.example.org/",
            alert_webhook_secret="s" * 32,
        )


@pytest.fixture
def backend() -> str:
    """The sinks do not depend on the database; their transaction hooks run on SQLite."""
    return "sqlite"


def test_external_sinks_deliver_after_commit_and_never_for_a_rollback(runtime: Runtime) -> None:
    received = Collect()
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo Sinks").id
    sessions = runtime.tenant_sessions(tenant)
    alert = dataclasses.replace(ALERT, tenant_id=tenant)

    def failing_unit() -> None:
        with transaction(sessions) as session:
            dispatcher = alert_dispatcher(
                runtime.settings, session, AuditTrail(session, SCANNER), external=[received]
            )
            dispatcher.raise_alert(alert)
            assert received.alerts == [], "nothing leaves before the commit"
            raise RuntimeError("the transaction fails")

    with pytest.raises(RuntimeError):
        failing_unit()
    assert received.alerts == []
    with transaction(sessions) as session:
        dispatcher = alert_dispatcher(
            runtime.settings, session, AuditTrail(session, SCANNER), external=[received]
        )
        dispatcher.raise_alert(alert)
        assert received.alerts == []
    assert received.alerts == [alert]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(SecurityAlert)) == 1


def test_the_guard_s_lock_sends_its_alert_to_the_json_lines_sink(
    settings: Settings, tmp_path: Path
) -> None:
    """The wiring B1's lockout takes: ``LockoutDeps(extra_sinks=guard_sinks(...))``."""
    chosen = settings.model_copy(
        update={"alert_sinks": "jsonl", "alert_jsonl_path": tmp_path / "siem.jsonl"}
    )
    runtime = Runtime(chosen)
    try:
        with transaction(runtime.sessions) as session:
            tenant = create_organization(session, runtime.key_provider, "Labo Lock").id
        client = uuid.uuid4()
        deps = LockoutDeps.from_runtime(
            runtime, extra_sinks=guard_sinks(chosen, runtime.key_provider, runtime.mailer)
        )
        principal = Principal(PrincipalKind.SERVICE, f"service:{client}")
        lock_principal(deps, tenant, principal, "read-budget", "budget-exceeded")
    finally:
        runtime.close()
    [line] = (tmp_path / "siem.jsonl").read_text().splitlines()
    document = json.loads(line)
    assert (document["kind"], document["actor"]) == (
        "budget-exceeded",
        {"kind": "service", "id": f"service:{client}"},
    )
