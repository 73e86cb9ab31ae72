"""French pages of record links (``labvault.accounts.linking``).

``/compte/dossiers``: the records the account acts for, linking its own record or a minor's
(identity traits and NIR; a code emailed to the contact on the record), entering that code,
a desk code to give at the lab desk, removing a dependent. ``/compte/guichet``: a
receptionist links a record at the desk. The conventions of ``labvault.accounts.pages``:
POST-redirect-GET with fixed notice keywords, French errors tied to their fields, CSRF
tokens, codes shown only in the answer to a POST. The link request answers after the same
minimum time as the API and delivers its message after the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from labvault.accounts.forms import (
    EXPIRED_FORM,
    GENERAL,
    FormText,
    Unit,
    check_code,
    check_email,
    error_page,
    form_csrf_ok,
    open_unit,
    redirect_to,
    refuse_cross_site,
    render_page,
    runtime_of,
    throttled_headers,
)
from labvault.accounts.linking import (
    LinkCodeError,
    LinkConflictError,
    LinkForbiddenError,
    LinkNotFoundError,
    PatientLinks,
    Relationship,
    TraitsError,
    parse_traits,
)
from labvault.accounts.linking_routes import LINK_ANSWER_SECONDS, LINK_REQUESTED
from labvault.accounts.models import Account, AccountKind
from labvault.accounts.pages import back_to_login
from labvault.accounts.routes import SESSION_COOKIE, Outbox, RequestContext
from labvault.accounts.services import AuthError, InvalidInputError, ThrottledError

__all__ = ["DESK_PATH", "RECORDS_PATH", "router"]

router = APIRouter(prefix="/compte", include_in_schema=False)

RECORDS_PATH: Final = "/compte/dossiers"
DESK_PATH: Final = "/compte/guichet"
CHILD: Final = "enfant-"
"""Prefix of the ids of the minor's form fields (the page has both forms)."""
NOTICES: Final = {
    "code-rattachement": LINK_REQUESTED,
    "dossier-rattache": "Le dossier est rattaché à votre compte.",
    "enfant-retire": "Le dossier d'enfant a été retiré de votre compte.",
    "rattache": "Le dossier est rattaché au compte du patient, qui en est informé par e-mail.",
}
RELATIONSHIP_NAMES: Final = {
    "self": "Vous",
    "parent": "Enfant (parent)",
    "legal-guardian": "Enfant (représentant légal)",
}
_LABELS: Final = {
    "birth_name": "Nom de naissance",
    "first_names": "Prénom",
    "birth_date": "Date de naissance",
    "nir": "Numéro de sécurité sociale",
    "code": "Code de rattachement",
    f"{CHILD}birth_name": "Nom de naissance de l'enfant",
    f"{CHILD}first_names": "Prénom de l'enfant",
    f"{CHILD}birth_date": "Date de naissance de l'enfant",
    f"{CHILD}nir": "Numéro de sécurité sociale de l'enfant",
    f"{CHILD}relationship": "Lien avec l'enfant",
}
_MAX_TRAIT = 300


@dataclass
class _State:
    redirect: Response | None = None
    account: Account | None = None
    csrf_token: str = ""


def _state(request: Request, unit: Unit, token: str) -> _State:
    found = unit.service.current(token)
    if found is None:
        if token and unit.service.pending(token) is not None:
            return _State(redirect=redirect_to(request, "/compte/second-facteur"))
        return _State(redirect=back_to_login(request, token))
    return _State(account=found[1], csrf_token=unit.service.sessions.csrf_token(token))


@dataclass
class Shown:
    """What the records page shows once after a POST."""

    errors: dict[str, str] = field(default_factory=dict)
    status: int = 200
    values: dict[str, str] = field(default_factory=dict)
    desk_code: str | None = None
    headers: dict[str, str] | None = None


def _records_page(
    request: Request, unit: Unit, state: _State, shown: Shown, notice: str | None = None
) -> Response:
    assert state.account is not None
    links = PatientLinks(unit.service)
    return render_page(
        request,
        "accounts/dossiers.html",
        {
            "csrf_token": state.csrf_token,
            "records": links.records(state.account),
            "own_linked": state.account.patient_id is not None,
            "relationship_names": RELATIONSHIP_NAMES,
            "labels": _LABELS,
            "values": shown.values,
            "desk_code": shown.desk_code,
            "notice": notice,
        },
        errors=shown.errors,
        status=shown.status,
        headers=shown.headers,
    )


def _not_for_staff(request: Request) -> Response:
    return error_page(
        request, 404, "Page introuvable", "Cette page est réservée aux comptes patients."
    )


@router.get("/dossiers", name="account_records")
def records_page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    with open_unit(request) as unit:
        state = _state(request, unit, token)
        if state.redirect is not None:
            return state.redirect
        assert state.account is not None
        if state.account.kind != AccountKind.PATIENT.value:
            return _not_for_staff(request)
        notice = NOTICES.get(request.query_params.get("info", ""))
        return _records_page(request, unit, state, Shown(), notice)


_Action = Callable[[Unit, PatientLinks, Account], Response | Shown]


def _records_post(
    request: Request,
    csrf_token: str,
    action: _Action,
    context: RequestContext | None = None,
) -> Response:
    """Run ``action`` for the signed-in patient account once the origin and CSRF token are
    right; it answers with a redirect, or with what the page shows once. The transaction
    commits either way (a wrong code stays counted)."""
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    with open_unit(request, context) as unit:
        state = _state(request, unit, token)
        if state.redirect is not None:
            return state.redirect
        assert state.account is not None
        if state.account.kind != AccountKind.PATIENT.value:
            return _not_for_staff(request)
        if not form_csrf_ok(unit.service, token, csrf_token):
            shown = Shown(errors={GENERAL: EXPIRED_FORM}, status=403)
        else:
            links = PatientLinks(unit.service)
            try:
                outcome = action(unit, links, state.account)
            except ThrottledError as exc:
                outcome = Shown(
                    errors={GENERAL: str(exc)}, status=429, headers=throttled_headers(exc)
                )
            except LinkForbiddenError:
                return _not_for_staff(request)
            if isinstance(outcome, Response):
                return outcome
            shown = outcome
        return _records_page(request, unit, state, shown)


def _trait_values(prefix: str, **values: str) -> dict[str, str]:
    return {f"{prefix}{name}": value for name, value in values.items()}


@router.post("/dossiers/rattachement")
async def request_link(
    request: Request,
    relationship: FormText = "self",
    birth_name: FormText = "",
    first_names: FormText = "",
    birth_date: FormText = "",
    nir: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    """The same answer, after the same time, whether or not a record matched."""
    started = time.monotonic()
    response = await run_in_threadpool(
        _request_link, request, relationship, birth_name, first_names, birth_date, nir, csrf_token
    )
    await asyncio.sleep(max(0.0, LINK_ANSWER_SECONDS - (time.monotonic() - started)))
    return response


def _request_link(
    request: Request,
    relationship: str,
    birth_name: str,
    first_names: str,
    birth_date: str,
    nir: str,
    csrf_token: str,
) -> Response:
    chosen = Relationship(relationship) if relationship in set(Relationship) else None
    prefix = "" if chosen is Relationship.SELF else CHILD
    values = _trait_values(
        prefix, birth_name=birth_name, first_names=first_names, birth_date=birth_date, nir=nir
    )
    values[f"{CHILD}relationship"] = relationship
    outbox = Outbox(runtime_of(request).mailer)
    context = RequestContext(request, runtime_of(request), mailer=outbox)

    def ask(unit: Unit, links: PatientLinks, account: Account) -> Response | Shown:
        if chosen is None:
            return Shown({f"{CHILD}relationship": "Choisissez votre lien avec l'enfant."}, 422)
        if any(len(v) > _MAX_TRAIT for v in (birth_name, first_names, birth_date, nir)):
            return Shown({GENERAL: "Un des champs est trop long."}, 422, values)
        try:
            traits = parse_traits(birth_name, first_names, birth_date, nir, today=links.today())
            links.request_link(account, traits, chosen, client_id=unit.context.client_hash)
        except TraitsError as exc:
            errors = {f"{prefix}{name}": message for name, message in exc.errors.items()}
            return Shown(errors, 422, values)
        except LinkConflictError as exc:
            return Shown({GENERAL: str(exc)}, 409, values)
        return redirect_to(request, RECORDS_PATH, info="code-rattachement")

    response = _records_post(request, csrf_token, ask, context)
    if response.status_code == 303:
        response.background = BackgroundTask(outbox.deliver)
    return response


@router.post("/dossiers/rattachement/code")
def confirm_link(request: Request, code: FormText = "", csrf_token: FormText = "") -> Response:
    errors: dict[str, str] = {}
    check_code(code, errors)

    def confirm(unit: Unit, links: PatientLinks, account: Account) -> Response | Shown:
        if errors:
            return Shown(errors, 422)
        try:
            links.confirm_link(account, code)
        except LinkCodeError as exc:
            return Shown({"code": str(exc)}, 422)
        except LinkConflictError as exc:
            return Shown({GENERAL: str(exc)}, 409)
        return redirect_to(request, RECORDS_PATH, info="dossier-rattache")

    return _records_post(request, csrf_token, confirm)


@router.post("/dossiers/code-guichet")
def new_desk_code(request: Request, csrf_token: FormText = "") -> Response:
    """The desk code, shown in this answer only."""
    return _records_post(
        request,
        csrf_token,
        lambda unit, links, account: Shown(
            desk_code=links.new_desk_code(account).code.reveal(),
            headers={"Cache-Control": "no-store"},
        ),
    )


@router.post("/dossiers/enfants/retrait")
def remove_dependent(
    request: Request, patient_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    def remove(unit: Unit, links: PatientLinks, account: Account) -> Response | Shown:
        try:
            target: uuid.UUID | None = uuid.UUID(patient_id)
        except ValueError:
            target = None
        if target is not None and links.remove_dependent(account, target):
            return redirect_to(request, RECORDS_PATH, info="enfant-retire")
        return Shown({GENERAL: "Ce dossier n'est pas ou plus rattaché à votre compte."}, 404)

    return _records_post(request, csrf_token, remove)


# --- the lab desk -----------------------------------------------------------------------------


def _desk_page(
    request: Request,
    csrf_token: str,
    *,
    values: Mapping[str, Any] | None = None,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    notice: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return render_page(
        request,
        "accounts/guichet.html",
        {"csrf_token": csrf_token, "values": dict(values or {}), "notice": notice},
        errors=errors,
        status=status,
        headers=headers,
    )


def _is_receptionist(account: Account) -> bool:
    return account.kind == AccountKind.STAFF.value and account.role == "receptionist"


@router.get("/guichet", name="desk_link")
def desk_page(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    with open_unit(request) as unit:
        state = _state(request, unit, token)
    if state.redirect is not None:
        return state.redirect
    assert state.account is not None
    if not _is_receptionist(state.account):
        return error_page(request, 404, "Page introuvable", "Cette page n'existe pas.")
    notice = NOTICES.get(request.query_params.get("info", ""))
    return _desk_page(request, state.csrf_token, notice=notice)


@router.post("/guichet")
def desk_link(
    request: Request,
    patient_id: FormText = "",
    email: FormText = "",
    code: FormText = "",
    relationship: FormText = "self",
    csrf_token: FormText = "",
) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    token = request.cookies.get(SESSION_COOKIE, "")
    values = {"patient_id": patient_id, "email": email, "relationship": relationship}
    errors: dict[str, str] = {}
    target: uuid.UUID | None = None
    try:
        target = uuid.UUID(patient_id.strip())
    except ValueError:
        errors["patient_id"] = "Saisissez l'identifiant du dossier, tel que le donne la recherche."
    check_email(email, errors)
    check_code(code, errors)
    if relationship not in set(Relationship):
        errors["relationship"] = "Choisissez le lien du titulaire du compte avec le patient."
    status = 422
    headers: dict[str, str] | None = None
    with open_unit(request) as unit:
        state = _state(request, unit, token)
        if state.redirect is not None:
            return state.redirect
        assert state.account is not None
        if not _is_receptionist(state.account):
            # Audited as refused by the service; the same page as for an unknown path.
            with contextlib.suppress(LinkNotFoundError):
                PatientLinks(unit.service).desk_principal(state.account)
            return error_page(request, 404, "Page introuvable", "Cette page n'existe pas.")
        if not form_csrf_ok(unit.service, token, csrf_token):
            errors, status = {GENERAL: EXPIRED_FORM}, 403
        elif not errors and target is not None:
            try:
                PatientLinks(unit.service).desk_link(
                    state.account,
                    patient_id=target,
                    email=email,
                    code=code,
                    relationship=Relationship(relationship),
                )
            except LinkNotFoundError:
                errors, status = (
                    {
                        GENERAL: "Aucun rattachement possible : vérifiez l'identifiant du dossier, "
                        "l'adresse e-mail et le code (un code sert une fois, 30 minutes)."
                    },
                    404,
                )
            except ThrottledError as exc:
                errors, status = {GENERAL: str(exc)}, 429
                headers = throttled_headers(exc)
            except (LinkConflictError, InvalidInputError, AuthError) as exc:
                errors, status = {GENERAL: str(exc)}, 409
            else:
                return redirect_to(request, DESK_PATH, info="rattache")
        csrf = state.csrf_token
    return _desk_page(request, csrf, values=values, errors=errors, status=status, headers=headers)
