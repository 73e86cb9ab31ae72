"""The progressive delay between failed logins, over HTTP against a real database and rate
limiter, on both backends: a known and an unknown address get the same sequence of answers
and Retry-After values (no enumeration), refused attempts wait rather than hold a worker,
and a success ends the run."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from fastapi.testclient import TestClient

from helpers import CHEAP_HASHER
from labvault.accounts.login_delay import LoginDelay
from labvault.accounts.models import AccountKind
from labvault.accounts.services import AccountService
from labvault.app import create_app
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.config import Settings
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.ratelimit import PROGRESSIVE_DELAY_FREE_FAILURES, LimitsRateLimiter
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

ORIGIN = "https://testserver"
KNOWN = "camille.martin@example.org"
UNKNOWN = "personne.inconnue@example.org"
PASSWORD = "une phrase de passe assez longue"
WRONG = "pas le bon mot de passe"
SYSTEM = Principal(PrincipalKind.SYSTEM, "system:test")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_LabvaultHandler":
            root.removeHandler(handler)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    settings = Settings(data_dir=tmp_path / "var", database_url=database_url)
    FileKeyProvider.create(settings.key_file)
    return settings


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Labo Délais")
        AccountService(
            session,
            tenant_id=organization.id,
            provider=runtime.key_provider,
            mailer=runtime.mailer,
            limiter=runtime.rate_limiter,
            settings=runtime.settings,
            hasher=CHEAP_HASHER,
        ).provision(
            KNOWN, Secret(PASSWORD), kind=AccountKind.PATIENT, security_phrase=None, by=SYSTEM
        )
    with TestClient(create_app(runtime.settings, runtime), base_url=ORIGIN) as test_client:
        yield test_client


def _attempt(client: TestClient, email: str, password: str = WRONG) -> tuple[int, str, str]:
    answer = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    return (
        answer.status_code,
        answer.json().get("detail", ""),
        answer.headers.get("retry-after", ""),
    )


def _sequence(client: TestClient, email: str) -> list[tuple[int, str, str]]:
    """Free failures, then attempts too early and attempts after the wait."""
    seen = [_attempt(client, email) for _ in range(PROGRESSIVE_DELAY_FREE_FAILURES + 1)]
    seen.append(_attempt(client, email))  # 4 failures: wait 0.5 s
    time.sleep(0.6)
    seen.append(_attempt(client, email))  # the 5th failure: wait 1 s
    seen.append(_attempt(client, email))
    time.sleep(1.1)
    seen.append(_attempt(client, email))  # the 6th failure: wait 2 s
    seen.append(_attempt(client, email))
    return seen


def test_known_and_unknown_addresses_get_the_same_delays(client: TestClient) -> None:
    known = _sequence(client, KNOWN)
    unknown = _sequence(client, UNKNOWN)
    failed = (401, "Adresse e-mail ou mot de passe incorrect.", "")
    too_early = "Trop de tentatives. Réessayez dans quelques minutes."
    assert known == unknown
    assert known == [
        failed,
        failed,
        failed,
        failed,
        (429, too_early, "1"),
        failed,
        (429, too_early, "1"),
        failed,
        (429, too_early, "2"),
    ]


def test_a_success_ends_the_run_of_failures(client: TestClient) -> None:
    for _ in range(PROGRESSIVE_DELAY_FREE_FAILURES + 1):
        assert _attempt(client, KNOWN)[0] == 401
    assert _attempt(client, KNOWN, PASSWORD)[0] == 429, "even the right password waits"
    time.sleep(0.6)
    assert _attempt(client, KNOWN, PASSWORD)[0] == 200
    for _ in range(PROGRESSIVE_DELAY_FREE_FAILURES + 1):
        assert _attempt(client, KNOWN)[0] == 401, "the count starts again"


def test_the_delay_is_shared_through_the_limiter_storage() -> None:
    """Two limiters on one storage (two app workers on Redis share it the same way)."""
    limiter = LimitsRateLimiter("memory://")
    first, second = LoginDelay(limiter), LoginDelay(limiter)
    identifier = "a" * 32
    try:
        for _ in range(PROGRESSIVE_DELAY_FREE_FAILURES):
            first.failed(identifier)
        assert second.wait(identifier) == 0.0
        first.failed(identifier)
        assert 0.4 < second.wait(identifier) <= 0.5
        assert second.wait("b" * 32) == 0.0, "another login is not delayed"
        second.succeeded(identifier)
        assert first.wait(identifier) == 0.0
    finally:
        limiter.close()
