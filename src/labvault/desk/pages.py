"""French pages of the lab desk (``/accueil``), for receptionists and samplers.

``/accueil/planning``: the day's schedule of one of the staff member's sites, with a form
per row for check-in, no-show, done and (receptionists) the identity check.
``/accueil/sans-rendez-vous``: a walk-in registered from the traits on the identity document
(see ``labvault.desk.services``). ``/accueil/tournees``: the day's home visits and, for
receptionists, the assignment of a sampler. Every action is a POST with the session's CSRF
token and answers with a redirect to the page and a fixed notice, or the page again with a
French message; anything unknown or forbidden is the same "page introuvable". Only random
ids and dates ever go into a URL, never a name.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.callers import Caller, run_page_as_caller
from labvault.accounts.forms import GENERAL, FormText, redirect_to, render_page
from labvault.desk.routes import DESK_ROLES, RECEPTION, desk_of, parse_id, parse_walk_in_traits
from labvault.desk.services import (
    DOCUMENT_LABELS,
    DeskInputError,
    DeskService,
    SiteChoice,
    StatusChange,
    parse_day,
)
from labvault.patients.ins import Sex

__all__ = ["router"]

router = APIRouter(prefix="/accueil", include_in_schema=False)

PLANNING_PATH: Final = "/accueil/planning"
WALK_IN_PATH: Final = "/accueil/sans-rendez-vous"
ROUNDS_PATH: Final = "/accueil/tournees"
SESSION_COOKIE: Final = "__Host-labvault-session"

NOTICES: Final = {
    "arrivee": "Arrivée enregistrée.",
    "absence": "Absence enregistrée.",
    "preleve": "Prélèvement noté comme effectué.",
    "identite": "Pièce d'identité enregistrée : le statut de l'identité est à jour.",
    "sans-rendez-vous": "Passage sans rendez-vous enregistré : le patient figure dans le "
    "planning du jour.",
    "affectation": "Préleveur affecté.",
}
IDENTITY_LABELS: Final = {
    "PROV": "Provisoire",
    "RECUP": "Récupérée",
    "VALI": "Validée",
    "QUAL": "Qualifiée",
}
WALK_IN_LABELS: Final = {
    "birth_name": "Nom de naissance",
    "first_name": "Prénom",
    "birth_date": "Date de naissance",
    "nir": "NIR",
    "sex": "Sexe",
}


def _csrf(request: Request, caller: Caller) -> str:
    return caller.service.sessions.csrf_token(request.cookies.get(SESSION_COOKIE, ""))


def _clock_of(site: SiteChoice) -> Callable[[dt.datetime], str]:
    """Times shown in the site's own zone."""
    zone = site.zone

    def show(moment: dt.datetime) -> str:
        return moment.astimezone(zone).strftime("%H:%M")

    return show


def _notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("info", ""))


def _where(desk: DeskService, site: str, day: str) -> tuple[SiteChoice, dt.date, dict[str, str]]:
    """The site and day asked for (bad values: the first site, today, and a message). The
    day is the site's local day."""
    errors: dict[str, str] = {}
    try:
        chosen = desk.site(parse_id(site[:64], "site"))
    except DeskInputError:
        chosen = desk.site(None)
        errors[GENERAL] = "Ce site n'est pas valide : voici le premier de vos sites."
    try:
        when = parse_day(day[:32], today=desk.today(chosen))
    except DeskInputError as exc:
        when = desk.today(chosen)
        errors[GENERAL] = str(exc)
    return chosen, when, errors


def _common(
    request: Request, caller: Caller, desk: DeskService, site: SiteChoice, day: dt.date
) -> dict[str, Any]:
    return {
        "csrf_token": _csrf(request, caller),
        "site": site,
        "sites": desk.sites(),
        "day": day,
        "day_label": day.strftime("%d/%m/%Y"),
        "previous_day": (day - dt.timedelta(days=1)).isoformat(),
        "next_day": (day + dt.timedelta(days=1)).isoformat(),
        "is_receptionist": caller.role in RECEPTION,
        "time": _clock_of(site),
        "zone_name": site.timezone,
    }


# --- the day's schedule -----------------------------------------------------------------------


def _planning(
    request: Request,
    caller: Caller,
    desk: DeskService,
    site: SiteChoice,
    day: dt.date,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    rows = desk.schedule(site.id, day)
    return render_page(
        request,
        "desk/planning.html",
        {
            **_common(request, caller, desk, site, day),
            "rows": rows,
            "identity_labels": IDENTITY_LABELS,
            "documents": DOCUMENT_LABELS,
            "notice": _notice(request),
        },
        errors=errors,
        status=status,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/planning", name="desk_planning")
def planning(request: Request, site: str = "", jour: str = "") -> Response:
    def show(caller: Caller) -> Response:
        desk = desk_of(caller, DESK_ROLES)
        chosen, when, errors = _where(desk, site, jour)
        return _planning(
            request, caller, desk, chosen, when, errors=errors, status=422 if errors else 200
        )

    return run_page_as_caller(request, show)


def _planning_action(
    request: Request,
    csrf_token: str,
    site: str,
    jour: str,
    notice: str,
    act: Callable[[DeskService], object],
    roles: frozenset[str] = DESK_ROLES,
) -> Response:
    """Run ``act`` on the desk, then back to the planning with ``notice``; a refusal the
    staff member can fix shows the planning again with the message (nothing changed)."""

    def run(caller: Caller) -> Response:
        desk = desk_of(caller, roles)
        chosen, when, _ = _where(desk, site, jour)
        try:
            act(desk)
        except DeskInputError as exc:
            status = 409 if getattr(exc, "code", "") == "conflict" else 422
            return _planning(
                request, caller, desk, chosen, when, errors={GENERAL: str(exc)}, status=status
            )
        return redirect_to(
            request, PLANNING_PATH, site=str(chosen.id), jour=when.isoformat(), info=notice
        )

    return run_page_as_caller(request, run, csrf_token=csrf_token)


def _appointment_of(appointment_id: str) -> uuid.UUID:
    target = parse_id(appointment_id[:64], "appointment_id")
    if target is None:
        raise DeskInputError("Choisissez un rendez-vous du planning.", "appointment_id")
    return target


def _status(change: str) -> Callable[[DeskService, str], StatusChange]:
    def act(desk: DeskService, appointment_id: str) -> StatusChange:
        target = _appointment_of(appointment_id)
        if change == "arrivee":
            return desk.check_in(target)
        if change == "absence":
            return desk.no_show(target)
        return desk.finish(target)

    return act


@router.post("/planning/arrivee")
def planning_check_in(
    request: Request,
    appointment_id: FormText = "",
    site: FormText = "",
    jour: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    act = _status("arrivee")
    return _planning_action(
        request, csrf_token, site, jour, "arrivee", lambda desk: act(desk, appointment_id)
    )


@router.post("/planning/absence")
def planning_no_show(
    request: Request,
    appointment_id: FormText = "",
    site: FormText = "",
    jour: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    act = _status("absence")
    return _planning_action(
        request, csrf_token, site, jour, "absence", lambda desk: act(desk, appointment_id)
    )


@router.post("/planning/preleve")
def planning_done(
    request: Request,
    appointment_id: FormText = "",
    site: FormText = "",
    jour: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    act = _status("preleve")
    return _planning_action(
        request, csrf_token, site, jour, "preleve", lambda desk: act(desk, appointment_id)
    )


@router.post("/planning/identite")
def planning_identity(
    request: Request,
    appointment_id: FormText = "",
    document_kind: FormText = "",
    site: FormText = "",
    jour: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    def act(desk: DeskService) -> object:
        return desk.identity_check(_appointment_of(appointment_id), document_kind[:32])

    return _planning_action(request, csrf_token, site, jour, "identite", act, RECEPTION)


# --- walk-ins ---------------------------------------------------------------------------------


def _walk_in_page(
    request: Request,
    caller: Caller,
    desk: DeskService,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    offer_creation: bool = False,
) -> Response:
    site = desk.site(None)
    return render_page(
        request,
        "desk/sans_rendez_vous.html",
        {
            **_common(request, caller, desk, site, desk.today(site)),
            "values": dict(values or {}),
            "labels": WALK_IN_LABELS,
            "offer_creation": offer_creation,
            "sexes": {Sex.FEMALE.value: "Féminin", Sex.MALE.value: "Masculin"},
        },
        errors=errors,
        status=status,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/sans-rendez-vous", name="desk_walk_in")
def walk_in_form(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        return _walk_in_page(request, caller, desk_of(caller, RECEPTION))

    return run_page_as_caller(request, show)


@router.post("/sans-rendez-vous")
def walk_in(
    request: Request,
    site: FormText = "",
    birth_name: FormText = "",
    first_name: FormText = "",
    birth_date: FormText = "",
    nir: FormText = "",
    sex: FormText = "",
    create: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    values = {
        "site": site[:64],
        "birth_name": birth_name[:300],
        "first_name": first_name[:300],
        "birth_date": birth_date[:32],
        "nir": nir[:64],
        "sex": sex[:4],
    }

    def run(caller: Caller) -> Response:
        desk = desk_of(caller, RECEPTION)
        creating = create == "oui"
        try:
            chosen = parse_id(values["site"], "site")
            name, given, born, parsed = parse_walk_in_traits(
                values["birth_name"],
                values["first_name"],
                values["birth_date"],
                values["nir"],
                today=desk.today(),
            )
            chosen_sex = None
            if creating:
                try:
                    chosen_sex = Sex(values["sex"])
                except ValueError:
                    raise DeskInputError("Indiquez le sexe du patient.", "sex") from None
            desk.walk_in(
                chosen,
                birth_name=name,
                first_name=given,
                birth_date=born,
                nir=parsed,
                create=creating,
                sex=chosen_sex,
            )
        except DeskInputError as exc:
            no_match = getattr(exc, "code", "") == "no_unique_match"
            return _walk_in_page(
                request,
                caller,
                desk,
                values=values,
                errors={exc.field if exc.field in WALK_IN_LABELS else GENERAL: str(exc)},
                status=409 if getattr(exc, "code", "") == "conflict" else 422,
                offer_creation=no_match or creating,
            )
        row = desk.site(chosen)
        return redirect_to(
            request,
            PLANNING_PATH,
            site=str(row.id),
            jour=desk.today(row).isoformat(),
            info="sans-rendez-vous",
        )

    return run_page_as_caller(request, run, csrf_token=csrf_token)


# --- home-sampling rounds ---------------------------------------------------------------------


def _rounds_page(
    request: Request,
    caller: Caller,
    desk: DeskService,
    site: SiteChoice,
    day: dt.date,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    rows = desk.round(site.id, day)
    samplers = desk.samplers(site.id) if caller.role in RECEPTION else []
    return render_page(
        request,
        "desk/tournees.html",
        {
            **_common(request, caller, desk, site, day),
            "rows": rows,
            "samplers": samplers,
            "sampler_names": {s.id: s.name for s in samplers},
            "notice": _notice(request),
        },
        errors=errors,
        status=status,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/tournees", name="desk_rounds")
def rounds(request: Request, site: str = "", jour: str = "") -> Response:
    def show(caller: Caller) -> Response:
        desk = desk_of(caller, DESK_ROLES)
        chosen, when, errors = _where(desk, site, jour)
        return _rounds_page(
            request, caller, desk, chosen, when, errors=errors, status=422 if errors else 200
        )

    return run_page_as_caller(request, show)


@router.post("/tournees/affectation")
def assign(
    request: Request,
    appointment_id: FormText = "",
    sampler_staff_id: FormText = "",
    site: FormText = "",
    jour: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    def run(caller: Caller) -> Response:
        desk = desk_of(caller, RECEPTION)
        chosen, when, _ = _where(desk, site, jour)
        try:
            sampler = parse_id(sampler_staff_id[:64], "sampler_staff_id")
            if sampler is None:
                raise DeskInputError("Choisissez un préleveur de ce site.", "sampler_staff_id")
            desk.assign_sampler(_appointment_of(appointment_id), sampler)
        except DeskInputError as exc:
            status = 409 if getattr(exc, "code", "") == "conflict" else 422
            return _rounds_page(
                request, caller, desk, chosen, when, errors={GENERAL: str(exc)}, status=status
            )
        return redirect_to(
            request, ROUNDS_PATH, site=str(chosen.id), jour=when.isoformat(), info="affectation"
        )

    return run_page_as_caller(request, run, csrf_token=csrf_token)
