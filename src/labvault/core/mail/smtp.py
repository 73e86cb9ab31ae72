"""Sending through an SMTP server, over verified TLS unless the server is on this machine."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import math
import re
import smtplib
import socket
import ssl
import time
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit

from labvault.core.crypto.secret import Secret
from labvault.core.logging import get_logger
from labvault.core.mail.base import MailerError
from labvault.core.mail.message import OutgoingMessage, parse_sender

__all__ = ["SmtpMailer", "SmtpServer", "TlsMode", "parse_smtp_url"]

_log = get_logger("labvault.core.mail")

TlsMode = Literal["starttls", "ssl", "none"]
_DEFAULT_PORTS: dict[TlsMode, int] = {"starttls": 587, "ssl": 465, "none": 25}
_TLS_MODES: dict[str, TlsMode] = {"starttls": "starttls", "ssl": "ssl", "none": "none"}
_MAX_TIMEOUT = 300.0
_URL_FORM = "smtp://[user:password@]host[:port][?tls=starttls|ssl|none&timeout=10]"
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
_ENHANCED_STATUS = re.compile(rb"[245]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True)
class SmtpServer:
    """Where and how to connect. ``tls="none"`` is accepted for loopback hosts only: anywhere
    else the password and the messages would cross the network in clear."""

    host: str
    port: int
    tls: TlsMode = "starttls"
    username: str | None = None
    password: Secret[str] | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.tls not in _DEFAULT_PORTS:
            raise ValueError("SMTP tls must be 'starttls', 'ssl' or 'none'")
        if not isinstance(self.host, str) or not _is_host(self.host):
            raise ValueError("SMTP host must be a host name (ASCII, punycode) or an IP address")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError("SMTP port must be a number from 1 to 65535")
        if not 1 <= self.port <= 65535:
            raise ValueError("SMTP port must be a number from 1 to 65535")
        if (self.username is None) != (self.password is None):
            raise ValueError("SMTP credentials need both a user name and a password")
        if self.username is not None and not (self.username and _is_printable(self.username)):
            raise ValueError("SMTP user name must be non-empty, without control characters")
        if self.password is not None and not _is_printable(self.password.reveal()):
            raise ValueError("SMTP password must not contain control characters")
        if not (math.isfinite(self.timeout) and 0 < self.timeout <= _MAX_TIMEOUT):
            raise ValueError(f"SMTP timeout must be a number of seconds in (0, {_MAX_TIMEOUT:g}]")
        if self.tls == "none" and not _is_loopback(self.host):
            raise ValueError(
                "SMTP tls=none is allowed only for a server on this machine (localhost, "
                "127.0.0.1, ::1); use tls=starttls or tls=ssl for any other host"
            )

    def __str__(self) -> str:
        """The URL without the credentials, for logs and messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"smtp://{host}:{self.port}?tls={self.tls}"


def _is_printable(value: str) -> bool:
    """No control or separator characters: they would break or inject SMTP commands."""
    return bool(value) and not any(
        unicodedata.category(char) in {"Cc", "Cs", "Zl", "Zp"} for char in value
    )


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and _HOST_NAME.fullmatch(host) is not None
    return True


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_smtp_url(url: str) -> SmtpServer:
    """Read ``smtp://[user:password@]host[:port][?tls=starttls|ssl|none&timeout=10]``.

    User name and password are percent-decoded. The default is tls=starttls; the default
    port follows the mode (587, 465 for ssl, 25 for none). Errors say what is wrong and
    never repeat the URL, which may hold the password.
    """
    if not isinstance(url, str) or not _is_printable(url) or url != url.strip():
        raise ValueError(
            f"SMTP URL must be one line, without spaces around, of the form {_URL_FORM}"
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"SMTP URL is malformed; expected {_URL_FORM}") from None
    if parts.scheme != "smtp":
        raise ValueError(f"SMTP URL must start with smtp://; expected {_URL_FORM}")
    host, port = _host_and_port(parts)
    if parts.path not in ("", "/") or parts.fragment or "#" in url:
        raise ValueError(f"SMTP URL must not have a path or a fragment; expected {_URL_FORM}")
    options = _parse_query(parts.query)
    tls = _TLS_MODES.get(options.get("tls", "starttls"))
    if tls is None:
        raise ValueError("SMTP URL: tls must be 'starttls', 'ssl' or 'none'")
    timeout = _parse_timeout(options.get("timeout", "10"))
    username, password = _credentials(parts)
    return SmtpServer(
        host=host,
        port=port if port is not None else _DEFAULT_PORTS[tls],
        tls=tls,
        username=username,
        password=Secret(password) if password is not None else None,
        timeout=timeout,
    )


def _parse_query(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for field in query.split("&") if query else ():
        name, equals, value = field.partition("=")
        if name not in ("tls", "timeout") or not equals:
            raise ValueError("SMTP URL: the only options are tls=... and timeout=...")
        if name in options:
            raise ValueError(f"SMTP URL: option {name} is given twice")
        options[name] = unquote(value)
    return options


def _parse_timeout(text: str) -> float:
    try:
        timeout = float(text)
    except ValueError:
        timeout = math.nan
    if not (math.isfinite(timeout) and 0 < timeout <= _MAX_TIMEOUT):
        raise ValueError(f"SMTP URL: timeout must be a number of seconds in (0, {_MAX_TIMEOUT:g}]")
    return timeout


def _host_and_port(parts: SplitResult) -> tuple[str, int | None]:
    host = parts.hostname
    if not host:
        raise ValueError(f"SMTP URL has no host; expected {_URL_FORM}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("SMTP URL: the port must be a number from 1 to 65535") from None
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError("SMTP URL: the port must be a number from 1 to 65535")
    return host, port


def _credentials(parts: SplitResult) -> tuple[str | None, str | None]:
    if "@" not in parts.netloc:
        return None, None
    userinfo = parts.netloc.rpartition("@")[0]
    raw_user, colon, raw_password = userinfo.partition(":")
    if not raw_user or not colon or not raw_password:
        raise ValueError("SMTP URL: credentials must be given as user:password@host")
    username, password = unquote(raw_user), unquote(raw_password)
    if not _is_printable(username) or not _is_printable(password):
        raise ValueError("SMTP URL: user name and password must not contain control characters")
    return username, password


@functools.cache
def _local_hostname() -> str:
    """This machine's name for EHLO, looked up once: ``getfqdn`` may wait on DNS."""
    return socket.getfqdn()


class _TransientError(Exception):
    """A failure worth one more try: the server was unreachable or answered 4xx."""


class SmtpMailer:
    """Sends each message over a new SMTP connection.

    Certificates are verified (``ssl.create_default_context``) unless ``ssl_context`` is
    given, which tests use to trust their own server. A transient failure (connection
    refused or reset, a 4xx reply) is retried once after ``retry_delay`` seconds; a timeout
    is not, so a request waits at most about twice ``timeout``. Anything else raises
    MailerError at once.
    """

    def __init__(
        self,
        server: SmtpServer,
        sender: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        retry_delay: float = 1.0,
    ) -> None:
        self.server = server
        self.sender = sender
        self._envelope_from = parse_sender(sender).addr_spec
        self._ssl_context = ssl_context
        self._retry_delay = retry_delay

    @classmethod
    def from_url(
        cls,
        url: str,
        sender: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        retry_delay: float = 1.0,
    ) -> SmtpMailer:
        return cls(parse_smtp_url(url), sender, ssl_context=ssl_context, retry_delay=retry_delay)

    def __repr__(self) -> str:
        return f"SmtpMailer({str(self.server)!r})"

    def send(self, message: OutgoingMessage) -> None:
        data = message.to_email_message(self.sender).as_bytes()
        for attempt in (1, 2):
            try:
                self._deliver(message.to, data)
            except _TransientError as exc:
                if attempt == 2:
                    raise MailerError(f"{self.server}: {exc} (after one retry)") from None
                _log.warning(
                    "mail.retry", transport="smtp", category=message.category, reason=str(exc)
                )
                time.sleep(self._retry_delay)
            else:
                _log.info("mail.sent", transport="smtp", category=message.category)
                return

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _deliver(self, to: str, data: bytes) -> None:
        """One attempt. Every error becomes _TransientError or MailerError, raised ``from None``
        because smtplib's exceptions quote the server's replies, which name the recipient."""
        try:
            self._converse(to, data)
        except (MailerError, _TransientError):
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()), (0, b""))
            raise self._reply_error("refused the recipient", code, reply) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise self._reply_error(
                "refused the credentials", exc.smtp_code, exc.smtp_error
            ) from None
        except smtplib.SMTPSenderRefused as exc:
            raise self._reply_error("refused the sender", exc.smtp_code, exc.smtp_error) from None
        except smtplib.SMTPDataError as exc:
            raise self._reply_error("refused the message", exc.smtp_code, exc.smtp_error) from None
        except smtplib.SMTPResponseException as exc:
            raise self._reply_error(
                "answered with an error", exc.smtp_code, exc.smtp_error
            ) from None
        except smtplib.SMTPServerDisconnected as exc:
            if isinstance(exc.__context__, TimeoutError):  # smtplib wraps a read timeout
                raise self._timeout_error() from None
            raise _TransientError("the server closed the connection") from None
        except ssl.SSLCertVerificationError as exc:
            raise MailerError(
                f"{self.server}: the server's TLS certificate was refused "
                f"({exc.verify_message or exc.reason})"
            ) from None
        except ssl.SSLError as exc:
            raise MailerError(f"{self.server}: TLS failed ({exc.reason or 'error'})") from None
        except (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise _TransientError(
                f"connection failed ({exc.strerror or type(exc).__name__})"
            ) from None
        except TimeoutError:
            raise self._timeout_error() from None
        except smtplib.SMTPException as exc:
            # What is left carries smtplib's own fixed texts, never a server's reply:
            # "No suitable authentication method found."
            reason = str(exc).rstrip(".") or type(exc).__name__
            raise MailerError(f"{self.server}: {reason}") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise MailerError(f"{self.server}: connection failed ({reason})") from None

    def _timeout_error(self) -> MailerError:
        return MailerError(f"{self.server}: no answer within {self.server.timeout:g} s")

    def _reply_error(
        self, what: str, code: int, reply: bytes | str = b""
    ) -> MailerError | _TransientError:
        """An error for an SMTP reply, quoting only its codes: the reply text may name the
        recipient ("550 5.1.1 <someone@example.org>: unknown user")."""
        raw = reply.encode("utf-8", "replace") if isinstance(reply, str) else reply
        enhanced = _ENHANCED_STATUS.match(raw)
        status = f"{code} {enhanced.group().decode()}" if enhanced else str(code)
        if 400 <= code < 500:
            return _TransientError(f"the server {what} for now ({status})")
        return MailerError(f"{self.server}: the server {what} ({status})")

    def _converse(self, to: str, data: bytes) -> None:
        server = self.server
        client: smtplib.SMTP
        if server.tls == "ssl":
            client = smtplib.SMTP_SSL(
                server.host,
                server.port,
                local_hostname=_local_hostname(),
                timeout=server.timeout,
                context=self._context(),
            )
        else:
            client = smtplib.SMTP(
                server.host, server.port, local_hostname=_local_hostname(), timeout=server.timeout
            )
        try:
            client.ehlo()
            if server.tls == "starttls":
                if not client.has_extn("starttls"):
                    raise MailerError(
                        f"{server}: the server does not offer STARTTLS; "
                        "use tls=ssl if it expects TLS from the start"
                    )
                client.starttls(context=self._context())
                client.ehlo()
            if server.username is not None and server.password is not None:
                if not client.has_extn("auth"):
                    raise MailerError(
                        f"{server}: the server does not offer authentication (AUTH) "
                        "on this connection; check the tls mode, or remove the credentials"
                    )
                client.login(server.username, server.password.reveal())
            refused = client.sendmail(self._envelope_from, [to], data)
            if refused:
                code, reply = next(iter(refused.values()))
                raise self._reply_error("refused the recipient", code, reply)
            # The message was accepted: a failed goodbye must not make us send it again.
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
        finally:
            client.close()
