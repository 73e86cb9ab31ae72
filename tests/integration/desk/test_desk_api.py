"""The lab desk's JSON API (``/api/v1/desk``) over HTTP, on SQLite and PostgreSQL: the day's
schedule, check-in / no-show / done, the identity check, walk-ins and home rounds, for the
desk roles and everyone else, with hostile input (unknown ids, another site's or another
tenant's appointment, a bad document, no CSRF token)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from caller_world import (
    ORIGIN,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    _within_today,
    alpha_settings,
    build_caller_world,
)
from helpers import leaked, pg_dump, sqlite_files
from labvault.app import create_app
from labvault.appointments.models import (
    Appointment,
    AppointmentKind,
    AppointmentStatus,
    IdentityCheck,
)
from labvault.core.access.policies import Interaction
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.ratelimit import RateDecision, RateRule
from labvault.core.runtime import Runtime
from labvault.desk.services import WALK_IN_ALERT, WALK_IN_DAILY_LIMIT, WALK_IN_PER_STAFF_DAY
from labvault.patients.models import Patient
from labvault.patients.nir import Nir, compute_key
from labvault.patients.services import PatientRepository, SealedItem
from labvault.security.models import SecurityAlert

SYSTEM = SystemPrincipal("test:desk")
OUTSIDERS = ("biologist", "organization_admin", "security_officer", PATIENT_OWN)


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    return build_caller_world(alpha)


@pytest.fixture
def client(alpha: Runtime, cw: CallerWorld) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as test_client:
        yield test_client


def as_(client: TestClient, cw: CallerWorld, name: str) -> dict[str, str]:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    cw.current = name
    return {"X-CSRF-Token": cw.sessions[name].csrf}


def appointment_of(cw: CallerWorld, patient: str) -> uuid.UUID:
    with cw.world.sessions() as session:
        found = session.scalar(
            select(Appointment.id).where(Appointment.patient_id == cw.world.patients[patient])
        )
        assert found is not None
        return found


def add_appointment(cw: CallerWorld, patient: str, **values: object) -> uuid.UUID:
    with transaction(cw.world.sessions) as session:
        appointment = Appointment(
            id=uuid.uuid4(),
            tenant_id=cw.world.tenant,
            patient_id=cw.world.patients[patient],
            site_id=cw.world.sites["main"],
            **values,
        )
        session.add(appointment)
        return appointment.id


def status_of(cw: CallerWorld, appointment_id: uuid.UUID) -> str:
    with cw.world.sessions() as session:
        found = session.get(Appointment, appointment_id)
        assert found is not None
        return found.status


def identity_status(cw: CallerWorld, patient_id: uuid.UUID) -> str:
    with cw.world.sessions() as session:
        found = session.scalar(select(Patient.identity_status).where(Patient.id == patient_id))
        assert found is not None
        return found


def events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    with runtime.audit_sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def count(cw: CallerWorld, model: type[object]) -> int:
    with cw.world.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)  # type: ignore[arg-type]


def opened_kinds(cw: CallerWorld, checks: list[IdentityCheck]) -> list[str]:
    """The sealed document kinds of ``checks``, opened as a system job."""
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(session, cw.runtime.key_provider, cw.world.tenant, SYSTEM)
        opened = PatientRepository(session, keyring).open_for(
            "patient",
            [
                SealedItem(
                    c.patient_id, "identity_checks", c.id, {"document_kind": c.document_kind}
                )
                for c in checks
            ],
            purpose="test",
        )
    return [(opened[c.id]["document_kind"] or b"").decode() for c in checks]


# --- the day's schedule -----------------------------------------------------------------------


def test_the_schedule_lists_today_s_visits_of_the_site_with_names(
    client: TestClient, cw: CallerWorld
) -> None:
    held = add_appointment(
        cw,
        "in_20_days",
        starts_at=_within_today(utcnow() + dt.timedelta(minutes=1), utcnow()),
        status=AppointmentStatus.HELD.value,
        hold_expires_at=utcnow() + dt.timedelta(minutes=10),
    )
    for name in ("receptionist", "sampler"):
        as_(client, cw, name)
        answer = client.get("/api/v1/desk/schedule")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["site"]["id"] == str(cw.world.sites["main"])
        listed = {item["patient_id"]: item for item in body["items"]}
        assert set(listed) == {
            str(cw.world.patients["today"]),
            str(cw.world.patients["earlier_today"]),
        }, name
        assert str(held) not in {item["appointment_id"] for item in body["items"]}
        today = listed[str(cw.world.patients["today"])]
        person = cw.world.inputs["today"]
        assert today["birth_name"] == person.birth_name
        assert today["birth_date"] == person.birth_date.isoformat()
        assert today["status"] == "booked"
        assert today["identity_status"] == "PROV"
        assert today["can_check_in"] is True
        assert today["preregistered"] is False
    assert answer.headers["cache-control"] == "no-store"


def test_the_schedule_refuses_other_roles_and_other_sites_with_one_404(
    client: TestClient, cw: CallerWorld
) -> None:
    bodies = set()
    for name in OUTSIDERS:
        as_(client, cw, name)
        answer = client.get("/api/v1/desk/schedule")
        assert answer.status_code == 404, (name, answer.text)
        bodies.add(answer.content)
    as_(client, cw, "receptionist")
    for site in (cw.world.sites["annex"], uuid.uuid4()):
        answer = client.get("/api/v1/desk/schedule", params={"site_id": str(site)})
        assert answer.status_code == 404
        bodies.add(answer.content)
    assert len(bodies) == 1


@pytest.mark.parametrize("day", ["0", "2026-13-01", "864000", "demain", "1900-01-01"])
def test_the_schedule_refuses_a_bad_day_with_a_french_422(
    client: TestClient, cw: CallerWorld, day: str
) -> None:
    as_(client, cw, "receptionist")
    answer = client.get("/api/v1/desk/schedule", params={"day": day})
    assert answer.status_code == 422
    assert answer.json()["field"] == "jour"
    assert "jour" in answer.json()["detail"]


# --- status changes ---------------------------------------------------------------------------


def test_check_in_then_done_and_each_only_once(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "receptionist")
    appointment = appointment_of(cw, "today")
    url = f"/api/v1/desk/appointments/{appointment}"
    early = client.post(f"{url}/done", headers=headers)
    assert early.status_code == 409
    assert "réservé" in early.json()["detail"]
    answer = client.post(f"{url}/check-in", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"appointment_id": str(appointment), "status": "checked_in"}
    again = client.post(f"{url}/check-in", headers=headers)
    assert again.status_code == 409
    assert status_of(cw, appointment) == "checked_in"
    finished = client.post(f"{url}/done", headers=headers)
    assert finished.status_code == 200
    assert status_of(cw, appointment) == "done"
    recorded = events(cw.runtime, AuditAction.APPOINTMENT_DESK_CHECK_IN)
    assert [(e.target_type, e.target_id, e.outcome) for e in recorded] == [
        ("patient", cw.world.patients["today"], "success")
    ]
    assert len(events(cw.runtime, AuditAction.APPOINTMENT_DESK_DONE)) == 1


def test_a_sampler_checks_in_today_s_patient(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "sampler")
    appointment = appointment_of(cw, "today")
    answer = client.post(f"/api/v1/desk/appointments/{appointment}/check-in", headers=headers)
    assert answer.status_code == 200, answer.text


def test_no_show_only_once_the_start_time_has_passed(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "receptionist")
    upcoming = appointment_of(cw, "tomorrow")
    answer = client.post(f"/api/v1/desk/appointments/{upcoming}/no-show", headers=headers)
    assert answer.status_code == 409
    assert "heure du rendez-vous" in answer.json()["detail"]
    assert status_of(cw, upcoming) == "booked"
    missed = add_appointment(
        cw,
        "in_20_days",
        starts_at=utcnow() - dt.timedelta(minutes=30),
        status=AppointmentStatus.BOOKED.value,
    )
    answer = client.post(f"/api/v1/desk/appointments/{missed}/no-show", headers=headers)
    assert answer.status_code == 200, answer.text
    assert status_of(cw, missed) == "no_show"
    assert len(events(cw.runtime, AuditAction.APPOINTMENT_DESK_NO_SHOW)) == 1


def test_check_in_is_for_the_appointment_s_day(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "receptionist")
    appointment = appointment_of(cw, "in_20_days")
    answer = client.post(f"/api/v1/desk/appointments/{appointment}/check-in", headers=headers)
    assert answer.status_code == 409
    assert status_of(cw, appointment) == "booked"


def test_unknown_foreign_and_out_of_scope_appointments_are_one_404(
    client: TestClient, cw: CallerWorld
) -> None:
    other_site = appointment_of(cw, "other_site")
    with transaction(cw.runtime.tenant_sessions(cw.world.other_tenant)) as session:
        foreign = session.scalar(
            select(Appointment.id).where(Appointment.tenant_id == cw.world.other_tenant)
        )
    assert foreign is not None
    out_of_window = appointment_of(cw, "45_days_ago")
    bodies = set()
    headers = as_(client, cw, "receptionist")
    for target in (uuid.uuid4(), other_site, foreign, out_of_window):
        answer = client.post(f"/api/v1/desk/appointments/{target}/check-in", headers=headers)
        assert answer.status_code == 404, target
        bodies.add(answer.content)
    # A sampler reaches today's patients only.
    headers = as_(client, cw, "sampler")
    tomorrow = appointment_of(cw, "tomorrow")
    answer = client.post(f"/api/v1/desk/appointments/{tomorrow}/no-show", headers=headers)
    assert answer.status_code == 404
    bodies.add(answer.content)
    for name in OUTSIDERS:
        headers = as_(client, cw, name)
        today = appointment_of(cw, "today")
        answer = client.post(f"/api/v1/desk/appointments/{today}/check-in", headers=headers)
        assert answer.status_code == 404, name
        bodies.add(answer.content)
    assert len(bodies) == 1
    assert status_of(cw, appointment_of(cw, "today")) == "booked"
    denied = events(cw.runtime, AuditAction.APPOINTMENT_DESK_CHECK_IN)
    assert denied
    assert {e.outcome for e in denied} == {"denied"}


def test_a_malformed_id_is_a_422_and_no_csrf_token_a_403(
    client: TestClient, cw: CallerWorld
) -> None:
    headers = as_(client, cw, "receptionist")
    answer = client.post("/api/v1/desk/appointments/0/check-in", headers=headers)
    assert answer.status_code == 422
    appointment = appointment_of(cw, "today")
    answer = client.post(f"/api/v1/desk/appointments/{appointment}/check-in")
    assert answer.status_code == 403
    assert status_of(cw, appointment) == "booked"


# --- identity check ---------------------------------------------------------------------------


def test_an_identity_card_raises_prov_to_vali(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "receptionist")
    appointment = appointment_of(cw, "today")
    patient = cw.world.patients["today"]
    url = f"/api/v1/desk/appointments/{appointment}/identity-check"
    answer = client.post(url, json={"document_kind": "cni"}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status_before"] == "PROV"
    assert answer.json()["status_after"] == "VALI"
    assert identity_status(cw, patient) == "VALI"
    again = client.post(url, json={"document_kind": "passeport"}, headers=headers)
    assert again.json()["status_after"] == "VALI"
    with cw.world.sessions() as session:
        checks = list(session.scalars(select(IdentityCheck).order_by(IdentityCheck.checked_at)))
    kinds = opened_kinds(cw, checks)
    assert [(k, c.status_before, c.status_after) for k, c in zip(kinds, checks, strict=True)] == [
        ("cni", "PROV", "VALI"),
        ("passeport", "VALI", "VALI"),
    ]
    assert checks[0].staff_id == cw.world.staff["receptionist"]
    recorded = events(cw.runtime, AuditAction.PATIENT_IDENTITY_CHECK)
    assert [(e.target_id, e.outcome) for e in recorded] == [(patient, "success")] * 2


def test_recup_becomes_qual(client: TestClient, cw: CallerWorld) -> None:
    patient = cw.world.patients["today"]
    with transaction(cw.world.sessions) as session:
        row = session.get(Patient, patient)
        assert row is not None
        row.identity_status = "RECUP"
    headers = as_(client, cw, "receptionist")
    appointment = appointment_of(cw, "today")
    answer = client.post(
        f"/api/v1/desk/appointments/{appointment}/identity-check",
        json={"document_kind": "titre_sejour"},
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    assert identity_status(cw, patient) == "QUAL"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("permis_conduire", "ne permet pas de valider"),
        ("carte_vitale", "ne permet pas de valider"),
        ("<b>cni</b>", "Choisissez"),
        ("", "Choisissez"),
    ],
)
def test_a_document_that_proves_no_identity_changes_nothing(
    client: TestClient, cw: CallerWorld, document: str, message: str
) -> None:
    headers = as_(client, cw, "receptionist")
    appointment = appointment_of(cw, "today")
    answer = client.post(
        f"/api/v1/desk/appointments/{appointment}/identity-check",
        json={"document_kind": document},
        headers=headers,
    )
    assert answer.status_code == 422
    assert message in answer.json()["detail"]
    assert answer.json()["field"] == "document_kind"
    assert identity_status(cw, cw.world.patients["today"]) == "PROV"
    assert count(cw, IdentityCheck) == 0
    assert events(cw.runtime, AuditAction.PATIENT_IDENTITY_CHECK) == []


def test_a_sampler_may_not_check_identities(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "sampler")
    appointment = appointment_of(cw, "today")
    answer = client.post(
        f"/api/v1/desk/appointments/{appointment}/identity-check",
        json={"document_kind": "cni"},
        headers=headers,
    )
    assert answer.status_code == 404
    assert identity_status(cw, cw.world.patients["today"]) == "PROV"


def test_the_document_kind_is_sealed_at_rest(
    client: TestClient, cw: CallerWorld, alpha: Runtime, backend: str
) -> None:
    """ "titre de séjour" says the patient is a foreign national: never in clear at rest."""
    headers = as_(client, cw, "receptionist")
    appointment = appointment_of(cw, "today")
    answer = client.post(
        f"/api/v1/desk/appointments/{appointment}/identity-check",
        json={"document_kind": "titre_sejour"},
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    with cw.world.sessions() as session:
        checks = list(session.scalars(select(IdentityCheck)))
    assert len(checks) == 1
    assert b"titre" not in checks[0].document_kind
    assert opened_kinds(cw, checks) == ["titre_sejour"]
    values = {"titre_sejour", "titre de s"}
    url = alpha.settings.database_url
    if backend == "sqlite":
        files = sqlite_files(url)
        assert files
        for path in files:
            assert leaked(path.read_bytes(), values) == [], path.name
    else:
        dump = pg_dump(url)
        assert b"identity_checks" in dump
        assert leaked(dump, values) == []


@pytest.mark.parametrize(
    ("status", "when"),
    [
        (AppointmentStatus.CANCELLED, "today"),
        (AppointmentStatus.NO_SHOW, "today"),
        (AppointmentStatus.BOOKED, "yesterday"),
        (AppointmentStatus.DONE, "yesterday"),
        (AppointmentStatus.BOOKED, "tomorrow"),
    ],
)
def test_an_identity_check_is_for_today_s_live_visits_only(
    client: TestClient, cw: CallerWorld, status: AppointmentStatus, when: str
) -> None:
    now = utcnow()
    starts = {
        "today": _within_today(now, now),
        "yesterday": now - dt.timedelta(days=1),
        "tomorrow": now + dt.timedelta(days=1),
    }[when]
    live = appointment_of(cw, "today")
    appointment = add_appointment(cw, "today", starts_at=starts, status=status.value)
    headers = as_(client, cw, "receptionist")
    answer = client.post(
        f"/api/v1/desk/appointments/{appointment}/identity-check",
        json={"document_kind": "cni"},
        headers=headers,
    )
    assert answer.status_code == 409, answer.text
    assert "aujourd'hui" in answer.json()["detail"]
    assert identity_status(cw, cw.world.patients["today"]) == "PROV"
    assert count(cw, IdentityCheck) == 0
    assert events(cw.runtime, AuditAction.PATIENT_IDENTITY_CHECK) == []
    listed = client.get("/api/v1/desk/schedule").json()["items"]
    shown = {item["appointment_id"]: item["can_check_identity"] for item in listed}
    assert shown.get(str(appointment), False) is False
    assert shown[str(live)] is True


def test_an_identity_check_is_accepted_after_the_sampling_of_the_day(
    client: TestClient, cw: CallerWorld
) -> None:
    headers = as_(client, cw, "receptionist")
    done = appointment_of(cw, "earlier_today")
    answer = client.post(
        f"/api/v1/desk/appointments/{done}/identity-check",
        json={"document_kind": "passeport"},
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    assert identity_status(cw, cw.world.patients["earlier_today"]) == "VALI"


# --- walk-ins ---------------------------------------------------------------------------------


def _traits(cw: CallerWorld, name: str, *, with_nir: bool = False) -> dict[str, object]:
    person = cw.world.inputs[name]
    body: dict[str, object] = {
        "birth_name": person.birth_name,
        "first_name": person.first_given_name,
        "birth_date": person.birth_date.isoformat(),
    }
    if with_nir and person.nir is not None:
        body["nir"] = person.nir.compact
    return body


@pytest.mark.parametrize("with_nir", [False, True])
def test_a_walk_in_matching_one_record_is_checked_in_and_then_in_scope(
    client: TestClient, cw: CallerWorld, with_nir: bool
) -> None:
    headers = as_(client, cw, "receptionist")
    patient = cw.world.patients["no_appointment"]
    assert client.get(f"/api/v1/patients/{patient}").status_code == 404
    answer = client.post(
        "/api/v1/desk/walk-ins",
        json=_traits(cw, "no_appointment", with_nir=with_nir),
        headers=headers,
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["patient_id"] == str(patient)
    assert answer.json()["created_record"] is False
    appointment = uuid.UUID(answer.json()["appointment_id"])
    with cw.world.sessions() as session:
        row = session.get(Appointment, appointment)
        assert row is not None
        assert (row.status, row.kind, row.walk_in, row.site_id) == (
            AppointmentStatus.CHECKED_IN.value,
            AppointmentKind.SITE.value,
            True,
            cw.world.sites["main"],
        )
        assert row.booked_by_staff_id == cw.world.staff["receptionist"]
    assert client.get(f"/api/v1/patients/{patient}").status_code == 200
    listed = client.get("/api/v1/desk/schedule").json()["items"]
    assert any(item["appointment_id"] == str(appointment) and item["walk_in"] for item in listed)
    walk_ins = events(cw.runtime, AuditAction.APPOINTMENT_DESK_WALK_IN)
    assert [(e.target_id, e.outcome) for e in walk_ins] == [(patient, "success")]


def test_a_walk_in_matching_no_record_gets_one_message_and_nothing_written(
    client: TestClient, cw: CallerWorld
) -> None:
    headers = as_(client, cw, "receptionist")
    before = count(cw, Appointment)
    wrong_name = {**_traits(cw, "no_appointment"), "birth_name": "Personne"}
    other = _traits(cw, "today", with_nir=True)
    mismatched_nir = {**_traits(cw, "no_appointment"), "nir": other["nir"]}
    details = set()
    for body in (wrong_name, mismatched_nir):
        answer = client.post("/api/v1/desk/walk-ins", json=body, headers=headers)
        assert answer.status_code == 422, answer.text
        details.add(answer.json()["detail"])
    assert len(details) == 1
    assert count(cw, Appointment) == before
    assert events(cw.runtime, AuditAction.APPOINTMENT_DESK_WALK_IN) == []
    # Looking was an access: the searches are on record, as the receptionist's.
    searches = events(cw.runtime, AuditAction.PATIENT_SEARCH_NAME) + events(
        cw.runtime, AuditAction.PATIENT_SEARCH_NIR
    )
    assert len(searches) == 2
    assert {e.actor_role for e in searches} == {"receptionist"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"birth_date": "0"}, "birth_date"),
        ({"birth_date": "2999-01-01"}, "birth_date"),
        ({"birth_name": ""}, "birth_name"),
        ({"birth_name": "<script>alert(1)</script>"}, "birth_name"),
        ({"nir": "123"}, "nir"),
        ({"site_id": "0"}, "site_id"),
    ],
)
def test_a_walk_in_with_bad_traits_is_a_422_and_writes_nothing(
    client: TestClient, cw: CallerWorld, change: dict[str, str], field: str
) -> None:
    headers = as_(client, cw, "receptionist")
    before = count(cw, Appointment)
    body = {**_traits(cw, "no_appointment"), **change}
    answer = client.post("/api/v1/desk/walk-ins", json=body, headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert count(cw, Appointment) == before


def test_a_walk_in_creates_a_new_record_only_when_asked(
    client: TestClient, cw: CallerWorld
) -> None:
    headers = as_(client, cw, "receptionist")
    body = {"birth_name": "Nouvelle", "first_name": "Patiente", "birth_date": "1990-05-17"}
    assert client.post("/api/v1/desk/walk-ins", json=body, headers=headers).status_code == 422
    no_sex = client.post("/api/v1/desk/walk-ins", json={**body, "create": True}, headers=headers)
    assert no_sex.status_code == 422
    assert no_sex.json()["field"] == "sex"
    answer = client.post(
        "/api/v1/desk/walk-ins", json={**body, "create": True, "sex": "F"}, headers=headers
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["created_record"] is True
    patient = uuid.UUID(answer.json()["patient_id"])
    assert identity_status(cw, patient) == "PROV"
    record = client.get(f"/api/v1/patients/{patient}").json()
    assert record["birth_name"] == "Nouvelle"
    again = client.post(
        "/api/v1/desk/walk-ins", json={**body, "create": True, "sex": "F"}, headers=headers
    )
    assert again.status_code == 422


def test_walk_ins_are_for_receptionists_only(client: TestClient, cw: CallerWorld) -> None:
    for name in ("sampler", *OUTSIDERS):
        headers = as_(client, cw, name)
        answer = client.post(
            "/api/v1/desk/walk-ins", json=_traits(cw, "no_appointment"), headers=headers
        )
        assert answer.status_code == 404, name
    assert events(cw.runtime, AuditAction.APPOINTMENT_DESK_WALK_IN) == []


class CountingLimiter:
    """Counts hits per rule and identifiers, without time: every rule named in ``only``
    allows its amount, the others always allow."""

    def __init__(self, only: frozenset[str]) -> None:
        self.only = only
        self.counts: dict[tuple[str, tuple[str, ...]], int] = {}

    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        key = (rule.name, identifiers)
        used = self.counts.get(key, 0)
        if rule.name in self.only and used >= rule.amount:
            return RateDecision(allowed=False, retry_after=60.0, remaining=0)
        self.counts[key] = used + 1
        return RateDecision(allowed=True, retry_after=0.0, remaining=0)

    def close(self) -> None:
        pass


def _homonym_nir(nir: Nir) -> Nir:
    """Another valid NIR for the same sex, birth month and place (another order number)."""
    body = nir.compact[:13]
    order = "998" if body[10:13] != "998" else "997"
    other = body[:10] + order
    return Nir.parse(f"{other}{compute_key(other):02d}")


def test_every_refused_walk_in_gets_one_answer_and_nothing_written(
    client: TestClient, cw: CallerWorld
) -> None:
    """No match, several matches, the NIR known with other traits, a record already there:
    the same answer, so the desk cannot tell whether a person or a NIR is a patient."""
    person = cw.world.inputs["no_appointment"]
    assert person.nir is not None
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(session, cw.runtime.key_provider, cw.world.tenant, SYSTEM)
        homonym = person.model_copy(update={"nir": _homonym_nir(person.nir)})
        made = PatientRepository(session, keyring).register_many([homonym], purpose="test")
        assert made.created, "the homonym must be a second record"
    today = cw.world.inputs["today"]
    assert today.nir is not None
    traits = _traits(cw, "no_appointment")
    sex = person.sex.value
    bodies: list[dict[str, object]] = [
        # no record has these traits
        {**traits, "birth_name": "Personne"},
        # two records have these traits (homonyms)
        traits,
        # the NIR is a patient's, the traits another person's
        {**traits, "nir": today.nir.compact},
        # creation when a record has these traits
        {**traits, "create": True, "sex": sex},
        # creation with the NIR of a patient, under another first name
        {
            "birth_name": today.birth_name,
            "first_name": "Autreprenom",
            "birth_date": today.birth_date.isoformat(),
            "nir": today.nir.compact,
            "create": True,
            "sex": today.sex.value,
        },
    ]
    headers = as_(client, cw, "receptionist")
    appointments, patients = count(cw, Appointment), count(cw, Patient)
    created_before = len(events(cw.runtime, AuditAction.PATIENT_RECORD_CREATE))
    answers = set()
    for body in bodies:
        answer = client.post("/api/v1/desk/walk-ins", json=body, headers=headers)
        assert answer.status_code == 422, (body, answer.text)
        answers.add((answer.status_code, json.dumps(answer.json(), sort_keys=True)))
    assert len(answers) == 1, answers
    assert count(cw, Appointment) == appointments
    assert count(cw, Patient) == patients
    assert len(events(cw.runtime, AuditAction.PATIENT_RECORD_CREATE)) == created_before
    assert events(cw.runtime, AuditAction.APPOINTMENT_DESK_WALK_IN) == []
    searches = events(cw.runtime, AuditAction.PATIENT_SEARCH_NAME) + events(
        cw.runtime, AuditAction.PATIENT_SEARCH_NIR
    )
    assert len(searches) == len(bodies)


def test_creating_without_sex_is_answered_before_any_search(
    client: TestClient, cw: CallerWorld
) -> None:
    headers = as_(client, cw, "receptionist")
    answers = set()
    for body in (
        {**_traits(cw, "no_appointment"), "create": True},
        {
            "birth_name": "Nouvelle",
            "first_name": "Patiente",
            "birth_date": "1990-05-17",
            "create": True,
        },
    ):
        answer = client.post("/api/v1/desk/walk-ins", json=body, headers=headers)
        assert answer.status_code == 422
        assert answer.json()["field"] == "sex"
        answers.add(answer.content)
    assert len(answers) == 1
    assert events(cw.runtime, AuditAction.PATIENT_SEARCH_NAME) == []


def test_a_walk_in_at_a_site_that_is_not_the_receptionist_s_is_a_404_before_any_search(
    client: TestClient, cw: CallerWorld
) -> None:
    headers = as_(client, cw, "receptionist")
    before = count(cw, Appointment)
    for site in (cw.world.sites["annex"], uuid.uuid4()):
        answer = client.post(
            "/api/v1/desk/walk-ins",
            json={**_traits(cw, "no_appointment"), "site_id": str(site)},
            headers=headers,
        )
        assert answer.status_code == 404
    assert count(cw, Appointment) == before
    assert events(cw.runtime, AuditAction.PATIENT_SEARCH_NAME) == []


def test_the_daily_walk_in_limit_refuses_and_alerts_the_security_officers_once(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    alpha.__dict__["rate_limiter"] = CountingLimiter(frozenset({WALK_IN_PER_STAFF_DAY.name}))
    headers = as_(client, cw, "receptionist")
    body = {**_traits(cw, "no_appointment"), "birth_name": "Personne"}
    assert WALK_IN_DAILY_LIMIT <= 20
    for _ in range(WALK_IN_DAILY_LIMIT):
        answer = client.post("/api/v1/desk/walk-ins", json=body, headers=headers)
        assert answer.status_code == 422
        assert answer.json()["code"] == "invalid"
        assert "Le passage n'a pas pu" in answer.json()["detail"]
    with cw.world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SecurityAlert)) == 0
    for _ in range(2):
        refused = client.post("/api/v1/desk/walk-ins", json=body, headers=headers)
        assert refused.status_code == 422
        assert "limite quotidienne" in refused.json()["detail"]
    # Even the right traits are refused now: the limit stops the lookups themselves.
    right = client.post(
        "/api/v1/desk/walk-ins", json=_traits(cw, "no_appointment"), headers=headers
    )
    assert "limite quotidienne" in right.json()["detail"]
    with cw.world.sessions() as session:
        alerts = list(session.scalars(select(SecurityAlert)))
    assert [(a.kind, a.target_type, a.target_id) for a in alerts] == [
        (WALK_IN_ALERT, "staff", cw.world.staff["receptionist"])
    ]
    searches = events(cw.runtime, AuditAction.PATIENT_SEARCH_NAME)
    assert len(searches) == WALK_IN_DAILY_LIMIT
    assert len(events(cw.runtime, AuditAction.SECURITY_ALERT_RAISE)) == 1


# --- home rounds ------------------------------------------------------------------------------


def add_home_visit(cw: CallerWorld, patient: str, address: dict[str, str]) -> uuid.UUID:
    appointment_id = uuid.uuid4()
    start = _within_today(utcnow() + dt.timedelta(minutes=5), utcnow())
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(session, cw.runtime.key_provider, cw.world.tenant, SYSTEM)
        patient_id = cw.world.patients[patient]
        sealed = PatientRepository(session, keyring).seal_for(
            patient_id,
            "appointment",
            Interaction.CREATE,
            SealedItem(
                patient_id,
                "appointments",
                appointment_id,
                {"home_address": json.dumps(address).encode()},
            ),
            purpose="test",
        )
        assert sealed is not None
        session.add(
            Appointment(
                id=appointment_id,
                tenant_id=cw.world.tenant,
                patient_id=patient_id,
                site_id=cw.world.sites["main"],
                starts_at=start,
                ends_at=start + dt.timedelta(hours=2),
                kind=AppointmentKind.HOME.value,
                home_address=sealed["home_address"],
            )
        )
    return appointment_id


def test_a_receptionist_assigns_a_home_visit_that_the_sampler_then_sees(
    client: TestClient, cw: CallerWorld
) -> None:
    address = {
        "line": "3 <b>impasse</b> des Lilas",
        "postal_code": "75011",
        "city": "Paris",
        "instructions": "Code 12B",
    }
    visit = add_home_visit(cw, "today", address)
    headers = as_(client, cw, "sampler")
    assert client.get("/api/v1/desk/rounds").json()["items"] == []
    headers = as_(client, cw, "receptionist")
    body = client.get("/api/v1/desk/rounds").json()
    assert [item["appointment_id"] for item in body["items"]] == [str(visit)]
    assert body["items"][0]["address_line"] == address["line"]
    assert [s["id"] for s in body["samplers"]] == [str(cw.world.staff["sampler"])]
    url = f"/api/v1/desk/appointments/{visit}/sampler"
    wrong = client.post(
        url, json={"sampler_staff_id": str(cw.world.staff["biologist"])}, headers=headers
    )
    assert wrong.status_code == 422
    assert wrong.json()["field"] == "sampler_staff_id"
    answer = client.post(
        url, json={"sampler_staff_id": str(cw.world.staff["sampler"])}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["sampler_staff_id"] == str(cw.world.staff["sampler"])
    assert len(events(cw.runtime, AuditAction.APPOINTMENT_HOME_ASSIGN)) == 1
    as_(client, cw, "sampler")
    mine = client.get("/api/v1/desk/rounds").json()
    assert [item["city"] for item in mine["items"]] == ["Paris"]
    assert mine["samplers"] == []
    headers = as_(client, cw, "sampler")
    refused = client.post(
        url, json={"sampler_staff_id": str(cw.world.staff["sampler"])}, headers=headers
    )
    assert refused.status_code == 404


def test_assigning_a_site_visit_is_a_conflict(client: TestClient, cw: CallerWorld) -> None:
    headers = as_(client, cw, "receptionist")
    appointment = appointment_of(cw, "today")
    answer = client.post(
        f"/api/v1/desk/appointments/{appointment}/sampler",
        json={"sampler_staff_id": str(cw.world.staff["sampler"])},
        headers=headers,
    )
    assert answer.status_code == 409
