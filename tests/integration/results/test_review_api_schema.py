"""schemathesis over the biologist's review API (``/api/v1/results/review``): no 500, no
undocumented status.

The app's own OpenAPI schema drives property-based calls, in-process over ASGI against a
real SQLite database, as the world's biologist and receptionist (session cookie and CSRF
header on every request). Random ids seldom name a real report, so about half the cases are
aimed at one of the world's reports (a deterministic coin, from the generated value, decides).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
import structlog
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import status_code_conformance

from caller_world import SESSION_COOKIE, CallerWorld, alpha_settings, build_caller_world
from helpers import AllowEverything
from labvault.accounts import routes
from labvault.app import create_app
from labvault.core.config import Settings
from labvault.core.runtime import Runtime
from results_world import add_report, hemoglobin

CHECKS = [not_a_server_error, status_code_conformance]
BOUNDED = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


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
    built = build_caller_world(alpha)
    world = built.world
    report_id = add_report(
        alpha, world.sessions, world.tenant, world.patients["today"], [hemoglobin()]
    )
    world.extra["report"] = report_id
    return built


@pytest.fixture
def review_api_schema(alpha: Runtime, cw: CallerWorld) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(alpha.settings, alpha)
    try:
        yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    finally:
        shutdown_lifespans()


def _heads(value: str) -> bool:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()[0] % 2 == 0


def _aim(case: schemathesis.Case, cw: CallerWorld) -> None:
    """Half the time, the path's report is the world's (a report to validate, in scope)."""
    parameters = case.path_parameters or {}
    value = parameters.get("report_id")
    if isinstance(value, str) and _heads(value):
        parameters["report_id"] = str(cw.world.extra.get("report", uuid.uuid4()))


COVERED = r"^/api/v1/results/review"
schema = schemathesis.pytest.from_fixture("review_api_schema").include(path_regex=COVERED)


@schema.parametrize()
@BOUNDED
def test_biologist_calls_get_documented_answers(case: schemathesis.Case, cw: CallerWorld) -> None:
    _aim(case, cw)
    session = cw.sessions["biologist"]
    case.call_and_validate(
        cookies={SESSION_COOKIE: session.token},
        headers={routes.CSRF_HEADER: session.csrf},
        checks=CHECKS,
    )


@schema.parametrize()
@BOUNDED
def test_receptionist_calls_get_documented_answers(
    case: schemathesis.Case, cw: CallerWorld
) -> None:
    _aim(case, cw)
    session = cw.sessions["receptionist"]
    case.call_and_validate(
        cookies={SESSION_COOKIE: session.token},
        headers={routes.CSRF_HEADER: session.csrf},
        checks=CHECKS,
    )
