"""Read-budget counter stores shared by every worker: the database (embedded default) and
Redis (production). Both keep, per principal, each patient's keyed digest with the time of
its last read, and charge a request atomically (see :class:`~.budgets.BudgetStore`).

Database
    PostgreSQL: the ``read_budget_reads`` table, in a transaction of its own (the caller's
    is not touched), serialised per principal by a transaction-level advisory lock.
    SQLite: the same table in a SIDE FILE next to the database (``budgets.sqlite3``): the
    caller's transaction usually holds SQLite's single write lock when the guard runs (it
    has just recorded its audit events), so a second writer on the main file would wait for
    it forever. Writers of the side file take its lock at BEGIN (``BEGIN IMMEDIATE``), so
    workers of one machine share one exact count.
Redis
    One sorted set per principal (member: digest, score: last read in ms) and one Lua
    script that purges, counts every window, and adds, atomically (Redis runs a script
    alone). The key expires 30 days after the last read.

Rows older than the longest window are purged as each principal is charged (and by
:meth:`DatabaseBudgetStore.purge` for principals that stopped reading).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    Column,
    Engine,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Uuid,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from labvault.core import tenancy
from labvault.core.db import UTCDateTime
from labvault.security.budget_models import ReadBudgetRead
from labvault.security.budgets import (
    MONTH,
    WINDOWS,
    BudgetLimits,
    BudgetStore,
    Decision,
    MemoryBudgetStore,
    Window,
    decide,
)

if TYPE_CHECKING:
    from labvault.core.config import Settings

SIDE_FILE = "budgets.sqlite3"
PURGE_TENANT_EVERY = 256
SOCKET_TIMEOUT = 1.0
"""Seconds a Redis call may take before the read is refused (no count, no read)."""
"""One charge in this many (at random) also purges the tenant's rows older than 30 days."""

_side_metadata = MetaData()
_SIDE_READS = Table(
    "read_budget_reads",
    _side_metadata,
    Column("id", Uuid(), primary_key=True),
    Column("tenant_id", Uuid(), nullable=False),
    Column("principal_key", String(96), nullable=False),
    Column("subject_digest", LargeBinary(), nullable=False),
    Column("last_read_at", UTCDateTime(), nullable=False),
    Index("uq_side_reads", "tenant_id", "principal_key", "subject_digest", unique=True),
    Index("ix_side_reads_principal_last", "tenant_id", "principal_key", "last_read_at"),
    Index("ix_side_reads_last_read_at", "last_read_at"),
)
"""The side file's table: the main table's columns, without the foreign key to a tenant
table that lives in another file."""


_ADVISORY = text("SELECT pg_advisory_xact_lock(:key)")


def _lock_key(tenant_id: uuid.UUID, principal_key: str) -> int:
    digest = hashlib.sha256(tenant_id.bytes + principal_key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class DatabaseBudgetStore:
    """Counters in a database table; exact across every worker that uses the database."""

    def __init__(self, engine: Engine, *, side_file: bool | None = None) -> None:
        """``engine``: the application's (PostgreSQL), or a SQLite engine whose file the
        side file goes next to (``side_file`` defaults to True on SQLite)."""
        self._sqlite = engine.dialect.name == "sqlite"
        if side_file is None:
            side_file = self._sqlite
        if side_file:
            self._engine = _side_engine(engine)
            self._table = _SIDE_READS
            self._owns_engine = True
        else:
            self._engine = engine
            self._table = cast(Table, ReadBudgetRead.__table__)
            self._owns_engine = False
        self._sql = self._statements()

    @property
    def engine(self) -> Engine:
        return self._engine

    def _statements(self) -> dict[str, Any]:
        """Built once: a charge runs four statements, and building them costs more than
        running them on SQLite."""
        reads = self._table
        mine = (reads.c.tenant_id == bindparam("tenant")) & (
            reads.c.principal_key == bindparam("principal")
        )
        counts = select(
            *(
                func.coalesce(
                    func.sum(case((reads.c.last_read_at > bindparam(f"cut{i}"), 1), else_=0)), 0
                )
                for i in range(len(WINDOWS))
            )
        ).where(mine)
        insert = pg_insert if self._engine.dialect.name == "postgresql" else sqlite_insert
        upsert = insert(reads)
        upsert = upsert.on_conflict_do_update(
            index_elements=["tenant_id", "principal_key", "subject_digest"],
            set_={"last_read_at": upsert.excluded.last_read_at},
        )
        return {
            "purge": delete(reads).where(mine, reads.c.last_read_at <= bindparam("oldest")),
            "purge_tenant": delete(reads).where(
                reads.c.tenant_id == bindparam("tenant"),
                reads.c.last_read_at <= bindparam("oldest"),
            ),
            "counts": counts,
            "seen": select(reads.c.subject_digest, reads.c.last_read_at).where(
                mine, reads.c.subject_digest.in_(bindparam("digests", expanding=True))
            ),
            "upsert": upsert,
        }

    def charge(
        self,
        tenant_id: uuid.UUID,
        principal_key: str,
        subjects: Sequence[bytes],
        now: dt.datetime,
        limits: BudgetLimits,
    ) -> Decision:
        wanted = list(dict.fromkeys(subjects))
        now = now.astimezone(dt.UTC)
        sql = self._sql
        cutoffs = {w: now - dt.timedelta(seconds=w.seconds) for w in WINDOWS}
        who = {"tenant": tenant_id, "principal": principal_key}
        with self._engine.begin() as connection:
            if self._engine.dialect.name == "postgresql":
                tenancy.apply(connection, tenant_id)  # row-level security
                # A crash may lose the last milliseconds of charges (an under-count of a
                # few reads); a flush to disk per read would halve the throughput.
                connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
                connection.execute(_ADVISORY, {"key": _lock_key(tenant_id, principal_key)})
            connection.execute(sql["purge"], {**who, "oldest": cutoffs[MONTH]})
            if secrets.randbelow(PURGE_TENANT_EVERY) == 0:
                # Now and then the whole tenant's old rows too: principals that stopped
                # reading are not charged again, and their list must not outlive 30 days.
                connection.execute(
                    sql["purge_tenant"], {"tenant": tenant_id, "oldest": cutoffs[MONTH]}
                )
            counts = connection.execute(
                sql["counts"], {**who, **{f"cut{i}": cutoffs[w] for i, w in enumerate(WINDOWS)}}
            ).one()
            used = dict(zip(WINDOWS, (int(c) for c in counts), strict=True))
            seen: dict[bytes, dt.datetime] = {}
            for start in range(0, len(wanted), 500):
                for digest, last in connection.execute(
                    sql["seen"], {**who, "digests": wanted[start : start + 500]}
                ):
                    seen[bytes(digest)] = _utc(last)

            def last_reads(window: Window) -> tuple[int, int]:
                cutoff = cutoffs[window]
                new = sum(1 for s in wanted if s not in seen or seen[s] <= cutoff)
                return used[window], new

            decision = decide(limits, now.timestamp(), last_reads)
            if decision.allowed and wanted:
                connection.execute(
                    sql["upsert"],
                    [
                        {
                            "id": uuid.uuid4(),
                            "tenant_id": tenant_id,
                            "principal_key": principal_key,
                            "subject_digest": digest,
                            "last_read_at": now,
                        }
                        for digest in wanted
                    ],
                )
            return decision

    def purge(self, tenant_id: uuid.UUID, now: dt.datetime) -> int:
        """Drop a tenant's reads older than the longest window; how many went."""
        reads = self._table
        cutoff = now - dt.timedelta(seconds=MONTH.seconds)
        info = tenancy.session_info(tenant_id)
        with Session(self._engine, info=info) as session, session.begin():
            result = session.execute(
                delete(reads).where(reads.c.tenant_id == tenant_id, reads.c.last_read_at <= cutoff)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._owns_engine:
            self._engine.dispose()


def _side_engine(main: Engine) -> Engine:
    database = main.url.database
    if not database or database == ":memory:":
        raise ValueError("the SQLite budget store needs the database to be a file")
    path = Path(database).parent / SIDE_FILE
    engine = create_engine(f"sqlite:///{path}", hide_parameters=True)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, explicitly
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: exact counts

    _side_metadata.create_all(engine)
    path.chmod(0o600)
    return engine


# --- Redis -----------------------------------------------------------------------------------

_CHARGE = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local longest = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - longest)
local windows = 3
for w = 1, windows do
  local cutoff = now - tonumber(ARGV[2 * w])
  local limit = tonumber(ARGV[2 * w + 1])
  local used = redis.call('ZCOUNT', key, '(' .. cutoff, '+inf')
  local new = 0
  for i = 2 * windows + 2, #ARGV do
    local score = redis.call('ZSCORE', key, ARGV[i])
    if (not score) or tonumber(score) <= cutoff then new = new + 1 end
  end
  if used + new > limit then return {0, w, used, new, limit} end
end
for i = 2 * windows + 2, #ARGV do
  redis.call('ZADD', key, now, ARGV[i])
end
redis.call('PEXPIRE', key, longest)
return {1, 0, 0, 0, 0}
"""


class RedisBudgetStore:
    """Counters in Redis: one budget for every worker of every machine."""

    def __init__(self, url: str, *, prefix: str = "labvault:budget") -> None:
        import redis

        # A stalled Redis must not hang the request: it fails (closed) within the timeout.
        self._client = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
        )
        self._script = self._client.register_script(_CHARGE)
        self._prefix = prefix

    def charge(
        self,
        tenant_id: uuid.UUID,
        principal_key: str,
        subjects: Sequence[bytes],
        now: dt.datetime,
        limits: BudgetLimits,
    ) -> Decision:
        wanted = list(dict.fromkeys(subjects))
        now_ms = int(now.timestamp() * 1000)
        args: list[Any] = [now_ms]
        for window, limit in limits.by_window():
            args += [window.seconds * 1000, limit]
        key = f"{self._prefix}:{tenant_id}:{principal_key}"
        allowed, index, used, new, limit = (
            int(v) for v in self._script(keys=[key], args=args + wanted)
        )
        if allowed:
            return Decision(True)
        return Decision(False, WINDOWS[index - 1], limit, used, new)

    def close(self) -> None:
        self._client.close()


def load_budget_store(settings: Settings, engine: Engine) -> BudgetStore:
    """The store ``LABVAULT_GUARD_BUDGET_STORE`` names."""
    spec = settings.guard_budget_store
    if spec == "memory":
        return MemoryBudgetStore()
    if spec.startswith(("redis://", "rediss://")):
        return RedisBudgetStore(spec)
    return DatabaseBudgetStore(engine)


__all__ = ["DatabaseBudgetStore", "RedisBudgetStore", "load_budget_store"]
