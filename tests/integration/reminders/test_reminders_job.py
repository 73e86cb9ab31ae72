"""Reminders through a real SMTP server (aiosmtpd on a loopback port) and the SMS outbox:
the right recipients, the security phrase, nothing personal or medical, exactly once, on
SQLite and PostgreSQL, and from the command line."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select
from typer.testing import CliRunner

from helpers import CHEAP_HASHER
from labvault.accounts.models import AccountDependent, AccountKind, AccountStatus
from labvault.accounts.services import AccountService
from labvault.appointments.models import Appointment
from labvault.catalog.models import Exam
from labvault.cli import CliError
from labvault.cli import app as cli
from labvault.core.access.policies import Interaction
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail import SmtpMailer
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization
from labvault.patients.nir import Nir
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository, SealedItem
from labvault.reminders.services import ReminderJob, ReminderReport, default_day
from labvault.reminders.sms import MASK, FileSmsSender, MemorySmsSender

pytestmark = pytest.mark.smtp

SENDER = "labvault <no-reply@labvault.localhost>"
PASSWORD = "une phrase de passe assez longue"
BUILDER = Principal(PrincipalKind.SYSTEM, "system:test-world")
DAY = dt.date(2026, 12, 1)  # a Tuesday
NOW = dt.datetime(2026, 11, 30, 17, 0, tzinfo=dt.UTC)  # the evening before, in Paris
ORIGIN = "https://labo.example.fr"
ADULT_PHRASE = "tournesol du matin"
GUARDIAN_PHRASE = "mer calme du soir"
EXAMS = (("VIHS", "Sérologie VIH"), ("GLYJ", "Glycémie à jeun"))
runner = CliRunner()


def _nir(sex: str, born: dt.date, department: str, order: str) -> str:
    body = f"{sex}{born.year % 100:02d}{born.month:02d}{department}123{order}"
    return body + f"{97 - int(body) % 97:02d}"


# Everything personal or medical the world holds: none of it may be in a message.
PEOPLE: dict[str, dict[str, Any]] = {
    "adult": {
        "birth_name": "Durandeau",
        "first_names": "Camille Aurore",
        "birth_date": dt.date(1985, 5, 17),
        "sex": "F",
        "email": "camille.dossier@example.org",
        "phone": "06 12 34 56 78",
        "address_line": "8 impasse des Glycines",
        "postal_code": "69003",
        "city": "Villeurbanne",
    },
    "child": {
        "birth_name": "Berthelot",
        "first_names": "Noé",
        "birth_date": dt.date(2018, 3, 9),
        "sex": "M",
        "phone": "+33 6 98 76 54 32",
    },
    "record_only": {
        "birth_name": "Lemaréchal",
        "first_names": "Josiane",
        "birth_date": dt.date(1950, 11, 2),
        "sex": "F",
        "email": "josiane.lm@example.org",
    },
    "elsewhere": {
        "birth_name": "Quintard",
        "first_names": "Basile",
        "birth_date": dt.date(1979, 8, 30),
        "sex": "M",
        "email": "basile.q@example.org",
        "phone": "0611223344",
    },
    "nobody": {
        "birth_name": "Sansnouvelles",
        "first_names": "Odile",
        "birth_date": dt.date(1962, 1, 21),
        "sex": "F",
    },
}
PEOPLE["adult"]["nir"] = _nir("2", PEOPLE["adult"]["birth_date"], "69", "045")
PEOPLE["child"]["nir"] = _nir("1", PEOPLE["child"]["birth_date"], "69", "112")
PEOPLE["record_only"]["nir"] = _nir("2", PEOPLE["record_only"]["birth_date"], "75", "007")
HOME_ADDRESS = {
    "line": "14 rue des Lilas",
    "postal_code": "69100",
    "city": "Villeurbanne",
    "instructions": "Digicode 4821",
}


def _paris(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    """A Paris wall-clock time on ``day`` (winter: UTC+1), in UTC."""
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=dt.UTC) - dt.timedelta(hours=1)


@dataclass
class World:
    tenant: uuid.UUID
    patients: dict[str, uuid.UUID]
    appointments: dict[str, uuid.UUID]
    accounts: dict[str, uuid.UUID]

    def forbidden(self) -> list[str]:
        """Values no reminder may contain (I5)."""
        values: list[str] = []
        for person in PEOPLE.values():
            born: dt.date = person["birth_date"]
            values += [person["birth_name"], *person["first_names"].split()]
            values += [born.isoformat(), born.strftime("%d/%m/%Y"), born.strftime("%d%m%Y")]
            if "nir" in person:
                nir = Nir.parse(person["nir"])
                values += [nir.compact, nir.formatted(), nir.compact[:13]]
            values += [person[key] for key in ("address_line", "city") if key in person]
        values += [HOME_ADDRESS["line"], HOME_ADDRESS["instructions"], "Lilas", "Digicode"]
        for code, label in EXAMS:
            values += [code, label, label.split()[0]]
        values += ["jeûn", "VIH", "Glycémie"]
        values += [str(i) for i in self.patients.values()]
        return values


def _register(session: Any, runtime: Runtime, tenant_id: uuid.UUID) -> dict[str, uuid.UUID]:
    keyring = TenantKeyring(session, runtime.key_provider, tenant_id, SystemPrincipal("test-world"))
    repository = PatientRepository(session, keyring)
    names = list(PEOPLE)
    result = repository.register_many([PatientInput(**PEOPLE[name]) for name in names])
    assert len(result.created) == len(names)
    return {name: result.created[position] for position, name in enumerate(names)}


def _accounts(
    session: Any, runtime: Runtime, tenant_id: uuid.UUID, patients: dict[str, uuid.UUID]
) -> dict[str, uuid.UUID]:
    service = AccountService(
        session,
        tenant_id=tenant_id,
        provider=runtime.key_provider,
        mailer=runtime.mailer,
        limiter=runtime.rate_limiter,
        settings=runtime.settings,
        hasher=CHEAP_HASHER,
    )
    adult = service.provision(
        "camille.compte@example.org",
        Secret(PASSWORD),
        kind=AccountKind.PATIENT,
        security_phrase=ADULT_PHRASE,
        by=BUILDER,
    )
    adult.patient_id = patients["adult"]
    guardian = service.provision(
        "parent.compte@example.org",
        Secret(PASSWORD),
        kind=AccountKind.PATIENT,
        security_phrase=GUARDIAN_PHRASE,
        by=BUILDER,
    )
    other_guardian = service.provision(
        "autre.parent@example.org",
        Secret(PASSWORD),
        kind=AccountKind.PATIENT,
        security_phrase="autre phrase",
        by=BUILDER,
    )
    # The other parent was linked first; the one who booked is reminded.
    for account, created in ((other_guardian, NOW - dt.timedelta(days=9)), (guardian, NOW)):
        session.add(
            AccountDependent(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                account_id=account.id,
                patient_id=patients["child"],
                relationship="parent",
                verified_by="lab-desk",
                created_at=created,
            )
        )
    # "elsewhere" has a closing account: it is not reminded through it.
    closing = service.provision(
        "basile.compte@example.org",
        Secret(PASSWORD),
        kind=AccountKind.PATIENT,
        security_phrase="ne doit pas servir",
        by=BUILDER,
    )
    closing.patient_id = patients["elsewhere"]
    closing.status = AccountStatus.CLOSING.value
    session.flush()
    return {"adult": adult.id, "guardian": guardian.id, "other_guardian": other_guardian.id}


def build_world(runtime: Runtime) -> World:
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Labo Rappels")
        tenant_id = organization.id
        site = add_site(
            session,
            organization,
            name="Labo Bellecour",
            address_line="3 place Bellecour",
            postal_code="69002",
            city="Lyon",
            opening_hours={},
            sampling_capacity_per_hour=0,
        )
        exam_ids = []
        for code, label in EXAMS:
            exam = Exam(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                code=code,
                label=label,
                sampling_minutes=10,
                fasting_hours=12 if code == "GLYJ" else 0,
                preparation_text="À jeun depuis 12 heures.",
            )
            session.add(exam)
            exam_ids.append(str(exam.id))
        session.flush()
        patients = _register(session, runtime, tenant_id)
        accounts = _accounts(session, runtime, tenant_id, patients)
        keyring = TenantKeyring(
            session, runtime.key_provider, tenant_id, SystemPrincipal("test-world")
        )
        repository = PatientRepository(session, keyring)
        plan = {
            # name: (patient, start, end, status, kind, booked by)
            "adult": ("adult", _paris(8, 30), _paris(8, 40), "booked", "site", accounts["adult"]),
            "child_home": (
                "child", _paris(10), _paris(12), "booked", "home", accounts["guardian"],
            ),
            "record_only": ("record_only", _paris(17, 50), None, "booked", "site", None),
            "nobody": ("nobody", _paris(9), None, "booked", "site", None),
            "elsewhere_cancelled": ("elsewhere", _paris(9, 10), None, "cancelled", "site", None),
            "elsewhere_held": ("elsewhere", _paris(9, 20), None, "held", "site", None),
            "elsewhere_checked_in": ("elsewhere", _paris(9, 30), None, "checked_in", "site", None),
            # Just outside the Paris day on both sides.
            "elsewhere_before": (
                "elsewhere", _paris(23, 50, DAY - dt.timedelta(days=1)), None, "booked", "site",
                None,
            ),
            "elsewhere_after": (
                "elsewhere", _paris(0, 0, DAY + dt.timedelta(days=1)), None, "booked", "site",
                None,
            ),
        }  # fmt: skip
        appointments: dict[str, uuid.UUID] = {}
        for name, (who, start, end, status, kind, booked_by) in plan.items():
            appointment_id = uuid.uuid4()
            patient_id = patients[who]
            values: dict[str, bytes | None] = {"exams": json.dumps({"exam_ids": exam_ids}).encode()}
            if kind == "home":
                values["home_address"] = json.dumps(HOME_ADDRESS).encode()
            sealed = repository.seal_for(
                patient_id,
                "appointment",
                Interaction.CREATE,
                SealedItem(patient_id, "appointments", appointment_id, values),
                purpose="booking",
            )
            assert sealed is not None
            session.add(
                Appointment(
                    id=appointment_id,
                    tenant_id=tenant_id,
                    patient_id=patient_id,
                    site_id=site.id,
                    starts_at=start,
                    ends_at=end,
                    status=status,
                    kind=kind,
                    exams=sealed["exams"],
                    home_address=sealed.get("home_address"),
                    booked_by_account_id=booked_by,
                    hold_expires_at=NOW + dt.timedelta(minutes=5) if status == "held" else None,
                )
            )
            appointments[name] = appointment_id
    return World(tenant_id, patients, appointments, accounts)


# -- a real SMTP server -------------------------------------------------------------------


@dataclass
class Recorder:
    """Keeps every message received; refuses DATA while ``refuse`` is set."""

    refuse: bool = False
    envelopes: list[Envelope] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse:
            return "554 5.6.0 refused by the test"
        self.envelopes.append(envelope)
        return "250 OK: queued"

    def messages(self) -> list[tuple[list[str], bytes, EmailMessage]]:
        found = []
        for envelope in self.envelopes:
            raw = envelope.original_content or b""
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            found.append((list(envelope.rcpt_tos), raw, parsed))
        return found


@dataclass
class SmtpServer:
    port: int
    recorder: Recorder

    def mailer(self) -> SmtpMailer:
        return SmtpMailer.from_url(f"smtp://127.0.0.1:{self.port}?tls=none", SENDER, retry_delay=0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    recorder = Recorder()
    port = _free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer(port, recorder)
    finally:
        controller.stop()


@pytest.fixture
def world(runtime: Runtime) -> World:
    return build_world(runtime)


def _job(runtime: Runtime, mailer: Any, sms: Any) -> ReminderJob:
    return ReminderJob(
        runtime.key_provider, mailer, sms, public_url=ORIGIN + "/", clock=lambda: NOW
    )


def _run(runtime: Runtime, world: World, mailer: Any, sms: Any) -> ReminderReport:
    return _job(runtime, mailer, sms).run(runtime.tenant_sessions(world.tenant), world.tenant, DAY)


def _body(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def _leaks(text: str, world: World) -> list[str]:
    lowered = text.lower()
    return [value for value in world.forbidden() if value.lower() in lowered]


def _sent_marks(runtime: Runtime, world: World) -> dict[str, bool]:
    with runtime.tenant_sessions(world.tenant)() as session:
        rows = dict(session.execute(select(Appointment.id, Appointment.reminder_sent_at)).all())
    return {name: rows[i] is not None for name, i in world.appointments.items()}


def _reminder_events(runtime: Runtime) -> list[AuditEvent]:
    with runtime.admin_sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == "appointment:reminder:send")
            )
        )


def test_reminders_reach_the_right_people_with_nothing_personal_exactly_once(
    runtime: Runtime, world: World, smtp: SmtpServer, tmp_path: Path
) -> None:
    outbox = FileSmsSender(tmp_path / "sms" / "outbox.jsonl")
    report = _run(runtime, world, smtp.mailer(), outbox)
    assert report == ReminderReport(
        due=4, sent=3, emails=3, sms=2, skipped=0, unreachable=1, failed=0
    )

    received = {rcpt[0]: (raw, parsed) for rcpt, raw, parsed in smtp.recorder.messages()}
    # The record's own account, the guardian who booked, the record's address (no account).
    assert sorted(received) == [
        "camille.compte@example.org",
        "josiane.lm@example.org",
        "parent.compte@example.org",
    ]
    adult = _body(received["camille.compte@example.org"][1])
    assert adult.startswith("Bonjour,\n")
    assert "le mardi 1er décembre 2026 à 8 h 30 (heure de Paris)" in adult
    assert "Labo Bellecour, 3 place Bellecour, 69002 Lyon" in adult
    assert "Vos instructions de préparation sont dans votre compte" in adult
    assert f"{ORIGIN}/compte/rendez-vous" in adult
    assert f"« {ADULT_PHRASE} »" in adult
    child = _body(received["parent.compte@example.org"][1])
    assert "à votre domicile" in child
    assert "entre 10 h 00 et 12 h 00" in child
    assert f"« {GUARDIAN_PHRASE} »" in child
    assert ADULT_PHRASE not in child
    assert "autre phrase" not in child
    record_only = _body(received["josiane.lm@example.org"][1])
    assert "à 17 h 50" in record_only
    assert "phrase de sécurité" not in record_only, "nobody's phrase goes to a bare address"
    for raw, parsed in received.values():
        # The whole message as sent, but its To: line (the recipient's own address).
        wire = "\n".join(
            line for line in raw.decode("ascii").splitlines() if not line.startswith("To:")
        )
        text = wire + _body(parsed) + str(parsed["Subject"])
        assert _leaks(text, world) == []
        assert "ne doit pas servir" not in text
        assert parsed["Subject"] == "Rappel : votre rendez-vous du 1er décembre 2026"

    sms = outbox.messages()
    assert sorted(m["to"] for m in sms) == ["+33612345678", "+33698765432"]
    by_phone = {m["to"]: m for m in sms}
    # The outbox file is a kept copy: the security phrase is masked in it (DESIGN I1).
    assert ADULT_PHRASE not in by_phone["+33612345678"]["text"]
    assert f"« {MASK} »" in by_phone["+33612345678"]["text"]
    assert ADULT_PHRASE not in outbox.path.read_text("utf-8")
    home_sms = by_phone["+33698765432"]["text"]
    assert "à domicile" in home_sms
    assert "Vos instructions de préparation" in home_sms
    assert GUARDIAN_PHRASE not in home_sms, "a dependent's phone may be anyone's"
    for message in sms:
        assert _leaks(json.dumps(message, ensure_ascii=False), world) == []
        assert message["category"] == "appointment:reminder"

    marks = _sent_marks(runtime, world)
    assert {name for name, sent in marks.items() if sent} == {"adult", "child_home", "record_only"}
    events = _reminder_events(runtime)
    assert sorted(e.target_id for e in events) == sorted(  # type: ignore[type-var]
        world.patients[name] for name in ("adult", "child", "record_only")
    )
    assert {(e.actor_id, e.target_type, e.purpose) for e in events} == {
        ("system:job:reminders", "patient", "appointment-reminder")
    }

    # Idempotent: a second run sends nothing new (the unreachable one is simply tried again).
    again = _run(runtime, world, smtp.mailer(), outbox)
    assert again == ReminderReport(due=1, unreachable=1)
    assert len(smtp.recorder.envelopes) == 3
    assert len(outbox.messages()) == 2
    assert len(_reminder_events(runtime)) == 3


def test_the_gateway_gets_the_phrase_marked_masked_and_none_sends_no_sms(
    runtime: Runtime, world: World, smtp: SmtpServer
) -> None:
    gateway = MemorySmsSender()
    report = _run(runtime, world, smtp.mailer(), gateway)
    assert report.sms == 2
    adult = next(m for m in gateway.sent if m.to == "+33612345678")
    assert f"« {ADULT_PHRASE} »" in adult.text, "what a gateway would deliver"
    assert adult.masked == (ADULT_PHRASE,)
    assert ADULT_PHRASE not in adult.kept_text()
    home = next(m for m in gateway.sent if m.to == "+33698765432")
    assert home.masked == ()


def test_with_no_sms_sender_reminders_go_by_email_only(
    runtime: Runtime, world: World, smtp: SmtpServer
) -> None:
    report = _run(runtime, world, smtp.mailer(), None)
    assert report == ReminderReport(
        due=4, sent=3, emails=3, sms=0, skipped=0, unreachable=1, failed=0
    )


def test_a_refused_message_is_not_marked_and_is_sent_by_the_next_run(
    runtime: Runtime, world: World, smtp: SmtpServer
) -> None:
    smtp.recorder.refuse = True
    sms = MemorySmsSender(fail=True)
    failed = _run(runtime, world, smtp.mailer(), sms)
    assert failed == ReminderReport(due=4, failed=3, unreachable=1)
    assert not any(_sent_marks(runtime, world).values())
    assert _reminder_events(runtime) == []

    # Only the SMS gateway works: that is a reminder, marked, never repeated by email.
    smtp.recorder.refuse = True
    partly = _run(runtime, world, smtp.mailer(), MemorySmsSender())
    assert partly.sent == 2
    assert partly.sms == 2
    assert partly.emails == 0
    assert partly.failed == 1

    smtp.recorder.refuse = False
    rest = _run(runtime, world, smtp.mailer(), MemorySmsSender())
    assert rest == ReminderReport(due=2, sent=1, emails=1, unreachable=1)
    assert [r[0] for r, _, _ in smtp.recorder.messages()] == ["josiane.lm@example.org"]


def test_a_grown_up_dependent_is_not_reminded_through_the_guardian(
    runtime: Runtime, world: World, smtp: SmtpServer
) -> None:
    """The guardian's right ends at 18 (checked from the birth date): a job run on the day
    the child is 18 no longer writes to the parent."""
    eighteen = dt.datetime(2036, 3, 9, 12, 0, tzinfo=dt.UTC)
    job = ReminderJob(
        runtime.key_provider, smtp.mailer(), MemorySmsSender(), public_url=ORIGIN,
        clock=lambda: eighteen,
    )  # fmt: skip
    job.run(runtime.tenant_sessions(world.tenant), world.tenant, DAY)
    recipients = [r[0] for r, _, _ in smtp.recorder.messages()]
    assert "parent.compte@example.org" not in recipients
    assert "camille.compte@example.org" in recipients


# -- from the command line -----------------------------------------------------------------


def test_the_cli_sends_tomorrows_reminders_once_and_prints_counts_only(
    cli_env: Settings, runtime: Runtime, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABVAULT_PUBLIC_URL", ORIGIN)
    sent = runner.invoke(cli, ["reminders", "send", "--day", DAY.isoformat()])
    assert sent.exit_code == 0, sent.output
    assert "3 reminder(s) sent for 2026-12-01 (3 email(s), 2 SMS); 1 without email or phone" in (
        " ".join(sent.output.split())
    )
    for secret in ["camille.compte@example.org", *map(str, world.appointments.values())]:
        assert secret not in sent.output
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    mails = mailer.messages()
    assert sorted(str(m["To"]) for m in mails) == [
        "camille.compte@example.org",
        "josiane.lm@example.org",
        "parent.compte@example.org",
    ]
    for mail in mails:
        assert _leaks(_body(mail), world) == []
    outbox = cli_env.resolved_data_dir / "sms" / "outbox.jsonl"
    assert len(outbox.read_text("utf-8").splitlines()) == 2
    assert ADULT_PHRASE not in outbox.read_text("utf-8"), "the phrase is masked in the file"

    again = runner.invoke(cli, ["reminders", "send", "--day", DAY.isoformat()])
    assert again.exit_code == 0, again.output
    assert "0 reminder(s) sent" in again.output
    assert len(mailer.messages()) == 3

    tomorrow = runner.invoke(cli, ["reminders", "send"])
    assert tomorrow.exit_code == 0, tomorrow.output
    assert f"sent for {default_day(utcnow()).isoformat()}" in tomorrow.output

    verified = runner.invoke(cli, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output


def test_the_cli_with_no_sms_sender_sends_email_only_and_writes_no_outbox(
    cli_env: Settings, runtime: Runtime, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABVAULT_PUBLIC_URL", ORIGIN)
    monkeypatch.setenv("LABVAULT_SMS_SENDER", "none:")
    sent = runner.invoke(cli, ["reminders", "send", "--day", DAY.isoformat()])
    assert sent.exit_code == 0, sent.output
    text = " ".join(sent.output.split())
    assert "SMS disabled (LABVAULT_SMS_SENDER=none:)" in text
    assert "3 reminder(s) sent for 2026-12-01 (3 email(s), 0 SMS)" in text
    assert not (cli_env.resolved_data_dir / "sms").exists()


@pytest.mark.parametrize("day", ["0", "2026-13-01", "01/12/2026", "demain", "2026-12-1"])
def test_the_cli_refuses_a_malformed_day(cli_env: Settings, runtime: Runtime, day: str) -> None:
    result = runner.invoke(cli, ["reminders", "send", "--day", day])
    assert isinstance(result.exception, CliError)
    assert "--day must be a date written YYYY-MM-DD" in str(result.exception)


def test_the_cli_refuses_an_unknown_sms_transport(
    cli_env: Settings, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABVAULT_SMS_SENDER", "gateway://sms.example.org")
    result = runner.invoke(cli, ["reminders", "send"])
    assert result.exit_code != 0
    assert "LABVAULT_SMS_SENDER" in str(result.exception)


def test_the_cli_through_smtp_exits_1_when_a_reminder_could_not_be_sent(
    cli_env: Settings,
    runtime: Runtime,
    world: World,
    smtp: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server refuses every message: the reminders with a phone go by SMS (and are
    done), the one with an email address only is left for the next run, and cron sees 1."""
    monkeypatch.setenv("LABVAULT_MAILER", f"smtp://127.0.0.1:{smtp.port}?tls=none")
    smtp.recorder.refuse = True
    refused = runner.invoke(cli, ["reminders", "send", "--day", DAY.isoformat()])
    assert refused.exit_code == 1, refused.output
    text = " ".join(refused.output.split())
    assert "2 reminder(s) sent for 2026-12-01 (0 email(s), 2 SMS)" in text
    assert "1 failed" in text
    assert "josiane" not in refused.output

    smtp.recorder.refuse = False
    retried = runner.invoke(cli, ["reminders", "send", "--day", DAY.isoformat()])
    assert retried.exit_code == 0, retried.output
    assert "1 reminder(s) sent for 2026-12-01 (1 email(s), 0 SMS)" in " ".join(
        retried.output.split()
    )
    assert [r[0] for r, _, _ in smtp.recorder.messages()] == ["josiane.lm@example.org"]


def test_a_reminder_listed_by_two_runs_is_sent_by_one(
    runtime: Runtime, world: World, smtp: SmtpServer
) -> None:
    """Two jobs that both listed an appointment (overlapping cron runs): the claim in the
    transaction lets one send; the other skips it, and a cancelled one is skipped too."""
    job = _job(runtime, smtp.mailer(), MemorySmsSender())
    sessions = runtime.tenant_sessions(world.tenant)
    with sessions() as session:
        listed = job.due(session, world.tenant, DAY)
    assert world.appointments["adult"] in listed
    outcomes = []
    for _ in range(2):
        with transaction(sessions) as session:
            result = job.send_one(session, world.tenant, world.appointments["adult"], DAY)
            outcomes.append(result.outcome.value)
    assert outcomes == ["sent", "skipped"]
    with transaction(sessions) as session:
        cancelled = job.send_one(
            session, world.tenant, world.appointments["elsewhere_cancelled"], DAY
        )
    assert cancelled.outcome.value == "skipped"
    assert len(smtp.recorder.envelopes) == 1
