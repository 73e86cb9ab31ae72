"""Sign-up, email proof, login with a mandatory second factor, sessions, factors.

Every answer that could tell whether an account exists is the same for a known and an
unknown address (invariant I7): sign-up always says "check your mailbox", login always says
"email or password is wrong", and a login for an unknown address still spends one password
hash. Rate limits are checked before any hashing, and fail closed. Every step is audited.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import uuid
from collections.abc import Callable
from typing import cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from labvault.accounts.models import (
    SUBJECT_TYPE,
    Account,
    AccountKind,
    AccountSession,
    AccountStatus,
    OneTimeCode,
    RecoveryCode,
    TotpCredential,
)
from labvault.accounts.sessions import CSRF_LABEL, SessionPolicy, SessionStore
from labvault.core.access.principals import ANONYMOUS, Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext, Outcome
from labvault.core.config import Settings
from labvault.core.contact import parse_email
from labvault.core.crypto.keyring import TenantKeyring
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
)
from labvault.core.crypto.providers.base import KeyProvider
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
    RateRule,
)

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


class InvalidInputError(ValueError):
    """Input that cannot be used as given, with a French message for the form."""


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
    ) -> None:
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
        self._code_key = provider.derive_key(CODE_LABEL)
        self.sessions = SessionStore(session, provider.derive_key(CSRF_LABEL), clock)

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
    ) -> None:
        self._keyring(principal).audit.record(
            action,
            tenant_id=self._tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=account_id,
            purpose="authentication",
            outcome=outcome,
        )

    def _check_rate(self, rule: RateRule, identifier: str) -> None:
        decision = self._limiter.hit_or_deny(rule, identifier)
        if not decision.allowed:
            self._audit(AuditAction.ACCOUNT_LOGIN_THROTTLED, None, outcome=Outcome.DENIED)
            raise ThrottledError(decision.retry_after)

    def _identifier(self, email_index: bytes) -> str:
        """Rate-limit keys name an account by a hash of its blind index, never its address."""
        return hashlib.sha256(email_index).hexdigest()[:32]

    def _code_hash(self, account_id: uuid.UUID, purpose: str, code: str) -> bytes:
        message = f"{account_id}|{purpose}|{normalize_code(code)}".encode()
        return hmac.digest(self._code_key.reveal(), message, "sha256")

    def _email_index(self, email: str, kind: AccountKind) -> bytes:
        indexer = self._keyring(ANONYMOUS).indexer
        return indexer.staff_email(email) if kind is AccountKind.STAFF else indexer.email(email)

    def _find(self, email_index: bytes, kind: AccountKind) -> Account | None:
        return self._session.scalar(
            select(Account).where(
                Account.tenant_id == self._tenant_id,
                Account.kind == kind.value,
                Account.email_index == email_index,
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
        email_index = self._email_index(address, kind)
        existing = self._find(email_index, kind)
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
        account_id = uuid.uuid4()
        keyring = self._keyring(ANONYMOUS)
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
                    "status": AccountStatus.PENDING_EMAIL.value,
                    "email": sealed["email"],
                    "email_index": email_index,
                    "security_phrase": sealed["security_phrase"],
                    "password_hash": password_hash,
                    "failed_logins": 0,
                    "password_changed_at": now,
                    "created_at": now,
                }
            ],
        )
        account = self._session.get_one(Account, account_id)
        code = self._new_code(account, "email-verify")
        self._audit(AuditAction.ACCOUNT_SIGNUP_REQUEST, account_id)
        self._send(
            account,
            "Votre code de confirmation",
            f"Votre code de confirmation : {code.reveal()}\nIl est valable 10 minutes.",
            "account:email-code",
        )

    def confirm_email(
        self, email: str, code: str, *, kind: AccountKind = AccountKind.PATIENT
    ) -> None:
        """Prove the address: the account becomes active. One error for every failure."""
        failure = AuthError("Code incorrect ou expiré.")
        try:
            address = parse_email(email)
        except ValueError:
            raise failure from None
        account = self._find(self._email_index(address, kind), kind)
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
        self._check_rate(LOGIN_ACCOUNT_MINUTE, self._identifier(email_index))
        self._check_rate(LOGIN_ACCOUNT_HOUR, self._identifier(email_index))
        account = self._find(email_index, kind)
        if account is None:
            self._hasher.verify_dummy(password)
            self._audit(AuditAction.ACCOUNT_LOGIN_FAILURE, None, outcome=Outcome.FAILURE)
            raise AuthError()
        right = self._hasher.verify(account.password_hash, password)
        if not right or account.status != AccountStatus.ACTIVE.value:
            if not right and account.status == AccountStatus.ACTIVE.value:
                self._failed(account)
            self._audit(AuditAction.ACCOUNT_LOGIN_FAILURE, account.id, outcome=Outcome.FAILURE)
            raise AuthError()
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

    def lock(self, account: Account, *, reason_principal: Principal) -> None:
        account.status = AccountStatus.LOCKED.value
        account.locked_at = self._clock()
        self.sessions.revoke_all(account.id)
        self._audit(AuditAction.ACCOUNT_LOCK, account.id, principal=reason_principal)
        self._send(
            account,
            "Votre compte est verrouillé",
            "Après de nombreuses tentatives de connexion infructueuses, votre compte a été "
            "verrouillé. Pour le déverrouiller, réinitialisez votre mot de passe ou contactez "
            "votre laboratoire.",
            "account:locked",
        )

    def _policy(self, account: Account) -> SessionPolicy:
        return SessionPolicy.for_kind(self._settings, AccountKind(account.kind))

    def _factors(self, account: Account) -> tuple[str, ...]:
        factors = ["email"] if account.kind == AccountKind.PATIENT.value else []
        totp = self._session.scalar(
            select(TotpCredential).where(TotpCredential.account_id == account.id)
        )
        if totp is not None and totp.confirmed_at is not None:
            factors.insert(0, "totp")
        if self._session.scalar(
            select(RecoveryCode.id).where(
                RecoveryCode.account_id == account.id, RecoveryCode.used_at.is_(None)
            )
        ):
            factors.append("recovery")
        return tuple(factors)

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

    def second_factor(self, token: str, method: str, code: str) -> OpenedSession:
        """Complete the login: a NEW session token (the pending one is revoked)."""
        found = self.pending(token)
        if found is None:
            raise AuthError("Session expirée. Reconnectez-vous.")
        record, account = found
        if record.second_factor_at is not None:
            raise AuthError("Session déjà ouverte.")
        self._check_rate(SECOND_FACTOR_PER_ACCOUNT, self._identifier(account.email_index))
        principal = Principal(PrincipalKind(account.kind), str(account.id), role=account.role)
        if not self._check_factor(account, method, code, principal):
            self._audit(
                AuditAction.ACCOUNT_SECOND_FACTOR_FAILURE, account.id, outcome=Outcome.FAILURE
            )
            self._failed(account)
            raise AuthError("Code incorrect ou expiré.")
        account.failed_logins = 0
        record.revoked_at = self._clock()
        new_token, _ = self.sessions.create(
            tenant_id=self._tenant_id,
            account_id=account.id,
            policy=self._policy(account),
            client_hash=record.client_hash,
            second_factor=method,
        )
        self._audit(AuditAction.ACCOUNT_LOGIN_SUCCESS, account.id, principal=principal)
        return OpenedSession(new_token, account.id, AccountKind(account.kind))

    def _check_factor(self, account: Account, method: str, code: str, principal: Principal) -> bool:
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
        existing = self._session.scalar(
            select(TotpCredential).where(TotpCredential.account_id == account.id)
        )
        if existing is not None:
            self._session.delete(existing)
            self._session.flush()
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
        principal = Principal(PrincipalKind(account.kind), str(account.id))
        credential = self._session.scalar(
            select(TotpCredential).where(TotpCredential.account_id == account.id)
        )
        if credential is None:
            return False
        step = match_totp(
            self._totp_secret(account, credential, principal), code, after_step=credential.last_step
        )
        if step is None:
            return False
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


__all__ = [
    "AccountService",
    "AuthError",
    "InvalidInputError",
    "OpenedSession",
    "PasswordRejected",
    "PendingLogin",
    "ThrottledError",
    "TotpEnrolment",
]
