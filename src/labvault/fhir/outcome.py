"""FHIR answers: ``application/fhir+json`` resources and OperationOutcome errors.

Error texts are fixed strings written here, never copied from the request or an exception
(I5): an OperationOutcome says what kind of problem it is, not what value caused it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from starlette.responses import Response

__all__ = [
    "FHIR_JSON",
    "NO_STORE",
    "FhirResponse",
    "fhir_response",
    "operation_outcome",
    "outcome_response",
]

FHIR_JSON: Final = "application/fhir+json"
NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}
REALM: Final = 'Bearer realm="labvault-fhir"'


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=False, separators=(",", ":"), default=_json_default
        ).encode("utf-8")


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def fhir_response(
    resource: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> FhirResponse:
    """A resource answer; every answer of this API carries personal data or none, and none
    of them may be cached by an intermediary."""
    return FhirResponse(dict(resource), status_code=status, headers={**NO_STORE, **(headers or {})})


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


_STATUS_CODES: Final = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    413: "too-long",
    415: "not-supported",
    422: "processing",
    429: "throttled",
}


def outcome_response(
    status: int,
    diagnostics: str,
    *,
    code: str | None = None,
    severity: str = "error",
    headers: Mapping[str, str] | None = None,
) -> FhirResponse:
    return fhir_response(
        operation_outcome(code or _STATUS_CODES.get(status, "exception"), diagnostics, severity),
        status,
        headers,
    )


NOT_FOUND: Final = "Resource not found."


def not_found() -> FhirResponse:
    """The one answer for absent, out of scope, of another tenant, or not granted (I7)."""
    return outcome_response(404, NOT_FOUND)


def unauthenticated(error: str | None = None) -> FhirResponse:
    """RFC 6750 §3: no token asks for one; a bad token says ``invalid_token``."""
    challenge = REALM if error is None else f'{REALM}, error="{error}"'
    return outcome_response(
        401, "A valid bearer token is required.", headers={"WWW-Authenticate": challenge}
    )


def insufficient_scope(scope: str) -> FhirResponse:
    return outcome_response(
        403,
        "The token's scopes do not allow this interaction.",
        headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'},
    )
