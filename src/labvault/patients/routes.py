"""The patient API under ``/api/v1/patients``: records as the caller's policy allows.

Every read goes through :class:`PatientRepository` bound to the caller's scope
(``labvault.accounts.callers``): records out of scope are neither selected nor decrypted,
and fields the policy does not grant are not decrypted and not even present in the answer
(its model is built from the fields the record reveals). Absent, out of scope and not
granted all answer the same 404.

The NIR is shown masked (``2 84 05 ** *** *** 42``); ``GET /{id}/nir`` gives it in full to a
session with a fresh step-up. Staff search by one complete criterion (NIR, phone, or birth
name + first name + birth date), within their scope, paginated, capped.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import uuid
from typing import Annotated, Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from labvault.accounts.callers import (
    OBJECT_PROBLEMS,
    STEP_UP_PROBLEMS,
    Caller,
    CallerNotFoundError,
    CallerRefusedError,
    problem,
    run_as_caller,
)
from labvault.accounts.models import AccountKind
from labvault.core.access.policies import Interaction
from labvault.core.web.problems import problem_response
from labvault.patients.history import AccessEntry, access_history
from labvault.patients.nir import Nir, NirError
from labvault.patients.schemas import ContactUpdate, Phone
from labvault.patients.services import (
    ALL_FIELDS,
    MAX_SEARCH_RESULTS,
    SUBJECT_TYPE,
    PatientRecord,
    PatientRepository,
)

__all__ = [
    "MAX_PAGE",
    "PatientSummary",
    "field_values",
    "mask_national_number",
    "router",
    "search_records",
]

router = APIRouter(prefix="/api/v1/patients", tags=["patients"])

MAX_PAGE = 20
READ_PURPOSE = "patient-record"
NIR_PURPOSE = "nir-display"
SEARCH_PURPOSE = "patient-search"
CONTACT_PURPOSE = "contact-update"
SEARCH_CRITERIA = (
    "Indiquez un seul critère complet : le NIR, ou le numéro de téléphone, ou le nom de "
    "naissance avec le prénom et la date de naissance."
)
_PHONE = TypeAdapter(Phone)


class PatientSummary(BaseModel):
    """A record as the API answers it. Only the fields the caller's policy grants are
    present; the others are absent (not null). ``ins_number`` is masked."""

    id: uuid.UUID
    birth_name: str | None = None
    used_name: str | None = None
    first_names: str | None = None
    birth_date: dt.date | None = None
    sex: str | None = None
    birth_place_code: str | None = None
    identity_status: str | None = None
    ins_number: str | None = Field(default=None, description='Masked: "2 84 05 ** *** *** 42".')
    ins_oid: str | None = None
    email: str | None = None
    phone: str | None = None
    address_line: str | None = None
    postal_code: str | None = None
    city: str | None = None


class SearchPage(BaseModel):
    items: list[PatientSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")
    capped: bool = Field(
        description=f"True when the search hit its hard cap ({MAX_SEARCH_RESULTS} records): "
        "refine it."
    )


class FullNir(BaseModel):
    nir: str


class HistoryEntry(BaseModel):
    at: dt.datetime
    action: str
    label: str
    actor: str
    actor_reference: str
    role: str | None
    site: str | None
    purpose: str | None
    outcome: str


def mask_national_number(value: str) -> str:
    """``2 84 05 ** *** *** 42``: sex, birth year and month, and the key; the place of birth
    and the order number hidden."""
    c = "".join(value.split())
    if len(c) != 15:
        return "*** *** *** ** **"
    return f"{c[0]} {c[1:3]} {c[3:5]} ** *** *** {c[13:]}"


@functools.cache
def _model(fields: frozenset[str]) -> type[BaseModel]:
    """The answer's model for one set of revealed fields: no key for anything else."""
    definitions: dict[str, Any] = {"id": (uuid.UUID, ...)}
    for name in sorted(fields & ALL_FIELDS):
        annotation = PatientSummary.model_fields[name].annotation
        definitions[name] = (annotation, None)
    return cast(type[BaseModel], create_model(f"Patient_{len(definitions)}", **definitions))


def field_values(record: PatientRecord) -> dict[str, Any]:
    """The record's revealed fields, JSON-ready, the NIR masked."""
    values: dict[str, Any] = {"id": record.id}
    for name in sorted(record.fields & ALL_FIELDS):
        value = getattr(record, name)
        if name == "ins_number" and value is not None:
            value = mask_national_number(value)
        values[name] = value
    return _model(record.fields).model_validate(values).model_dump(mode="json")


def _repository(caller: Caller) -> PatientRepository:
    return PatientRepository(caller.session, caller.keyring(), caller.scope())


def _invalid(detail: str, **extensions: Any) -> CallerRefusedError:
    return CallerRefusedError(
        problem_response(422, type_="invalid-input", detail=detail, **extensions)
    )


# --- one record -------------------------------------------------------------------------------


@router.get("/{patient_id}", response_model=PatientSummary, responses=OBJECT_PROBLEMS)
def read_patient(patient_id: uuid.UUID, request: Request) -> Response:
    """The record, with only the fields the caller's role grants (others absent)."""

    def read(caller: Caller) -> dict[str, Any]:
        record = _repository(caller).get(patient_id, purpose=READ_PURPOSE)
        if record is None:
            raise CallerNotFoundError
        return field_values(record)

    outcome = run_as_caller(request, read, object_route=True)
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome, headers={"Cache-Control": "no-store"})


@router.get("/{patient_id}/nir", response_model=FullNir, responses=STEP_UP_PROBLEMS)
def read_full_nir(patient_id: uuid.UUID, request: Request) -> Response:
    """The NIR in full: needs a recent step-up (403 ``step_up_required`` otherwise) and a
    role granted the INS fields; the read is audited like any other."""

    def read(caller: Caller) -> dict[str, str]:
        scope = caller.scope()
        if "ins_number" not in scope.policy.fields(SUBJECT_TYPE, Interaction.READ):
            raise CallerNotFoundError
        caller.require_step_up()
        record = _repository(caller).get(patient_id, purpose=NIR_PURPOSE)
        if record is None or record.nir is None:
            raise CallerNotFoundError
        return {"nir": record.nir.formatted()}

    outcome = run_as_caller(request, read, object_route=True)
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome, headers={"Cache-Control": "no-store"})


@router.patch(
    "/{patient_id}/contact",
    response_model=PatientSummary,
    responses={
        **STEP_UP_PROBLEMS,
        422: problem("No field to change, or an invalid value (`errors` per field)."),
    },
)
def update_contact(patient_id: uuid.UUID, body: ContactUpdate, request: Request) -> Response:
    """Change contact details (a field left out keeps its value, an empty one clears it):
    a patient on its own or a dependent's record, a receptionist on a record in scope.
    Needs a recent step-up."""

    def change(caller: Caller) -> dict[str, Any]:
        scope = caller.scope()
        if not scope.policy.allows(SUBJECT_TYPE, Interaction.UPDATE):
            raise CallerNotFoundError
        if not body.changes():
            raise _invalid("Indiquez au moins une coordonnée à modifier.")
        repository = _repository(caller)
        if not repository.exists(patient_id):
            raise CallerNotFoundError
        caller.require_step_up()
        record = repository.update_contact(patient_id, body, purpose=CONTACT_PURPOSE)
        if record is None:
            raise CallerNotFoundError
        return field_values(record)

    outcome = run_as_caller(request, change, object_route=True)
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome, headers={"Cache-Control": "no-store"})


@router.get(
    "/{patient_id}/access-history", response_model=list[HistoryEntry], responses=OBJECT_PROBLEMS
)
def read_access_history(patient_id: uuid.UUID, request: Request) -> Response:
    """Who opened this record: for the patient account acting for it (own or dependent)."""

    def history(caller: Caller) -> list[AccessEntry]:
        if patient_id not in caller.scope().own_patient_ids:
            raise CallerNotFoundError
        return access_history(caller.session, caller.keyring(), patient_id)

    outcome = run_as_caller(
        request, history, object_route=True, kinds=frozenset({AccountKind.PATIENT})
    )
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(
        [
            HistoryEntry(
                at=e.at,
                action=e.action,
                label=e.label,
                actor=e.actor,
                actor_reference=e.actor_reference,
                role=e.role,
                site=e.site,
                purpose=e.purpose,
                outcome=e.outcome,
            ).model_dump(mode="json")
            for e in outcome
        ],
        headers={"Cache-Control": "no-store"},
    )


# --- search -----------------------------------------------------------------------------------


class SearchError(ValueError):
    """A search that is not specific enough or malformed; the message is French."""


def search_records(
    caller: Caller,
    *,
    nir: str | None = None,
    phone: str | None = None,
    birth_name: str | None = None,
    first_name: str | None = None,
    birth_date: str | None = None,
) -> list[PatientRecord]:
    """Exactly one complete criterion, within the caller's scope (the repository caps it).

    Raises :class:`SearchError` (French) for anything less or more, or a malformed value;
    ``CallerNotFoundError`` when the caller's role may not search patients.
    """
    scope = caller.scope()
    if not scope.policy.allows(SUBJECT_TYPE, Interaction.SEARCH):
        raise CallerNotFoundError
    given = {
        name: value.strip()
        for name, value in {
            "nir": nir,
            "phone": phone,
            "birth_name": birth_name,
            "first_name": first_name,
            "birth_date": birth_date,
        }.items()
        if value is not None and value.strip()
    }
    traits = {"birth_name", "first_name", "birth_date"}
    repository = _repository(caller)
    if set(given) == {"nir"}:
        try:
            parsed = Nir.parse(given["nir"])
        except NirError:
            raise SearchError("Ce NIR n'est pas valide (15 caractères, clé comprise).") from None
        return repository.find_by_nir(parsed, purpose=SEARCH_PURPOSE)
    if set(given) == {"phone"}:
        try:
            number = _PHONE.validate_python(given["phone"])
        except (ValidationError, ValueError):
            raise SearchError("Ce numéro de téléphone n'est pas valide.") from None
        if not number:
            raise SearchError(SEARCH_CRITERIA)
        return repository.find_by_phone(number, purpose=SEARCH_PURPOSE)
    if set(given) == traits:
        try:
            born = dt.date.fromisoformat(given["birth_date"])
        except ValueError:
            raise SearchError("La date de naissance doit être au format AAAA-MM-JJ.") from None
        if len(given["birth_name"]) > 300 or len(given["first_name"]) > 300:
            raise SearchError("Le nom ou le prénom est trop long.")
        return repository.find_by_name(
            given["birth_name"], given["first_name"], born, purpose=SEARCH_PURPOSE
        )
    raise SearchError(SEARCH_CRITERIA)


def _cursor_of(patient_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(patient_id.bytes).decode().rstrip("=")


def _position_after(cursor: str, records: list[PatientRecord]) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = uuid.UUID(bytes=raw)
    except (binascii.Error, ValueError):
        raise SearchError("Curseur de pagination invalide.") from None
    for position, record in enumerate(records):
        if record.id == after:
            return position + 1
    raise SearchError("Curseur de pagination invalide (relancez la recherche).")


class SearchRequest(BaseModel):
    """One complete criterion: the NIR, the phone number, or birth name + first name + birth
    date. Sent in the body, never in the URL (identifiers stay out of logs and history)."""

    model_config = ConfigDict(extra="forbid")

    nir: Annotated[str | None, Field(max_length=64)] = None
    phone: Annotated[str | None, Field(max_length=64)] = None
    birth_name: Annotated[str | None, Field(max_length=300)] = None
    first_name: Annotated[str | None, Field(max_length=300)] = None
    birth_date: Annotated[str | None, Field(max_length=32)] = None
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = MAX_PAGE
    cursor: Annotated[str | None, Field(max_length=64)] = None

    def __repr__(self) -> str:
        return "SearchRequest(**********)"


@router.post(
    "/search",
    response_model=SearchPage,
    responses={
        **OBJECT_PROBLEMS,
        404: problem("The caller's role does not search patients (patients, admins...)."),
        422: problem(
            "Not exactly one complete criterion (NIR; phone; birth name + first name + "
            "birth date), a malformed value, or a bad cursor."
        ),
    },
)
def search_patients(body: SearchRequest, request: Request) -> Response:
    """Staff search within their scope: exactly one complete criterion, never "everyone".
    At most ``limit`` (<= 20) records a page, and at most 50 in all (``capped``)."""
    nir, phone, birth_name = body.nir, body.phone, body.birth_name
    first_name, birth_date, limit, cursor = (
        body.first_name,
        body.birth_date,
        body.limit,
        body.cursor,
    )

    def search(caller: Caller) -> dict[str, Any]:
        try:
            records = search_records(
                caller,
                nir=nir,
                phone=phone,
                birth_name=birth_name,
                first_name=first_name,
                birth_date=birth_date,
            )
            start = _position_after(cursor, records) if cursor else 0
        except SearchError as exc:
            raise _invalid(str(exc)) from None
        page = records[start : start + limit]
        more = start + limit < len(records)
        return {
            "items": [field_values(r) for r in page],
            "next_cursor": _cursor_of(page[-1].id) if more and page else None,
            "capped": len(records) >= MAX_SEARCH_RESULTS,
        }

    outcome = run_as_caller(request, search, object_route=True)
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome, headers={"Cache-Control": "no-store"})
