"""schemathesis over break-glass and the security review: no 500, no undocumented status,
answers that match their declared schema.

The app's own OpenAPI schema drives property-based calls of ``/api/v1/break-glass`` (open,
end early) and ``/api/v1/security/...`` (grants, justification, review, alerts,
acknowledgement), in-process over ASGI against a real SQLite database: anonymously, as the
world's receptionist (who may break the glass) and as its security officer (who reviews),
with the session cookie and CSRF header on every request. Before the run the receptionist
opens one real grant (which raises one real alert), and about half the cases are aimed (a
deterministic coin, from the generated value) at it: the grant's and the alert's ids, the
patient's names and birth date, a justification long enough to be accepted. Rate limits
allow everything, so the generated input reaches the code behind them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import structlog
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from caller_world import (
    ORIGIN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from helpers import AllowEverything
from labvault.accounts import routes
from labvault.app import create_app
from labvault.core.config import Settings
from labvault.core.runtime import Runtime
from labvault.security.models import SecurityAlert

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
BOUNDED = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
COVERED = r"^/api/v1/(security/|break-glass)"
"""Break-glass grants and the security officers' review of grants and alerts."""
JUSTIFICATION = "Patiente à l'accueil, rendez-vous pris par téléphone non saisi"


@pytest.fixture
def backend() -> str:
    """SQLite only: the property run is about the routes, not the database backend."""
    return "sqlite"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_LabvaultHandler":
            root.removeHandler(handler)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis (4.32) renames the running test through the private ``Node._nodeid``."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture
def alpha(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    monkeypatch.setattr(runtime, "rate_limiter", AllowEverything())
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    return build_caller_world(alpha)


@pytest.fixture
def targets(alpha: Runtime, cw: CallerWorld) -> dict[str, Any]:
    """One real grant, opened by the receptionist on the record ``no_appointment`` (out of
    its relationship scope), the alert it raised, and a designation for a new one."""
    person = cw.world.inputs["no_appointment"]
    designation = {
        "birth_name": person.birth_name,
        "first_name": person.first_given_name,
        "birth_date": person.birth_date.isoformat(),
    }
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as client:
        client.cookies.set(
            SESSION_COOKIE, cw.sessions["receptionist"].token, domain="testserver.local"
        )
        opened = client.post(
            "/api/v1/break-glass",
            json={**designation, "reason": "walk-in", "justification": JUSTIFICATION},
            headers={routes.CSRF_HEADER: cw.sessions["receptionist"].csrf},
        )
    assert opened.status_code == 201, opened.text
    with cw.world.sessions() as session:
        alert_id = session.scalar(select(SecurityAlert.id))
    assert alert_id is not None
    other = cw.world.inputs["other_site"]
    return {
        "grant_id": opened.json()["grant_id"],
        "alert_id": str(alert_id),
        "designation": {
            "nir": None,
            "birth_name": other.birth_name,
            "first_name": other.first_given_name,
            "birth_date": other.birth_date.isoformat(),
            "justification": JUSTIFICATION,
        },
    }


@pytest.fixture
def security_api_schema(
    alpha: Runtime, targets: dict[str, Any]
) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(alpha.settings, alpha)
    try:
        yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    finally:
        shutdown_lifespans()


def _heads(value: object) -> bool:
    return hashlib.sha256(repr(value).encode("utf-8", "surrogatepass")).digest()[0] % 2 == 0


def _aim(case: schemathesis.Case, targets: dict[str, Any]) -> None:
    """Half the time (by a coin made from the value), name the real grant or alert; a
    break-glass request, half the time, designates the record ``other_site`` completely
    (out of the receptionist's scope, no grant yet) with an acceptable justification."""
    for container in (case.path_parameters, case.query):
        if not isinstance(container, dict):
            continue
        for name in ("grant_id", "alert_id"):
            if name in container and _heads(container[name]):
                container[name] = targets[name]
    body = case.body
    if isinstance(body, dict) and "reason" in body and _heads(body.get("justification")):
        body.update(targets["designation"])


def _call_as(case: schemathesis.Case, cw: CallerWorld, name: str) -> None:
    session = cw.sessions[name]
    case.call_and_validate(
        cookies={SESSION_COOKIE: session.token},
        headers={routes.CSRF_HEADER: session.csrf},
        checks=CHECKS,
    )


schema = schemathesis.pytest.from_fixture("security_api_schema").include(path_regex=COVERED)


@schema.parametrize()
@BOUNDED
def test_anonymous_calls_get_documented_answers(
    case: schemathesis.Case, targets: dict[str, Any]
) -> None:
    _aim(case, targets)
    case.call_and_validate(checks=CHECKS)


@schema.parametrize()
@BOUNDED
def test_receptionist_calls_get_documented_answers(
    case: schemathesis.Case, cw: CallerWorld, targets: dict[str, Any]
) -> None:
    _aim(case, targets)
    _call_as(case, cw, "receptionist")


@schema.parametrize()
@BOUNDED
def test_security_officer_calls_get_documented_answers(
    case: schemathesis.Case, cw: CallerWorld, targets: dict[str, Any]
) -> None:
    _aim(case, targets)
    _call_as(case, cw, "security_officer")
