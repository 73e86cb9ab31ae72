"""Break-glass and the security review over HTTP.

``/api/v1/break-glass``: a receptionist, sampler or biologist opens a grant on one patient
(named by NIR or by birth name + first name + birth date, a reason from the closed list and
a written justification), and ends it early. Every grant is audited with its reason, raises
an alert (security page + mail to the security officers) and waits for review.

``/api/v1/security/...``: security officers list the grants (unreviewed first), read a
grant's justification (the read is audited), give their verdict, list the alerts and
acknowledge them. Anyone else gets 404, as for an object that does not exist.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from labvault.accounts.callers import (
    OBJECT_PROBLEMS,
    Caller,
    CallerNotFoundError,
    CallerRefusedError,
    problem,
    run_as_caller,
)
from labvault.core.audit.events import AuditedRefusalError
from labvault.core.web.problems import problem_response
from labvault.patients.nir import Nir, NirError
from labvault.security.breakglass import (
    BREAK_GLASS_ROLES,
    JUSTIFICATION_MAX,
    BreakGlassRefusedError,
    GrantSummary,
    PatientDesignation,
)
from labvault.security.console import (
    acknowledge_alert,
    alerts,
    break_glass_service,
    grant_of,
    review_of,
)
from labvault.security.models import BreakGlassGrant, BreakGlassReason

__all__ = ["open_grant", "router"]

router = APIRouter(prefix="/api/v1", tags=["break-glass and security review"])


class BreakGlassRequest(BaseModel):
    nir: str | None = Field(default=None, max_length=64)
    birth_name: str | None = Field(default=None, max_length=300)
    first_name: str | None = Field(default=None, max_length=300)
    birth_date: dt.date | None = None
    reason: BreakGlassReason
    justification: str = Field(max_length=JUSTIFICATION_MAX * 4)


class GrantOpened(BaseModel):
    grant_id: uuid.UUID
    patient_id: uuid.UUID
    expires_at: dt.datetime


class GrantOut(BaseModel):
    id: uuid.UUID
    staff_id: uuid.UUID
    patient_id: uuid.UUID
    reason: BreakGlassReason
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    reviewed_at: dt.datetime | None
    review_outcome: str | None


class Justification(BaseModel):
    justification: str


class ReviewIn(BaseModel):
    outcome: Literal["justified", "unjustified"]


class AlertOut(BaseModel):
    id: uuid.UUID
    kind: str
    severity: str
    actor_kind: str
    actor_id: str
    target_type: str | None
    target_id: uuid.UUID | None
    created_at: dt.datetime
    acknowledged_at: dt.datetime | None


def open_grant(
    caller: Caller,
    *,
    nir: str | None,
    birth_name: str | None,
    first_name: str | None,
    birth_date: dt.date | None,
    reason: BreakGlassReason,
    justification: str,
) -> BreakGlassGrant:
    """Open a grant for the caller (pages use it too). Raises ``BreakGlassRefusedError``
    (French, audited when the service refused) or ``CallerNotFoundError``."""
    service = break_glass_service(caller)
    parsed: Nir | None = None
    if nir is not None and nir.strip():
        try:
            parsed = Nir.parse(nir)
        except NirError:
            raise BreakGlassRefusedError(
                "Ce NIR n'est pas valide (15 caractères, clé comprise)."
            ) from None
    designation = PatientDesignation(
        nir=parsed,
        birth_name=birth_name if parsed is None else None,
        first_name=first_name if parsed is None else None,
        birth_date=birth_date if parsed is None else None,
    )
    patient_id = service.open(designation, reason, justification)
    grant = grant_of(caller, patient_id)
    assert grant is not None
    return grant


def _refusal_answer(caller_role: list[str | None]) -> Any:
    def answer(refusal: AuditedRefusalError) -> Response:
        role = caller_role[0] if caller_role else None
        if role not in BREAK_GLASS_ROLES or not isinstance(refusal, BreakGlassRefusedError):
            return problem_response(404, detail="Introuvable.")
        return problem_response(422, type_="break-glass-refused", detail=str(refusal))

    return answer


@router.post(
    "/break-glass",
    status_code=201,
    response_model=GrantOpened,
    responses={
        **OBJECT_PROBLEMS,
        404: problem("Not a staff role that may break the glass (one answer for every reason)."),
        422: problem(
            "Refused, with a French `detail`: no exact match for the designation, a "
            "justification too short or too long, a malformed NIR. The refusal is audited."
        ),
    },
)
def break_glass(body: BreakGlassRequest, request: Request) -> Response:
    """Open a grant on ONE patient for a few hours, outside the relationship rule: audited
    with its reason, alerted to the security officers, listed for their review."""
    role: list[str | None] = []

    def act(caller: Caller) -> dict[str, Any]:
        role.append(caller.role)
        grant = open_grant(
            caller,
            nir=body.nir,
            birth_name=body.birth_name,
            first_name=body.first_name,
            birth_date=body.birth_date,
            reason=body.reason,
            justification=body.justification,
        )
        return GrantOpened(
            grant_id=grant.id, patient_id=grant.patient_id, expires_at=grant.expires_at
        ).model_dump(mode="json")

    outcome = run_as_caller(request, act, object_route=True, on_refusal=_refusal_answer(role))
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome, status_code=201)


@router.delete("/break-glass/{grant_id}", status_code=204, responses=OBJECT_PROBLEMS)
def end_break_glass(grant_id: uuid.UUID, request: Request) -> Response:
    """End one of the caller's own live grants early."""

    def end(caller: Caller) -> None:
        if not break_glass_service(caller).end(grant_id):
            raise CallerNotFoundError

    outcome = run_as_caller(request, end, object_route=True)
    return outcome if isinstance(outcome, Response) else Response(status_code=204)


# --- the security officers ------------------------------------------------------------------


def _grant_out(g: GrantSummary) -> dict[str, Any]:
    return GrantOut(
        id=g.id,
        staff_id=g.staff_id,
        patient_id=g.patient_id,
        reason=g.reason,
        created_at=g.created_at,
        expires_at=g.expires_at,
        revoked_at=g.revoked_at,
        reviewed_at=g.reviewed_at,
        review_outcome=g.review_outcome,
    ).model_dump(mode="json")


def review_list(caller: Caller) -> list[GrantSummary]:
    """Every grant, unreviewed first, newest first within each group."""
    found = review_of(caller).grants(unreviewed_only=False)
    return sorted(found, key=lambda g: g.reviewed_at is not None)


@router.get(
    "/security/break-glass",
    response_model=list[GrantOut],
    responses={**OBJECT_PROBLEMS, 404: problem("Not a security officer.")},
)
def list_grants(request: Request, unreviewed: Annotated[bool, Query()] = False) -> Response:
    """The break-glass grants, unreviewed first (``unreviewed=true``: only those)."""

    def listing(caller: Caller) -> list[dict[str, Any]]:
        found = review_list(caller)
        if unreviewed:
            found = [g for g in found if g.reviewed_at is None]
        return [_grant_out(g) for g in found]

    outcome = run_as_caller(request, listing, object_route=True)
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome, headers={"Cache-Control": "no-store"})


@router.get(
    "/security/break-glass/{grant_id}/justification",
    response_model=Justification,
    responses=OBJECT_PROBLEMS,
)
def read_justification(grant_id: uuid.UUID, request: Request) -> Response:
    """The justification the staff member wrote (sealed at rest; this read is audited)."""

    def read(caller: Caller) -> dict[str, str]:
        text = review_of(caller).justification(grant_id)
        if text is None:
            raise CallerNotFoundError
        return {"justification": text}

    outcome = run_as_caller(request, read, object_route=True)
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome, headers={"Cache-Control": "no-store"})


@router.post(
    "/security/break-glass/{grant_id}/review",
    status_code=204,
    responses={**OBJECT_PROBLEMS, 409: problem("The grant was already reviewed.")},
)
def review_grant(grant_id: uuid.UUID, body: ReviewIn, request: Request) -> Response:
    """Record the verdict: ``justified`` or ``unjustified`` (audited)."""

    def review(caller: Caller) -> None:
        reviewer = review_of(caller)
        if not reviewer.review(grant_id, body.outcome):
            grant = caller.session.get(BreakGlassGrant, grant_id)
            if grant is None or grant.tenant_id != caller.tenant_id:
                raise CallerNotFoundError
            raise CallerRefusedError(
                problem_response(409, type_="already-reviewed", detail="Accès déjà examiné.")
            )

    outcome = run_as_caller(request, review, object_route=True)
    return outcome if isinstance(outcome, Response) else Response(status_code=204)


@router.get(
    "/security/alerts",
    response_model=list[AlertOut],
    responses={**OBJECT_PROBLEMS, 404: problem("Not a security officer.")},
)
def list_alerts(request: Request) -> Response:
    """The security alerts, unacknowledged first."""

    def listing(caller: Caller) -> list[dict[str, Any]]:
        return [
            AlertOut.model_validate(a, from_attributes=True).model_dump(mode="json")
            for a in alerts(caller)
        ]

    outcome = run_as_caller(request, listing, object_route=True)
    if isinstance(outcome, Response):
        return outcome
    return JSONResponse(outcome, headers={"Cache-Control": "no-store"})


@router.post(
    "/security/alerts/{alert_id}/acknowledge",
    status_code=204,
    responses={**OBJECT_PROBLEMS, 409: problem("The alert was already acknowledged.")},
)
def acknowledge(alert_id: uuid.UUID, request: Request) -> Response:
    """Acknowledge an alert (audited)."""

    def ack(caller: Caller) -> None:
        done = acknowledge_alert(caller, alert_id)
        if done is None:
            raise CallerNotFoundError
        if not done:
            raise CallerRefusedError(
                problem_response(
                    409, type_="already-acknowledged", detail="Alerte déjà prise en compte."
                )
            )

    outcome = run_as_caller(request, ack, object_route=True)
    return outcome if isinstance(outcome, Response) else Response(status_code=204)
