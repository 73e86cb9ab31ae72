"""The biologist's workflow (``labvault.results.review``) on both backends: the queue in
scope only, a report with previous values, validation with step-up and version check,
release (patient emailed, prescriber's document dropped, 10-year hold), the phone path for
sensitive results; refusals write nothing and are audited; emails carry no health data."""

from __future__ import annotations

import datetime as dt
import json
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select

from caller_world import CallerWorld, alpha_settings, build_caller_world
from helpers import leaked, pg_dump, sqlite_files
from labvault.accounts.stepup import StepUpRequired
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import audited_transaction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.patients.models import LegalHold
from labvault.patients.scope import staff_scope
from labvault.results.content import Delivery, ReportContent, load
from labvault.results.delivery import FileResultDelivery, PrescriberDocument
from labvault.results.models import ReportStatus, ResultReport
from labvault.results.notify import ResultNotifier
from labvault.results.review import (
    HOLD_PRINCIPAL,
    ReportNotFoundError,
    ReviewRefusedError,
    ReviewService,
    VersionChangedError,
    WrongStateError,
)
from labvault.results.review import (
    Outcome as ReviewOutcome,
)
from results_world import (
    CONCLUSION,
    PRESCRIBER,
    TITLE,
    add_report,
    glucose,
    hemoglobin,
    hiv_positive,
)

ORGANIZATION = "Labo Alpha"
T = TypeVar("T")


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    return build_caller_world(alpha)


def report_of(cw: CallerWorld, patient: str, *observations: object, **kwargs: object) -> uuid.UUID:
    return add_report(
        cw.runtime,
        cw.world.sessions,
        cw.world.tenant,
        cw.world.patients[patient],
        list(observations) or [hemoglobin(), glucose()],  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def drop_dir(cw: CallerWorld) -> Path:
    return cw.runtime.settings.resolved_result_drop_dir


def run(
    cw: CallerWorld,
    role: str,
    action: Callable[[ReviewService], T],
    *,
    step_up: Callable[[], None] = lambda: None,
) -> T:
    """``action`` on a review service of the world's ``role`` staff member, in one audited
    unit of work (a refusal rolls back and keeps its events)."""
    runtime = cw.runtime
    with audited_transaction(cw.world.sessions) as session:
        principal = Principal(PrincipalKind.STAFF, str(cw.accounts[role]), role=role)
        keyring = TenantKeyring(session, runtime.key_provider, cw.world.tenant, principal)
        scope = staff_scope(session, principal, cw.world.tenant, cw.world.staff[role])
        service = ReviewService(
            session,
            keyring,
            scope,
            provider=runtime.key_provider,
            staff_id=cw.world.staff[role],
            require_step_up=step_up,
            delivery=FileResultDelivery(drop_dir(cw)),
            notifier=ResultNotifier(
                session,
                runtime.key_provider,
                cw.world.tenant,
                mailer=runtime.mailer,
                organization=ORGANIZATION,
                public_url=runtime.settings.public_url,
            ),
            organization=ORGANIZATION,
        )
        return action(service)


def row(cw: CallerWorld, report_id: uuid.UUID) -> ResultReport:
    with cw.world.sessions() as session:
        found = session.get(ResultReport, report_id)
        assert found is not None
        session.expunge(found)
        return found


def events(cw: CallerWorld, action: AuditAction) -> list[AuditEvent]:
    with cw.world.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def mails(cw: CallerWorld) -> list[str]:
    mailer = cw.runtime.mailer
    assert isinstance(mailer, FileMailer)
    return [message.as_string() for message in mailer.messages()]


def content_of(cw: CallerWorld, report: ResultReport) -> ReportContent:
    with transaction(cw.world.sessions) as session:
        from labvault.patients.services import PatientRepository, SealedItem
        from results_world import SYSTEM

        keyring = TenantKeyring(session, cw.runtime.key_provider, cw.world.tenant, SYSTEM)
        opened = PatientRepository(session, keyring).open_for(
            "result",
            [
                SealedItem(
                    report.patient_id, "result_reports", report.id, {"content": report.content}
                )
            ],
            purpose="test",
        )
        return load(ReportContent, opened[report.id]["content"])


# --- the queue ---------------------------------------------------------------------------------


def test_the_queue_lists_reports_to_validate_in_scope_oldest_first(cw: CallerWorld) -> None:
    now = utcnow()
    newer = report_of(cw, "today", received_at=now - dt.timedelta(hours=1))
    older = report_of(cw, "in_20_days", received_at=now - dt.timedelta(hours=5))
    report_of(cw, "other_site")
    report_of(cw, "45_days_ago")
    report_of(cw, "today", status=ReportStatus.RELEASED)
    awaiting_call = report_of(
        cw,
        "tomorrow",
        hiv_positive(),
        delivery=Delivery.PHONE,
        status=ReportStatus.VALIDATED,
        received_at=now - dt.timedelta(days=2),
    )
    items = run(cw, "biologist", lambda s: s.queue())
    assert [i.report_id for i in items] == [awaiting_call, older, newer]
    first = items[0]
    assert first.phone
    assert first.status is ReportStatus.VALIDATED
    assert items[1].title == TITLE
    assert not items[1].phone
    person = cw.world.inputs["in_20_days"]
    assert person.birth_name in items[1].patient_name
    assert items[1].birth_date == person.birth_date
    assert len(events(cw, AuditAction.RESULT_REVIEW_LIST)) == 1


@pytest.mark.parametrize("role", ["receptionist", "sampler", "organization_admin"])
def test_roles_without_result_update_get_not_found(cw: CallerWorld, role: str) -> None:
    report_id = report_of(cw, "today")
    with pytest.raises(ReportNotFoundError):
        run(cw, role, lambda s: s.queue())
    with pytest.raises(ReportNotFoundError):
        run(cw, role, lambda s: s.report(report_id))
    with pytest.raises(ReportNotFoundError):
        run(cw, role, lambda s: s.validate(report_id, 1))
    assert row(cw, report_id).status == ReportStatus.TO_VALIDATE.value


def test_a_report_out_of_scope_or_unknown_is_not_found(cw: CallerWorld) -> None:
    for report_id in (report_of(cw, "other_site"), report_of(cw, "45_days_ago"), uuid.uuid4()):
        with pytest.raises(ReportNotFoundError):
            run(cw, "biologist", lambda s, r=report_id: s.report(r))  # type: ignore[misc]
        with pytest.raises(ReportNotFoundError):
            run(cw, "biologist", lambda s, r=report_id: s.validate(r, 1))  # type: ignore[misc]


# --- a report ----------------------------------------------------------------------------------


def test_a_report_shows_ranges_flags_in_words_and_previous_values(cw: CallerWorld) -> None:
    now = utcnow()
    report_of(
        cw,
        "today",
        hemoglobin("11.8", ()),
        status=ReportStatus.RELEASED,
        received_at=now - dt.timedelta(days=40),
    )
    report_of(
        cw,
        "today",
        hemoglobin("11.2", ("L",)),
        status=ReportStatus.RELEASED,
        received_at=now - dt.timedelta(days=10),
    )
    report_id = report_of(cw, "today", hemoglobin("10.4"), glucose())
    view = run(cw, "biologist", lambda s: s.report(report_id))
    assert view.version == 1
    assert view.status is ReportStatus.TO_VALIDATE
    assert view.order.prescriber == PRESCRIBER
    first, second = view.observations
    assert (first.value, first.unit, first.reference_range) == ("10,4", "g/dL", "12.0-16.0")
    assert first.flag_words == ("bas",)
    assert first.previous is not None
    assert first.previous.value == "11,2"
    assert second.flag_words == ("élevé",)
    assert second.previous is None
    assert len(events(cw, AuditAction.RESULT_REVIEW_READ)) == 1


# --- validation --------------------------------------------------------------------------------


def test_validating_an_online_report_releases_notifies_delivers_and_holds(
    cw: CallerWorld,
) -> None:
    report_id = report_of(cw, "today")
    outcome: ReviewOutcome = run(
        cw, "biologist", lambda s: s.validate(report_id, 1, conclusion=CONCLUSION)
    )
    assert outcome.released
    assert outcome.notified == 1
    assert outcome.delivered
    assert outcome.hold_placed
    stored = row(cw, report_id)
    assert stored.status == ReportStatus.RELEASED.value
    assert stored.validated_by == cw.world.staff["biologist"]
    assert stored.released_by == cw.world.staff["biologist"]
    assert stored.validated_at
    assert stored.released_at
    assert stored.notified_at
    assert stored.delivered_at
    assert content_of(cw, stored).conclusion == CONCLUSION
    # The legal hold: 10 years, placed by the named system principal.
    with cw.world.sessions() as session:
        hold = session.scalars(
            select(LegalHold).where(LegalHold.patient_id == cw.world.patients["today"])
        ).one()
        assert hold.reason == "lab-report-retention"
        assert hold.placed_by == HOLD_PRINCIPAL.id
        assert hold.until is not None
        assert hold.until.year - dt.date.today().year == 10
    for action in (
        AuditAction.RESULT_REPORT_VALIDATE,
        AuditAction.RESULT_REPORT_RELEASE,
        AuditAction.RESULT_REPORT_NOTIFY,
        AuditAction.RESULT_REPORT_DELIVER,
        AuditAction.PATIENT_LEGAL_HOLD_PLACE,
    ):
        found = events(cw, action)
        assert [e.target_id for e in found] == [cw.world.patients["today"]], action
    # The prescriber's document: one FHIR R4 bundle, 0600 in a 0700 directory.
    delivered = FileResultDelivery(drop_dir(cw)).delivered()
    assert [p.name for p in delivered] == [f"{report_id}-v1.fhir.json"]
    assert stat.S_IMODE(delivered[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(drop_dir(cw).stat().st_mode) == 0o700
    bundle = json.loads(delivered[0].read_text())
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
    kinds = [entry["resource"]["resourceType"] for entry in bundle["entry"]]
    assert kinds == ["Patient", "Practitioner", "DiagnosticReport", "Observation", "Observation"]
    assert bundle["entry"][2]["resource"]["conclusion"] == CONCLUSION


def test_a_second_validation_is_refused_and_changes_nothing(cw: CallerWorld) -> None:
    report_id = report_of(cw, "today")
    run(cw, "biologist", lambda s: s.validate(report_id, 1))
    before = row(cw, report_id)
    with pytest.raises(WrongStateError):
        run(cw, "biologist", lambda s: s.validate(report_id, 1))
    after = row(cw, report_id)
    assert (after.status, after.updated_at, after.content) == (
        before.status,
        before.updated_at,
        before.content,
    )
    assert len(mails(cw)) == 1
    assert len(FileResultDelivery(drop_dir(cw)).delivered()) == 1


def test_a_validation_needs_a_fresh_step_up_and_writes_nothing_without(cw: CallerWorld) -> None:
    report_id = report_of(cw, "today")

    def stale() -> None:
        raise StepUpRequired

    with pytest.raises(StepUpRequired):
        run(cw, "biologist", lambda s: s.validate(report_id, 1), step_up=stale)
    stored = row(cw, report_id)
    assert stored.status == ReportStatus.TO_VALIDATE.value
    assert stored.validated_at is None
    assert mails(cw) == []
    assert FileResultDelivery(drop_dir(cw)).delivered() == []


def test_a_correction_arrived_meanwhile_refuses_the_validation(cw: CallerWorld) -> None:
    report_id = report_of(cw, "today", version=2)
    with pytest.raises(VersionChangedError) as refused:
        run(cw, "biologist", lambda s: s.validate(report_id, 1, conclusion=CONCLUSION))
    assert "changé" in str(refused.value)
    stored = row(cw, report_id)
    assert stored.status == ReportStatus.TO_VALIDATE.value
    assert stored.validated_by is None
    assert content_of(cw, stored).conclusion == ""
    with cw.world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(LegalHold)) == 0
    denied = events(cw, AuditAction.RESULT_REPORT_REFUSED)
    assert [(e.outcome, e.target_id) for e in denied] == [("denied", cw.world.patients["today"])]
    assert events(cw, AuditAction.RESULT_REPORT_VALIDATE) == []


def test_a_longer_hold_already_running_is_kept_alone(cw: CallerWorld) -> None:
    from labvault.patients.holds import place_hold
    from labvault.patients.models import LegalHoldReason
    from results_world import SYSTEM

    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(session, cw.runtime.key_provider, cw.world.tenant, SYSTEM)
        place_hold(session, keyring, cw.world.patients["today"], LegalHoldReason.LITIGATION)
    report_id = report_of(cw, "today")
    outcome = run(cw, "biologist", lambda s: s.validate(report_id, 1))
    assert outcome.released
    assert not outcome.hold_placed
    with cw.world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(LegalHold)) == 1


# --- results given by phone ---------------------------------------------------------------------


def test_a_sensitive_report_waits_for_the_phone_call_then_is_released(cw: CallerWorld) -> None:
    report_id = report_of(cw, "today", hiv_positive(), delivery=Delivery.PHONE)
    outcome = run(cw, "biologist", lambda s: s.validate(report_id, 1))
    assert outcome.status is ReportStatus.VALIDATED
    assert not outcome.released
    assert row(cw, report_id).released_at is None
    assert mails(cw) == []
    assert FileResultDelivery(drop_dir(cw)).delivered() == []
    queued = run(cw, "biologist", lambda s: s.queue())
    assert [(i.report_id, i.phone) for i in queued] == [(report_id, True)]
    note = "Appel de Mme la patiente le matin, résultat expliqué"
    with pytest.raises(ValueError, match="Indiquez"):
        run(cw, "biologist", lambda s: s.record_phone_call(report_id, "   "))
    released = run(cw, "biologist", lambda s: s.record_phone_call(report_id, note))
    assert released.released
    assert released.notified == 1
    assert released.delivered
    stored = row(cw, report_id)
    assert stored.status == ReportStatus.RELEASED.value
    assert content_of(cw, stored).phone_note == note
    assert len(events(cw, AuditAction.RESULT_REPORT_PHONE)) == 1
    assert run(cw, "biologist", lambda s: s.queue()) == []


def test_an_online_report_has_no_phone_call_to_record(cw: CallerWorld) -> None:
    report_id = report_of(cw, "today", status=ReportStatus.VALIDATED)
    with pytest.raises(WrongStateError):
        run(cw, "biologist", lambda s: s.record_phone_call(report_id, "appel"))
    assert row(cw, report_id).status == ReportStatus.VALIDATED.value


# --- what leaves the database ---------------------------------------------------------------------


def test_the_email_carries_no_health_or_personal_value(cw: CallerWorld) -> None:
    report_id = report_of(cw, "today", hemoglobin("10.4"), glucose("1.32"), hiv_positive())
    run(cw, "biologist", lambda s: s.validate(report_id, 1, conclusion=CONCLUSION))
    sent = mails(cw)
    assert len(sent) == 1
    person = cw.world.inputs["today"]
    assert person.nir is not None
    seeded = [
        TITLE,
        CONCLUSION,
        "Hémoglobine",
        "Glycémie",
        "VIH",
        "Positif",
        "10.4",
        "10,4",
        "1.32",
        "718-7",
        "56888-1",
        "g/dL",
        "Alpha Centre",  # the site: the organization's name only
        PRESCRIBER.name,
        person.birth_name,
        person.first_given_name,
        person.nir.compact,
        person.birth_date.isoformat(),
    ]
    import email
    import email.policy

    message = email.message_from_string(sent[0], policy=email.policy.default)
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    text = str(body.get_content()) + str(message["Subject"])
    assert "Un nouveau document est disponible" in text
    assert ORGANIZATION in text
    leaked = [value for value in seeded if value.lower() in (text + sent[0]).lower()]
    assert leaked == []


def test_delivery_is_idempotent_per_report_version(cw: CallerWorld) -> None:
    report_id = report_of(cw, "today")
    run(cw, "biologist", lambda s: s.validate(report_id, 1))
    delivery = FileResultDelivery(drop_dir(cw))
    (path,) = delivery.delivered()
    first = path.read_bytes()
    # The same report and version again (with other content): the first file stays.
    receipt = delivery.deliver(_fake_document(report_id))
    assert receipt.already_delivered
    assert receipt.reference == path.name
    assert path.read_bytes() == first
    assert len(delivery.delivered()) == 1


def _fake_document(report_id: uuid.UUID) -> PrescriberDocument:
    from labvault.patients.ins import Sex
    from labvault.patients.services import PatientRecord
    from labvault.results.content import OrderDetails

    now = utcnow()
    patient = PatientRecord(
        id=uuid.uuid4(),
        fields=frozenset(),
        birth_name="X",
        used_name=None,
        first_names="Y",
        birth_date=dt.date(1980, 1, 1),
        sex=Sex.FEMALE,
        birth_place_code=None,
        ins_number=None,
        ins_oid=None,
        identity_status=None,
        email=None,
        phone=None,
        address_line=None,
        postal_code=None,
        city=None,
        created_at=now,
    )
    return PrescriberDocument(
        report_id=report_id,
        version=1,
        organization=ORGANIZATION,
        patient=patient,
        order=OrderDetails(),
        report=ReportContent(),
        observations=(),
        validated_at=now,
        released_at=now,
    )


def test_what_validation_writes_is_ciphertext_at_rest(cw: CallerWorld, backend: str) -> None:
    """I1: the conclusion and the phone note written at validation are sealed like the rest
    (the raw SQLite files, or pg_dump as a backup takes it, hold none of the values)."""
    note = "Appel Ulysse Tartempion confirmé"
    online = report_of(cw, "today")
    phone = report_of(cw, "tomorrow", hiv_positive(), delivery=Delivery.PHONE)
    run(cw, "biologist", lambda s: s.validate(online, 1, conclusion=CONCLUSION))
    run(cw, "biologist", lambda s: s.validate(phone, 1))
    run(cw, "biologist", lambda s: s.record_phone_call(phone, note))
    seeded = [CONCLUSION, note, TITLE, "Hémoglobine", "Positif confirmé", PRESCRIBER.name]
    url = cw.runtime.settings.sqlalchemy_url
    if backend == "sqlite":
        cw.runtime.engine.dispose()
        blob = b"".join(path.read_bytes() for path in sqlite_files(url))
    else:
        blob = pg_dump(url)
    assert CONCLUSION.encode() not in blob
    assert leaked(blob, seeded) == []


def test_a_patient_without_an_account_gets_no_email_but_the_report_is_released(
    cw: CallerWorld,
) -> None:
    report_id = report_of(cw, "in_20_days")  # no account acts for this record
    outcome = run(cw, "biologist", lambda s: s.validate(report_id, 1))
    assert outcome.released
    assert outcome.notified == 0
    assert outcome.delivered
    assert row(cw, report_id).notified_at is None
    assert mails(cw) == []
    assert events(cw, AuditAction.RESULT_REPORT_NOTIFY) == []


@pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True
)
def test_two_validations_at_once_release_the_report_once(cw: CallerWorld) -> None:
    """PostgreSQL runs both for real at once: the row lock makes the second one see the
    first one's release and refuse (one email, one file, one hold)."""
    report_id = report_of(cw, "today")
    barrier = threading.Barrier(2, timeout=30)
    answers: list[object] = []

    def attempt() -> None:
        def act(service: ReviewService) -> ReviewOutcome:
            barrier.wait()  # both transactions are open before either validates
            return service.validate(report_id, 1)

        try:
            answers.append(run(cw, "biologist", act))
        except ReviewRefusedError as refused:
            answers.append(refused)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    released = [a for a in answers if isinstance(a, ReviewOutcome)]
    refused = [a for a in answers if isinstance(a, ReviewRefusedError)]
    assert len(released) == 1
    assert len(refused) == 1
    assert row(cw, report_id).status == ReportStatus.RELEASED.value
    assert len(mails(cw)) == 1
    assert len(FileResultDelivery(drop_dir(cw)).delivered()) == 1
    assert len(events(cw, AuditAction.RESULT_REPORT_VALIDATE)) == 1
    with cw.world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(LegalHold)) == 1


def test_every_purpose_of_the_review_has_a_french_label_in_the_access_history() -> None:
    from labvault.patients.history import PURPOSE_LABELS
    from labvault.results import notify, review

    shown = {
        review.READ_PURPOSE,
        review.VALIDATE_PURPOSE,
        review.DELIVERY_PURPOSE,
        notify.PURPOSE,
        "legal-hold:lab-report-retention",
    }
    assert shown <= set(PURPOSE_LABELS)


def test_a_failed_delivery_leaves_the_release_and_the_cli_delivers_it_later(
    cw: CallerWorld, cli_env: Settings
) -> None:
    from typer.testing import CliRunner

    from labvault.cli import app

    blocked = drop_dir(cw)
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_bytes(b"")  # a file where the directory should be: the drop fails
    report_id = report_of(cw, "today")
    outcome = run(cw, "biologist", lambda s: s.validate(report_id, 1))
    assert outcome.released
    assert not outcome.delivered
    assert row(cw, report_id).delivered_at is None
    assert events(cw, AuditAction.RESULT_REPORT_DELIVER) == []

    blocked.unlink()
    result = CliRunner().invoke(app, ["results", "deliver", "--organization", ORGANIZATION])
    assert result.exit_code == 0, result.output
    assert "1 report(s) delivered, 0 failed" in result.output
    assert row(cw, report_id).delivered_at is not None
    (path,) = FileResultDelivery(drop_dir(cw)).delivered()
    assert path.name == f"{report_id}-v1.fhir.json"
    (event,) = events(cw, AuditAction.RESULT_REPORT_DELIVER)
    assert event.actor_id == "system:cli:results-deliver"
    again = CliRunner().invoke(app, ["results", "deliver", "--organization", ORGANIZATION])
    assert "0 report(s) delivered, 0 failed" in again.output
