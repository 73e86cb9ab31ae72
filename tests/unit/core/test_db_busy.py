"""Which errors make a request's unit of work run again on SQLite: "database is locked"
only, also when the audit trail wrapped it."""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import IntegrityError, OperationalError

from labvault.core.audit.events import AuditUnavailableError
from labvault.core.db import is_sqlite_busy


def _wrapped(inner: Exception) -> AuditUnavailableError:
    try:
        try:
            raise inner
        except Exception as exc:
            raise AuditUnavailableError("refused") from exc
    except AuditUnavailableError as outer:
        return outer


def test_a_locked_database_is_busy_even_wrapped() -> None:
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    assert is_sqlite_busy(locked)
    assert is_sqlite_busy(_wrapped(locked))


def test_other_errors_are_not() -> None:
    missing = OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x"))
    duplicate = IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint"))
    assert not is_sqlite_busy(missing)
    assert not is_sqlite_busy(_wrapped(duplicate))
    assert not is_sqlite_busy(ValueError("database is locked"))
