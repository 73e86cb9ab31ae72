"""Site schedules and closures API for organization admins, under
``/api/v1/admin/sites/{site_id}/...``.

The rules of ``labvault.catalog.routes``: organization admins only (anyone else, and a site
of another organization, the uniform 404), the service's French message in a 422 with
nothing written, 409 for a closure identical to one the site already has, every change
audited by :class:`labvault.schedules.services.SiteScheduleService`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from labvault.accounts.callers import Caller, CallerNotFoundError, CallerRefusedError
from labvault.catalog.routes import (
    ADMIN_PROBLEMS,
    WRITE_PROBLEMS,
    RawBody,
    admin_call,
    documented,
    input_error,
    json_of,
    parse_body,
    parse_id,
)
from labvault.core.web.problems import problem_response
from labvault.organizations.models import Site
from labvault.schedules.models import SiteClosure
from labvault.schedules.services import ScheduleError, SiteScheduleService, _date

__all__ = ["closure_of", "router", "schedule_values", "site_of"]

router = APIRouter(prefix="/api/v1/admin/sites", tags=["site schedule administration"])

DUPLICATE_CLOSURE = "Cette fermeture existe déjà pour ce site."


class ScheduleOut(BaseModel):
    site_id: uuid.UUID
    timezone: str
    configured: bool = Field(description="false while the site has no schedule (no slots)")
    opening_hours: dict[str, list[list[str]]] = Field(
        description='{"mon": [["07:00", "12:00"], ...], ...}, site local time'
    )
    slot_minutes: int | None
    sampling_boxes: int | None
    walk_in_boxes: int | None


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    opening_hours: dict[str, Any] = Field(
        description='{"mon": [["07:00", "12:00"], ["14:00", "18:00"]], ...}; a missing day '
        "is closed"
    )
    slot_minutes: int | str
    sampling_boxes: int | str
    walk_in_boxes: int | str = 0


class ClosureOut(BaseModel):
    id: uuid.UUID
    site_id: uuid.UUID
    starts_on: dt.date
    ends_on: dt.date
    reason: str


class ClosureIn(BaseModel):
    """Whole local days, ``starts_on`` to ``ends_on`` inclusive (AAAA-MM-JJ)."""

    model_config = ConfigDict(extra="forbid")

    starts_on: str = Field(max_length=32)
    ends_on: str = Field(max_length=32)
    reason: str = Field(max_length=400)


def site_of(caller: Caller, site_id: uuid.UUID) -> Site:
    """The organization's site, or the uniform 404 (absent and foreign look the same)."""
    site = caller.session.scalar(
        select(Site).where(Site.tenant_id == caller.tenant_id, Site.id == site_id)
    )
    if site is None:
        raise CallerNotFoundError
    return site


def closure_of(caller: Caller, site: Site, closure_id: uuid.UUID) -> SiteClosure:
    closure = caller.session.scalar(
        select(SiteClosure).where(
            SiteClosure.tenant_id == caller.tenant_id,
            SiteClosure.site_id == site.id,
            SiteClosure.id == closure_id,
        )
    )
    if closure is None:
        raise CallerNotFoundError
    return closure


def service_of(caller: Caller) -> SiteScheduleService:
    return SiteScheduleService(caller.session, caller.keyring().audit, caller.tenant_id)


def schedule_values(caller: Caller, site: Site) -> dict[str, Any]:
    schedule = service_of(caller).schedule(site.id)
    return {
        "site_id": str(site.id),
        "timezone": site.timezone,
        "configured": schedule is not None,
        "opening_hours": dict(site.opening_hours or {}),
        "slot_minutes": None if schedule is None else schedule.slot_minutes,
        "sampling_boxes": None if schedule is None else schedule.sampling_boxes,
        "walk_in_boxes": None if schedule is None else schedule.walk_in_boxes,
    }


def closure_out(closure: SiteClosure) -> dict[str, Any]:
    return {
        "id": str(closure.id),
        "site_id": str(closure.site_id),
        "starts_on": closure.starts_on.isoformat(),
        "ends_on": closure.ends_on.isoformat(),
        "reason": closure.reason,
    }


def is_duplicate(caller: Caller, site: Site, starts_on: object, ends_on: object) -> bool:
    """Whether the site already has this very closure (same first and last day)."""
    try:
        first, last = _date("début", starts_on), _date("fin", ends_on)
    except ScheduleError:
        return False  # the service refuses it with its own message
    found = caller.session.scalar(
        select(SiteClosure.id).where(
            SiteClosure.tenant_id == caller.tenant_id,
            SiteClosure.site_id == site.id,
            SiteClosure.starts_on == first,
            SiteClosure.ends_on == last,
        )
    )
    return found is not None


@router.get("/{site_id}/schedule", response_model=ScheduleOut, responses=ADMIN_PROBLEMS)
def get_schedule(site_id: str, request: Request) -> Response:
    """The site's opening hours, slot length and boxes (``configured`` false: none yet)."""

    def read(caller: Caller) -> dict[str, Any]:
        site = site_of(caller, parse_id(site_id))
        try:
            return schedule_values(caller, site)
        except ScheduleError as error:
            raise input_error(error.message) from None

    return json_of(admin_call(request, "site", read))


@router.put(
    "/{site_id}/schedule",
    response_model=ScheduleOut,
    responses=ADMIN_PROBLEMS,
    openapi_extra=documented(ScheduleIn),
)
def put_schedule(site_id: str, request: Request, raw: RawBody = None) -> Response:
    """Set opening hours, slot minutes, boxes and walk-in boxes, all or nothing."""

    def write(caller: Caller) -> dict[str, Any]:
        site = site_of(caller, parse_id(site_id))
        body = parse_body(ScheduleIn, raw)
        try:
            service_of(caller).set_schedule(
                site.id,
                opening_hours=body.opening_hours,
                slot_minutes=body.slot_minutes,
                sampling_boxes=body.sampling_boxes,
                walk_in_boxes=body.walk_in_boxes,
            )
        except ScheduleError as error:
            raise input_error(error.message) from None
        return schedule_values(caller, site)

    return json_of(admin_call(request, "site", write))


@router.get("/{site_id}/closures", response_model=list[ClosureOut], responses=ADMIN_PROBLEMS)
def list_closures(site_id: str, request: Request) -> Response:
    """The site's closures, past ones included, by first day."""

    def read(caller: Caller) -> list[dict[str, Any]]:
        site = site_of(caller, parse_id(site_id))
        return [closure_out(c) for c in service_of(caller).closures(site.id)]

    return json_of(admin_call(request, "site", read))


@router.post(
    "/{site_id}/closures",
    status_code=201,
    response_model=ClosureOut,
    responses=WRITE_PROBLEMS,
    openapi_extra=documented(ClosureIn),
)
def add_closure(site_id: str, request: Request, raw: RawBody = None) -> Response:
    """Close the site whole days (no slot is offered on them)."""

    def add(caller: Caller) -> dict[str, Any]:
        site = site_of(caller, parse_id(site_id))
        body = parse_body(ClosureIn, raw)
        if is_duplicate(caller, site, body.starts_on, body.ends_on):
            raise CallerRefusedError(
                problem_response(409, type_="duplicate", detail=DUPLICATE_CLOSURE)
            )
        try:
            closure = service_of(caller).add_closure(
                site.id, starts_on=body.starts_on, ends_on=body.ends_on, reason=body.reason
            )
        except ScheduleError as error:
            raise input_error(error.message) from None
        return closure_out(closure)

    return json_of(admin_call(request, "site", add), 201)


@router.delete(
    "/{site_id}/closures/{closure_id}",
    status_code=204,
    response_class=Response,
    responses=ADMIN_PROBLEMS,
)
def remove_closure(site_id: str, closure_id: str, request: Request) -> Response:
    """Reopen the days of a closure."""

    def remove(caller: Caller) -> None:
        site = site_of(caller, parse_id(site_id))
        closure = closure_of(caller, site, parse_id(closure_id))
        service_of(caller).remove_closure(closure.id)

    outcome = admin_call(request, "closure", remove)
    return outcome if isinstance(outcome, Response) else Response(status_code=204)
