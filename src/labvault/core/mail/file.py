"""Messages written as .eml files: the embedded default, so the demo needs no mail server."""

from __future__ import annotations

import email.policy
import os
import secrets
import threading
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from labvault.core.durable import fsync_directory
from labvault.core.logging import get_logger
from labvault.core.mail.base import MailerError
from labvault.core.mail.message import OutgoingMessage, parse_sender

__all__ = ["FileMailer"]

_log = get_logger("labvault.core.mail")

_SUFFIX = ".eml"
_TEMP_PREFIX = ".tmp-"
_STAMP = "%Y%m%dT%H%M%S.%fZ"


class _Stamps:
    """Strictly increasing UTC times for file names, so that names sort in sending order
    even for messages sent within the same microsecond or across a clock step back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = datetime.min.replace(tzinfo=UTC)

    def next(self) -> datetime:
        with self._lock:
            now = datetime.now(UTC)
            self._last = max(now, self._last + timedelta(microseconds=1))
            return self._last


_stamps = _Stamps()


class FileMailer:
    """Writes each message to ``directory`` as ``<UTC time>-<random>.eml``, oldest first by name.

    These files hold the messages in clear, as an SMTP server's spool would: use this mailer
    for the demo and the embedded default only. The directory is created 0700 and each file
    0600; a file appears complete or not at all (written aside, fsynced, then renamed).
    """

    def __init__(self, directory: Path, sender: str) -> None:
        parse_sender(sender)  # a wrong LABVAULT_MAIL_FROM fails here, not at the first send
        self.directory = directory
        self.sender = sender

    def __repr__(self) -> str:
        return f"FileMailer({str(self.directory)!r})"

    def send(self, message: OutgoingMessage) -> None:
        built = message.to_email_message(self.sender)
        data = built.as_bytes()
        stamp = _stamps.next()
        name = f"{stamp.strftime(_STAMP)}-{secrets.token_hex(4)}{_SUFFIX}"
        try:
            self._make_directory()
            self._write_atomically(self.directory / name, data)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise MailerError(f"file mailer: cannot write to {self.directory}: {reason}") from None
        _log.info("mail.sent", transport="file", category=message.category, file=name)

    def messages(self) -> list[EmailMessage]:
        """Every message written so far, oldest first (for tests and the demo)."""
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(self.directory)
                if entry.name.endswith(_SUFFIX) and not entry.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        parser = BytesParser(policy=email.policy.default)
        return [parser.parsebytes((self.directory / name).read_bytes()) for name in names]

    def _make_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            return
        os.chmod(self.directory, 0o700)  # whatever the umask

    def _write_atomically(self, path: Path, data: bytes) -> None:
        temp = path.with_name(f"{_TEMP_PREFIX}{secrets.token_hex(8)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_directory(self.directory)
