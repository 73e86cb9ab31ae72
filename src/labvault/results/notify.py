"""The patient's email when a report is released: "a new document is available, log in".

What it may say is fixed here, and only here (invariant I5): the organization's name, a
link to the login page and the recipient's own security phrase (anti-phishing, as every
genuine message of labvault). Never an exam, a value, a site, a name or a NIR: the text is
built from :class:`Notice`, which cannot carry them.

To whom: the patient account linked to the record, and the accounts of guardians who act
for a minor today (``account_acts_for``). A record with no account gets no email (the
prescriber still receives the report); the address on the record is not used, since
nobody proved it is the patient's to receive health news. Accounts are opened as the named
system principal ``results:notify`` (each opening audited).
"""

from __future__ import annotations

import uuid
import zoneinfo
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.accounts.linking import account_acts_for
from labvault.accounts.models import Account, AccountDependent, AccountKind, AccountStatus
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.db import utcnow
from labvault.core.logging import get_logger
from labvault.core.mail import Mailer, MailerError, OutgoingMessage
from labvault.patients.services import SUBJECT_TYPE

__all__ = [
    "EMAIL_CATEGORY",
    "LOGIN_PATH",
    "NOTIFY_PRINCIPAL",
    "PURPOSE",
    "Notice",
    "ResultNotifier",
    "email_subject",
    "email_text",
]

EMAIL_CATEGORY: Final = "result:available"
PURPOSE: Final = "result-notification"
LOGIN_PATH: Final = "/compte/connexion"
NOTIFY_PRINCIPAL: Final = SystemPrincipal("results:notify")
ACCOUNT_SUBJECT: Final = "account"
PARIS = zoneinfo.ZoneInfo("Europe/Paris")

_log = get_logger("labvault.results")


@dataclass(frozen=True, slots=True)
class Notice:
    """Everything the email says."""

    organization: str
    link: str
    phrase: str | None

    def __repr__(self) -> str:
        return "Notice(<redacted>)"


def email_subject(notice: Notice) -> str:
    return "Un nouveau document est disponible"


def email_text(notice: Notice) -> str:
    text = (
        "Bonjour,\n\n"
        f"Un nouveau document est disponible dans votre espace patient ({notice.organization}).\n"
        f"Connectez-vous pour le consulter : {notice.link}\n\n"
        "Pour votre confidentialité, ce message ne contient aucune information médicale."
    )
    if notice.phrase:
        text += (
            f"\n\nVotre phrase de sécurité : « {notice.phrase} ». Un message sans elle ne vient "
            "pas de votre laboratoire."
        )
    return text


class ResultNotifier:
    """Emails the accounts that may see a patient's released report, in the caller's
    transaction (the opening of each account and the ``result:report:notify`` event)."""

    def __init__(
        self,
        session: Session,
        provider: KeyProvider,
        tenant_id: uuid.UUID,
        *,
        mailer: Mailer,
        organization: str,
        public_url: str,
        context: AuditContext | None = None,
    ) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._mailer = mailer
        self._organization = organization
        self._link = public_url.rstrip("/") + LOGIN_PATH
        self._keyring = TenantKeyring(
            session, provider, tenant_id, NOTIFY_PRINCIPAL, context=context
        )

    def notify(self, patient_id: uuid.UUID) -> int:
        """Email every account acting for ``patient_id``; how many emails were sent (0: no
        account, or every send failed; the caller then leaves ``notified_at`` empty)."""
        accounts = self._recipients(patient_id)
        if not accounts:
            return 0
        keys = self._keyring.open_data_keys(ACCOUNT_SUBJECT, [a.id for a in accounts], PURPOSE)
        sent = 0
        for account in accounts:
            key = keys.get(account.id)
            if key is None:
                continue
            opened = key.open_row(
                "accounts",
                account.id,
                {"email": account.email, "security_phrase": account.security_phrase},
            )
            address = (opened["email"] or b"").decode()
            phrase = opened["security_phrase"]
            notice = Notice(self._organization, self._link, phrase.decode() if phrase else None)
            try:
                self._mailer.send(
                    OutgoingMessage(
                        to=address,
                        subject=email_subject(notice),
                        text=email_text(notice),
                        category=EMAIL_CATEGORY,
                    )
                )
            except (MailerError, ValueError) as exc:
                # ValueError: an address no longer accepted; neither error names a value.
                _log.warning("result.notify_failed", account_id=str(account.id), reason=str(exc))
                continue
            sent += 1
        if sent:
            self._keyring.audit.record(
                AuditAction.RESULT_REPORT_NOTIFY,
                tenant_id=self._tenant_id,
                target_type=SUBJECT_TYPE,
                target_id=patient_id,
                purpose=PURPOSE,
            )
        return sent

    def _recipients(self, patient_id: uuid.UUID) -> list[Account]:
        active = (
            Account.tenant_id == self._tenant_id,
            Account.kind == AccountKind.PATIENT.value,
            Account.status == AccountStatus.ACTIVE.value,
        )
        own = list(
            self._session.scalars(select(Account).where(*active, Account.patient_id == patient_id))
        )
        guardians = self._session.scalars(
            select(Account)
            .join(
                AccountDependent,
                (AccountDependent.tenant_id == Account.tenant_id)
                & (AccountDependent.account_id == Account.id),
            )
            .where(
                *active,
                AccountDependent.patient_id == patient_id,
                AccountDependent.revoked_at.is_(None),
            )
            .order_by(AccountDependent.created_at, AccountDependent.id)
        )
        today = utcnow().astimezone(PARIS).date()
        found = {account.id: account for account in own}
        for account in guardians:
            if account.id in found:
                continue
            if account_acts_for(self._session, self._keyring, account, patient_id, today=today):
                found[account.id] = account
        return list(found.values())
