"""The matching queue, SQLite and PostgreSQL: listing decrypts nothing, opening is audited,
attaching re-checks the staff member's scope and re-seals under the patient's key (the
message's own key destroyed), discarding destroys the key; roles other than biologist and
receptionist are refused; the CLI commands act as a named system principal."""

from __future__ import annotations

import uuid

import pytest
from results_intake_world import IntakeWorld, build_intake_world, oru
from sqlalchemy import func, select
from typer.testing import CliRunner

from labvault.appointments.models import Appointment
from labvault.cli import app
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.patients.scope import AccessDeniedError, staff_scope
from labvault.results.hl7 import parse_oru
from labvault.results.intake import StoredResultIntake
from labvault.results.models import MESSAGE_SUBJECT_TYPE, ResultMessage, ResultReport
from labvault.results.queue import MatchingQueue, QueueError
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository


@pytest.fixture
def world(runtime: Runtime) -> IntakeWorld:
    return build_intake_world(runtime)


def queue_one(world: IntakeWorld) -> uuid.UUID:
    """A result for the 'traits' patient with a misspelt birth name: queued."""
    intake = StoredResultIntake(world.runtime.sessions, world.runtime.key_provider, world.tenant)
    text = oru(world.people["traits"], birth_name="Fautedefrappe")
    intake.receive(parse_oru(text), peer="test")
    with world.runtime.sessions() as session:
        return session.scalars(select(ResultMessage.id)).one()


def staff(world: IntakeWorld, role: StaffRole) -> tuple[uuid.UUID, Principal]:
    with transaction(world.runtime.sessions) as session:
        staff_id = StaffRepository(session, world.keyring(session)).add(
            first_name="Camille",
            last_name="Agent",
            email=f"{role.value}-{uuid.uuid4().hex[:6]}@alpha.example.org",
            role=role,
            site_ids=[world.site],
        )
    return staff_id, Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role=role.value)


def staff_queue(world: IntakeWorld, session: object, role: StaffRole) -> MatchingQueue:
    staff_id, principal = staff(world, role)
    keyring = TenantKeyring(session, world.runtime.key_provider, world.tenant, principal)  # type: ignore[arg-type]
    scope = staff_scope(session, principal, world.tenant, staff_id)  # type: ignore[arg-type]
    return MatchingQueue(session, keyring, scope)  # type: ignore[arg-type]


def message_key_count(world: IntakeWorld) -> int:
    with world.runtime.sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(DataKeyRecord)
                .where(DataKeyRecord.subject_type == MESSAGE_SUBJECT_TYPE)
            )
            or 0
        )


def test_a_biologist_attaches_a_queued_result_to_a_patient_in_scope(world: IntakeWorld) -> None:
    message_id = queue_one(world)
    patient = world.patients["traits"]
    # In the site's care: an appointment at the biologist's site.
    with transaction(world.runtime.sessions) as session:
        session.add(
            Appointment(
                tenant_id=world.tenant,
                patient_id=patient,
                site_id=world.site,
                starts_at=utcnow(),
                status="booked",
            )
        )
    with transaction(world.runtime.sessions) as session:
        queue = staff_queue(world, session, StaffRole.BIOLOGIST)
        (item,) = queue.list()
        assert item.id == message_id
        assert item.reason == "no-candidate"
        opened = queue.open(message_id)
        assert opened is not None
        assert opened.result.patient.birth_name == "Fautedefrappe"
        assert "Fautedefrappe" not in repr(opened)
        reports = queue.attach(message_id, patient)
    assert len(reports) == 1
    assert message_key_count(world) == 0
    with world.runtime.sessions() as session:
        message = session.get(ResultMessage, message_id)
        assert message is not None
        assert message.status == "resolved"
        assert message.content is None
        assert message.patient_id == patient
        report = session.scalars(select(ResultReport)).one()
        assert report.patient_id == patient
        events = set(session.scalars(select(AuditEvent.action)))
    assert {"result:message:read", "result:message:attach", "result:report:create"} <= events


def test_a_patient_out_of_scope_cannot_be_chosen(world: IntakeWorld) -> None:
    message_id = queue_one(world)
    with transaction(world.runtime.sessions) as session:
        queue = staff_queue(world, session, StaffRole.RECEPTIONIST)
        with pytest.raises(QueueError):
            queue.attach(message_id, world.patients["twin_a"])  # no relationship with the site
    with world.runtime.sessions() as session:
        assert session.scalar(select(ResultMessage.status)) == "queued"
        assert session.scalar(select(func.count()).select_from(ResultReport)) == 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_sampler_has_no_queue(world: IntakeWorld, backend: str) -> None:
    with transaction(world.runtime.sessions) as session, pytest.raises(AccessDeniedError):
        staff_queue(world, session, StaffRole.SAMPLER)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_cli_lists_shows_attaches_and_discards(
    world: IntakeWorld, cli_env: Settings, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    first = queue_one(world)
    listed = runner.invoke(app, ["results", "queue", "list", "--organization", "Labo Alpha"])
    assert listed.exit_code == 0, listed.output
    assert str(first) in listed.output
    assert "no-candidate" in listed.output
    assert "Fautedefrappe" not in listed.output  # the list decrypts nothing
    shown = runner.invoke(
        app, ["results", "queue", "show", str(first), "--organization", "Labo Alpha"]
    )
    assert shown.exit_code == 0, shown.output
    assert "Fautedefrappe" in shown.output
    attached = runner.invoke(
        app,
        [
            "results",
            "queue",
            "attach",
            str(first),
            "--patient",
            str(world.patients["traits"]),
            "--organization",
            "Labo Alpha",
        ],
    )
    assert attached.exit_code == 0, attached.output
    intake = StoredResultIntake(world.runtime.sessions, world.runtime.key_provider, world.tenant)
    intake.receive(
        parse_oru(oru(world.people["twin_a"], ins=False, control_id="M2", order="O2")), peer="t"
    )
    with world.runtime.sessions() as session:
        second = session.scalars(
            select(ResultMessage.id).where(ResultMessage.status == "queued")
        ).one()
    discarded = runner.invoke(
        app, ["results", "queue", "discard", str(second), "--organization", "Labo Alpha"]
    )
    assert discarded.exit_code == 0, discarded.output
    assert message_key_count(world) == 0
    with world.runtime.sessions() as session:
        statuses = sorted(session.scalars(select(ResultMessage.status)))
        actors = set(
            session.scalars(
                select(AuditEvent.actor_id).where(AuditEvent.action.like("result:message:%"))
            )
        )
    assert statuses == ["discarded", "resolved"]
    assert "system:cli:results-queue" in actors
