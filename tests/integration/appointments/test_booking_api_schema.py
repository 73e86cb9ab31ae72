"""schemathesis over the booking API: no 500, no undocumented status.

The app's own OpenAPI schema drives property-based tests of every booking operation
(``/api/v1/sites``, ``/api/v1/exams``, ``/api/v1/appointments...``), in-process over ASGI,
against a real SQLite database: anonymously, and as a patient account with its session and
CSRF token. Random ids seldom name anything, so about half the cases are aimed (a
deterministic coin, from the generated value) at the caller's own record, a real site, real
exams and a real appointment, which lets them reach the service's checks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import structlog
from booking_world import BookingWorld, build_booking_world, next_slot
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import status_code_conformance

from caller_world import (
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from labvault.app import create_app
from labvault.appointments.services import BookingService
from labvault.core.audit.events import audited_transaction
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import utcnow
from labvault.core.runtime import Runtime
from labvault.patients.scope import patient_scope

CHECKS = [not_a_server_error, status_code_conformance]
BOUNDED = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
COVERED = r"^/api/v1/(sites|exams|appointments)"


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
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    return build_caller_world(alpha)


@pytest.fixture
def targets(alpha: Runtime, cw: CallerWorld) -> dict[str, Any]:
    """Real objects the aimed cases name: the caller's record, a site, exams, a booking."""
    bw: BookingWorld = build_booking_world(alpha, cw.world)
    own = cw.world.patients["today"]
    principal = bw.patient_principal("today")
    with audited_transaction(bw.world.sessions) as session:
        keyring = TenantKeyring(session, alpha.key_provider, bw.world.tenant, principal)
        scope = patient_scope(principal, bw.world.tenant, frozenset({own}), now=utcnow())
        service = BookingService(session, keyring, scope, alpha.settings)
        day = (utcnow() + dt.timedelta(days=5)).date()
        held = service.hold(own, bw.main, [bw.exams["glucose"]], next_slot(day, 9))
    return {
        "patient_id": str(own),
        "site_id": str(bw.main),
        "exam_ids": [str(bw.exams["glucose"])],
        "exam": [str(bw.exams["glucose"])],
        "appointment_id": str(held.id),
    }


@pytest.fixture
def booking_api_schema(
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
    """Half the time (by a coin made from the value), name real objects."""
    for container in (case.path_parameters, case.query, case.body):
        if not isinstance(container, dict):
            continue
        for name, value in targets.items():
            if name in container and _heads(container[name]):
                container[name] = value


schema = schemathesis.pytest.from_fixture("booking_api_schema").include(path_regex=COVERED)


@schema.parametrize()
@BOUNDED
def test_anonymous_calls_get_documented_answers(
    case: schemathesis.Case, targets: dict[str, Any]
) -> None:
    _aim(case, targets)
    case.call_and_validate(checks=CHECKS)


@schema.parametrize()
@BOUNDED
def test_calls_with_a_session_get_documented_answers(
    case: schemathesis.Case, cw: CallerWorld, targets: dict[str, Any]
) -> None:
    _aim(case, targets)
    session = cw.sessions[PATIENT_OWN]
    case.call_and_validate(
        cookies={SESSION_COOKIE: session.token},
        headers={"X-CSRF-Token": session.csrf},
        checks=CHECKS,
    )
