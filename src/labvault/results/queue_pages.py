"""The matching queue's French pages, for biologists and receptionists: "Résultats à
rattacher" (reason and time only, nothing decrypted; only the messages of the sending
systems serving the staff member's sites), one message (its claimed identity, the INS
masked, and for a biologist its orders; decrypted and audited), and the forms that attach
it to a patient's record or discard it (a reason from a closed list and a recent step-up).

No JS; every POST carries the session's CSRF token. Anyone else, and any message unknown,
already handled, another tenant's or from a system serving none of the caller's sites,
gets the same "page introuvable" 404 page. A patient record out of the staff member's
scope cannot be chosen (the same refusal as an unknown one).
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.callers import Caller, CallerNotFoundError, run_page_as_caller
from labvault.accounts.forms import FormText, redirect_to, render_page
from labvault.accounts.routes import SESSION_COOKIE
from labvault.patients.routes import mask_national_number
from labvault.results.intake import OrderDigester
from labvault.results.queue import (
    QUEUE_ROLES,
    DiscardReason,
    DiscardReasonError,
    MatchingQueue,
    QueuedMessage,
    QueueError,
)

__all__ = ["QUEUE_PAGE", "router"]

QUEUE_PAGE: Final = "/laboratoire/rapprochement"
router = APIRouter(prefix=QUEUE_PAGE, include_in_schema=False)
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
REASONS: Final = {
    "no-identifier": "Ni INS ni traits d'identité suffisants",
    "invalid-identifier": "INS invalide",
    "no-candidate": "Aucun dossier correspondant",
    "several-candidates": "Plusieurs dossiers possibles",
    "traits-differ": "Traits d'identité différents du dossier",
    "order-of-another-patient": "Demande déjà rattachée à un autre patient",
    "identity-erased": "Dossier effacé",
    "traits-only": "Trouvé par les traits seuls, hors de la prise en charge de l'expéditeur",
}
SEXES: Final = {"M": "masculin", "F": "féminin"}
DISCARD_REASONS: Final = {
    DiscardReason.WRONG_LABORATORY.value: "Message destiné à un autre laboratoire",
    DiscardReason.TEST_MESSAGE.value: "Message de test du système du laboratoire",
    DiscardReason.SENT_IN_ERROR.value: "Envoyé par erreur, annulé par le laboratoire",
    DiscardReason.DUPLICATE.value: "Doublon d'un résultat déjà rattaché",
}
NOTICES: Final = {
    "rattache": "Résultat rattaché au dossier : il attend la validation du biologiste.",
    "ecarte": "Message écarté : son contenu est désormais illisible.",
}


def queue_for(caller: Caller) -> MatchingQueue:
    """The caller's queue; staff of other roles and patients get the 404."""
    if not caller.is_staff or caller.role not in QUEUE_ROLES:
        raise CallerNotFoundError
    return MatchingQueue(
        caller.session,
        caller.keyring(),
        caller.scope(),
        orders=OrderDigester.from_provider(caller.runtime.key_provider, caller.tenant_id),
        require_step_up=caller.require_step_up,
    )


def _when(value: object) -> str:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return aware.astimezone(PARIS).strftime("%d/%m/%Y %H:%M")
    if isinstance(value, dt.date):
        return value.strftime("%d/%m/%Y")
    return ""


def _message_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CallerNotFoundError from None


def _message_path(text: str) -> str:
    """Where the step-up page sends the browser back: the message's page (only a well-formed
    id goes into the path)."""
    try:
        return f"{QUEUE_PAGE}/{uuid.UUID(text)}"
    except ValueError:
        return QUEUE_PAGE


def _message_page(
    request: Request,
    caller: Caller,
    opened: QueuedMessage,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    context: dict[str, Any] = {
        "message": opened,
        "claim": opened.result.patient,
        "orders": opened.result.orders,
        "reason": REASONS.get(opened.item.reason, opened.item.reason),
        "sexes": SEXES,
        "when": _when,
        "values": values or {},
        "queue_page": QUEUE_PAGE,
        "mask_ins": mask_national_number,
        "discard_reasons": DISCARD_REASONS,
        "csrf_token": caller.service.sessions.csrf_token(request.cookies.get(SESSION_COOKIE, "")),
    }
    return render_page(
        request,
        "results/queue/message.html",
        context,
        errors=errors,
        status=status,
        headers={"Cache-Control": "no-store"},
    )


@router.get("", name="result_matching_queue")
def queue_page(request: Request) -> Response:
    def show(caller: Caller) -> Response:
        items = queue_for(caller).list()
        return render_page(
            request,
            "results/queue/liste.html",
            {
                "items": items,
                "reasons": REASONS,
                "when": _when,
                "queue_page": QUEUE_PAGE,
                "notice": NOTICES.get(request.query_params.get("info", "")),
            },
            headers={"Cache-Control": "no-store"},
        )

    return run_page_as_caller(request, show)


@router.get("/{message_id}", name="result_matching_message")
def message_page(message_id: str, request: Request) -> Response:
    def show(caller: Caller) -> Response:
        queue = queue_for(caller)
        opened = queue.open(_message_id(message_id))
        if opened is None:
            raise CallerNotFoundError
        return _message_page(request, caller, opened)

    return run_page_as_caller(request, show)


@router.post("/{message_id}/rattacher", name="result_matching_attach")
def attach(
    message_id: str, request: Request, patient_id: FormText = "", csrf_token: FormText = ""
) -> Response:
    values = {"patient_id": patient_id.strip()[:64]}

    def act(caller: Caller) -> Response:
        queue = queue_for(caller)
        subject = _message_id(message_id)
        try:
            chosen = uuid.UUID(values["patient_id"])
        except ValueError:
            chosen = None
        refusal = "Indiquez l'identifiant du dossier patient (ex. 3f2a9c4e-…)."
        if chosen is not None:
            try:
                queue.attach(subject, chosen)
            except QueueError as refused:
                refusal = str(refused)
            else:
                return redirect_to(request, QUEUE_PAGE, info="rattache")
        opened = queue.open(subject)
        if opened is None:
            raise CallerNotFoundError
        return _message_page(
            request, caller, opened, errors={"patient_id": refusal}, values=values, status=422
        )

    return run_page_as_caller(request, act, csrf_token=csrf_token)


@router.post("/{message_id}/ecarter", name="result_matching_discard")
def discard(
    message_id: str, request: Request, reason: FormText = "", csrf_token: FormText = ""
) -> Response:
    values = {"reason": reason.strip()[:32]}

    def act(caller: Caller) -> Response:
        queue = queue_for(caller)
        subject = _message_id(message_id)
        try:
            queue.discard(subject, values["reason"])
        except DiscardReasonError as refused:
            opened = queue.open(subject)
            if opened is None:
                raise CallerNotFoundError from None
            return _message_page(
                request, caller, opened, errors={"reason": str(refused)}, values=values, status=422
            )
        except QueueError:
            raise CallerNotFoundError from None
        return redirect_to(request, QUEUE_PAGE, info="ecarte")

    return run_page_as_caller(
        request, act, csrf_token=csrf_token, step_up_return=_message_path(message_id)
    )
