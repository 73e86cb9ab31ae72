"""schemathesis over the pre-registration and document API: no 500, no undocumented status.

The app's own OpenAPI schema drives property-based tests of ``/api/v1/appointments/{id}/
preregistration``, ``…/documents``, ``/api/v1/documents/{id}`` and ``/api/v1/patients/{id}/
documents``, in-process over ASGI against SQLite: anonymously and as the patient account.
About half the cases name real objects (the caller's appointment, record and a stored
document) so that they reach the service's checks, not just the 404.
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
from schemathesis.specs.openapi.checks import status_code_conformance
from sqlalchemy import select

from caller_world import (
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from labvault.app import create_app
from labvault.appointments.models import Appointment
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.events import audited_transaction
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import utcnow
from labvault.core.runtime import Runtime
from labvault.patients.scope import patient_scope
from labvault.preregistration.services import PreregistrationService

CHECKS = [not_a_server_error, status_code_conformance]
BOUNDED = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
COVERED = (
    r"^/api/v1/(documents/|patients/\{patient_id\}/documents|"
    r"appointments/\{appointment_id\}/(preregistration|documents))"
)
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360606060000000050001a5f645400000000049454e44ae426082"
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
    """The caller's record, its appointment today and one stored document."""
    own = cw.world.patients["today"]
    principal = Principal(PrincipalKind.PATIENT, str(cw.accounts[PATIENT_OWN]))
    with audited_transaction(cw.world.sessions) as session:
        appointment_id = session.scalar(select(Appointment.id).where(Appointment.patient_id == own))
        assert appointment_id is not None
        keyring = TenantKeyring(session, alpha.key_provider, cw.world.tenant, principal)
        scope = patient_scope(principal, cw.world.tenant, frozenset({own}), now=utcnow())
        service = PreregistrationService(session, keyring, scope, alpha.settings)
        stored = service.upload(appointment_id, PNG, consent=True, account_id=None)
        assert stored is not None
    return {
        "patient_id": str(own),
        "appointment_id": str(appointment_id),
        "document_id": str(stored.id),
    }


@pytest.fixture
def preregistration_api_schema(
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
    for container in (case.path_parameters, case.query, case.body):
        if not isinstance(container, dict):
            continue
        for name, value in targets.items():
            if name in container and _heads(container[name]):
                container[name] = value


schema = schemathesis.pytest.from_fixture("preregistration_api_schema").include(path_regex=COVERED)


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
