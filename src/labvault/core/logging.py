"""Structured logging that never writes personal data (invariant I5).

Every record, from structlog or from the standard library (uvicorn, SQLAlchemy, ...), goes
through :func:`scrub_personal_data` before it is rendered:

- values of keys named like personal or secret fields are replaced by ``[redacted]``, at any
  depth (see :data:`PERSONAL_FIELD_NAMES`, the one list to extend);
- in every remaining string (the event message and tracebacks included), anything shaped
  like a NIR, an e-mail address or a phone number is masked;
- :class:`~labvault.core.crypto.secret.Secret` values render masked; raw ``bytes`` (key
  material, ciphertext) render as their length only.

Scrubbing is a safety net: code must still never pass personal values to a logger.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import logging
import re
import sys
import uuid
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, TextIO

import structlog
from pydantic import BaseModel, SecretBytes, SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

from labvault.core.config import Settings
from labvault.core.crypto.secret import Secret

__all__ = [
    "PERSONAL_FIELD_NAMES",
    "REDACTED",
    "configure_logging",
    "get_logger",
    "is_personal_field",
    "mask_personal_text",
    "scrub_personal_data",
]

REDACTED = "[redacted]"
MASKED_SECRET = "**********"  # noqa: S105 - the mask, not a password

#: Field names whose values are never logged. A log key matches when any run of its words
#: (``patient_birth_name``, ``contactEmail``, ``X-Auth-Token`` are split into words, compared
#: case-insensitively) equals one of these names. Extend this list; do not add another one.
# fmt: off
PERSONAL_FIELD_NAMES: frozenset[str] = frozenset(
    {
        # identity
        "name", "names", "birth_name", "birthname", "used_name", "usual_name", "last_name",
        "lastname", "surname", "first_name", "first_names", "firstname", "firstnames",
        "given_name", "given_names", "family_name", "maiden_name", "full_name", "fullname",
        "username", "login", "sex", "gender", "birth_date", "birthdate", "date_of_birth",
        "dob", "birth_place", "birth_country", "birth_city",
        # national identifiers
        "nir", "nia", "ins", "ssn", "social_security_number", "insee", "matricule",
        # contact
        "email", "emails", "mail", "e_mail", "courriel", "phone", "phones", "phone_number",
        "mobile", "telephone", "tel", "fax", "address", "addresses", "address_line",
        "street", "postal_code", "postcode", "zip", "zip_code", "city", "town",
        "ip", "user_agent",
        # health data and free text
        "result_value", "observation", "diagnosis", "prescription", "exam", "comment",
        "comments", "note", "notes", "free_text",
        # credentials and key material
        "password", "passwd", "passphrase", "password_hash", "security_phrase", "token",
        "secret", "key", "api_key", "private_key", "totp", "otp", "pin", "authorization",
        "cookie", "cookies", "set_cookie", "session", "credentials",
        # French spellings, in case one slips into a log call
        "nom", "prenom", "prenoms", "nom_naissance", "nom_usage", "date_naissance",
        "adresse", "code_postal", "ville", "mot_de_passe",
    }
)
# fmt: on

#: Keys that contain a listed word but hold only random identifiers, never personal data.
_NOT_PERSONAL: frozenset[str] = frozenset({"key_id", "key_ids", "root_key_id", "data_key_id"})

_MAX_DEPTH = 8
_MAX_STRING = 32_000

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")

# Separators people type inside numbers: spaces (incl. no-break ones), dots and hyphens.
_SEP = r"[\s.\-]?"
# E-mail addresses: local-part characters, "@", a dotted domain. Found from each "@" (see
# _mask_emails) rather than with one regex, which is quadratic on long runs without "@".
_is_local_char = re.compile(r"[\w.!#$%&'*+/=?^`{|}~\-]").match
_EMAIL_DOMAIN = re.compile(r"[\w\-]+(?:\.[\w\-]+)+")
# NIR: sex, year, month, department (digits, 2A or 2B), commune, order, key. No boundaries:
# a NIR glued to other characters is masked all the same.
_NIR = re.compile(
    rf"[1-9]{_SEP}\d\d{_SEP}\d\d{_SEP}(?:\d\d|2[ABab]){_SEP}\d{{3}}{_SEP}\d{{3}}{_SEP}\d\d"
)
_PHONE = re.compile(
    # French numbers: 0X XX XX XX XX, +33 X XX XX XX XX, +33 (0)X ..., 0033 X ...
    rf"(?:(?:\+|00)33{_SEP}(?:\(0\){_SEP})?|0)[1-9](?:{_SEP}\d\d){{4}}"
    # any E.164 number, separators allowed
    rf"|\+[1-9](?:{_SEP}\d){{6,14}}"
)
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (_NIR, "[nir]"),
    (_PHONE, "[phone]"),
)

# A whole value of this exact shape is a random identifier: nothing personal fits in it.
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")

#: Keys whose values labvault generates itself (random request ids, timestamps, levels):
#: never masked, so that random hex never turns into "[phone]".
_GENERATED_KEYS: frozenset[str] = frozenset({"request_id", "timestamp", "level", "logger"})

_PASSED_THROUGH: frozenset[str] = frozenset({"_record", "_from_structlog"})

_PLAIN_TYPES = (bool, int, float, decimal.Decimal, uuid.UUID, dt.date, dt.time, dt.timedelta)


def is_personal_field(key: str) -> bool:
    """Whether values logged under ``key`` must be redacted (see PERSONAL_FIELD_NAMES)."""
    words = [w for w in _WORD_SEPARATORS.split(_CAMEL_BOUNDARY.sub("_", key).lower()) if w]
    if "_".join(words) in _NOT_PERSONAL:
        return False
    for start in range(len(words)):
        for stop in range(start + 1, len(words) + 1):
            if "_".join(words[start:stop]) in PERSONAL_FIELD_NAMES:
                return True
    return False


def _mask_emails(text: str) -> str:
    """Replace every ``local@domain.tld`` by ``[email]``, in linear time."""
    if "@" not in text:
        return text
    parts: list[str] = []
    done = 0  # end of the last replaced address
    at = text.find("@")
    while at != -1:
        start = at
        while start > done and _is_local_char(text, start - 1):
            start -= 1
        domain = _EMAIL_DOMAIN.match(text, at + 1) if start < at else None
        if domain is None:
            at = text.find("@", at + 1)
            continue
        parts.append(text[done:start])
        parts.append("[email]")
        done = domain.end()
        at = text.find("@", done)
    parts.append(text[done:])
    return "".join(parts)


def mask_personal_text(text: str) -> str:
    """Mask e-mail addresses, NIRs and phone numbers anywhere in ``text``."""
    text = _mask_emails(text)
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def _scrub_value(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, _PLAIN_TYPES):
        return value
    if isinstance(value, str):
        if _UUID.fullmatch(value):
            return value
        masked = mask_personal_text(value)  # before truncating: no half-NIR left unmasked
        return masked if len(masked) <= _MAX_STRING else masked[:_MAX_STRING] + "[truncated]"
    if isinstance(value, Secret | SecretStr | SecretBytes):
        return MASKED_SECRET
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, enum.Enum):
        return _scrub_value(value.value, depth)
    if isinstance(value, PurePath):
        return mask_personal_text(str(value))
    if depth >= _MAX_DEPTH:
        return "[truncated]"
    if isinstance(value, Mapping):
        return _scrub_mapping(value, depth + 1)
    if isinstance(value, BaseModel):
        return _scrub_mapping(value.model_dump(), depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _scrub_mapping(
            {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, depth + 1
        )
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(item, depth + 1) for item in value]
    if isinstance(value, BaseException):
        return mask_personal_text(f"{type(value).__name__}: {value}")
    return mask_personal_text(repr(value))


def _scrub_mapping(mapping: Mapping[Any, Any], depth: int) -> dict[Any, Any]:
    scrubbed: dict[Any, Any] = {}
    for key, value in mapping.items():
        if isinstance(key, str):
            scrubbed[mask_personal_text(key)] = (
                REDACTED if is_personal_field(key) else _scrub_value(value, depth)
            )
        else:
            scrubbed[key] = _scrub_value(value, depth)
    return scrubbed


def scrub_personal_data(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """structlog processor: redact personal fields, mask personal-looking text, hide secrets."""
    scrubbed: EventDict = {}
    for key, value in event_dict.items():
        # stdlib bridge bookkeeping (removed before rendering) and values labvault generates
        if key in _PASSED_THROUGH or (key in _GENERATED_KEYS and isinstance(value, str)):
            scrubbed[key] = value
        elif key != "event" and is_personal_field(key):
            scrubbed[key] = REDACTED
        else:
            scrubbed[key] = _scrub_value(value, 0)
    return scrubbed


def _renderer(settings: Settings, stream: TextIO) -> Processor:
    if settings.log_format == "json":
        return structlog.processors.JSONRenderer()
    # The exception is already a (scrubbed) string: ConsoleRenderer prints it as is, never
    # with the local variables that rich tracebacks would show.
    colors = bool(getattr(stream, "isatty", lambda: False)())
    return structlog.dev.ConsoleRenderer(colors=colors)


class _NamedPrintLogger(structlog.PrintLogger):
    def __init__(self, file: TextIO | None = None, name: str = "") -> None:
        super().__init__(file)
        self.name = name


class _NamedPrintLoggerFactory:
    """Like PrintLoggerFactory; ``structlog.get_logger("x")`` gives records ``logger="x"``."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(self._file, str(args[0]) if args else "")


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


class _LabvaultHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler installed by configure_logging so a second call replaces it."""


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library to write scrubbed records to ``stream``.

    ``stream`` defaults to standard error (standard output stays free for command output).
    uvicorn's access log is disabled: :mod:`labvault.core.web.request_context` writes one
    access line per request instead, without query strings. Run uvicorn with
    ``log_config=None, access_log=False`` so that it does not install its own handlers.
    """
    out = stream if stream is not None else sys.stderr
    level = logging.getLevelName(settings.log_level.upper())
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become plain strings (never with local variables) before scrubbing.
        structlog.processors.format_exc_info,
        scrub_personal_data,
    ]
    renderer = _renderer(settings, out)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _add_logger_name, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_NamedPrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )

    handler = _LabvaultHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                *shared,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _LabvaultHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)

    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True


def get_logger(name: str, **initial_values: Any) -> Any:
    """A structlog logger whose records carry ``logger=name``; configuration stays lazy."""
    return structlog.get_logger(name, **initial_values)
