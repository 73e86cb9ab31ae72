"""Outgoing SMS: the ``SmsSender`` seam, the file outbox that is the default, a memory twin.

No SMS gateway is wired yet. ``LABVAULT_SMS_SENDER=none:`` sends no SMS (the production
default: reminders go by email only). ``file:`` appends each message as one JSON line to
``data_dir/sms/outbox.jsonl`` (``file:/path`` for another file), for development and the
demo; production refuses it, because such a file keeps phone numbers and appointments in
clear next to the database, for ever. Even there, the values a message marks as ``masked``
(the recipient's security phrase: a secret of the account, DESIGN I1) are replaced by
:data:`MASK` before the line is written. What goes into an SMS is bounded by invariant I5 at
the source: never a name, an exam or a NIR.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from labvault.core.config import SMS_OUTBOX_IN_PRODUCTION, sms_sender_problem
from labvault.core.logging import get_logger

__all__ = [
    "MASK",
    "MAX_SMS_LENGTH",
    "FileSmsSender",
    "MemorySmsSender",
    "OutgoingSms",
    "SmsError",
    "SmsSender",
    "load_sms_sender",
]

_log = get_logger("labvault.reminders.sms")

MAX_SMS_LENGTH = 640
"""Four concatenated segments: a reminder fits in three."""
MASK = "••••••"
"""What a kept copy shows instead of a masked value (a security phrase)."""
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_CATEGORY = re.compile(r"[a-z][a-z0-9_-]*(?::[a-z][a-z0-9_-]*)*")


class SmsError(Exception):
    """An SMS could not be handed over. The text names the transport and the cause, never the
    number or the text (I5), so it may be logged as is."""


@dataclass(frozen=True, kw_only=True)
class OutgoingSms:
    """One SMS to one number (E.164). ``category`` is a fixed token for logs, as for mail.
    ``masked``: values of ``text`` (the security phrase) that the gateway receives but that a
    sender keeping a copy (the file outbox) must replace by :data:`MASK`.

    Its repr hides the number and the text, so it cannot leak into a log or a traceback.
    """

    to: str
    text: str
    category: str
    masked: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Errors never quote the values: they may be personal (I5).
        if not isinstance(self.to, str) or not _E164.fullmatch(self.to):
            raise ValueError("SMS recipient must be a phone number in E.164 form (+33...)")
        if not isinstance(self.category, str) or not (
            len(self.category) <= 64 and _CATEGORY.fullmatch(self.category)
        ):
            raise ValueError("SMS category must be a short token such as 'appointment:reminder'")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("SMS text must not be empty")
        if len(self.text) > MAX_SMS_LENGTH:
            raise ValueError(f"SMS text must be at most {MAX_SMS_LENGTH} characters")
        if any(unicodedata.category(char) in {"Cc", "Cs"} and char != "\n" for char in self.text):
            raise ValueError("SMS text must not contain control characters")
        if not isinstance(self.masked, tuple) or not all(
            isinstance(value, str) and value.strip() for value in self.masked
        ):
            raise ValueError("SMS masked values must be a tuple of non-empty texts")

    def kept_text(self) -> str:
        """The text as a copy may keep it: every masked value replaced by :data:`MASK`,
        longest first (a phrase containing another is masked whole)."""
        text = self.text
        for value in sorted(self.masked, key=len, reverse=True):
            text = text.replace(value, MASK)
        return text

    def __repr__(self) -> str:
        return f"OutgoingSms(category={self.category!r})"


class SmsSender(Protocol):
    """Hands one SMS over for delivery, or raises SmsError."""

    def send(self, message: OutgoingSms) -> None: ...


class FileSmsSender:
    """Appends each message to ``path`` as a JSON line ``{"at", "to", "text", "category"}``,
    its masked values (the security phrase) replaced by :data:`MASK`: development only.

    The directory is created 0700 and the file 0600. Each line is written with one
    ``write`` under an exclusive lock and fsynced, so concurrent senders (two jobs, two
    processes) never interleave or lose a line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileSmsSender({str(self.path)!r})"

    def send(self, message: OutgoingSms) -> None:
        line = json.dumps(
            {
                "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "to": message.to,
                "text": message.kept_text(),
                "category": message.category,
            },
            ensure_ascii=False,
        )
        data = (line + "\n").encode("utf-8")
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX)
                    os.write(descriptor, data)
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise SmsError(f"file SMS sender: cannot write to {self.path}: {reason}") from None
        _log.info("sms.sent", transport="file", category=message.category)

    def messages(self) -> list[dict[str, Any]]:
        """Every message written so far, oldest first (for tests and the demo)."""
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class MemorySmsSender:
    """Keeps messages in a list: the twin of FileSmsSender for unit tests. ``fail`` makes
    every send raise, as an unreachable gateway would."""

    sent: list[OutgoingSms] = field(default_factory=list)
    fail: bool = False

    def send(self, message: OutgoingSms) -> None:
        if self.fail:
            raise SmsError("memory SMS sender: told to fail")
        self.sent.append(message)


def load_sms_sender(
    setting: str, data_dir: Path, *, environment: str = "development"
) -> SmsSender | None:
    """The sender named by LABVAULT_SMS_SENDER (``Settings.sms_transport``), ``None`` for
    ``none:`` (no SMS). Checked once more here, production included: tests and tools build
    it from plain strings too."""
    problem = sms_sender_problem(setting)
    if problem is not None:
        raise ValueError(f"LABVAULT_SMS_SENDER: {problem}")
    scheme, _, rest = setting.partition(":")
    if scheme == "none":
        return None
    if environment == "production":
        raise ValueError(SMS_OUTBOX_IN_PRODUCTION)
    path = Path(rest).expanduser() if rest else data_dir / "sms" / "outbox.jsonl"
    return FileSmsSender(path)
