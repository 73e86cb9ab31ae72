"""Sign-up, email proof, login with a mandatory second factor, sessions, factors, password
reset and change, lockout and unlock, new-device notices.

Every answer that could tell whether an account exists is the same for a known and an
unknown address (invariant I7): sign-up always says "check your mailbox", login always says
"email or password is wrong", and a login for an unknown address still spends one password
hash; a reset request always says "if there is an account, a link was sent" (over HTTP,
after a fixed time, the message being delivered after the answer: see ``routes``). Rate
limits are checked before any hashing, and fail closed. Every step is audited.

Password reset links
    A reset token is ``<selector>.<verifier>``: the selector is the random id (UUIDv4) of a
    ``one_time_codes`` row of purpose ``password-reset``, the verifier 256 random bits; the
    row keeps the SHA-256 of the whole token (32 bytes, in ``code_hash``), never the token.
    The selector makes the lookup a primary-key read (the table has no index on
    ``code_hash``), the verifier is compared in constant time. The row's ``expires_at``
    (15 minutes) and ``used_at`` make it short-lived and single-use; a new link, a completed
    reset or a password change retires the account's older links. The link puts the token in
    the URL fragment, which browsers send neither to the server nor in ``Referer``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import hmac
import secrets
import uuid
import zoneinfo
from collections.abc import Callable, Sequence
from typing import NoReturn, cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.orm import Session

from labvault.accounts.devices import DeviceRegistry, is_device_token, new_device_token
from labvault.accounts.login_delay import LoginDelay
from labvault.accounts.models import (
    SUBJECT_TYPE,
    Account,
    AccountKind,
    AccountSession,
    AccountStatus,
    LockReason,
    OneTimeCode,
    RecoveryCode,
    TotpCredential,
)
from labvault.accounts.sessions import CSRF_LABEL, SessionPolicy, SessionStore, hash_token
from labvault.accounts.webauthn import METHOD as PASSKEY
from labvault.accounts.webauthn import Passkeys
from labvault.core.access.policies import default_policy
from labvault.core.access.principals import ANONYMOUS, Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext, Outcome
from labvault.core.config import Settings
from labvault.core.contact import parse_email
from labvault.core.crypto.derived import DerivedKeys
from labvault.core.crypto.errors import DecryptionError
from labvault.core.crypto.keyring import (
    Indexer,
    Keyring,
    TenantKeyring,
    require_index_generations,
)
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.crypto.otp import (
    match_totp,
    new_email_code,
    new_recovery_code,
    new_totp_secret,
    normalize_code,
    provisioning_uri,
    totp_secret_text,
)
from labvault.core.crypto.passwords import (
    PasswordHasher,
    PasswordRejected,
    check_new_password,
    normalize_password,
)
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.reindex import (
    REINDEX_PURPOSE,
    Reindex,
    apply_reindexes,
    count_pending,
    pending_ids,
)
from labvault.core.crypto.secret import Secret
from labvault.core.db import utcnow
from labvault.core.mail import Mailer
from labvault.core.mail.message import OutgoingMessage
from labvault.core.ratelimit import (
    LOCKOUT_AFTER_FAILURES,
    LOGIN_ACCOUNT_HOUR,
    LOGIN_ACCOUNT_MINUTE,
    LOGIN_CLIENT_MINUTE,
    LOGIN_GLOBAL_SECOND,
    RateLimiter,
    RateLimiterUnavailable,
    RateRule,
)
from labvault.staff.models import StaffRole

CODE_LABEL = "labvault/v1|accounts|code"
EMAIL_CODE_TTL = dt.timedelta(minutes=10)
EMAIL_CODE_ATTEMPTS = 5
RECOVERY_CODES = 10
TABLE = "accounts"
TOTP_TABLE = "totp_credentials"

SIGNUP_PER_CLIENT = RateRule("signup-client", "10/hour")
SECOND_FACTOR_PER_ACCOUNT = RateRule("second-factor-account", "10/minute")
CODE_SENDS_PER_ACCOUNT = RateRule("email-code-account", "5/hour")
EVERYONE = "all-clients-together"
"""The identifier of global limits (the limiter takes only hashed-looking identifiers)."""

RESET_PURPOSE = "password-reset"
RESET_TOKEN_TTL = dt.timedelta(minutes=15)
RESET_TOKEN_BYTES = 32
RESET_PATH = "/compte/mot-de-passe/nouveau"
"""The page that reads the token from the link's fragment and asks for the new password."""
RESET_PER_CLIENT = RateRule("password-reset-client", "20/hour")
RESET_PER_ADDRESS = RateRule("password-reset-account", "5/hour")
RESET_COMPLETE_PER_CLIENT = RateRule("password-reset-complete-client", "30/hour")
PASSWORD_CHANGE_PER_ACCOUNT = RateRule("password-change-account", "10/hour")
RESET_LINK_INVALID = "Ce lien n'est pas valable ou a expiré. Demandez un nouveau lien."
RESETTABLE = frozenset(
    {AccountStatus.ACTIVE.value, AccountStatus.LOCKED.value, AccountStatus.PENDING_EMAIL.value}
)
"""A reset link is sent to these accounts (a pending one proves its address by using it);
a closing account is treated as unknown."""
UNLOCKERS = frozenset({StaffRole.ORGANIZATION_ADMIN.value})
LOCKERS = frozenset({StaffRole.SECURITY_OFFICER.value})
"""Staff roles that may lock an account by a security decision (``lock_for_security``)."""
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
_MONTHS = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)

_ACCOUNTS = cast(Table, Account.__table__)


class AuthError(Exception):
    """The one answer to a failed sign-in step, whatever the reason (no enumeration)."""

    def __init__(self, message: str = "Adresse e-mail ou mot de passe incorrect.") -> None:
        super().__init__(message)


class ThrottledError(AuthError):
    """Too many attempts: wait ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("Trop de tentatives. Réessayez dans quelques minutes.")
        self.retry_after = retry_after


class CurrentPasswordError(AuthError):
    """A signed-in step that re-checks the password got a wrong one."""

    def __init__(self) -> None:
        super().__init__("Le mot de passe actuel est incorrect.")


class InvalidInputError(ValueError):
    """Input that cannot be used as given, with a French message for the form."""


class SecurityLockError(Exception):
    """The account was locked by a security decision (an officer, a read budget, a honey
    record): only two security officers lift it, on the security console (four eyes). The
    "denied" event is already recorded in the caller's unit of work, which commits it."""

    def __init__(self) -> None:
        super().__init__(
            "Ce compte a été bloqué par la sécurité : son déblocage demande l'accord de deux "
            "responsables de la sécurité (page « Comptes bloqués »)."
        )


class ForbiddenError(Exception):
    """The principal may not do this (e.g. unlock an account without being its admin)."""

    def __init__(self, message: str = "Action réservée à l'administration du laboratoire.") -> None:
        super().__init__(message)


def paris_time(moment: dt.datetime) -> str:
    """``moment`` as a French reader expects it, in Paris time: "1er mars 2027 à 9 h 05"."""
    local = moment.astimezone(PARIS)
    day = "1er" if local.day == 1 else str(local.day)
    return f"{day} {_MONTHS[local.month - 1]} {local.year} à {local.hour} h {local.minute:02d}"


def link_token(record_id: uuid.UUID) -> Secret[str]:
    """A token for an emailed link (reset, invitation): the row it names, then 256 random bits.

    Naming the row makes the lookup a primary-key read; only the token's SHA-256 is stored.
    """
    return Secret(f"{record_id.hex}.{secrets.token_urlsafe(RESET_TOKEN_BYTES)}")


def link_selector(token: str) -> uuid.UUID | None:
    """The row id a link token names, or None if it does not look like one of ours."""
    selector, dot, verifier = token.partition(".")
    if not dot or len(selector) != 32 or not 40 <= len(verifier) <= 64:
        return None
    try:
        return uuid.UUID(hex=selector)
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class PendingLogin:
    """The password was right: this token opens only the second-factor step."""

    token: Secret[str]
    factors: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class OpenedSession:
    token: Secret[str]
    account_id: uuid.UUID
    kind: AccountKind
    device_token: Secret[str] | None = None
    """A new device token to put in the device cookie (the browser had none, or a bad one)."""


@dataclasses.dataclass(frozen=True, slots=True)
class TotpEnrolment:
    secret_text: str
    uri: str


class AccountService:
    """Accounts of one tenant, in the caller's transaction."""

    def __init__(
        self,
        session: Session,
        *,
        tenant_id: uuid.UUID,
        provider: KeyProvider,
        mailer: Mailer,
        limiter: RateLimiter,
        settings: Settings,
        hasher: PasswordHasher,
        context: AuditContext | None = None,
        issuer: str = "labvault",
        clock: Callable[[], dt.datetime] = utcnow,
        derived: DerivedKeys | None = None,
    ) -> None:
        """``derived``: the process's cache of the provider's derivations
        (``Runtime.derived_keys``); without it they are derived for this service."""
        self._session = session
        self._tenant_id = tenant_id
        self._provider = provider
        self._mailer = mailer
        self._limiter = limiter
        self._settings = settings
        self._hasher = hasher
        self._context = context or AuditContext()
        self._issuer = issuer
        self._clock = clock
        keys = derived or DerivedKeys(provider)
        self._code_key = keys.get(CODE_LABEL)
        self.sessions = SessionStore(session, keys.get(CSRF_LABEL), clock)
        self.devices = DeviceRegistry(session, tenant_id, clock)
        self.passkeys = Passkeys(
            session,
            tenant_id=tenant_id,
            public_url=settings.public_url,
            keyring=self._keyring,
            audit=self._audit,
            send=self._send,
            check_rate=self._check_rate,
            clock=clock,
        )

    # -- plumbing ----------------------------------------------------------------------

    def _keyring(self, principal: Principal) -> TenantKeyring:
        return TenantKeyring(
            self._session, self._provider, self._tenant_id, principal, context=self._context
        )

    def _audit(
        self,
        action: AuditAction,
        account_id: uuid.UUID | None,
        *,
        principal: Principal = ANONYMOUS,
        outcome: Outcome = Outcome.SUCCESS,
        purpose: str = "authentication",
    ) -> None:
        self._keyring(principal).audit.record(
            action,
            tenant_id=self._tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=account_id,
            purpose=purpose,
            outcome=outcome,
        )

    def _logged_in(self, account: Account, principal: Principal) -> None:
        """The login's event names the access policy its session runs under (the policy is
        compiled once per subject and cached; a new policy file gets a new tag)."""
        self._audit(
            AuditAction.ACCOUNT_LOGIN_SUCCESS,
            account.id,
            principal=principal,
            purpose=default_policy().tag,
        )

    def _check_rate(
        self,
        rule: RateRule,
        identifier: str,
        throttled: AuditAction = AuditAction.ACCOUNT_LOGIN_THROTTLED,
    ) -> None:
        decision = self._limiter.hit_or_deny(rule, identifier)
        if not decision.allowed:
            self._audit(throttled, None, outcome=Outcome.DENIED)
            raise ThrottledError(decision.retry_after)

    @staticmethod
    def _principal(account: Account) -> Principal:
        return Principal(PrincipalKind(account.kind), str(account.id), role=account.role)

    def _identifier(self, email_index: bytes) -> str:
        """Rate-limit keys name an account by a hash of its blind index, never its address."""
        return hashlib.sha256(email_index).hexdigest()[:32]

    def _code_hash(self, account_id: uuid.UUID, purpose: str, code: str) -> bytes:
        message = f"{account_id}|{purpose}|{normalize_code(code)}".encode()
        return hmac.digest(self._code_key.reveal(), message, "sha256")

    def _email_index(self, email: str, kind: AccountKind) -> bytes:
        """The newest generation's index: what a new account stores, and rate limits use."""
        return _account_email_index(self._keyring(ANONYMOUS).indexer, email, kind)

    def _email_indexes(self, email: str, kind: AccountKind) -> tuple[bytes, ...]:
        """The address's index under every generation held: what lookups must match."""
        indexer = self._keyring(ANONYMOUS).indexer
        if kind is AccountKind.STAFF:
            return indexer.staff_email_candidates(email)
        return indexer.email_candidates(email)

    def _find(self, email_indexes: Sequence[bytes], kind: AccountKind) -> Account | None:
        return self._session.scalar(
            select(Account).where(
                Account.tenant_id == self._tenant_id,
                Account.kind == kind.value,
                Account.email_index.in_(email_indexes),
            )
        )

    def _open(self, account: Account, principal: Principal) -> dict[str, str | None]:
        key = self._keyring(principal).open_data_keys(SUBJECT_TYPE, [account.id], "authentication")[
            account.id
        ]
        opened = key.open_row(
            TABLE, account.id, {"email": account.email, "security_phrase": account.security_phrase}
        )
        return {c: None if v is None else v.decode() for c, v in opened.items()}

    def _send(self, account: Account, subject: str, body: str, category: str) -> None:
        """Every genuine message carries the account's security phrase (anti-phishing)."""
        fields = self._open(account, Principal(PrincipalKind.SYSTEM, "system:mailer"))
        phrase = fields["security_phrase"]
        footer = (
            f"\n\nVotre phrase de sécurité : « {phrase} ». Un message sans elle ne vient pas de "
            "votre laboratoire."
            if phrase
            else ""
        )
        self._mailer.send(
            OutgoingMessage(
                to=fields["email"] or "", subject=subject, text=body + footer, category=category
            )
        )

    def _new_code(self, account: Account, purpose: str) -> Secret[str]:
        now = self._clock()
        self._session.execute(
            update(OneTimeCode)
            .where(
                OneTimeCode.account_id == account.id,
                OneTimeCode.purpose == purpose,
                OneTimeCode.used_at.is_(None),
            )
            .values(used_at=now)
        )
        code = new_email_code()
        self._session.add(
            OneTimeCode(
                id=uuid.uuid4(),
                tenant_id=self._tenant_id,
                account_id=account.id,
                purpose=purpose,
                code_hash=self._code_hash(account.id, purpose, code.reveal()),
                expires_at=now + EMAIL_CODE_TTL,
                attempts=0,
            )
        )
        return code

    def _use_code(self, account: Account, purpose: str, code: str) -> bool:
        now = self._clock()
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
        if record is None or record.expires_at <= now or record.attempts >= EMAIL_CODE_ATTEMPTS:
            return False
        record.attempts += 1
        if not hmac.compare_digest(record.code_hash, self._code_hash(account.id, purpose, code)):
            return False
        record.used_at = now
        return True

    # -- sign-up -----------------------------------------------------------------------

    def sign_up(
        self,
        email: str,
        password: Secret[str],
        *,
        security_phrase: str | None,
        client_id: str,
        kind: AccountKind = AccountKind.PATIENT,
    ) -> None:
        """Create a pending account and email it a code; the same outcome for a known address
        (whose owner is told by email instead)."""
        self._check_rate(SIGNUP_PER_CLIENT, client_id)
        try:
            address = parse_email(email)
        except ValueError:
            raise InvalidInputError("Adresse e-mail invalide.") from None
        check_new_password(password, context=[address.split("@")[0]])
        if security_phrase is not None and not 4 <= len(security_phrase.strip()) <= 80:
            raise InvalidInputError("La phrase de sécurité doit faire de 4 à 80 caractères.")
        password_hash = self._hasher.hash(password)
        existing = self._find(self._email_indexes(address, kind), kind)
        if existing is not None:
            self._audit(AuditAction.ACCOUNT_SIGNUP_REQUEST, existing.id, outcome=Outcome.FAILURE)
            self._send(
                existing,
                "Tentative de création de compte",
                "Quelqu'un a demandé à créer un compte avec votre adresse. Si c'était vous, "
                "connectez-vous ou réinitialisez votre mot de passe.",
                "account:signup-existing",
            )
            return
        account = self._insert_account(
            address,
            password_hash,
            security_phrase,
            kind=kind,
            status=AccountStatus.PENDING_EMAIL,
        )
        account_id = account.id
        code = self._new_code(account, "email-verify")
        self._audit(AuditAction.ACCOUNT_SIGNUP_REQUEST, account_id)
        self._send(
            account,
            "Votre code de confirmation",
            f"Votre code de confirmation : {code.reveal()}\nIl est valable 10 minutes.",
            "account:email-code",
        )

    def _insert_account(
        self,
        address: str,
        password_hash: str,
        security_phrase: str | None,
        *,
        kind: AccountKind,
        status: AccountStatus,
        role: str | None = None,
        staff_id: uuid.UUID | None = None,
    ) -> Account:
        account_id = uuid.uuid4()
        keyring = self._keyring(ANONYMOUS)
        # Index and generation from one indexer: a rotation starting meanwhile cannot split them.
        indexer = keyring.indexer
        email_index = _account_email_index(indexer, address, kind)
        (key,), key_rows = keyring.new_data_keys(SUBJECT_TYPE, [account_id])
        phrase = security_phrase.strip() if security_phrase else None
        sealed = key.seal_row(
            TABLE,
            account_id,
            {"email": address.encode(), "security_phrase": phrase.encode() if phrase else None},
        )
        self._session.execute(insert(DataKeyRecord), key_rows)
        now = self._clock()
        self._session.execute(
            insert(_ACCOUNTS),
            [
                {
                    "id": account_id,
                    "tenant_id": self._tenant_id,
                    "data_key_id": key.id,
                    "kind": kind.value,
                    "status": status.value,
                    "email": sealed["email"],
                    "email_index": email_index,
                    "index_generation": indexer.generation,
                    "security_phrase": sealed["security_phrase"],
                    "password_hash": password_hash,
                    "role": role,
                    "staff_id": staff_id,
                    "failed_logins": 0,
                    "email_verified_at": now if status is AccountStatus.ACTIVE else None,
                    "password_changed_at": now,
                    "created_at": now,
                }
            ],
        )
        require_index_generations(self._session, self._tenant_id, indexer.generations)
        return self._session.get_one(Account, account_id)

    def provision(
        self,
        email: str,
        password: Secret[str],
        *,
        kind: AccountKind,
        security_phrase: str | None,
        by: Principal,
        role: str | None = None,
        staff_id: uuid.UUID | None = None,
    ) -> Account:
        """An active account whose address is already proven, created by ``by`` (the demo,
        and staff invitations once accepted). The password policy applies all the same."""
        address = parse_email(email)
        check_new_password(password, context=[address.split("@")[0]])
        if self._find(self._email_indexes(address, kind), kind) is not None:
            raise InvalidInputError("Un compte existe déjà pour cette adresse.")
        account = self._insert_account(
            address,
            self._hasher.hash(password),
            security_phrase,
            kind=kind,
            status=AccountStatus.ACTIVE,
            role=role,
            staff_id=staff_id,
        )
        self._audit(AuditAction.ACCOUNT_SIGNUP_REQUEST, account.id, principal=by)
        return account

    def confirm_email(
        self, email: str, code: str, *, kind: AccountKind = AccountKind.PATIENT
    ) -> None:
        """Prove the address: the account becomes active. One error for every failure."""
        failure = AuthError("Code incorrect ou expiré.")
        try:
            address = parse_email(email)
        except ValueError:
            raise failure from None
        account = self._find(self._email_indexes(address, kind), kind)
        if account is None or account.status != AccountStatus.PENDING_EMAIL.value:
            raise failure
        self._check_rate(SECOND_FACTOR_PER_ACCOUNT, self._identifier(account.email_index))
        if not self._use_code(account, "email-verify", code):
            self._audit(AuditAction.ACCOUNT_EMAIL_FAILURE, account.id, outcome=Outcome.FAILURE)
            raise failure
        account.status = AccountStatus.ACTIVE.value
        account.email_verified_at = self._clock()
        self._audit(AuditAction.ACCOUNT_EMAIL_CONFIRM, account.id)

    # -- login -------------------------------------------------------------------------

    def login(
        self,
        email: str,
        password: Secret[str],
        *,
        client_id: str,
        client_hash: str | None,
        kind: AccountKind = AccountKind.PATIENT,
    ) -> PendingLogin:
        """Check the password; on success a session that only opens the second factor."""
        self._check_rate(LOGIN_GLOBAL_SECOND, EVERYONE)
        self._check_rate(LOGIN_CLIENT_MINUTE, client_id)
        try:
            address = parse_email(email)
        except ValueError:
            self._hasher.verify_dummy(password)
            raise AuthError() from None
        email_index = self._email_index(address, kind)
        # The progressive delay, keyed by the submitted login whether or not it has an
        # account (labvault.accounts.login_delay): checked before any hashing.
        identifier = self._identifier(email_index)
        delay = LoginDelay(self._limiter)
        wait = delay.wait(identifier)
        if wait > 0:
            self._audit(AuditAction.ACCOUNT_LOGIN_THROTTLED, None, outcome=Outcome.DENIED)
            raise ThrottledError(wait)
        self._check_rate(LOGIN_ACCOUNT_MINUTE, identifier)
        self._check_rate(LOGIN_ACCOUNT_HOUR, identifier)
        account = self._find(self._email_indexes(address, kind), kind)
        if account is None:
            self._hasher.verify_dummy(password)
            self._audit(AuditAction.ACCOUNT_LOGIN_FAILURE, None, outcome=Outcome.FAILURE)
            delay.failed(identifier)
            raise AuthError()
        right = self._hasher.verify(account.password_hash, password)
        if not right or account.status != AccountStatus.ACTIVE.value:
            # A closing, locked or pending account answers exactly as a wrong password.
            if not right and account.status == AccountStatus.ACTIVE.value:
                self._failed(account)
            self._audit(AuditAction.ACCOUNT_LOGIN_FAILURE, account.id, outcome=Outcome.FAILURE)
            delay.failed(identifier)
            raise AuthError()
        delay.succeeded(identifier)
        account.failed_logins = 0
        if self._hasher.needs_rehash(account.password_hash):
            account.password_hash = self._hasher.hash(password)
        token, _ = self.sessions.create(
            tenant_id=self._tenant_id,
            account_id=account.id,
            policy=self._policy(account),
            client_hash=client_hash,
        )
        self._audit(AuditAction.ACCOUNT_PASSWORD_SUCCESS, account.id)
        return PendingLogin(token, self._factors(account))

    def _failed(self, account: Account) -> None:
        account.failed_logins += 1
        if account.failed_logins >= LOCKOUT_AFTER_FAILURES:
            self.lock(account, reason_principal=Principal(PrincipalKind.SYSTEM, "system:lockout"))

    def lock(
        self,
        account: Account,
        *,
        reason_principal: Principal,
        reason: LockReason = LockReason.TOO_MANY_FAILURES,
    ) -> None:
        """Lock the account for ``reason``: no login, every session revoked, the owner told.

        A too-many-failures lock is lifted by a password reset or an admin; a
        security-decision lock (``lock_for_security`` sets it) only by two security officers
        (``labvault.security.unlock``). A security
        decision on an account locked for failures replaces that reason, never the reverse.
        """
        if (
            account.status == AccountStatus.LOCKED.value
            and account.lock_reason == LockReason.SECURITY_DECISION.value
        ):
            reason = LockReason.SECURITY_DECISION
        account.status = AccountStatus.LOCKED.value
        account.locked_at = self._clock()
        account.lock_reason = reason.value
        self.sessions.revoke_all(account.id)
        if reason is LockReason.SECURITY_DECISION:
            self._audit(AuditAction.ACCOUNT_SECURITY_LOCK, account.id, principal=reason_principal)
            self._send(
                account,
                "Votre compte est verrouillé",
                "Votre laboratoire a verrouillé votre compte par mesure de sécurité. Tous vos "
                "appareils ont été déconnectés. Pour le déverrouiller, contactez votre "
                "laboratoire : un nouveau mot de passe ne suffit pas.",
                "account:locked",
            )
            return
        self._audit(AuditAction.ACCOUNT_LOCK, account.id, principal=reason_principal)
        self._send(
            account,
            "Votre compte est verrouillé",
            "Après de nombreuses tentatives de connexion infructueuses, votre compte a été "
            "verrouillé. Pour le déverrouiller, réinitialisez votre mot de passe ou contactez "
            "votre laboratoire.",
            "account:locked",
        )

    def lock_for_security(self, account: Account, by: Principal) -> None:
        """Lock an account by a security decision: a security officer of this organization,
        or an automatic guard acting as an explicit ``SystemPrincipal`` (exfiltration budget,
        honey record). Only an admin's unlock lifts it, never a password reset."""
        if account.tenant_id != self._tenant_id or not (
            isinstance(by, SystemPrincipal) or self._is_active_staff(by, LOCKERS)
        ):
            self._audit(
                AuditAction.ACCOUNT_SECURITY_LOCK, account.id, principal=by, outcome=Outcome.DENIED
            )
            raise ForbiddenError
        self.lock(account, reason_principal=by, reason=LockReason.SECURITY_DECISION)

    def _is_active_staff(self, by: Principal, roles: frozenset[str]) -> bool:
        """Whether ``by`` is an active staff account of this organization with one of
        ``roles``, checked against the database (not taken from the principal)."""
        if by.kind is not PrincipalKind.STAFF or by.role not in roles:
            return False
        try:
            account_id = uuid.UUID(by.id)
        except ValueError:
            return False
        account = self._session.get(Account, account_id)
        return (
            account is not None
            and account.tenant_id == self._tenant_id
            and account.kind == AccountKind.STAFF.value
            and account.role in roles
            and account.status == AccountStatus.ACTIVE.value
        )

    def _policy(self, account: Account) -> SessionPolicy:
        return SessionPolicy.for_kind(self._settings, AccountKind(account.kind))

    def _factors(self, account: Account) -> tuple[str, ...]:
        factors = ["email"] if account.kind == AccountKind.PATIENT.value else []
        totp = self._session.scalar(
            select(TotpCredential.id).where(
                TotpCredential.account_id == account.id, TotpCredential.confirmed_at.is_not(None)
            )
        )
        if totp is not None:
            factors.insert(0, "totp")
        if self._session.scalar(
            select(RecoveryCode.id).where(
                RecoveryCode.account_id == account.id, RecoveryCode.used_at.is_(None)
            )
        ):
            factors.append("recovery")
        return self.passkeys.offered(account, factors)

    def pending(self, token: str) -> tuple[AccountSession, Account] | None:
        """The session and account behind a token that has passed the password step."""
        record = self.sessions.find(token, self._policy_by_id)
        if record is None:
            return None
        account = self._session.get(Account, record.account_id)
        if account is None or account.status != AccountStatus.ACTIVE.value:
            return None
        return record, account

    def _policy_by_id(self, account_id: uuid.UUID) -> SessionPolicy:
        kind = self._session.scalar(select(Account.kind).where(Account.id == account_id))
        return SessionPolicy.for_kind(self._settings, AccountKind(kind or "patient"))

    def send_login_code(self, token: str) -> None:
        found = self.pending(token)
        if found is None:
            raise AuthError("Session expirée. Reconnectez-vous.")
        _, account = found
        self._check_rate(CODE_SENDS_PER_ACCOUNT, self._identifier(account.email_index))
        code = self._new_code(account, "login")
        self._send(
            account,
            "Votre code de connexion",
            f"Votre code de connexion : {code.reveal()}\nIl est valable 10 minutes. Si vous "
            "n'essayez pas de vous connecter, changez votre mot de passe.",
            "account:login-code",
        )

    def second_factor(
        self, token: str, method: str, code: str, *, device: str | None = None
    ) -> OpenedSession:
        """Complete the login: a NEW session token (the pending one is revoked).

        ``device`` is the browser's device cookie (``None`` if it has none). A login from a
        device the account has not seen before is emailed to its owner; when the browser had
        no usable cookie, the answer carries a new device token to set.
        """
        found = self.pending(token)
        if found is None:
            raise AuthError("Session expirée. Reconnectez-vous.")
        record, account = found
        if record.second_factor_at is not None:
            raise AuthError("Session déjà ouverte.")
        self._check_rate(SECOND_FACTOR_PER_ACCOUNT, self._identifier(account.email_index))
        principal = Principal(PrincipalKind(account.kind), str(account.id), role=account.role)
        if not self._check_factor(account, method, code, principal, record.id):
            self._audit(
                AuditAction.ACCOUNT_SECOND_FACTOR_FAILURE, account.id, outcome=Outcome.FAILURE
            )
            self._failed(account)
            raise AuthError("Code incorrect ou expiré.")
        return self._open_session(account, record, method, principal, device)

    def _open_session(
        self,
        account: Account,
        pending: AccountSession,
        method: str,
        principal: Principal,
        device: str | None,
    ) -> OpenedSession:
        """The second factor is proven: a NEW session replaces the pending one, the login is
        audited with its policy, and the device is remembered (a new one announced)."""
        account.failed_logins = 0
        pending.revoked_at = self._clock()
        new_token, _ = self.sessions.create(
            tenant_id=self._tenant_id,
            account_id=account.id,
            policy=self._policy(account),
            client_hash=pending.client_hash,
            second_factor=method,
        )
        self._logged_in(account, principal)
        device_token = None
        if device is None or not is_device_token(device):
            device_token = new_device_token()
            device = device_token.reveal()
        self._seen_from(account, device)
        return OpenedSession(new_token, account.id, AccountKind(account.kind), device_token)

    def _seen_from(self, account: Account, device: str) -> None:
        """Remember the device; the first time, tell the owner when (and nothing else)."""
        if not self.devices.see(account.id, device):
            return
        self._audit(AuditAction.ACCOUNT_DEVICE_NEW, account.id, principal=self._principal(account))
        self._send(
            account,
            "Nouvelle connexion à votre compte",
            f"Une connexion à votre compte a eu lieu le {paris_time(self._clock())} (heure de "
            "Paris) depuis un appareil ou un navigateur qui n'avait encore jamais servi à "
            "vous connecter.\n\nSi c'était vous, vous n'avez rien à faire. Sinon, changez "
            "tout de suite votre mot de passe et contactez votre laboratoire.",
            "account:new-device",
        )

    def _check_factor(
        self,
        account: Account,
        method: str,
        code: str,
        principal: Principal,
        session_id: uuid.UUID | None = None,
    ) -> bool:
        if method not in self._factors(account):
            return False  # e.g. a TOTP code from a role that must use its passkey
        if method == PASSKEY:
            return session_id is not None and self.passkeys.check_assertion(
                account, session_id, code
            )
        if method == "email" and account.kind == AccountKind.PATIENT.value:
            return self._use_code(account, "login", code)
        if method == "totp":
            credential = self._session.scalar(
                select(TotpCredential).where(
                    TotpCredential.account_id == account.id,
                    TotpCredential.confirmed_at.is_not(None),
                )
            )
            if credential is None:
                return False
            secret = self._totp_secret(account, credential, principal)
            step = match_totp(secret, code, after_step=credential.last_step)
            if step is None:
                return False
            credential.last_step = step
            return True
        if method == "recovery":
            used = self._session.execute(
                update(RecoveryCode)
                .where(
                    RecoveryCode.account_id == account.id,
                    RecoveryCode.code_hash == self._code_hash(account.id, "recovery", code),
                    RecoveryCode.used_at.is_(None),
                )
                .values(used_at=self._clock())
            )
            if used.rowcount:  # type: ignore[attr-defined]
                self._audit(AuditAction.ACCOUNT_RECOVERY_USE, account.id, principal=principal)
                return True
        return False

    def _totp_secret(
        self, account: Account, credential: TotpCredential, principal: Principal
    ) -> Secret[bytes]:
        key = self._keyring(principal).open_data_keys(SUBJECT_TYPE, [account.id], "authentication")[
            account.id
        ]
        return Secret(key.open(credential.secret, TOTP_TABLE, "secret", credential.id))

    # -- signed-in operations ----------------------------------------------------------

    def current(self, token: str) -> tuple[AccountSession, Account] | None:
        """The fully signed-in session (second factor done) behind ``token``."""
        found = self.pending(token)
        if found is None or found[0].second_factor_at is None:
            return None
        return found

    def logout(self, token: str) -> None:
        found = self.pending(token)
        if found is None:
            return
        record, account = found
        record.revoked_at = self._clock()
        self._audit(
            AuditAction.ACCOUNT_LOGOUT,
            account.id,
            principal=Principal(PrincipalKind(account.kind), str(account.id)),
        )

    def revoke_session(self, account: Account, session_id: uuid.UUID) -> bool:
        revoked = self.sessions.revoke(session_id, account.id)
        if revoked:
            self._audit(
                AuditAction.ACCOUNT_SESSION_REVOKE,
                account.id,
                principal=Principal(PrincipalKind(account.kind), str(account.id)),
            )
        return revoked

    def begin_totp(self, account: Account) -> TotpEnrolment:
        """A new, unconfirmed authenticator secret, sealed under the account's key."""
        principal = Principal(PrincipalKind(account.kind), str(account.id))
        key = self._keyring(principal).open_data_keys(SUBJECT_TYPE, [account.id], "enrolment")[
            account.id
        ]
        secret = new_totp_secret()
        # Only a pending secret is replaced: a confirmed app keeps working until the new
        # one is confirmed (``confirm_totp``).
        self._session.execute(
            delete(TotpCredential).where(
                TotpCredential.account_id == account.id, TotpCredential.confirmed_at.is_(None)
            )
        )
        credential_id = uuid.uuid4()
        self._session.add(
            TotpCredential(
                id=credential_id,
                tenant_id=self._tenant_id,
                account_id=account.id,
                secret=key.seal(secret.reveal(), TOTP_TABLE, "secret", credential_id),
                last_step=0,
            )
        )
        label = f"compte-{str(account.id)[:8]}"
        return TotpEnrolment(
            totp_secret_text(secret),
            provisioning_uri(secret, issuer=self._issuer, account_label=label),
        )

    def confirm_totp(self, account: Account, code: str) -> bool:
        """Confirm the pending authenticator with one of its codes; it then replaces the
        confirmed one, if any, in this transaction (never two apps, never none)."""
        principal = Principal(PrincipalKind(account.kind), str(account.id))
        credential = self._session.scalar(
            select(TotpCredential).where(
                TotpCredential.account_id == account.id, TotpCredential.confirmed_at.is_(None)
            )
        )
        if credential is None:
            return False
        step = match_totp(
            self._totp_secret(account, credential, principal), code, after_step=credential.last_step
        )
        if step is None:
            return False
        self._session.execute(
            delete(TotpCredential).where(
                TotpCredential.account_id == account.id,
                TotpCredential.confirmed_at.is_not(None),
                TotpCredential.id != credential.id,
            )
        )
        credential.last_step = step
        credential.confirmed_at = self._clock()
        self._audit(AuditAction.ACCOUNT_TOTP_ENROL, account.id, principal=principal)
        return True

    def new_recovery_codes(self, account: Account) -> list[str]:
        """Ten new single-use codes, shown once; the previous ones stop working."""
        self._session.execute(
            update(RecoveryCode)
            .where(RecoveryCode.account_id == account.id, RecoveryCode.used_at.is_(None))
            .values(used_at=self._clock())
        )
        codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
        for code in codes:
            self._session.add(
                RecoveryCode(
                    id=uuid.uuid4(),
                    tenant_id=self._tenant_id,
                    account_id=account.id,
                    code_hash=self._code_hash(account.id, "recovery", code.reveal()),
                )
            )
        self._audit(
            AuditAction.ACCOUNT_RECOVERY_CREATE,
            account.id,
            principal=Principal(PrincipalKind(account.kind), str(account.id)),
        )
        return [code.reveal() for code in codes]

    # -- password reset, change, unlock ------------------------------------------------

    def request_password_reset(
        self, email: str, *, client_id: str, kind: AccountKind = AccountKind.PATIENT
    ) -> None:
        """Email a single-use link to choose a new password. The same outcome for an unknown
        address, which gets no message (the route evens out the time taken)."""
        throttled = AuditAction.ACCOUNT_PASSWORD_RESET_THROTTLED
        self._check_rate(RESET_PER_CLIENT, client_id, throttled)
        try:
            address = parse_email(email)
        except ValueError:
            raise InvalidInputError("Adresse e-mail invalide.") from None
        email_index = self._email_index(address, kind)
        self._check_rate(RESET_PER_ADDRESS, self._identifier(email_index), throttled)
        account = self._find(self._email_indexes(address, kind), kind)
        if account is not None and self._security_locked(account):
            # A link could not lift this lock: the owner is told whom to ask instead.
            self._retire_links(RESET_PURPOSE, account.id)
            link_token(uuid.uuid4())
            self._audit(
                AuditAction.ACCOUNT_PASSWORD_RESET_REQUEST, account.id, outcome=Outcome.DENIED
            )
            self._send(
                account,
                "Choisir un nouveau mot de passe",
                "Une demande de nouveau mot de passe a été faite pour votre compte, mais votre "
                "laboratoire l'a verrouillé par mesure de sécurité : seul votre laboratoire peut "
                "le déverrouiller. Contactez-le.\n\nSi vous n'avez rien demandé, ignorez ce "
                "message.",
                "account:password-reset",
            )
            return
        if account is None or account.status not in RESETTABLE:
            # The statements of the known path that need no account, matching nothing.
            self._retire_links(RESET_PURPOSE, uuid.uuid4())
            link_token(uuid.uuid4())
            self._audit(
                AuditAction.ACCOUNT_PASSWORD_RESET_REQUEST,
                None if account is None else account.id,
                outcome=Outcome.FAILURE,
            )
            return
        token = self._new_reset_token(account)
        self._audit(AuditAction.ACCOUNT_PASSWORD_RESET_REQUEST, account.id)
        link = f"{self._settings.public_url.rstrip('/')}{RESET_PATH}#{token.reveal()}"
        unlock = (
            " Votre compte, verrouillé après trop de tentatives, sera aussi déverrouillé."
            if account.status == AccountStatus.LOCKED.value
            else ""
        )
        self._send(
            account,
            "Choisir un nouveau mot de passe",
            "Pour choisir un nouveau mot de passe, ouvrez ce lien dans les 15 minutes ; il ne "
            f"sert qu'une fois :\n{link}\n\nTous vos appareils seront déconnectés.{unlock}"
            "\n\nSi vous n'avez rien demandé, ignorez ce message : votre mot de passe ne "
            "change pas.",
            "account:password-reset",
        )

    def complete_password_reset(
        self, token: str, password: Secret[str], *, client_id: str
    ) -> AccountKind:
        """Set the new password with a reset link's token: the link is used up, every session
        revoked, failures forgotten, a too-many-failures lockout lifted (a lock by a security
        decision makes the link invalid: only an admin lifts it). One error for every bad
        token. Returns the account's kind (which login page to go to next: the holder of a
        valid link learns nothing it did not know).

        A password the policy refuses leaves the link usable (``PasswordRejected``)."""
        self._check_rate(
            RESET_COMPLETE_PER_CLIENT, client_id, AuditAction.ACCOUNT_PASSWORD_RESET_THROTTLED
        )
        now = self._clock()
        record = self._link_record(token, RESET_PURPOSE)
        account = None if record is None else self._session.get(Account, record.account_id)
        if (
            record is None
            or account is None
            or account.tenant_id != self._tenant_id
            or account.status not in RESETTABLE
            or self._security_locked(account)
            or record.used_at is not None
            or record.expires_at <= now
        ):
            self._reset_failed(account)
        principal = self._principal(account)
        self._check_new_password(account, password, principal)
        claimed = self._session.execute(
            update(OneTimeCode)
            .where(OneTimeCode.id == record.id, OneTimeCode.used_at.is_(None))
            .values(used_at=now)
        )
        if not claimed.rowcount:  # type: ignore[attr-defined]
            self._reset_failed(account)  # used by a concurrent request meanwhile
        self._set_password(account, password)
        if account.status == AccountStatus.LOCKED.value:
            self._unlocked(account, principal)
        elif account.status == AccountStatus.PENDING_EMAIL.value:
            account.status = AccountStatus.ACTIVE.value  # the link proved the address
            account.email_verified_at = now
            self._audit(AuditAction.ACCOUNT_EMAIL_CONFIRM, account.id, principal=principal)
        self.sessions.revoke_all(account.id)
        self.devices.forget_all(account.id)
        self._forget_login_failures(account)
        self._audit(AuditAction.ACCOUNT_PASSWORD_RESET_COMPLETE, account.id, principal=principal)
        self._send(
            account,
            "Votre mot de passe a été changé",
            f"Le mot de passe de votre compte a été changé le {paris_time(now)} (heure de "
            "Paris) avec un lien de réinitialisation. Tous vos appareils ont été déconnectés."
            "\n\nSi ce n'était pas vous, contactez tout de suite votre laboratoire.",
            "account:password-reset-done",
        )
        return AccountKind(account.kind)

    def change_password(
        self,
        record: AccountSession,
        account: Account,
        current: Secret[str],
        new: Secret[str],
    ) -> Secret[str]:
        """Change the password of a signed-in account. Every other session is revoked and
        the current one gets a new token (returned), as at every change of privilege."""
        principal = self._principal(account)
        self._check_rate(PASSWORD_CHANGE_PER_ACCOUNT, self._identifier(account.email_index))
        if not self._hasher.verify(account.password_hash, current):
            self._audit(
                AuditAction.ACCOUNT_PASSWORD_CHANGE_FAILURE,
                account.id,
                principal=principal,
                outcome=Outcome.FAILURE,
            )
            self._failed(account)
            raise CurrentPasswordError
        self._check_new_password(account, new, principal)
        if hmac.compare_digest(
            normalize_password(current).reveal().encode("utf-8", "surrogatepass"),
            normalize_password(new).reveal().encode("utf-8", "surrogatepass"),
        ):
            raise InvalidInputError("Choisissez un mot de passe différent de l'actuel.")
        now = self._clock()
        self._set_password(account, new)
        self.sessions.revoke_all(account.id)
        token, renewed = self.sessions.create(
            tenant_id=self._tenant_id,
            account_id=account.id,
            policy=self._policy(account),
            client_hash=record.client_hash,
            second_factor=record.second_factor,
        )
        # Same login, new token: the second factor, the step-up and the absolute deadline
        # carry over.
        renewed.second_factor_at = record.second_factor_at
        renewed.step_up_at = record.step_up_at
        renewed.absolute_expires_at = min(renewed.absolute_expires_at, record.absolute_expires_at)
        renewed.idle_expires_at = min(renewed.idle_expires_at, renewed.absolute_expires_at)
        self._audit(AuditAction.ACCOUNT_PASSWORD_CHANGE, account.id, principal=principal)
        self._send(
            account,
            "Votre mot de passe a été changé",
            f"Le mot de passe de votre compte a été changé le {paris_time(now)} (heure de "
            "Paris). Vos autres appareils ont été déconnectés.\n\nSi ce n'était pas vous, "
            "réinitialisez tout de suite votre mot de passe et contactez votre laboratoire.",
            "account:password-changed",
        )
        return token

    def account(self, account_id: uuid.UUID) -> Account | None:
        """One of this organization's accounts, or None (another tenant's is None too)."""
        found = self._session.get(Account, account_id)
        return found if found is not None and found.tenant_id == self._tenant_id else None

    def unlock(self, account: Account, by: Principal) -> bool:
        """Lift a lockout after failed logins, by an active administrator of the organization
        (checked against the database); False if the account was not locked. The reason is
        cleared; the owner is told by email. A lock by a security decision is refused
        (:class:`SecurityLockError`, audited): it needs two security officers."""
        if account.tenant_id != self._tenant_id or not self._is_active_staff(by, UNLOCKERS):
            raise ForbiddenError
        if account.status != AccountStatus.LOCKED.value:
            return False
        if account.lock_reason != LockReason.TOO_MANY_FAILURES.value:
            self._audit(
                AuditAction.ACCOUNT_UNLOCK, account.id, principal=by, outcome=Outcome.DENIED
            )
            raise SecurityLockError
        self._unlocked(account, by)
        self._forget_login_failures(account)
        self._send(
            account,
            "Votre compte est déverrouillé",
            "Votre laboratoire a déverrouillé votre compte : vous pouvez de nouveau vous "
            "connecter.\n\nSi les tentatives de connexion qui l'avaient verrouillé ne venaient "
            "pas de vous, changez votre mot de passe dès votre prochaine connexion.",
            "account:unlocked",
        )
        return True

    def _new_reset_token(self, account: Account) -> Secret[str]:
        token, _ = self._issue_link(account.id, RESET_PURPOSE, RESET_TOKEN_TTL)
        return token

    def _issue_link(
        self, account_id: uuid.UUID, purpose: str, ttl: dt.timedelta
    ) -> tuple[Secret[str], dt.datetime]:
        """A new link token for ``purpose``; the account's earlier ones stop working."""
        now = self._clock()
        self._retire_links(purpose, account_id)
        record_id = uuid.uuid4()
        token = link_token(record_id)
        self._session.add(
            OneTimeCode(
                id=record_id,
                tenant_id=self._tenant_id,
                account_id=account_id,
                purpose=purpose,
                code_hash=hash_token(token.reveal()),
                expires_at=now + ttl,
                attempts=0,
                created_at=now,
            )
        )
        self._session.flush()
        return token, now + ttl

    def _retire_links(self, purpose: str, account_id: uuid.UUID) -> None:
        self._session.execute(
            update(OneTimeCode)
            .where(
                OneTimeCode.account_id == account_id,
                OneTimeCode.purpose == purpose,
                OneTimeCode.used_at.is_(None),
            )
            .values(used_at=self._clock())
        )

    def _link_record(self, token: str, purpose: str) -> OneTimeCode | None:
        """The row of ``purpose`` whose token this is, whatever its state; None otherwise."""
        if not token or len(token) > 200 or not token.isascii():
            return None
        record_id = link_selector(token)
        record = None if record_id is None else self._session.get(OneTimeCode, record_id)
        if (
            record is None
            or record.purpose != purpose
            or record.tenant_id != self._tenant_id
            or not hmac.compare_digest(record.code_hash, hash_token(token))
        ):
            return None
        return record

    def _reset_failed(self, account: Account | None) -> NoReturn:
        self._audit(
            AuditAction.ACCOUNT_PASSWORD_RESET_FAILURE,
            None if account is None else account.id,
            outcome=Outcome.FAILURE,
        )
        raise AuthError(RESET_LINK_INVALID)

    def _check_new_password(
        self, account: Account, password: Secret[str], principal: Principal
    ) -> None:
        address = self._open(account, principal)["email"] or ""
        check_new_password(password, context=[address.split("@")[0]] if address else [])

    def _set_password(self, account: Account, password: Secret[str]) -> None:
        account.password_hash = self._hasher.hash(password)
        account.password_changed_at = self._clock()
        account.failed_logins = 0
        self._retire_links(RESET_PURPOSE, account.id)

    @staticmethod
    def _security_locked(account: Account) -> bool:
        """Locked by anything but the automatic lockout: a reset link does not lift it.

        A lock without a reason (made before reasons were recorded) counts as one: then the
        automatic lockout was the only way to lock, and a reset link lifted it."""
        return account.status == AccountStatus.LOCKED.value and account.lock_reason not in (
            None,
            LockReason.TOO_MANY_FAILURES.value,
        )

    def _unlocked(self, account: Account, by: Principal) -> None:
        account.status = AccountStatus.ACTIVE.value
        account.locked_at = None
        account.lock_reason = None
        account.failed_logins = 0
        self._audit(AuditAction.ACCOUNT_UNLOCK, account.id, principal=by)

    def _forget_login_failures(self, account: Account) -> None:
        """Clear the per-account login limits once the owner has proven themselves (an
        attacker's guessing must not keep them out). Best effort: they expire anyway."""
        identifier = self._identifier(account.email_index)
        for rule in (LOGIN_ACCOUNT_MINUTE, LOGIN_ACCOUNT_HOUR):
            with contextlib.suppress(RateLimiterUnavailable):
                self._limiter.reset(rule, identifier)


__all__ = [
    "AccountService",
    "AuthError",
    "CurrentPasswordError",
    "ForbiddenError",
    "InvalidInputError",
    "OpenedSession",
    "PasswordRejected",
    "PendingLogin",
    "SecurityLockError",
    "ThrottledError",
    "TotpEnrolment",
]


def _account_email_index(indexer: Indexer, address: str, kind: AccountKind) -> bytes:
    """Staff accounts use the staff-email key: a staff member who is a patient is unlinkable."""
    return indexer.staff_email(address) if kind is AccountKind.STAFF else indexer.email(address)


class AccountIndexes:
    """Accounts' email indexes moved to the newest index generation (``keys rotate-index``).

    Each address is opened under its account's key as the keyring's principal (a named
    system job), one audited read per account with purpose ``keys:rotate-index``.
    """

    def __init__(self, session: Session, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    def pending_reindex(self, *, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
        generation = self._keyring.indexer.generation
        tenant_id = self._keyring.tenant_id
        return pending_ids(
            self._session, _ACCOUNTS, tenant_id, generation, after=after, limit=limit
        )

    def count_pending_reindex(self) -> int:
        generation = self._keyring.indexer.generation
        return count_pending(self._session, _ACCOUNTS, self._keyring.tenant_id, generation)

    def plan_reindex(self, account_ids: Sequence[uuid.UUID]) -> list[Reindex]:
        indexer = self._keyring.indexer
        accounts = list(
            self._session.scalars(
                select(Account).where(
                    Account.tenant_id == self._keyring.tenant_id,
                    Account.id.in_(account_ids),
                    Account.index_generation < indexer.generation,
                )
            )
        )
        keys = self._keyring.open_data_keys(SUBJECT_TYPE, [a.id for a in accounts], REINDEX_PURPOSE)
        plans = []
        for account in accounts:
            key = keys[account.id]
            if key.id != account.data_key_id:
                raise DecryptionError(f"{TABLE} row {account.id}: names a data key not its own")
            email = key.open_row(TABLE, account.id, {"email": account.email})["email"]
            if email is None:
                raise DecryptionError(f"{TABLE} row {account.id}: no email to index")
            kind = AccountKind(account.kind)
            plans.append(
                Reindex(
                    row_id=account.id,
                    old_generation=account.index_generation,
                    old={"email_index": account.email_index},
                    new={
                        "email_index": _account_email_index(indexer, email.decode(), kind),
                        "index_generation": indexer.generation,
                    },
                )
            )
        return plans

    def apply_reindex(self, plans: Sequence[Reindex]) -> int:
        return apply_reindexes(self._session, _ACCOUNTS, self._keyring.tenant_id, plans)
