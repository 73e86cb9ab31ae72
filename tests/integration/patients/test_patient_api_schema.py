"""schemathesis over the patient API, the desk's record links and the health check: no 500,
no undocumented status, answers that match their declared schema.

The app's own OpenAPI schema drives property-based calls of ``/api/v1/health``,
``/api/v1/staff/...`` (desk links and revocations), ``/api/v1/patients/search`` and
``/api/v1/patients/{patient_id}`` (``/nir``, ``/contact``, ``/access-history``), in-process
over ASGI against a real SQLite database: anonymously, as the world's receptionist and as a
patient account (session cookie and CSRF header on every request; the sessions' second
factor is fresh, so the step-up routes reach past the step-up check). Random values seldom
name anything, so about half the cases are aimed (a deterministic coin, from the generated
value) at the patient ``today`` (in the receptionist's scope, and the patient account's own
record): its id, NIR, names and birth date, and the patient account's email. Rate limits
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
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from caller_world import (
    PATIENT_OTHER,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from helpers import AllowEverything
from labvault.accounts import routes
from labvault.accounts.linking import PatientLinks
from labvault.app import create_app
from labvault.core.audit.events import audited_transaction
from labvault.core.config import Settings
from labvault.core.runtime import Runtime

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
BOUNDED = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
COVERED = (
    r"^/api/v1/(health$|staff/|"
    r"patients/(search|\{patient_id\}(/(nir|contact|access-history))?)$)"
)
"""The health check, the desk's record links, and the patient record and search API (the
patient's documents are the pre-registration module's)."""


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
def targets(cw: CallerWorld) -> dict[str, dict[str, Any]]:
    """What the aimed cases name, by path prefix. The patient routes: the record ``today``
    (the patient account's own, in the receptionist's scope). The desk: the record
    ``tomorrow``, which the patient account acts for as a dependent (to revoke), and a desk
    code of the other patient account (to link it)."""
    person = cw.world.inputs["today"]
    assert person.nir is not None
    cw.add_dependent(PATIENT_OWN, cw.world.patients["tomorrow"])
    with audited_transaction(cw.world.sessions) as session:
        service = cw.service(session)
        account = service.account(cw.accounts[PATIENT_OTHER])
        assert account is not None
        code = PatientLinks(service).new_desk_code(account).code.reveal()
    return {
        "/api/v1/patients/": {
            "patient_id": str(cw.world.patients["today"]),
            "nir": person.nir.formatted(),
            "birth_name": person.birth_name,
            "first_name": person.first_given_name,
            "birth_date": person.birth_date.isoformat(),
        },
        "/api/v1/staff/patient-links": {
            "patient_id": str(cw.world.patients["tomorrow"]),
            "email": f"{PATIENT_OTHER.replace('_', '.')}@alpha.example.org",
            "code": code,
        },
        "/api/v1/staff/dependents/": {
            "patient_id": str(cw.world.patients["tomorrow"]),
            "email": f"{PATIENT_OWN}@alpha.example.org",
        },
    }


@pytest.fixture
def patient_api_schema(
    alpha: Runtime, targets: dict[str, dict[str, Any]]
) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(alpha.settings, alpha)
    try:
        yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    finally:
        shutdown_lifespans()


def _heads(value: object) -> bool:
    return hashlib.sha256(repr(value).encode("utf-8", "surrogatepass")).digest()[0] % 2 == 0


def _aim(case: schemathesis.Case, by_prefix: dict[str, dict[str, Any]]) -> None:
    """Half the time (by a coin made from the value), name the real record or account."""
    targets = next((t for p, t in by_prefix.items() if case.path.startswith(p)), {})
    for container in (case.path_parameters, case.query, case.body):
        if not isinstance(container, dict):
            continue
        for name, value in targets.items():
            if name in container and _heads(container[name]):
                container[name] = value


def _call_as(case: schemathesis.Case, cw: CallerWorld, name: str) -> None:
    session = cw.sessions[name]
    case.call_and_validate(
        cookies={SESSION_COOKIE: session.token},
        headers={routes.CSRF_HEADER: session.csrf},
        checks=CHECKS,
    )


schema = schemathesis.pytest.from_fixture("patient_api_schema").include(path_regex=COVERED)


@schema.parametrize()
@BOUNDED
def test_anonymous_calls_get_documented_answers(
    case: schemathesis.Case, targets: dict[str, dict[str, Any]]
) -> None:
    _aim(case, targets)
    case.call_and_validate(checks=CHECKS)


@schema.parametrize()
@BOUNDED
def test_receptionist_calls_get_documented_answers(
    case: schemathesis.Case, cw: CallerWorld, targets: dict[str, dict[str, Any]]
) -> None:
    _aim(case, targets)
    _call_as(case, cw, "receptionist")


@schema.parametrize()
@BOUNDED
def test_patient_calls_get_documented_answers(
    case: schemathesis.Case, cw: CallerWorld, targets: dict[str, dict[str, Any]]
) -> None:
    _aim(case, targets)
    _call_as(case, cw, PATIENT_OWN)
