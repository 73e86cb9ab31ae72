"""Runtime configuration, read from ``LABVAULT_*`` environment variables.

Every setting has a safe embedded default so that ``labvault demo`` works on a fresh
machine; production deployments override the database and the key provider.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "production", "test"]


class ConfigurationError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


class Settings(BaseSettings):
    """labvault settings. See the README's "Configuration" section."""

    model_config = SettingsConfigDict(env_prefix="LABVAULT_", extra="ignore", frozen=True)

    data_dir: Path = Field(default=Path("./var"), description="Root of local state.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: a SQLite file under data_dir/db."
    )
    key_provider: str = Field(
        default="file:",
        description="'file:' (key file under data_dir/keys), 'file:/path/to/root.key'.",
    )
    environment: Environment = "development"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"
    behind_tls: bool = Field(default=False, description="Set when served over HTTPS: enables HSTS.")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not (value.startswith("sqlite") or value.startswith("postgresql")):
            raise ValueError(
                "LABVAULT_DATABASE_URL must be a sqlite:/// or postgresql+psycopg:// URL"
            )
        if value.startswith("postgresql") and value.split("://", 1)[0] != "postgresql+psycopg":
            raise ValueError(
                "PostgreSQL URLs must use the psycopg 3 driver: postgresql+psycopg://..."
            )
        return value

    @field_validator("key_provider")
    @classmethod
    def _check_key_provider(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if ":" not in value or scheme not in {"file"}:
            raise ValueError(
                "LABVAULT_KEY_PROVIDER must look like 'file:' or 'file:/path/to/root.key'"
            )
        return value

    @cached_property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @cached_property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'db' / 'labvault.sqlite3'}"

    @cached_property
    def key_file(self) -> Path:
        """Path of the root key file for the ``file:`` provider.

        The default lives in ``data_dir/keys``, a sibling of ``data_dir/db``: a copy of the
        database directory never carries the key.
        """
        _, _, path = self.key_provider.partition(":")
        if path:
            return Path(path).expanduser().resolve()
        return self.resolved_data_dir / "keys" / "root.key"

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
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            lines.append(f"LABVAULT_{field.upper()}: {error['msg']}")
        raise ConfigurationError("Invalid configuration:\n  " + "\n  ".join(lines)) from None
