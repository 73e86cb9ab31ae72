"""The web application: French server-rendered pages and the JSON API under ``/api/v1``.

Run with ``uvicorn --factory labvault.app:create_app --no-access-log`` (or from the CLI with
``log_config=None, access_log=False``): labvault writes its own scrubbed access log.
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Scope

from labvault import __version__
from labvault.accounts.admin_pages import router as staff_admin_pages
from labvault.accounts.admin_routes import router as staff_admin_router
from labvault.accounts.closure_pages import router as closure_pages
from labvault.accounts.closure_routes import router as closure_router
from labvault.accounts.linking_pages import router as linking_pages
from labvault.accounts.linking_routes import router as linking_router
from labvault.accounts.pages import router as account_pages
from labvault.accounts.password_pages import router as password_pages
from labvault.accounts.routes import router as auth_router
from labvault.accounts.staff_pages import router as staff_account_pages
from labvault.accounts.staff_routes import router as staff_auth_router
from labvault.accounts.stepup_pages import router as step_up_pages
from labvault.accounts.stepup_routes import router as step_up_router
from labvault.accounts.webauthn_pages import router as passkey_pages
from labvault.accounts.webauthn_routes import router as passkey_router
from labvault.appointments.pages import router as appointment_pages
from labvault.appointments.routes import router as appointment_router
from labvault.catalog.pages import router as catalog_pages
from labvault.catalog.routes import router as catalog_router
from labvault.core.audit.runner import AuditCheckpointer
from labvault.core.config import Settings, load_settings
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.keyring import IndexKeysChangedError
from labvault.core.crypto.providers.transit import KeyProviderThrottledError
from labvault.core.logging import configure_logging, get_logger, mask_personal_text
from labvault.core.runtime import Runtime
from labvault.core.web.headers import SecurityHeadersMiddleware
from labvault.core.web.problems import (
    PROBLEM_MEDIA_TYPE,
    problem_response,
    wants_problem_json,
)
from labvault.core.web.request_context import RequestContextMiddleware, request_id_of
from labvault.core.web.templating import create_templates
from labvault.desk.pages import router as desk_pages
from labvault.desk.routes import router as desk_router
from labvault.exports.routes import api_router as exports_router
from labvault.exports.routes import page_router as exports_pages
from labvault.fhir.routes import router as fhir_router
from labvault.patients.pages import router as patient_pages
from labvault.patients.routes import router as patient_router
from labvault.preregistration.pages import router as preregistration_pages
from labvault.preregistration.routes import router as preregistration_router
from labvault.results.pages import router as result_pages
from labvault.results.queue_pages import router as result_queue_pages
from labvault.results.routes import router as result_share_pages
from labvault.results.staff_pages import router as result_review_pages
from labvault.results.staff_routes import router as result_review_router
from labvault.schedules.pages import router as schedule_pages
from labvault.schedules.routes import router as schedule_router
from labvault.security.budgets import BudgetUnavailableError
from labvault.security.guard import GUARD_REFUSALS, protect
from labvault.security.pages import router as security_pages
from labvault.security.routes import router as security_router

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "create_app", "get_runtime", "get_templates"]

WEB_DIR = Path(__file__).parent / "web"
STATIC_DIR = WEB_DIR / "static"
TEMPLATES_DIR = WEB_DIR / "templates"

_log = get_logger("labvault.app")

# French titles and messages of the HTML error page, per status.
_HTML_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Demande incorrecte", "La demande n'a pas pu être comprise."),
    404: (
        "Page introuvable",
        "La page demandée n'existe pas ou n'est plus disponible. "
        "Vérifiez l'adresse ou revenez à l'accueil.",
    ),
    405: ("Action impossible", "Cette action n'est pas possible sur cette page."),
    422: ("Données invalides", "Certaines informations envoyées ne sont pas valides."),
    429: (
        "Trop de demandes",
        "Vous avez effectué trop de demandes en peu de temps. Réessayez dans quelques minutes.",
    ),
    500: (
        "Erreur interne",
        "Une erreur inattendue est survenue. Réessayez dans quelques instants ; "
        "si le problème persiste, contactez votre laboratoire en donnant la référence "
        "ci-dessous.",
    ),
    503: (
        "Service momentanément indisponible",
        "Le service est momentanément indisponible. Réessayez dans quelques instants.",
    ),
}
_HTML_ERROR_DEFAULT = ("Erreur", "Votre demande n'a pas pu aboutir.")


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the application. ``runtime`` defaults to one built from ``settings``."""
    if settings is None:
        settings = runtime.settings if runtime is not None else load_settings()
    configure_logging(settings)
    if runtime is None:
        runtime = Runtime(settings)
    protect(runtime)  # read budgets and honey records on every keyring of this database
    templates = create_templates(TEMPLATES_DIR)
    owned_runtime = runtime

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        _log.info("app.started", environment=settings.environment, version=__version__)
        checkpointer = AuditCheckpointer(
            lambda: owned_runtime.audit_log, settings.audit_checkpoint_seconds
        )
        checkpointer.start()
        try:
            yield
        finally:
            checkpointer.stop()
            owned_runtime.close()
            _log.info("app.stopped")

    app = FastAPI(
        title="labvault",
        version=__version__,
        # Swagger UI and ReDoc load scripts from a CDN: not with this CSP.
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.templates = templates

    # Added last = outermost: the security headers also cover the 500 answers of the
    # request-context middleware.
    app.add_middleware(
        RequestContextMiddleware,
        error_response=functools.partial(_unhandled_error_response, templates),
    )
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.behind_tls)

    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(IndexKeysChangedError, _index_keys_changed)
    for refusal in GUARD_REFUSALS:  # alike: a caller must not tell a honey record apart
        app.add_exception_handler(refusal, _read_budget_exceeded)
    app.add_exception_handler(BudgetUnavailableError, _read_budget_unavailable)
    app.add_exception_handler(KeyProviderThrottledError, _key_provider_throttled)
    # Only reached by errors outside RequestContextMiddleware (which answers all others).
    app.add_exception_handler(Exception, _last_resort_error)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(_pages)
    app.include_router(_api)
    app.include_router(auth_router)
    app.include_router(account_pages)
    app.include_router(password_pages)
    app.include_router(passkey_router)
    app.include_router(passkey_pages)
    app.include_router(step_up_router)
    app.include_router(step_up_pages)
    app.include_router(closure_router)
    app.include_router(closure_pages)
    app.include_router(staff_auth_router)
    app.include_router(staff_account_pages)
    app.include_router(linking_router)
    app.include_router(linking_pages)
    app.include_router(staff_admin_router)
    app.include_router(staff_admin_pages)
    app.include_router(catalog_router)
    app.include_router(catalog_pages)
    app.include_router(schedule_router)
    app.include_router(schedule_pages)
    app.include_router(patient_router)
    app.include_router(patient_pages)
    app.include_router(appointment_router)
    app.include_router(appointment_pages)
    app.include_router(desk_router)
    app.include_router(desk_pages)
    app.include_router(exports_router)
    app.include_router(exports_pages)
    app.include_router(preregistration_router)
    app.include_router(preregistration_pages)
    app.include_router(result_pages)
    app.include_router(result_share_pages)
    app.include_router(result_review_router)
    app.include_router(result_review_pages)
    app.include_router(result_queue_pages)
    app.include_router(security_router)
    app.include_router(security_pages)
    app.include_router(fhir_router)
    return app


# --- dependencies ---------------------------------------------------------------------------


def get_runtime(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)


def get_templates(request: Request) -> Jinja2Templates:
    return cast(Jinja2Templates, request.app.state.templates)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
TemplatesDep = Annotated[Jinja2Templates, Depends(get_templates)]


# --- pages ----------------------------------------------------------------------------------

_pages = APIRouter(include_in_schema=False)


@_pages.get("/", response_class=HTMLResponse, name="index")
async def index(request: Request, templates: TemplatesDep) -> Response:
    return templates.TemplateResponse(request, "index.html", {})


# --- API ------------------------------------------------------------------------------------

_api = APIRouter(prefix="/api/v1")


class HealthStatus(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    keys: Literal["ok"]


_COMPONENT_NAMES = {"database": "the database", "keys": "the key provider"}

_UNAVAILABLE_RESPONSE: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "A component is unavailable (RFC 9457 problem details).",
        "content": {PROBLEM_MEDIA_TYPE: {}},
    }
}


@_api.get(
    "/health", response_model=HealthStatus, responses=_UNAVAILABLE_RESPONSE, tags=["operations"]
)
def health(runtime: RuntimeDep) -> Response:
    """Whether the database answers and the key provider loads. Needs no table."""
    checks = {
        "database": "ok" if _database_ok(runtime) else "unavailable",
        "keys": "ok" if _keys_ok(runtime) else "unavailable",
    }
    if all(state == "ok" for state in checks.values()):
        return JSONResponse({"status": "ok", **checks})
    failing = [_COMPONENT_NAMES[name] for name, state in checks.items() if state != "ok"]
    verb = "is" if len(failing) == 1 else "are"
    return problem_response(
        503,
        type_="unavailable",
        title="Service unavailable",
        detail=f"{' and '.join(failing).capitalize()} {verb} unavailable.",
        checks=checks,
    )


def _database_ok(runtime: Runtime) -> bool:
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1")).scalar_one()
    except Exception as exc:
        _log.warning("health.database_unavailable", error=type(exc).__name__)
        return False
    return True


def _keys_ok(runtime: Runtime) -> bool:
    try:
        # Listing the root key versions reaches a remote provider (Transit) with our token.
        runtime.key_provider.versions()
    except KeyProviderError as exc:
        # Key provider messages name places and fixes, never key material: the operator
        # needs them. They go to the log only, never into the answer.
        _log.warning("health.keys_unavailable", error=type(exc).__name__, reason=str(exc))
        return False
    except Exception as exc:
        _log.warning("health.keys_unavailable", error=type(exc).__name__)
        return False
    return True


# --- errors ---------------------------------------------------------------------------------


def _html_error(
    templates: Jinja2Templates,
    request: Request,
    status: int,
    headers: Mapping[str, str] | None = None,
) -> Response:
    title, message = _HTML_ERRORS.get(status, _HTML_ERROR_DEFAULT)
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "title": title, "message": message, "show_reference": status >= 500},
        status_code=status,
        headers=headers,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status < 400:
        return Response(status_code=status, headers=exc.headers)
    if wants_problem_json(request.scope):
        # The default detail is the status phrase; a detail written by labvault code is kept.
        detail: str | None = exc.detail if isinstance(exc.detail, str) else None
        if detail == _status_phrase(status):
            detail = None
        return problem_response(status, detail=detail, headers=exc.headers)
    return _html_error(get_templates(request), request, status, exc.headers)


async def _index_keys_changed(request: Request, exc: Exception) -> Response:
    """A write raced the start or the end of ``keys rotate-index``: nothing was written, and
    the same request succeeds a moment later with the current keys."""
    retry = StarletteHTTPException(
        503,
        detail="Une opération de maintenance vient de se terminer ; réessayez dans un instant.",
        headers={"Retry-After": "1"},
    )
    return await _http_error(request, retry)


async def _read_budget_exceeded(request: Request, exc: Exception) -> Response:
    """The exfiltration guard refused a read (nothing was decrypted): the answer names no
    patient, no count and no window, and there is nothing to retry (the principal is
    usually locked already)."""
    if wants_problem_json(request.scope):
        return problem_response(
            429,
            type_="read-budget-exceeded",
            title="Read budget exceeded",
            detail="This account has opened too many patient files; the security officers "
            "have been alerted.",
        )
    return _html_error(get_templates(request), request, 429)


async def _read_budget_unavailable(request: Request, exc: Exception) -> Response:
    """The read-budget counters are unreachable: no count, no read (fail closed)."""
    unavailable = StarletteHTTPException(503, headers={"Retry-After": "5"})
    return await _http_error(request, unavailable)


async def _key_provider_throttled(request: Request, exc: Exception) -> Response:
    """OpenBao's decrypt quota refused (the second, independent ceiling): nothing was
    decrypted; the caller may come back later, as a busy service."""
    assert isinstance(exc, KeyProviderThrottledError)
    _log.warning("keys.decrypt_quota_refused")
    seconds = max(1, math.ceil(exc.retry_after or 60))
    throttled = StarletteHTTPException(503, headers={"Retry-After": str(seconds)})
    return await _http_error(request, throttled)


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if not wants_problem_json(request.scope):
        return _html_error(get_templates(request), request, 422)
    # Never echo the input back (it may be personal): location, rule and message only.
    errors = [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "type": str(error.get("type", "")),
            "msg": mask_personal_text(str(error.get("msg", ""))),
        }
        for error in exc.errors()
    ]
    return problem_response(
        422,
        title="Invalid request",
        detail="The request does not match the expected format.",
        errors=errors,
    )


def _unhandled_error_response(
    templates: Jinja2Templates, scope: Scope, request_id: str
) -> Response:
    if wants_problem_json(scope):
        return problem_response(
            500,
            type_="internal-error",
            title="Internal server error",
            detail="An unexpected error occurred. Quote the request id when reporting it.",
            request_id=request_id,
        )
    return _html_error(templates, Request(scope), 500)


async def _last_resort_error(request: Request, exc: Exception) -> Response:
    request_id = request_id_of(request) or "-"
    return _unhandled_error_response(get_templates(request), request.scope, request_id)
