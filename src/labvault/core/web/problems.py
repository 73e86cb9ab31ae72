"""RFC 9457 problem details (``application/problem+json``) with stable type URIs.

Problems describe what went wrong in general terms. They never carry personal data, paths,
keys or exception text (invariant I5): a ``detail`` is written by the developer, never
copied from an exception or from the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Scope

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE_BASE",
    "ProblemResponse",
    "problem_body",
    "problem_response",
    "problem_type_for_status",
    "problem_type_uri",
    "wants_problem_json",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://labvault.fr/problems/"

# Stable problem types per HTTP status; statuses not listed use "about:blank" (RFC 9457 4.2.1).
_TYPE_BY_STATUS: dict[int, str] = {
    400: "bad-request",
    401: "unauthenticated",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "content-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "too-many-requests",
    500: "internal-error",
    503: "unavailable",
}


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_type_uri(slug: str) -> str:
    """The type URI of a problem slug: ``not-found`` -> ``https://labvault.fr/problems/not-found``."""
    return PROBLEM_TYPE_BASE + slug


def problem_type_for_status(status: int) -> str:
    slug = _TYPE_BY_STATUS.get(status)
    return problem_type_uri(slug) if slug else "about:blank"


def problem_body(
    status: int,
    *,
    type_: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    **extensions: Any,
) -> dict[str, Any]:
    """A problem details object; ``type_`` is a slug or a full URI (default: per status)."""
    if type_ is None:
        type_uri = problem_type_for_status(status)
    elif ":" in type_:
        type_uri = type_
    else:
        type_uri = problem_type_uri(type_)
    body: dict[str, Any] = {
        "type": type_uri,
        "title": title or _phrase(status),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    for name, value in extensions.items():
        if name in body:
            raise ValueError(f"problem extension {name!r} would replace a standard member")
        body[name] = value
    return body


def problem_response(
    status: int,
    *,
    type_: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> ProblemResponse:
    """An ``application/problem+json`` response."""
    body = problem_body(status, type_=type_, title=title, detail=detail, **extensions)
    return ProblemResponse(body, status_code=status, headers=headers)


def wants_problem_json(scope: Scope) -> bool:
    """API paths (``/api/...``, and ``/fhir/...`` for what its routes do not answer as an
    OperationOutcome themselves: a 500, a refused read) answer errors as problem+json;
    pages answer in French HTML."""
    path = str(scope.get("path", ""))
    root_path = str(scope.get("root_path", ""))
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    return path in ("/api", "/fhir") or path.startswith(("/api/", "/fhir/"))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
