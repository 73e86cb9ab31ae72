"""Row-level primitives of blind-index rotation, shared by the packages that own the rows.

Only the package that owns a table may decrypt its rows (patients above all), so each one
plans its own re-indexing; this module finds the rows left behind and writes the plans
back without overwriting a concurrent edit. The orchestration is in ``index_rotation``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import CursorResult, Table, func, select, update
from sqlalchemy.orm import Session

REINDEX_PURPOSE = "keys:rotate-index"
"""Why the rotation job opens data keys: recorded on every read it causes."""


@dataclass(frozen=True, slots=True, repr=False)
class Reindex:
    """One row's blind indexes as read (``old``) and as recomputed (``new``).

    ``new`` names every index column the row owns plus ``index_generation``. Its repr shows
    the row id only: digests are not for logs either.
    """

    row_id: uuid.UUID
    old_generation: int
    old: Mapping[str, bytes | None]
    new: Mapping[str, bytes | int | None]

    def __repr__(self) -> str:
        return f"Reindex(row={self.row_id}, from_generation={self.old_generation})"


def pending_ids(
    session: Session,
    table: Table,
    tenant_id: uuid.UUID,
    generation: int,
    *,
    after: uuid.UUID | None,
    limit: int,
) -> list[uuid.UUID]:
    """Ids of the tenant's rows indexed before ``generation``, after ``after``, in id order."""
    query = select(table.c.id).where(
        table.c.tenant_id == tenant_id, table.c.index_generation < generation
    )
    if after is not None:
        query = query.where(table.c.id > after)
    return list(session.scalars(query.order_by(table.c.id).limit(limit)))


def count_pending(session: Session, table: Table, tenant_id: uuid.UUID, generation: int) -> int:
    query = select(func.count()).where(
        table.c.tenant_id == tenant_id, table.c.index_generation < generation
    )
    return int(session.scalar(query.select_from(table)) or 0)


def apply_reindexes(
    session: Session, table: Table, tenant_id: uuid.UUID, plans: Sequence[Reindex]
) -> int:
    """Write each plan back if its row is still as it was read; how many rows moved.

    The UPDATE requires the generation and every index value read: a row that the
    application changed meanwhile (its writes always use the newest generation) is left
    as the application wrote it, and a row still behind is picked up by a later batch.
    """
    moved = 0
    for plan in plans:
        unchanged = [
            table.c[column].is_not_distinct_from(value) for column, value in plan.old.items()
        ]
        statement = (
            update(table)
            .where(
                table.c.tenant_id == tenant_id,
                table.c.id == plan.row_id,
                table.c.index_generation == plan.old_generation,
                *unchanged,
            )
            .values(dict(plan.new))
        )
        result = cast(CursorResult[object], session.execute(statement))
        moved += result.rowcount
    return moved
