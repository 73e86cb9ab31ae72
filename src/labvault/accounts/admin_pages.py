"""French staff administration pages under ``/administration/personnel``, for organization
admins (``labvault.accounts.administration``).

``/administration/personnel`` lists the staff (names, role, sites, account status with the
reason of a lock) with a form per row to renew a pending invitation or unlock a locked
account; ``/administration/personnel/invitation`` invites a staff member. Anyone but a fully
signed-in organization admin of the organization gets the application's own "page not
found" (the 404 of an address that does not exist, I7), whatever the method; an admin
whose role requires a passkey and who has none yet is sent to the security page to add one.
The actions (the invitation form, renewing, unlocking) need a recent step-up: without one
the admin is sent to "Confirmez votre identité" (``/compte/confirmer-identite``), which
comes back to the list or the form (``suite=``).

The conventions of ``labvault.accounts.pages``: POST-redirect-GET with a notice named by a
keyword, French errors tied to their fields, the session's CSRF token in every form, POSTs
from another origin refused.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final

from fastapi import APIRouter, Form, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from labvault.accounts.admin_routes import AdminContext
from labvault.accounts.administration import (
    ROLE_NAMES,
    Administrator,
    StaffAdministration,
    StaffEntry,
    StaffStatus,
    parse_site_ids,
)
from labvault.accounts.forms import (
    EXPIRED_FORM,
    GENERAL,
    MAX_CSRF,
    FormText,
    error_page,
    form_csrf_ok,
    redirect_to,
    refuse_cross_site,
    render_page,
)
from labvault.accounts.models import LockReason
from labvault.accounts.pages import STEP_UP_PAGE, paris_moment
from labvault.accounts.routes import SESSION_COOKIE
from labvault.accounts.services import (
    ForbiddenError,
    InvalidInputError,
    SecurityLockError,
    ThrottledError,
)
from labvault.accounts.stepup import StepUpRequired
from labvault.core.contact import parse_email
from labvault.core.db import transaction
from labvault.core.mail import MailerError
from labvault.staff.models import StaffRole

__all__ = ["STAFF_PATH", "router"]

router = APIRouter(prefix="/administration", include_in_schema=False)

STAFF_PATH: Final = "/administration/personnel"
INVITE_PATH: Final = "/administration/personnel/invitation"
LIST_TEMPLATE: Final = "administration/personnel.html"
INVITE_TEMPLATE: Final = "administration/invitation.html"
MAX_FIELD = 320

NOTICES: Final = {
    "invitation-envoyee": "L'invitation a été envoyée. Le lien est valable 7 jours et ne sert "
    "qu'une fois.",
    "invitation-renouvelee": "Une nouvelle invitation a été envoyée ; les liens précédents ne "
    "fonctionnent plus.",
    "compte-deverrouille": "Le compte est déverrouillé ; son titulaire a été prévenu par e-mail.",
    "compte-deja-deverrouille": "Ce compte n'était pas verrouillé.",
    "identite-confirmee": "Votre identité est confirmée : vous pouvez administrer le personnel "
    "pendant quelques minutes.",
}
_STATUS_NAMES: Final = {
    StaffStatus.INVITED: "Invitation envoyée",
    StaffStatus.INVITATION_EXPIRED: "Invitation expirée",
    StaffStatus.ACTIVE: "Actif",
    StaffStatus.LOCKED: "Verrouillé",
    StaffStatus.CLOSING: "Suppression demandée",
    StaffStatus.NO_ACCOUNT: "Sans compte",
}
_LOCK_REASONS: Final = {
    LockReason.TOO_MANY_FAILURES: "trop de tentatives de connexion",
    LockReason.SECURITY_DECISION: "décision de sécurité",
}
_FIELD_LABELS: Final = {
    "email": "Adresse e-mail professionnelle",
    "first_name": "Prénom",
    "last_name": "Nom",
    "role": "Fonction",
    "sites": "Sites",
}

FormList = Annotated[list[str], Form()]


@dataclasses.dataclass(frozen=True)
class _Row:
    """One staff member as the list shows them (times in Paris, statuses in French)."""

    account_id: str | None
    name: str
    role: str
    sites: str
    status: str
    detail: str | None
    can_renew: bool
    can_unlock: bool


def _row(entry: StaffEntry) -> _Row:
    detail = None
    if entry.status is StaffStatus.LOCKED and entry.lock_reason is not None:
        detail = f"Motif : {_LOCK_REASONS[entry.lock_reason]}"
        if entry.locked_at is not None:
            detail += f", {paris_moment(entry.locked_at)}"
    elif entry.status is StaffStatus.INVITED and entry.invitation_expires_at is not None:
        detail = f"Lien valable jusqu'au {paris_moment(entry.invitation_expires_at)[3:]}"
    return _Row(
        account_id=None if entry.account_id is None else str(entry.account_id),
        name=f"{entry.first_name} {entry.last_name}",
        role=ROLE_NAMES.get(entry.role, entry.role),
        sites=", ".join(entry.site_names) or "aucun",
        status=_STATUS_NAMES[entry.status],
        detail=detail,
        can_renew=entry.status in (StaffStatus.INVITED, StaffStatus.INVITATION_EXPIRED),
        can_unlock=entry.status is StaffStatus.LOCKED
        and entry.lock_reason is LockReason.TOO_MANY_FAILURES,
    )


class _NotFoundError(Exception):
    pass


@dataclasses.dataclass
class _Admin:
    context: AdminContext
    service: StaffAdministration
    admin: Administrator
    token: str

    @property
    def csrf_token(self) -> str:
        return self.service.sessions.csrf_token(self.token)


_Body = Callable[[_Admin], Response]


def _as_admin(
    request: Request,
    body: _Body,
    *,
    csrf_token: str | None = None,
    step_up_suite: str | None = None,
) -> Response:
    """Run ``body`` for the request's organization admin, in one transaction that commits
    (refusals stay audited); anyone else gets the application's 404 page. With
    ``csrf_token`` (a POST), a wrong token shows the list again with an error. With
    ``step_up_suite`` (the actions), a session without a recent step-up is sent to
    "Confirmez votre identité", which then comes back to that page; nothing is done."""
    token = request.cookies.get(SESSION_COOKIE, "")
    context = AdminContext(request, request.app.state.runtime)
    with transaction(context.runtime.sessions) as session:
        service = context.administration(session)
        admin = service.administrator(token)
        response: Response | None
        if admin is None:
            response = None
        elif admin.passkey_missing:
            response = redirect_to(request, "/compte/securite")
        else:
            unit = _Admin(context, service, admin, token)
            if csrf_token is not None and (
                len(csrf_token) > MAX_CSRF or not form_csrf_ok(service, token, csrf_token)
            ):
                response = _list_page(request, unit, errors={GENERAL: EXPIRED_FORM}, status=403)
            elif step_up_suite is not None and _needs_step_up(service, admin):
                response = redirect_to(
                    request, STEP_UP_PAGE, suite=step_up_suite, info="confirmation-requise"
                )
            else:
                try:
                    response = body(unit)
                except (_NotFoundError, ForbiddenError):
                    response = None
    if response is None:
        raise StarletteHTTPException(404)
    return response


def _needs_step_up(service: StaffAdministration, admin: Administrator) -> bool:
    try:
        service.require_step_up(admin)  # a refusal is audited
    except StepUpRequired:
        return True
    return False


def _list_page(
    request: Request,
    unit: _Admin,
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    notice: str | None = None,
) -> Response:
    rows = [_row(entry) for entry in unit.service.staff_directory(unit.admin.principal)]
    return render_page(
        request,
        LIST_TEMPLATE,
        {"csrf_token": unit.csrf_token, "rows": rows, "notice": notice},
        errors=errors,
        status=status,
    )


def _invite_page(
    request: Request,
    unit: _Admin,
    values: Mapping[str, Any],
    *,
    errors: Mapping[str, str] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return render_page(
        request,
        INVITE_TEMPLATE,
        {
            "csrf_token": unit.csrf_token,
            "values": values,
            "roles": list(ROLE_NAMES.items()),
            "sites": unit.service.sites(),
            "labels": _FIELD_LABELS,
        },
        errors=errors,
        status=status,
        headers=headers,
    )


# --- the list -------------------------------------------------------------------------------


@router.get("/personnel", name="staff_administration")
def staff_page(request: Request) -> Response:
    notice = NOTICES.get(request.query_params.get("info", ""))
    return _as_admin(request, lambda unit: _list_page(request, unit, notice=notice))


def _account_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _NotFoundError from None


@router.post("/personnel/renouvellement")
def renew_invitation(
    request: Request, account_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused

    def renew(unit: _Admin) -> Response:
        target = _account_id(account_id)
        try:
            invitation = unit.service.renew_staff_invitation(unit.admin.principal, target)
        except ThrottledError as exc:
            return _list_page(request, unit, errors={GENERAL: str(exc)}, status=429)
        if invitation is None:
            message = "Ce compte n'a pas d'invitation en attente."
            return _list_page(request, unit, errors={GENERAL: message}, status=404)
        return redirect_to(request, STAFF_PATH, info="invitation-renouvelee")

    return _mail_guard(
        request,
        lambda: _as_admin(request, renew, csrf_token=csrf_token, step_up_suite=STAFF_PATH),
    )


@router.post("/personnel/deverrouillage")
def unlock_account(
    request: Request, account_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused

    def unlock(unit: _Admin) -> Response:
        target = _account_id(account_id)
        try:
            unlocked = unit.service.unlock_staff_account(unit.admin.principal, target)
        except SecurityLockError as locked:
            return _list_page(request, unit, errors={GENERAL: str(locked)}, status=409)
        if unlocked is None:
            message = "Ce compte n'existe pas ou n'est pas un compte du personnel."
            return _list_page(request, unit, errors={GENERAL: message}, status=404)
        info = "compte-deverrouille" if unlocked else "compte-deja-deverrouille"
        return redirect_to(request, STAFF_PATH, info=info)

    return _as_admin(request, unlock, csrf_token=csrf_token, step_up_suite=STAFF_PATH)


# --- invitation -----------------------------------------------------------------------------


@router.get("/personnel/invitation", name="staff_administration_invite")
def invite_page(request: Request) -> Response:
    # Confirmed before the form is filled in, so that its answer is not lost to a step-up.
    return _as_admin(
        request,
        lambda unit: _invite_page(request, unit, {"sites": []}),
        step_up_suite=INVITE_PATH,
    )


def _field_of(message: str) -> str:
    """The form field a service refusal is about."""
    if message.startswith("Prénom"):
        return "first_name"
    if message.startswith("Nom"):
        return "last_name"
    if message.startswith("Rôle"):
        return "role"
    if "site" in message:
        return "sites"
    return "email"


@router.post("/personnel/invitation")
def invite(
    request: Request,
    email: FormText = "",
    first_name: FormText = "",
    last_name: FormText = "",
    role: FormText = "",
    site_ids: FormList = [],  # noqa: B006 - FastAPI copies form defaults
    csrf_token: FormText = "",
) -> Response:
    if (refused := refuse_cross_site(request)) is not None:
        return refused
    values = {
        "email": email[:MAX_FIELD],
        "first_name": first_name[:MAX_FIELD],
        "last_name": last_name[:MAX_FIELD],
        "role": role[:32],
        "sites": site_ids[:100],
    }
    errors: dict[str, str] = {}
    if not email.strip():
        errors["email"] = "Saisissez l'adresse e-mail professionnelle de la personne."
    elif len(email) > MAX_FIELD or _invalid_email(email):
        errors["email"] = "Saisissez une adresse e-mail valide, par exemple nom@exemple.fr."
    if not first_name.strip():
        errors["first_name"] = "Saisissez le prénom."
    if not last_name.strip():
        errors["last_name"] = "Saisissez le nom."
    if role not in {r.value for r in StaffRole}:
        errors["role"] = "Choisissez la fonction de la personne."

    def attempt(unit: _Admin) -> Response:
        if errors:
            return _invite_page(request, unit, values, errors=errors, status=422)
        try:
            unit.service.invite_staff_member(
                unit.admin.principal,
                email,
                first_name,
                last_name,
                role,
                parse_site_ids(site_ids),
            )
        except InvalidInputError as exc:
            message = str(exc)
            return _invite_page(
                request, unit, values, errors={_field_of(message): message}, status=422
            )
        return redirect_to(request, STAFF_PATH, info="invitation-envoyee")

    return _mail_guard(
        request,
        lambda: _as_admin(request, attempt, csrf_token=csrf_token, step_up_suite=INVITE_PATH),
    )


def _invalid_email(value: str) -> bool:
    try:
        parse_email(value)
    except ValueError:
        return True
    return False


def _mail_guard(request: Request, run: Callable[[], Response]) -> Response:
    """A mail server that fails rolls everything back (the transaction is left by the
    error): the admin is told that nothing was sent, and may try again."""
    try:
        return run()
    except MailerError:
        return error_page(
            request,
            503,
            "Message non envoyé",
            "L'invitation n'a pas pu être envoyée par e-mail ; rien n'a été enregistré. "
            "Réessayez dans quelques minutes.",
        )
