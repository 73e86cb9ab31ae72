"""Linking patient accounts to Patient records, and dependents: over HTTP against a real
database, key file and file mailer, and at the service level where the clock must move."""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from helpers import CHEAP_HASHER, leaked, pg_dump, sqlite_files
from labvault.accounts.linking import (
    LINK_CODE_ATTEMPTS,
    IdentityTraits,
    LinkCodeError,
    LinkNotFoundError,
    PatientLinks,
    Relationship,
    TraitsError,
    account_acts_for,
    eighteenth_birthday,
    parse_traits,
    traits_match,
)
from labvault.accounts.models import (
    Account,
    AccountDependent,
    AccountKind,
    OneTimeCode,
)
from labvault.accounts.services import AccountService
from labvault.app import create_app
from labvault.appointments.models import Appointment
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.models import AuditEvent
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail.file import FileMailer
from labvault.core.ratelimit import RateDecision, RateRule
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization
from labvault.patients.nir import synthetic_nir
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository

ORIGIN = "https://testserver"
SESSION_COOKIE = "__Host-labvault-session"
PASSWORD = "une phrase de passe assez longue"
PHRASE = "le merle moqueur de Quimper"
ACCOUNT_EMAIL = "camille.compte@example.org"
RECORD_EMAIL = "marie.dossier@example.org"
OTHER_EMAIL = "jeanne.dossier@example.org"
SYSTEM = SystemPrincipal("test:linking")
CODE = re.compile(r"code [^:]*: (\d{6})")
INVITE = re.compile(r"\S+/compte/invitation#(\S+)")
RNG = random.Random(20240501)


def _nir(sex: int, born: dt.date) -> str:
    return synthetic_nir(RNG, sex=sex, birth_date=born).compact


def _years_ago(years: int, days: int = 0) -> dt.date:
    today = dt.date.today()
    try:
        then = today.replace(year=today.year - years)
    except ValueError:
        then = dt.date(today.year - years, 2, 28)
    return then + dt.timedelta(days=days)


MARIE = {
    "birth_name": "Lefèvre-Dubois",
    "first_names": "Marie Claire",
    "birth_date": "1985-04-12",
    "sex": "F",
    "nir": _nir(2, dt.date(1985, 4, 12)),
    "email": RECORD_EMAIL,
}
JEANNE = {  # linked to another account
    "birth_name": "Moreau",
    "first_names": "Jeanne",
    "birth_date": "1979-11-02",
    "sex": "F",
    "nir": _nir(2, dt.date(1979, 11, 2)),
    "email": OTHER_EMAIL,
}
PAUL = {  # no email on file
    "birth_name": "Garnier",
    "first_names": "Paul",
    "birth_date": "1990-01-20",
    "sex": "M",
    "nir": _nir(1, dt.date(1990, 1, 20)),
}
_LEO_BORN = _years_ago(10)
LEO = {  # a child; the contact on file is the parent's address
    "birth_name": "Lefèvre",
    "first_names": "Léo, Martin",
    "birth_date": _LEO_BORN.isoformat(),
    "sex": "M",
    "nir": _nir(1, _LEO_BORN),
    "email": ACCOUNT_EMAIL,
}
_ALMOST_BORN = _years_ago(18, days=2)
ALMOST = {  # 18 in two days
    "birth_name": "Bernard",
    "first_names": "Inès",
    "birth_date": _ALMOST_BORN.isoformat(),
    "sex": "F",
    "nir": _nir(2, _ALMOST_BORN),
    "email": ACCOUNT_EMAIL,
}
_ADULT_BORN = _years_ago(18, days=-1)
ADULT = {  # 18 years and 1 day ago
    "birth_name": "Bernard",
    "first_names": "Hugo",
    "birth_date": _ADULT_BORN.isoformat(),
    "sex": "M",
    "nir": _nir(1, _ADULT_BORN),
    "email": ACCOUNT_EMAIL,
}


def traits(person: dict[str, str], **changes: str) -> dict[str, str]:
    values = {k: person[k] for k in ("birth_name", "first_names", "birth_date", "nir")}
    values.update(changes)
    return values


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_LabvaultHandler":
            root.removeHandler(handler)


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


class MovableClock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now


class Lab:
    """One organization with a site and patient records; services with a movable clock."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.clock = MovableClock()
        with transaction(runtime.sessions) as session:
            organization = create_organization(session, runtime.key_provider, "Labo Liens")
            self.site_id = add_site(
                session,
                organization,
                name="Centre",
                address_line="1 place de la Mairie",
                postal_code="69001",
                city="Lyon",
                opening_hours={},
                sampling_capacity_per_hour=4,
            ).id
            self.tenant_id = organization.id
            keyring = TenantKeyring(session, runtime.key_provider, organization.id, SYSTEM)
            people = [MARIE, JEANNE, PAUL, LEO, ALMOST, ADULT]
            created = PatientRepository(session, keyring).register_many(
                [PatientInput.model_validate(p) for p in people]
            )
            ids = [created.created[i] for i in range(len(people))]
            # Every record is in care at the site this week: the desk works within the
            # receptionist's relationship scope (labvault.patients.scope).
            for patient_id in ids:
                session.add(
                    Appointment(
                        tenant_id=organization.id,
                        patient_id=patient_id,
                        site_id=self.site_id,
                        starts_at=self.clock.now + dt.timedelta(days=1),
                    )
                )
        self.marie, self.jeanne, self.paul, self.leo, self.almost, self.adult = ids

    def staff_member(self, email: str, role: StaffRole) -> uuid.UUID:
        with transaction(self.runtime.sessions) as session:
            keyring = TenantKeyring(session, self.runtime.key_provider, self.tenant_id, SYSTEM)
            return StaffRepository(session, keyring).add(
                first_name="Claude",
                last_name="Guichet",
                email=email,
                role=role,
                site_ids=[self.site_id],
            )

    @contextmanager
    def unit(self) -> Iterator[tuple[AccountService, PatientLinks]]:
        with transaction(self.runtime.sessions) as session:
            self.session = session
            service = AccountService(
                session,
                tenant_id=self.tenant_id,
                provider=self.runtime.key_provider,
                mailer=self.runtime.mailer,
                limiter=AllowEverything(),
                settings=self.runtime.settings,
                hasher=CHEAP_HASHER,
                clock=self.clock,
            )
            yield service, PatientLinks(service)

    def attempt(self, action: Any) -> Exception | None:
        with self.unit() as (service, links):
            try:
                action(service, links)
            except (LinkCodeError, LinkNotFoundError, TraitsError) as exc:
                return exc
        return None

    def provision(
        self,
        email: str,
        *,
        kind: AccountKind = AccountKind.PATIENT,
        role: str | None = None,
        staff_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        with self.unit() as (service, _):
            return service.provision(
                email,
                Secret(PASSWORD),
                kind=kind,
                security_phrase=PHRASE,
                by=SYSTEM,
                role=role,
                staff_id=staff_id,
            ).id

    def account(self, account_id: uuid.UUID) -> Account:
        with self.unit() as (service, _):
            found = service.account(account_id)
            assert found is not None
            return found


@pytest.fixture
def lab(runtime: Runtime) -> Lab:
    return Lab(runtime)


@pytest.fixture
def client(runtime: Runtime, lab: Lab) -> Iterator[TestClient]:
    with TestClient(create_app(runtime.settings, runtime), base_url=ORIGIN) as test_client:
        yield test_client


def messages(runtime: Runtime) -> list[EmailMessage]:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    return mailer.messages()


def body(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


def last_code(runtime: Runtime, to: str) -> str:
    for message in reversed(messages(runtime)):
        if message["To"] == to and (match := CODE.search(body(message))):
            return match.group(1)
    raise AssertionError(f"no code sent to {to}")


def csrf(token: str) -> dict[str, str]:
    return {"X-CSRF-Token": token}


def events(runtime: Runtime, action: str) -> list[AuditEvent]:
    with runtime.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def sign_in(client: TestClient, runtime: Runtime, email: str) -> str:
    """Sign up (if needed), prove the address, log in with an emailed code; the CSRF token."""
    signed = client.post(
        "/api/v1/auth/signup",
        json={"email": email, "password": PASSWORD, "security_phrase": PHRASE},
    )
    assert signed.status_code == 202, signed.text
    confirmed = client.post(
        "/api/v1/auth/signup/confirm", json={"email": email, "code": last_code(runtime, email)}
    )
    assert confirmed.status_code == 204, confirmed.text
    step = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    token = step.json()["csrf_token"]
    client.post("/api/v1/auth/login/email-code", headers=csrf(token))
    done = client.post(
        "/api/v1/auth/login/second-factor",
        json={"method": "email", "code": last_code(runtime, email)},
        headers=csrf(token),
    )
    assert done.status_code == 200, done.text
    return str(done.json()["csrf_token"])


def staff_sign_in(client: TestClient, lab: Lab, email: str, role: StaffRole) -> str:
    """A signed-in staff session (second factor done) put straight in the client's cookie:
    how staff log in is tested elsewhere; here the routes only need a staff session."""
    staff_id = lab.staff_member(email, role)
    account_id = lab.provision(email, kind=AccountKind.STAFF, role=role.value, staff_id=staff_id)
    with lab.unit() as (service, _):
        account = service.account(account_id)
        assert account is not None
        token, _record = service.sessions.create(
            tenant_id=lab.tenant_id,
            account_id=account_id,
            policy=service._policy(account),
            client_hash=None,
            second_factor="totp",
        )
        csrf_token = service.sessions.csrf_token(token.reveal())
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, token.reveal(), domain="testserver.local")
    return csrf_token


# --------------------------------------------------------------------------- online link


def test_the_same_answer_whatever_the_record_and_the_code_goes_to_the_record_contact(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    other = lab.provision(OTHER_EMAIL)
    with lab.unit():
        lab.session.execute(
            update(Account).where(Account.id == other).values(patient_id=lab.jeanne)
        )
    token = sign_in(client, runtime, ACCOUNT_EMAIL)
    before = len(messages(runtime))
    unknown_nir = _nir(2, dt.date(1985, 4, 12))
    cases = {
        "no record": traits(MARIE, nir=unknown_nir),
        "traits differ": traits(MARIE, birth_name="Lefèvre"),
        "already linked": traits(JEANNE),
        "no email on file": traits(PAUL),
    }
    answers = {}
    for label, sent in cases.items():
        answer = client.post("/api/v1/account/patient-links", json=sent, headers=csrf(token))
        answers[label] = (answer.status_code, answer.json())
    assert not [m for m in messages(runtime)[before:] if CODE.search(body(m))], "no code sent"
    notices = messages(runtime)[before:]
    assert [m["To"] for m in notices] == [OTHER_EMAIL], "the linked record's contact is told"
    assert "déjà rattaché" in body(notices[0])
    for value in (JEANNE["birth_name"], JEANNE["first_names"], JEANNE["nir"]):
        assert value not in body(notices[0])

    # Normalised: case, accents, hyphens; the second given name is enough.
    matched = client.post(
        "/api/v1/account/patient-links",
        json=traits(MARIE, birth_name="LEFEVRE dubois", first_names=" claire "),
        headers=csrf(token),
    )
    answers["match"] = (matched.status_code, matched.json())
    assert len(set(map(repr, answers.values()))) == 1, answers
    assert matched.status_code == 202
    code_mail = messages(runtime)[-1]
    assert code_mail["To"] == RECORD_EMAIL, "to the contact on the record, not the account"
    assert not [m for m in messages(runtime)[before:] if m["To"] == ACCOUNT_EMAIL]
    # Nobody holds an account at the record's address: the account's phrase is not sent there.
    assert PHRASE not in body(code_mail)
    for value in ("Marie", "Lefèvre", MARIE["nir"], "1985"):
        assert value not in body(code_mail)
        assert value not in code_mail["Subject"]
    code = last_code(runtime, RECORD_EMAIL)

    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    refused = client.post(
        "/api/v1/account/patient-links/confirm", json={"code": wrong}, headers=csrf(token)
    )
    assert refused.status_code == 422
    assert refused.json()["type"].endswith("invalid-code")
    with runtime.sessions() as session:
        account = session.scalars(select(Account).where(Account.kind == "patient")).all()
        mine = next(a for a in account if a.id != other)
        assert mine.patient_id is None, "nothing linked by a wrong code"
        pending = session.scalars(
            select(OneTimeCode).where(
                OneTimeCode.account_id == mine.id, OneTimeCode.used_at.is_(None)
            )
        ).one()
        assert pending.attempts == 1
        assert pending.purpose.startswith("link:o:")

    done = client.post(
        "/api/v1/account/patient-links/confirm", json={"code": code}, headers=csrf(token)
    )
    assert done.status_code == 200, done.text
    assert done.json() == {"patient_id": str(lab.marie), "relationship": "self"}
    assert lab.account(mine.id).patient_id == lab.marie
    again = client.post(
        "/api/v1/account/patient-links/confirm", json={"code": code}, headers=csrf(token)
    )
    assert again.status_code == 422, "a code serves once"
    listed = client.get("/api/v1/account/patients")
    assert listed.json() == [
        {
            "id": str(lab.marie),
            "relationship": "self",
            "first_name": "Marie",
            "birth_name_initial": "L",
        }
    ]
    linked_twice = client.post(
        "/api/v1/account/patient-links", json=traits(PAUL), headers=csrf(token)
    )
    assert linked_twice.status_code == 409

    requests = events(runtime, "account:patient-link:request")
    assert sorted(e.outcome for e in requests) == ["failure"] * 4 + ["success"]
    (confirm,) = events(runtime, "account:patient-link:confirm")
    assert (confirm.target_type, confirm.target_id, confirm.actor_id) == (
        "patient",
        lab.marie,
        str(mine.id),
    )
    assert len(events(runtime, "account:patient-link:failure")) == 2
    assert "rattaché" in body(messages(runtime)[-1])
    assert messages(runtime)[-1]["To"] == ACCOUNT_EMAIL, "the owner is told, with the phrase"
    assert PHRASE in body(messages(runtime)[-1])


def test_a_code_allows_five_attempts_and_a_new_request_retires_it(
    lab: Lab, runtime: Runtime
) -> None:
    account_id = lab.provision(ACCOUNT_EMAIL)

    def request(person: dict[str, str]) -> None:
        with lab.unit() as (service, links):
            account = service.account(account_id)
            assert account is not None
            parsed = parse_traits(**traits(person), today=links.today())
            links.request_link(account, parsed, Relationship.SELF, client_id="c" * 32)

    def confirm(code: str) -> Exception | None:
        def run(service: AccountService, links: PatientLinks) -> None:
            account = service.account(account_id)
            assert account is not None
            links.confirm_link(account, code)

        return lab.attempt(run)

    request(MARIE)
    code = last_code(runtime, RECORD_EMAIL)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(LINK_CODE_ATTEMPTS):
        assert isinstance(confirm(wrong), LinkCodeError)
    assert isinstance(confirm(code), LinkCodeError), "the right code, too late"
    request(MARIE)
    first = last_code(runtime, RECORD_EMAIL)
    request({**MARIE, "nir": _nir(2, dt.date(1985, 4, 12))})
    assert isinstance(confirm(first), LinkCodeError), "any later request retires the code"
    assert lab.account(account_id).patient_id is None
    request(MARIE)
    assert confirm(last_code(runtime, RECORD_EMAIL)) is None
    assert lab.account(account_id).patient_id == lab.marie


def test_a_malformed_nir_gets_a_precise_error_and_changes_nothing(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    token = sign_in(client, runtime, ACCOUNT_EMAIL)
    before = len(messages(runtime))
    nir = MARIE["nir"]
    bad_key = nir[:13] + f"{(int(nir[13:]) + 1) % 100:02d}"
    for value, code in (
        (bad_key, "bad_key"),
        (nir[:10], "too_short"),
        (nir[:13], "missing_key"),
        (nir[:13] + "AB", "letters_in_key"),
        ("", "empty"),
    ):
        answer = client.post(
            "/api/v1/account/patient-links", json=traits(MARIE, nir=value), headers=csrf(token)
        )
        assert answer.status_code == 422, answer.text
        (error,) = answer.json()["errors"]
        assert (error["field"], error["code"]) == ("nir", code)
        assert nir[:5] not in answer.text, "the value is not echoed"
    mismatch = client.post(
        "/api/v1/account/patient-links",
        json=traits(MARIE, birth_date="1986-04-12"),
        headers=csrf(token),
    )
    assert mismatch.json()["errors"][0]["code"] == "birth_year_mismatch"
    future = client.post(
        "/api/v1/account/patient-links",
        json=traits(MARIE, birth_date="2999-01-01"),
        headers=csrf(token),
    )
    assert future.json()["errors"][0]["field"] == "birth_date"
    assert len(messages(runtime)) == before
    assert events(runtime, "account:patient-link:request") == []
    assert events(runtime, "patient:record:read") == [], "nothing decrypted"


def test_link_requests_are_limited_per_account_before_any_lookup(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    token = sign_in(client, runtime, ACCOUNT_EMAIL)
    for _ in range(5):
        answer = client.post(
            "/api/v1/account/patient-links", json=traits(PAUL), headers=csrf(token)
        )
        assert answer.status_code == 202
    searches = len(events(runtime, "patient:search:nir"))
    refused = client.post("/api/v1/account/patient-links", json=traits(MARIE), headers=csrf(token))
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(events(runtime, "patient:search:nir")) == searches, "no lookup once refused"
    assert not [m for m in messages(runtime) if m["To"] == RECORD_EMAIL]
    assert client.post("/api/v1/account/patient-links", json=traits(MARIE)).status_code == 403


def test_traits_match_normalised_and_on_any_given_name() -> None:
    born = dt.date(1985, 4, 12)

    def typed(name: str, given: str) -> IdentityTraits:
        return parse_traits(name, given, born.isoformat(), MARIE["nir"], today=dt.date.today())

    on_file = ("Lefèvre-Dubois", "Marie-Anne, Claire", born)
    for name, given in (
        ("lefevre dubois", "marie anne"),
        ("LEFÈVRE  DUBOIS", "Marie-Anne Sophie"),
        ("Lefevre-Dubois", "claire"),
        ("Lefèvre Dubois", "Marie-Anne, Claire"),
    ):
        assert traits_match(typed(name, given), *on_file), (name, given)
    for name, given in (
        ("Lefèvre", "Marie-Anne"),
        ("Lefèvre-Dubois", "Marie"),
        ("Lefèvre-Dubois", "Anne"),
        ("Dubois", "Claire"),
    ):
        assert not traits_match(typed(name, given), *on_file), (name, given)
    assert not traits_match(typed("Lefèvre-Dubois", "Claire"), *on_file[:2], dt.date(1985, 4, 13))


# --------------------------------------------------------------------------- the lab desk


def test_a_receptionist_links_at_the_desk_and_an_organization_admin_cannot(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    token = sign_in(client, runtime, ACCOUNT_EMAIL)
    desk = client.post("/api/v1/account/desk-code", headers=csrf(token))
    assert desk.status_code == 201, desk.text
    assert desk.headers["Cache-Control"] == "no-store"
    code = desk.json()["code"]
    attempt = {"patient_id": str(lab.marie), "email": ACCOUNT_EMAIL, "code": code}

    admin = staff_sign_in(client, lab, "admin@example.org", StaffRole.ORGANIZATION_ADMIN)
    by_admin = client.post("/api/v1/staff/patient-links", json=attempt, headers=csrf(admin))
    assert by_admin.status_code == 404
    officer = staff_sign_in(client, lab, "securite@example.org", StaffRole.SECURITY_OFFICER)
    by_officer = client.post("/api/v1/staff/patient-links", json=attempt, headers=csrf(officer))
    assert by_officer.status_code == 404

    desk_token = staff_sign_in(client, lab, "accueil@example.org", StaffRole.RECEPTIONIST)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    refusals = [
        client.post("/api/v1/staff/patient-links", json=attempt | changes, headers=csrf(desk_token))
        for changes in (
            {"code": wrong},
            {"email": "personne@example.org"},
            {"patient_id": str(uuid.uuid4())},
        )
    ]
    assert {(r.status_code, r.text) for r in [by_admin, *refusals]} == {(404, by_admin.text)}
    linked = client.post("/api/v1/staff/patient-links", json=attempt, headers=csrf(desk_token))
    assert linked.status_code == 201, linked.text
    assert linked.json() == {"patient_id": str(lab.marie), "relationship": "self"}
    with runtime.sessions() as session:
        account = session.scalars(select(Account).where(Account.kind == "patient")).one()
        assert account.patient_id == lab.marie
        (used,) = session.scalars(
            select(OneTimeCode).where(OneTimeCode.purpose == "desk-link")
        ).all()
        assert used.used_at is not None
        assert used.attempts == 2
    replay = client.post("/api/v1/staff/patient-links", json=attempt, headers=csrf(desk_token))
    assert replay.status_code == 404, "a desk code serves once"

    (confirm,) = events(runtime, "account:patient-link:confirm")
    assert (confirm.actor_kind, confirm.actor_role, confirm.target_id) == (
        "staff",
        "receptionist",
        lab.marie,
    )
    denied = [e for e in events(runtime, "account:patient-link:failure") if e.outcome == "denied"]
    assert {e.actor_role for e in denied} == {"organization_admin", "security_officer"}


# --------------------------------------------------------------------------- dependents


def test_a_guardian_acts_for_a_minor_until_the_18th_birthday(lab: Lab, runtime: Runtime) -> None:
    guardian_id = lab.provision(ACCOUNT_EMAIL)
    stranger_id = lab.provision("autre@example.org")

    def request(person: dict[str, str], relationship: Relationship) -> Exception | None:
        def run(service: AccountService, links: PatientLinks) -> None:
            account = service.account(guardian_id)
            assert account is not None
            parsed = parse_traits(**traits(person), today=links.today())
            links.request_link(account, parsed, relationship, client_id="c" * 32)

        return lab.attempt(run)

    def confirm(code: str) -> None:
        with lab.unit() as (service, links):
            account = service.account(guardian_id)
            assert account is not None
            links.confirm_link(account, code)

    def acts_for(account_id: uuid.UUID, patient_id: uuid.UUID) -> bool:
        with lab.unit() as (service, links):
            account = service.account(account_id)
            assert account is not None
            return links.acts_for(account, patient_id)

    def listed() -> list[tuple[uuid.UUID, str]]:
        with lab.unit() as (service, links):
            account = service.account(guardian_id)
            assert account is not None
            return [(r.id, r.relationship.value) for r in links.records(account)]

    refused = request(ADULT, Relationship.PARENT)
    assert isinstance(refused, TraitsError)
    assert refused.codes == {"birth_date": "not_a_minor"}

    assert request(LEO, Relationship.PARENT) is None
    mail = messages(runtime)[-1]
    assert mail["To"] == ACCOUNT_EMAIL, "the contact on the child's record"
    assert PHRASE in body(mail), "the recipient holds this account: its phrase is shown"
    assert "Léo" not in body(mail)
    confirm(last_code(runtime, ACCOUNT_EMAIL))
    assert request(ALMOST, Relationship.LEGAL_GUARDIAN) is None
    confirm(last_code(runtime, ACCOUNT_EMAIL))
    with lab.unit() as _:
        rows = lab.session.scalars(select(AccountDependent)).all()
        assert {(r.patient_id, r.relationship, r.verified_by) for r in rows} == {
            (lab.leo, "parent", "contact-code"),
            (lab.almost, "legal-guardian", "contact-code"),
        }
    assert acts_for(guardian_id, lab.leo)
    assert acts_for(guardian_id, lab.almost)
    assert not acts_for(stranger_id, lab.leo), "another account"
    assert not acts_for(guardian_id, lab.marie), "a record never linked"
    assert sorted(listed()) == sorted([(lab.leo, "parent"), (lab.almost, "legal-guardian")])

    # The day before the 18th birthday, then the day itself (Paris time, noon).
    birthday = eighteenth_birthday(dt.date.fromisoformat(ALMOST["birth_date"]))
    noon = dt.datetime.combine(birthday, dt.time(10, 0), tzinfo=dt.UTC)
    lab.clock.now = noon - dt.timedelta(days=1)
    assert acts_for(guardian_id, lab.almost)
    lab.clock.now = noon
    assert not acts_for(guardian_id, lab.almost)
    assert listed() == [(lab.leo, "parent")]
    lab.clock.now = utcnow()

    with lab.unit() as (service, links):
        account = service.account(guardian_id)
        assert account is not None
        assert links.remove_dependent(account, lab.leo)
        assert not links.remove_dependent(account, lab.leo)
    assert not acts_for(guardian_id, lab.leo), "a revoked row"
    (revoked,) = events(runtime, "account:dependent:revoke")
    assert (revoked.target_type, revoked.target_id) == ("patient", lab.leo)
    reads = [e for e in events(runtime, "patient:record:read") if e.purpose == "guardian-check"]
    assert reads, "the birth date is decrypted, and audited, every time"


def test_the_desk_adds_a_dependent_and_a_receptionist_revokes_it(
    lab: Lab, runtime: Runtime
) -> None:
    guardian_id = lab.provision(ACCOUNT_EMAIL)
    receptionist_id = lab.provision(
        "accueil@example.org",
        kind=AccountKind.STAFF,
        role=StaffRole.RECEPTIONIST.value,
        staff_id=lab.staff_member("accueil@example.org", StaffRole.RECEPTIONIST),
    )
    admin_id = lab.provision(
        "admin@example.org",
        kind=AccountKind.STAFF,
        role=StaffRole.ORGANIZATION_ADMIN.value,
        staff_id=lab.staff_member("admin@example.org", StaffRole.ORGANIZATION_ADMIN),
    )
    with lab.unit() as (service, links):
        guardian = service.account(guardian_id)
        assert guardian is not None
        code = links.new_desk_code(guardian).code.reveal()

    def desk(staff_id: uuid.UUID, patient_id: uuid.UUID) -> Exception | None:
        def run(service: AccountService, links: PatientLinks) -> None:
            staff = service.account(staff_id)
            assert staff is not None
            links.desk_link(
                staff,
                patient_id=patient_id,
                email=ACCOUNT_EMAIL,
                code=code,
                relationship=Relationship.PARENT,
            )

        return lab.attempt(run)

    assert isinstance(desk(admin_id, lab.leo), LinkNotFoundError)
    assert desk(receptionist_id, lab.leo) is None
    with lab.unit() as _:
        row = lab.session.scalars(select(AccountDependent)).one()
        assert (row.patient_id, row.verified_by) == (lab.leo, "lab-desk")
    (added,) = events(runtime, "account:dependent:add")
    assert (added.actor_role, added.target_id) == ("receptionist", lab.leo)

    def revoke(staff_id: uuid.UUID) -> Exception | None:
        def run(service: AccountService, links: PatientLinks) -> None:
            staff = service.account(staff_id)
            assert staff is not None
            links.staff_revoke_dependent(staff, patient_id=lab.leo, email=ACCOUNT_EMAIL)

        return lab.attempt(run)

    assert isinstance(revoke(admin_id), LinkNotFoundError)
    assert revoke(receptionist_id) is None
    assert isinstance(revoke(receptionist_id), LinkNotFoundError), "already revoked"
    with lab.unit() as (service, _):
        guardian = service.account(guardian_id)
        assert guardian is not None
        keyring = TenantKeyring(
            lab.session,
            runtime.key_provider,
            lab.tenant_id,
            Principal(PrincipalKind.PATIENT, str(guardian_id)),
        )
        assert not account_acts_for(lab.session, keyring, guardian, lab.leo, today=dt.date.today())


# --------------------------------------------------------------------------- at rest, schema


def test_nothing_personal_in_clear_at_rest(
    client: TestClient, lab: Lab, runtime: Runtime, backend: str
) -> None:
    token = sign_in(client, runtime, ACCOUNT_EMAIL)
    client.post("/api/v1/account/patient-links", json=traits(MARIE), headers=csrf(token))
    client.post(
        "/api/v1/account/patient-links/confirm",
        json={"code": last_code(runtime, RECORD_EMAIL)},
        headers=csrf(token),
    )
    client.post(
        "/api/v1/account/patient-links",
        json=traits(LEO) | {"relationship": "parent"},
        headers=csrf(token),
    )
    done = client.post(
        "/api/v1/account/patient-links/confirm",
        json={"code": last_code(runtime, ACCOUNT_EMAIL)},
        headers=csrf(token),
    )
    assert done.status_code == 200, done.text
    assert len(client.get("/api/v1/account/patients").json()) == 2
    values = set()
    for person in (MARIE, LEO):
        nir = person["nir"]
        values |= {
            person["birth_name"],
            person["birth_name"].upper(),
            person["email"],
            person["birth_date"],
            nir,
            " ".join([nir[0], nir[1:3], nir[3:5], nir[5:7], nir[7:10], nir[10:13], nir[13:]]),
            "Claire",
            "Martin",
        }
    values |= {PHRASE, ACCOUNT_EMAIL}
    runtime.engine.dispose()
    if backend == "sqlite":
        blob = b"".join(path.read_bytes() for path in sqlite_files(runtime.settings.sqlalchemy_url))
    else:
        blob = pg_dump(runtime.settings.sqlalchemy_url)
    assert leaked(blob, values) == []


def test_the_routes_are_in_the_openapi_schema_with_their_errors(client: TestClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    expected = {
        ("/api/v1/account/patient-links", "post"): {"202", "401", "403", "409", "422", "429"},
        ("/api/v1/account/patient-links/confirm", "post"): {"200", "409", "422"},
        ("/api/v1/account/desk-code", "post"): {"201", "401"},
        ("/api/v1/account/patients", "get"): {"200", "401"},
        ("/api/v1/account/dependents/{patient_id}", "delete"): {"204", "404"},
        ("/api/v1/staff/patient-links", "post"): {"201", "404", "409", "429"},
        ("/api/v1/staff/dependents/revoke", "post"): {"204", "404"},
    }
    for (path, method), statuses in expected.items():
        assert statuses <= set(paths[path][method]["responses"]), (path, method)


def _form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def test_the_desk_page_is_for_receptionists_only(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    patient_csrf = sign_in(client, runtime, ACCOUNT_EMAIL)
    page = client.get("/compte/dossiers")
    assert page.status_code == 200
    assert "Rattacher votre dossier" in page.text
    shown = client.post(
        "/compte/dossiers/code-guichet",
        data={"csrf_token": _form_token(page.text)},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert shown.status_code == 200
    match = re.search(r'id="code-guichet">(\d{6})<', shown.text)
    assert match is not None
    code = match.group(1)
    assert patient_csrf
    assert client.get("/compte/guichet").status_code == 404, "not for a patient account"

    staff_sign_in(client, lab, "admin@example.org", StaffRole.ORGANIZATION_ADMIN)
    assert client.get("/compte/guichet").status_code == 404
    staff_sign_in(client, lab, "accueil@example.org", StaffRole.RECEPTIONIST)
    form = client.get("/compte/guichet")
    assert form.status_code == 200
    fields = {
        "csrf_token": _form_token(form.text),
        "patient_id": str(lab.marie),
        "email": ACCOUNT_EMAIL,
        "relationship": "self",
    }
    same_site = {"Sec-Fetch-Site": "same-origin"}
    wrong = client.post(
        "/compte/guichet",
        data=fields | {"code": f"{(int(code) + 1) % 1_000_000:06d}"},
        headers=same_site,
    )
    assert wrong.status_code == 404
    assert "Aucun rattachement possible" in wrong.text
    bad = client.post(
        "/compte/guichet", data=fields | {"patient_id": "x", "code": code}, headers=same_site
    )
    assert bad.status_code == 422
    assert "identifiant du dossier" in bad.text
    done = client.post(
        "/compte/guichet", data=fields | {"code": code}, headers=same_site, follow_redirects=False
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"].endswith("/compte/guichet?info=rattache")
    with runtime.sessions() as session:
        account = session.scalars(select(Account).where(Account.kind == "patient")).one()
        assert account.patient_id == lab.marie


def test_the_desk_reaches_only_patients_in_care_at_the_receptionists_sites(
    lab: Lab, runtime: Runtime
) -> None:
    lab.provision(ACCOUNT_EMAIL)
    receptionist_id = lab.provision(
        "accueil@example.org",
        kind=AccountKind.STAFF,
        role=StaffRole.RECEPTIONIST.value,
        staff_id=lab.staff_member("accueil@example.org", StaffRole.RECEPTIONIST),
    )
    lab.clock.now += dt.timedelta(days=60)  # the appointments are two months old now

    def run(service: AccountService, links: PatientLinks) -> None:
        account = service._find(
            service._email_indexes(ACCOUNT_EMAIL, AccountKind.PATIENT), AccountKind.PATIENT
        )
        staff = service.account(receptionist_id)
        assert account is not None
        assert staff is not None
        code = links.new_desk_code(account).code.reveal()
        links.desk_link(
            staff,
            patient_id=lab.marie,
            email=ACCOUNT_EMAIL,
            code=code,
            relationship=Relationship.SELF,
        )

    assert isinstance(lab.attempt(run), LinkNotFoundError)
    with runtime.sessions() as session:
        linked = session.scalars(select(Account.patient_id).where(Account.kind == "patient"))
        assert list(linked) == [None]
