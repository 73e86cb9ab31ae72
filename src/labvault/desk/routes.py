"""The lab desk over HTTP (``/api/v1/desk``): the operations of ``labvault.desk.services``
for receptionists and samplers.

Everyone else, and anything unknown, of another site or out of the caller's scope, gets the
same 404. The caller's role is checked before its input (ids are read as text, bodies are
optional at the HTTP level), so that a role without the desk cannot tell a malformed request
from a well-formed one. French messages in ``detail``; never a name or a NIR in an answer
other than the schedule itself.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from labvault.accounts.callers import (
    OBJECT_PROBLEMS,
    Caller,
    CallerNotFoundError,
    CallerRefusedError,
    problem,
    run_as_caller,
)
from labvault.core.access.principals import Principal
from labvault.core.crypto.keyring import Keyring, TenantKeyring
from labvault.core.web.problems import problem_response
from labvault.desk.services import (
    DeskConflictError,
    DeskInputError,
    DeskService,
    RoundRow,
    ScheduleRow,
    parse_day,
)
from labvault.patients.ins import Sex
from labvault.patients.nir import Nir, NirError
from labvault.security.alerts import AlertDispatcher, DatabaseAlertSink, MailAlertSink

__all__ = ["DESK_ROLES", "desk_of", "parse_id", "router"]

router = APIRouter(prefix="/api/v1/desk", tags=["desk"])

DESK_ROLES: Final = frozenset({"receptionist", "sampler"})
RECEPTION: Final = frozenset({"receptionist"})
MAX_TEXT: Final = 300

UuidText = Annotated[
    str, Path(max_length=64, json_schema_extra={"format": "uuid"}, description="A random id.")
]

_CONFLICT = problem("The change does not apply to the appointment as it is now (French detail).")
_INVALID = problem("Invalid input: `detail` in French, `field` names the field in error.")


# --- plumbing ---------------------------------------------------------------------------------


def desk_of(caller: Caller, roles: frozenset[str] = DESK_ROLES) -> DeskService:
    """The caller's desk, or the uniform 404 for anyone who is not desk staff. Its alerts
    (a walk-in daily limit reached) go to the security page and to the security officers'
    mail, as break-glass alerts do."""
    if not caller.is_staff or caller.role not in roles or caller.staff_id is None:
        raise CallerNotFoundError
    keyring = caller.keyring()
    runtime = caller.runtime

    def keyrings(tenant_id: uuid.UUID, principal: Principal) -> Keyring:
        return TenantKeyring(
            caller.session,
            runtime.key_provider,
            tenant_id,
            principal,
            context=caller.context.audit,
        )

    alerts = AlertDispatcher(
        [
            DatabaseAlertSink(caller.session, keyring.audit),
            MailAlertSink(caller.session, keyrings, runtime.mailer),
        ]
    )
    return DeskService(
        caller.session,
        keyring,
        caller.scope(),
        limiter=runtime.rate_limiter,
        alerts=alerts,
        clock=lambda: caller.now,
    )


def _invalid(message: str, field: str = "formulaire", status: int = 422) -> CallerRefusedError:
    return CallerRefusedError(
        problem_response(
            status,
            detail=message,
            field=field,
            code="conflict" if status == 409 else "invalid",
        )
    )


def _refusal(error: DeskInputError) -> CallerRefusedError:
    status = 409 if isinstance(error, DeskConflictError) else 422
    return _invalid(str(error), error.field, status)


def parse_id(text: str | None, field: str) -> uuid.UUID | None:
    """A UUID given as text (``None`` when empty), else ``DeskInputError``."""
    if text is None or not text.strip():
        return None
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise DeskInputError("Identifiant invalide.", field) from None


def _answer(outcome: Any, status: int = 200) -> Response:
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome, status_code=status, headers={"Cache-Control": "no-store"})


# --- models -----------------------------------------------------------------------------------


class SiteOut(BaseModel):
    id: uuid.UUID
    name: str


class ScheduleItem(BaseModel):
    appointment_id: uuid.UUID
    patient_id: uuid.UUID
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    status: str
    walk_in: bool
    birth_name: str
    used_name: str | None
    first_names: str
    birth_date: dt.date | None
    identity_status: str | None
    preregistered: bool
    prescription: bool
    can_check_in: bool
    can_no_show: bool
    can_finish: bool
    can_check_identity: bool


class ScheduleOut(BaseModel):
    site: SiteOut
    day: dt.date
    sites: list[SiteOut]
    items: list[ScheduleItem]


class StatusOut(BaseModel):
    appointment_id: uuid.UUID
    status: str


class IdentityCheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document_kind: str = Field(
        max_length=32,
        description="cni, passeport or titre_sejour (permis_conduire and carte_vitale are "
        "refused: they do not prove an identity for the INS).",
    )


class IdentityCheckOut(BaseModel):
    check_id: uuid.UUID
    status_before: str
    status_after: str


class WalkInIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site_id: str | None = Field(default=None, max_length=64)
    birth_name: str = Field(max_length=MAX_TEXT)
    first_name: str = Field(max_length=MAX_TEXT)
    birth_date: str = Field(max_length=32, description="YYYY-MM-DD")
    nir: str | None = Field(default=None, max_length=64)
    create: bool = Field(
        default=False, description="No record matches: register a new one (sex required)."
    )
    sex: Sex | None = None


class WalkInOut(BaseModel):
    appointment_id: uuid.UUID
    patient_id: uuid.UUID
    created_record: bool


class RoundItem(BaseModel):
    appointment_id: uuid.UUID
    patient_id: uuid.UUID
    starts_at: dt.datetime
    ends_at: dt.datetime | None
    status: str
    birth_name: str
    first_names: str
    address_line: str
    postal_code: str
    city: str
    instructions: str
    sampler_staff_id: uuid.UUID | None


class SamplerOut(BaseModel):
    id: uuid.UUID
    name: str


class RoundOut(BaseModel):
    site: SiteOut
    day: dt.date
    items: list[RoundItem]
    samplers: list[SamplerOut]


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sampler_staff_id: str = Field(max_length=64)


def schedule_item(row: ScheduleRow) -> dict[str, Any]:
    return {
        "appointment_id": str(row.appointment_id),
        "patient_id": str(row.patient_id),
        "starts_at": row.starts_at.isoformat(),
        "ends_at": row.ends_at.isoformat() if row.ends_at else None,
        "status": row.status.value,
        "walk_in": row.walk_in,
        "birth_name": row.birth_name,
        "used_name": row.used_name,
        "first_names": row.first_names,
        "birth_date": row.birth_date.isoformat() if row.birth_date else None,
        "identity_status": row.identity_status.value if row.identity_status else None,
        "preregistered": row.preregistered,
        "prescription": row.prescription,
        "can_check_in": row.can_check_in,
        "can_no_show": row.can_no_show,
        "can_finish": row.can_finish,
        "can_check_identity": row.can_check_identity,
    }


def round_item(row: RoundRow) -> dict[str, Any]:
    return {
        "appointment_id": str(row.appointment_id),
        "patient_id": str(row.patient_id),
        "starts_at": row.starts_at.isoformat(),
        "ends_at": row.ends_at.isoformat() if row.ends_at else None,
        "status": row.status.value,
        "birth_name": row.birth_name,
        "first_names": row.first_names,
        "address_line": row.address_line,
        "postal_code": row.postal_code,
        "city": row.city,
        "instructions": row.instructions,
        "sampler_staff_id": str(row.sampler_staff_id) if row.sampler_staff_id else None,
    }


# --- the day's schedule -----------------------------------------------------------------------


@router.get(
    "/schedule",
    response_model=ScheduleOut,
    responses={**OBJECT_PROBLEMS, 422: _INVALID},
)
def schedule(
    request: Request,
    site_id: Annotated[str | None, Query(max_length=64, description="Default: first site")] = None,
    day: Annotated[
        str | None, Query(max_length=32, description="YYYY-MM-DD, the site's local day")
    ] = None,
) -> Response:
    """The day's visits at one of the caller's sites, by time (receptionists and samplers;
    a sampler sees today's patients only)."""

    def run(caller: Caller) -> dict[str, Any]:
        desk = desk_of(caller)
        try:
            site = desk.site(parse_id(site_id, "site_id"))
            when = parse_day(day, today=desk.today(site))
        except DeskInputError as exc:
            raise _refusal(exc) from None
        rows = desk.schedule(site.id, when)
        return {
            "site": {"id": str(site.id), "name": site.name},
            "day": when.isoformat(),
            "sites": [{"id": str(s.id), "name": s.name} for s in desk.sites()],
            "items": [schedule_item(row) for row in rows],
        }

    return _answer(run_as_caller(request, run, object_route=True))


# --- status changes ---------------------------------------------------------------------------


def _status_change(request: Request, appointment_id: str, change: str) -> Response:
    def run(caller: Caller) -> dict[str, Any]:
        desk = desk_of(caller)
        try:
            target = parse_id(appointment_id, "appointment_id")
            if target is None:
                raise DeskInputError("Identifiant invalide.", "appointment_id")
            method = {"check-in": desk.check_in, "no-show": desk.no_show, "done": desk.finish}
            done = method[change](target)
        except DeskInputError as exc:
            raise _refusal(exc) from None
        return {"appointment_id": str(done.appointment_id), "status": done.status.value}

    return _answer(run_as_caller(request, run, object_route=True))


_STATUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **OBJECT_PROBLEMS,
    409: _CONFLICT,
    422: _INVALID,
}


@router.post(
    "/appointments/{appointment_id}/check-in",
    response_model=StatusOut,
    responses=_STATUS_RESPONSES,
)
def check_in(appointment_id: UuidText, request: Request) -> Response:
    """The patient is here: booked -> checked in (on the appointment's day)."""
    return _status_change(request, appointment_id, "check-in")


@router.post(
    "/appointments/{appointment_id}/no-show",
    response_model=StatusOut,
    responses=_STATUS_RESPONSES,
)
def no_show(appointment_id: UuidText, request: Request) -> Response:
    """The patient did not come: booked -> no show (once the start time has passed)."""
    return _status_change(request, appointment_id, "no-show")


@router.post(
    "/appointments/{appointment_id}/done",
    response_model=StatusOut,
    responses=_STATUS_RESPONSES,
)
def done(appointment_id: UuidText, request: Request) -> Response:
    """The sampling is over: checked in -> done."""
    return _status_change(request, appointment_id, "done")


# --- identity check ---------------------------------------------------------------------------


@router.post(
    "/appointments/{appointment_id}/identity-check",
    response_model=IdentityCheckOut,
    responses={**OBJECT_PROBLEMS, 409: _CONFLICT, 422: _INVALID},
)
def identity_check(
    appointment_id: UuidText, request: Request, body: IdentityCheckIn | None = None
) -> Response:
    """The receptionist saw an identity document of the appointment's patient: PROV -> VALI,
    RECUP -> QUAL; a driving licence or a carte Vitale is refused (422), and so is a visit
    that is not today at its site or is cancelled, missed or held (409); nothing changed."""

    def run(caller: Caller) -> dict[str, Any]:
        desk = desk_of(caller, RECEPTION)
        try:
            target = parse_id(appointment_id, "appointment_id")
            if target is None:
                raise DeskInputError("Identifiant invalide.", "appointment_id")
            if body is None:
                raise DeskInputError("Choisissez le document d'identité présenté.", "document_kind")
            outcome = desk.identity_check(target, body.document_kind)
        except DeskInputError as exc:
            raise _refusal(exc) from None
        return {
            "check_id": str(outcome.check_id),
            "status_before": outcome.status_before.value,
            "status_after": outcome.status_after.value,
        }

    return _answer(run_as_caller(request, run, object_route=True))


# --- walk-ins ---------------------------------------------------------------------------------


def parse_walk_in_traits(
    birth_name: str, first_name: str, birth_date: str, nir: str | None, *, today: dt.date
) -> tuple[str, str, dt.date, Nir | None]:
    """The traits read from the identity document, checked (French message by field)."""
    cleaned: dict[str, str] = {}
    for field, value, label in (
        ("birth_name", birth_name, "le nom de naissance"),
        ("first_name", first_name, "le prénom"),
    ):
        text = " ".join(value.split())
        if not text:
            raise DeskInputError(f"Saisissez {label}, tel qu'il figure sur la pièce.", field)
        if len(text) > 100 or any(not ch.isprintable() for ch in value.replace("\t", " ")):
            raise DeskInputError(
                "Ce champ est trop long ou contient des caractères invisibles.", field
            )
        if any(ch.isdigit() for ch in text) or not any(ch.isalpha() for ch in text):
            raise DeskInputError("Ce champ ne doit contenir que des lettres.", field)
        cleaned[field] = text
    text = birth_date.strip()
    born: dt.date | None = None
    if len(text) == 10 and text[4] == "-" and text[7] == "-" and text.replace("-", "").isdigit():
        try:
            born = dt.date.fromisoformat(text)
        except ValueError:
            born = None
    if born is None:
        raise DeskInputError("Saisissez une date de naissance réelle (AAAA-MM-JJ).", "birth_date")
    if born > today or born.year < 1900:
        raise DeskInputError(
            "La date de naissance doit être passée et postérieure à 1900.", "birth_date"
        )
    parsed: Nir | None = None
    if nir is not None and nir.strip():
        try:
            parsed = Nir.parse(nir)
        except NirError:
            raise DeskInputError(
                "Ce NIR n'est pas valide : vérifiez-le sur la carte Vitale.", "nir"
            ) from None
    return cleaned["birth_name"], cleaned["first_name"], born, parsed


@router.post(
    "/walk-ins",
    response_model=WalkInOut,
    status_code=201,
    responses={**OBJECT_PROBLEMS, 409: _CONFLICT, 422: _INVALID},
)
def walk_in(request: Request, body: WalkInIn | None = None) -> Response:
    """A patient without appointment at the desk: the traits read from their identity
    document must match exactly one record; a checked-in walk-in visit is created at one of
    the caller's sites. Every refusal of the lookup or the creation (no match, several, the
    NIR known with other traits, a record already there) is the same 422 (code
    ``no_unique_match``), nothing written but the audited search. Lookups are limited per
    staff member (hourly and per day; the daily limit raises a security alert)."""

    def run(caller: Caller) -> dict[str, Any]:
        desk = desk_of(caller, RECEPTION)
        try:
            if body is None:
                raise DeskInputError("Saisissez les informations de la pièce d'identité.")
            site = parse_id(body.site_id, "site_id")
            name, given, born, nir = parse_walk_in_traits(
                body.birth_name, body.first_name, body.birth_date, body.nir, today=desk.today()
            )
            made = desk.walk_in(
                site,
                birth_name=name,
                first_name=given,
                birth_date=born,
                nir=nir,
                create=body.create,
                sex=body.sex,
            )
        except DeskInputError as exc:
            raise _refusal(exc) from None
        return {
            "appointment_id": str(made.appointment_id),
            "patient_id": str(made.patient_id),
            "created_record": made.created_record,
        }

    return _answer(run_as_caller(request, run, object_route=True), status=201)


# --- home-sampling rounds ---------------------------------------------------------------------


@router.get("/rounds", response_model=RoundOut, responses={**OBJECT_PROBLEMS, 422: _INVALID})
def rounds(
    request: Request,
    site_id: Annotated[str | None, Query(max_length=64, description="Default: first site")] = None,
    day: Annotated[
        str | None, Query(max_length=32, description="YYYY-MM-DD, the site's local day")
    ] = None,
) -> Response:
    """The day's home visits of one of the caller's sites, addresses opened (a sampler: their
    own visits only); for receptionists, the site's samplers to assign."""

    def run(caller: Caller) -> dict[str, Any]:
        desk = desk_of(caller)
        try:
            site = desk.site(parse_id(site_id, "site_id"))
            when = parse_day(day, today=desk.today(site))
        except DeskInputError as exc:
            raise _refusal(exc) from None
        rows = desk.round(site.id, when)
        samplers = desk.samplers(site.id) if caller.role in RECEPTION else []
        return {
            "site": {"id": str(site.id), "name": site.name},
            "day": when.isoformat(),
            "items": [round_item(row) for row in rows],
            "samplers": [{"id": str(s.id), "name": s.name} for s in samplers],
        }

    return _answer(run_as_caller(request, run, object_route=True))


@router.post(
    "/appointments/{appointment_id}/sampler",
    response_model=RoundItem,
    responses={**OBJECT_PROBLEMS, 409: _CONFLICT, 422: _INVALID},
)
def assign_sampler(
    appointment_id: UuidText, request: Request, body: AssignIn | None = None
) -> Response:
    """A receptionist assigns a home visit to a sampler of the visit's site."""

    def run(caller: Caller) -> dict[str, Any]:
        desk = desk_of(caller, RECEPTION)
        try:
            target = parse_id(appointment_id, "appointment_id")
            sampler = parse_id(body.sampler_staff_id if body else None, "sampler_staff_id")
            if target is None:
                raise DeskInputError("Identifiant invalide.", "appointment_id")
            if sampler is None:
                raise DeskInputError("Choisissez un préleveur de ce site.", "sampler_staff_id")
            row = desk.assign_sampler(target, sampler)
        except DeskInputError as exc:
            raise _refusal(exc) from None
        return round_item(row)

    return _answer(run_as_caller(request, run, object_route=True))
