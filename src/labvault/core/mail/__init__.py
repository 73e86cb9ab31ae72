"""Outgoing e-mail: the ``Mailer`` seam, its file and SMTP implementations, and the setting
that picks one (``LABVAULT_MAILER``)."""

from __future__ import annotations

from pathlib import Path

from labvault.core.mail.base import Mailer, MailerError
from labvault.core.mail.file import FileMailer
from labvault.core.mail.message import OutgoingMessage
from labvault.core.mail.smtp import SmtpMailer, SmtpServer, parse_smtp_url

__all__ = [
    "FileMailer",
    "Mailer",
    "MailerError",
    "OutgoingMessage",
    "SmtpMailer",
    "SmtpServer",
    "load_mailer",
    "parse_smtp_url",
]

_FORMS = "'file:', 'file:/path/to/dir' or 'smtp://[user:password@]host[:port]?tls=...'"


def load_mailer(setting: str, data_dir: Path, sender: str) -> Mailer:
    """The mailer named by LABVAULT_MAILER: ``file:`` (.eml files in ``data_dir/mail``),
    ``file:/dir``, or an ``smtp://`` URL (see :func:`parse_smtp_url`).

    Errors are ValueErrors naming the setting; they never repeat its value, which may hold
    an SMTP password.
    """
    scheme, colon, rest = setting.partition(":")
    try:
        if colon and scheme == "file":
            if rest.startswith("//") and not rest.startswith("///"):
                raise ValueError("a file: mailer takes a local directory, 'file:/path/to/dir'")
            directory = Path(rest).expanduser() if rest else data_dir / "mail"
            return FileMailer(directory, sender)
        if colon and scheme == "smtp":
            return SmtpMailer.from_url(setting, sender)
    except ValueError as exc:
        if str(exc).startswith("LABVAULT_"):
            raise
        raise ValueError(f"LABVAULT_MAILER: {exc}") from None
    raise ValueError(f"LABVAULT_MAILER must be {_FORMS}")
