"""French pages for the organization admin's sites and their planning.

``/administration/sites`` lists the organization's sites, each with a link to
``/administration/sites/{site_id}/planning``: the schedule form (opening hours per day,
slot length, sampling boxes, boxes kept for walk-ins) and the closures (list, add, remove).
The rules of ``labvault.catalog.pages``: organization admins only (anyone else signed in,
and a site of another organization, "page introuvable"), the service's French message tied
to its field with the form shown again (422) and nothing written, POST-redirect-GET.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.responses import Response

from labvault.accounts.callers import Caller, CallerNotFoundError
from labvault.accounts.forms import GENERAL, FormText, redirect_to, render_page
from labvault.catalog.pages import admin_page, csrf_of
from labvault.organizations.models import Site
from labvault.schedules.hours import WEEKDAY_LABELS, WEEKDAYS, OpeningHours
from labvault.schedules.models import SiteClosure
from labvault.schedules.routes import closure_of, is_duplicate, service_of, site_of
from labvault.schedules.services import ScheduleError

__all__ = ["SITES_PATH", "router"]

router = APIRouter(prefix="/administration", include_in_schema=False)

SITES_PATH: Final = "/administration/sites"
SITES_TEMPLATE: Final = "administration/sites.html"
PLANNING_TEMPLATE: Final = "administration/planning.html"
MAX_FIELD = 400
SPAN = re.compile(r"\s*([0-9]{1,2}:[0-9]{2})\s*[-\u2013à]\s*([0-9]{1,2}:[0-9]{2})\s*")

NOTICES: Final = {
    "planning-enregistre": "Le planning du site est enregistré.",
    "fermeture-ajoutee": "La fermeture est enregistrée : aucun créneau n'est proposé ces jours-là.",
    "fermeture-supprimee": "La fermeture est supprimée.",
}
_SCHEDULE_FIELDS: Final = {
    "Durée d'un créneau": "slot_minutes",
    "Nombre de box": "sampling_boxes",
    "Box réservés": "walk_in_boxes",
}
_CLOSURE_FIELDS: Final = {
    "Début de la fermeture": "starts_on",
    "Fin de la fermeture": "ends_on",
    "Motif": "reason",
}


def _site_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _hours_text(opening_hours: Mapping[str, Any] | None) -> dict[str, str]:
    """Each day's intervals as the form shows them: ``07:00-12:00, 14:00-18:00``."""
    try:
        hours = OpeningHours.parse(dict(opening_hours or {})).to_json()
    except ValueError:
        hours = {}
    return {day: ", ".join(f"{a}-{b}" for a, b in hours.get(day, [])) for day in WEEKDAYS}


def _parse_hours(texts: Mapping[str, str]) -> dict[str, list[list[str]]]:
    """The form's days as the service takes them; :class:`ScheduleError` naming the day."""
    parsed: dict[str, list[list[str]]] = {}
    for day in WEEKDAYS:
        text = texts.get(day, "").strip()
        if not text:
            continue
        spans = []
        for piece in text.split(","):
            match = SPAN.fullmatch(piece)
            if match is None:
                raise ScheduleError(
                    f"Horaires d'ouverture invalides : {WEEKDAY_LABELS[day]} : écrivez les "
                    "plages ainsi : 07:00-12:00, 14:00-18:00."
                )
            spans.append([match.group(1).zfill(5), match.group(2).zfill(5)])
        parsed[day] = spans
    return parsed


def _field_of(message: str, fields: Mapping[str, str]) -> str:
    for day in WEEKDAYS:
        if f": {WEEKDAY_LABELS[day]} :" in message:
            return f"hours-{day}"
    for start, name in fields.items():
        if message.startswith(start):
            return name
    return GENERAL


@router.get("/sites", name="site_administration")
def sites_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        sites = caller.session.scalars(
            select(Site).where(Site.tenant_id == caller.tenant_id).order_by(Site.name)
        )
        service = service_of(caller)
        rows = []
        for site in sites:
            try:
                configured = service.schedule(site.id) is not None
            except ScheduleError:
                configured = False
            rows.append({"id": str(site.id), "name": site.name, "configured": configured})
        return render_page(
            request, SITES_TEMPLATE, {"csrf_token": csrf_of(request, caller), "rows": rows}
        )

    return admin_page(request, "site", show)


def _planning(
    request: Request,
    caller: Caller,
    site: Site,
    *,
    schedule_values: Mapping[str, Any] | None = None,
    closure_values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    notice: str | None = None,
    status: int = 200,
) -> Response:
    service = service_of(caller)
    if schedule_values is None:
        try:
            schedule = service.schedule(site.id)
        except ScheduleError:
            schedule = None
        schedule_values = {
            "hours": _hours_text(site.opening_hours),
            "slot_minutes": "" if schedule is None else str(schedule.slot_minutes),
            "sampling_boxes": "" if schedule is None else str(schedule.sampling_boxes),
            "walk_in_boxes": "0" if schedule is None else str(schedule.walk_in_boxes),
        }
    closures: list[SiteClosure] = service.closures(site.id)
    return render_page(
        request,
        PLANNING_TEMPLATE,
        {
            "csrf_token": csrf_of(request, caller),
            "site": {"id": str(site.id), "name": site.name, "timezone": site.timezone},
            "schedule": schedule_values,
            "days": [(day, WEEKDAY_LABELS[day].capitalize()) for day in WEEKDAYS],
            "closure": closure_values or {},
            "closures": [
                {
                    "id": str(c.id),
                    "starts_on": c.starts_on.strftime("%d/%m/%Y"),
                    "ends_on": c.ends_on.strftime("%d/%m/%Y"),
                    "reason": c.reason,
                }
                for c in closures
            ],
            "notice": notice,
        },
        errors=errors,
        status=status,
    )


def _site(caller: Caller, site_id: uuid.UUID) -> Site:
    return site_of(caller, site_id)


@router.get("/sites/{site_id}/planning", name="site_planning")
def planning_page(site_id: str, request: Request) -> Response:
    notice = NOTICES.get(request.query_params.get("info", ""))

    def show(caller: Caller) -> Response:
        target = _site_id(site_id)
        if target is None:  # a mistyped address: back to the list of sites
            return redirect_to(request, SITES_PATH)
        return _planning(request, caller, _site(caller, target), notice=notice)

    return admin_page(request, "site", show)


@router.post("/sites/{site_id}/planning")
def save_planning(
    site_id: str,
    request: Request,
    hours_mon: FormText = "",
    hours_tue: FormText = "",
    hours_wed: FormText = "",
    hours_thu: FormText = "",
    hours_fri: FormText = "",
    hours_sat: FormText = "",
    hours_sun: FormText = "",
    slot_minutes: FormText = "",
    sampling_boxes: FormText = "",
    walk_in_boxes: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    texts = dict(
        zip(
            WEEKDAYS,
            (hours_mon, hours_tue, hours_wed, hours_thu, hours_fri, hours_sat, hours_sun),
            strict=True,
        )
    )
    hours = {day: text[:MAX_FIELD] for day, text in texts.items()}
    values = {
        "hours": hours,
        "slot_minutes": slot_minutes[:16],
        "sampling_boxes": sampling_boxes[:16],
        "walk_in_boxes": walk_in_boxes[:16] or "0",
    }

    def save(caller: Caller) -> Response:
        target = _site_id(site_id)
        if target is None:
            return redirect_to(request, SITES_PATH)
        site = _site(caller, target)
        try:
            service_of(caller).set_schedule(
                site.id,
                opening_hours=_parse_hours(hours),
                slot_minutes=values["slot_minutes"],
                sampling_boxes=values["sampling_boxes"],
                walk_in_boxes=values["walk_in_boxes"],
            )
        except ScheduleError as error:
            field = _field_of(error.message, _SCHEDULE_FIELDS)
            return _planning(
                request,
                caller,
                site,
                schedule_values=values,
                errors={field: error.message},
                status=422,
            )
        return redirect_to(request, f"{SITES_PATH}/{site.id}/planning", info="planning-enregistre")

    return admin_page(request, "site", save, csrf_token=csrf_token)


@router.post("/sites/{site_id}/fermetures")
def add_closure(
    site_id: str,
    request: Request,
    starts_on: FormText = "",
    ends_on: FormText = "",
    reason: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    values = {"starts_on": starts_on[:32], "ends_on": ends_on[:32], "reason": reason[:MAX_FIELD]}

    def add(caller: Caller) -> Response:
        target = _site_id(site_id)
        if target is None:
            return redirect_to(request, SITES_PATH)
        site = _site(caller, target)
        if is_duplicate(caller, site, values["starts_on"], values["ends_on"]):
            message = "Cette fermeture existe déjà pour ce site."
            return _planning(
                request,
                caller,
                site,
                closure_values=values,
                errors={GENERAL: message},
                status=409,
            )
        try:
            service_of(caller).add_closure(
                site.id,
                starts_on=values["starts_on"],
                ends_on=values["ends_on"],
                reason=values["reason"],
            )
        except ScheduleError as error:
            field = _field_of(error.message, _CLOSURE_FIELDS)
            return _planning(
                request,
                caller,
                site,
                closure_values=values,
                errors={field: error.message},
                status=422,
            )
        return redirect_to(request, f"{SITES_PATH}/{site.id}/planning", info="fermeture-ajoutee")

    return admin_page(request, "site", add, csrf_token=csrf_token)


@router.post("/sites/{site_id}/fermetures/suppression")
def remove_closure(
    site_id: str, request: Request, closure_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    def remove(caller: Caller) -> Response:
        target = _site_id(site_id)
        if target is None:
            return redirect_to(request, SITES_PATH)
        site = _site(caller, target)
        if not closure_id:
            message = "Choisissez la fermeture à supprimer."
            return _planning(request, caller, site, errors={GENERAL: message}, status=422)
        closure_uuid = _site_id(closure_id)
        if closure_uuid is None:
            raise CallerNotFoundError
        closure = closure_of(caller, site, closure_uuid)
        service_of(caller).remove_closure(closure.id)
        return redirect_to(request, f"{SITES_PATH}/{site.id}/planning", info="fermeture-supprimee")

    return admin_page(request, "closure", remove, csrf_token=csrf_token)
