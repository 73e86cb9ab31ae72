"""Appointment reminders, the day before: one email and, when a phone is known, one SMS.

Which appointments
    Status ``booked`` (at a site or at home), starting on the target day in Paris
    (``labvault reminders send`` defaults to tomorrow), not reminded yet
    (``reminder_sent_at`` NULL). Held, cancelled, checked-in, done and missed ones are not.

To whom
    The email goes to an account, whose holder knows its security phrase, when there is one:
    1. the patient account linked to the record (``accounts.patient_id``), if active;
    2. else, for a minor, a guardian's active account acting for them
       (``account_dependents``, not revoked): the one that booked, else the oldest link.
       The right ends at 18, checked from the record's birth date as everywhere else;
    3. else the email address on the patient's record, with no phrase (nobody's phrase may
       go to an address whose holder did not choose it: see ``accounts.linking``).
    The SMS goes to the phone on the patient's record. It carries the phrase only when the
    record's own account is the one reminded (the phone and the account are the same
    person's); a dependent's phone may be anyone's in the family. The phrase is marked
    ``masked``: a sender that keeps a copy (the development file outbox) never stores it.
    With no SMS sender (``LABVAULT_SMS_SENDER=none:``) no SMS is sent and no phone counts.

What it says
    See :mod:`labvault.reminders.messages`: when, where, "your preparation instructions are
    in your account", a link, the phrase. The exams are never opened.

Exactly once, crash or not
    Each appointment is handled in its own transaction: it is claimed by setting
    ``reminder_sent_at`` where it is still NULL (the row lock makes a concurrent run skip
    it), the contacts are opened through :class:`PatientRepository` (audited in that
    transaction), the messages are sent, and the transaction commits with the mark and the
    ``appointment:reminder:send`` event. If nothing could be sent, the mark is undone (the
    reads stay audited) and a later run tries again. A crash between a send and its commit
    can repeat that one reminder, never skip one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
import zoneinfo
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from labvault.accounts.linking import is_minor
from labvault.accounts.models import Account, AccountDependent, AccountKind, AccountStatus
from labvault.appointments.models import Appointment, AppointmentKind, AppointmentStatus
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.db import transaction, utcnow
from labvault.core.logging import get_logger
from labvault.core.mail import Mailer, MailerError, OutgoingMessage
from labvault.organizations.models import Site
from labvault.patients.scope import SYSTEM_ACCESS
from labvault.patients.services import SUBJECT_TYPE, PatientRecord, PatientRepository
from labvault.reminders.messages import (
    ACCOUNT_APPOINTMENTS_PATH,
    EMAIL_CATEGORY,
    SMS_CATEGORY,
    ReminderContent,
    email_subject,
    email_text,
    sms_text,
)
from labvault.reminders.sms import OutgoingSms, SmsError, SmsSender

__all__ = [
    "JOB",
    "PURPOSE",
    "ReminderJob",
    "ReminderOutcome",
    "ReminderReport",
    "ReminderResult",
    "default_day",
    "paris_day_bounds",
]

JOB = "job:reminders"
PURPOSE = "appointment-reminder"
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
ACCOUNTS_TABLE = "accounts"
ACCOUNT_SUBJECT = "account"

_log = get_logger("labvault.reminders")


class ReminderOutcome(enum.StrEnum):
    SENT = "sent"
    SKIPPED = "skipped"
    """Reminded meanwhile, or no longer booked: nothing done."""
    UNREACHABLE = "unreachable"
    """Neither an email address nor a phone: not marked, tried again on the next run."""
    FAILED = "failed"
    """Every channel failed: not marked, tried again on the next run."""


@dataclasses.dataclass(frozen=True, slots=True)
class ReminderResult:
    """What happened to one appointment, and by which channels it was reminded."""

    outcome: ReminderOutcome
    emailed: bool = False
    texted: bool = False


@dataclasses.dataclass(slots=True)
class ReminderReport:
    """Counts only: the job's output and logs name nobody."""

    due: int = 0
    sent: int = 0
    emails: int = 0
    sms: int = 0
    skipped: int = 0
    unreachable: int = 0
    failed: int = 0

    def add(self, other: ReminderReport) -> None:
        for item in dataclasses.fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))


def paris_day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The UTC instants at which the Paris day ``day`` starts and the next one starts
    (23 or 25 hours apart on the days clocks change)."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=PARIS)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=PARIS)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def default_day(now: dt.datetime) -> dt.date:
    """Tomorrow, in Paris."""
    return now.astimezone(PARIS).date() + dt.timedelta(days=1)


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class _Recipient:
    email: str | None
    phrase: str | None
    phone: str | None
    sms_phrase: str | None


class ReminderJob:
    """Sends the reminders of one organization's day, as ``SystemPrincipal("job:reminders")``."""

    def __init__(
        self,
        provider: KeyProvider,
        mailer: Mailer,
        sms: SmsSender | None,
        *,
        public_url: str,
        context: AuditContext | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._provider = provider
        self._mailer = mailer
        self._sms = sms
        self._link = public_url.rstrip("/") + ACCOUNT_APPOINTMENTS_PATH
        self._context = context
        self._clock = clock
        self.principal = SystemPrincipal(JOB)

    def due(self, session: Session, tenant_id: uuid.UUID, day: dt.date) -> list[uuid.UUID]:
        """The appointments to remind on ``day``, earliest first; those of records no list
        may show (honey records) are left out before anything is opened."""
        start, end = paris_day_bounds(day)
        rows = list(
            session.execute(
                select(Appointment.id, Appointment.patient_id)
                .where(
                    Appointment.tenant_id == tenant_id,
                    Appointment.status == AppointmentStatus.BOOKED.value,
                    Appointment.kind.in_([k.value for k in AppointmentKind]),
                    Appointment.reminder_sent_at.is_(None),
                    Appointment.starts_at >= start,
                    Appointment.starts_at < end,
                )
                .order_by(Appointment.starts_at, Appointment.id)
            )
        )
        keyring = TenantKeyring(
            session, self._provider, tenant_id, self.principal, context=self._context
        )
        shown = set(keyring.visible(SUBJECT_TYPE, [row.patient_id for row in rows]))
        return [row.id for row in rows if row.patient_id in shown]

    def run(
        self,
        sessions: sessionmaker[Session],
        tenant_id: uuid.UUID,
        day: dt.date,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> ReminderReport:
        """Remind every appointment due on ``day``, each in its own transaction."""
        with sessions() as session:
            due = self.due(session, tenant_id, day)
        report = ReminderReport(due=len(due))
        for appointment_id in due:
            with transaction(sessions) as session:
                result = self.send_one(session, tenant_id, appointment_id, day)
            report.emails += result.emailed
            report.sms += result.texted
            if result.outcome is ReminderOutcome.SENT:
                report.sent += 1
            elif result.outcome is ReminderOutcome.SKIPPED:
                report.skipped += 1
            elif result.outcome is ReminderOutcome.UNREACHABLE:
                report.unreachable += 1
            else:
                report.failed += 1
            if on_progress is not None:
                on_progress(1)
        return report

    def send_one(
        self, session: Session, tenant_id: uuid.UUID, appointment_id: uuid.UUID, day: dt.date
    ) -> ReminderResult:
        """Remind one appointment in the caller's transaction (see the module)."""
        start, end = paris_day_bounds(day)
        now = self._clock()
        claimed = session.execute(
            update(Appointment)
            .where(
                Appointment.tenant_id == tenant_id,
                Appointment.id == appointment_id,
                Appointment.status == AppointmentStatus.BOOKED.value,
                Appointment.reminder_sent_at.is_(None),
                Appointment.starts_at >= start,
                Appointment.starts_at < end,
            )
            .values(reminder_sent_at=now)
            .execution_options(synchronize_session=False)
        )
        if not claimed.rowcount:  # type: ignore[attr-defined]
            return ReminderResult(ReminderOutcome.SKIPPED)
        row = session.execute(
            select(
                Appointment.patient_id,
                Appointment.starts_at,
                Appointment.ends_at,
                Appointment.kind,
                Appointment.booked_by_account_id,
                Site.name,
                Site.address_line,
                Site.postal_code,
                Site.city,
            )
            .join(
                Site, (Site.tenant_id == Appointment.tenant_id) & (Site.id == Appointment.site_id)
            )
            .where(Appointment.tenant_id == tenant_id, Appointment.id == appointment_id)
        ).one()
        keyring = TenantKeyring(
            session, self._provider, tenant_id, self.principal, context=self._context
        )
        repository = PatientRepository(session, keyring, SYSTEM_ACCESS)
        recipient = self._recipient(
            session, keyring, repository, row.patient_id, row.booked_by_account_id, now
        )
        content = ReminderContent(
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            home=row.kind == AppointmentKind.HOME.value,
            site_name=row.name,
            site_address=f"{row.address_line}, {row.postal_code} {row.city}",
            link=self._link,
            phrase=recipient.phrase,
        )
        emailed = texted = False
        if recipient.email is not None:
            emailed = self._send_email(recipient.email, content, appointment_id)
        if recipient.phone is not None and self._sms is not None:
            texted = self._send_sms(
                recipient.phone, dataclasses.replace(content, phrase=recipient.sms_phrase),
                appointment_id,
            )  # fmt: skip
        if not (emailed or texted):
            session.execute(
                update(Appointment)
                .where(Appointment.tenant_id == tenant_id, Appointment.id == appointment_id)
                .values(reminder_sent_at=None)
                .execution_options(synchronize_session=False)
            )
            if recipient.email is None and (recipient.phone is None or self._sms is None):
                return ReminderResult(ReminderOutcome.UNREACHABLE)
            return ReminderResult(ReminderOutcome.FAILED)
        keyring.audit.record(
            AuditAction.APPOINTMENT_REMINDER_SEND,
            tenant_id=tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=row.patient_id,
            purpose=PURPOSE,
        )
        return ReminderResult(ReminderOutcome.SENT, emailed=emailed, texted=texted)

    def _recipient(
        self,
        session: Session,
        keyring: TenantKeyring,
        repository: PatientRepository,
        patient_id: uuid.UUID,
        booked_by: uuid.UUID | None,
        now: dt.datetime,
    ) -> _Recipient:
        record = repository.get(patient_id, purpose=PURPOSE)
        if record is None:
            return _Recipient(None, None, None, None)
        own = session.scalar(
            select(Account).where(
                Account.tenant_id == keyring.tenant_id,
                Account.kind == AccountKind.PATIENT.value,
                Account.status == AccountStatus.ACTIVE.value,
                Account.patient_id == patient_id,
            )
        )
        if own is not None:
            email, phrase = self._open_account(keyring, own)
            return _Recipient(email, phrase, record.phone, phrase)
        guardian = self._guardian(session, keyring.tenant_id, record, booked_by, now)
        if guardian is not None:
            email, phrase = self._open_account(keyring, guardian)
            return _Recipient(email, phrase, record.phone, None)
        return _Recipient(record.email, None, record.phone, None)

    def _guardian(
        self,
        session: Session,
        tenant_id: uuid.UUID,
        record: PatientRecord,
        booked_by: uuid.UUID | None,
        now: dt.datetime,
    ) -> Account | None:
        """The guardian's account to remind for a minor: the one that booked, else the
        oldest link still in force."""
        if record.birth_date is None or not is_minor(
            record.birth_date, now.astimezone(PARIS).date()
        ):
            return None
        guardians = list(
            session.scalars(
                select(Account)
                .join(
                    AccountDependent,
                    (AccountDependent.tenant_id == Account.tenant_id)
                    & (AccountDependent.account_id == Account.id),
                )
                .where(
                    Account.tenant_id == tenant_id,
                    Account.kind == AccountKind.PATIENT.value,
                    Account.status == AccountStatus.ACTIVE.value,
                    AccountDependent.patient_id == record.id,
                    AccountDependent.revoked_at.is_(None),
                )
                .order_by(AccountDependent.created_at, AccountDependent.id)
            )
        )
        for account in guardians:
            if account.id == booked_by:
                return account
        return guardians[0] if guardians else None

    def _open_account(self, keyring: TenantKeyring, account: Account) -> tuple[str, str | None]:
        """The account's email address and security phrase (an audited account read)."""
        key = keyring.open_data_keys(ACCOUNT_SUBJECT, [account.id], PURPOSE)[account.id]
        opened = key.open_row(
            ACCOUNTS_TABLE,
            account.id,
            {"email": account.email, "security_phrase": account.security_phrase},
        )
        email, phrase = opened["email"], opened["security_phrase"]
        return (email or b"").decode(), phrase.decode() if phrase else None

    def _send_email(
        self, address: str, content: ReminderContent, appointment_id: uuid.UUID
    ) -> bool:
        try:
            self._mailer.send(
                OutgoingMessage(
                    to=address,
                    subject=email_subject(content),
                    text=email_text(content),
                    category=EMAIL_CATEGORY,
                )
            )
        except (MailerError, ValueError) as exc:
            # ValueError: an address on file that is no longer accepted; the error names no value.
            _log.warning(
                "reminder.email_failed", appointment_id=str(appointment_id), reason=str(exc)
            )
            return False
        return True

    def _send_sms(self, phone: str, content: ReminderContent, appointment_id: uuid.UUID) -> bool:
        if self._sms is None:
            return False
        masked = (content.phrase,) if content.phrase and content.phrase.strip() else ()
        try:
            self._sms.send(
                OutgoingSms(to=phone, text=sms_text(content), category=SMS_CATEGORY, masked=masked)
            )
        except (SmsError, ValueError) as exc:
            _log.warning("reminder.sms_failed", appointment_id=str(appointment_id), reason=str(exc))
            return False
        return True
