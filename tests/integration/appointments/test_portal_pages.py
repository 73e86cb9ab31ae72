"""The patient portal's appointment pages over HTTP (``labvault.appointments.pages``): the
list with preparation instructions, booking in three steps (slots, hold, confirm), the slot
taken meanwhile, reschedule and cancel with the change deadline, home visits, and what is
refused: another patient's appointment and staff (one 404), a missing CSRF token, hostile
input (markup, "0", slots in the past), each time with nothing written."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from booking_world import BookingWorld, build_booking_world
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from caller_world import (
    ORIGIN,
    PATIENT_OTHER,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from labvault.app import create_app
from labvault.appointments.models import Appointment, AppointmentStatus, SlotClaim
from labvault.appointments.services import BookingService
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.events import audited_transaction
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.patients.schemas import PatientInput
from labvault.patients.scope import patient_scope
from labvault.patients.services import PatientRepository

LIST = "/compte/rendez-vous"
SLOT_VALUE = re.compile(r'name="starts_at" value="([^"]+)"')


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    return build_caller_world(alpha)


@pytest.fixture
def bw(alpha: Runtime, cw: CallerWorld) -> BookingWorld:
    return build_booking_world(alpha, cw.world)


@pytest.fixture
def client(alpha: Runtime, cw: CallerWorld, bw: BookingWorld) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as test_client:
        yield test_client


def as_(client: TestClient, cw: CallerWorld, name: str) -> str:
    """Make ``name`` the client's caller; its forms' CSRF token."""
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    cw.current = name
    return cw.sessions[name].csrf


def post(client: TestClient, url: str, data: dict[str, Any]) -> Response:
    """A form POST as a browser sends it from one of our pages."""
    return client.post(
        url, data=data, headers={"Sec-Fetch-Site": "same-origin"}, follow_redirects=False
    )


def own(cw: CallerWorld) -> uuid.UUID:
    return cw.world.patients["today"]


def counts(bw: BookingWorld) -> tuple[int, int]:
    with bw.world.sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(Appointment)) or 0,
            session.scalar(select(func.count()).select_from(SlotClaim)) or 0,
        )


def status_of(bw: BookingWorld, appointment_id: uuid.UUID) -> str:
    with bw.world.sessions() as session:
        row = session.get(Appointment, appointment_id)
        assert row is not None
        return row.status


def book(
    bw: BookingWorld, patient_id: uuid.UUID, exams: list[str], *, confirm: bool = True
) -> uuid.UUID:
    """A booking made through the service, as the patient's own account would."""
    principal = Principal(PrincipalKind.PATIENT, str(uuid.uuid4()))
    with audited_transaction(bw.world.sessions) as session:
        keyring = TenantKeyring(session, bw.runtime.key_provider, bw.world.tenant, principal)
        scope = patient_scope(principal, bw.world.tenant, frozenset({patient_id}))
        service = BookingService(session, keyring, scope, bw.runtime.settings)
        exam_ids = [bw.exams[name] for name in exams]
        tomorrow = (utcnow() + dt.timedelta(days=1)).date()
        slots = service.search_slots(bw.main, exam_ids, tomorrow, tomorrow)
        slot = next(s for s in slots if s.starts_at.hour >= 9)
        held = service.hold(patient_id, bw.main, exam_ids, slot.starts_at)
        if confirm:
            service.confirm(held.id)
        return held.id


def appointment_soon(bw: BookingWorld, patient_id: uuid.UUID, minutes: int) -> uuid.UUID:
    """A booked appointment ``minutes`` from now (inside the change deadline)."""
    starts = utcnow().replace(microsecond=0) + dt.timedelta(minutes=minutes)
    with transaction(bw.world.sessions) as session:
        row = Appointment(
            id=uuid.uuid4(),
            tenant_id=bw.world.tenant,
            patient_id=patient_id,
            site_id=bw.main,
            starts_at=starts,
            ends_at=starts + dt.timedelta(minutes=15),
            status=AppointmentStatus.BOOKED.value,
        )
        session.add(row)
        return row.id


def add_child(cw: CallerWorld, first_names: str) -> uuid.UUID:
    """A minor's record, linked as a dependent of the ``PATIENT_OWN`` account."""
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(
            session, cw.runtime.key_provider, cw.world.tenant, SystemPrincipal("test:portal")
        )
        child = PatientRepository(session, keyring).register_many(
            [
                PatientInput.model_validate(
                    {
                        "birth_name": "Martin",
                        "first_names": first_names,
                        "birth_date": "2018-03-04",
                        "sex": "F",
                    }
                )
            ]
        )
        child_id = child.created[0]
    cw.add_dependent(PATIENT_OWN, child_id)
    return child_id


# --- the list ---------------------------------------------------------------------------------


def test_the_list_shows_own_and_dependents_appointments_with_preparation(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    child = add_child(cw, "<b>Léa</b> Zoé")
    mine = book(bw, own(cw), ["glucose"])
    theirs = book(bw, child, ["blood"])
    as_(client, cw, PATIENT_OWN)
    page = client.get(LIST)
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert str(mine) in html
    assert str(theirs) in html
    assert "Glycémie à jeun" in html
    assert "À jeun depuis 12 heures" in html, "preparation instructions are in the account"
    # The dependent's first name, with its markup rendered as text.
    assert "&lt;b&gt;Léa&lt;/b&gt;" in html
    assert "<b>Léa</b>" not in html
    assert f"{mine}/pre-enregistrement" in html
    assert f"{mine}/annuler" in html
    assert f"{mine}/deplacer" in html

    as_(client, cw, PATIENT_OTHER)
    other = client.get(LIST)
    assert other.status_code == 200
    assert str(mine) not in other.text
    assert str(theirs) not in other.text
    assert "Glycémie" not in other.text


def test_staff_get_the_404_page(client: TestClient, cw: CallerWorld, bw: BookingWorld) -> None:
    mine = book(bw, own(cw), ["blood"])
    as_(client, cw, "receptionist")
    for url in (LIST, f"{LIST}/nouveau", f"{LIST}/domicile", f"{LIST}/{mine}/annuler"):
        answer = client.get(url)
        assert answer.status_code == 404, url
        assert "Page introuvable" in answer.text


# --- booking ----------------------------------------------------------------------------------


def test_a_patient_books_in_three_steps(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    csrf = as_(client, cw, PATIENT_OWN)
    first = client.get(f"{LIST}/nouveau")
    assert first.status_code == 200
    assert str(bw.exams["glucose"]) in first.text
    assert str(bw.exams["retired"]) not in first.text, "inactive exams are not offered"
    choice = {
        "patient_id": str(own(cw)),
        "site_id": str(bw.main),
        "exams": [str(bw.exams["glucose"]), str(bw.exams["blood"])],
        "week": "0",
        "csrf_token": csrf,
    }
    slots_page = post(client, f"{LIST}/nouveau", choice)
    assert slots_page.status_code == 200, slots_page.text
    offered = SLOT_VALUE.findall(slots_page.text)
    assert offered, "this week has free slots"
    before = counts(bw)

    held = post(client, f"{LIST}/nouveau/creneau", {**choice, "starts_at": offered[0]})
    assert held.status_code == 303, held.text
    location = held.headers["location"]
    match = re.fullmatch(rf"{LIST}/([0-9a-f-]{{36}})/confirmation", location)
    assert match is not None, location
    appointment_id = uuid.UUID(match.group(1))
    assert status_of(bw, appointment_id) == "held"
    assert counts(bw) == (before[0] + 1, before[1] + 1)

    step_three = client.get(location)
    assert step_three.status_code == 200
    assert "Ce créneau vous est réservé jusqu'à" in step_three.text
    assert re.search(r"réservé jusqu'à [0-2][0-9]:[0-5][0-9]", step_three.text)

    confirmed = post(client, location, {"csrf_token": csrf})
    assert confirmed.status_code == 303
    assert confirmed.headers["location"] == (
        f"{LIST}?info=rendez-vous-confirme&rdv={appointment_id}"
    )
    assert status_of(bw, appointment_id) == "booked"
    listed = client.get(confirmed.headers["location"])
    assert "Votre rendez-vous est confirmé" in listed.text
    assert f"{appointment_id}/pre-enregistrement" in listed.text
    assert "Confirmé" in listed.text


def test_a_slot_taken_meanwhile_shows_the_slots_again(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    csrf = as_(client, cw, PATIENT_OWN)
    choice = {
        "patient_id": str(own(cw)),
        "site_id": str(bw.main),
        "exams": [str(bw.exams["blood"])],
        "csrf_token": csrf,
    }
    offered = SLOT_VALUE.findall(post(client, f"{LIST}/nouveau", choice).text)
    # Somebody else takes the first offered slot (capacity 1 at the main site).
    taken = dt.datetime.fromisoformat(offered[0])
    principal = Principal(PrincipalKind.PATIENT, str(uuid.uuid4()))
    other = cw.world.patients["no_appointment"]
    with audited_transaction(bw.world.sessions) as session:
        keyring = TenantKeyring(session, bw.runtime.key_provider, bw.world.tenant, principal)
        scope = patient_scope(principal, bw.world.tenant, frozenset({other}))
        BookingService(session, keyring, scope, bw.runtime.settings).hold(
            other, bw.main, [bw.exams["blood"]], taken
        )
    before = counts(bw)
    answer = post(client, f"{LIST}/nouveau/creneau", {**choice, "starts_at": offered[0]})
    assert answer.status_code == 409
    assert "Ce créneau vient d&#39;être pris. Choisissez-en un autre." in answer.text
    again = SLOT_VALUE.findall(answer.text)
    assert again, "the slot list again"
    assert offered[0] not in again, "without the taken slot"
    assert counts(bw) == before, "nothing written"


def test_exams_without_appointment_show_the_site_hours(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    csrf = as_(client, cw, PATIENT_OWN)
    answer = post(
        client,
        f"{LIST}/nouveau",
        {
            "patient_id": str(own(cw)),
            "site_id": str(bw.main),
            "exams": [str(bw.exams["urine"])],
            "csrf_token": csrf,
        },
    )
    assert answer.status_code == 200
    assert "Ces examens se font sans rendez-vous" in answer.text
    assert "lundi : 07:00 à 12:00, 14:00 à 18:00" in answer.text
    assert 'name="starts_at"' not in answer.text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"patient_id": "0"}, "Choisissez pour qui est le rendez-vous."),
        ({"site_id": "0"}, "Choisissez un laboratoire de la liste."),
        ({"exams": ["0"]}, "Un des examens choisis n&#39;est pas au catalogue."),
        ({"exams": []}, "Choisissez au moins un examen."),
        ({"week": "0x"}, "Semaine de recherche invalide."),
        ({"week": "99"}, "Semaine de recherche invalide."),
        ({"starts_at": "0"}, "Choisissez un créneau de la liste."),
        ({"starts_at": 0}, "Choisissez un créneau de la liste."),
        ({"starts_at": "2020-01-06T08:00:00+00:00"}, "Ce créneau est déjà passé."),
        ({"starts_at": "2099-01-05T08:00:00"}, "Choisissez un créneau de la liste."),
        ({"starts_at": "0001-01-01T00:30:00+01:00"}, "Choisissez un créneau de la liste."),
        ({"starts_at": "9999-12-31T23:30:00-01:00"}, "Choisissez un créneau de la liste."),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    client: TestClient, cw: CallerWorld, bw: BookingWorld, changes: dict[str, Any], message: str
) -> None:
    csrf = as_(client, cw, PATIENT_OWN)
    form: dict[str, Any] = {
        "patient_id": str(own(cw)),
        "site_id": str(bw.main),
        "exams": [str(bw.exams["blood"])],
        "week": "0",
        "starts_at": "",
        "csrf_token": csrf,
        **changes,
    }
    before = counts(bw)
    answer = post(client, f"{LIST}/nouveau/creneau", form)
    assert answer.status_code == 422, answer.text
    assert message in answer.text
    assert counts(bw) == before


def test_another_patients_appointment_is_the_same_404_as_an_unknown_one(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    mine = book(bw, own(cw), ["blood"])
    held = book(bw, own(cw), ["glucose"], confirm=False)
    csrf = as_(client, cw, PATIENT_OTHER)
    reference = client.get(f"{LIST}/{uuid.uuid4()}/annuler")
    assert reference.status_code == 404
    for target in (mine, held):
        for suffix in ("annuler", "deplacer", "confirmation"):
            answer = client.get(f"{LIST}/{target}/{suffix}")
            assert answer.status_code == 404, suffix
            assert answer.text == reference.text
            refused = post(client, f"{LIST}/{target}/{suffix}", {"csrf_token": csrf})
            assert refused.status_code == 404, suffix
    assert status_of(bw, mine) == "booked"
    assert status_of(bw, held) == "held"


def test_a_form_without_its_csrf_token_is_refused(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    mine = book(bw, own(cw), ["blood"])
    csrf = as_(client, cw, PATIENT_OWN)
    before = counts(bw)
    for token in ("", "x" * 40, cw.sessions[PATIENT_OTHER].csrf):
        answer = post(client, f"{LIST}/{mine}/annuler", {"csrf_token": token})
        assert answer.status_code == 403
        assert "Formulaire expiré" in answer.text
    choice = {
        "patient_id": str(own(cw)),
        "site_id": str(bw.main),
        "exams": [str(bw.exams["blood"])],
    }
    offered = SLOT_VALUE.findall(
        post(client, f"{LIST}/nouveau", {**choice, "csrf_token": csrf}).text
    )
    assert (
        post(client, f"{LIST}/nouveau/creneau", {**choice, "starts_at": offered[0]}).status_code
        == 403
    )
    # A POST from another site is refused before anything else.
    cross = client.post(
        f"{LIST}/{mine}/annuler",
        data={"csrf_token": csrf},
        headers={"Sec-Fetch-Site": "cross-site"},
        follow_redirects=False,
    )
    assert cross.status_code == 403
    assert status_of(bw, mine) == "booked"
    assert counts(bw) == before


# --- reschedule and cancel --------------------------------------------------------------------


def test_cancel_and_reschedule_through_the_pages(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    moved = book(bw, own(cw), ["blood"])
    cancelled = book(bw, own(cw), ["glucose"])
    csrf = as_(client, cw, PATIENT_OWN)

    form = client.get(f"{LIST}/{moved}/deplacer?semaine=1")
    assert form.status_code == 200
    offered = SLOT_VALUE.findall(form.text)
    assert offered
    assert client.get(f"{LIST}/{moved}/deplacer?semaine=0x").status_code == 422
    answer = post(client, f"{LIST}/{moved}/deplacer", {"starts_at": offered[0], "csrf_token": csrf})
    assert answer.status_code == 303
    assert answer.headers["location"] == f"{LIST}?info=rendez-vous-deplace"
    with bw.world.sessions() as session:
        row = session.get(Appointment, moved)
        assert row is not None
        starts = (
            row.starts_at.replace(tzinfo=dt.UTC) if row.starts_at.tzinfo is None else row.starts_at
        )
        assert starts == dt.datetime.fromisoformat(offered[0])

    page = client.get(f"{LIST}/{cancelled}/annuler")
    assert page.status_code == 200
    assert "Annuler ce rendez-vous" in page.text
    done = post(client, f"{LIST}/{cancelled}/annuler", {"csrf_token": csrf})
    assert done.status_code == 303
    assert status_of(bw, cancelled) == "cancelled"
    with bw.world.sessions() as session:
        claims = session.scalars(select(SlotClaim).where(SlotClaim.appointment_id == cancelled))
        assert list(claims) == [], "the boxes are free again"
    listed = client.get(done.headers["location"])
    assert "Votre rendez-vous est annulé" in listed.text
    assert f"{cancelled}/annuler" not in listed.text


def test_after_the_deadline_there_is_no_cancel_nor_reschedule(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    soon = appointment_soon(bw, own(cw), minutes=60)
    csrf = as_(client, cw, PATIENT_OWN)
    listed = client.get(LIST)
    assert str(soon) in listed.text
    assert f"{soon}/annuler" not in listed.text
    assert f"{soon}/deplacer" not in listed.text
    page = client.get(f"{LIST}/{soon}/annuler")
    assert page.status_code == 200
    assert "ne peut plus être annulé en ligne" in page.text
    assert "Annuler ce rendez-vous" not in page.text
    answer = post(client, f"{LIST}/{soon}/annuler", {"csrf_token": csrf})
    assert answer.status_code == 409
    assert "ne peut plus être modifié en ligne moins de 2 heures avant" in answer.text
    assert status_of(bw, soon) == "booked"
    moved = client.get(f"{LIST}/{soon}/deplacer")
    assert 'name="starts_at"' not in moved.text
    refused = post(
        client,
        f"{LIST}/{soon}/deplacer",
        {"starts_at": (utcnow() + dt.timedelta(days=2)).isoformat(), "csrf_token": csrf},
    )
    assert refused.status_code in (409, 422)
    assert status_of(bw, soon) == "booked"


# --- home visits ------------------------------------------------------------------------------


def test_a_home_visit_request_and_its_hostile_input(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    csrf = as_(client, cw, PATIENT_OWN)
    page = client.get(f"{LIST}/domicile")
    assert page.status_code == 200
    assert str(bw.exams["blood"]) in page.text
    assert str(bw.exams["cortisol"]) not in page.text, "only exams sampled at home"
    day = (utcnow() + dt.timedelta(days=3)).date().isoformat()
    form = {
        "patient_id": str(own(cw)),
        "site_id": str(bw.main),
        "exams": [str(bw.exams["blood"])],
        "day": day,
        "window": "morning",
        "line": "12 rue des Lilas",
        "postal_code": "75011",
        "city": "Paris",
        "instructions": "Code 1234",
        "csrf_token": csrf,
    }
    before = counts(bw)
    hostile = [
        (
            {"line": "<script>alert('x')</script>", "postal_code": "7501"},
            "Code postal : 5 chiffres attendus.",
        ),
        ({"day": "0"}, "Indiquez la date de la visite au format AAAA-MM-JJ."),
        ({"day": 0}, "Indiquez la date de la visite au format AAAA-MM-JJ."),
        ({"day": "2020-01-01"}, "au plus tard la veille"),
        ({"day": "9999-12-31"}, "Indiquez la date de la visite au format AAAA-MM-JJ."),
        ({"day": "0001-01-01"}, "Indiquez la date de la visite au format AAAA-MM-JJ."),
        ({"window": "night"}, "Choisissez le matin ou l&#39;après-midi."),
        ({"exams": [str(bw.exams["cortisol"])]}, "ne peut pas être prélevé à domicile"),
        ({"city": ""}, "Ville : obligatoire."),
    ]
    for changes, message in hostile:
        answer = post(client, f"{LIST}/domicile", {**form, **changes})
        assert answer.status_code == 422, (changes, answer.text[:500])
        assert message in answer.text, changes
        assert "<script>alert" not in answer.text
    echoed = post(client, f"{LIST}/domicile", {**form, **hostile[0][0]})
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in echoed.text
    assert counts(bw) == before, "nothing written"

    done = post(client, f"{LIST}/domicile", form)
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"{LIST}?info=domicile-demande"
    with bw.world.sessions() as session:
        row = session.scalars(select(Appointment).where(Appointment.kind == "home")).one()
        assert row.patient_id == own(cw)
        assert row.home_address is not None
        assert b"Lilas" not in row.home_address
    listed = client.get(done.headers["location"])
    assert "(à domicile)" in listed.text


def test_step_one_again_keeps_the_choices(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    csrf = as_(client, cw, PATIENT_OWN)
    choice = {
        "patient_id": str(own(cw)),
        "site_id": str(bw.annex),
        "exams": [str(bw.exams["glucose"])],
        "csrf_token": csrf,
    }
    answer = post(client, f"{LIST}/nouveau", {**choice, "back": "1"})
    assert answer.status_code == 200
    assert 'name="starts_at"' not in answer.text
    assert re.search(rf'value="{bw.annex}" selected', answer.text)
    assert re.search(rf'value="{bw.exams["glucose"]}" autocomplete="off" checked', answer.text)


def test_an_expired_hold_taken_meanwhile_cannot_be_confirmed(
    client: TestClient, cw: CallerWorld, bw: BookingWorld
) -> None:
    held = book(bw, own(cw), ["blood"], confirm=False)
    csrf = as_(client, cw, PATIENT_OWN)
    listed = client.get(LIST)
    assert "En attente de votre confirmation" in listed.text
    assert f"{held}/confirmation" in listed.text
    # The hold expires, and another patient takes its box (capacity 1 at the main site).
    past = utcnow() - dt.timedelta(minutes=1)
    with transaction(bw.world.sessions) as session:
        row = session.get(Appointment, held)
        assert row is not None
        row.hold_expires_at = past
        for claim in session.scalars(select(SlotClaim).where(SlotClaim.appointment_id == held)):
            claim.expires_at = past
        starts = row.starts_at if row.starts_at.tzinfo else row.starts_at.replace(tzinfo=dt.UTC)
    page = client.get(f"{LIST}/{held}/confirmation")
    assert page.status_code == 200
    assert "Le délai de réservation est dépassé" in page.text
    other = cw.world.patients["no_appointment"]
    principal = Principal(PrincipalKind.PATIENT, str(uuid.uuid4()))
    with audited_transaction(bw.world.sessions) as session:
        keyring = TenantKeyring(session, bw.runtime.key_provider, bw.world.tenant, principal)
        scope = patient_scope(principal, bw.world.tenant, frozenset({other}))
        BookingService(session, keyring, scope, bw.runtime.settings).hold(
            other, bw.main, [bw.exams["blood"]], starts
        )
    answer = post(client, f"{LIST}/{held}/confirmation", {"csrf_token": csrf})
    assert answer.status_code == 409
    assert "le créneau a été pris entre-temps" in answer.text
    assert status_of(bw, held) == "held"
