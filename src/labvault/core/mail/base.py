"""The ``Mailer`` seam: features send mail through it and never know the transport."""

from __future__ import annotations

from typing import Protocol

from labvault.core.mail.message import OutgoingMessage

__all__ = ["Mailer", "MailerError"]


class MailerError(Exception):
    """A message could not be sent.

    The text names the transport and the cause (an SMTP reply code, an OS error) and never
    the recipient, the subject or the body, so it may be logged and shown as is (I5).
    Implementations raise it ``from None``: a chained SMTP exception would carry the
    recipient into tracebacks.
    """


class Mailer(Protocol):
    """Delivers one message, or raises MailerError; retries are the mailer's business."""

    def send(self, message: OutgoingMessage) -> None: ...
