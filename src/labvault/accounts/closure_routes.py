"""The deletion request API (``labvault.accounts.closure``).

``POST /api/v1/auth/account/deletion``: a signed-in patient account with a recent step-up
asks for its deletion; every session (this one too) is revoked and its cookie dropped; an
email carries the cancel link. A staff account gets 403 ``staff-account``: it is closed by
its organization's administration, not by its holder.

``POST /api/v1/auth/account/deletion/cancel`` with the link's token restores the account
(one 401 answer for every bad token).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from labvault.accounts.closure import AccountClosure, StaffSelfDeletionError
from labvault.accounts.models import Account, AccountSession
from labvault.accounts.routes import (
    AUTH_PROBLEMS,
    STEP_UP_RESPONSES,
    RequestContext,
    RuntimeDep,
    _run,
    _signed_in,
    clear_session_cookie,
    guard,
)
from labvault.accounts.services import AccountService
from labvault.core.web.problems import problem_response

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/auth/account/deletion", tags=["authentication"])


class DeletionRequested(BaseModel):
    erase_after: str
    """When the account is erased (ISO 8601, UTC) unless the request is cancelled."""


class DeletionCancel(BaseModel):
    token: str = Field(max_length=200)


_REQUEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    **STEP_UP_RESPONSES,
    403: {
        **STEP_UP_RESPONSES[403],
        "description": STEP_UP_RESPONSES[403]["description"]
        + " A staff account gets `staff-account`: staff accounts are closed by the "
        "organization's administration.",
    },
}


@router.post("", status_code=202, response_model=DeletionRequested, responses=_REQUEST_RESPONSES)
def request_deletion(request: Request, runtime: RuntimeDep) -> Response:
    """Ask for the deletion of this patient account (needs a recent step-up). The Patient
    record held by the laboratory is kept (legal retention); only the account is erased,
    after the grace period."""
    if (refused := guard(request)) is not None:
        return refused

    def ask(service: AccountService, record: AccountSession, account: Account) -> str | None:
        try:
            return AccountClosure(service).request(record, account).isoformat()
        except StaffSelfDeletionError:
            return None

    outcome = _signed_in(RequestContext(request, runtime), ask)
    if isinstance(outcome, Response):
        return outcome
    if outcome is None:
        return problem_response(403, type_="staff-account", detail=str(StaffSelfDeletionError()))
    response = JSONResponse({"erase_after": outcome}, status_code=202)
    clear_session_cookie(response)
    return response


@router.post("/cancel", status_code=204, responses=AUTH_PROBLEMS)
def cancel_deletion(body: DeletionCancel, request: Request, runtime: RuntimeDep) -> Response:
    """Cancel a deletion request with the token of the emailed link."""
    if (refused := guard(request)) is not None:
        return refused
    context = RequestContext(request, runtime)
    outcome = _run(
        context,
        lambda service: AccountClosure(service).cancel(body.token, client_id=context.client_hash),
    )
    return outcome if isinstance(outcome, Response) else Response(status_code=204)
