"""Result intake into the database, SQLite and PostgreSQL: attach by INS or traits,
deduplication (also of two copies delivered at once), unknown and disabled senders refused
with nothing written, a correction updating the same order, sensitive exams given by
phone, every uncertain case queued (never attached), no health value at rest, and the
audit events of each step."""

from __future__ import annotations

import datetime as dt
import random
import threading
import uuid

import pytest
from results_intake_world import (
    COMMENT,
    GLUCOSE,
    HEMOGLOBIN,
    PDF,
    IntakeWorld,
    build_intake_world,
    oru,
)
from sqlalchemy import func, select

from helpers import leaked, pg_dump, sqlite_files
from labvault.appointments.models import Appointment
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.patients.nir import synthetic_nir
from labvault.patients.services import PatientRepository, SealedItem
from labvault.results import content
from labvault.results.clients import ServiceClientRegistry
from labvault.results.content import Delivery, ObservationContent, ReportContent
from labvault.results.hl7 import Hl7ErrorCode, parse_oru
from labvault.results.intake import ResultStore, ResultWriter, StoredResultIntake
from labvault.results.mllp import IntakeStatus
from labvault.results.models import (
    MESSAGE_SUBJECT_TYPE,
    ResultMessage,
    ResultObservation,
    ResultOrder,
    ResultReport,
)


@pytest.fixture
def world(runtime: Runtime) -> IntakeWorld:
    return build_intake_world(runtime)


@pytest.fixture
def intake(world: IntakeWorld) -> StoredResultIntake:
    return StoredResultIntake(world.runtime.sessions, world.runtime.key_provider, world.tenant)


def receive(intake: StoredResultIntake, text: str) -> IntakeStatus:
    outcome = intake.receive(parse_oru(text), peer="127.0.0.1:1")
    return outcome.status


def count(world: IntakeWorld, model: type[object]) -> int:
    with world.runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)  # type: ignore[call-overload]


def messages(world: IntakeWorld) -> list[ResultMessage]:
    with world.runtime.sessions() as session:
        return list(session.scalars(select(ResultMessage).order_by(ResultMessage.received_at)))


def actions(world: IntakeWorld) -> list[str]:
    with world.runtime.sessions() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.occurred_us)))


def open_report(
    world: IntakeWorld, patient: uuid.UUID
) -> tuple[ReportContent, list[ObservationContent], ResultReport]:
    with transaction(world.runtime.sessions) as session:
        report = session.scalars(
            select(ResultReport).where(ResultReport.patient_id == patient)
        ).one()
        rows = list(
            session.scalars(
                select(ResultObservation)
                .where(ResultObservation.report_id == report.id)
                .order_by(ResultObservation.position)
            )
        )
        repo = PatientRepository(session, world.keyring(session))
        opened = repo.open_for(
            "result",
            [
                SealedItem(
                    patient,
                    "result_reports",
                    report.id,
                    {"content": report.content, "pdf": report.pdf},
                )
            ]
            + [
                SealedItem(patient, "result_observations", r.id, {"content": r.content})
                for r in rows
            ],
            purpose="test",
        )
        report_content = content.load(ReportContent, opened[report.id]["content"])
        observations = [content.load(ObservationContent, opened[r.id]["content"]) for r in rows]
        if report.pdf is not None:
            assert opened[report.id]["pdf"] == PDF
        return report_content, observations, report


def test_an_ins_match_is_attached_sealed_and_audited(
    world: IntakeWorld, intake: StoredResultIntake
) -> None:
    assert receive(intake, oru(world.people["ins"], pdf=PDF)) is IntakeStatus.ACCEPTED
    (message,) = messages(world)
    assert message.status == "attached"
    assert message.patient_id == world.patients["ins"]
    assert message.content is None
    assert message.queue_reason is None
    report, observations, row = open_report(world, world.patients["ins"])
    assert row.status == "to-validate"
    assert row.version == 1
    assert row.lis_status == "F"
    assert report.delivery is Delivery.ONLINE
    assert report.title == "Bilan standard"
    assert [str(o.number) for o in observations] == [GLUCOSE, HEMOGLOBIN]
    assert observations[0].code.system == "http://loinc.org"
    assert row.pdf is not None
    with world.runtime.sessions() as session:
        order = session.scalars(select(ResultOrder)).one()
        assert order.site_id == world.site
        assert order.client_id == world.client
        # The patient's one appointment at the client's site on the collection day.
        assert order.appointment_id == world.appointment
        events = session.execute(
            select(AuditEvent.action, AuditEvent.actor_id, AuditEvent.target_id, AuditEvent.purpose)
        ).all()
    sender = f"service:{world.client}"
    by_action = {action: (actor, target, purpose) for action, actor, target, purpose in events}
    assert by_action["result:message:receive"][0] == sender
    assert by_action["result:report:create"] == (sender, world.patients["ins"], "result-intake")
    # The candidate's traits were read as the sender, for matching.
    assert ("patient:record:read", sender) in {(a, actor) for a, actor, _, _ in events}
    assert by_action["patient:search:nir"][0] == sender


def book(world: IntakeWorld, name: str, *, days: int = 0, status: str = "booked") -> None:
    """An appointment of ``name`` at the sender's site, ``days`` from now."""
    with transaction(world.runtime.sessions) as session:
        session.add(
            Appointment(
                id=uuid.uuid4(),
                tenant_id=world.tenant,
                patient_id=world.patients[name],
                site_id=world.site,
                starts_at=utcnow().replace(microsecond=0) + dt.timedelta(days=days),
                status=status,
            )
        )


def test_traits_match_a_record_without_ins(world: IntakeWorld, intake: StoredResultIntake) -> None:
    book(world, "traits", days=-3, status="done")
    assert receive(intake, oru(world.people["traits"])) is IntakeStatus.ACCEPTED
    (message,) = messages(world)
    assert message.status == "attached"
    assert message.patient_id == world.patients["traits"]


@pytest.mark.parametrize(
    ("days", "status"),
    [(None, None), (-45, "done"), (2, "cancelled")],
    ids=["no-appointment", "out-of-the-window", "cancelled"],
)
def test_a_traits_match_outside_the_sender_s_care_is_queued(
    world: IntakeWorld, intake: StoredResultIntake, days: int | None, status: str | None
) -> None:
    """Traits are no secret: a sender attaching by traits alone to a record it has no care
    relationship with would gain read access to it (and learn that the person is a
    patient). The answer is the same AA; a person looks at the queue."""
    if days is not None and status is not None:
        book(world, "traits", days=days, status=status)
    assert receive(intake, oru(world.people["traits"])) is IntakeStatus.ACCEPTED
    (message,) = messages(world)
    assert message.status == "queued"
    assert message.queue_reason == "traits-only"
    assert message.patient_id is None
    assert count(world, ResultOrder) == count(world, ResultReport) == 0


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown-ins", "no-candidate"),
        ("no-identity", "no-identifier"),
        ("several", "several-candidates"),
        ("traits-differ", "traits-differ"),
        ("bad-ins", "invalid-identifier"),
    ],
)
def test_every_uncertain_case_is_queued_sealed_never_attached(
    world: IntakeWorld, intake: StoredResultIntake, case: str, reason: str
) -> None:
    person = world.people["ins"]
    if case == "unknown-ins":
        # An INS no record has, with traits no record has either.
        stranger = person.model_copy(
            update={
                "nir": synthetic_nir(
                    random.Random(77),
                    sex=1 if person.sex.value == "M" else 2,
                    birth_date=person.birth_date,
                ),
                "birth_name": "Inconnu",
            }
        )
        text = oru(stranger)
    elif case == "no-identity":
        text = oru(person, ins=False).replace(f"|{person.birth_date:%Y%m%d}|", "||")
    elif case == "several":
        text = oru(world.people["twin_a"], ins=False)
    elif case == "traits-differ":
        text = oru(person, birth_name="Autrenom")
    else:
        text = oru(person).replace(person.nir.compact, "1" * 15)  # type: ignore[union-attr]
    assert receive(intake, text) is IntakeStatus.ACCEPTED  # AA: accepted for a person
    (message,) = messages(world)
    assert message.status == "queued"
    assert message.queue_reason == reason
    assert message.patient_id is None
    assert message.content is not None
    assert count(world, ResultOrder) == count(world, ResultReport) == 0
    with world.runtime.sessions() as session:
        key = session.scalars(
            select(DataKeyRecord).where(
                DataKeyRecord.subject_type == MESSAGE_SUBJECT_TYPE,
                DataKeyRecord.subject_id == message.id,
            )
        ).one()
        assert key is not None
    assert "result:message:queue" in actions(world)


def test_a_duplicate_changes_nothing(world: IntakeWorld, intake: StoredResultIntake) -> None:
    text = oru(world.people["ins"])
    assert receive(intake, text) is IntakeStatus.ACCEPTED
    assert receive(intake, text) is IntakeStatus.DUPLICATE
    assert len(messages(world)) == 1
    assert count(world, ResultObservation) == 2
    _, _, report = open_report(world, world.patients["ins"])
    assert report.version == 1
    assert actions(world).count("result:message:duplicate") == 1


def test_copies_delivered_at_once_are_stored_once(world: IntakeWorld) -> None:
    text = oru(world.people["ins"])
    barrier = threading.Barrier(4)
    outcomes: list[IntakeStatus] = []
    lock = threading.Lock()

    def deliver() -> None:
        # One intake per thread: no shared lock, the database decides.
        own = StoredResultIntake(
            world.runtime.sessions, world.runtime.key_provider, world.tenant, serialize=False
        )
        barrier.wait(timeout=10)
        try:
            status = receive(own, text)
        except Exception:  # SQLite may refuse a concurrent writer: the sender retries
            status = receive(own, text)
        with lock:
            outcomes.append(status)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(o.value for o in outcomes) == ["accepted"] + ["duplicate"] * 3
    assert len(messages(world)) == 1
    assert count(world, ResultReport) == 1
    assert count(world, ResultObservation) == 2


@pytest.mark.parametrize("disabled", [False, True])
def test_an_unknown_or_disabled_sender_is_refused_and_nothing_written(
    world: IntakeWorld, intake: StoredResultIntake, disabled: bool
) -> None:
    if disabled:
        with transaction(world.runtime.sessions) as session:
            keyring = world.keyring(session)
            ServiceClientRegistry(session, world.tenant, keyring.audit).disable(str(world.client))
        text = oru(world.people["ins"])
    else:
        text = oru(world.people["ins"], sending=("SIL-PIRATE", "AILLEURS"))
    outcome = intake.receive(parse_oru(text), peer="127.0.0.1:1")
    assert outcome.status is IntakeStatus.REJECTED
    assert outcome.error is not None
    assert outcome.error.code is Hl7ErrorCode.UNKNOWN_KEY
    assert messages(world) == []
    assert count(world, ResultReport) == 0
    with world.runtime.sessions() as session:
        refused = session.execute(
            select(AuditEvent.outcome, AuditEvent.purpose).where(
                AuditEvent.action == "result:message:reject"
            )
        ).all()
    assert refused == [("denied", "disabled-sender" if disabled else "unknown-sender")]


def test_a_correction_updates_the_same_order(
    world: IntakeWorld, intake: StoredResultIntake
) -> None:
    person = world.people["ins"]
    assert receive(intake, oru(person, status="P", glucose="6.1")) is IntakeStatus.ACCEPTED
    with transaction(world.runtime.sessions) as session:
        report = session.scalars(select(ResultReport)).one()
        report.status = "validated"
        report.validated_at = utcnow()
    assert receive(intake, oru(person, control_id="MSG0002", status="C")) is IntakeStatus.ACCEPTED
    assert count(world, ResultOrder) == count(world, ResultReport) == 1
    assert count(world, ResultObservation) == 2
    _, observations, report = open_report(world, world.patients["ins"])
    assert report.version == 2
    assert report.status == "to-validate"
    assert report.lis_status == "C"
    assert report.validated_at is None
    assert str(observations[0].number) == GLUCOSE
    assert "result:report:update" in actions(world)


def test_a_sensitive_exam_is_given_by_phone(world: IntakeWorld, intake: StoredResultIntake) -> None:
    assert receive(intake, oru(world.people["ins"], hiv=True)) is IntakeStatus.ACCEPTED
    report, _, _ = open_report(world, world.patients["ins"])
    assert report.delivery is Delivery.PHONE
    assert [c.code for c in report.sensitive_codes] == ["56888-1"]


def test_a_sensitive_exam_sent_as_the_alternate_code_is_given_by_phone(
    world: IntakeWorld, intake: StoredResultIntake
) -> None:
    """French LIS send their local code first and LOINC as the alternate (CWE 4-6)."""
    text = oru(world.people["ins"], hiv=True).replace(
        "56888-1^VIH 1+2 Ac^LN", "VIHDEP^VIH^L^56888-1^HIV 1+2 Ab^LN"
    )
    assert "VIHDEP" in text
    assert receive(intake, text) is IntakeStatus.ACCEPTED
    report, observations, _ = open_report(world, world.patients["ins"])
    assert report.delivery is Delivery.PHONE
    assert [c.code for c in report.sensitive_codes] == ["56888-1"]
    hiv = observations[2].code
    assert (hiv.code, hiv.system) == ("VIHDEP", "L")
    assert [(a.code, a.system) for a in hiv.alternates] == [("56888-1", "http://loinc.org")]


def test_an_order_number_of_another_patient_is_queued(
    world: IntakeWorld, intake: StoredResultIntake
) -> None:
    book(world, "traits")
    assert receive(intake, oru(world.people["ins"])) is IntakeStatus.ACCEPTED
    assert (
        receive(intake, oru(world.people["traits"], control_id="MSG0002")) is IntakeStatus.ACCEPTED
    )
    queued = [m for m in messages(world) if m.status == "queued"]
    assert [m.queue_reason for m in queued] == ["order-of-another-patient"]
    assert count(world, ResultOrder) == 1


def test_no_health_value_at_rest(
    world: IntakeWorld, intake: StoredResultIntake, settings: Settings, backend: str
) -> None:
    person, queued = world.people["ins"], world.people["traits"]
    receive(intake, oru(person, glucose="7.77", hiv=True, pdf=PDF))
    receive(intake, oru(queued, control_id="MSG0002", birth_name="Queuedname", order="DOS789"))
    assert {m.status for m in messages(world)} == {"attached", "queued"}
    values = [
        "7.77",
        HEMOGLOBIN,
        COMMENT,
        "Glucose",
        "Hémoglobine",
        "Bilan standard",
        "Négatif",
        "VIH 1+2",
        "synthetic report",
        person.birth_name,
        person.nir.compact,  # type: ignore[union-attr]
        "Queuedname",
        queued.first_names.split()[0],
        "DOS456",
        "DOS789",
        "MSG0001",
        "10003456789",
    ]
    if backend == "sqlite":
        blob = b"".join(path.read_bytes() for path in sqlite_files(settings.sqlalchemy_url))
    else:
        blob = pg_dump(settings.sqlalchemy_url)
    assert leaked(blob, values) == []


def test_the_loser_of_a_race_answers_duplicate(
    world: IntakeWorld, intake: StoredResultIntake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first look finds nothing (the winner had not committed yet): the insert fails
    on the unique constraint, inside a SAVEPOINT, and the answer is still "duplicate"."""
    text = oru(world.people["ins"])
    assert receive(intake, text) is IntakeStatus.ACCEPTED
    looks: list[int] = []
    original = ResultStore._existing

    def blind_first(self: ResultStore, client_id: uuid.UUID, digest: bytes) -> uuid.UUID | None:
        looks.append(1)
        return None if len(looks) == 1 else original(self, client_id, digest)

    monkeypatch.setattr(ResultStore, "_existing", blind_first)
    assert receive(intake, text) is IntakeStatus.DUPLICATE
    assert len(looks) == 2
    assert len(messages(world)) == 1
    assert count(world, ResultObservation) == 2
    assert actions(world).count("result:message:duplicate") == 1


def test_a_failure_while_storing_leaves_nothing_and_the_retry_works(
    world: IntakeWorld, intake: StoredResultIntake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction per message: a failure after the message row was inserted (in its
    SAVEPOINT) rolls everything back, so the sender's retry is not taken for a duplicate."""
    text = oru(world.people["ins"])

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("storage failed")

    with monkeypatch.context() as patch:
        patch.setattr(ResultWriter, "write", broken)
        with pytest.raises(RuntimeError):
            receive(intake, text)
    assert messages(world) == []
    assert "result:message:receive" not in actions(world)
    assert receive(intake, text) is IntakeStatus.ACCEPTED
    assert count(world, ResultReport) == 1
