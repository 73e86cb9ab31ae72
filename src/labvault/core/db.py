"""Database engine, sessions and the column types shared by every feature's models.

The same models and migrations run on SQLite (embedded default) and PostgreSQL >= 15.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import DateTime, Engine, LargeBinary, MetaData, Uuid, create_engine, event
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from labvault.core import tenancy  # noqa: F401 - registers the sessions' tenant binding

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive strings)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class RawBytes(TypeDecorator[bytes]):
    """Binary values (ciphertexts, digests, wrapped keys) handed to the driver as they are.

    sqlite3 and psycopg both take ``bytes``; skipping LargeBinary's per-value wrapping
    matters when a bulk import binds millions of them.
    """

    impl = LargeBinary
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        uuid.UUID: Uuid(as_uuid=True),
        dt.datetime: UTCDateTime(),
    }


class HasRandomId:
    """Random UUIDv4 primary key: never sequential, never guessable (invariant I7)."""

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine with the per-backend settings labvault relies on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = create_engine(url, echo=echo, hide_parameters=True)
        event.listen(engine, "connect", _configure_sqlite)
        event.listen(engine, "savepoint", _begin_immediately)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, hide_parameters=True)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    # Blind-index lookups and bulk inserts touch random B-tree pages: keep many in memory.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA mmap_size=268435456")
    # Checkpoint every ~40 MB of WAL instead of 4 MB: index pages touched by many batches
    # of a bulk import are then written back once, not once per batch.
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    # Freed pages are zeroed so that deleted (crypto-shredded) keys do not linger on disk.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _begin_immediately(connection: Connection, _name: str) -> None:
    """Open the transaction of a first SAVEPOINT with ``BEGIN IMMEDIATE``.

    pysqlite (legacy transaction control) sends no BEGIN before a SAVEPOINT, which then
    opens a deferred transaction: its reads pin a WAL snapshot, and its first write fails at
    once with "database is locked" if another connection committed since (SQLite cannot
    upgrade a stale snapshot, and does not wait). Taking the write lock first makes it wait,
    up to ``busy_timeout``, like any writer. Savepoints here always guard writes.
    """
    raw = connection.connection.dbapi_connection
    if raw is not None and not raw.in_transaction:
        raw.execute("BEGIN IMMEDIATE")


def is_sqlite_busy(error: BaseException) -> bool:
    """SQLite's "database is locked", also wrapped (the audit trail turns database errors
    into ``AuditUnavailableError``). In WAL mode a transaction that read first and writes
    later gets it at once, without waiting, when another connection committed in between:
    the whole unit of work may simply run again."""
    seen: BaseException | None = error
    for _ in range(16):
        if seen is None:
            return False
        if isinstance(seen, OperationalError) and "database is locked" in str(seen.orig):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe_database_error(error: SQLAlchemyError) -> str:
    """What went wrong, for an operator, without the driver's message.

    Driver messages may quote row values (PostgreSQL's DETAIL names the duplicate key, here
    a blind index); only the error class and the constraint's name are kept.
    """
    original = getattr(error, "orig", None)
    diagnostic = getattr(original, "diag", None)
    constraint = getattr(diagnostic, "constraint_name", None)
    kind = type(original).__name__ if original is not None else type(error).__name__
    if isinstance(error, IntegrityError):
        where = f" ({constraint})" if constraint else ""
        return f"the database refused the write: a constraint failed{where}"
    if isinstance(error, OperationalError):
        return f"the database is unreachable or refused the operation ({kind})"
    return f"database error ({kind})"


def make_session_factory(
    engine: Engine, info: dict[str, Any] | None = None
) -> sessionmaker[Session]:
    """Sessions on ``engine``; ``info`` carries their tenant binding (see core.tenancy)."""
    return sessionmaker(engine, expire_on_commit=False, info=info or {})


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back everything on any error."""
    with factory() as session, session.begin():
        yield session
