"""Staff administration by an organization admin: the staff directory, invitations and
unlocking, for the pages under ``/administration/personnel`` and the API under
``/api/v1/admin``.

Who may
    An active organization admin of this organization, fully signed in (second factor
    done), checked against the database at every request (``administrator``). Anyone else
    (another role, a patient, a pending login, nobody) is told "not found", the same answer
    as for a page that does not exist (I7); a signed-in principal that asks is audited
    (``staff:administration:denied``). An admin whose role requires a passkey and who has
    none yet (an account enrolled before passkeys were required) is sent to add one first.

What it shows
    Staff names are sealed under each member's own key: listing them opens every member's
    key through the decrypt choke point, one audited ``staff:record:read`` per member, for
    the purpose ``staff-administration``; only the first and last names are opened (not the
    address). Roles, sites, account statuses and lock reasons are plaintext (not personal).

Each action is one service method (``staff_directory``, ``invite_staff_member``,
``renew_staff_invitation``, ``unlock_staff_account``); the routes and pages put the step-up
re-authentication (``require_step_up``) in front of each: a recent second-factor proof in
the admin's own session.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from collections.abc import Sequence

from sqlalchemy import func, select

from labvault.accounts.invitations import (
    INVITATION_PURPOSE,
    PURPOSE,
    Invitation,
    StaffAccountService,
    principal_of,
)
from labvault.accounts.models import (
    Account,
    AccountKind,
    AccountSession,
    AccountStatus,
    LockReason,
    OneTimeCode,
)
from labvault.accounts.services import ForbiddenError, InvalidInputError
from labvault.accounts.stepup import StepUp
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import Outcome
from labvault.organizations.models import Site
from labvault.staff.models import StaffMember, StaffRole, StaffSite
from labvault.staff.services import SUBJECT_TYPE as STAFF_SUBJECT_TYPE

__all__ = [
    "ADMINISTRATORS",
    "ROLE_NAMES",
    "Administrator",
    "SiteChoice",
    "StaffAdministration",
    "StaffEntry",
    "StaffStatus",
    "parse_site_ids",
]

ADMINISTRATORS = frozenset({StaffRole.ORGANIZATION_ADMIN.value})
ROLE_NAMES: dict[str, str] = {
    StaffRole.RECEPTIONIST.value: "Accueil",
    StaffRole.SAMPLER.value: "Préleveur ou préleveuse",
    StaffRole.BIOLOGIST.value: "Biologiste",
    StaffRole.ORGANIZATION_ADMIN.value: "Administration du laboratoire",
    StaffRole.SECURITY_OFFICER.value: "Responsable de la sécurité",
}
"""French names of the roles, in the order the invitation form offers them."""
MAX_SITES = 100


class StaffStatus(enum.StrEnum):
    INVITED = "invited"
    INVITATION_EXPIRED = "invitation-expired"
    ACTIVE = "active"
    LOCKED = "locked"
    CLOSING = "closing"
    NO_ACCOUNT = "no-account"
    """A staff member with no login (added by a bulk job, say)."""


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class StaffEntry:
    staff_id: uuid.UUID
    account_id: uuid.UUID | None
    first_name: str
    last_name: str
    role: str
    site_ids: tuple[uuid.UUID, ...]
    site_names: tuple[str, ...]
    status: StaffStatus
    lock_reason: LockReason | None
    locked_at: dt.datetime | None
    invitation_expires_at: dt.datetime | None

    def __repr__(self) -> str:  # no names in tracebacks or logs
        return f"StaffEntry(staff_id={self.staff_id}, status={self.status.value})"


@dataclasses.dataclass(frozen=True, slots=True)
class SiteChoice:
    id: uuid.UUID
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Administrator:
    """The signed-in organization admin of a request."""

    record: AccountSession
    account: Account
    passkey_missing: bool
    """The role requires a passkey and the account has none yet: add one first."""

    @property
    def principal(self) -> Principal:
        return principal_of(self.account)


def parse_site_ids(values: Sequence[str]) -> list[uuid.UUID]:
    """Site ids as given by a form or a request; ``InvalidInputError`` for anything else."""
    if len(values) > MAX_SITES:
        raise InvalidInputError("Trop de sites choisis.")
    try:
        return [uuid.UUID(value) for value in values]
    except ValueError:
        raise InvalidInputError("Un des sites n'est pas un site de ce laboratoire.") from None


class StaffAdministration(StaffAccountService):
    """Staff administration of one tenant, in the caller's transaction."""

    # -- who may -----------------------------------------------------------------------

    def administrator(self, token: str) -> Administrator | None:
        """The active organization admin fully signed in with ``token``; None for anyone
        else (a signed-in principal that is not one is audited as denied)."""
        found = self.current(token) if token else None
        if found is None:
            return None
        record, account = found
        if (
            account.kind != AccountKind.STAFF.value
            or account.role not in ADMINISTRATORS
            or account.status != AccountStatus.ACTIVE.value
            or account.tenant_id != self._tenant_id
        ):
            self._record(
                AuditAction.STAFF_ADMINISTRATION_DENIED,
                None,
                Principal(PrincipalKind(account.kind), str(account.id), role=account.role),
                outcome=Outcome.DENIED,
            )
            return None
        return Administrator(record, account, self.passkeys.enrolment_required(account))

    def require_step_up(self, admin: Administrator) -> None:
        """Raise ``StepUpRequired`` (the refusal audited) unless the admin's session proved a
        second factor within ``LABVAULT_STEP_UP_MINUTES``: the check in front of every action
        (inviting, renewing an invitation, unlocking)."""
        StepUp(self).require(admin.record, admin.account)

    def _check_administrator(self, by: Principal) -> None:
        if not self._is_active_staff(by, ADMINISTRATORS):
            self._record(AuditAction.STAFF_ADMINISTRATION_DENIED, None, by, outcome=Outcome.DENIED)
            raise ForbiddenError

    # -- directory ---------------------------------------------------------------------

    def sites(self) -> list[SiteChoice]:
        """The organization's sites (plaintext: a site is not personal data)."""
        rows = self._session.execute(
            select(Site.id, Site.name).where(Site.tenant_id == self._tenant_id).order_by(Site.name)
        )
        return [SiteChoice(site_id, name) for site_id, name in rows]

    def staff_directory(self, by: Principal) -> list[StaffEntry]:
        """Every staff member with their role, sites and account status; names opened
        through the decrypt choke point (audited, one event per member)."""
        self._check_administrator(by)
        now = self._clock()
        members = list(
            self._session.scalars(
                select(StaffMember).where(StaffMember.tenant_id == self._tenant_id)
            )
        )
        accounts = {
            account.staff_id: account
            for account in self._session.scalars(
                select(Account).where(
                    Account.tenant_id == self._tenant_id,
                    Account.kind == AccountKind.STAFF.value,
                    Account.staff_id.is_not(None),
                )
            )
        }
        site_names = {site.id: site.name for site in self.sites()}
        sites: dict[uuid.UUID, list[uuid.UUID]] = {}
        for staff_id, site_id in self._session.execute(
            select(StaffSite.staff_id, StaffSite.site_id).where(
                StaffSite.tenant_id == self._tenant_id
            )
        ):
            sites.setdefault(staff_id, []).append(site_id)
        invitations: dict[uuid.UUID, dt.datetime] = {
            account_id: expires_at
            for account_id, expires_at in self._session.execute(
                select(OneTimeCode.account_id, func.max(OneTimeCode.expires_at))
                .where(
                    OneTimeCode.tenant_id == self._tenant_id,
                    OneTimeCode.purpose == INVITATION_PURPOSE,
                    OneTimeCode.used_at.is_(None),
                )
                .group_by(OneTimeCode.account_id)
            )
        }
        keys = self._keyring(by).open_data_keys(
            STAFF_SUBJECT_TYPE, [member.id for member in members], PURPOSE
        )
        entries = []
        for member in members:
            opened = keys[member.id].open_row(
                StaffMember.__tablename__,
                member.id,
                {"first_name": member.first_name, "last_name": member.last_name},
            )
            account = accounts.get(member.id)
            expires_at = None if account is None else invitations.get(account.id)
            member_sites = sorted(sites.get(member.id, ()), key=lambda s: site_names.get(s, ""))
            entries.append(
                StaffEntry(
                    staff_id=member.id,
                    account_id=None if account is None else account.id,
                    first_name=(opened["first_name"] or b"").decode(),
                    last_name=(opened["last_name"] or b"").decode(),
                    role=(account.role if account is not None and account.role else member.role),
                    site_ids=tuple(member_sites),
                    site_names=tuple(site_names[s] for s in member_sites if s in site_names),
                    status=_status(account, expires_at, now),
                    lock_reason=_lock_reason(account),
                    locked_at=None if account is None else account.locked_at,
                    invitation_expires_at=expires_at,
                )
            )
        entries.sort(key=lambda e: (e.last_name.casefold(), e.first_name.casefold(), e.staff_id))
        return entries

    # -- actions -----------------------------------------------------------------------

    def invite_staff_member(
        self,
        by: Principal,
        email: str,
        first_name: str,
        last_name: str,
        role: StaffRole | str,
        site_ids: Sequence[uuid.UUID],
    ) -> Invitation:
        """Invite a staff member (``invite_staff``): validated, nothing kept on a refusal."""
        self._check_administrator(by)
        return self.invite_staff(by, email, first_name, last_name, role, site_ids)

    def renew_staff_invitation(self, by: Principal, account_id: uuid.UUID) -> Invitation | None:
        """Email a new invitation link; None if ``account_id`` is no pending invitation of
        this organization."""
        self._check_administrator(by)
        return self.renew_invitation_for(by, account_id)

    def unlock_staff_account(self, by: Principal, account_id: uuid.UUID) -> bool | None:
        """Lift the lock of a staff account, whatever its reason (``unlock``); False if it was
        not locked, None if this organization has no such staff account."""
        self._check_administrator(by)
        account = self.account(account_id)
        if account is None or account.kind != AccountKind.STAFF.value:
            return None
        return self.unlock(account, by)


def _status(
    account: Account | None, expires_at: dt.datetime | None, now: dt.datetime
) -> StaffStatus:
    if account is None:
        return StaffStatus.NO_ACCOUNT
    if account.status == AccountStatus.INVITED.value:
        if expires_at is None or expires_at <= now:
            return StaffStatus.INVITATION_EXPIRED
        return StaffStatus.INVITED
    if account.status == AccountStatus.LOCKED.value:
        return StaffStatus.LOCKED
    if account.status == AccountStatus.CLOSING.value:
        return StaffStatus.CLOSING
    return StaffStatus.ACTIVE


def _lock_reason(account: Account | None) -> LockReason | None:
    if account is None or account.status != AccountStatus.LOCKED.value:
        return None
    try:
        return LockReason(account.lock_reason or LockReason.TOO_MANY_FAILURES.value)
    except ValueError:
        return LockReason.SECURITY_DECISION  # an unknown reason: the stricter one
