"""The staff administration API under ``/api/v1/admin`` (``labvault.accounts.administration``).

Only a fully signed-in, active organization admin of the organization gets an answer; any
other caller (another role, a patient, a login waiting for its second factor, nobody) gets
the 404 of a route that does not exist, before anything else is looked at (I7). The
session cookie, the origin check and the ``X-CSRF-Token`` of unsafe requests are those of
``labvault.accounts.routes``. An admin whose role requires a passkey and who has none yet
gets 403 ``passkey-required`` until one is added (``/api/v1/auth/webauthn/registration``).
The actions (invite, renew an invitation, unlock) need a recent step-up in the session
(``labvault.accounts.stepup``): without one, 403 with ``"reason": "step_up_required"``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from labvault.accounts.administration import (
    Administrator,
    StaffAdministration,
    StaffEntry,
    parse_site_ids,
)
from labvault.accounts.invitations import Invitation
from labvault.accounts.routes import (
    SESSION_COOKIE,
    CsrfRefusedError,
    RequestContext,
    RuntimeDep,
    _hasher,
    csrf_header_ok,
    failure_response,
    guard,
)
from labvault.accounts.services import (
    AuthError,
    ForbiddenError,
    InvalidInputError,
    SecurityLockError,
)
from labvault.accounts.stepup import STEP_UP_REQUIRED, StepUpRequired
from labvault.core.db import transaction
from labvault.core.logging import get_logger
from labvault.core.mail import MailerError
from labvault.core.runtime import Runtime
from labvault.core.web.problems import problem_response
from labvault.organizations.services import get_organization
from labvault.staff.models import StaffRole

__all__ = ["AdminContext", "NotAdministratorError", "router"]

router = APIRouter(prefix="/api/v1/admin", tags=["staff administration"])
T = TypeVar("T")
_log = get_logger("labvault.accounts.administration")

_PROBLEM: dict[str, Any] = {"application/problem+json": {}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "A body that cannot be parsed (not JSON, or not UTF-8).",
        "content": _PROBLEM,
    },
    403: {
        "description": "Cross-origin request, missing CSRF token, or an admin who must add a "
        "passkey first (type passkey-required).",
        "content": _PROBLEM,
    },
    404: {
        "description": "Not an organization admin of this organization (or not signed in, or "
        "no such staff account): one answer for every reason.",
        "content": _PROBLEM,
    },
    429: {"description": "Too many attempts; see Retry-After.", "content": _PROBLEM},
}
_ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_RESPONSES,
    403: {
        "description": "Cross-origin request, missing CSRF token, an admin who must add a "
        "passkey first (type passkey-required), or, with "
        f'`"reason": "{STEP_UP_REQUIRED}"` (type step-up-required), no recent second-factor '
        "proof in this session: re-prove one with `POST /api/v1/auth/step-up/passkey` (or "
        "`POST /api/v1/auth/step-up`), then retry. Nothing was done.",
        "content": _PROBLEM,
    },
}
"""The responses of the admin's actions, which need a recent step-up."""
_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ACTION_RESPONSES,
    422: {"description": "Invalid input: the form's French message.", "content": _PROBLEM},
    503: {
        "description": "The invitation email could not be sent; nothing changed.",
        "content": _PROBLEM,
    },
}

PASSKEY_REQUIRED = (
    "Votre rôle exige une clé d'accès : ajoutez-en une depuis la page « Sécurité de votre "
    "compte » avant d'administrer le personnel."
)


class NotAdministratorError(Exception):
    """Not an admin, not signed in, or no such object: answered 404."""


class PasskeyRequiredError(Exception):
    pass


class AdminContext(RequestContext):
    """The request's context, building the administration service."""

    def administration(self, session: Session) -> StaffAdministration:
        runtime = self.runtime
        return StaffAdministration(
            session,
            tenant_id=get_organization(session, runtime.settings.organization).id,
            provider=runtime.key_provider,
            mailer=self.mailer,
            limiter=runtime.rate_limiter,
            settings=runtime.settings,
            hasher=_hasher(),
            context=self.audit,
            derived=runtime.derived_keys,
        )


# --- schemas --------------------------------------------------------------------------------


class StaffMemberOut(BaseModel):
    staff_id: uuid.UUID
    account_id: uuid.UUID | None
    first_name: str
    last_name: str
    role: StaffRole
    site_ids: list[uuid.UUID]
    status: str = Field(
        description="invited, invitation-expired, active, locked, closing or no-account"
    )
    lock_reason: str | None = Field(description="too-many-failures or security-decision")
    locked_at: dt.datetime | None
    invitation_expires_at: dt.datetime | None


class SiteOut(BaseModel):
    id: uuid.UUID
    name: str


class StaffInvitationIn(BaseModel):
    email: str = Field(max_length=320)
    first_name: str = Field(max_length=200)
    last_name: str = Field(max_length=200)
    role: Annotated[str, Field(max_length=32)]
    site_ids: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=100
    )


class InvitationOut(BaseModel):
    staff_id: uuid.UUID
    account_id: uuid.UUID
    expires_at: dt.datetime


class UnlockOut(BaseModel):
    unlocked: bool


def _entry(entry: StaffEntry) -> dict[str, Any]:
    return {
        "staff_id": str(entry.staff_id),
        "account_id": None if entry.account_id is None else str(entry.account_id),
        "first_name": entry.first_name,
        "last_name": entry.last_name,
        "role": entry.role,
        "site_ids": [str(site) for site in entry.site_ids],
        "status": entry.status.value,
        "lock_reason": None if entry.lock_reason is None else entry.lock_reason.value,
        "locked_at": None if entry.locked_at is None else entry.locked_at.isoformat(),
        "invitation_expires_at": (
            None if entry.invitation_expires_at is None else entry.invitation_expires_at.isoformat()
        ),
    }


def _invitation(invitation: Invitation) -> dict[str, Any]:
    return {
        "staff_id": str(invitation.staff_id),
        "account_id": str(invitation.account_id),
        "expires_at": invitation.expires_at.isoformat(),
    }


# --- plumbing -------------------------------------------------------------------------------


def _not_found() -> Response:
    """The very answer of an API path that does not exist."""
    return problem_response(404)


def _as_admin(
    request: Request,
    runtime: Runtime,
    action: Callable[[StaffAdministration, Administrator], T],
    *,
    check_csrf: bool = True,
    step_up: bool = False,
) -> T | Response:
    """Run ``action`` for the request's admin, in a transaction that commits even when the
    step fails as expected (a refusal stays audited); every other caller gets 404. With
    ``step_up`` (the actions), a session without a recent step-up gets 403
    ``step_up_required`` and nothing is done."""
    context = AdminContext(request, runtime)
    token = request.cookies.get(SESSION_COOKIE, "")
    failure: Exception | None = None
    result: T | None = None
    try:
        with transaction(runtime.sessions) as session:
            service = context.administration(session)
            try:
                admin = service.administrator(token)
                if admin is None:
                    raise NotAdministratorError
                if check_csrf and not csrf_header_ok(context, service):
                    raise CsrfRefusedError
                if admin.passkey_missing:
                    raise PasskeyRequiredError
                if step_up:
                    service.require_step_up(admin)
                result = action(service, admin)
            except (
                AuthError,
                CsrfRefusedError,
                ForbiddenError,
                InvalidInputError,
                NotAdministratorError,
                PasskeyRequiredError,
                StepUpRequired,
            ) as exc:
                failure = exc
    except MailerError as exc:  # raised inside: everything was rolled back
        _log.error("admin.mail_failed", error=str(exc))
        return problem_response(
            503,
            type_="mail-unavailable",
            detail="Le message n'a pas pu être envoyé ; rien n'a été enregistré. Réessayez.",
        )
    if isinstance(failure, NotAdministratorError | ForbiddenError):
        return _not_found()
    if isinstance(failure, PasskeyRequiredError):
        return problem_response(403, type_="passkey-required", detail=PASSKEY_REQUIRED)
    if failure is not None:
        return failure_response(failure)
    return cast(T, result)


# --- routes ---------------------------------------------------------------------------------


@router.get("/staff", response_model=list[StaffMemberOut], responses=_RESPONSES)
def list_staff(request: Request, runtime: RuntimeDep) -> Response:
    """The organization's staff: names (decrypted, each read audited), role, sites, status."""
    outcome = _as_admin(
        request,
        runtime,
        lambda service, admin: [_entry(e) for e in service.staff_directory(admin.principal)],
        check_csrf=False,
    )
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome)


@router.get("/sites", response_model=list[SiteOut], responses=_RESPONSES)
def list_sites(request: Request, runtime: RuntimeDep) -> Response:
    """The organization's sites, to choose those of an invitee."""
    outcome = _as_admin(
        request,
        runtime,
        lambda service, admin: [{"id": str(s.id), "name": s.name} for s in service.sites()],
        check_csrf=False,
    )
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome)


@router.post("/staff", status_code=201, response_model=InvitationOut, responses=_WRITE_RESPONSES)
def invite_staff(body: StaffInvitationIn, request: Request, runtime: RuntimeDep) -> Response:
    """Invite a staff member: a pending account, and a single-use link emailed (7 days).
    Invalid input (address, names, role, sites, an address already known) is a 422 and
    changes nothing."""
    if (refused := guard(request)) is not None:
        return refused

    def invite(service: StaffAdministration, admin: Administrator) -> dict[str, Any]:
        return _invitation(
            service.invite_staff_member(
                admin.principal,
                body.email,
                body.first_name,
                body.last_name,
                body.role,
                parse_site_ids(body.site_ids),
            )
        )

    outcome = _as_admin(request, runtime, invite, step_up=True)
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome, status_code=201)


@router.post(
    "/staff/{account_id}/invitation", response_model=InvitationOut, responses=_WRITE_RESPONSES
)
def renew_invitation(account_id: uuid.UUID, request: Request, runtime: RuntimeDep) -> Response:
    """Email a new invitation link to a staff account not activated yet; the previous links
    stop working. 404 for any other account."""
    if (refused := guard(request)) is not None:
        return refused

    def renew(service: StaffAdministration, admin: Administrator) -> dict[str, Any]:
        invitation = service.renew_staff_invitation(admin.principal, account_id)
        if invitation is None:
            raise NotAdministratorError
        return _invitation(invitation)

    outcome = _as_admin(request, runtime, renew, step_up=True)
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome)


@router.post("/staff/{account_id}/unlock", response_model=UnlockOut, responses=_ACTION_RESPONSES)
def unlock_staff(account_id: uuid.UUID, request: Request, runtime: RuntimeDep) -> Response:
    """Lift the lock of a staff account after failed logins; ``unlocked`` is false if it
    was not locked. The owner is told by email. A lock by a security decision answers 409
    ``security-lock``: two security officers lift it on the security console."""
    if (refused := guard(request)) is not None:
        return refused

    def unlock(service: StaffAdministration, admin: Administrator) -> dict[str, bool] | Response:
        try:
            unlocked = service.unlock_staff_account(admin.principal, account_id)
        except SecurityLockError as locked:
            return problem_response(409, type_="security-lock", detail=str(locked))
        if unlocked is None:
            raise NotAdministratorError
        return {"unlocked": unlocked}

    outcome = _as_admin(request, runtime, unlock, step_up=True)
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome)
