"""Runtime configuration, read from ``LABVAULT_*`` environment variables.

Every setting has a safe embedded default so that ``labvault demo`` works on a fresh
machine; production deployments override the database and the key provider.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "production", "test"]


class ConfigurationError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


KEY_FILE_IN_DATA_DIR = (
    "LABVAULT_KEY_PROVIDER: in production the key file must live outside LABVAULT_DATA_DIR "
    "(a backup of the data directory would carry the key); "
    "set LABVAULT_KEY_PROVIDER=file:/path/outside"
)


SMS_OUTBOX_IN_PRODUCTION = (
    "LABVAULT_SMS_SENDER: in production SMS may not be written to a file (the outbox would "
    "keep phone numbers and appointments in clear, next to the data, for ever); "
    "set LABVAULT_SMS_SENDER=none: (no SMS, reminders go by email) until an SMS gateway exists"
)


def sms_sender_problem(setting: str) -> str | None:
    """What is wrong with a LABVAULT_SMS_SENDER value, or ``None``: ``none:`` (no SMS),
    ``file:`` (the outbox under data_dir) or ``file:/path/to/outbox.jsonl``; no other
    transport exists yet. Production refuses ``file:`` (see ``Settings``)."""
    scheme, colon, rest = setting.partition(":")
    if colon and scheme == "none":
        return None if not rest else "takes nothing after it: 'none:'"
    if not colon or scheme != "file":
        return (
            "must be 'none:' (no SMS), 'file:' (data_dir/sms/outbox.jsonl) or "
            "'file:/path/to/outbox.jsonl'; no other SMS transport exists yet"
        )
    if rest.startswith("//") and not rest.startswith("///"):
        return "takes a local file, 'file:/path/to/outbox.jsonl', not a host"
    if rest.endswith("/"):
        return "takes a file, not a directory: 'file:/path/to/outbox.jsonl'"
    return None


KEY_PROVIDER_FORMS = (
    "must be 'file:' (key file under data_dir/keys), 'file:/path/to/root.key' or "
    "'transit:https://bao.internal:8200/<mount>/<key>' (OpenBao/Vault Transit)"
)
_TRANSIT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True, slots=True)
class TransitSpec:
    """Where a Transit key is: ``address`` (scheme, host, port), ``mount`` path, ``key`` name."""

    address: str
    mount: str
    key: str


def key_provider_problem(spec: str) -> str | None:
    """What is wrong with a LABVAULT_KEY_PROVIDER value, or ``None``."""
    scheme, colon, _ = spec.partition(":")
    if colon and scheme == "file":
        return None
    if not colon or scheme != "transit":
        return KEY_PROVIDER_FORMS
    try:
        parse_transit_spec(spec)
    except ValueError as exc:
        return str(exc)
    return None


def parse_transit_spec(spec: str) -> TransitSpec:
    """``transit:<http(s)://host:port>/<mount>/<key>``; plain http only to a loopback address
    (the token and every wrapped key cross the connection)."""
    url = spec.removeprefix("transit:")
    form = "'transit:https://bao.internal:8200/<mount>/<key>'"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError(f"must look like {form}: the address is malformed") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"must look like {form}: an http(s) address, then the mount and key")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError(
            f"must look like {form}: no credentials, query or fragment in the address "
            "(give the token with LABVAULT_TRANSIT_TOKEN_FILE)"
        )
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if len(segments) < 2 or parts.path.endswith("/"):
        raise ValueError(f"must look like {form}: the mount path and the key name are missing")
    if any(not _TRANSIT_NAME.match(s) or s in {".", ".."} for s in segments):
        raise ValueError(
            f"must look like {form}: mount and key names take letters, digits, '_', '-', '.'"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            "plain http is only allowed to a loopback address; use https for a remote "
            "OpenBao/Vault (the token and the wrapped keys cross that connection)"
        )
    return TransitSpec(
        address=f"{parts.scheme}://{parts.netloc}", mount="/".join(segments[:-1]), key=segments[-1]
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ALERT_SINK_NAMES = ("email", "webhook", "jsonl")


def alert_sink_names(setting: str) -> tuple[str, ...]:
    """The sink names of LABVAULT_ALERT_SINKS, in order, without blanks or repeats."""
    names = [name.strip().lower() for name in setting.split(",")]
    return tuple(dict.fromkeys(name for name in names if name))


def alert_sinks_problem(setting: str, webhook_url: str | None, has_secret: bool) -> str | None:
    """What is wrong with the alert sink settings, or ``None``."""
    names = alert_sink_names(setting)
    unknown = [name for name in names if name not in ALERT_SINK_NAMES]
    if unknown:
        return (
            f"LABVAULT_ALERT_SINKS: unknown sink {unknown[0]!r}; use a comma list of "
            + ", ".join(ALERT_SINK_NAMES)
        )
    if "webhook" not in names:
        return None
    if not webhook_url or not has_secret:
        return (
            "LABVAULT_ALERT_SINKS names 'webhook': set LABVAULT_ALERT_WEBHOOK_URL and "
            "LABVAULT_ALERT_WEBHOOK_SECRET (the HMAC key the receiver checks)"
        )
    return webhook_url_problem(webhook_url)


def webhook_url_problem(url: str) -> str | None:
    """An alert webhook is https://, or http:// on a loopback address; no credentials."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "LABVAULT_ALERT_WEBHOOK_URL is malformed"
    if parts.username or parts.password:
        return "LABVAULT_ALERT_WEBHOOK_URL: no credentials in the address (the secret signs)"
    if not host or parts.scheme not in ("https", "http"):
        return "LABVAULT_ALERT_WEBHOOK_URL must be an https:// address"
    if parts.scheme == "http" and not _is_loopback(host):
        return (
            "LABVAULT_ALERT_WEBHOOK_URL must be https:// (http:// only on a loopback "
            "address: alerts name principals and must not cross a network in clear)"
        )
    return None


class Settings(BaseSettings):
    """labvault settings. See the README's "Configuration" section."""

    model_config = SettingsConfigDict(env_prefix="LABVAULT_", extra="ignore", frozen=True)

    data_dir: Path = Field(default=Path("./var"), description="Root of local state.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: a SQLite file under data_dir/db."
    )
    admin_database_url: str | None = Field(
        default=None,
        description="PostgreSQL: the schema owner's URL, for migrations, `labvault db grant` "
        "and creating organizations; default: database_url. The app's own URL should be a "
        "role that is neither owner nor BYPASSRLS (see docs/deployment.md).",
    )
    key_provider: str = Field(
        default="file:",
        description="'file:' (key file under data_dir/keys), 'file:/path/to/root.key', or "
        "'transit:https://bao.internal:8200/transit/labvault' (OpenBao/Vault Transit: address, "
        "mount, key; plain http only to a loopback address).",
    )
    previous_key_provider: str | None = Field(
        default=None,
        description="During a move between key providers (`labvault keys migrate`): the old "
        "one, same syntax as LABVAULT_KEY_PROVIDER; what it wrapped still unwraps there.",
    )
    transit_token: SecretStr | None = Field(
        default=None,
        description="Transit: the token, inline (prefer LABVAULT_TRANSIT_TOKEN_FILE or AppRole).",
    )
    transit_token_file: Path | None = Field(
        default=None,
        description="Transit: a file holding the token (re-read when the server refuses it, "
        "e.g. one an OpenBao/Vault agent renews).",
    )
    transit_role_id: str | None = Field(
        default=None, description="Transit: AppRole login, the role id."
    )
    transit_secret_id_file: Path | None = Field(
        default=None, description="Transit: AppRole login, a file holding the secret id."
    )
    transit_approle_mount: str = Field(
        default="approle", description="Transit: where the AppRole auth method is mounted."
    )
    transit_ca_file: Path | None = Field(
        default=None, description="Transit: CA bundle that signed the server's certificate."
    )
    transit_client_cert_file: Path | None = Field(
        default=None, description="Transit: client certificate, for mutual TLS."
    )
    transit_client_key_file: Path | None = Field(
        default=None, description="Transit: the client certificate's private key."
    )
    transit_namespace: str | None = Field(
        default=None, description="Transit: the Vault Enterprise/OpenBao namespace, if any."
    )
    transit_timeout_seconds: float = Field(
        default=5.0, gt=0, le=120, description="Transit: timeout of each HTTP request."
    )
    transit_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Transit: retries of a failed request (connection errors, 5xx, 429), "
        "with backoff; authentication and validation errors are never retried.",
    )
    transit_unwrap_batch: int = Field(
        default=20,
        ge=1,
        le=200,
        description="Transit: at most this many keys per decrypt request. OpenBao's decrypt "
        "quota counts requests: quota rate x this = the most keys the app can open per "
        "interval (docs/keys.md). Operators' bulk jobs may raise it (up to 200) in their own "
        "environment; encrypt and rewrap always batch 200.",
    )
    transit_derivation_key: str | None = Field(
        default=None,
        description="Transit: the key that derives the audit seal and checkpoint signing keys "
        "(HMAC, never rotated); default: '<key>-derivation'.",
    )
    audit_witness_dir: Path | None = Field(
        default=None,
        description="Where the audit witness appends checkpoints; default: data_dir/witness.",
    )
    result_drop_dir: Path | None = Field(
        default=None,
        description="Where released reports are dropped for the prescribers' gateway (plain "
        "text, on purpose: keep it out of backups); default: data_dir/outbox/results.",
    )
    audit_checkpoint_events: int = Field(
        default=1000, ge=1, le=1_000_000, description="Sign a checkpoint every this many events."
    )
    audit_checkpoint_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="...or every this many seconds."
    )
    organization: str | None = Field(
        default=None,
        description="The organization the web app serves; default: the only one there is.",
    )
    mailer: str = Field(
        default="file:",
        description="'file:' (.eml files under data_dir/mail), 'file:/dir', or "
        "'smtp://user:password@host:587?tls=starttls' (tls: starttls, ssl or none).",
    )
    mail_from: str = Field(
        default="labvault <no-reply@labvault.localhost>", description="Sender of every message."
    )
    public_url: str = Field(
        default="http://localhost:8000",
        description="Base URL put in links sent by email; its host is the passkeys' relying "
        "party (a name, not an IP address: browsers refuse WebAuthn on 127.0.0.1).",
    )
    ratelimit_storage: str = Field(
        default="memory://",
        description="Rate-limit counters: 'memory://' (one process) or 'redis://host:6379/0' "
        "(shared by every app process).",
    )
    session_idle_minutes: int = Field(default=30, ge=1, le=24 * 60)
    session_absolute_hours: int = Field(default=12, ge=1, le=24 * 30)
    staff_session_idle_minutes: int = Field(default=15, ge=1, le=24 * 60)
    staff_session_absolute_hours: int = Field(default=10, ge=1, le=24 * 7)
    step_up_minutes: int = Field(
        default=5,
        ge=1,
        le=60,
        description="How long a re-proof of a second factor (or the login's own second factor) "
        "opens sensitive actions in that session: factor changes, deletion request, exports.",
    )
    account_deletion_grace_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="Days between a patient's deletion request and the erasure of the account by "
        "`labvault accounts purge`; the emailed cancel link works until then.",
    )
    known_device_retention_days: int = Field(
        default=400,
        ge=1,
        le=3650,
        description="Days a known device (a browser that completed a login) is remembered after "
        "its last login, as long as its cookie lives; `labvault accounts purge` forgets older "
        "ones, and the next login from such a device is announced as a new one.",
    )
    relationship_days_before: int = Field(
        default=30,
        ge=0,
        le=366,
        description="A staff member opens a patient with an appointment at one of their sites "
        "up to this many days ago.",
    )
    relationship_days_after: int = Field(
        default=30,
        ge=0,
        le=366,
        description="...or up to this many days ahead.",
    )
    fhir_token_minutes: int = Field(
        default=5,
        ge=1,
        le=60,
        description="Lifetime of an OAuth2 access token of the FHIR API (client credentials).",
    )
    break_glass_hours: int = Field(
        default=4,
        ge=1,
        le=12,
        description="How long a break-glass grant opens one patient's file to one staff member.",
    )
    booking_hold_minutes: int = Field(
        default=10,
        ge=1,
        le=60,
        description="How long a slot stays held for a patient who is finishing the booking form.",
    )
    booking_change_deadline_hours: int = Field(
        default=2,
        ge=0,
        le=14 * 24,
        description="A patient may reschedule or cancel until this many hours before the "
        "appointment; after that, only the lab's staff can.",
    )
    booking_horizon_days: int = Field(
        default=90,
        ge=1,
        le=366,
        description="How far ahead a patient may book.",
    )
    prescription_max_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=64 * 1024,
        le=50 * 1024 * 1024,
        description="Largest prescription upload accepted (PDF, JPEG or PNG).",
    )
    prescription_retention_days: int = Field(
        default=30,
        ge=0,
        le=3650,
        description="Days after the visit an uploaded prescription is deleted by "
        "`labvault retention run`.",
    )
    appointment_retention_days: int = Field(
        default=365,
        ge=1,
        le=3650,
        description="Days after the visit an appointment's sealed content (exams, home address) "
        "and its pre-registration are erased by `labvault retention run`; the planning row stays.",
    )
    sms_sender: str | None = Field(
        default=None,
        description="Where SMS go: 'none:' sends none (the default in production); 'file:' "
        "appends them to data_dir/sms/outbox.jsonl, security phrases masked (the default in "
        "development and test; 'file:/path' for another file; refused in production).",
    )
    alert_sinks: str = Field(
        default="email",
        description="Where security alerts go besides the security page (always): a comma list "
        "of 'email' (the security officers), 'webhook' (LABVAULT_ALERT_WEBHOOK_URL) and "
        "'jsonl' (LABVAULT_ALERT_JSONL_PATH, for a SIEM); '' for none.",
    )
    alert_webhook_url: str | None = Field(
        default=None,
        description="Webhook sink: an https:// URL (http:// only on loopback) that receives "
        "each alert as JSON, signed with HMAC-SHA256 (header X-Labvault-Signature).",
    )
    alert_webhook_secret: SecretStr | None = Field(
        default=None, description="Webhook sink: the shared secret of the HMAC signature."
    )
    alert_webhook_timeout_seconds: float = Field(
        default=3.0, gt=0, le=30, description="Webhook sink: timeout of each attempt."
    )
    alert_webhook_retries: int = Field(
        default=2, ge=0, le=5, description="Webhook sink: retries after a failed attempt."
    )
    alert_jsonl_path: Path | None = Field(
        default=None,
        description="JSON-lines sink: the file alerts are appended to (0600, fsync'd); "
        "default: data_dir/alerts/alerts.jsonl.",
    )
    guard_budget_store: str = Field(
        default="database",
        description="Read-budget counters (exfiltration guard): 'database' (the embedded "
        "default; on SQLite a side file data_dir/db/budgets.sqlite3, on PostgreSQL a table), "
        "'memory' (one process: tests) or 'redis://host:6379/0' (every worker).",
    )
    guard_budgets: dict[str, tuple[int, int, int]] = Field(
        default_factory=dict,
        description="Read budgets overriding the defaults for every organization, as JSON: "
        '{"staff:receptionist": [700, 1400, 14000], "patient": [20, 40, 200]} (distinct '
        "patients per hour, per day, per 30 days); an organization's own limits "
        "(`labvault guard budgets set`) take precedence.",
    )
    guard_lock_on_budget: bool = Field(
        default=True,
        description="Lock a principal (and revoke its sessions or tokens) that goes over a "
        "read budget; off: the read is still refused and the alert still raised.",
    )
    guard_honey_density: float = Field(
        default=0.005,
        ge=0.005,
        le=0.05,
        description="Honey records (exfiltration guard): synthetic patients `labvault guard "
        "honey plant` keeps per real patient of an organization (0.005: 0.5 %, the least).",
    )
    guard_honey_minimum: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Honey records an organization holds whatever its size (a small lab "
        "needs a few too).",
    )
    environment: Environment = "development"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"
    behind_tls: bool = Field(default=False, description="Set when served over HTTPS: enables HSTS.")

    @field_validator("database_url", "admin_database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not (value.startswith("sqlite") or value.startswith("postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        if value.startswith("postgresql") and value.split("://", 1)[0] != "postgresql+psycopg":
            raise ValueError(
                "PostgreSQL URLs must use the psycopg 3 driver: postgresql+psycopg://..."
            )
        return value

    @field_validator("key_provider", "previous_key_provider")
    @classmethod
    def _check_key_provider(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = key_provider_problem(value)
        if problem is not None:
            raise PydanticCustomError("key_provider", problem)
        return value

    @field_validator("transit_derivation_key")
    @classmethod
    def _check_transit_key_name(cls, value: str | None) -> str | None:
        if value is not None and not _TRANSIT_NAME.match(value):
            raise ValueError("a Transit key name takes letters, digits, '_', '-' and '.'")
        return value

    @model_validator(mode="after")
    def _check_transit_credentials(self) -> Self:
        """A Transit provider needs exactly one way to authenticate, and whole TLS pairs."""
        if self.previous_key_provider == self.key_provider:
            raise PydanticCustomError(
                "previous_key_provider",
                "LABVAULT_PREVIOUS_KEY_PROVIDER must differ from LABVAULT_KEY_PROVIDER",
            )
        specs = (self.key_provider, self.previous_key_provider or "")
        if all(spec.startswith("transit:") for spec in specs):
            raise PydanticCustomError(
                "previous_key_provider",
                "LABVAULT_KEY_PROVIDER and LABVAULT_PREVIOUS_KEY_PROVIDER cannot both be "
                "transit: providers: Transit's wrapped keys do not name their key, so keys "
                "under one would pass for the other's. Move between Transit keys by rotating "
                "the key instead (`labvault keys rotate`, `keys rewrap`, `keys retire`)",
            )
        if not any(spec.startswith("transit:") for spec in specs):
            return self
        approle = self.transit_role_id is not None or self.transit_secret_id_file is not None
        methods = [self.transit_token is not None, self.transit_token_file is not None, approle]
        if sum(methods) != 1:
            raise PydanticCustomError(
                "transit_credentials",
                "a transit: key provider needs one way to authenticate: "
                "LABVAULT_TRANSIT_TOKEN_FILE, LABVAULT_TRANSIT_TOKEN, or LABVAULT_TRANSIT_ROLE_ID "
                "with LABVAULT_TRANSIT_SECRET_ID_FILE",
            )
        if approle and (self.transit_role_id is None or self.transit_secret_id_file is None):
            raise PydanticCustomError(
                "transit_approle",
                "AppRole login needs both LABVAULT_TRANSIT_ROLE_ID and "
                "LABVAULT_TRANSIT_SECRET_ID_FILE",
            )
        if (self.transit_client_cert_file is None) != (self.transit_client_key_file is None):
            raise PydanticCustomError(
                "transit_client_cert",
                "mutual TLS needs both LABVAULT_TRANSIT_CLIENT_CERT_FILE and "
                "LABVAULT_TRANSIT_CLIENT_KEY_FILE",
            )
        return self

    @field_validator("guard_budget_store")
    @classmethod
    def _check_guard_budget_store(cls, value: str) -> str:
        if value in ("database", "memory") or value.startswith(("redis://", "rediss://")):
            return value
        raise ValueError("'database', 'memory' or a redis:// URL")

    @field_validator("guard_budgets")
    @classmethod
    def _check_guard_budgets(
        cls, value: dict[str, tuple[int, int, int]]
    ) -> dict[str, tuple[int, int, int]]:
        for key, (hour, day, month) in value.items():
            kind, _, role = key.partition(":")
            if kind not in ("staff", "patient", "service") or not (
                role == "*" or role.replace("_", "").replace("-", "").isalnum() or not role
            ):
                raise ValueError(f"{key!r}: staff[:role], patient or service[:kind]")
            if not 0 <= hour <= day <= month:
                raise ValueError(f"{key!r}: 0 <= per hour <= per day <= per 30 days")
        return value

    @field_validator("sms_sender")
    @classmethod
    def _check_sms_sender(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = sms_sender_problem(value)
        if problem is not None:
            raise PydanticCustomError("sms_sender", problem)
        return value

    @model_validator(mode="after")
    def _check_alert_sinks(self) -> Self:
        problem = alert_sinks_problem(
            self.alert_sinks, self.alert_webhook_url, self.alert_webhook_secret is not None
        )
        if problem is not None:
            raise PydanticCustomError("alert_sinks", problem)
        return self

    @model_validator(mode="after")
    def _check_admin_database_backend(self) -> Self:
        if self.admin_database_url and (
            self.admin_database_url.split(":", 1)[0] != self.sqlalchemy_url.split(":", 1)[0]
        ):
            raise PydanticCustomError(
                "admin_database_backend",
                "LABVAULT_ADMIN_DATABASE_URL must reach the same database as "
                "LABVAULT_DATABASE_URL, as the schema owner (same backend, another role)",
            )
        return self

    @model_validator(mode="after")
    def _check_key_file_outside_data_dir(self) -> Self:
        """In production the root key must not sit in the data directory (DESIGN, I2)."""
        if self.environment == "production" and self.key_provider.startswith("file:"):
            data_dir = self.resolved_data_dir
            key_file = self.key_file
            if key_file == data_dir or data_dir in key_file.parents:
                # A custom error carries the message as is (no "Value error, " prefix); it
                # names its variable itself because a model-level error has no field location.
                raise PydanticCustomError("key_file_in_data_dir", KEY_FILE_IN_DATA_DIR)
        return self

    @model_validator(mode="after")
    def _check_sms_outbox_outside_production(self) -> Self:
        """In production no SMS is kept in a clear-text file next to the data (DESIGN, I1)."""
        if self.environment == "production" and self.sms_transport.startswith("file:"):
            raise PydanticCustomError("sms_outbox_in_production", SMS_OUTBOX_IN_PRODUCTION)
        return self

    @property
    def resolved_alert_jsonl_path(self) -> Path:
        return self.alert_jsonl_path or self.resolved_data_dir / "alerts" / "alerts.jsonl"

    @cached_property
    def sms_transport(self) -> str:
        """LABVAULT_SMS_SENDER, or its default: ``none:`` in production, ``file:`` else."""
        if self.sms_sender is not None:
            return self.sms_sender
        return "none:" if self.environment == "production" else "file:"

    @cached_property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @cached_property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'db' / 'labvault.sqlite3'}"

    @cached_property
    def sqlalchemy_admin_url(self) -> str:
        """The schema owner's URL: migrations, grants, new organizations."""
        return self.admin_database_url or self.sqlalchemy_url

    @cached_property
    def key_file(self) -> Path:
        """Path of the root key file for the ``file:`` provider.

        The default lives in ``data_dir/keys``, a sibling of ``data_dir/db``: a copy of the
        database directory never carries the key.
        """
        scheme, _, path = self.key_provider.partition(":")
        if scheme == "file" and path:
            return Path(path).expanduser().resolve()
        return self.default_key_file

    @cached_property
    def default_key_file(self) -> Path:
        """The key file of a bare ``file:`` provider (current or previous)."""
        return self.resolved_data_dir / "keys" / "root.key"

    @cached_property
    def witness_dir(self) -> Path:
        """The default sits beside ``data_dir/db``, not in it; production should use storage
        that the database's administrators cannot write (see docs/audit.md)."""
        if self.audit_witness_dir is not None:
            return self.audit_witness_dir.expanduser().resolve()
        return self.resolved_data_dir / "witness"

    @cached_property
    def resolved_result_drop_dir(self) -> Path:
        """LABVAULT_RESULT_DROP_DIR, or ``data_dir/outbox/results``."""
        if self.result_drop_dir is not None:
            return self.result_drop_dir.expanduser().resolve()
        return self.resolved_data_dir / "outbox" / "results"

    @cached_property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, turning validation errors into one clear message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            if not error["loc"]:
                # A check across several settings: its message names the variables itself.
                lines.append(error["msg"])
                continue
            field = ".".join(str(part) for part in error["loc"])
            lines.append(f"LABVAULT_{field.upper()}: {error['msg']}")
        raise ConfigurationError("Invalid configuration:\n  " + "\n  ".join(lines)) from None
