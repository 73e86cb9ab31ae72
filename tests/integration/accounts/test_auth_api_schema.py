"""schemathesis over the authentication API: no 500, no undocumented status.

The app's own OpenAPI schema (``/api/v1/openapi.json``) drives property-based tests of every
``/api/v1/auth/`` operation, called in-process over ASGI against a real SQLite database, key
file and file mailer. Each operation runs twice: as an anonymous client (no cookie) and as a
signed-in one, with a fresh session cookie and its CSRF token for every request, so that the
calls reach past the session check (a logout, a password change or a failed attempt cannot
spoil the next case).

Random strings seldom name a real account, so about half the cases are aimed at one: their
email, password or current password is replaced by the account's, their reset token by the
last one emailed (a deterministic coin, from the generated value, decides). The login steps get
a session that waits for its second factor, the other operations a signed-in one.

Two checks only: ``not_a_server_error`` (no 5xx) and ``status_code_conformance`` (every status
is documented in the operation's ``responses``). Rate limits allow everything here, so the
generated input reaches the code behind them; the cheapest password hash, no minimum answer
time for reset requests and a mailer that only keeps the last reset link keep the run short.
The run is derandomized and bounded (a few dozen cases per operation).
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Iterator

import pytest
import schemathesis
import structlog
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import status_code_conformance

from helpers import AllowEverything
from labvault.accounts import routes
from labvault.accounts.models import Account, AccountKind, AccountStatus
from labvault.accounts.services import AccountService
from labvault.accounts.sessions import CSRF_LABEL, SessionPolicy, SessionStore
from labvault.app import create_app
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.crypto.passwords import Argon2Parameters, PasswordHasher
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.mail.message import OutgoingMessage
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

EMAIL = "schema.test@example.org"
PASSWORD = "une phrase de passe assez longue"
SESSION_COOKIE = routes.SESSION_COOKIE
CHECKS = [not_a_server_error, status_code_conformance]
BOUNDED = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

RESET_LINK = re.compile(r"/compte/mot-de-passe/nouveau#(\S+)")

Credentials = tuple[dict[str, str], dict[str, str]]
"""The cookies and headers of one request with a session."""
SignIn = Callable[[bool], Credentials]
"""A new session (waiting for its second factor if asked) and its CSRF token."""


class LastResetLink:
    """A ``Mailer`` that keeps only the token of the last reset link it was given."""

    def __init__(self) -> None:
        self.token: str | None = None

    def send(self, message: OutgoingMessage) -> None:
        if (match := RESET_LINK.search(message.text)) is not None:
            self.token = match.group(1)


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
    """schemathesis (4.32) renames the running test after each operation through the private
    ``Node._nodeid``, which pytest 9.2 no longer has: give it one to read."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture
def mailer(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> LastResetLink:
    kept = LastResetLink()
    monkeypatch.setattr(runtime, "mailer", kept)
    return kept


@pytest.fixture
def account_id(
    runtime: Runtime, mailer: LastResetLink, monkeypatch: pytest.MonkeyPatch
) -> uuid.UUID:
    """An active patient account, in an organization, with the run's test doubles in place."""
    monkeypatch.setattr(runtime, "rate_limiter", AllowEverything())
    monkeypatch.setattr(
        routes, "_HASHER", PasswordHasher(Argon2Parameters(time_cost=5, memory_cost=7168))
    )
    monkeypatch.setattr(routes, "RESET_ANSWER_SECONDS", 0.0)
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Labo Schema")
        service = AccountService(
            session,
            tenant_id=organization.id,
            provider=runtime.key_provider,
            mailer=runtime.mailer,
            limiter=runtime.rate_limiter,
            settings=runtime.settings,
            hasher=routes._hasher(),
        )
        account = service.provision(
            EMAIL,
            Secret(PASSWORD),
            kind=AccountKind.PATIENT,
            security_phrase=None,
            by=Principal(PrincipalKind.SYSTEM, "system:test"),
        )
        return account.id


@pytest.fixture
def auth_api_schema(runtime: Runtime, account_id: uuid.UUID) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(runtime.settings, runtime)
    try:
        yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    finally:
        shutdown_lifespans()  # the app's lifespan, which schemathesis started


@pytest.fixture
def sign_in(runtime: Runtime, account_id: uuid.UUID) -> SignIn:
    """Makes a new session for the account, as it was first: active with its password (a
    case may have locked it, or changed or reset its password)."""
    with runtime.sessions() as session:
        password_hash = session.get_one(Account, account_id).password_hash

    def new_session(pending: bool) -> Credentials:
        with transaction(runtime.sessions) as session:
            account = session.get_one(Account, account_id)
            account.status = AccountStatus.ACTIVE.value
            account.locked_at = None
            account.failed_logins = 0
            account.password_hash = password_hash
            store = SessionStore(session, runtime.key_provider.derive_key(CSRF_LABEL))
            token, _ = store.create(
                tenant_id=account.tenant_id,
                account_id=account.id,
                policy=SessionPolicy.for_kind(runtime.settings, AccountKind.PATIENT),
                client_hash=None,
                second_factor=None if pending else "email",
            )
            csrf = store.csrf_token(token.reveal())
        return {SESSION_COOKIE: token.reveal()}, {routes.CSRF_HEADER: csrf}

    return new_session


def _heads(value: str) -> bool:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()[0] % 2 == 0


def _aim_at_the_account(case: schemathesis.Case, mailer: LastResetLink) -> None:
    """Half the time (by a coin made from the value), name the account, or its last link."""
    body = case.body
    if not isinstance(body, dict):
        return
    known = {
        "email": EMAIL,
        "password": PASSWORD,
        "current_password": PASSWORD,
        "token": mailer.token,
    }
    for name, value in known.items():
        if value is not None and isinstance(body.get(name), str) and _heads(body[name]):
            body[name] = value


COVERED = r"^/api/v1/(auth|account|admin)/"
"""The authentication, account (links to lab records, dependents) and staff administration
APIs."""
schema = schemathesis.pytest.from_fixture("auth_api_schema").include(path_regex=COVERED)


@schema.parametrize()
@BOUNDED
def test_anonymous_calls_get_documented_answers(
    case: schemathesis.Case, mailer: LastResetLink
) -> None:
    _aim_at_the_account(case, mailer)
    case.call_and_validate(checks=CHECKS)


@schema.parametrize()
@BOUNDED
def test_calls_with_a_session_get_documented_answers(
    case: schemathesis.Case, sign_in: SignIn, mailer: LastResetLink
) -> None:
    _aim_at_the_account(case, mailer)
    cookies, headers = sign_in(case.path.startswith("/api/v1/auth/login/"))
    case.call_and_validate(cookies=cookies, headers=headers, checks=CHECKS)
