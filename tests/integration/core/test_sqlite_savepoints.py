"""A unit of work that reads inside a savepoint, then writes, on the SQLite default.

pysqlite sends no BEGIN before a SAVEPOINT: the savepoint used to open a deferred
transaction whose reads pinned a WAL snapshot, and whose first write then failed at once
("database is locked") if another connection had committed in between. Seen in CI as a
refused booking hold while the app's audit checkpointer wrote. The savepoint's transaction
now starts with BEGIN IMMEDIATE: the other writer waits instead.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from labvault.core.db import create_db_engine, make_session_factory, transaction


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "db" / "labvault.sqlite3"
    engine = create_db_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counters (name TEXT PRIMARY KEY, value INT)"))
        connection.execute(text("INSERT INTO counters VALUES ('a', 0), ('b', 0)"))
    engine.dispose()
    return path


def _other_writer(path: Path) -> sqlite3.Connection:
    """Another process's connection: it gives up at once when the database is locked."""
    return sqlite3.connect(path, timeout=0.05, isolation_level=None)


def test_a_write_after_reads_in_a_savepoint_waits_for_no_one_and_is_not_refused(
    database: Path,
) -> None:
    engine = create_db_engine(f"sqlite:///{database}")
    other = _other_writer(database)
    try:
        with transaction(make_session_factory(engine)) as session, session.begin_nested():
            assert (
                session.execute(text("SELECT value FROM counters WHERE name = 'a'")).scalar() == 0
            )
            # Another connection tries to commit between the read and the write: it must
            # wait for this unit of work (here: give up), not make this one fail.
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("UPDATE counters SET value = value + 1 WHERE name = 'b'")
            session.execute(text("UPDATE counters SET value = value + 1 WHERE name = 'a'"))
        other.execute("UPDATE counters SET value = value + 1 WHERE name = 'b'")  # now it can
        assert dict(other.execute("SELECT name, value FROM counters").fetchall()) == {
            "a": 1,
            "b": 1,
        }
    finally:
        other.close()
        engine.dispose()


def test_a_savepoint_after_a_write_joins_the_transaction_already_open(database: Path) -> None:
    """No second BEGIN: a savepoint inside a transaction that has written is just nested."""
    engine = create_db_engine(f"sqlite:///{database}")
    try:
        with transaction(make_session_factory(engine)) as session:
            session.execute(text("UPDATE counters SET value = 5 WHERE name = 'a'"))
            with session.begin_nested():
                session.execute(text("UPDATE counters SET value = 6 WHERE name = 'b'"))
            nested = session.begin_nested()
            session.execute(text("UPDATE counters SET value = 7 WHERE name = 'b'"))
            nested.rollback()
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT name, value FROM counters ORDER BY name"))
            assert {name: value for name, value in rows} == {"a": 5, "b": 6}
    finally:
        engine.dispose()
