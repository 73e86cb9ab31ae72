"""The matching queue's pages over HTTP (SQLite: the queue's rules are tested on both
backends in test_queue.py): the list decrypts nothing, a message shows the claimed
identity (audited, markup escaped), attaching needs CSRF and a record in the caller's
scope (else a French error and nothing written), discarding destroys the key; every other
caller gets the same 404."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from results_intake_world import LIS_APPLICATION, LIS_FACILITY, oru
from sqlalchemy import func, select, update

from caller_world import (
    ORIGIN,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from labvault.accounts.models import AccountSession
from labvault.app import create_app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.results.clients import ServiceClientRegistry
from labvault.results.hl7 import parse_oru
from labvault.results.intake import StoredResultIntake
from labvault.results.models import MESSAGE_SUBJECT_TYPE, ResultMessage, ResultReport

FORM = {"Sec-Fetch-Site": "same-origin"}
PAGE = "/laboratoire/rapprochement"
SCRIPT = "<script>alert(1)</script>"
OTHERS = ("sampler", "organization_admin", "security_officer", PATIENT_OWN)


@pytest.fixture
def backend() -> str:
    return "sqlite"


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
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    return cw.sessions[name].csrf


def queued(
    cw: CallerWorld, birth_name: str = SCRIPT, *, site: str = "Alpha Centre", ins: bool = False
) -> uuid.UUID:
    """A result for the 'today' patient whose birth name matches nobody: queued. It comes
    from a sending system serving ``site`` only (the staff of the world work at Alpha
    Centre)."""
    runtime, world = cw.runtime, cw.world
    sending = (LIS_APPLICATION, LIS_FACILITY) if site == "Alpha Centre" else ("SIL2", site)
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(
            session, runtime.key_provider, world.tenant, SystemPrincipal("test:queue")
        )
        registry = ServiceClientRegistry(session, world.tenant, keyring.audit)
        if not any(client.name == f"SIL {site}" for client in registry.list()):
            registry.add(
                f"SIL {site}",
                kind="lis",
                hl7_application=sending[0],
                hl7_facility=sending[1],
                sites=[site],
            )
    text = oru(
        world.inputs["today"],
        ins=ins,
        birth_name=birth_name,
        control_id=uuid.uuid4().hex[:12],
        sending=sending,
    )
    StoredResultIntake(world.sessions, runtime.key_provider, world.tenant).receive(
        parse_oru(text), peer="local"
    )
    with world.sessions() as session:
        return session.scalars(
            select(ResultMessage.id)
            .where(ResultMessage.status == "queued")
            .order_by(ResultMessage.received_at.desc())
        ).first()  # type: ignore[return-value]


def test_a_receptionist_examines_and_attaches_a_message(
    client: TestClient, cw: CallerWorld
) -> None:
    message_id = queued(cw)
    csrf = as_(client, cw, "receptionist")
    listed = client.get(PAGE)
    assert listed.status_code == 200
    assert str(message_id) in listed.text
    assert "Aucun dossier correspondant" in listed.text
    assert "alert(1)" not in listed.text  # the list decrypts nothing
    shown = client.get(f"{PAGE}/{message_id}")
    assert shown.status_code == 200
    assert SCRIPT not in shown.text  # escaped
    assert "&lt;script&gt;" in shown.text
    assert shown.headers["Cache-Control"] == "no-store"
    # A record out of the receptionist's scope: the French refusal, nothing written.
    refused = client.post(
        f"{PAGE}/{message_id}/rattacher",
        data={"csrf_token": csrf, "patient_id": str(cw.world.patients["no_appointment"])},
        headers=FORM,
    )
    assert refused.status_code == 422
    assert "Dossier patient introuvable" in refused.text
    malformed = client.post(
        f"{PAGE}/{message_id}/rattacher",
        data={"csrf_token": csrf, "patient_id": "Dupont"},
        headers=FORM,
    )
    assert malformed.status_code == 422
    no_csrf = client.post(
        f"{PAGE}/{message_id}/rattacher",
        data={"csrf_token": "", "patient_id": str(cw.world.patients["today"])},
        headers=FORM,
        follow_redirects=False,
    )
    assert no_csrf.status_code in (403, 404)
    with cw.world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ResultReport)) == 0
    attached = client.post(
        f"{PAGE}/{message_id}/rattacher",
        data={"csrf_token": csrf, "patient_id": str(cw.world.patients["today"])},
        headers=FORM,
        follow_redirects=False,
    )
    assert attached.status_code == 303
    assert "info=rattache" in attached.headers["location"]
    with cw.world.sessions() as session:
        message = session.get(ResultMessage, message_id)
        assert message is not None
        assert message.status == "resolved"
        report = session.scalars(select(ResultReport)).one()
        assert report.patient_id == cw.world.patients["today"]
        actions = set(session.scalars(select(AuditEvent.action)))
    assert {"result:message:read", "result:message:attach"} <= actions
    assert client.get(f"{PAGE}/{message_id}").status_code == 404  # handled


def test_a_biologist_discards_a_message(client: TestClient, cw: CallerWorld) -> None:
    message_id = queued(cw, birth_name="Essai")
    csrf = as_(client, cw, "biologist")
    no_reason = client.post(
        f"{PAGE}/{message_id}/ecarter", data={"csrf_token": csrf, "reason": "x"}, headers=FORM
    )
    assert no_reason.status_code == 422
    assert "Choisissez le motif" in no_reason.text
    cw.age_second_factor("biologist")
    stale = client.post(
        f"{PAGE}/{message_id}/ecarter",
        data={"csrf_token": csrf, "reason": "test-message"},
        headers=FORM,
        follow_redirects=False,
    )
    assert stale.status_code == 303
    assert "/compte/confirmer-identite" in stale.headers["location"]
    with cw.world.sessions() as session:
        assert session.scalar(select(ResultMessage.status)) == "queued"
        assert not list(
            session.scalars(
                select(AuditEvent.id).where(AuditEvent.action == "result:message:discard")
            )
        )
    with transaction(cw.world.sessions) as session:  # the biologist confirms its identity
        session.execute(
            update(AccountSession)
            .where(AccountSession.id == cw.sessions["biologist"].record_id)
            .values(step_up_at=utcnow())
        )
    discarded = client.post(
        f"{PAGE}/{message_id}/ecarter",
        data={"csrf_token": csrf, "reason": "test-message"},
        headers=FORM,
        follow_redirects=False,
    )
    assert discarded.status_code == 303
    with cw.world.sessions() as session:
        assert session.scalar(select(ResultMessage.status)) == "discarded"
        keys = session.scalar(
            select(func.count())
            .select_from(DataKeyRecord)
            .where(DataKeyRecord.subject_type == MESSAGE_SUBJECT_TYPE)
        )
        purposes = list(
            session.scalars(
                select(AuditEvent.purpose).where(AuditEvent.action == "result:message:discard")
            )
        )
    assert keys == 0
    assert purposes == ["result-queue:test-message"]
    again = client.post(
        f"{PAGE}/{message_id}/ecarter",
        data={"csrf_token": csrf, "reason": "test-message"},
        headers=FORM,
    )
    assert again.status_code == 404


def test_a_receptionist_sees_the_identity_but_not_the_orders(
    client: TestClient, cw: CallerWorld
) -> None:
    message_id = queued(cw, ins=True)
    nir = cw.world.inputs["today"].nir
    assert nir is not None
    as_(client, cw, "receptionist")
    shown = client.get(f"{PAGE}/{message_id}")
    assert shown.status_code == 200
    assert "Bilan standard" not in shown.text
    assert "DOS456" not in shown.text
    assert nir.compact not in shown.text  # the INS masked
    assert "visibles que des biologistes" in shown.text
    as_(client, cw, "biologist")
    shown = client.get(f"{PAGE}/{message_id}")
    assert "Bilan standard" in shown.text
    assert "DOS456" in shown.text
    assert nir.compact not in shown.text


def test_messages_of_systems_serving_other_sites_are_not_shown(
    client: TestClient, cw: CallerWorld
) -> None:
    message_id = queued(cw, site="Alpha Nord")
    for name in ("receptionist", "biologist"):
        csrf = as_(client, cw, name)
        listed = client.get(PAGE)
        assert listed.status_code == 200
        assert str(message_id) not in listed.text
        assert client.get(f"{PAGE}/{message_id}").status_code == 404
        refused = client.post(
            f"{PAGE}/{message_id}/ecarter",
            data={"csrf_token": csrf, "reason": "wrong-laboratory"},
            headers=FORM,
        )
        assert refused.status_code == 404
    with cw.world.sessions() as session:
        assert session.scalar(select(ResultMessage.status)) == "queued"


def test_everyone_else_gets_the_same_404(client: TestClient, cw: CallerWorld) -> None:
    message_id = queued(cw)
    for name in OTHERS:
        csrf = as_(client, cw, name)
        for answer in (
            client.get(PAGE),
            client.get(f"{PAGE}/{message_id}"),
            client.post(f"{PAGE}/{message_id}/ecarter", data={"csrf_token": csrf}, headers=FORM),
        ):
            assert answer.status_code == 404, name
    as_(client, cw, "biologist")
    assert client.get(f"{PAGE}/{uuid.uuid4()}").status_code == 404
    assert client.get(f"{PAGE}/pas-un-identifiant").status_code == 404
    with cw.world.sessions() as session:
        assert session.scalar(select(ResultMessage.status)) == "queued"
