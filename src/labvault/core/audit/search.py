"""Searching the log for an investigation: who did what to whom, when."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.core.audit.actions import TAG_PATTERN, AuditAction
from labvault.core.audit.models import AuditEvent, from_micros, to_micros


class SearchError(ValueError):
    """A filter that cannot be applied as given."""


def action_filter(action: str) -> tuple[str, bool]:
    """``patient:record:read`` (exact) or ``patient:*`` / ``patient:record:*`` (a prefix)."""
    if action.endswith(":*"):
        prefix = action[:-1]
        if not any(tag.value.startswith(prefix) for tag in AuditAction):
            raise SearchError(f"no registered action starts with {prefix!r}")
        return prefix, True
    if not TAG_PATTERN.fullmatch(action) or action not in {a.value for a in AuditAction}:
        raise SearchError(f"{action!r} is not a registered action (area:object:action)")
    return action, False


def search_events(
    session: Session,
    *,
    actor: str | None = None,
    patient: uuid.UUID | None = None,
    action: str | None = None,
    tenant: uuid.UUID | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Matching events, oldest first, as JSON-ready dicts."""
    query = select(AuditEvent)
    if actor is not None:
        query = query.where(AuditEvent.actor_id == actor)
    if patient is not None:
        query = query.where(AuditEvent.target_type == "patient", AuditEvent.target_id == patient)
    if action is not None:
        value, is_prefix = action_filter(action)
        if is_prefix:
            query = query.where(AuditEvent.action.startswith(value, autoescape=True))
        else:
            query = query.where(AuditEvent.action == value)
    if tenant is not None:
        query = query.where(AuditEvent.tenant_id == tenant)
    if since is not None:
        query = query.where(AuditEvent.occurred_us >= to_micros(since))
    if until is not None:
        query = query.where(AuditEvent.occurred_us < to_micros(until))
    query = query.order_by(AuditEvent.occurred_us, AuditEvent.id)
    if limit is not None:
        query = query.limit(limit)
    for event in session.scalars(query.execution_options(yield_per=1000)):
        yield event_document(event)


def event_document(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "seq": event.seq,
        "time": from_micros(event.occurred_us).isoformat().replace("+00:00", "Z"),
        "tenant_id": _str(event.tenant_id),
        "actor_kind": event.actor_kind,
        "actor_id": event.actor_id,
        "actor_role": event.actor_role,
        "actor_site_id": _str(event.actor_site_id),
        "action": event.action,
        "target_type": event.target_type,
        "target_id": _str(event.target_id),
        "purpose": event.purpose,
        "outcome": event.outcome,
        "request_id": event.request_id,
        "client_hash": event.client_hash,
    }


def _str(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)
