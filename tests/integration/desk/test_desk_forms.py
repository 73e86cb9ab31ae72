"""The desk's French pages (``/accueil``) over HTTP: the day's schedule with names escaped,
check-in and identity check forms (CSRF, French messages, nothing changed on refusal),
walk-ins and home rounds; other roles get the "page introuvable"."""

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
from labvault.app import create_app
from labvault.appointments.models import Appointment, AppointmentKind, IdentityCheck
from labvault.core.access.policies import Interaction
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.patients.models import Patient
from labvault.patients.services import PatientRepository, SealedItem

SYSTEM = SystemPrincipal("test:desk-pages")
SCRIPT = "<script>alert(1)</script>"
FORM = {"Sec-Fetch-Site": "same-origin"}


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


def as_(client: TestClient, cw: CallerWorld, name: str) -> str:
    """Make ``name`` the client's caller; its forms' CSRF token."""
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    return cw.sessions[name].csrf


def appointment_of(cw: CallerWorld, patient: str) -> uuid.UUID:
    with cw.world.sessions() as session:
        found = session.scalar(
            select(Appointment.id).where(Appointment.patient_id == cw.world.patients[patient])
        )
        assert found is not None
        return found


def status_of(cw: CallerWorld, appointment_id: uuid.UUID) -> str:
    with cw.world.sessions() as session:
        found = session.get(Appointment, appointment_id)
        assert found is not None
        return found.status


def identity_status(cw: CallerWorld, patient: str) -> str:
    with cw.world.sessions() as session:
        found = session.scalar(
            select(Patient.identity_status).where(Patient.id == cw.world.patients[patient])
        )
        assert found is not None
        return found


def form(cw: CallerWorld, csrf: str, **values: str) -> dict[str, str]:
    return {"csrf_token": csrf, "site": str(cw.world.sites["main"]), **values}


def add_scripted_patient(cw: CallerWorld) -> uuid.UUID:
    """A patient whose name is markup (stored as given by an import that let it through),
    with an appointment today at the main site."""
    person = cw.world.inputs["no_appointment"].model_copy(
        update={"birth_name": SCRIPT, "first_names": '"><img src=x onerror=alert(2)>', "nir": None}
    )
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(session, cw.runtime.key_provider, cw.world.tenant, SYSTEM)
        created = PatientRepository(session, keyring).register_many([person])
        patient_id = created.created[0]
        session.add(
            Appointment(
                tenant_id=cw.world.tenant,
                patient_id=patient_id,
                site_id=cw.world.sites["main"],
                starts_at=_within_today(utcnow() + dt.timedelta(minutes=1), utcnow()),
            )
        )
    return patient_id


# --- the planning -----------------------------------------------------------------------------


def test_the_planning_shows_today_s_patients_with_markup_escaped(
    client: TestClient, cw: CallerWorld
) -> None:
    add_scripted_patient(cw)
    for name in ("receptionist", "sampler"):
        as_(client, cw, name)
        page = client.get("/accueil/planning")
        assert page.status_code == 200, page.text
        assert page.headers["cache-control"] == "no-store"
        assert cw.world.inputs["today"].birth_name in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert SCRIPT not in page.text
        assert "<img src=x" not in page.text
        assert cw.world.inputs["other_site"].birth_name not in page.text
        assert ('name="document_kind"' in page.text) is (name == "receptionist")


def test_the_planning_is_the_same_404_page_for_every_other_role(
    client: TestClient, cw: CallerWorld
) -> None:
    pages = set()
    for name in ("biologist", "organization_admin", "security_officer", PATIENT_OWN):
        as_(client, cw, name)
        page = client.get("/accueil/planning")
        assert page.status_code == 404, name
        pages.add(page.text)
    assert len(pages) == 1
    as_(client, cw, "receptionist")
    page = client.get("/accueil/planning", params={"site": str(cw.world.sites["annex"])})
    assert page.status_code == 404


@pytest.mark.parametrize("day", ["0", "31/12/2026", "2026-02-30"])
def test_a_bad_day_shows_today_with_a_french_message(
    client: TestClient, cw: CallerWorld, day: str
) -> None:
    as_(client, cw, "receptionist")
    page = client.get("/accueil/planning", params={"jour": day})
    assert page.status_code == 422
    assert "AAAA-MM-JJ" in page.text
    assert cw.world.inputs["today"].birth_name in page.text


def test_check_in_from_the_planning_then_done(client: TestClient, cw: CallerWorld) -> None:
    csrf = as_(client, cw, "receptionist")
    appointment = appointment_of(cw, "today")
    answer = client.post(
        "/accueil/planning/arrivee",
        data=form(cw, csrf, appointment_id=str(appointment)),
        headers=FORM,
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert "info=arrivee" in answer.headers["location"]
    assert status_of(cw, appointment) == "checked_in"
    page = client.get(answer.headers["location"])
    assert "Arrivée enregistrée." in page.text
    again = client.post(
        "/accueil/planning/arrivee",
        data=form(cw, csrf, appointment_id=str(appointment)),
        headers=FORM,
    )
    assert again.status_code == 409
    assert "arrivé" in again.text
    done = client.post(
        "/accueil/planning/preleve",
        data=form(cw, csrf, appointment_id=str(appointment)),
        headers=FORM,
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert status_of(cw, appointment) == "done"


def test_forms_without_the_csrf_token_change_nothing(client: TestClient, cw: CallerWorld) -> None:
    as_(client, cw, "receptionist")
    appointment = appointment_of(cw, "today")
    for path, extra in (
        ("/accueil/planning/arrivee", {}),
        ("/accueil/planning/identite", {"document_kind": "cni"}),
    ):
        answer = client.post(
            path,
            data={"site": str(cw.world.sites["main"]), "appointment_id": str(appointment), **extra},
            headers=FORM,
        )
        assert answer.status_code == 403
    assert status_of(cw, appointment) == "booked"
    assert identity_status(cw, "today") == "PROV"


def test_no_show_before_the_time_is_refused_on_the_page(
    client: TestClient, cw: CallerWorld
) -> None:
    csrf = as_(client, cw, "receptionist")
    appointment = appointment_of(cw, "tomorrow")
    answer = client.post(
        "/accueil/planning/absence",
        data=form(cw, csrf, appointment_id=str(appointment)),
        headers=FORM,
    )
    assert answer.status_code == 409
    assert "heure du rendez-vous" in answer.text
    assert status_of(cw, appointment) == "booked"


def test_unknown_and_other_site_appointments_are_the_404_page(
    client: TestClient, cw: CallerWorld
) -> None:
    csrf = as_(client, cw, "receptionist")
    for target in (uuid.uuid4(), appointment_of(cw, "other_site")):
        answer = client.post(
            "/accueil/planning/arrivee",
            data=form(cw, csrf, appointment_id=str(target)),
            headers=FORM,
        )
        assert answer.status_code == 404
    assert status_of(cw, appointment_of(cw, "other_site")) == "booked"


# --- identity check ---------------------------------------------------------------------------


def test_the_identity_check_form(client: TestClient, cw: CallerWorld) -> None:
    csrf = as_(client, cw, "receptionist")
    appointment = str(appointment_of(cw, "today"))
    refused = client.post(
        "/accueil/planning/identite",
        data=form(cw, csrf, appointment_id=appointment, document_kind="permis_conduire"),
        headers=FORM,
    )
    assert refused.status_code == 422
    assert "ne permet pas de valider" in refused.text
    assert identity_status(cw, "today") == "PROV"
    with cw.world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(IdentityCheck)) == 0
    answer = client.post(
        "/accueil/planning/identite",
        data=form(cw, csrf, appointment_id=appointment, document_kind="passeport"),
        headers=FORM,
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert identity_status(cw, "today") == "VALI"
    page = client.get(answer.headers["location"])
    assert "Validée" in page.text


def test_a_sampler_gets_the_404_page_for_the_identity_check(
    client: TestClient, cw: CallerWorld
) -> None:
    csrf = as_(client, cw, "sampler")
    answer = client.post(
        "/accueil/planning/identite",
        data=form(cw, csrf, appointment_id=str(appointment_of(cw, "today")), document_kind="cni"),
        headers=FORM,
    )
    assert answer.status_code == 404
    assert identity_status(cw, "today") == "PROV"


def count_patients(cw: CallerWorld) -> int:
    with cw.world.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Patient)) or 0)


def _error_block(page: str) -> str:
    """The page's error summary (what the receptionist reads)."""
    start = page.index('role="alert"')
    return page[start : page.index("</div>", start)]


# --- walk-ins ---------------------------------------------------------------------------------


def test_a_walk_in_from_the_form(client: TestClient, cw: CallerWorld) -> None:
    csrf = as_(client, cw, "receptionist")
    assert client.get("/accueil/sans-rendez-vous").status_code == 200
    person = cw.world.inputs["no_appointment"]
    traits = {
        "birth_name": person.birth_name,
        "first_name": person.first_given_name,
        "birth_date": person.birth_date.isoformat(),
    }
    missing = client.post(
        "/accueil/sans-rendez-vous",
        data=form(cw, csrf, **{**traits, "birth_name": SCRIPT}),
        headers=FORM,
    )
    assert missing.status_code == 422
    assert SCRIPT not in missing.text
    unknown = client.post(
        "/accueil/sans-rendez-vous",
        data=form(cw, csrf, **{**traits, "birth_name": "Inconnu"}),
        headers=FORM,
    )
    assert unknown.status_code == 422
    assert "pas pu être enregistré" in unknown.text
    assert "Créer le dossier" in unknown.text
    # Creating a record for a person who has one: the very same page, nothing written.
    patients = count_patients(cw)
    existing = client.post(
        "/accueil/sans-rendez-vous",
        data=form(cw, csrf, **traits, sex=person.sex.value, create="oui"),
        headers=FORM,
    )
    assert existing.status_code == 422
    assert _error_block(existing.text) == _error_block(unknown.text)
    assert count_patients(cw) == patients
    answer = client.post("/accueil/sans-rendez-vous", data=form(cw, csrf, **traits), headers=FORM)
    assert answer.status_code == 200, answer.text
    assert "Passage sans rendez-vous enregistré" in answer.text
    assert person.birth_name in answer.text
    as_(client, cw, "sampler")
    assert client.get("/accueil/sans-rendez-vous").status_code == 404


# --- rounds -----------------------------------------------------------------------------------


def test_the_round_page_opens_the_address_and_assigns_a_sampler(
    client: TestClient, cw: CallerWorld
) -> None:
    visit = uuid.uuid4()
    patient = cw.world.patients["today"]
    start = _within_today(utcnow() + dt.timedelta(minutes=5), utcnow())
    address = {"line": "7 rue <i>Haute</i>", "postal_code": "69001", "city": "Lyon"}
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(session, cw.runtime.key_provider, cw.world.tenant, SYSTEM)
        sealed = PatientRepository(session, keyring).seal_for(
            patient,
            "appointment",
            Interaction.CREATE,
            SealedItem(
                patient, "appointments", visit, {"home_address": json.dumps(address).encode()}
            ),
            purpose="test",
        )
        assert sealed is not None
        session.add(
            Appointment(
                id=visit,
                tenant_id=cw.world.tenant,
                patient_id=patient,
                site_id=cw.world.sites["main"],
                starts_at=start,
                kind=AppointmentKind.HOME.value,
                home_address=sealed["home_address"],
            )
        )
    csrf = as_(client, cw, "receptionist")
    page = client.get("/accueil/tournees")
    assert page.status_code == 200
    assert "7 rue &lt;i&gt;Haute&lt;/i&gt;, 69001 Lyon" in page.text
    assert "Non affecté" in page.text
    answer = client.post(
        "/accueil/tournees/affectation",
        data=form(
            cw, csrf, appointment_id=str(visit), sampler_staff_id=str(cw.world.staff["sampler"])
        ),
        headers=FORM,
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    with cw.world.sessions() as session:
        found = session.get(Appointment, visit)
        assert found is not None
        assert found.sampler_staff_id == cw.world.staff["sampler"]
    as_(client, cw, "sampler")
    page = client.get("/accueil/tournees")
    assert "69001 Lyon" in page.text
