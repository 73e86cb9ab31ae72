"""The authorization matrix, generated from the application's routes and the route table.

- Every route FastAPI serves has an entry in ``labvault.core.access.routes_table.ROUTES``
  and every entry a route: a new route without a decision fails here.
- Every ``policy`` route x every role (the five staff roles and a patient account) x records
  that are the caller's own / in care at its site today / in care later in the window /
  outside the window / at another site only / cancelled / of another tenant / absent:
  2xx exactly when the compiled default policy grants the interaction and the record is in
  the grant's record scope (the relationship rule is restated below from the world's
  appointments, not copied from the code under test), 404 otherwise.
- Every ``roles`` route: every role outside the entry, and a patient account, get the
  entry's refusal; the allowed roles get something else.

One world per backend (module-scoped): two tenants, staff of every role at the main site of
tenant A, patients placed around the relationship window (``tests/access_world.py``,
placed around the real clock: the routes measure the window from "now").
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import update

import access_world
from access_world import PLACEMENTS, World, build_world
from helpers import app_url, owner_url
from labvault.accounts.models import Account, AccountKind, AccountSession
from labvault.accounts.services import AccountService
from labvault.app import create_app
from labvault.appointments.models import AppointmentStatus
from labvault.core.access.policies import (
    PATIENT_SUBJECT,
    STAFF_SUBJECTS,
    CompiledPolicy,
    Interaction,
    RecordScope,
    compile_policy,
    default_policy,
)
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.access.routes_table import (
    BREAK_GLASS_ROLES,
    ROUTES,
    Requirement,
    RouteAccess,
    route_keys,
)
from labvault.core.config import Settings
from labvault.core.crypto.passwords import Argon2Parameters, PasswordHasher
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.migrate import upgrade
from labvault.core.ratelimit import RateDecision, RateRule
from labvault.core.runtime import Runtime
from labvault.patients.nir import Nir, synthetic_nir
from labvault.patients.synthetic import synthetic_patients
from labvault.security.breakglass import BREAK_GLASS_ROLES as SERVICE_BREAK_GLASS_ROLES

ORIGIN = "https://testserver"
SESSION_COOKIE = "__Host-labvault-session"
PASSWORD = "une phrase de passe assez longue"
PHRASE = "le merle moqueur de Quimper"
SYSTEM = SystemPrincipal("test:authorization-matrix")
CHEAP_HASHER = PasswordHasher(Argon2Parameters(time_cost=5, memory_cost=7168))
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
ORGANIZATION = "Labo Alpha"

ROLES: tuple[str, ...] = (*sorted(STAFF_SUBJECTS), PATIENT_SUBJECT)
"""Every caller the matrix asks for: each staff role, and a patient account."""

OWN = "no_appointment"
"""The world's record the patient account is linked to (no appointment: no staff reaches it)."""

RECORDS: tuple[str, ...] = (
    "own",
    "today",
    "in_20_days",
    "45_days_ago",
    "cancelled",
    "other_site",
    "other_tenant",
    "absent",
)
"""The kinds of records each object route is asked about."""


class AllowEverything:
    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return RateDecision(allowed=True, retry_after=0.0, remaining=rule.amount)

    def test(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return self.hit(rule, *identifiers)

    def hit_or_deny(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return self.hit(rule, *identifiers)

    def reset(self, rule: RateRule, *identifiers: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Caller:
    role: str
    account_id: uuid.UUID
    token: str
    csrf: str

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "Cookie": f"{SESSION_COOKIE}={self.token}",
            "X-CSRF-Token": self.csrf,
            "Origin": ORIGIN,
            **(extra or {}),
        }


@dataclass
class Matrix:
    runtime: Runtime
    world: World
    client: TestClient
    now: dt.datetime
    callers: dict[str, Caller]
    record_ids: dict[str, uuid.UUID]
    own_ids: frozenset[uuid.UUID]
    nirs: dict[uuid.UUID, str] = field(default_factory=dict)
    grant_id: uuid.UUID | None = None
    alert_id: uuid.UUID | None = None

    def call(self, role: str, method: str, url: str, **kwargs: Any) -> Response:
        headers = self.callers[role].headers(kwargs.pop("headers", None))
        if "data" in kwargs:  # a page's form carries the session's CSRF token
            kwargs["data"] = {**kwargs["data"], "csrf_token": self.callers[role].csrf}
        self.client.cookies.clear()
        return self.client.request(method, url, headers=headers, **kwargs)


# --------------------------------------------------------------------------- the world


def _database(backend: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'var' / 'db' / 'labvault.sqlite3'}"
        runtime = Runtime(Settings(data_dir=tmp / "var", database_url=url))
        upgrade(runtime.engine)
        runtime.close()
        return url
    server = request.getfixturevalue("postgres")
    return app_url(server.new_database())


def _service(runtime: Runtime, session: Any, tenant_id: uuid.UUID) -> AccountService:
    return AccountService(
        session,
        tenant_id=tenant_id,
        provider=runtime.key_provider,
        mailer=runtime.mailer,
        limiter=AllowEverything(),
        settings=runtime.settings,
        hasher=CHEAP_HASHER,
        clock=utcnow,
    )


def _sign_in(
    runtime: Runtime,
    world: World,
    email: str,
    *,
    kind: AccountKind,
    role: str | None = None,
    staff_id: uuid.UUID | None = None,
    patient_id: uuid.UUID | None = None,
) -> Caller:
    """An active account with a fully signed-in session (second factor and a fresh step-up
    done): how one logs in is tested elsewhere, the matrix needs the session."""
    with transaction(world.sessions) as session:
        service = _service(runtime, session, world.tenant)
        account = service.provision(
            email,
            Secret(PASSWORD),
            kind=kind,
            security_phrase=PHRASE,
            by=SYSTEM,
            role=role,
            staff_id=staff_id,
        )
        if patient_id is not None:
            session.execute(
                update(Account).where(Account.id == account.id).values(patient_id=patient_id)
            )
        session.flush()
        token, record = service.sessions.create(
            tenant_id=world.tenant,
            account_id=account.id,
            policy=service._policy(account),
            client_hash=None,
            second_factor="totp",
        )
        session.execute(
            update(AccountSession).where(AccountSession.id == record.id).values(step_up_at=utcnow())
        )
        csrf = service.sessions.csrf_token(token.reveal())
        return Caller(role or PATIENT_SUBJECT, account.id, token.reveal(), csrf)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def matrix(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Matrix]:
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"matrix-{backend}")
    url = _database(backend, tmp, request)
    settings = Settings(
        data_dir=tmp / "var",
        database_url=url,
        admin_database_url=owner_url(url),
        organization=ORGANIZATION,
    )
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    now = utcnow()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(access_world, "NOW", now)  # the routes measure the window from now
        world = build_world(runtime)
    callers = {
        role: _sign_in(
            runtime,
            world,
            f"{role.replace('_', '-')}@alpha.example.org",
            kind=AccountKind.STAFF,
            role=role,
            staff_id=world.staff[role],
        )
        for role in sorted(STAFF_SUBJECTS)
    }
    callers[PATIENT_SUBJECT] = _sign_in(
        runtime,
        world,
        "patient.compte@example.org",
        kind=AccountKind.PATIENT,
        patient_id=world.patients[OWN],
    )
    record_ids = {name: world.patients[name] for name in RECORDS if name in world.patients}
    record_ids |= {
        "own": world.patients[OWN],
        "other_tenant": world.foreign_patient,
        "absent": uuid.uuid4(),
    }
    people = list(synthetic_patients(len(PLACEMENTS) + 1, seed=505))  # as build_world
    nirs = {world.patients[name]: _compact(world.inputs[name].nir) for name in world.patients}
    nirs[world.foreign_patient] = _compact(people[-1].nir)
    nirs[record_ids["absent"]] = synthetic_nir(
        random.Random(7), sex=1, birth_date=dt.date(1961, 3, 9)
    ).compact
    with TestClient(create_app(settings, runtime), base_url=ORIGIN) as client:
        matrix = Matrix(
            runtime=runtime,
            world=world,
            client=client,
            now=now,
            callers=callers,
            record_ids=record_ids,
            own_ids=frozenset({world.patients[OWN]}),
            nirs=nirs,
        )
        # A real grant and its alert, for the security officer's routes: on a record no
        # other check of this module asks about (its relationship is out of the window).
        opened = matrix.call(
            "biologist",
            "POST",
            "/api/v1/break-glass",
            json={
                "nir": nirs[world.patients["in_45_days"]],
                "reason": "emergency",
                "justification": "Valeur critique signalée par le médecin traitant",
            },
        )
        assert opened.status_code == 201, opened.text
        matrix.grant_id = uuid.UUID(opened.json()["grant_id"])
        listed = matrix.call("security_officer", "GET", "/api/v1/security/alerts")
        assert listed.status_code == 200, listed.text
        matrix.alert_id = uuid.UUID(listed.json()[0]["id"])
        yield matrix
    runtime.close()


# --------------------------------------------------------------------------- the oracle


def compiled_for(role: str) -> CompiledPolicy:
    if role == PATIENT_SUBJECT:
        principal = Principal(PrincipalKind.PATIENT, "matrix")
    else:
        principal = Principal(PrincipalKind.STAFF, "matrix", role=role)
    return compile_policy(default_policy(), principal)


def in_record_scope(matrix: Matrix, role: str, records: RecordScope, record: str) -> bool:
    """The relationship rule, restated: an appointment (not cancelled) at one of the
    caller's sites (every staff member of the world works at the main site) within the
    window, or today (Paris) for ``site-today``; ``own`` for the patient's own record."""
    if records is RecordScope.OWN:
        return role == PATIENT_SUBJECT and matrix.record_ids[record] in matrix.own_ids
    if role == PATIENT_SUBJECT or records is RecordScope.ALL:
        return False
    placement = PLACEMENTS.get(record)
    if placement is None:  # own (no appointment), other tenant, absent
        return False
    site, offset, status = placement
    if site != "main" or status is AppointmentStatus.CANCELLED:
        return False
    starts_at = matrix.now + offset
    if records is RecordScope.SITE_TODAY:
        return starts_at.astimezone(PARIS).date() == utcnow().astimezone(PARIS).date()
    settings = matrix.runtime.settings
    before = dt.timedelta(days=settings.relationship_days_before)
    after = dt.timedelta(days=settings.relationship_days_after)
    now = utcnow()
    return now - before <= starts_at < now + after


def expected_allowed(matrix: Matrix, entry: RouteAccess, role: str, record: str) -> bool:
    kind = "patient" if role == PATIENT_SUBJECT else "staff"
    if kind not in entry.account_kinds or (entry.roles and role not in entry.roles):
        return False
    assert entry.resource is not None
    assert entry.interaction is not None
    compiled = compiled_for(role)
    grant = compiled.grant_for(entry.resource, entry.interaction)
    if grant is None:
        return False
    if not entry.needs_fields <= compiled.fields(entry.resource, entry.interaction):
        return False
    return in_record_scope(matrix, role, grant.records, record)


def expected_granted(entry: RouteAccess, role: str) -> bool:
    """Whether the caller may use the interaction at all (a search, a search form)."""
    kind = "patient" if role == PATIENT_SUBJECT else "staff"
    if kind not in entry.account_kinds or (entry.roles and role not in entry.roles):
        return False
    assert entry.resource is not None
    assert entry.interaction is not None
    return compiled_for(role).allows(entry.resource, entry.interaction)


# --------------------------------------------------------------------------- requests

RequestBuilder = Callable[[Matrix, uuid.UUID], tuple[str, str, dict[str, Any]]]


def _path(key: str, entry: RouteAccess, record_id: uuid.UUID) -> tuple[str, str]:
    method, _, template = key.partition(" ")
    assert entry.object_param is not None
    return method, template.replace("{" + entry.object_param + "}", str(record_id))


OBJECT_REQUESTS: dict[str, RequestBuilder] = {
    "PATCH /api/v1/patients/{patient_id}/contact": lambda m, record_id: (
        "PATCH",
        f"/api/v1/patients/{record_id}/contact",
        {"json": {"email": "nouvelle.adresse@example.org"}},
    ),
    "POST /api/v1/patients/search": lambda m, record_id: (
        "POST",
        "/api/v1/patients/search",
        {"json": {"nir": m.nirs[record_id]}},
    ),
    "POST /patients/recherche": lambda m, record_id: (
        "POST",
        "/patients/recherche",
        {"data": {"nir": m.nirs[record_id]}},
    ),
    "GET /patients/recherche": lambda m, record_id: ("GET", "/patients/recherche", {}),
}
"""Request builders for policy routes that need more than their path (a body, a query)."""


def _found(answer: Response, record_id: uuid.UUID) -> bool:
    """Whether a search's answer lists the record (JSON page or HTML results table)."""
    if answer.headers.get("content-type", "").startswith("application/json"):
        return any(item["id"] == str(record_id) for item in answer.json()["items"])
    return f"patients/{record_id}" in answer.text


def object_request(
    matrix: Matrix, key: str, entry: RouteAccess, record_id: uuid.UUID
) -> tuple[str, str, dict[str, Any]]:
    if key in OBJECT_REQUESTS:
        return OBJECT_REQUESTS[key](matrix, record_id)
    where = entry.object_from or ""
    assert where.startswith("path:"), (
        f"{key}: add a request builder to OBJECT_REQUESTS (its object is in {where or 'none'})"
    )
    method, url = _path(key, entry, record_id)
    return method, url, {}


POLICY_ROUTES = sorted(
    key for key, entry in ROUTES.items() if entry.requirement is Requirement.POLICY
)
ROLE_ROUTES = sorted(key for key, entry in ROUTES.items() if entry.requirement is Requirement.ROLES)


# --------------------------------------------------------------------------- the table


def _app_keys() -> list[str]:
    settings = Settings(data_dir=Path("/nonexistent"), database_url="sqlite://")
    return list(route_keys(create_app(settings, Runtime(settings)).routes))


def test_every_route_has_exactly_one_entry_and_every_entry_a_route() -> None:
    keys = _app_keys()
    assert len(keys) == len(set(keys)), "a route is served twice"
    missing = sorted(set(keys) - set(ROUTES))
    assert not missing, (
        f"routes without an access decision in core/access/routes_table.py: {missing}"
    )
    stale = sorted(set(ROUTES) - set(keys))
    assert not stale, f"routes_table.py entries for routes that no longer exist: {stale}"


def test_object_routes_name_a_parameter_the_route_has() -> None:
    for key, entry in ROUTES.items():
        if entry.object_from is None or not entry.object_from.startswith("path:"):
            continue
        assert "{" + str(entry.object_param) + "}" in key, key


def test_policy_entries_are_grantable_by_the_default_policy() -> None:
    """An entry naming an interaction nobody is granted is a typo or a dead route."""
    for key in POLICY_ROUTES:
        entry = ROUTES[key]
        assert entry.resource is not None
        assert entry.interaction is not None
        assert any(
            compiled_for(role).allows(entry.resource, entry.interaction) for role in ROLES
        ), key


def test_the_route_table_machinery_catches_a_new_route_and_a_removed_one() -> None:
    """The two checks above can fail: a route added to an app, and an entry whose route is
    gone, are both reported."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/api/v1/nouvelle-route/{patient_id}")
    def _new(patient_id: uuid.UUID) -> None:
        return None

    keys = set(route_keys(app.routes))
    assert "GET /api/v1/nouvelle-route/{patient_id}" in keys - set(ROUTES)
    assert "GET /api/v1/health" in set(ROUTES) - keys


# --------------------------------------------------------------------------- policy routes


@pytest.mark.parametrize("key", POLICY_ROUTES or ["(none yet)"])
def test_policy_routes_answer_exactly_what_the_policy_and_the_relationship_allow(
    matrix: Matrix, key: str
) -> None:
    if key == "(none yet)":
        pytest.skip("no policy-guarded route is registered yet")
    entry = ROUTES[key]
    mismatches: list[str] = []
    for role in ROLES:
        for record in RECORDS if entry.object_from else RECORDS[:1]:
            record_id = matrix.record_ids[record]
            method, url, kwargs = object_request(matrix, key, entry, record_id)
            answer = matrix.call(role, method, url, follow_redirects=False, **kwargs)
            if entry.interaction is Interaction.SEARCH or entry.object_from is None:
                # A search (or its form): 404 for a role that may not; otherwise 200 and
                # only the records in scope.
                status = 200 if expected_granted(entry, role) else 404
                if answer.status_code != status:
                    mismatches.append(f"{role} x {record}: {answer.status_code}, expected {status}")
                elif status == 200 and entry.object_from is not None:
                    visible = expected_allowed(matrix, entry, role, record)
                    if _found(answer, record_id) != visible:
                        mismatches.append(f"{role} x {record}: found is not {visible}")
                continue
            allowed = expected_allowed(matrix, entry, role, record)
            if allowed and not 200 <= answer.status_code < 300:
                mismatches.append(f"{role} x {record}: {answer.status_code}, expected 2xx")
            if not allowed and answer.status_code != 404:
                mismatches.append(f"{role} x {record}: {answer.status_code}, expected 404")
    assert not mismatches, f"{key}:\n" + "\n".join(mismatches)


# --------------------------------------------------------------------------- role routes


def _role_request(matrix: Matrix, key: str, entry: RouteAccess) -> tuple[str, str, dict[str, Any]]:
    """A request well-formed enough that only the caller's role can refuse it."""
    method, _, url = key.partition(" ")
    in_care = matrix.record_ids["today"]
    someone = matrix.callers["sampler"].account_id
    url = (
        url.replace("{account_id}", str(someone))
        .replace("{grant_id}", str(matrix.grant_id))
        .replace("{alert_id}", str(matrix.alert_id))
    )
    absent_nir = matrix.nirs[matrix.record_ids["absent"]]
    kwargs: dict[str, Any] = {}
    if url.startswith("/api/v1/"):
        if url == "/api/v1/staff/patient-links":
            kwargs["json"] = {
                "patient_id": str(in_care),
                "email": "patient.compte@example.org",
                "code": "000000",
            }
        elif url == "/api/v1/staff/dependents/revoke":
            kwargs["json"] = {"patient_id": str(in_care), "email": "patient.compte@example.org"}
        elif url == "/api/v1/admin/staff" and method == "POST":
            kwargs["json"] = {
                "email": "nouvel.agent@alpha.example.org",
                "first_name": "Noé",
                "last_name": "Nouveau",
                "role": "sampler",
                "site_ids": [str(matrix.world.sites["main"])],
            }
        elif url == "/api/v1/break-glass":
            kwargs["json"] = {  # nobody has this NIR: an allowed role gets 422, no grant
                "nir": absent_nir,
                "reason": "emergency",
                "justification": "Valeur critique signalée par le médecin traitant",
            }
        elif url.endswith("/review"):
            kwargs["json"] = {"outcome": "justified"}
        kwargs["headers"] = {"Accept": "application/json"}
    elif method == "POST":
        kwargs["data"] = {
            "csrf_token": "",  # replaced per caller
            "patient_id": str(in_care),
            "email": "patient.compte@example.org",
            "code": "000000",
            "account_id": str(someone),
            "first_name": "Noé",
            "last_name": "Nouveau",
            "role": "sampler",
            "site_ids": str(matrix.world.sites["main"]),
            "nir": absent_nir,
            "reason": "emergency",
            "justification": "Valeur critique signalée par le médecin traitant",
            "outcome": "justified",
        }
    return method, url, kwargs


POSITIVE_ELSEWHERE = {
    "DELETE /api/v1/break-glass/{grant_id}": "security/test_security_api.py (own grants)",
    "POST /api/v1/staff/patient-links": "accounts/test_linking.py (needs a patient's desk code)",
    "POST /api/v1/staff/dependents/revoke": "accounts/test_linking.py (needs a dependent)",
    "POST /compte/guichet": "accounts/test_linking.py (needs a patient's desk code)",
}
"""Role routes whose allowed caller answers this matrix's well-formed but unknown request
with the same 404 as a refusal (by design, I7); their allowed case is tested where named."""


@pytest.mark.parametrize("key", ROLE_ROUTES)
def test_role_routes_refuse_every_other_role_and_patients(matrix: Matrix, key: str) -> None:
    entry = ROUTES[key]
    refusals: dict[str, tuple[int, bytes]] = {}
    for role in ROLES:
        method, url, kwargs = _role_request(matrix, key, entry)
        if "data" in kwargs:
            kwargs["data"] = {**kwargs["data"], "csrf_token": matrix.callers[role].csrf}
        answer = matrix.call(role, method, url, **kwargs, follow_redirects=False)
        if role in entry.roles:
            if key not in POSITIVE_ELSEWHERE:
                assert answer.status_code != entry.refusal, (key, role, answer.text[:300])
        else:
            assert answer.status_code == entry.refusal, (key, role, answer.status_code)
            refusals[role] = (answer.status_code, _without_request_id(answer.content))
    assert len(set(refusals.values())) == 1, f"{key}: the refusal differs by role"


def _without_request_id(body: bytes) -> bytes:
    """Error pages and problems may carry a per-request reference; the rest must match."""
    import re

    return re.sub(
        rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|"
        rb"\b[0-9a-f]{16,32}\b",
        b"<id>",
        body,
    )


# --------------------------------------------------------------------------- account kinds


PATIENT_ONLY_GETS = sorted(
    key
    for key, entry in ROUTES.items()
    if entry.requirement is Requirement.ACCOUNT
    and entry.account_kinds == {"patient"}
    and key.startswith("GET ")
)


@pytest.mark.parametrize("key", PATIENT_ONLY_GETS)
def test_patient_account_routes_refuse_staff(matrix: Matrix, key: str) -> None:
    url = key.partition(" ")[2]
    assert matrix.call(PATIENT_SUBJECT, "GET", url).status_code == 200
    for role in sorted(STAFF_SUBJECTS):
        answer = matrix.call(role, "GET", url, follow_redirects=False)
        assert answer.status_code == ROUTES[key].refusal, (key, role, answer.status_code)


def test_the_table_s_break_glass_roles_are_the_service_s() -> None:
    assert frozenset(BREAK_GLASS_ROLES) == SERVICE_BREAK_GLASS_ROLES


def _compact(nir: Nir | None) -> str:
    assert nir is not None
    return nir.compact
