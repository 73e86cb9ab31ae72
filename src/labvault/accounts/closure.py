"""A patient's request to delete their account, its cancellation, and the erasure job.

Request (signed in, recent step-up, patient accounts only)
    The account becomes ``closing`` with ``closing_requested_at``; every session is revoked;
    an email confirms it with a cancel link valid for the grace period
    (``LABVAULT_ACCOUNT_DELETION_GRACE_DAYS``, 30 days by default). The link is the emailed
    link mechanism of password resets (``AccountService._issue_link``): a ``one_time_codes``
    row of purpose :data:`PURPOSE`, the token in the URL fragment. A closing account cannot
    log in, and its login fails with exactly the answer of a wrong password (no
    enumeration); no reset link is sent to it either (``services.RESETTABLE``).

Cancel (anonymous, with the link)
    Restores ``active`` and clears ``closing_requested_at``; the owner then logs in as usual.
    Every bad token (unknown, used, expired, not closing any more) gets one answer.

Erasure (``labvault accounts purge``, :func:`purge_closed_accounts`)
    Accounts still closing once the grace period has ended are deleted with every row that
    cascades from them (sessions, codes, factors, passkeys, known devices, the links to their
    dependents), and with their wrapped data key: the sealed email address and security
    phrase left in backups can no longer be decrypted (crypto-shredding). The account's own
    **Patient record is erased** too (``labvault.patients.erasure``: its data key destroyed,
    its blind indexes cleared, a tombstone kept) **unless a legal hold keeps it** (lab reports
    are kept 10 years): then only the account goes, the record is marked as pending erasure
    and the purge counts it; the first purge after every hold on it has ended erases it. The
    request email says so. Dependents' records are not erased:
    they are their own data subjects; the guardian's links to them go with the account.
    Staff accounts cannot delete themselves: a staff account carries the accountability of
    the actions in the audit log and is closed by the organization's administration.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from labvault.accounts.devices import KnownDevice
from labvault.accounts.models import (
    SUBJECT_TYPE,
    Account,
    AccountKind,
    AccountSession,
    AccountStatus,
    OneTimeCode,
)
from labvault.accounts.services import AccountService, AuthError, ForbiddenError, paris_time
from labvault.accounts.stepup import StepUp
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext, AuditTrail, Outcome
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import utcnow
from labvault.core.ratelimit import RateRule
from labvault.organizations.models import Organization
from labvault.patients.erasure import (
    ErasureReport,
    KeylessKeyring,
    RecordNotFoundError,
    erase_released,
    erase_unless_held,
)
from labvault.patients.models import ErasureRequester

__all__ = [
    "CANCEL_PATH",
    "LINK_INVALID",
    "PURPOSE",
    "AccountClosure",
    "PurgeReport",
    "StaffSelfDeletionError",
    "purge_closed_accounts",
]

PURPOSE: Final = "account-deletion-cancel"
CANCEL_PATH: Final = "/compte/suppression/annulation"
"""The page that reads the cancel token from the link's fragment."""
CANCEL_PER_CLIENT: Final = RateRule("account-deletion-cancel-client", "30/hour")
LINK_INVALID: Final = (
    "Ce lien d'annulation n'est pas valable ou a expiré. Si votre compte a déjà été supprimé, "
    "vous pouvez en créer un nouveau."
)
PURGE_JOB: Final = "cli:accounts-purge"


class StaffSelfDeletionError(ForbiddenError):
    """A staff account asked to delete itself."""

    def __init__(self) -> None:
        super().__init__(
            "Un compte du personnel ne peut pas être supprimé par son titulaire : il est fermé "
            "par l'administration de votre laboratoire, qui garde la trace des actions faites "
            "avec lui."
        )


class AccountClosure:
    """Deletion request and cancellation, on the account service's plumbing."""

    def __init__(self, service: AccountService) -> None:
        self._service = service

    def grace(self) -> dt.timedelta:
        return dt.timedelta(days=self._service._settings.account_deletion_grace_days)

    def request(self, record: AccountSession, account: Account) -> dt.datetime:
        """Ask for the deletion of ``account`` from its session ``record``; the time after
        which it is erased. Raises ``StaffSelfDeletionError``, ``StepUpRequired``."""
        service = self._service
        if account.kind != AccountKind.PATIENT.value:
            raise StaffSelfDeletionError
        StepUp(service).require(record, account)
        now = service._clock()
        account.status = AccountStatus.CLOSING.value
        account.closing_requested_at = now
        service.sessions.revoke_all(account.id)
        token, erase_after = service._issue_link(account.id, PURPOSE, self.grace())
        service._audit(
            AuditAction.ACCOUNT_DELETION_REQUEST, account.id, principal=service._principal(account)
        )
        link = f"{service._settings.public_url.rstrip('/')}{CANCEL_PATH}#{token.reveal()}"
        service._send(
            account,
            "Demande de suppression de votre compte",
            f"Vous avez demandé la suppression de votre compte le {paris_time(now)} (heure de "
            "Paris). Vous avez été déconnecté de tous vos appareils et vous ne pouvez plus vous "
            f"connecter. Le compte sera définitivement supprimé après le {paris_time(erase_after)}."
            "\n\nVotre dossier au laboratoire (identité, examens, résultats) sera effacé en même "
            "temps, sauf s'il est sous conservation légale (par exemple les comptes rendus "
            "d'analyses, que la loi impose au laboratoire de conserver 10 ans) : un tel dossier "
            "n'est pas supprimé, il est conservé jusqu'à la fin de cette obligation. Les dossiers "
            "des personnes pour qui vous agissez (vos enfants) ne sont pas effacés : seul votre "
            "accès à ces dossiers disparaît."
            f"\n\nPour annuler la suppression d'ici là, ouvrez ce lien :\n{link}\n\nSi vous "
            "n'avez rien demandé, ouvrez ce lien tout de suite, puis changez votre mot de passe.",
            "account:deletion-requested",
        )
        return erase_after

    def cancel(self, token: str, *, client_id: str) -> None:
        """Cancel a deletion request with the emailed link's token: the account is active
        again. One error (``AuthError(LINK_INVALID)``) for every bad token."""
        service = self._service
        service._check_rate(CANCEL_PER_CLIENT, client_id, AuditAction.ACCOUNT_DELETION_FAILURE)
        now = service._clock()
        link = service._link_record(token, PURPOSE)
        account = None if link is None else service.account(link.account_id)
        if (
            link is None
            or account is None
            or account.status != AccountStatus.CLOSING.value
            or link.used_at is not None
            or link.expires_at <= now
        ):
            self._failed(account)
        claimed = service._session.execute(
            update(OneTimeCode)
            .where(OneTimeCode.id == link.id, OneTimeCode.used_at.is_(None))
            .values(used_at=now)
        )
        if not claimed.rowcount:  # type: ignore[attr-defined]
            self._failed(account)  # used by a concurrent request meanwhile
        account.status = AccountStatus.ACTIVE.value
        account.closing_requested_at = None
        service._audit(
            AuditAction.ACCOUNT_DELETION_CANCEL, account.id, principal=service._principal(account)
        )
        service._send(
            account,
            "La suppression de votre compte est annulée",
            f"La suppression de votre compte a été annulée le {paris_time(now)} (heure de "
            "Paris). Vous pouvez de nouveau vous connecter.\n\nSi ce n'était pas vous, changez "
            "votre mot de passe dès votre prochaine connexion.",
            "account:deletion-cancelled",
        )

    def _failed(self, account: Account | None) -> NoReturn:
        self._service._audit(
            AuditAction.ACCOUNT_DELETION_FAILURE,
            None if account is None else account.id,
            outcome=Outcome.FAILURE,
        )
        raise AuthError(LINK_INVALID)


@dataclasses.dataclass(frozen=True, slots=True)
class PurgeReport:
    accounts: int
    data_keys: int
    records_erased: int = 0
    """The accounts' own Patient records erased (crypto-shredded)."""
    records_held: int = 0
    """Their own Patient records kept because a legal hold is active."""
    records_released: int = 0
    """Records kept under a hold at an earlier purge, erased now that every hold has ended."""


def purge_closed_accounts(
    session: Session,
    *,
    grace_days: int,
    context: AuditContext | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
    drop_dir: Path | None = None,
) -> PurgeReport:
    """Erase every account (of every organization) whose deletion was requested more than
    ``grace_days`` ago, with its wrapped data key; idempotent. The caller commits.

    Acts as the explicit system principal ``cli:accounts-purge``; one audit event per erased
    account (its random id, nothing personal)."""
    cutoff = clock() - dt.timedelta(days=grace_days)
    due = session.execute(
        select(Account.id, Account.tenant_id, Account.data_key_id, Account.patient_id).where(
            Account.status == AccountStatus.CLOSING.value,
            Account.closing_requested_at.is_not(None),
            Account.closing_requested_at <= cutoff,
        )
    ).all()
    principal = SystemPrincipal(PURGE_JOB)
    trail = AuditTrail(session, principal, context)
    accounts = keys = erased = held = 0
    for account_id, tenant_id, data_key_id, patient_id in due:
        # Rows of sessions, codes, factors, passkeys, devices and dependents cascade.
        deleted = _rowcount(
            session.execute(
                delete(Account).where(
                    Account.id == account_id,
                    Account.tenant_id == tenant_id,
                    Account.status == AccountStatus.CLOSING.value,
                )
            )
        )
        if not deleted:
            continue  # cancelled meanwhile: neither the account nor its record goes
        accounts += deleted
        if patient_id is not None:
            outcome = _erase_own_record(
                session, tenant_id, patient_id, principal, context, drop_dir
            )
            erased += outcome == "erased"
            held += outcome == "held"
        keys += _rowcount(
            session.execute(
                delete(DataKeyRecord).where(
                    DataKeyRecord.tenant_id == tenant_id,
                    DataKeyRecord.id == data_key_id,
                    DataKeyRecord.subject_type == SUBJECT_TYPE,
                    DataKeyRecord.subject_id == account_id,
                )
            )
        )
        trail.record(
            AuditAction.ACCOUNT_DELETION_ERASE,
            tenant_id=tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=account_id,
            purpose="retention",
        )
    released = 0
    for organization_id in session.scalars(select(Organization.id).order_by(Organization.id)):
        keyring = KeylessKeyring(session, organization_id, principal, context)
        released += erase_released(session, keyring, now=clock(), drop_dir=drop_dir)
    return PurgeReport(accounts, keys, erased, held, released)


def _erase_own_record(
    session: Session,
    tenant_id: uuid.UUID,
    patient_id: uuid.UUID,
    principal: SystemPrincipal,
    context: AuditContext | None,
    drop_dir: Path | None = None,
) -> str:
    """Erase an account's own Patient record unless a legal hold keeps it (its denied
    ``patient:record:erase`` event is then recorded); ``erased``, ``held`` or ``gone``."""
    keyring = KeylessKeyring(session, tenant_id, principal, context)
    try:
        outcome = erase_unless_held(
            session, keyring, patient_id, ErasureRequester.PATIENT, drop_dir=drop_dir
        )
    except RecordNotFoundError:
        return "gone"
    if isinstance(outcome, ErasureReport):
        return "gone" if outcome.already_erased else "erased"
    return "held"


def forget_stale_devices(
    session: Session,
    *,
    retention_days: int,
    context: AuditContext | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
) -> int:
    """Forget the known devices (of every organization the session sees) whose last login is
    more than ``retention_days`` old, the lifetime of their cookie; idempotent, the caller
    commits. Returns how many were forgotten.

    Acts as ``cli:accounts-purge``; one ``account:device:expire`` event per account that
    lost devices (its random id; nothing about the devices)."""
    cutoff = clock() - dt.timedelta(days=retention_days)
    stale = session.execute(
        select(KnownDevice.id, KnownDevice.tenant_id, KnownDevice.account_id).where(
            KnownDevice.last_seen_at <= cutoff
        )
    ).all()
    if not stale:
        return 0
    forgotten = 0
    for start in range(0, len(stale), _BATCH):
        ids = [device_id for device_id, _, _ in stale[start : start + _BATCH]]
        forgotten += _rowcount(
            session.execute(
                delete(KnownDevice).where(
                    KnownDevice.id.in_(ids), KnownDevice.last_seen_at <= cutoff
                )
            )
        )
    trail = AuditTrail(session, SystemPrincipal(PURGE_JOB), context)
    by_tenant: dict[uuid.UUID, set[uuid.UUID]] = {}
    for _, tenant_id, account_id in stale:
        by_tenant.setdefault(tenant_id, set()).add(account_id)
    for tenant_id, account_ids in by_tenant.items():
        trail.record_many(
            AuditAction.ACCOUNT_DEVICE_EXPIRE,
            tenant_id=tenant_id,
            target_type=SUBJECT_TYPE,
            target_ids=sorted(account_ids),
            purpose="retention",
        )
    return forgotten


_BATCH: Final = 500


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
