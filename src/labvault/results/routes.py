"""The share links a patient gives to a doctor: ``/partage/<token>`` (anonymous).

The token is the credential (see :mod:`labvault.results.sharing`): the page shows the
shared report read-only, ``/partage/<token>/pdf`` its PDF as an attachment. Every link that
does not open (unknown, malformed, expired, revoked, report withdrawn) gets the same neutral
404 page; too many failures or views from one client address get a 429 page. Every answer
is ``no-store``, ``noindex`` and sent with ``Referrer-Policy: no-referrer`` (the link must
not leak through a ``Referer`` to another site, nor be kept by a cache or a search engine).
The access log records the route template, never the token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from fastapi import APIRouter, Request
from starlette.responses import Response

from labvault.accounts.forms import error_page, runtime_of, templates_of
from labvault.accounts.routes import RequestContext
from labvault.core.audit.events import audited_transaction
from labvault.organizations.services import get_organization
from labvault.results.pages import PDF_HEADERS, french_date, french_moment
from labvault.results.sharing import (
    SHARE_PATH,
    ShareGoneError,
    ShareThrottledError,
    ShareViewer,
)

__all__ = ["router"]

router = APIRouter(prefix=SHARE_PATH, include_in_schema=False)

T = TypeVar("T")

LINK_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
}
NOT_FOUND_TITLE: Final = "Lien de partage introuvable"
NOT_FOUND_MESSAGE: Final = (
    "Ce lien de partage n'existe pas ou n'est plus valable (il a expiré ou le patient l'a "
    "arrêté). Demandez au patient de vous en envoyer un nouveau."
)
THROTTLED_MESSAGE: Final = (
    "Trop de liens de partage ont été ouverts depuis votre connexion. Réessayez dans une heure."
)


def _with_headers(response: Response) -> Response:
    for name, value in LINK_HEADERS.items():
        response.headers[name] = value
    return response


def _not_found(request: Request) -> Response:
    return _with_headers(error_page(request, 404, NOT_FOUND_TITLE, NOT_FOUND_MESSAGE))


def _throttled(request: Request) -> Response:
    response = error_page(request, 429, "Trop de demandes", THROTTLED_MESSAGE)
    response.headers["Retry-After"] = "3600"
    return _with_headers(response)


def _run(request: Request, action: Callable[[ShareViewer], T]) -> T | Response:
    """``action`` in one audited unit of work for this deployment's organization; a
    throttled client gets the 429 page (its refusal recorded), a share whose record went
    away meanwhile the 404 (rolled back: nothing counted)."""
    context = RequestContext(request, runtime_of(request))
    runtime = context.runtime
    try:
        with audited_transaction(runtime.sessions) as session:
            viewer = ShareViewer(
                session,
                runtime.key_provider,
                get_organization(session, runtime.settings.organization).id,
                runtime.rate_limiter,
                client=context.client_hash,
                context=context.audit,
            )
            try:
                return action(viewer)
            except ShareThrottledError:
                throttled = True
    except ShareGoneError:
        return _not_found(request)
    assert throttled
    return _throttled(request)


@router.get("/{token}", name="result_share_view")
def shared_report(token: str, request: Request) -> Response:
    found = _run(request, lambda viewer: viewer.open(token[:100]))
    if isinstance(found, Response):
        return found
    if found is None:
        return _not_found(request)
    response = templates_of(request).TemplateResponse(
        request,
        "results/patient/partage_vue.html",
        {
            "shared": found,
            "detail": found.detail,
            "report": found.detail.summary,
            "french_date": french_date,
            "french_moment": french_moment,
            "pdf_url": f"{SHARE_PATH[1:]}/{token}/pdf",
        },
    )
    return _with_headers(response)


@router.get("/{token}/pdf", name="result_share_pdf")
def shared_pdf(token: str, request: Request) -> Response:
    found = _run(request, lambda viewer: viewer.pdf(token[:100]))
    if isinstance(found, Response):
        return found
    if found is None:
        return _not_found(request)
    return _with_headers(Response(found, media_type="application/pdf", headers=PDF_HEADERS))
