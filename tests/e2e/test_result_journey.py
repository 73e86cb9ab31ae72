"""Issue 8's "must show", end to end, with real components:

- ``labvault mllp serve`` runs as its own process on the deployment's SQLite file; a real
  MLLP client (a TCP socket, 0x0B ... 0x1C 0x0D framing) sends an ORU^R01 for a known
  patient (INS with the test OID) and one for a patient nobody knows; both are
  acknowledged (AA).
- A biologist validates the first through the review API (a signed-in staff session, a
  fresh second factor); the release emails the patient "a document is available".
- The patient logs in in Chromium and sees the values; another patient sees no result and
  gets "page introuvable" on the report's address.
- The unknown patient's message sits in the queue, attached to nobody, and made no report.
- Neither the database file nor any captured email holds a seeded value in clear.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path

import httpx
import pytest
import structlog
import uvicorn
from playwright.sync_api import Browser, expect
from sqlalchemy import func, select
from test_account_pages import (
    PASSWORD,
    PHRASE,
    LiveServer,
    _visit,
    browser,
    log_in,
    second_factor_by_email,
)

from helpers import leaked, sqlite_files
from labvault.accounts.models import AccountKind
from labvault.accounts.services import AccountService
from labvault.app import create_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.passwords import Argon2Parameters, PasswordHasher
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.migrate import upgrade
from labvault.core.runtime import Runtime
from labvault.organizations.models import Site
from labvault.organizations.services import add_site, create_organization
from labvault.patients.ins import InsOid
from labvault.patients.nir import Nir, synthetic_nir
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository
from labvault.results.clients import ServiceClientRegistry
from labvault.results.models import MessageStatus, ResultMessage, ResultOrder, ResultReport
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository

pytestmark = pytest.mark.browser

__all__ = ["browser"]

ORGANIZATION = "Laboratoire Acacias"
SITE_NAME = "Laboratoire des Acacias"
LIS_APPLICATION = "SIL-ACACIAS"
LIS_FACILITY = "ACACIAS-CENTRE"
PATIENT_EMAIL = "lea.journee@example.org"
OTHER_EMAIL = "hugo.voisin@example.org"
BIOLOGIST_EMAIL = "biologiste.acacias@example.org"
SETUP = SystemPrincipal("test:e2e-result-journey")
HASHER = PasswordHasher(Argon2Parameters(time_cost=5, memory_cost=7168))

# The seeded values: none may be found in clear at rest or in an email.
GLUCOSE = "6.837"
HEMOGLOBIN = "15.372"
COMMENT = "Prélèvement au pli du coude gauche"
UNKNOWN_GLUCOSE = "4.219"
PRESCRIBER = "Vasarely"
START, END = b"\x0b", b"\x1c\r"


@dataclass
class JourneyServer(LiveServer):
    runtime: Runtime
    tenant_id: uuid.UUID
    patient: PatientInput
    unknown: PatientInput
    patient_id: uuid.UUID
    biologist_token: str
    biologist_csrf: str
    mllp_port: int


def _person(rng: random.Random, **traits: str) -> PatientInput:
    birth = dt.date.fromisoformat(traits["birth_date"])
    nir = synthetic_nir(rng, sex=1 if traits["sex"] == "M" else 2, birth_date=birth)
    return PatientInput.model_validate({**traits, "nir": nir.compact, "ins_oid": InsOid.TEST.value})


def _account(service: AccountService, email: str, **values: object) -> uuid.UUID:
    account = service.provision(
        email,
        Secret(PASSWORD),
        security_phrase=PHRASE if values.get("kind") is AccountKind.PATIENT else None,
        by=SETUP,
        **values,  # type: ignore[arg-type]
    )
    return account.id


def seed(runtime: Runtime) -> tuple[uuid.UUID, PatientInput, PatientInput, uuid.UUID, str, str]:
    rng = random.Random(8080)
    patient = _person(
        rng,
        birth_name="Journée",
        first_names="Léa Marie",
        birth_date="1988-04-17",
        sex="F",
        email=PATIENT_EMAIL,
    )
    other = _person(
        rng,
        birth_name="Voisin",
        first_names="Hugo",
        birth_date="1975-09-03",
        sex="M",
        email=OTHER_EMAIL,
    )
    unknown = _person(
        rng, birth_name="Inconnu", first_names="Basile", birth_date="1969-12-24", sex="M"
    )
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, ORGANIZATION)
        add_site(
            session,
            organization,
            name=SITE_NAME,
            address_line="2 place des Acacias",
            postal_code="31000",
            city="Toulouse",
            opening_hours={},
            sampling_capacity_per_hour=12,
        )
        tenant_id = organization.id
    with transaction(runtime.tenant_sessions(tenant_id)) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant_id, SETUP)
        created = PatientRepository(session, keyring).register_many([patient, other])
        patient_id, other_id = created.created[0], created.created[1]
        site_id = session.scalar(select(Site.id).where(Site.tenant_id == tenant_id))
        assert site_id is not None
        staff_id = StaffRepository(session, keyring).add(
            first_name="Irène",
            last_name="Biologiste",
            email=BIOLOGIST_EMAIL,
            role=StaffRole.BIOLOGIST,
            site_ids=[site_id],
        )
        ServiceClientRegistry(session, tenant_id, keyring.audit).add(
            "SIL des Acacias",
            kind="lis",
            hl7_application=LIS_APPLICATION,
            hl7_facility=LIS_FACILITY,
            sites=[SITE_NAME],
        )
        service = AccountService(
            session,
            tenant_id=tenant_id,
            provider=runtime.key_provider,
            mailer=runtime.mailer,
            limiter=runtime.rate_limiter,
            settings=runtime.settings,
            hasher=HASHER,
        )
        own = service.account(_account(service, PATIENT_EMAIL, kind=AccountKind.PATIENT))
        assert own is not None
        own.patient_id = patient_id
        neighbour = service.account(_account(service, OTHER_EMAIL, kind=AccountKind.PATIENT))
        assert neighbour is not None
        neighbour.patient_id = other_id
        biologist = service.account(
            _account(
                service,
                BIOLOGIST_EMAIL,
                kind=AccountKind.STAFF,
                role=StaffRole.BIOLOGIST.value,
                staff_id=staff_id,
            )
        )
        assert biologist is not None
        token, _ = service.sessions.create(
            tenant_id=tenant_id,
            account_id=biologist.id,
            policy=service._policy(biologist),
            client_hash=None,
            second_factor="totp",
        )
        csrf = service.sessions.csrf_token(token.reveal())
    return tenant_id, patient, unknown, patient_id, token.reveal(), csrf


def _mllp_serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    """``labvault mllp serve`` on a free loopback port; its process and port."""
    command = [str(Path(sys.executable).parent / "labvault"), "mllp", "serve"]
    process = subprocess.Popen(
        [*command, "--organization", ORGANIZATION, "--host", "127.0.0.1", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"MLLP listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            threading.Thread(target=process.stdout.read, daemon=True).start()  # drain
            return process, int(found.group(1))
    process.kill()
    raise AssertionError("labvault mllp serve did not start:\n" + "".join(lines))


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JourneyServer]:
    data_dir = tmp_path_factory.mktemp("e2e-journey") / "var"
    settings = Settings(data_dir=data_dir, environment="test", log_level="warning")
    FileKeyProvider.create(settings.key_file)
    runtime = Runtime(settings)
    upgrade(runtime.engine)
    tenant_id, patient, unknown, patient_id, token, csrf = seed(runtime)
    env = {
        **os.environ,
        "LABVAULT_DATA_DIR": str(data_dir),
        "LABVAULT_ENVIRONMENT": "test",
        "LABVAULT_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("LABVAULT_DATABASE_URL", None)
    env.pop("LABVAULT_KEY_PROVIDER", None)
    mllp, mllp_port = _mllp_serve(env)
    app = create_app(settings, runtime)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the server stopped while starting"
        assert time.monotonic() < deadline, "the server did not start within 15 s"
        time.sleep(0.02)
    try:
        yield JourneyServer(
            f"http://127.0.0.1:{port}",
            settings.resolved_data_dir / "mail",
            runtime,
            tenant_id,
            patient,
            unknown,
            patient_id,
            token,
            csrf,
            mllp_port,
        )
    finally:
        mllp.terminate()
        try:
            mllp.wait(timeout=15)
        except subprocess.TimeoutExpired:
            mllp.kill()
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()
        runtime.close()
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if type(handler).__name__ == "_LabvaultHandler":
                root.removeHandler(handler)


def oru(person: PatientInput, *, control_id: str, order: str, glucose: str) -> str:
    """An ORU^R01 as a laboratory system writes it: INS (test OID) in PID-3, the traits."""
    assert isinstance(person.nir, Nir)
    collected = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S+0000")
    first = person.first_names.split()[0]
    return (
        "\r".join(
            [
                f"MSH|^~\\&|{LIS_APPLICATION}|{LIS_FACILITY}|LABVAULT|LV|{collected}||"
                f"ORU^R01^ORU_R01|{control_id}|P|2.5|||AL|NE||UNICODE UTF-8",
                f"PID|1||{person.nir.compact}^^^ASIP-SANTE-INS-NIR&{InsOid.TEST.value}&ISO^INS||"
                f"{person.birth_name}^{first}^{person.first_names}^^^^L||"
                f"{person.birth_date:%Y%m%d}|{person.sex.value}",
                f"ORC|RE|CMD-{order}^SIL|{order}^LABO||CM",
                f"OBR|1|CMD-{order}^SIL|{order}^LABO|BIO-GLY^Bilan glycémique^L|||{collected}|||||"
                f"||||10003456789^{PRESCRIBER}^Paul||||||{collected}|||F",
                f"NTE|1|L|{COMMENT}",
                f"OBX|1|NM|2345-7^Glucose^LN||{glucose}|mmol/L|3.9-5.5|H|||F",
                f"OBX|2|NM|718-7^Hémoglobine^LN||{HEMOGLOBIN}|g/dL|12.0-16.0|N|||F",
            ]
        )
        + "\r"
    )


def send(port: int, message: str) -> str:
    """One message over a real MLLP connection; the answer's text."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(START + message.encode() + END)
        answer = b""
        while not answer.endswith(END):
            chunk = connection.recv(65536)
            assert chunk, "the listener closed the connection without answering"
            answer += chunk
    assert answer.startswith(START)
    return answer[1 : -len(END)].decode()


def test_a_result_sent_over_mllp_reaches_the_right_patient_and_nobody_else(
    browser: Browser, live_server: JourneyServer
) -> None:
    runtime = live_server.runtime
    sessions = runtime.tenant_sessions(live_server.tenant_id)

    # 1. The laboratory system sends two results over MLLP: both acknowledged.
    for person, control, order, glucose in (
        (live_server.patient, "JRN0001", "ORD-J1", GLUCOSE),
        (live_server.unknown, "JRN0002", "ORD-J2", UNKNOWN_GLUCOSE),
    ):
        answer = send(
            live_server.mllp_port, oru(person, control_id=control, order=order, glucose=glucose)
        )
        msa = next(s for s in answer.split("\r") if s.startswith("MSA|"))
        assert msa.startswith("MSA|AA|"), answer
        assert control in msa
    with sessions() as session:
        reports = list(session.scalars(select(ResultReport)))
        messages = {m.status: m for m in session.scalars(select(ResultMessage))}
        assert session.scalar(select(func.count()).select_from(ResultOrder)) == 1
    assert len(reports) == 1, "only the known patient's result made a report"
    (report,) = reports
    assert report.patient_id == live_server.patient_id
    assert report.status == "to-validate"
    queued = messages[MessageStatus.QUEUED.value]
    assert queued.patient_id is None, "never attached to a guessed patient"
    assert queued.queue_reason == "no-candidate"
    assert queued.content is not None  # sealed under its own key, waiting for a person
    assert messages[MessageStatus.ATTACHED.value].patient_id == live_server.patient_id

    # 2. Before validation the patient sees nothing; then a biologist validates it.
    validated = httpx.post(
        f"{live_server.base_url}/api/v1/results/review/{report.id}/validate",
        json={"version": report.version},
        headers={
            "Cookie": f"__Host-labvault-session={live_server.biologist_token}",
            "X-CSRF-Token": live_server.biologist_csrf,
            "Origin": live_server.base_url,
        },
        timeout=30,
    )
    assert validated.status_code == 200, validated.text
    with sessions() as session:
        released = session.get(ResultReport, report.id)
        assert released is not None
        assert released.status == "released"

    # 3. The patient logs in and reads the values.
    visit = _visit(browser, live_server)
    try:
        page = visit.page
        log_in(visit, PATIENT_EMAIL)
        second_factor_by_email(visit, PATIENT_EMAIL)
        page.get_by_role("link", name="Vos résultats").click()
        expect(page.locator("#resultats")).to_contain_text(SITE_NAME)
        expect(page.locator("#resultats .badge", has_text="Nouveau")).to_have_count(1)
        visit.check()
        page.locator("#resultats a").first.click()
        expect(page).to_have_url(re.compile(rf"/compte/resultats/{report.id}$"))
        values = page.get_by_role("table", name="Résultats du compte rendu")
        expect(values).to_contain_text("6,837 mmol/L")
        expect(values).to_contain_text("15,372 g/dL")
        expect(values.get_by_role("row", name=re.compile("Glucose"))).to_contain_text(
            "Supérieur à la normale"
        )
        visit.check()
    finally:
        visit.context.close()

    # 4. Another patient sees nothing, and the report's address is "page introuvable".
    other = _visit(browser, live_server)
    try:
        page = other.page
        log_in(other, OTHER_EMAIL)
        second_factor_by_email(other, OTHER_EMAIL)
        page.goto("/compte/resultats")
        expect(page.get_by_text("Aucun résultat n'est encore disponible")).to_be_visible()
        other.check()
        response = page.goto(f"/compte/resultats/{report.id}")
        assert response is not None
        assert response.status == 404
        expect(page.get_by_role("heading", level=1)).to_have_text("Page introuvable")
        assert "6,837" not in page.content()
        pdf = page.goto(f"/compte/resultats/{report.id}/pdf")
        assert pdf is not None
        assert pdf.status == 404
    finally:
        other.context.close()

    # 5. The queued message is still attached to nobody.
    with sessions() as session:
        still = session.get(ResultMessage, queued.id)
        assert still is not None
        assert still.status == MessageStatus.QUEUED.value
        assert still.patient_id is None

    # 6. Nothing seeded in clear at rest, nor in any email sent (the notification included).
    seeded = [
        GLUCOSE,
        HEMOGLOBIN,
        UNKNOWN_GLUCOSE,
        COMMENT,
        PRESCRIBER,
        "Glucose",
        "Hémoglobine",
        "Bilan glycémique",
        live_server.patient.birth_name,
        live_server.unknown.birth_name,
        "Basile",
    ]
    for person in (live_server.patient, live_server.unknown):
        assert person.nir is not None
        seeded.append(person.nir.compact)
    runtime.engine.dispose()
    database = b"".join(path.read_bytes() for path in sqlite_files(runtime.settings.sqlalchemy_url))
    assert leaked(database, seeded) == []
    emails = sorted(live_server.mail_dir.glob("*.eml"))
    parser = BytesParser(policy=email.policy.default)
    notices = [
        message
        for message in (parser.parsebytes(path.read_bytes()) for path in emails)
        if message["To"] == PATIENT_EMAIL and "document est disponible" in str(message["Subject"])
    ]
    assert len(notices) == 1, "the release emailed the patient once"
    for path in emails:
        message = parser.parsebytes(path.read_bytes())
        # Scanned as stored and as read (a quoted-printable or base64 body hides accents).
        parts = [str(message["Subject"])]
        parts += [
            part.get_content() for part in message.walk() if part.get_content_maintype() == "text"
        ]
        readable = path.read_bytes() + "\n".join(parts).encode()
        assert leaked(readable, [*seeded, "6,837", "15,372"]) == [], path.name
