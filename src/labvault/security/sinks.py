"""Where security alerts go: the security page always, then the sinks the operator chose.

``LABVAULT_ALERT_SINKS`` is a comma list of:

- ``email``: every active security officer of the tenant (:class:`MailAlertSink`);
- ``webhook``: a JSON POST to ``LABVAULT_ALERT_WEBHOOK_URL`` (https, or http on loopback),
  signed with HMAC-SHA256 under ``LABVAULT_ALERT_WEBHOOK_SECRET`` over
  ``"<timestamp>.<body>"`` (headers ``X-Labvault-Timestamp``, ``X-Labvault-Signature:
  sha256=<hex>``), a short timeout and a few retries;
- ``jsonl``: one JSON object per line appended to a 0600 file, fsync'd, for a SIEM to tail.

Every payload names kinds and ids only (principal, tenant, alert target), never a personal
value (I5). A sink that cannot deliver logs it and returns: the alert is already on the
security page, which is the record. The webhook and JSON-lines sinks are wrapped in
:class:`AfterCommitAlertSink` by :func:`alert_dispatcher`: they deliver once the alert's
transaction commits (nothing for a rolled-back one), and a slow receiver never holds the
transaction's locks (SQLite's single writer).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.orm import Session

from labvault.core.access.decrypt import DecryptGuard
from labvault.core.access.principals import Principal
from labvault.core.audit.events import AuditTrail
from labvault.core.config import Settings, alert_sink_names, webhook_url_problem
from labvault.core.crypto.keyring import Keyring, TenantKeyring
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.logging import get_logger
from labvault.core.mail import Mailer
from labvault.security.alerts import (
    Alert,
    AlertDispatcher,
    AlertSink,
    DatabaseAlertSink,
    MailAlertSink,
)

__all__ = [
    "PAYLOAD_TYPE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "AfterCommitAlertSink",
    "AlertSink",
    "EmailAlertSink",
    "JsonLinesAlertSink",
    "WebhookAlertSink",
    "alert_dispatcher",
    "alert_document",
    "external_sinks",
    "guard_sinks",
    "keyring_factory",
    "sign",
]

_log = get_logger("labvault.security.sinks")

PAYLOAD_TYPE = "labvault.security-alert/1"
SIGNATURE_HEADER = "X-Labvault-Signature"
TIMESTAMP_HEADER = "X-Labvault-Timestamp"

EmailAlertSink = MailAlertSink
"""The security officers' mail (``labvault.security.alerts``), under the sink family's name."""


def alert_document(alert: Alert, *, at: dt.datetime | None = None) -> dict[str, Any]:
    """The alert as JSON: kinds and ids only. ``id`` is this delivery's own random id, for
    the receiver to drop a retried duplicate."""
    moment = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return {
        "type": PAYLOAD_TYPE,
        "id": str(uuid.uuid4()),
        "time": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "tenant_id": str(alert.tenant_id),
        "kind": alert.kind,
        "severity": alert.severity.value,
        "actor": {"kind": alert.actor.kind.value, "id": alert.actor.id},
        "target": (
            None
            if alert.target_type is None
            else {
                "type": alert.target_type,
                "id": None if alert.target_id is None else str(alert.target_id),
            }
        ),
    }


def _body(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, "<timestamp>.<body>"): the timestamp is
    signed too, so a receiver can refuse replays older than a few minutes."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookAlertSink:
    """POSTs each alert, signed; retries connection errors, 429 and 5xx with a short
    backoff, then logs and gives up (never raises for an outage)."""

    def __init__(
        self,
        url: str,
        secret: Secret[bytes],
        *,
        timeout: float = 3.0,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problem = webhook_url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        self._url = url
        self._secret = secret
        self._timeout = timeout
        self._retries = retries
        self._transport = transport
        self._sleep = sleep
        self._clock = clock

    def __repr__(self) -> str:
        return f"WebhookAlertSink(url={self._url!r}, secret=**********)"

    def raise_alert(self, alert: Alert) -> None:
        self.deliver(alert_document(alert))

    def deliver(self, document: dict[str, Any]) -> bool:
        """True once the receiver answered 2xx."""
        body = _body(document)
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret.reveal(), timestamp, body),
            "User-Agent": "labvault-alerts/1",
        }
        last = "no attempt"
        with httpx.Client(
            timeout=self._timeout, transport=self._transport, follow_redirects=False
        ) as client:
            for attempt in range(self._retries + 1):
                if attempt:
                    self._sleep(min(0.5 * 2 ** (attempt - 1), 4.0))
                try:
                    response = client.post(self._url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                    continue
                if 200 <= response.status_code < 300:
                    return True
                last = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    break  # the receiver refuses it: retrying will not help
        _log.error("alert.webhook-failed", kind=document.get("kind"), error=last)
        return False


class JsonLinesAlertSink:
    """Appends one line per alert to a file only its owner can read (0600, in a 0700
    directory), and fsyncs it: what a SIEM agent tails."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def raise_alert(self, alert: Alert) -> None:
        self.append(alert_document(alert))

    def append(self, document: dict[str, Any]) -> None:
        line = _body(document) + b"\n"
        try:
            with self._lock:
                self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    if os.fstat(fd).st_mode & 0o077:
                        os.fchmod(fd, 0o600)  # created by someone else, or loosened since
                    os.write(fd, line)  # one write of one line: O_APPEND keeps lines whole
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            _log.error("alert.jsonl-failed", kind=document.get("kind"), error=type(exc).__name__)


def external_sinks(settings: Settings) -> list[AlertSink]:
    """The webhook and JSON-lines sinks the settings name (built once per process)."""
    names = alert_sink_names(settings.alert_sinks)
    sinks: list[AlertSink] = []
    for name in names:
        if name == "webhook":
            assert settings.alert_webhook_url, "validated by Settings"
            assert settings.alert_webhook_secret, "validated by Settings"
            sinks.append(
                WebhookAlertSink(
                    settings.alert_webhook_url,
                    Secret(settings.alert_webhook_secret.get_secret_value().encode()),
                    timeout=settings.alert_webhook_timeout_seconds,
                    retries=settings.alert_webhook_retries,
                )
            )
        elif name == "jsonl":
            sinks.append(JsonLinesAlertSink(settings.resolved_alert_jsonl_path))
    return sinks


class AfterCommitAlertSink:
    """Holds alerts until ``session``'s transaction commits, then hands them to ``sinks``;
    a rollback drops them (the alert row is gone too)."""

    def __init__(self, session: Session, sinks: Sequence[AlertSink]) -> None:
        self._sinks = tuple(sinks)
        self._pending: list[Alert] = []
        event.listen(session, "after_commit", self._deliver)
        event.listen(session, "after_rollback", self._drop)

    def raise_alert(self, alert: Alert) -> None:
        self._pending.append(alert)

    def _deliver(self, _session: Session) -> None:
        pending, self._pending = self._pending, []
        for alert in pending:
            for sink in self._sinks:
                sink.raise_alert(alert)

    def _drop(self, _session: Session) -> None:
        self._pending.clear()


def alert_dispatcher(
    settings: Settings,
    session: Session,
    audit: AuditTrail,
    *,
    keyrings: Callable[[uuid.UUID, Principal], Keyring] | None = None,
    mailer: Mailer | None = None,
    external: Sequence[AlertSink] | None = None,
) -> AlertDispatcher:
    """The security page's record first (in ``session``, audited by ``audit``), then the
    officers' mail if ``email`` is chosen (needs ``keyrings`` and ``mailer``), then the
    external sinks (default: built from ``settings``)."""
    sinks: list[AlertSink] = [DatabaseAlertSink(session, audit)]
    if "email" in alert_sink_names(settings.alert_sinks) and mailer is not None:
        if keyrings is None:
            raise ValueError("the email sink needs a keyring factory to read officers' addresses")
        sinks.append(MailAlertSink(session, keyrings, mailer))
    outside = external_sinks(settings) if external is None else list(external)
    if outside:
        sinks.append(AfterCommitAlertSink(session, outside))
    return AlertDispatcher(sinks)


def guard_sinks(
    settings: Settings, provider: KeyProvider, mailer: Mailer
) -> Callable[[Session, AuditTrail], list[AlertSink]]:
    """The sinks after the record, for ``security.lockout.LockoutDeps.extra_sinks``: the
    officers' mail (if chosen) in the lock's transaction, the webhook and JSON lines after
    it commits. External sinks are built once here and shared."""
    names = alert_sink_names(settings.alert_sinks)
    outside = external_sinks(settings)

    def build(session: Session, _audit: AuditTrail) -> list[AlertSink]:
        sinks: list[AlertSink] = []
        if "email" in names:
            sinks.append(MailAlertSink(session, keyring_factory(session, provider), mailer))
        if outside:
            sinks.append(AfterCommitAlertSink(session, outside))
        return sinks

    return build


def keyring_factory(
    session: Session, provider: KeyProvider, guards: Sequence[DecryptGuard] = ()
) -> Callable[[uuid.UUID, Principal], Keyring]:
    """Keyrings in ``session`` for the mail sink (it opens the officers' staff records)."""

    def build(tenant_id: uuid.UUID, principal: Principal) -> Keyring:
        return TenantKeyring(session, provider, tenant_id, principal, guards)

    return build
