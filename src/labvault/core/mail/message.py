"""One outgoing e-mail, checked once when it is built and rendered the same by every mailer.

Checking at construction means a bad message is refused where it is written (invariant I6),
not later in a transport, and that every mailer sends exactly the same bytes.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage

from email_validator import EmailNotValidError, validate_email

__all__ = ["MAX_SUBJECT_LENGTH", "POLICY", "OutgoingMessage", "parse_sender"]

MAX_SUBJECT_LENGTH = 200

#: CRLF line endings and a 7-bit body (quoted-printable or base64 for non-ASCII text): the
#: bytes any SMTP server accepts, with or without 8BITMIME, and the canonical form of a .eml.
#: Headers stored raw (see ``to_email_message``) are written as they are, never refolded.
POLICY = email.policy.SMTP.clone(cte_type="7bit", refold_source="none")

# "account:email-code": lowercase words joined by ":", for logs and metrics.
_CATEGORY = re.compile(r"[a-z][a-z0-9_-]*(?::[a-z][a-z0-9_-]*)*")
_MAX_CATEGORY_LENGTH = 64
# Control characters refused in a body; tab, LF and CR are fine there.
_BODY_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _is_single_line(value: str) -> bool:
    """No control character (CR, LF, NUL, ...), no Unicode line or paragraph separator.

    A line break in a header value would start a new header: header injection.
    """
    return not any(unicodedata.category(char) in {"Cc", "Zl", "Zp"} for char in value)


def _has_encoded_word(value: str) -> bool:
    """Whether ``value`` holds an RFC 2047 opener. Python's e-mail package decodes encoded
    words in values it is given, so ``=?utf-8?q?=0D=0ABcc:...?=`` would become a line break
    and a new header (CVE-2024-6923; seen on Python 3.11.7). Refusing ``=?`` closes it on
    every version."""
    return "=?" in value


def _is_encodable(value: str) -> bool:
    """False for lone surrogates (from ``surrogateescape``): they cannot be sent as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_sender(sender: str) -> Address:
    """The one address of a ``From`` value such as ``labvault <no-reply@example.org>``.

    Raises ValueError naming the setting, since the sender comes from LABVAULT_MAIL_FROM.
    """
    if not _is_single_line(sender) or not _is_encodable(sender) or _has_encoded_word(sender):
        raise ValueError(
            "LABVAULT_MAIL_FROM must be a single line without control characters or '=?'"
        )
    try:
        header = email.policy.default.header_factory("From", sender)
        addresses: tuple[Address, ...] = tuple(getattr(header, "addresses", ()))
        defects = header.defects
    except Exception:  # the standard parser has crashes on odd input ('"' raises IndexError)
        defects, addresses = (), ()
    if defects or len(addresses) != 1:
        raise ValueError(
            "LABVAULT_MAIL_FROM must be one address, such as 'labvault <no-reply@example.org>'"
        )
    address: Address = addresses[0]
    if not address.username or not address.domain or "." not in address.domain:
        raise ValueError(
            "LABVAULT_MAIL_FROM must be one address with a domain, such as "
            "'labvault <no-reply@example.org>'"
        )
    if not address.addr_spec.isascii():
        raise ValueError("LABVAULT_MAIL_FROM: the address itself must be ASCII (no SMTPUTF8)")
    return address


def _ascii_recipient(to: str) -> str:
    """The recipient in the ASCII form SMTP needs (an internationalised domain in punycode)."""
    if not _is_single_line(to):
        raise ValueError("recipient address must be a single line without control characters")
    if _has_encoded_word(to):
        raise ValueError("recipient addresses containing '=?' are not supported")
    try:
        validated = validate_email(to, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        # The library's reason quotes parts of the address: never put those in an error (I5).
        raise ValueError("recipient address is not a valid e-mail address") from None
    return str(validated.ascii_email or validated.normalized)


@dataclass(frozen=True, kw_only=True)
class OutgoingMessage:
    """What to send to whom. ``category`` names the kind of message for logs and metrics;
    it is a fixed token such as ``"account:email-code"``, never personal data.

    ``to`` is kept in its ASCII form (domain lower-cased, IDN domains in punycode).
    """

    to: str
    subject: str
    text: str
    category: str
    html: str | None = None

    def __post_init__(self) -> None:
        # Error messages never quote the values: they may be personal (I5).
        if not isinstance(self.category, str) or not (
            len(self.category) <= _MAX_CATEGORY_LENGTH and _CATEGORY.fullmatch(self.category)
        ):
            raise ValueError(
                "message category must be a short token such as 'account:email-code' "
                "(lowercase words joined by ':')"
            )
        for name in ("to", "subject", "text"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"message {name} must be a string")
        if self.html is not None and not isinstance(self.html, str):
            raise ValueError("message html must be a string or None")
        object.__setattr__(self, "to", _ascii_recipient(self.to))
        if not self.subject.strip():
            raise ValueError("message subject must not be empty")
        if len(self.subject) > MAX_SUBJECT_LENGTH:
            raise ValueError(f"message subject must be at most {MAX_SUBJECT_LENGTH} characters")
        if not _is_single_line(self.subject):
            raise ValueError("message subject must be a single line without control characters")
        if self.subject != self.subject.strip():
            raise ValueError("message subject must not start or end with white space")
        if _has_encoded_word(self.subject):
            raise ValueError("message subject must not contain '=?' (read as an encoded word)")
        for name, value in (("subject", self.subject), ("text", self.text), ("html", self.html)):
            if value is not None and not _is_encodable(value):
                raise ValueError(f"message {name} is not valid Unicode text")
        for name, value in (("text", self.text), ("html", self.html)):
            if value is None:
                continue
            if not value.strip():
                raise ValueError(f"message {name} must not be empty")
            if _BODY_CONTROLS.search(value):
                raise ValueError(f"message {name} must not contain control characters")

    def to_email_message(self, sender: str, *, now: datetime | None = None) -> EmailMessage:
        """The RFC 5322 message, from ``sender`` (LABVAULT_MAIL_FROM), in UTF-8.

        ``Auto-Submitted: auto-generated`` (RFC 3834) keeps well-behaved servers from
        answering with vacation replies. The Message-ID is random, on the sender's domain.
        """
        address = parse_sender(sender)
        moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        message = EmailMessage(policy=POLICY)
        # From and Subject, which may hold non-ASCII text, are encoded here and stored as
        # they are: the policy's own folder (seen on Python 3.11) drops the space between two
        # encoded words, turning "à votre espace" into "àvotre espace" for every reader.
        message.set_raw("From", email.utils.formataddr((address.display_name, address.addr_spec)))
        message["To"] = self.to
        subject = Header(self.subject, header_name="Subject", maxlinelen=78).encode(linesep="\r\n")
        # An ASCII word too long for the first line is put on the next one; there, a reader
        # would take the folding space as part of the subject.
        message.set_raw("Subject", subject.lstrip("\r\n "))
        message["Date"] = email.utils.format_datetime(moment)
        message["Message-ID"] = f"<{secrets.token_hex(16)}@{address.domain}>"
        message["Auto-Submitted"] = "auto-generated"
        if (
            message["To"] != self.to
            or message["Subject"] != self.subject
            or message["From"].addresses != (address,)
        ):
            # A parser surprise that the checks above missed: never send a rewritten header.
            raise ValueError("message headers could not be encoded as given")
        message.set_content(self.text, charset="utf-8")
        if self.html is not None:
            message.add_alternative(self.html, subtype="html", charset="utf-8")
            for part in message.iter_parts():
                del part["MIME-Version"]  # belongs to the top level only
        return message
