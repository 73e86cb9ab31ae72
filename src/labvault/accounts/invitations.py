"""Staff accounts: invited by an organization admin, activated by the invitee, who must enrol
a second factor before anything else (a passkey for organization admins and security
officers, an authenticator app for the other roles); then staff log in with it.

Invitation
    ``invite_staff`` creates the staff member (sealed, through ``StaffRepository``) and a
    staff account linked to it (``staff_id``, ``role``) in status ``invited``: it cannot log
    in, gets no reset link, and its password hash is a real hash of a random password nobody
    knows (a login attempt costs what it costs for any account). An invitation is a row of
    ``one_time_codes`` of purpose ``staff-invitation``; its token is ``<selector>.<verifier>``
    like a reset token (the row's random id, then 256 random bits), of which the row keeps
    only the SHA-256. It expires after 7 days and serves once; a renewed invitation retires
    the previous links. The link, ``{public_url}/compte/invitation#<token>``, carries the
    token in its fragment, which browsers send neither to the server nor in ``Referer``. The
    message greets the invitee by first name and says nothing else personal (no role, site or
    address). Only an active organization admin of the same organization, checked against
    the database rather than taken from the principal, or an explicit ``SystemPrincipal``
    (the CLI) may invite; a refusal is audited too (outcome ``denied``). The administration
    pages (``labvault.accounts.administration``) renew an invitation by account id
    (``renew_invitation_for``).

Acceptance and the first second factor
    Every staff login needs a second factor, and email codes are the patients' only: a new
    staff account has none. So acceptance (token + new password; the password policy
    applies, and a refused password leaves the link usable) activates the account and opens
    a *pending* session, like the password step of a login: it opens nothing
    (``AccountService.current`` ignores it) but the next step. For an account with no factor
    at all that step is the enrolment of an authenticator app: ``begin_enrolment`` gives a new
    secret, ``confirm_enrolment`` checks a code of it, confirms it and completes the login
    (the pending session is revoked and a new, full session opened, second factor ``totp``),
    exactly as ``AccountService.second_factor`` does.

    If the invitee leaves before enrolling, a later login with the password leads to the same
    step; but a password alone must not be enough to attach an authenticator (a phished
    password would then let its thief enrol their own). Such an enrolment also takes a code
    emailed to the account's address (``send_enrolment_code``): the proof of the mailbox that
    the invitation link gave. The session opened by the acceptance itself is marked
    (``second_factor = "invitation"`` while ``second_factor_at`` stays empty, so it is still
    pending) and need not prove the mailbox twice. An account that has any factor already
    (a confirmed authenticator, unused recovery codes, later a passkey) never enrols at
    login: it completes the usual second-factor step, and adds factors once signed in.

Which factors staff need
    ``required_factors(role)`` is the one place that says it: organization admins and
    security officers (``PASSKEY_ROLES``) enrol a passkey first
    (``begin_passkey_enrolment``, ``confirm_passkey_enrolment``: the same pending session,
    the same mailbox proof, the login completed with second factor ``webauthn``), and cannot
    enrol an authenticator app instead; once they have a passkey their login accepts nothing
    else but a recovery code (``Passkeys.offered``). The other roles enrol an authenticator
    app. Where the service's address cannot have passkeys (an IP address), every role enrols
    an authenticator app: a deployment there cannot activate its admins otherwise.

Staff login
    ``staff_login`` is ``AccountService.login`` for ``AccountKind.STAFF`` (the same rate
    limits, the same answer and cost for an unknown address, a wrong password or an account
    that cannot log in), and says which factors still have to be enrolled. Staff sessions
    follow ``SessionPolicy.for_kind``: shorter idle and absolute limits, from the settings.
    A staff session acts as ``principal_of(account)``: the staff role and, for now, no site.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final, NoReturn

from sqlalchemy import select, update

from labvault.accounts.models import (
    SUBJECT_TYPE,
    Account,
    AccountKind,
    AccountSession,
    AccountStatus,
    OneTimeCode,
    TotpCredential,
)
from labvault.accounts.services import (
    CODE_SENDS_PER_ACCOUNT,
    EMAIL_CODE_ATTEMPTS,
    SECOND_FACTOR_PER_ACCOUNT,
    AccountService,
    AuthError,
    ForbiddenError,
    InvalidInputError,
    OpenedSession,
    TotpEnrolment,
)
from labvault.accounts.webauthn import METHOD as PASSKEY
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import Outcome
from labvault.core.contact import parse_email
from labvault.core.crypto.otp import match_totp
from labvault.core.crypto.secret import Secret
from labvault.core.mail.message import OutgoingMessage
from labvault.core.ratelimit import RateRule
from labvault.staff.models import StaffMember, StaffRole
from labvault.staff.services import SUBJECT_TYPE as STAFF_SUBJECT_TYPE
from labvault.staff.services import StaffRepository, UnknownSiteError

__all__ = [
    "INVITATION_PATH",
    "INVITATION_TTL",
    "PASSKEY_ROLES",
    "AlreadyInvitedError",
    "Invitation",
    "StaffAccountService",
    "StaffLogin",
    "principal_of",
    "required_factors",
]

INVITATION_PURPOSE: Final = "staff-invitation"
INVITATION_TTL: Final = dt.timedelta(days=7)
INVITATION_PATH: Final = "/compte/invitation"
"""The page that reads the token from the link's fragment and asks for a password."""
INVITATION_INVALID: Final = (
    "Ce lien d'invitation n'est pas valable ou a expiré. Demandez une nouvelle invitation à "
    "l'administration de votre laboratoire."
)
INVITATION_PROOF: Final = "invitation"
"""Marks the pending session opened by an accepted invitation (the mailbox is proven)."""
ENROLMENT_CODE_PURPOSE: Final = "staff-enrolment"
ACCEPT_PER_CLIENT: Final = RateRule("staff-invitation-accept-client", "30/hour")
PURPOSE: Final = "staff-administration"
INVITERS: Final = frozenset({StaffRole.ORGANIZATION_ADMIN.value})
MAX_NAME: Final = 100

PASSKEY_ROLES: Final = frozenset({StaffRole.ORGANIZATION_ADMIN, StaffRole.SECURITY_OFFICER})
"""The roles whose first (and only, but for recovery codes) factor is a passkey (WebAuthn)."""


def required_factors(role: StaffRole | str, *, passkeys_available: bool = True) -> tuple[str, ...]:
    """The second factor a staff account of ``role`` must enrol first, when it has none.

    A passkey (``"webauthn"``) for ``PASSKEY_ROLES``: it cannot be phished, and once there it
    is the only factor their login accepts, but for recovery codes (``Passkeys.offered``).
    An authenticator app (``"totp"``) for the other roles (email codes are for patients),
    and for every role where the service's address cannot have passkeys
    (``passkeys_available`` false: an IP address, see ``webauthn.relying_party``). The login
    answer (``StaffLogin.enrol``) and the enrolment gate read it from here.
    """
    if StaffRole(role) in PASSKEY_ROLES and passkeys_available:  # unknown role: ValueError
        return (PASSKEY,)
    return ("totp",)


def principal_of(account: Account) -> Principal:
    """Who a signed-in account acts as. A staff account carries its role and, until a site is
    chosen at login, no site."""
    return Principal(PrincipalKind(account.kind), str(account.id), role=account.role)


class AlreadyInvitedError(InvalidInputError):
    """The address already has a pending invitation: renew it instead."""


@dataclasses.dataclass(frozen=True, slots=True)
class Invitation:
    """What the inviter learns: ids and the deadline; the token goes to the invitee only."""

    staff_id: uuid.UUID
    account_id: uuid.UUID
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class StaffLogin:
    """A pending session: ``factors`` can complete it, or, when there is none yet, the
    factors of ``enrol`` must be enrolled to complete it."""

    token: Secret[str]
    factors: tuple[str, ...]
    enrol: tuple[str, ...]


def _clean_name(value: str, label: str) -> str:
    name = " ".join(value.split())
    if not name or len(name) > MAX_NAME or not all(c.isprintable() for c in name):
        raise InvalidInputError(f"{label} : de 1 à {MAX_NAME} caractères imprimables.")
    return unicodedata.normalize("NFC", name)


class StaffAccountService(AccountService):
    """Staff invitations, enrolment and login of one tenant, in the caller's transaction.

    Failed steps are audited in that transaction: the caller commits it even when a step
    raises ``AuthError`` or ``ForbiddenError`` (as the routes do).
    """

    # -- invitation --------------------------------------------------------------------

    def invite_staff(
        self,
        by: Principal,
        email: str,
        first_name: str,
        last_name: str,
        role: StaffRole | str,
        site_ids: Sequence[uuid.UUID] = (),
    ) -> Invitation:
        """Create the staff member and their pending account, and email the invitation."""
        self._check_inviter(by)
        try:
            address = parse_email(email)
        except ValueError:
            raise InvalidInputError("Adresse e-mail invalide.") from None
        first = _clean_name(first_name, "Prénom")
        last = _clean_name(last_name, "Nom")
        try:
            staff_role = StaffRole(role)
        except ValueError:
            raise InvalidInputError("Rôle inconnu.") from None
        email_indexes = self._keyring(by).indexer.staff_email_candidates(address)
        existing = self._find(email_indexes, AccountKind.STAFF)
        if existing is not None and existing.status == AccountStatus.INVITED.value:
            raise AlreadyInvitedError(
                "Cette personne a déjà une invitation en attente : renouvelez-la."
            )
        if existing is not None or self._staff_member(email_indexes) is not None:
            raise InvalidInputError("Un membre du personnel a déjà cette adresse.")
        try:
            staff_id = StaffRepository(self._session, self._keyring(by)).add(
                first_name=first,
                last_name=last,
                email=address,
                role=staff_role,
                site_ids=list(dict.fromkeys(site_ids)),
            )
        except UnknownSiteError:
            raise InvalidInputError("Un des sites n'est pas un site de ce laboratoire.") from None
        account = self._insert_account(
            address,
            self._hasher.dummy_hash,
            None,
            kind=AccountKind.STAFF,
            status=AccountStatus.INVITED,
            role=staff_role.value,
            staff_id=staff_id,
        )
        token, expires_at = self._new_invitation(account)
        self._record(AuditAction.STAFF_INVITATION_CREATE, account.id, by)
        self._send_invitation(address, first, token)
        return Invitation(staff_id, account.id, expires_at)

    def renew_invitation(self, by: Principal, email: str) -> Invitation:
        """Email a new link to an invitee who has not accepted yet; older links stop working."""
        self._check_inviter(by)
        try:
            address = parse_email(email)
        except ValueError:
            raise InvalidInputError("Adresse e-mail invalide.") from None
        account = self._find(
            self._keyring(by).indexer.staff_email_candidates(address), AccountKind.STAFF
        )
        if account is None or account.status != AccountStatus.INVITED.value:
            raise InvalidInputError("Aucune invitation en attente pour cette adresse.")
        return self._renew(by, account, address)

    def renew_invitation_for(self, by: Principal, account_id: uuid.UUID) -> Invitation | None:
        """``renew_invitation`` for the staff account ``account_id`` (the administration
        pages name accounts by id); None if this organization has no such pending invitation."""
        self._check_inviter(by)
        account = self._session.get(Account, account_id)
        if (
            account is None
            or account.tenant_id != self._tenant_id
            or account.kind != AccountKind.STAFF.value
            or account.status != AccountStatus.INVITED.value
        ):
            return None
        address = self._open(account, by)["email"] or ""
        return self._renew(by, account, address)

    def _renew(self, by: Principal, account: Account, address: str) -> Invitation:
        assert account.staff_id is not None
        first_name = self._first_name(account.staff_id, by)
        token, expires_at = self._new_invitation(account)
        self._record(AuditAction.STAFF_INVITATION_RENEW, account.id, by)
        self._send_invitation(address, first_name, token)
        return Invitation(account.staff_id, account.id, expires_at)

    def _check_inviter(self, by: Principal) -> None:
        """An explicit system principal, or an active organization admin of this tenant."""
        if isinstance(by, SystemPrincipal):
            return
        if by.kind is PrincipalKind.STAFF and by.role in INVITERS:
            try:
                account_id = uuid.UUID(by.id)
            except ValueError:
                account_id = None
            account = None if account_id is None else self._session.get(Account, account_id)
            if (
                account is not None
                and account.tenant_id == self._tenant_id
                and account.kind == AccountKind.STAFF.value
                and account.role in INVITERS
                and account.status == AccountStatus.ACTIVE.value
            ):
                return
        self._record(AuditAction.STAFF_INVITATION_CREATE, None, by, outcome=Outcome.DENIED)
        raise ForbiddenError

    def _staff_member(self, email_indexes: Sequence[bytes]) -> StaffMember | None:
        return self._session.scalar(
            select(StaffMember).where(
                StaffMember.tenant_id == self._tenant_id,
                StaffMember.email_index.in_(email_indexes),
            )
        )

    def _first_name(self, staff_id: uuid.UUID, by: Principal) -> str:
        member = self._session.get_one(StaffMember, staff_id)
        key = self._keyring(by).open_data_keys(STAFF_SUBJECT_TYPE, [staff_id], PURPOSE)[staff_id]
        opened = key.open_row(
            StaffMember.__tablename__, staff_id, {"first_name": member.first_name}
        )
        return (opened["first_name"] or b"").decode()

    def _new_invitation(self, account: Account) -> tuple[Secret[str], dt.datetime]:
        return self._issue_link(account.id, INVITATION_PURPOSE, INVITATION_TTL)

    def _send_invitation(self, address: str, first_name: str, token: Secret[str]) -> None:
        link = f"{self._settings.public_url.rstrip('/')}{INVITATION_PATH}#{token.reveal()}"
        days = INVITATION_TTL.days
        self._mailer.send(
            OutgoingMessage(
                to=address,
                subject="Invitation à créer votre compte professionnel",
                text=(
                    f"Bonjour {first_name},\n\n"
                    "Votre laboratoire vous invite à créer votre compte professionnel. "
                    f"Ouvrez ce lien dans les {days} jours ; il ne sert qu'une fois :\n{link}"
                    "\n\nVous y choisirez votre mot de passe, puis vous configurerez ce qui "
                    "confirmera chacune de vos connexions : une clé d'accès (passkey) ou une "
                    "application d'authentification sur votre téléphone (par exemple FreeOTP "
                    "ou Aegis), selon votre fonction.\n\nSi vous "
                    "n'attendiez pas cette invitation, ignorez ce message et prévenez votre "
                    "laboratoire."
                ),
                category="staff:invitation",
            )
        )

    def _record(
        self,
        action: AuditAction,
        account_id: uuid.UUID | None,
        principal: Principal,
        *,
        outcome: Outcome = Outcome.SUCCESS,
    ) -> None:
        self._keyring(principal).audit.record(
            action,
            tenant_id=self._tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=account_id,
            purpose=PURPOSE,
            outcome=outcome,
        )

    # -- acceptance --------------------------------------------------------------------

    def accept_invitation(
        self, token: str, password: Secret[str], *, client_id: str, client_hash: str | None
    ) -> StaffLogin:
        """Set the password with the invitation's token and activate the account; the answer
        is a pending session that can only enrol the required factors. One error for every
        bad token; a password the policy refuses leaves the link usable."""
        self._check_rate(ACCEPT_PER_CLIENT, client_id, AuditAction.STAFF_INVITATION_FAILURE)
        now = self._clock()
        record = self._link_record(token, INVITATION_PURPOSE)
        account = None if record is None else self._session.get(Account, record.account_id)
        member = (
            None
            if account is None or account.staff_id is None
            else (self._session.get(StaffMember, account.staff_id))
        )
        if (
            record is None
            or account is None
            or account.tenant_id != self._tenant_id
            or account.kind != AccountKind.STAFF.value
            or account.status != AccountStatus.INVITED.value
            or member is None
            or not member.active
            or record.used_at is not None
            or record.expires_at <= now
        ):
            self._invitation_failed(account)
        principal = principal_of(account)
        self._check_new_password(account, password, principal)
        claimed = self._session.execute(
            update(OneTimeCode)
            .where(OneTimeCode.id == record.id, OneTimeCode.used_at.is_(None))
            .values(used_at=now)
        )
        if not claimed.rowcount:  # type: ignore[attr-defined]
            self._invitation_failed(account)  # used by a concurrent request meanwhile
        self._set_password(account, password)
        self._retire_links(INVITATION_PURPOSE, account.id)
        account.status = AccountStatus.ACTIVE.value
        account.email_verified_at = now
        self._record(AuditAction.STAFF_INVITATION_ACCEPT, account.id, principal)
        session_token, session = self.sessions.create(
            tenant_id=self._tenant_id,
            account_id=account.id,
            policy=self._policy(account),
            client_hash=client_hash,
        )
        session.second_factor = INVITATION_PROOF  # still pending: second_factor_at is None
        return StaffLogin(session_token, self._factors(account), self.enrolment_needed(account))

    def _invitation_failed(self, account: Account | None) -> NoReturn:
        self._audit(
            AuditAction.STAFF_INVITATION_FAILURE,
            None if account is None else account.id,
            outcome=Outcome.FAILURE,
        )
        raise AuthError(INVITATION_INVALID)

    # -- login and enrolment -----------------------------------------------------------

    def staff_login(
        self, email: str, password: Secret[str], *, client_id: str, client_hash: str | None
    ) -> StaffLogin:
        """The password step of a staff login (``AccountService.login`` for staff)."""
        pending = self.login(
            email, password, client_id=client_id, client_hash=client_hash, kind=AccountKind.STAFF
        )
        found = self.pending(pending.token.reveal())
        assert found is not None
        return StaffLogin(pending.token, pending.factors, self.enrolment_needed(found[1]))

    def enrolment_needed(self, account: Account) -> tuple[str, ...]:
        """The factors a pending login of ``account`` must enrol before it completes: those
        its role requires, when it has no factor at all; else none (the usual second-factor
        step, factors being added once signed in)."""
        if account.kind != AccountKind.STAFF.value or account.role is None:
            return ()
        # Any factor it has, offered at login or not: enrolling here would replace it.
        has_totp = self._session.scalar(
            select(TotpCredential.id).where(
                TotpCredential.account_id == account.id, TotpCredential.confirmed_at.is_not(None)
            )
        )
        if has_totp is not None or self._factors(account):
            return ()
        return required_factors(
            account.role, passkeys_available=self.passkeys.relying_party is not None
        )

    def totp_pending(self, account: Account) -> bool:
        """Whether an authenticator secret was given and awaits its first code."""
        pending = self._session.scalar(
            select(TotpCredential.id).where(
                TotpCredential.account_id == account.id, TotpCredential.confirmed_at.is_(None)
            )
        )
        return pending is not None

    def needs_mailbox_proof(self, record: AccountSession) -> bool:
        """Whether enrolling from this pending session also takes an emailed code."""
        return record.second_factor != INVITATION_PROOF

    def enrolling(self, token: str, factor: str = "totp") -> tuple[AccountSession, Account] | None:
        """The pending session behind ``token`` if it may enrol ``factor`` (the one its role
        requires first: an authenticator app, or a passkey for ``PASSKEY_ROLES``)."""
        found = self.pending(token)
        if found is None:
            return None
        record, account = found
        if record.second_factor_at is not None or factor not in self.enrolment_needed(account):
            return None
        return found

    def enrolment_factor(self, token: str) -> str | None:
        """The factor the pending login of ``token`` must enrol, or None if it enrols none."""
        found = self.pending(token)
        if found is None or found[0].second_factor_at is not None:
            return None
        needed = self.enrolment_needed(found[1])
        return needed[0] if needed else None

    def _enrolling(self, token: str, factor: str = "totp") -> tuple[AccountSession, Account]:
        found = self.enrolling(token, factor)
        if found is None:
            raise AuthError("Session expirée. Reconnectez-vous.")
        return found

    def begin_enrolment(self, token: str) -> TotpEnrolment:
        """A new authenticator secret for the pending login (replaces an unconfirmed one).
        Not for a role whose first factor is a passkey (``AuthError``)."""
        _, account = self._enrolling(token)
        return self.begin_totp(account)

    def send_enrolment_code(self, token: str) -> None:
        """Email the code that proves the mailbox (see the module's documentation)."""
        factor = self.enrolment_factor(token)
        _, account = self._enrolling(token, factor or "totp")
        self._check_rate(CODE_SENDS_PER_ACCOUNT, self._identifier(account.email_index))
        code = self._new_code(account, ENROLMENT_CODE_PURPOSE)
        self._send(
            account,
            "Votre code d'activation",
            f"Votre code d'activation : {code.reveal()}\nIl est valable 10 minutes. Il sert à "
            "activer l'application d'authentification de votre compte professionnel.\n\nSi vous "
            "n'êtes pas en train de vous connecter, quelqu'un connaît votre mot de passe : "
            "prévenez tout de suite l'administration de votre laboratoire.",
            "account:enrolment-code",
        )

    def confirm_enrolment(
        self,
        token: str,
        code: str,
        *,
        email_code: str | None = None,
        device: str | None = None,
    ) -> OpenedSession:
        """Confirm the authenticator with one of its codes and complete the login: a NEW
        session token (the pending one is revoked), as ``second_factor`` answers."""
        record, account = self._enrolling(token)
        self._check_rate(SECOND_FACTOR_PER_ACCOUNT, self._identifier(account.email_index))
        principal = principal_of(account)
        credential = self._session.scalar(
            select(TotpCredential).where(
                TotpCredential.account_id == account.id, TotpCredential.confirmed_at.is_(None)
            )
        )
        step = None
        if credential is not None:
            secret = self._totp_secret(account, credential, principal)
            step = match_totp(secret, code, after_step=credential.last_step)
        # The authenticator's code first: a wrong one must not use up the emailed code.
        if (
            credential is None
            or step is None
            or (
                self.needs_mailbox_proof(record)
                and not (email_code and self._use_code(account, ENROLMENT_CODE_PURPOSE, email_code))
            )
        ):
            self._audit(
                AuditAction.ACCOUNT_SECOND_FACTOR_FAILURE, account.id, outcome=Outcome.FAILURE
            )
            self._failed(account)
            raise AuthError("Code incorrect ou expiré.")
        now = self._clock()
        credential.last_step = step
        credential.confirmed_at = now
        self._audit(AuditAction.ACCOUNT_TOTP_ENROL, account.id, principal=principal)
        return self._open_session(account, record, "totp", principal, device)

    # -- passkey enrolment (PASSKEY_ROLES) ---------------------------------------------

    def begin_passkey_enrolment(self, token: str) -> str:
        """Options for ``navigator.credentials.create`` (JSON), for the pending login of a
        role whose first factor is a passkey. ``PasskeyError`` where passkeys are unavailable."""
        record, account = self._enrolling(token, PASSKEY)
        return self.passkeys.registration_options(account, record.id)

    def confirm_passkey_enrolment(
        self,
        token: str,
        credential: Mapping[str, Any],
        *,
        label: str | None = None,
        email_code: str | None = None,
        device: str | None = None,
    ) -> OpenedSession:
        """Keep the passkey the browser created for ``begin_passkey_enrolment`` and complete
        the login with it: a NEW session token (the pending one is revoked), second factor
        ``webauthn``, as ``confirm_enrolment`` does for an authenticator app.

        An enrolment started by a plain login (not by the invitation) also takes the code
        emailed by ``send_enrolment_code``; it is checked first but used up only once the
        passkey is kept, so a failed ceremony does not cost a new code. ``AuthError`` for a
        wrong code, ``PasskeyError`` for a refused passkey (audited, nothing kept)."""
        record, account = self._enrolling(token, PASSKEY)
        self._check_rate(SECOND_FACTOR_PER_ACCOUNT, self._identifier(account.email_index))
        principal = principal_of(account)
        mailbox_code: OneTimeCode | None = None
        if self.needs_mailbox_proof(record):
            mailbox_code = self._matching_code(account, ENROLMENT_CODE_PURPOSE, email_code)
            if mailbox_code is None:
                self._audit(
                    AuditAction.ACCOUNT_SECOND_FACTOR_FAILURE, account.id, outcome=Outcome.FAILURE
                )
                self._failed(account)
                raise AuthError("Code d'activation incorrect ou expiré.")
        self.passkeys.register(account, record.id, credential, label)
        now = self._clock()
        if mailbox_code is not None:
            mailbox_code.used_at = now
        return self._open_session(account, record, PASSKEY, principal, device)

    def _matching_code(
        self, account: Account, purpose: str, code: str | None
    ) -> OneTimeCode | None:
        """The live emailed code of ``purpose`` if ``code`` is it (the attempt is counted);
        it is not used up here."""
        record = self._session.scalar(
            select(OneTimeCode)
            .where(
                OneTimeCode.account_id == account.id,
                OneTimeCode.purpose == purpose,
                OneTimeCode.used_at.is_(None),
            )
            .order_by(OneTimeCode.created_at.desc())
            .limit(1)
        )
        if (
            not code
            or record is None
            or record.expires_at <= self._clock()
            or record.attempts >= EMAIL_CODE_ATTEMPTS
        ):
            return None
        record.attempts += 1
        if not hmac.compare_digest(record.code_hash, self._code_hash(account.id, purpose, code)):
            return None
        return record

    # -- provisioning (the demo) -------------------------------------------------------

    def provision_staff_account(
        self, email: str, password: Secret[str], *, security_phrase: str | None, by: Principal
    ) -> Account:
        """An active account for an existing staff member, with a known password and no
        factor yet (its first login enrols one): for the demo."""
        address = parse_email(email)
        member = self._staff_member(self._keyring(by).indexer.staff_email_candidates(address))
        if member is None:
            raise InvalidInputError("Aucun membre du personnel n'a cette adresse.")
        return self.provision(
            address,
            password,
            kind=AccountKind.STAFF,
            security_phrase=security_phrase,
            by=by,
            role=member.role,
            staff_id=member.id,
        )
