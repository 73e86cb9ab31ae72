"""schemathesis over the organization admin's configuration API: the exam catalog
(``/api/v1/admin/exams``) and site schedules and closures (``/api/v1/admin/sites/...``).
No 500, no undocumented status, answers that match their declared schema.

The app's own OpenAPI schema drives property-based calls in-process over ASGI against a
real SQLite database: anonymously, as the world's receptionist (the uniform 404) and as its
organization admin (with a passkey, as its role requires), with the session cookie and CSRF
header on every request. About half the cases (a deterministic coin, from the generated
value) are aimed at real objects: the main site, a real exam, a real closure, so that the
generated bodies reach the services' validation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
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

from caller_world import SESSION_COOKIE, CallerWorld, alpha_settings, build_caller_world
from helpers import AllowEverything
from labvault.accounts import routes
from labvault.accounts.webauthn import WebAuthnCredential
from labvault.app import create_app
from labvault.catalog.services import ExamCatalog
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import AuditTrail
from labvault.core.config import Settings
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.schedules.services import SiteScheduleService

CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
BOUNDED = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
COVERED = r"^/api/v1/admin/(exams|sites)"
"""The exam catalog and the sites' schedules and closures (and the staff admin's site list)."""
SYSTEM = SystemPrincipal("test:admin-config-schema")


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
def targets(cw: CallerWorld) -> dict[str, str]:
    """The admin's passkey (its role requires one), a real exam and a real closure."""
    site = cw.world.sites["main"]
    with transaction(cw.world.sessions) as session:
        session.add(
            WebAuthnCredential(
                id=uuid.uuid4(),
                tenant_id=cw.world.tenant,
                account_id=cw.accounts["organization_admin"],
                credential_id=uuid.uuid4().bytes,
                public_key=b"not used here",
                label=b"not used here",
            )
        )
        audit = AuditTrail(session, SYSTEM)
        exam = ExamCatalog(session, audit, cw.world.tenant).create(
            {"code": "GLY", "label": "Glycémie", "sampling_minutes": 5}
        )
        first = dt.date.today() + dt.timedelta(days=20)
        closure = SiteScheduleService(session, audit, cw.world.tenant).add_closure(
            site, starts_on=first, ends_on=first, reason="Inventaire"
        )
        return {"site_id": str(site), "exam_id": str(exam.id), "closure_id": str(closure.id)}


@pytest.fixture
def admin_config_api_schema(
    alpha: Runtime, targets: dict[str, str]
) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(alpha.settings, alpha)
    try:
        yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    finally:
        shutdown_lifespans()


def _heads(value: object) -> bool:
    return hashlib.sha256(repr(value).encode("utf-8", "surrogatepass")).digest()[0] % 2 == 0


def _aim(case: schemathesis.Case, targets: dict[str, str]) -> None:
    """Half the time (by a coin made from the value), name the real site, exam, closure."""
    parameters: Any = case.path_parameters
    if not isinstance(parameters, dict):
        return
    for name in ("site_id", "exam_id", "closure_id"):
        if name in parameters and _heads(parameters[name]):
            parameters[name] = targets[name]


def _call_as(case: schemathesis.Case, cw: CallerWorld, name: str) -> None:
    session = cw.sessions[name]
    case.call_and_validate(
        cookies={SESSION_COOKIE: session.token},
        headers={routes.CSRF_HEADER: session.csrf},
        checks=CHECKS,
    )


schema = schemathesis.pytest.from_fixture("admin_config_api_schema").include(path_regex=COVERED)


@schema.parametrize()
@BOUNDED
def test_anonymous_calls_get_documented_answers(
    case: schemathesis.Case, targets: dict[str, str]
) -> None:
    _aim(case, targets)
    case.call_and_validate(checks=CHECKS)


@schema.parametrize()
@BOUNDED
def test_receptionist_calls_get_documented_answers(
    case: schemathesis.Case, cw: CallerWorld, targets: dict[str, str]
) -> None:
    _aim(case, targets)
    _call_as(case, cw, "receptionist")


@schema.parametrize()
@BOUNDED
def test_organization_admin_calls_get_documented_answers(
    case: schemathesis.Case, cw: CallerWorld, targets: dict[str, str]
) -> None:
    _aim(case, targets)
    _call_as(case, cw, "organization_admin")
