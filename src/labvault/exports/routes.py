"""Exports over HTTP: the desk's day schedule as CSV, for receptionists, after a step-up.

- Page: ``POST /accueil/planning/export.csv`` (the form "Exporter la liste du jour (CSV)" of
  the planning, with the session's CSRF token); without a recent step-up the browser goes
  to ``/compte/confirmer-identite`` and back to the planning.
- API: ``POST /api/v1/desk/schedule/export`` (``site_id``, ``day`` in the query); without a
  recent step-up 403 ``step_up_required``.

Everybody else gets the uniform 404 before the step-up is even asked for (I7). The step-up
is checked before anything is read. Answers are ``text/csv`` attachments with a neutral
name and ``Cache-Control: no-store``; a read budget the export would exceed refuses it
(429, nothing recorded), like any other read.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from labvault.accounts.callers import (
    OBJECT_PROBLEMS,
    STEP_UP_PROBLEMS,
    Caller,
    CallerNotFoundError,
    CallerRefusedError,
    problem,
    run_as_caller,
    run_page_as_caller,
)
from labvault.accounts.forms import FormText, redirect_to
from labvault.core.web.problems import problem_response
from labvault.desk.routes import RECEPTION, desk_of, parse_id
from labvault.desk.services import DeskInputError, SiteChoice, parse_day
from labvault.exports.fingerprints import FingerprintKeys
from labvault.exports.services import CsvExport, ScheduleExporter

__all__ = ["api_router", "page_router"]

page_router = APIRouter(prefix="/accueil", include_in_schema=False)
api_router = APIRouter(prefix="/api/v1/desk", tags=["desk"])

PLANNING_PATH: Final = "/accueil/planning"


def _csv(export: CsvExport) -> Response:
    return Response(
        export.content,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{export.filename}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _where(caller: Caller, site: str, day: str) -> tuple[ScheduleExporter, SiteChoice, dt.date]:
    """The caller's exporter (receptionists only, else the uniform 404), site and day."""
    desk = desk_of(caller, RECEPTION)
    exporter = ScheduleExporter(
        caller.session,
        caller.keyring(),
        desk,
        FingerprintKeys(caller.runtime.derived_keys),
        staff_id=caller.staff_id,
        account_id=caller.account.id,
        clock=lambda: caller.now,
    )
    chosen = desk.site(parse_id(site[:64], "site"))
    when = parse_day(day[:32], today=desk.today(chosen))
    return exporter, chosen, when


@page_router.post("/planning/export.csv", name="desk_planning_export")
def planning_export(
    request: Request, site: FormText = "", jour: FormText = "", csrf_token: FormText = ""
) -> Response:
    """The day's list of the planning as a CSV file (receptionists, after a step-up)."""

    def run(caller: Caller) -> Response:
        desk_of(caller, RECEPTION)  # the 404 before the step-up (I7)
        caller.require_step_up()
        try:
            exporter, chosen, when = _where(caller, site, jour)
            export = exporter.schedule_csv(chosen, when)
        except DeskInputError:
            # The planning shows the day (or what is wrong with it); nothing exported.
            return redirect_to(request, PLANNING_PATH, site=site[:64], jour=jour[:32])
        return _csv(export)

    return run_page_as_caller(request, run, csrf_token=csrf_token, step_up_return=PLANNING_PATH)


_INVALID = problem("Invalid input: `detail` in French, `field` names the field in error.")


@api_router.post(
    "/schedule/export",
    responses={
        **OBJECT_PROBLEMS,
        **STEP_UP_PROBLEMS,
        200: {"content": {"text/csv": {}}, "description": "The CSV file."},
        422: _INVALID,
    },
)
def desk_schedule_export(
    request: Request,
    site_id: Annotated[str | None, Query(max_length=64, description="Default: first site")] = None,
    day: Annotated[
        str | None, Query(max_length=32, description="YYYY-MM-DD, the site's local day")
    ] = None,
) -> Response:
    """The day's schedule of one of the caller's sites as CSV, with fingerprint rows
    (receptionists; a recent step-up, else 403 ``step_up_required``). Recorded and audited
    (``export:csv:create``) and counted against the caller's read budget."""

    def run(caller: Caller) -> Response:
        if not caller.is_staff or caller.role not in RECEPTION:
            raise CallerNotFoundError
        caller.require_step_up()
        try:
            exporter, chosen, when = _where(caller, site_id or "", day or "")
            export = exporter.schedule_csv(chosen, when)
        except DeskInputError as exc:
            raise CallerRefusedError(
                problem_response(422, detail=str(exc), field=exc.field, code="invalid")
            ) from None
        return _csv(export)

    answer = run_as_caller(request, run, object_route=True)
    assert isinstance(answer, Response)
    return answer
