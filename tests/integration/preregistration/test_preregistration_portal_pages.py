"""The portal pages of pre-registration and documents over HTTP: the form prefilled from the
record, saved, shown again with French errors and nothing written, markup escaped, the
upload through the page with its consent, the documents list and deletion; staff and other
patients get the one "page introuvable"."""

from __future__ import annotations

import datetime as dt
import io
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image
from sqlalchemy import func, select, update

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
from labvault.appointments.models import Appointment, PatientDocument, Preregistration
from labvault.core.config import Settings
from labvault.core.runtime import Runtime
from labvault.patients.models import Patient
from labvault.patients.services import PatientRepository

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(
        alpha_settings(settings).model_copy(update={"prescription_max_bytes": 32 * 1024})
    )
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    return build_caller_world(alpha)


@pytest.fixture
def client(alpha: Runtime, cw: CallerWorld) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as test_client:
        yield test_client


def as_(client: TestClient, cw: CallerWorld, name: str) -> None:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")


def appointment_of(cw: CallerWorld, record: str) -> uuid.UUID:
    with cw.world.sessions() as session:
        found = session.scalar(
            select(Appointment.id).where(Appointment.patient_id == cw.world.patients[record])
        )
    assert found is not None
    return found


def count(cw: CallerWorld, model: type[Any]) -> int:
    with cw.world.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def form_url(appointment_id: uuid.UUID) -> str:
    return f"/compte/rendez-vous/{appointment_id}/pre-enregistrement"


def csrf_of(page: Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


def fields(cw: CallerWorld, **changes: str) -> dict[str, str]:
    person = cw.world.inputs["today"]
    values = {
        "birth_name": person.birth_name,
        "first_names": person.first_names,
        "birth_date": person.birth_date.isoformat(),
        "sex": person.sex.value,
        "nir": "",
        "insurance_name": "Mutuelle des Lilas",
        "insurance_member_number": "MB-4410",
        "third_party_payment": "oui",
    }
    values.update(changes)
    return values


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "white").save(out, "PNG")
    return out.getvalue()


def test_the_form_is_prefilled_saved_and_shows_markup_escaped(
    client: TestClient, cw: CallerWorld
) -> None:
    as_(client, cw, PATIENT_OWN)
    url = form_url(appointment_of(cw, "today"))
    page = client.get(url)
    assert page.status_code == 200, page.text
    person = cw.world.inputs["today"]
    assert f'value="{person.birth_name}"' in page.text
    assert person.nir is not None
    assert person.nir.compact not in page.text  # shown masked only
    assert "Déjà indiqué" in page.text
    saved = client.post(
        url,
        data={
            **fields(cw, used_name="<script>alert()</script>Durand"),
            "csrf_token": csrf_of(page),
        },
        follow_redirects=False,
    )
    assert saved.status_code == 303, saved.text
    assert count(cw, Preregistration) == 1
    again = client.get(saved.headers["location"])
    assert "pré-enregistrement est enregistré" in again.text
    assert "<script>alert()</script>" not in again.text
    assert "&lt;script&gt;alert()&lt;/script&gt;Durand" in again.text


def test_errors_are_shown_in_french_and_nothing_is_written(
    client: TestClient, cw: CallerWorld
) -> None:
    as_(client, cw, PATIENT_OWN)
    url = form_url(appointment_of(cw, "today"))
    token = csrf_of(client.get(url))
    refused = client.post(
        url,
        data={**fields(cw, birth_date="0", nir="1 84 05 75 056 123 00"), "csrf_token": token},
    )
    assert refused.status_code == 422
    assert "AAAA-MM-JJ" in refused.text
    assert "La clé" in refused.text
    assert 'aria-invalid="true"' in refused.text
    assert count(cw, Preregistration) == 0
    no_token = client.post(url, data=fields(cw), follow_redirects=False)
    assert no_token.status_code == 403
    assert count(cw, Preregistration) == 0


def test_an_upload_through_the_page_needs_consent_then_is_listed_and_deleted(
    client: TestClient, cw: CallerWorld
) -> None:
    as_(client, cw, PATIENT_OWN)
    appointment_id = appointment_of(cw, "today")
    page = client.get(form_url(appointment_id))
    token = csrf_of(page)
    upload_url = f"/compte/rendez-vous/{appointment_id}/ordonnance"
    files = {"file": ("photo.jpg", png(), "image/jpeg")}
    refused = client.post(upload_url, files=files, data={"csrf_token": token})
    assert refused.status_code == 422
    assert "accord" in refused.text
    assert count(cw, PatientDocument) == 0
    too_big = client.post(
        upload_url,
        files={"file": ("o.pdf", b"%PDF-1.7\n" + bytes(40 * 1024), "application/pdf")},
        data={"csrf_token": token, "consent": "oui"},
    )
    assert too_big.status_code == 413
    assert "trop lourd" in too_big.text
    stored = client.post(
        upload_url,
        files=files,
        data={"csrf_token": token, "consent": "oui"},
        follow_redirects=False,
    )
    assert stored.status_code == 303, stored.text
    assert count(cw, PatientDocument) == 1
    listing = client.get("/compte/documents")
    assert listing.status_code == 200
    assert "Image PNG" in listing.text
    document_id = re.search(r'name="document_id" value="([^"]+)"', listing.text)
    assert document_id is not None
    deleted = client.post(
        "/compte/documents/suppression",
        data={"document_id": document_id.group(1), "csrf_token": csrf_of(listing)},
        follow_redirects=False,
    )
    assert deleted.status_code == 303
    assert count(cw, PatientDocument) == 0


@pytest.mark.parametrize("name", ["receptionist", "sampler", PATIENT_OTHER])
def test_staff_and_other_patients_get_the_one_404_page(
    client: TestClient, cw: CallerWorld, name: str
) -> None:
    as_(client, cw, name)
    url = form_url(appointment_of(cw, "today"))
    assert client.get(url).status_code == 404
    expected = 200 if name == PATIENT_OTHER else 404
    assert client.get("/compte/documents").status_code == expected


def test_the_upload_page_reads_no_body_before_knowing_the_session_and_the_appointment(
    client: TestClient, cw: CallerWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to 10 MB per request are read only for a signed-in patient on an appointment of
    theirs: anonymous and foreign requests are answered first (as by the API route)."""
    from labvault.preregistration import pages

    reads: list[int] = []
    original = pages.read_upload

    async def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(pages, "read_upload", counting)
    own = appointment_of(cw, "today")
    foreign = appointment_of(cw, "tomorrow")
    body = {"file": ("o.pdf", b"%PDF-1.7\n" + bytes(40 * 1024), "application/pdf")}

    client.cookies.clear()
    anonymous = client.post(
        f"/compte/rendez-vous/{own}/ordonnance", files=body, follow_redirects=False
    )
    assert anonymous.status_code in (302, 303), anonymous.status_code
    assert "/compte/connexion" in anonymous.headers["location"]
    as_(client, cw, PATIENT_OWN)
    for target in (foreign, uuid.uuid4()):
        answer = client.post(f"/compte/rendez-vous/{target}/ordonnance", files=body)
        assert answer.status_code == 404
        assert "Page introuvable" in answer.text
    as_(client, cw, "receptionist")
    assert client.post(f"/compte/rendez-vous/{own}/ordonnance", files=body).status_code == 404
    assert reads == []
    assert count(cw, PatientDocument) == 0

    as_(client, cw, PATIENT_OWN)
    too_big = client.post(f"/compte/rendez-vous/{own}/ordonnance", files=body)
    assert too_big.status_code == 413
    assert reads == [1]


def test_the_form_shows_a_declared_nir_the_same_whether_the_record_took_it_or_not(
    client: TestClient, cw: CallerWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NIR is known once declared: on the record (when free) or in the declaration
    (when another record carries it). The form of another visit shows it the same way."""
    person = cw.world.inputs["today"]
    assert person.nir is not None
    as_(client, cw, PATIENT_OWN)
    first = appointment_of(cw, "today")
    page = client.get(form_url(first))
    assert "Déjà indiqué" in page.text  # the record's NIR
    with cw.world.sessions() as session, session.begin():
        session.execute(
            update(Patient)
            .where(Patient.id == cw.world.patients["today"])
            .values(nir_index=None, ins_number=None)
        )
    # As when another record carries the NIR: the record has none, the declaration has it.
    monkeypatch.setattr(PatientRepository, "_nir_taken", lambda self, index: True)
    saved = client.post(
        form_url(first),
        data={**fields(cw, nir=person.nir.formatted()), "csrf_token": csrf_of(page)},
        follow_redirects=False,
    )
    assert saved.status_code == 303, saved.text
    with cw.world.sessions() as session:
        assert (
            session.scalar(
                select(Patient.nir_index).where(Patient.id == cw.world.patients["today"])
            )
            is None
        )
        second = Appointment(
            tenant_id=cw.world.tenant,
            patient_id=cw.world.patients["today"],
            site_id=session.scalar(select(Appointment.site_id).where(Appointment.id == first)),
            starts_at=session.scalar(select(Appointment.starts_at).where(Appointment.id == first))
            + dt.timedelta(days=7),
            status="booked",
        )
        session.add(second)
        session.commit()
        second_id = second.id
    other_form = client.get(form_url(second_id))
    assert other_form.status_code == 200
    masked = re.search(r"Déjà indiqué[^<]*", other_form.text)
    assert masked is not None, "the declared NIR is known, as the record's would be"
    assert person.nir.compact not in other_form.text
