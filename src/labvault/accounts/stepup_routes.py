"""The step-up API under ``/api/v1/auth/step-up`` (``labvault.accounts.stepup``).

A signed-in session re-proves a second factor: ``GET`` says whether it has a recent proof
and which methods it may use; ``POST /email-code`` sends a code (patients);
``POST`` with ``{method, code}`` checks an app code, an emailed code or (only for an account
without any other factor) a recovery code; ``POST /passkey/options`` then ``POST /passkey``
do it with a passkey. A wrong code is a 422 ``invalid-code`` (the session is fine), counted
toward the per-account second-factor limit (429 past it) and audited.

Routes of sensitive actions answer 403 with ``"reason": "step_up_required"`` without it
(``routes.STEP_UP_RESPONSES``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from labvault.accounts.models import Account, AccountSession
from labvault.accounts.routes import (
    AUTH_PROBLEMS,
    Accepted,
    RequestContext,
    RuntimeDep,
    _accepted,
    _signed_in,
    guard,
)
from labvault.accounts.services import AccountService
from labvault.accounts.stepup import StepUp, StepUpFailedError
from labvault.accounts.webauthn import METHOD as PASSKEY
from labvault.accounts.webauthn_routes import (
    _OPTIONS,
    _UNAVAILABLE,
    PasskeyAuthentication,
    _options,
    _refused_or_unavailable,
    _step,
)
from labvault.core.web.problems import problem_response

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/auth/step-up", tags=["authentication"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_PROBLEMS,
    422: {
        "description": "A wrong, replayed or expired code, or a method this account may not "
        "use here (`invalid-code`); or invalid input.",
        "content": {"application/problem+json": {}},
    },
}


class StepUpState(BaseModel):
    fresh: bool
    """Whether this session may do sensitive actions now."""
    valid_until: str | None
    """Until when (ISO 8601, UTC), if it may."""
    methods: list[str]
    """The methods it may re-prove with, preferred first."""


class StepUpProof(BaseModel):
    method: Literal["totp", "email", "recovery"]
    code: str = Field(max_length=32)


def _invalid_code() -> Response:
    return problem_response(422, type_="invalid-code", detail="Code incorrect ou expiré.")


def _valid_until(record: AccountSession, service: AccountService) -> dt.datetime | None:
    if not StepUp(service).is_fresh(record):
        return None
    proofs = [moment for moment in (record.step_up_at, record.second_factor_at) if moment]
    return max(proofs) + dt.timedelta(minutes=service._settings.step_up_minutes)


@router.get("", response_model=StepUpState, responses=AUTH_PROBLEMS)
def step_up_state(request: Request, runtime: RuntimeDep) -> Response:
    """Whether this session has a recent second-factor proof, and how to re-prove one."""

    def state(service: AccountService, record: AccountSession, account: Account) -> dict[str, Any]:
        until = _valid_until(record, service)
        return {
            "fresh": until is not None,
            "valid_until": None if until is None else until.isoformat(),
            "methods": list(StepUp(service).methods(account)),
        }

    outcome = _signed_in(RequestContext(request, runtime), state, check_csrf=False)
    return outcome if isinstance(outcome, Response) else JSONResponse(outcome)


@router.post("/email-code", status_code=202, response_model=Accepted, responses=_RESPONSES)
def send_email_code(request: Request, runtime: RuntimeDep) -> Response:
    """Email a step-up code to a patient account (not offered to staff: 422)."""
    if (refused := guard(request)) is not None:
        return refused

    def send(service: AccountService, record: AccountSession, account: Account) -> bool:
        try:
            StepUp(service).send_email_code(account)
        except StepUpFailedError:
            return False
        return True

    outcome = _signed_in(RequestContext(request, runtime), send)
    if isinstance(outcome, Response):
        return outcome
    if not outcome:
        return problem_response(
            422, type_="invalid-code", detail="Ce moyen n'est pas proposé pour votre compte."
        )
    return _accepted("Un code de confirmation vient d'être envoyé à votre adresse.")


@router.post("", status_code=204, responses=_RESPONSES)
def step_up(body: StepUpProof, request: Request, runtime: RuntimeDep) -> Response:
    """Re-prove a second factor in this session: sensitive actions are open for
    ``LABVAULT_STEP_UP_MINUTES``."""
    if (refused := guard(request)) is not None:
        return refused

    def prove(service: AccountService, record: AccountSession, account: Account) -> bool:
        try:
            StepUp(service).verify(record, account, body.method, body.code)
        except StepUpFailedError:
            return False
        return True

    outcome = _signed_in(RequestContext(request, runtime), prove)
    if isinstance(outcome, Response):
        return outcome
    return Response(status_code=204) if outcome else _invalid_code()


@router.post("/passkey/options", responses=_OPTIONS)
def passkey_options(request: Request, runtime: RuntimeDep) -> Response:
    """Options for ``navigator.credentials.get``, bound to this session's step-up."""
    if (refused := _refused_or_unavailable(request, runtime)) is not None:
        return refused

    def begin(service: AccountService, record: AccountSession, account: Account) -> str | None:
        try:
            return _step(lambda: StepUp(service).passkey_options(record, account))
        except StepUpFailedError:
            return None

    outcome = _signed_in(RequestContext(request, runtime), begin)
    if outcome is None:
        return problem_response(
            422, type_="invalid-code", detail="Aucune clé d'accès n'est proposée pour ce compte."
        )
    return _options(outcome)


@router.post("/passkey", status_code=204, responses={**_RESPONSES, **_UNAVAILABLE})
def passkey_step_up(body: PasskeyAuthentication, request: Request, runtime: RuntimeDep) -> Response:
    """Re-prove the passkey with the browser's answer to the step-up options."""
    if (refused := _refused_or_unavailable(request, runtime)) is not None:
        return refused
    presented = body.credential.model_dump_json(by_alias=True, exclude_none=True)

    def prove(service: AccountService, record: AccountSession, account: Account) -> bool:
        try:
            StepUp(service).verify(record, account, PASSKEY, presented)
        except StepUpFailedError:
            return False
        return True

    outcome = _signed_in(RequestContext(request, runtime), prove)
    if isinstance(outcome, Response):
        return outcome
    return Response(status_code=204) if outcome else _invalid_code()
