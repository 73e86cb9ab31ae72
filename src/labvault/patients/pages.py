"""French pages of patient records for staff and patients (server-rendered, no JS).

``/patients/recherche``: a staff search (one complete criterion, sent by POST so nothing
personal lands in a URL), the results table with only the fields the role grants, and a
"bris de glace" form when nothing is found. ``/patients/{id}``: one record, as the caller's
policy allows (NIR masked). Everything unknown or forbidden is the same "page introuvable".
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.callers import (
    Caller,
    CallerNotFoundError,
    run_page_as_caller,
)
from labvault.accounts.forms import FormText, redirect_to, render_page
from labvault.core.access.policies import Interaction
from labvault.core.audit.events import AuditedRefusalError
from labvault.patients.routes import (
    READ_PURPOSE,
    SearchError,
    field_values,
    search_records,
)
from labvault.patients.services import SUBJECT_TYPE, PatientRepository
from labvault.security.breakglass import BREAK_GLASS_ROLES, BreakGlassRefusedError
from labvault.security.models import BreakGlassReason
from labvault.security.routes import open_grant

__all__ = ["BREAK_GLASS_PATH", "SEARCH_PATH", "router"]

router = APIRouter(prefix="/patients", include_in_schema=False)

SEARCH_PATH: Final = "/patients/recherche"
BREAK_GLASS_PATH: Final = "/patients/bris-de-glace"
FIELD_LABELS: Final = {
    "birth_name": "Nom de naissance",
    "used_name": "Nom d'usage",
    "first_names": "Prénoms",
    "birth_date": "Date de naissance",
    "sex": "Sexe",
    "birth_place_code": "Lieu de naissance (code)",
    "identity_status": "Statut de l'identité",
    "ins_number": "NIR (masqué)",
    "ins_oid": "Type d'identifiant",
    "email": "Adresse e-mail",
    "phone": "Téléphone",
    "address_line": "Adresse",
    "postal_code": "Code postal",
    "city": "Ville",
}
FIELD_ORDER: Final = tuple(FIELD_LABELS)
REASON_LABELS: Final = {
    BreakGlassReason.EMERGENCY.value: "Urgence (valeur critique, appel d'un médecin)",
    BreakGlassReason.WALK_IN.value: "Patient présent à l'accueil sans rendez-vous enregistré",
    BreakGlassReason.CONTINUITY.value: "Continuité des soins (patient d'un autre site)",
    BreakGlassReason.PATIENT_REQUEST.value: "Demande du patient",
}
SEARCH_LABELS: Final = {
    "nir": "NIR (numéro de sécurité sociale)",
    "phone": "Téléphone",
    "birth_name": "Nom de naissance",
    "first_name": "Prénom",
    "birth_date": "Date de naissance",
    "reason": "Motif",
    "justification": "Justification",
}
NOTICES: Final = {
    "acces-ouvert": "Accès exceptionnel ouvert pour quelques heures. Il est enregistré et "
    "sera examiné par la sécurité du laboratoire.",
}


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    shown = {name for row in rows for name in row if name != "id"}
    return [name for name in FIELD_ORDER if name in shown]


def _search_page(
    request: Request,
    caller: Caller,
    *,
    values: Mapping[str, str] | None = None,
    results: list[dict[str, Any]] | None = None,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
) -> Response:
    rows = results or []
    return render_page(
        request,
        "patients/recherche.html",
        {
            "csrf_token": caller.service.sessions.csrf_token(
                request.cookies.get("__Host-labvault-session", "")
            ),
            "values": dict(values or {}),
            "searched": results is not None,
            "results": rows,
            "columns": _columns(rows),
            "labels": FIELD_LABELS,
            "search_labels": SEARCH_LABELS,
            "reasons": REASON_LABELS,
            "may_break_glass": caller.role in BREAK_GLASS_ROLES,
        },
        errors=errors,
        status=status,
        headers={"Cache-Control": "no-store"},
    )


def _require_search(caller: Caller) -> None:
    if not caller.is_staff or not caller.scope().policy.allows(SUBJECT_TYPE, Interaction.SEARCH):
        raise CallerNotFoundError


@router.get("/recherche", name="patient_search")
def search_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        _require_search(caller)
        return _search_page(request, caller)

    return run_page_as_caller(request, show)


@router.post("/recherche")
def search(
    request: Request,
    nir: FormText = "",
    phone: FormText = "",
    birth_name: FormText = "",
    first_name: FormText = "",
    birth_date: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    values = {
        "nir": nir[:64],
        "phone": phone[:64],
        "birth_name": birth_name[:300],
        "first_name": first_name[:300],
        "birth_date": birth_date[:32],
    }

    def run(caller: Caller) -> Response:
        _require_search(caller)
        try:
            records = search_records(caller, **values)
        except SearchError as exc:
            return _search_page(
                request, caller, values=values, errors={"formulaire": str(exc)}, status=422
            )
        return _search_page(
            request, caller, values=values, results=[field_values(r) for r in records[:20]]
        )

    return run_page_as_caller(request, run, csrf_token=csrf_token, step_up_return=SEARCH_PATH)


@router.post("/bris-de-glace")
def break_glass(
    request: Request,
    nir: FormText = "",
    birth_name: FormText = "",
    first_name: FormText = "",
    birth_date: FormText = "",
    reason: FormText = "",
    justification: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    values = {
        "nir": nir[:64],
        "birth_name": birth_name[:300],
        "first_name": first_name[:300],
        "birth_date": birth_date[:32],
        "reason": reason[:32],
        "justification": justification[:2000],
    }
    holder: list[Caller] = []

    def run(caller: Caller) -> Response:
        holder.append(caller)
        _require_search(caller)
        if caller.role not in BREAK_GLASS_ROLES:
            raise CallerNotFoundError
        errors: dict[str, str] = {}
        try:
            chosen = BreakGlassReason(values["reason"])
        except ValueError:
            errors["reason"] = "Choisissez un motif."
        born: dt.date | None = None
        if values["birth_date"].strip():
            try:
                born = dt.date.fromisoformat(values["birth_date"].strip())
            except ValueError:
                errors["birth_date"] = "La date de naissance doit être au format AAAA-MM-JJ."
        if errors:
            return _search_page(
                request, caller, values=values, results=[], errors=errors, status=422
            )
        grant = open_grant(
            caller,
            nir=values["nir"] or None,
            birth_name=values["birth_name"] or None,
            first_name=values["first_name"] or None,
            birth_date=born,
            reason=chosen,
            justification=values["justification"],
        )
        return redirect_to(request, f"/patients/{grant.patient_id}", info="acces-ouvert")

    def refused(refusal: AuditedRefusalError) -> Response:
        # The refusal was rolled back with its events kept; show the form again, in a new
        # unit of work, with the service's French reason.
        def again(caller: Caller) -> Response:
            message = (
                str(refusal)
                if isinstance(refusal, BreakGlassRefusedError)
                else "Accès exceptionnel refusé."
            )
            return _search_page(
                request,
                caller,
                values=values,
                results=[],
                errors={"formulaire": message},
                status=422,
            )

        return run_page_as_caller(_as_get(request), again)

    return run_page_as_caller(request, run, csrf_token=csrf_token, on_refusal=refused)


def _as_get(request: Request) -> Request:
    scope = dict(request.scope)
    scope["method"] = "GET"
    return Request(scope)


@router.get("/{patient_id}", name="patient_record")
def record_page(patient_id: uuid.UUID, request: Request) -> Response:
    def show(caller: Caller) -> Response:
        repository = PatientRepository(caller.session, caller.keyring(), caller.scope())
        record = repository.get(patient_id, purpose=READ_PURPOSE)
        if record is None:
            raise CallerNotFoundError
        values = field_values(record)
        return render_page(
            request,
            "patients/dossier.html",
            {
                "record": values,
                "columns": [name for name in FIELD_ORDER if name in values],
                "labels": FIELD_LABELS,
                "notice": NOTICES.get(request.query_params.get("info", "")),
                "is_staff": caller.is_staff,
            },
            headers={"Cache-Control": "no-store"},
        )

    return run_page_as_caller(request, show)
