"""Issue 9's "must show": a scraper holding a stolen, VALID staff session or service token
walks patient ids through the real application and gets at most the hourly budget of
distinct patients; then it is refused with the guard's 429, a security alert is raised, the
account (or client) is locked and the session (or token) revoked, and a new login (or
token) is refused. A scraper that touches a honey record first is stopped there, alike,
with an answer byte-identical to the budget refusal's. SQLite for all, PostgreSQL for the
staff session (row-level security, the database budget store)."""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from helpers import CHEAP_HASHER
from labvault.accounts.invitations import StaffAccountService
from labvault.accounts.models import Account, AccountStatus
from labvault.app import create_app
from labvault.appointments.models import Appointment, AppointmentStatus
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.otp import totp_code
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.fhir import routes as fhir_routes
from labvault.organizations.services import add_site, create_organization
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.results.clients import ServiceClientRegistry
from labvault.results.models import ServiceClient
from labvault.security.honey import HoneyMembership, plant_honey
from labvault.security.lockout import wait_for_deferred
from labvault.security.models import SecurityAlert
from labvault.staff.models import StaffRole

BUDGET = 12
"""The hourly budget of receptionists and of FHIR/LIS clients here (days: 3x, months 10x)."""
PATIENTS = 3 * BUDGET
ORGANIZATION = "Labo Scraper"
SITE = "Centre Scraper"
ORIGIN = "https://testserver"
PASSWORD = "une phrase de passe assez longue"
SETUP = SystemPrincipal("test:scraper")
LINK = re.compile(r"/compte/invitation#(\S+)")
REFUSAL_TYPE = "read-budget-exceeded"


@dataclass
class Lab:
    runtime: Runtime
    tenant: uuid.UUID
    site: uuid.UUID
    patients: list[uuid.UUID]
    """Every patient has a past appointment at the site in the relationship window."""
    honey: list[uuid.UUID] = field(default_factory=list)

    def alerts(self) -> list[tuple[str, str, str]]:
        """(kind, actor kind, actor id) of every alert."""
        with self.runtime.tenant_sessions(self.tenant)() as session:
            rows = session.scalars(select(SecurityAlert).order_by(SecurityAlert.created_at))
            return [(a.kind, a.actor_kind, a.actor_id) for a in rows]

    def reads_of(self, patient: uuid.UUID) -> int:
        """``patient:record:read`` events naming ``patient``: decryptions of its key."""
        with self.runtime.audit_sessions() as session:
            return len(
                session.scalars(
                    select(AuditEvent.id).where(
                        AuditEvent.action == AuditAction.PATIENT_RECORD_READ.value,
                        AuditEvent.target_id == patient,
                    )
                ).all()
            )

    def account(self, account_id: uuid.UUID) -> Account:
        with self.runtime.tenant_sessions(self.tenant)() as session:
            found = session.get_one(Account, account_id)
            session.expunge(found)
            return found

    def service_client(self, client_id: uuid.UUID) -> ServiceClient:
        with self.runtime.tenant_sessions(self.tenant)() as session:
            found = session.get_one(ServiceClient, client_id)
            session.expunge(found)
            return found


def _settings(settings: Settings) -> Settings:
    limits = (BUDGET, 3 * BUDGET, 10 * BUDGET)
    return settings.model_copy(
        update={
            "organization": ORGANIZATION,
            "guard_budgets": {
                "staff:receptionist": limits,
                "service:fhir": limits,
                "service:lis": limits,
            },
        }
    )


def _build(runtime: Runtime) -> Lab:
    """One organization, one site, ``PATIENTS`` patients seen at the site in the last days
    (done appointments: in every staff and client relationship window)."""
    now = utcnow()
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, ORGANIZATION)
        site = add_site(
            session,
            organization,
            name=SITE,
            address_line="3 rue des Lilas",
            postal_code="31000",
            city="Toulouse",
            opening_hours={},
            sampling_capacity_per_hour=12,
        )
        tenant, site_id = organization.id, site.id
    with transaction(runtime.tenant_sessions(tenant)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SETUP)
        people = list(synthetic_patients(PATIENTS, seed=4242))
        created = PatientRepository(session, keyring).register_many(people).created
        patients = [created[i] for i in range(PATIENTS)]
        for number, patient in enumerate(patients):
            starts = now - dt.timedelta(days=1 + number % 5, hours=number % 7)
            session.add(
                Appointment(
                    tenant_id=tenant,
                    patient_id=patient,
                    site_id=site_id,
                    starts_at=starts,
                    status=AppointmentStatus.DONE.value,
                )
            )
    return Lab(runtime, tenant, site_id, patients)


@pytest.fixture
def lab(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    # Unknown FHIR clients cost a dummy hash with the process's hasher: a cheap one here.
    monkeypatch.setattr(fhir_routes, "_hasher", CHEAP_HASHER)
    runtime = Runtime(_settings(settings))
    try:
        yield _build(runtime)
    finally:
        runtime.close()


@pytest.fixture
def client(lab: Lab) -> Iterator[TestClient]:
    with TestClient(create_app(lab.runtime.settings, lab.runtime), base_url=ORIGIN) as test:
        yield test


def _plant(lab: Lab) -> None:
    with transaction(lab.runtime.tenant_sessions(lab.tenant)) as session:
        keyring = TenantKeyring(
            session, lab.runtime.key_provider, lab.tenant, SystemPrincipal("cli:guard-honey-plant")
        )
        plant_honey(
            session,
            lab.runtime.key_provider,
            keyring,
            keyring.audit,
            density=0.05,
            minimum=5,
            label="scraper-test",
        )
    with lab.runtime.tenant_sessions(lab.tenant)() as session:
        membership = HoneyMembership(session, lab.runtime.key_provider, lab.tenant)
        everyone = session.scalars(
            select(Appointment.patient_id).where(Appointment.site_id == lab.site)
        ).all()
        lab.honey = sorted(membership.honey_ids(set(everyone)))
    assert lab.honey, "some honey records have appointments at the site (copied shapes)"


# --- the stolen staff session ----------------------------------------------------------------


@dataclass
class StaffLogin:
    account_id: uuid.UUID
    email: str
    csrf: str


def _invitation_token(runtime: Runtime, email: str) -> str:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    for message in reversed(mailer.messages()):
        part = message.get_body(("plain",))
        assert part is not None
        found = LINK.search(str(part.get_content()))  # type: ignore[attr-defined]
        if message["To"] == email and found:
            return found.group(1)
    raise AssertionError("no invitation mailed")


def _receptionist(lab: Lab, client: TestClient, email: str) -> StaffLogin:
    """A receptionist of the site, invited, then logged in through the real API (invitation
    accepted, authenticator enrolled): the client holds a valid session cookie."""
    with transaction(lab.runtime.tenant_sessions(lab.tenant)) as session:
        invitation = StaffAccountService(
            session,
            tenant_id=lab.tenant,
            provider=lab.runtime.key_provider,
            mailer=lab.runtime.mailer,
            limiter=lab.runtime.rate_limiter,
            settings=lab.runtime.settings,
            hasher=CHEAP_HASHER,
        ).invite_staff(SETUP, email, "Camille", "Dupont", StaffRole.RECEPTIONIST, [lab.site])
        account_id = invitation.account_id
    step = client.post(
        "/api/v1/auth/invitation/accept",
        json={"token": _invitation_token(lab.runtime, email), "password": PASSWORD},
    )
    assert step.status_code == 200, step.text
    pending = {"X-CSRF-Token": step.json()["csrf_token"]}
    setup = client.post("/api/v1/auth/enrolment/totp", headers=pending)
    assert setup.status_code == 200, setup.text
    text = setup.json()["secret"]
    secret = Secret(base64.b32decode(text + "=" * (-len(text) % 8)))
    done = client.post(
        "/api/v1/auth/enrolment/totp/confirm", json={"code": totp_code(secret)}, headers=pending
    )
    assert done.status_code == 200, done.text
    assert client.get("/api/v1/auth/me").status_code == 200
    # The same credentials log in (password step) from elsewhere: a refusal later is the lock.
    elsewhere = TestClient(client.app, base_url=ORIGIN)
    again = elsewhere.post("/api/v1/auth/staff/login", json={"email": email, "password": PASSWORD})
    assert again.status_code == 200, again.text
    assert again.json()["second_factor"] == ["totp"]
    return StaffLogin(account_id, email, done.json()["csrf_token"])


def _staff_read(client: TestClient, login: StaffLogin) -> Callable[[uuid.UUID], Response]:
    headers = {"X-CSRF-Token": login.csrf, "Accept": "application/json"}
    return lambda patient: client.get(f"/api/v1/patients/{patient}", headers=headers)


def _has_identity(answer: Response) -> bool:
    return answer.status_code == 200 and bool(answer.json().get("birth_name"))


@dataclass
class Walk:
    obtained: set[uuid.UUID] = field(default_factory=set)
    requests: int = 0
    refusal: Response | None = None
    """The first answer that yielded nothing."""
    refused_at: uuid.UUID | None = None
    after: list[int] = field(default_factory=list)
    """The statuses of every request after the first refusal."""


def _walk(
    read: Callable[[uuid.UUID], Response], ids: list[uuid.UUID], got: Callable[[Response], bool]
) -> Walk:
    """Read every id in ``ids``, one by one, and go on after a refusal (a scraper does not
    give up), then re-read those obtained first: what was obtained in all."""
    walk = Walk()
    for patient in [*ids, *ids[:3]]:
        walk.requests += 1
        answer = read(patient)
        if walk.refusal is not None:
            walk.after.append(answer.status_code)
        if got(answer):
            walk.obtained.add(patient)
        elif walk.refusal is None:
            walk.refusal, walk.refused_at = answer, patient
    wait_for_deferred()
    return walk


def _assert_guard_refusal(answer: Response | None) -> None:
    assert answer is not None, "the scraper was never refused"
    assert answer.status_code == 429, answer.text
    body = answer.json()
    assert body["type"].endswith(f"/{REFUSAL_TYPE}"), body
    assert answer.headers["content-type"].startswith("application/problem+json")


def _staff_cut_off(lab: Lab, client: TestClient, login: StaffLogin) -> None:
    """Locked, session revoked, no new login."""
    account = lab.account(login.account_id)
    assert account.status == AccountStatus.LOCKED.value
    after = client.get("/api/v1/auth/me")
    assert after.status_code == 401, "the stolen session was revoked"
    # A patient it did read before: nothing any more (the API's uniform 404 to an anonymous
    # caller).
    assert client.get(f"/api/v1/patients/{lab.patients[0]}").status_code == 404
    client.cookies.clear()
    again = client.post(
        "/api/v1/auth/staff/login", json={"email": login.email, "password": PASSWORD}
    )
    assert again.status_code == 401, again.text
    assert again.json()["type"].endswith("/authentication-failed"), "the login's uniform answer"
    assert client.get("/api/v1/auth/me").status_code == 401, "no session opened"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def test_a_stolen_staff_session_gets_at_most_the_hourly_budget_then_is_cut_off(
    lab: Lab, client: TestClient
) -> None:
    login = _receptionist(lab, client, "scraper@example.org")
    walk = _walk(_staff_read(client, login), lab.patients, _has_identity)

    assert len(walk.obtained) <= BUDGET
    assert len(walk.obtained) == BUDGET, "a legitimate hour's worth is not refused"
    _assert_guard_refusal(walk.refusal)
    assert walk.refusal is not None
    assert set(walk.after) == {404}, "signed out at once: the API's uniform answer"
    assert str(walk.refused_at) not in walk.refusal.text
    assert (REFUSAL_TYPE, "staff", str(login.account_id)) in [
        (kind, actor_kind, actor_id.removeprefix("staff:"))
        for kind, actor_kind, actor_id in lab.alerts()
    ]
    _staff_cut_off(lab, client, login)


# --- the stolen service token ----------------------------------------------------------------


@dataclass
class StolenToken:
    client_id: uuid.UUID
    secret: str
    bearer: str


def _service(lab: Lab, client: TestClient, kind: str, name: str) -> StolenToken:
    """A client of the site with a secret, and a token from ``POST /fhir/R4/auth/token``."""
    with transaction(lab.runtime.tenant_sessions(lab.tenant)) as session:
        registered, issued = ServiceClientRegistry(
            session, lab.tenant, AuditTrail(session, SETUP), CHEAP_HASHER
        ).add(name, kind=kind, sites=[SITE], scopes=["system/Patient.read"], with_secret=True)
        assert issued is not None
        client_id, secret = registered.id, issued.secret.reveal()
    answer = _token(client, client_id, secret)
    assert answer.status_code == 200, answer.text
    return StolenToken(client_id, secret, str(answer.json()["access_token"]))


def _token(client: TestClient, client_id: uuid.UUID, secret: str) -> Response:
    return client.post(
        "/fhir/R4/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": str(client_id),
            "client_secret": secret,
        },
    )


def _fhir_read(client: TestClient, stolen: StolenToken) -> Callable[[uuid.UUID], Response]:
    headers = {"Authorization": f"Bearer {stolen.bearer}"}
    return lambda patient: client.get(f"/fhir/R4/Patient/{patient}", headers=headers)


def _fhir_identity(answer: Response) -> bool:
    return (
        answer.status_code == 200
        and answer.json().get("resourceType") == "Patient"
        and bool(answer.json().get("name"))
    )


def _service_cut_off(lab: Lab, client: TestClient, stolen: StolenToken) -> None:
    """Disabled, token revoked, no new token."""
    assert lab.service_client(stolen.client_id).disabled_at is not None
    after = _fhir_read(client, stolen)(lab.patients[0])
    assert after.status_code == 401, "the stolen token was revoked"
    assert "invalid_token" in after.headers.get("www-authenticate", "")
    again = _token(client, stolen.client_id, stolen.secret)
    assert again.status_code == 401, again.text
    assert again.json()["error"] == "invalid_client"


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("kind", ["fhir", "lis"])
def test_a_stolen_service_token_gets_at_most_the_hourly_budget_then_is_cut_off(
    lab: Lab, client: TestClient, kind: str
) -> None:
    stolen = _service(lab, client, kind, f"Client {kind}")
    walk = _walk(_fhir_read(client, stolen), lab.patients, _fhir_identity)

    assert len(walk.obtained) <= BUDGET
    assert len(walk.obtained) == BUDGET, "a legitimate hour's worth is not refused"
    assert walk.refusal is not None
    assert walk.refusal.status_code == 429, walk.refusal.text
    assert walk.refusal.json()["issue"][0]["code"] == "throttled"
    assert set(walk.after) == {401}, "the token is revoked at once"
    assert str(walk.refused_at) not in walk.refusal.text
    assert (REFUSAL_TYPE, "service", f"service:{stolen.client_id}") in lab.alerts()
    _service_cut_off(lab, client, stolen)


# --- a honey record first --------------------------------------------------------------------


def _early(honey: uuid.UUID, real: list[uuid.UUID]) -> list[uuid.UUID]:
    """A walk with the honey record third: a scraper replaying ids taken elsewhere."""
    return [*real[:2], honey, *real[2:]]


def _alike(first: Response, second: Response) -> None:
    assert (first.status_code, first.content) == (second.status_code, second.content)

    def headers(answer: Response) -> dict[str, str]:
        return {k: v for k, v in answer.headers.items() if k != "x-request-id"}

    assert headers(first) == headers(second), "every header but the request's own id"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_staff_scraper_that_touches_a_honey_record_is_stopped_there_and_cannot_tell(
    lab: Lab, client: TestClient
) -> None:
    _plant(lab)
    honey = lab.honey[0]
    trapped = _receptionist(lab, client, "piege@example.org")
    walk = _walk(_staff_read(client, trapped), _early(honey, lab.patients), _has_identity)

    assert walk.refused_at == honey, "stopped at the honey record"
    assert walk.obtained == set(lab.patients[:2]), "nothing from the honey record on"
    assert set(walk.after) == {404}, "signed out: the API's uniform answer"
    assert lab.reads_of(honey) == 0, "nothing of the honey record was decrypted"
    assert all(lab.reads_of(p) == 1 for p in lab.patients[:2])
    assert walk.refusal is not None
    assert ("honey-record-touched", "staff") in [(k, a) for k, a, _ in lab.alerts()]
    _staff_cut_off(lab, client, trapped)

    # The budget refusal of another stolen session: the same answer, byte for byte.
    client.cookies.clear()
    greedy = _receptionist(lab, client, "glouton@example.org")
    budget = _walk(_staff_read(client, greedy), lab.patients, _has_identity)
    assert len(budget.obtained) == BUDGET
    assert budget.refusal is not None
    _alike(walk.refusal, budget.refusal)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_service_scraper_that_touches_a_honey_record_is_stopped_there_and_cannot_tell(
    lab: Lab, client: TestClient
) -> None:
    _plant(lab)
    honey = lab.honey[0]
    trapped = _service(lab, client, "fhir", "Client piege")
    walk = _walk(_fhir_read(client, trapped), _early(honey, lab.patients), _fhir_identity)

    assert walk.refused_at == honey
    assert walk.obtained == set(lab.patients[:2]), "nothing from the honey record on"
    assert set(walk.after) == {401}, "the token is revoked"
    assert lab.reads_of(honey) == 0
    assert walk.refusal is not None
    assert ("honey-record-touched", "service", f"service:{trapped.client_id}") in lab.alerts()
    _service_cut_off(lab, client, trapped)

    greedy = _service(lab, client, "fhir", "Client glouton")
    budget = _walk(_fhir_read(client, greedy), lab.patients, _fhir_identity)
    assert len(budget.obtained) == BUDGET
    assert budget.refusal is not None
    _alike(walk.refusal, budget.refusal)
