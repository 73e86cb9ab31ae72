"""Pre-registration and prescription uploads over the API, on SQLite and PostgreSQL: the
patient declares and uploads, the lab's desk reads in scope, everyone else gets the one 404;
hostile input gets a clear French error with nothing written; what is stored is ciphertext."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image
from sqlalchemy import delete, func, select, update

from caller_world import (
    ORIGIN,
    PATIENT_OTHER,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from helpers import leaked, pg_dump, sqlite_files
from labvault.app import create_app
from labvault.appointments.models import (
    Appointment,
    AppointmentStatus,
    PatientDocument,
    Preregistration,
)
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.patients.ins import Sex
from labvault.patients.models import Patient
from labvault.patients.nir import NirProblem, synthetic_nir
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository
from labvault.preregistration.schemas import NIR_REASONS

MAX_BYTES = 64 * 1024
INSURANCE_NUMBER = "ZQX-98765-LV"
PDF_MARKER = "ORDONNANCE-MARQUEUR-7Q4K"


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(
        alpha_settings(settings).model_copy(update={"prescription_max_bytes": MAX_BYTES})
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


def as_(client: TestClient, cw: CallerWorld, name: str) -> dict[str, str]:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    cw.current = name
    return {"X-CSRF-Token": cw.sessions[name].csrf}


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


def events(runtime: Runtime, action: AuditAction) -> list[AuditEvent]:
    with runtime.audit_sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def declaration(cw: CallerWorld, record: str = "today", **changes: Any) -> dict[str, Any]:
    person = cw.world.inputs[record]
    body: dict[str, Any] = {
        "birth_name": person.birth_name,
        "first_names": person.first_names,
        "birth_date": person.birth_date.isoformat(),
        "sex": person.sex.value,
        "nir": person.nir.formatted() if person.nir else None,
        "insurance_name": "Mutuelle des Lilas",
        "insurance_member_number": INSURANCE_NUMBER,
        "third_party_payment": True,
    }
    body.update(changes)
    return body


def pdf(marker: str = PDF_MARKER) -> bytes:
    """A real one-page PDF whose text (uncompressed, so a leak would show) is ``marker``."""
    stream = f"BT /F1 12 Tf 72 720 Td ({marker}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "white").save(out, "PNG")
    return out.getvalue()


def upload(
    client: TestClient,
    headers: dict[str, str],
    appointment_id: uuid.UUID,
    content: bytes,
    *,
    consent: str | None = "true",
    name: str = "ordonnance.pdf",
    content_type: str = "application/pdf",
) -> Response:
    data = {"consent": consent} if consent is not None else {}
    return client.post(
        f"/api/v1/appointments/{appointment_id}/documents",
        files={"file": (name, content, content_type)},
        data=data,
        headers=headers,
    )


def add_minor_without_nir(cw: CallerWorld, runtime: Runtime) -> tuple[uuid.UUID, uuid.UUID]:
    """A child of the patient account's holder: no NIR on its record, an appointment at
    the main site tomorrow. Returns (patient id, appointment id)."""
    today = utcnow().date()
    child = PatientInput(
        birth_name="Petitjean",
        first_names="Noé",
        birth_date=today.replace(year=today.year - 8, day=min(today.day, 28)),
        sex=Sex.MALE,
    )
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(
            session, runtime.key_provider, cw.world.tenant, SystemPrincipal("test:prereg")
        )
        created = PatientRepository(session, keyring).register_many([child])
        patient_id = created.created[0]
        appointment = Appointment(
            tenant_id=cw.world.tenant,
            patient_id=patient_id,
            site_id=cw.world.sites["main"],
            starts_at=utcnow() + dt.timedelta(days=1),
            ends_at=utcnow() + dt.timedelta(days=1, minutes=15),
            status=AppointmentStatus.BOOKED.value,
        )
        session.add(appointment)
        session.flush()
        appointment_id = appointment.id
    cw.add_dependent(PATIENT_OWN, patient_id)
    return patient_id, appointment_id


# --- the declaration ------------------------------------------------------------------------


def test_the_patient_declares_and_the_desk_reads_it_in_scope(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    appointment_id = appointment_of(cw, "today")
    url = f"/api/v1/appointments/{appointment_id}/preregistration"
    headers = as_(client, cw, PATIENT_OWN)
    assert client.get(url).json()["preregistration"] is None
    answer = client.put(url, json=declaration(cw), headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()["preregistration"]
    nir = cw.world.inputs["today"].nir
    assert nir is not None
    assert nir.compact not in answer.text
    assert body["nir"].count("*") == 8
    assert body["differs_from_record"] == []
    assert body["insurance_member_number"] == INSURANCE_NUMBER
    assert answer.headers["cache-control"] == "no-store"
    assert len(events(alpha, AuditAction.PATIENT_PREREGISTRATION_UPDATE)) == 1

    # Replacing it keeps one row.
    again = client.put(url, json=declaration(cw, third_party_payment=False), headers=headers)
    assert again.status_code == 200, again.text
    assert count(cw, Preregistration) == 1

    as_(client, cw, "receptionist")  # appointment:read, in scope, reads the INS fields
    read = client.get(url)
    assert read.status_code == 200, read.text
    assert read.json()["preregistration"]["third_party_payment"] is False
    # The sampler has today's appointments but reads identity only: no NIR, no insurance.
    for name in ("sampler", "biologist", "organization_admin", "security_officer", PATIENT_OTHER):
        as_(client, cw, name)
        assert client.get(url).status_code == 404, name
    # Only the patient declares: the desk may not write it.
    staff_headers = as_(client, cw, "receptionist")
    assert client.put(url, json=declaration(cw), headers=staff_headers).status_code == 404


def test_a_different_trait_is_kept_for_the_desk_and_the_record_is_unchanged(
    client: TestClient, cw: CallerWorld
) -> None:
    appointment_id = appointment_of(cw, "today")
    headers = as_(client, cw, PATIENT_OWN)
    answer = client.put(
        f"/api/v1/appointments/{appointment_id}/preregistration",
        json=declaration(cw, birth_name="Autrenom", first_names="Camille"),
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["preregistration"]["differs_from_record"] == ["birth_name", "first_names"]
    record = client.get(f"/api/v1/patients/{cw.world.patients['today']}").json()
    assert record["birth_name"] == cw.world.inputs["today"].birth_name


def test_a_nir_fills_a_record_that_has_none_and_becomes_searchable(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    child_id, appointment_id = add_minor_without_nir(cw, alpha)
    headers = as_(client, cw, PATIENT_OWN)
    url = f"/api/v1/appointments/{appointment_id}/preregistration"
    born = dt.date.fromisoformat(client.get(f"/api/v1/patients/{child_id}").json()["birth_date"])
    base = {
        "birth_name": "Petitjean",
        "first_names": "Noé",
        "birth_date": born.isoformat(),
        "sex": "M",
        "third_party_payment": True,
    }
    # Third-party payment without a NIR, on a record without one: refused, nothing written.
    refused = client.put(url, json=base, headers=headers)
    assert refused.status_code == 422
    assert "tiers payant" in refused.json()["errors"]["nir"]
    assert count(cw, Preregistration) == 0

    nir = synthetic_nir(random.Random(11), sex=1, birth_date=born)
    answer = client.put(url, json={**base, "nir": nir.formatted()}, headers=headers)
    assert answer.status_code == 200, answer.text
    record = client.get(f"/api/v1/patients/{child_id}").json()
    assert record["ins_number"] is not None
    assert record["ins_number"].endswith(nir.compact[-2:])
    staff = as_(client, cw, "receptionist")
    found = client.post("/api/v1/patients/search", json={"nir": nir.compact}, headers=staff)
    assert [item["id"] for item in found.json()["items"]] == [str(child_id)]


def test_a_checked_identity_is_never_completed_from_a_declaration(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    """PROV: an empty used name and birth place are filled. VALI: nothing is."""
    child_id, appointment_id = add_minor_without_nir(cw, alpha)
    headers = as_(client, cw, PATIENT_OWN)
    url = f"/api/v1/appointments/{appointment_id}/preregistration"
    born = client.get(f"/api/v1/patients/{child_id}").json()["birth_date"]
    base = {"birth_name": "Petitjean", "first_names": "Noé", "birth_date": born, "sex": "M"}
    with transaction(cw.world.sessions) as session:
        session.execute(
            update(Patient).where(Patient.id == child_id).values(identity_status="VALI")
        )
    answer = client.put(
        url, json={**base, "used_name": "Grandjean", "birth_place_code": "2B033"}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    record = client.get(f"/api/v1/patients/{child_id}").json()
    assert record["used_name"] is None
    assert record["birth_place_code"] is None
    with transaction(cw.world.sessions) as session:
        session.execute(
            update(Patient).where(Patient.id == child_id).values(identity_status="PROV")
        )
    answer = client.put(
        url, json={**base, "used_name": "Grandjean", "birth_place_code": "2B033"}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    record = client.get(f"/api/v1/patients/{child_id}").json()
    assert record["used_name"] == "Grandjean"
    assert record["birth_place_code"] == "2B033"


HOSTILE_DECLARATIONS: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (changes, field in error, part of the French reason)
    "birth date 0 (number)": ({"birth_date": 0}, "birth_date", "AAAA-MM-JJ"),
    'birth date "0"': ({"birth_date": "0"}, "birth_date", "AAAA-MM-JJ"),
    "birth date in the future": ({"birth_date": "2999-01-01"}, "birth_date", "futur"),
    "nir with a wrong key": ({"nir": "1 84 05 75 056 123 00"}, "nir", "clé"),
    "nir too short": ({"nir": "1840575"}, "nir", "trop court"),
    "name with a control character": ({"birth_name": "Dupont\x00"}, "birth_name", "contrôle"),
    "name with digits": ({"first_names": "R2D2"}, "first_names", "chiffres"),
    "sex unknown": ({"sex": "X"}, "sex", "F ou M"),
    "birth place not INSEE": ({"birth_place_code": "ABCDE"}, "birth_place_code", "5 caractères"),
    "member number with markup": (
        {"insurance_member_number": "<script>"},
        "insurance_member_number",
        "lettres",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_DECLARATIONS))
def test_hostile_declarations_get_a_french_reason_and_nothing_is_written(
    client: TestClient, cw: CallerWorld, alpha: Runtime, name: str
) -> None:
    changes, field, reason = HOSTILE_DECLARATIONS[name]
    appointment_id = appointment_of(cw, "today")
    headers = as_(client, cw, PATIENT_OWN)
    answer = client.put(
        f"/api/v1/appointments/{appointment_id}/preregistration",
        json=declaration(cw, **changes),
        headers=headers,
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert reason in answer.json()["errors"][field]
    assert count(cw, Preregistration) == 0
    assert events(alpha, AuditAction.PATIENT_PREREGISTRATION_UPDATE) == []


def test_an_invalid_nir_names_its_precise_rule(client: TestClient, cw: CallerWorld) -> None:
    nir = cw.world.inputs["today"].nir
    assert nir is not None
    wrong_key = nir.compact[:-2] + f"{(int(nir.compact[-2:]) % 97) + 1:02d}"
    headers = as_(client, cw, PATIENT_OWN)
    answer = client.put(
        f"/api/v1/appointments/{appointment_of(cw, 'today')}/preregistration",
        json=declaration(cw, nir=wrong_key),
        headers=headers,
    )
    assert answer.json()["errors"]["nir"] == NIR_REASONS[NirProblem.BAD_KEY]
    assert wrong_key not in answer.text


def test_a_cancelled_appointment_cannot_be_prepared(client: TestClient, cw: CallerWorld) -> None:
    appointment_id = appointment_of(cw, "today")
    with transaction(cw.world.sessions) as session:
        session.execute(
            update(Appointment)
            .where(Appointment.id == appointment_id)
            .values(status=AppointmentStatus.CANCELLED.value)
        )
    headers = as_(client, cw, PATIENT_OWN)
    answer = client.put(
        f"/api/v1/appointments/{appointment_id}/preregistration",
        json=declaration(cw),
        headers=headers,
    )
    assert answer.status_code == 409
    assert upload(client, headers, appointment_id, pdf()).status_code == 409
    assert count(cw, Preregistration) == 0
    assert count(cw, PatientDocument) == 0


# --- documents ------------------------------------------------------------------------------


def test_an_upload_is_sealed_typed_from_its_content_and_read_by_the_lab_in_scope(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    appointment_id = appointment_of(cw, "today")
    headers = as_(client, cw, PATIENT_OWN)
    content = png()
    # The name and the declared type say PDF; the content is a PNG: the content wins.
    answer = upload(client, headers, appointment_id, content, name="x.pdf")
    assert answer.status_code == 201, answer.text
    document = answer.json()
    assert document["media_type"] == "image/png"
    assert document["size_bytes"] == len(content)
    with cw.world.sessions() as session:
        row = session.get(PatientDocument, uuid.UUID(document["id"]))
        assert row is not None
        starts = session.get(Appointment, appointment_id).starts_at  # type: ignore[union-attr]
        assert content not in row.content
        delete_after = row.delete_after
        assert delete_after is not None
        assert abs(
            delete_after.replace(tzinfo=None)
            - (
                starts.replace(tzinfo=None)
                + dt.timedelta(days=alpha.settings.prescription_retention_days)
            )
        ) < dt.timedelta(seconds=1)
    url = f"/api/v1/documents/{document['id']}"
    for name in (PATIENT_OWN, "receptionist", "biologist"):
        as_(client, cw, name)
        read = client.get(url)
        assert read.status_code == 200, name
        assert read.content == content
        assert read.headers["content-type"] == "image/png"
        assert read.headers["content-disposition"].startswith("attachment")
        assert read.headers["x-content-type-options"] == "nosniff"
        assert read.headers["cache-control"] == "no-store"
    assert len(events(alpha, AuditAction.PATIENT_DOCUMENT_READ)) == 3
    for name in ("sampler", "organization_admin", "security_officer", PATIENT_OTHER):
        as_(client, cw, name)
        assert client.get(url).status_code == 404, name

    as_(client, cw, "receptionist")
    listed = client.get(f"/api/v1/patients/{cw.world.patients['today']}/documents")
    assert [item["id"] for item in listed.json()] == [document["id"]]

    staff = as_(client, cw, "receptionist")
    assert client.delete(url, headers=staff).status_code == 404
    own = as_(client, cw, PATIENT_OWN)
    assert client.delete(url, headers=own).status_code == 204
    assert client.get(url).status_code == 404
    assert count(cw, PatientDocument) == 0
    assert len(events(alpha, AuditAction.PATIENT_DOCUMENT_DELETE)) == 1


def hostile_uploads() -> dict[str, tuple[dict[str, Any], int, str]]:
    real = pdf()
    return {
        "oversized": ({"content": b"%PDF-1.7\n" + bytes(MAX_BYTES)}, 413, "trop lourd"),
        "fake pdf": ({"content": b"%PDF-1.7\nnot really\n%%EOF\n"}, 422, "endommagé"),
        "html renamed .pdf": (
            {"content": b"<html><script>alert(1)</script></html>", "name": "o.pdf"},
            422,
            "page web",
        ),
        "polyglot png + pdf": ({"content": png() + real}, 422, "en trop"),
        "empty file": ({"content": b""}, 422, "vide"),
        "gif": ({"content": b"GIF89a" + bytes(40), "content_type": "image/png"}, 415, "JPEG"),
        "no consent": ({"content": real, "consent": None}, 422, "accord"),
        "consent refused": ({"content": real, "consent": "false"}, 422, "accord"),
    }


@pytest.mark.parametrize("name", sorted(hostile_uploads()))
def test_hostile_uploads_get_a_clear_error_and_nothing_is_written(
    client: TestClient, cw: CallerWorld, alpha: Runtime, name: str
) -> None:
    kwargs, status, reason = hostile_uploads()[name]
    content = kwargs.pop("content")
    headers = as_(client, cw, PATIENT_OWN)
    answer = upload(client, headers, appointment_of(cw, "today"), content, **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert reason in answer.json()["detail"]
    assert count(cw, PatientDocument) == 0
    assert events(alpha, AuditAction.PATIENT_DOCUMENT_UPLOAD) == []


def test_a_body_that_is_not_a_multipart_upload_is_refused(
    client: TestClient, cw: CallerWorld
) -> None:
    headers = as_(client, cw, PATIENT_OWN)
    url = f"/api/v1/appointments/{appointment_of(cw, 'today')}/documents"
    assert client.post(url, json={"file": "x"}, headers=headers).status_code == 422
    two = client.post(
        url,
        files=[("file", ("a.pdf", pdf(), "application/pdf")), ("file", ("b.pdf", pdf(), "x"))],
        data={"consent": "true"},
        headers=headers,
    )
    assert two.status_code == 422
    assert count(cw, PatientDocument) == 0


def test_at_most_five_documents_per_appointment(client: TestClient, cw: CallerWorld) -> None:
    appointment_id = appointment_of(cw, "today")
    headers = as_(client, cw, PATIENT_OWN)
    for _ in range(5):
        assert upload(client, headers, appointment_id, pdf()).status_code == 201
    sixth = upload(client, headers, appointment_id, pdf())
    assert sixth.status_code == 409
    assert count(cw, PatientDocument) == 5


def test_objects_of_others_are_one_404(client: TestClient, cw: CallerWorld) -> None:
    """Another patient's appointment, an appointment out of the desk's scope, and an
    absent one: the same answer, byte for byte, and nothing written."""
    headers = as_(client, cw, PATIENT_OWN)
    foreign = appointment_of(cw, "tomorrow")  # another patient's
    absent = uuid.uuid4()
    answers = [
        client.put(
            f"/api/v1/appointments/{target}/preregistration", json=declaration(cw), headers=headers
        )
        for target in (foreign, absent)
    ]
    answers += [upload(client, headers, target, pdf()) for target in (foreign, absent)]
    answers += [client.get(f"/api/v1/appointments/{t}/preregistration") for t in (foreign, absent)]
    as_(client, cw, "receptionist")
    out_of_scope = appointment_of(cw, "other_site")
    answers.append(client.get(f"/api/v1/appointments/{out_of_scope}/preregistration"))
    answers.append(client.get(f"/api/v1/patients/{cw.world.patients['other_site']}/documents"))
    assert {a.status_code for a in answers} == {404}
    assert len({a.content for a in answers}) == 1
    assert count(cw, Preregistration) == 0
    assert count(cw, PatientDocument) == 0


def test_uploads_and_declarations_are_ciphertext_at_rest(
    client: TestClient, cw: CallerWorld, alpha: Runtime, backend: str
) -> None:
    appointment_id = appointment_of(cw, "today")
    headers = as_(client, cw, PATIENT_OWN)
    declared = declaration(cw, used_name="Vandermeersch")
    assert (
        client.put(
            f"/api/v1/appointments/{appointment_id}/preregistration", json=declared, headers=headers
        ).status_code
        == 200
    )
    assert upload(client, headers, appointment_id, pdf()).status_code == 201
    values = {INSURANCE_NUMBER, PDF_MARKER, "Vandermeersch", "Mutuelle des Lilas"}
    assert PDF_MARKER.encode() in pdf()  # what a leak of the upload would show
    url = alpha.settings.database_url
    if backend == "sqlite":
        files = sqlite_files(url)
        assert files
        for path in files:
            assert leaked(path.read_bytes(), values) == [], path.name
    else:
        dump = pg_dump(url)
        assert b"patient_documents" in dump
        assert leaked(dump, values) == []


# --- audited refusals (L4) ------------------------------------------------------------------


def denied(runtime: Runtime) -> list[tuple[str, str | None, uuid.UUID | None, str | None]]:
    with runtime.audit_sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.outcome == "denied"))
        return [(e.action, e.target_type, e.target_id, e.purpose) for e in rows]


def test_out_of_scope_reads_answer_the_one_404_and_leave_a_denied_event(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    appointment_id = appointment_of(cw, "today")
    own = as_(client, cw, PATIENT_OWN)
    document = upload(client, own, appointment_id, pdf()).json()["id"]
    assert denied(alpha) == []

    as_(client, cw, PATIENT_OTHER)
    absent = uuid.uuid4()
    answers = [
        client.get(f"/api/v1/appointments/{appointment_id}/preregistration"),
        client.get(f"/api/v1/documents/{document}"),
        client.get(f"/api/v1/patients/{cw.world.patients['today']}/documents"),
        client.get(f"/api/v1/documents/{absent}"),
    ]
    assert {a.status_code for a in answers} == {404}
    assert len({a.content for a in answers}) == 1, "refused and absent: the same bytes"
    assert denied(alpha) == [
        ("patient:record:read", "appointment", appointment_id, "preregistration-read"),
        ("patient:document:read", "document", uuid.UUID(document), "prescription-read"),
        ("patient:document:read", "patient", cw.world.patients["today"], "prescription-read"),
        ("patient:document:read", "document", absent, "prescription-read"),
    ]
    # A staff member without the pre-registration's fields (the sampler) is refused too.
    as_(client, cw, "sampler")
    assert client.get(f"/api/v1/appointments/{appointment_id}/preregistration").status_code == 404
    assert len(denied(alpha)) == 5
    # Writes on another's objects too; nothing is written.
    other = as_(client, cw, PATIENT_OTHER)
    assert client.delete(f"/api/v1/documents/{document}", headers=other).status_code == 404
    assert upload(client, other, appointment_id, pdf()).status_code == 404
    put = client.put(
        f"/api/v1/appointments/{appointment_id}/preregistration",
        json=declaration(cw),
        headers=other,
    )
    assert put.status_code == 404
    assert [d[0] for d in denied(alpha)[5:]] == [
        "patient:document:delete",
        "patient:document:upload",
        "patient:preregistration:update",
    ]
    assert count(cw, PatientDocument) == 1
    assert count(cw, Preregistration) == 0


# --- a NIR carried by another record (L3) and concurrent writes (L2) ------------------------

FIXED_NOW = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's clock fixed, so that two answers can be compared byte for byte."""
    from labvault.preregistration import routes
    from labvault.preregistration.services import PreregistrationService

    def fixed(caller: Any) -> PreregistrationService:
        return PreregistrationService(
            caller.session, caller.keyring(), caller.scope(), caller.runtime.settings,
            now=FIXED_NOW,
        )  # fmt: skip

    monkeypatch.setattr(routes, "service_of", fixed)


def _record_nir(cw: CallerWorld, patient_id: uuid.UUID) -> bytes | None:
    with cw.world.sessions() as session:
        return session.scalar(select(Patient.nir_index).where(Patient.id == patient_id))


def _reset(cw: CallerWorld, patient_id: uuid.UUID) -> None:
    """Forget the declaration and the NIR the record took: the state before declaring."""
    with transaction(cw.world.sessions) as session:
        session.execute(delete(Preregistration))
        session.execute(
            update(Patient)
            .where(Patient.id == patient_id)
            .values(nir_index=None, ins_number=None, ins_oid=None)
        )


def _add_record_with_nir(cw: CallerWorld, runtime: Runtime, nir: Any, born: dt.date) -> uuid.UUID:
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(
            session, runtime.key_provider, cw.world.tenant, SystemPrincipal("test:prereg")
        )
        created = PatientRepository(session, keyring).register_many(
            [
                PatientInput(
                    birth_name="Autre", first_names="Dossier", birth_date=born, sex=Sex.MALE,
                    nir=nir,
                )
            ]
        )  # fmt: skip
        return created.created[0]


def _history_events(alpha: Runtime, patient_id: uuid.UUID) -> Counter[str]:
    """What the patient's access history holds about ``patient_id``, by action."""
    with alpha.audit_sessions() as session:
        return Counter(
            session.scalars(
                select(AuditEvent.action).where(
                    AuditEvent.target_type == "patient", AuditEvent.target_id == patient_id
                )
            )
        )


@pytest.mark.usefixtures("frozen_clock")
def test_a_nir_carried_by_another_record_gets_the_same_answer_byte_for_byte(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    child_id, appointment_id = add_minor_without_nir(cw, alpha)
    headers = as_(client, cw, PATIENT_OWN)
    url = f"/api/v1/appointments/{appointment_id}/preregistration"
    born = dt.date.fromisoformat(client.get(f"/api/v1/patients/{child_id}").json()["birth_date"])
    nir = synthetic_nir(random.Random(29), sex=1, birth_date=born)
    body = {
        "birth_name": "Petitjean", "first_names": "Noé", "birth_date": born.isoformat(),
        "sex": "M", "nir": nir.formatted(), "third_party_payment": True,
    }  # fmt: skip

    start = _history_events(alpha, child_id)
    free = client.put(url, json=body, headers=headers)
    assert free.status_code == 200, free.text
    assert _record_nir(cw, child_id) is not None, "a free NIR goes on the record"
    free_events = _history_events(alpha, child_id) - start

    _reset(cw, child_id)
    _add_record_with_nir(cw, alpha, nir, born)  # now another record carries it
    start = _history_events(alpha, child_id)
    taken = client.put(url, json=body, headers=headers)
    assert taken.status_code == 200, taken.text
    assert (taken.status_code, taken.content) == (free.status_code, free.content)
    assert taken.headers["content-type"] == free.headers["content-type"]
    assert _record_nir(cw, child_id) is None, "the record does not take another's NIR"
    # The patient's access history tells the two apart no more than the answer does.
    assert _history_events(alpha, child_id) - start == free_events
    # Declared again without the NIR (it is known): still accepted, the same way.
    again = client.put(url, json={**body, "nir": None}, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["preregistration"]["nir"] == free.json()["preregistration"]["nir"]
    # The desk sees the NIR as declared, in the pre-registration.
    as_(client, cw, "receptionist")
    desk = client.get(url)
    assert desk.status_code == 200, desk.text
    assert desk.json()["preregistration"]["nir"] == free.json()["preregistration"]["nir"]


def test_a_nir_taken_between_the_check_and_the_write_is_not_a_500(
    client: TestClient, cw: CallerWorld, alpha: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two patients completing the same NIR at once: the second write meets the unique
    blind index; it is dropped in a SAVEPOINT and the declaration is accepted as usual."""
    child_id, appointment_id = add_minor_without_nir(cw, alpha)
    headers = as_(client, cw, PATIENT_OWN)
    born = dt.date.fromisoformat(client.get(f"/api/v1/patients/{child_id}").json()["birth_date"])
    nir = synthetic_nir(random.Random(31), sex=1, birth_date=born)
    _add_record_with_nir(cw, alpha, nir, born)
    # As if the other record had taken it after this request looked.
    monkeypatch.setattr(PatientRepository, "_nir_taken", lambda self, index: False)
    answer = client.put(
        f"/api/v1/appointments/{appointment_id}/preregistration",
        json={
            "birth_name": "Petitjean", "first_names": "Noé", "birth_date": born.isoformat(),
            "sex": "M", "nir": nir.formatted(), "used_name": "Grandjean",
        },
        headers=headers,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert _record_nir(cw, child_id) is None
    record = client.get(f"/api/v1/patients/{child_id}").json()
    assert record["used_name"] == "Grandjean", "the rest of the completion is kept"
    assert count(cw, Preregistration) == 1


def _race(monkeypatch: pytest.MonkeyPatch, method: str, calls: list[Any], parties: int = 2) -> None:
    """Make ``PreregistrationService.<method>`` wait (up to 3 s) until every request has
    reached it: without a lock taken before, all would read the same state."""
    from labvault.preregistration.services import PreregistrationService

    barrier = threading.Barrier(parties, timeout=3)
    original = getattr(PreregistrationService, method)

    def waiting(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        calls.append(result)
        # On a timeout the other request is waiting on the lock, as it should.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return result

    monkeypatch.setattr(PreregistrationService, method, waiting)


POSTGRESQL_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True
)
"""SQLite has one writer at a time: row locks are PostgreSQL's."""


def _at_once(*requests: Any) -> list[Response]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda request: request(), requests))


@POSTGRESQL_ONLY
def test_two_declarations_at_once_on_one_appointment_are_serialized(
    client: TestClient, cw: CallerWorld, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert backend == "postgresql"
    appointment_id = appointment_of(cw, "today")
    headers = as_(client, cw, PATIENT_OWN)
    url = f"/api/v1/appointments/{appointment_id}/preregistration"
    calls: list[Any] = []
    _race(monkeypatch, "_stored", calls)
    answers = _at_once(
        lambda: client.put(url, json=declaration(cw, third_party_payment=True), headers=headers),
        lambda: client.put(url, json=declaration(cw, third_party_payment=False), headers=headers),
    )
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert count(cw, Preregistration) == 1
    assert sum(1 for c in calls if c is not None) == 1, "the second saw the first's row"


@POSTGRESQL_ONLY
def test_two_uploads_at_once_cannot_pass_the_five_documents_limit(
    client: TestClient, cw: CallerWorld, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert backend == "postgresql"
    appointment_id = appointment_of(cw, "today")
    headers = as_(client, cw, PATIENT_OWN)
    for _ in range(4):
        assert upload(client, headers, appointment_id, pdf()).status_code == 201
    calls: list[Any] = []
    _race(monkeypatch, "_count_documents", calls)
    answers = _at_once(
        lambda: upload(client, headers, appointment_id, pdf()),
        lambda: upload(client, headers, appointment_id, pdf()),
    )
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    assert count(cw, PatientDocument) == 5
    assert sorted(calls) == [4, 5]
