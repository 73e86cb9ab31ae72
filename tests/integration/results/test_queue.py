"""The matching queue, SQLite and PostgreSQL: listing decrypts nothing, opening is audited,
attaching re-checks the staff member's scope and re-seals under the patient's key (the
message's own key destroyed), discarding destroys the key; roles other than biologist and
receptionist are refused; the CLI commands act as a named system principal."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

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
from labvault.organizations.models import Organization
from labvault.organizations.services import add_site
from labvault.patients.scope import AccessDeniedError, staff_scope
from labvault.results.hl7 import parse_oru
from labvault.results.intake import OrderDigester, StoredResultIntake
from labvault.results.models import (
    MESSAGE_SUBJECT_TYPE,
    ResultMessage,
    ResultOrder,
    ResultReport,
)
from labvault.results.queue import DiscardReasonError, MatchingQueue, QueueError
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository


@pytest.fixture
def world(runtime: Runtime) -> IntakeWorld:
    return build_intake_world(runtime)


def queue_one(world: IntakeWorld) -> uuid.UUID:
    """A result for the 'traits' patient with a misspelt birth name: queued."""
    intake = StoredResultIntake(world.runtime.sessions, world.runtime.key_provider, world.tenant)
    text = oru(world.people["traits"], birth_name="Fautedefrappe")
    intake.receive(parse_oru(text), peer="local")
    with world.runtime.sessions() as session:
        return session.scalars(select(ResultMessage.id)).one()


def staff(
    world: IntakeWorld, role: StaffRole, site: uuid.UUID | None = None
) -> tuple[uuid.UUID, Principal]:
    with transaction(world.runtime.sessions) as session:
        staff_id = StaffRepository(session, world.keyring(session)).add(
            first_name="Camille",
            last_name="Agent",
            email=f"{role.value}-{uuid.uuid4().hex[:6]}@alpha.example.org",
            role=role,
            site_ids=[site or world.site],
        )
    return staff_id, Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role=role.value)


def staff_queue(
    world: IntakeWorld,
    session: object,
    role: StaffRole,
    *,
    site: uuid.UUID | None = None,
    require_step_up: Callable[[], None] | None = None,
) -> MatchingQueue:
    staff_id, principal = staff(world, role, site)
    keyring = TenantKeyring(session, world.runtime.key_provider, world.tenant, principal)  # type: ignore[arg-type]
    scope = staff_scope(session, principal, world.tenant, staff_id)  # type: ignore[arg-type]
    orders = OrderDigester.from_provider(world.runtime.key_provider, world.tenant)
    return MatchingQueue(session, keyring, scope, orders=orders, require_step_up=require_step_up)  # type: ignore[arg-type]


def other_site(world: IntakeWorld) -> uuid.UUID:
    """A second site of the tenant that no sending system serves."""
    with transaction(world.runtime.sessions) as session:
        organization = session.get(Organization, world.tenant)
        return add_site(
            session,
            organization,
            name="Alpha Nord",
            address_line="2 rue du Nord",
            postal_code="59000",
            city="Lille",
            opening_hours={},
            sampling_capacity_per_hour=6,
        ).id


def discard_events(world: IntakeWorld) -> list[str | None]:
    with world.runtime.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent.purpose).where(AuditEvent.action == "result:message:discard")
            )
        )


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
        stored = bytes(session.scalars(select(ResultOrder.order_digest)).one())
        events = set(session.scalars(select(AuditEvent.action)))
    # The order number is kept as a keyed digest, not a plain hash (finding 9).
    assert stored != hashlib.sha256(b"DOS456").digest()
    assert stored == OrderDigester.from_provider(world.runtime.key_provider, world.tenant).digest(
        opened.result.orders[0]
    )
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
        parse_oru(oru(world.people["twin_a"], ins=False, control_id="M2", order="O2")), peer="local"
    )
    with world.runtime.sessions() as session:
        second = session.scalars(
            select(ResultMessage.id).where(ResultMessage.status == "queued")
        ).one()
    no_reason = runner.invoke(
        app, ["results", "queue", "discard", str(second), "--organization", "Labo Alpha"]
    )
    assert no_reason.exit_code != 0  # a reason is required
    discarded = runner.invoke(
        app,
        [
            "results",
            "queue",
            "discard",
            str(second),
            "--reason",
            "test-message",
            "--organization",
            "Labo Alpha",
        ],
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
    assert discard_events(world) == ["result-queue:test-message"]


def test_a_receptionist_sees_the_identity_not_the_results(world: IntakeWorld) -> None:
    message_id = queue_one(world)
    with transaction(world.runtime.sessions) as session:
        receptionist = staff_queue(world, session, StaffRole.RECEPTIONIST).open(message_id)
    with transaction(world.runtime.sessions) as session:
        biologist = staff_queue(world, session, StaffRole.BIOLOGIST).open(message_id)
    assert receptionist is not None
    assert biologist is not None
    assert receptionist.result.patient.birth_name == "Fautedefrappe"
    assert receptionist.result.orders == ()
    assert not receptionist.shows_results
    assert len(biologist.result.orders) == 1
    assert biologist.shows_results


def test_staff_see_only_messages_of_systems_serving_their_sites(world: IntakeWorld) -> None:
    message_id = queue_one(world)
    elsewhere = other_site(world)
    with transaction(world.runtime.sessions) as session:
        queue = staff_queue(
            world, session, StaffRole.BIOLOGIST, site=elsewhere, require_step_up=lambda: None
        )
        assert queue.list() == []
        assert queue.open(message_id) is None
        with pytest.raises(QueueError):
            queue.discard(message_id, "wrong-laboratory")
        with pytest.raises(QueueError):
            queue.attach(message_id, world.patients["traits"])
    with world.runtime.sessions() as session:
        assert session.scalar(select(ResultMessage.status)) == "queued"
        reads = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "result:message:read")
        )
    assert reads == 0
    assert message_key_count(world) == 1


class NoStepUpError(Exception):
    pass


def refuse_step_up() -> None:
    raise NoStepUpError


@pytest.mark.parametrize("backend", ["sqlite"])
def test_discarding_needs_a_reason_and_a_step_up(world: IntakeWorld, backend: str) -> None:
    message_id = queue_one(world)
    with transaction(world.runtime.sessions) as session:
        queue = staff_queue(world, session, StaffRole.BIOLOGIST, require_step_up=refuse_step_up)
        for reason in ("", "because", "WRONG-LABORATORY"):
            with pytest.raises(DiscardReasonError):
                queue.discard(message_id, reason)
        with pytest.raises(NoStepUpError):
            queue.discard(message_id, "wrong-laboratory")
        # A staff queue built without a step-up check refuses (fail closed).
        with pytest.raises(AccessDeniedError):
            staff_queue(world, session, StaffRole.BIOLOGIST).discard(message_id, "duplicate")
    assert message_key_count(world) == 1
    assert discard_events(world) == []
    with transaction(world.runtime.sessions) as session:
        staff_queue(world, session, StaffRole.RECEPTIONIST, require_step_up=lambda: None).discard(
            message_id, "wrong-laboratory"
        )
    assert message_key_count(world) == 0
    assert discard_events(world) == ["result-queue:wrong-laboratory"]
