"""Request ids, the access log and the last-resort error handler, as one pure ASGI middleware.

Each HTTP request gets a random id: sent back in ``X-Request-ID``, bound into structlog's
context variables (so every log line of the request carries it) and kept in
``request.state.request_id``. One access line per request records the method, the route
template (``/api/v1/patients/{patient_id}``), the status, the duration and the request id;
never a query string, a header or a body.

An exception that escapes the application is logged (scrubbed, with the request id) and
answered by ``error_response``; it is not re-raised, so the server never logs it again
outside the scrubbing processors.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

import structlog
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labvault.core.web.headers import STATIC_PREFIX

__all__ = [
    "REQUEST_ID_HEADER",
    "ErrorResponseFactory",
    "RequestContextMiddleware",
    "new_request_id",
    "request_id_of",
]

REQUEST_ID_HEADER = "X-Request-ID"
_MAX_LOGGED_PATH = 200

ErrorResponseFactory = Callable[[Scope, str], Response]
"""Builds the response to an unhandled error from the scope and the request id."""

_log = structlog.get_logger("labvault.web")


def new_request_id() -> str:
    """128 random bits, hex: unguessable and carrying nothing about the request."""
    return secrets.token_hex(16)


def request_id_of(request: Request) -> str | None:
    """The id that RequestContextMiddleware gave to this request, if any."""
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, error_response: ErrorResponseFactory) -> None:
        self.app = app
        self.error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                _log.exception("http.unhandled_error", **_route_fields(scope))
                if status is None:
                    await self._send_error(scope, receive, send_with_id, request_id)
            finally:
                _log.info(
                    "http.request",
                    method=scope.get("method"),
                    **_route_fields(scope),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )

    async def _send_error(
        self, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        try:
            response = self.error_response(scope, request_id)
        except Exception:
            _log.exception("http.error_response_failed")
            response = Response(status_code=500)
        await response(scope, receive, send)


def _route_fields(scope: Scope) -> dict[str, str]:
    """The matched route template, or the bare path (no query string) when none matched."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str) and template:
        return {"route": template}
    path = str(scope.get("path", ""))
    if path.startswith(STATIC_PREFIX):  # FastAPI does not record mounts in scope["route"]
        return {"route": STATIC_PREFIX + "{path}"}
    if len(path) > _MAX_LOGGED_PATH:
        path = path[:_MAX_LOGGED_PATH] + "..."
    return {"path": redact_path(path)}


_PLAIN_SEGMENT = re.compile(r"[a-z][a-z-]{0,31}")


def redact_path(path: str) -> str:
    """An unmatched path as it may be logged: plain words kept, every other segment (an id,
    a share token, a NIR typed into the address bar) replaced by ``*``."""
    return "/".join(
        segment if not segment or _PLAIN_SEGMENT.fullmatch(segment) else "*"
        for segment in path.split("/")
    )
