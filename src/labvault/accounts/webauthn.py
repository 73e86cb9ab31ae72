"""WebAuthn passkeys (py_webauthn) as a second factor: registration while signed in,
authentication after the password step, listing and removal on the security page.

Relying party
    The RP ID is the host of ``settings.public_url`` and the expected origin is its scheme,
    host and port. Browsers refuse an IP address as an RP ID ("This is an invalid domain")
    and WebAuthn needs a secure context, so an IP address, or plain ``http`` on a host other
    than ``localhost``, leaves passkeys unavailable (``relying_party`` answers ``None``): the
    pages do not offer them and the API says so with a 409.

What is stored (``webauthn_credentials``)
    - ``credential_id`` in clear: an identifier the authenticator chose, scoped to this RP,
      that every authentication sends back to the browser anyway (``allowCredentials``);
      the per-tenant unique index needs it, and it tells nothing about the person.
    - ``public_key`` (COSE) sealed under the account's data key. It is not secret, but
      sealing binds it to its row with AES-GCM: whoever can write to the database without
      the key provider cannot plant their own key to pass the second factor (nor move a
      key from one account to another); adding a passkey takes the key provider, which
      lives outside the database (I2).
    - ``label`` (chosen by the user, free text) sealed (I1).
    - ``sign_count``, ``transports``, ``created_at``, ``last_used_at`` in clear.

Challenges
    A challenge is 256 random bits, kept as a ``one_time_codes`` row of purpose
    ``webauthn-registration`` or ``webauthn-authentication``: its ``code_hash`` is the
    SHA-256 of the session id, the purpose and the challenge, so it is bound to the session
    that asked for it (a pending login, or a signed-in session); ``expires_at`` (3 minutes)
    makes it short-lived, ``used_at`` single-use: it is claimed, with a conditional update,
    before the response is verified, so a failed attempt uses it up too. A new challenge
    retires the account's earlier ones of the same purpose. No new table, no new column:
    the rows are those the email codes already use, with the same lifecycle.

Clone detection
    py_webauthn is given a current sign count of 0 so that it never refuses on the count
    itself; once the signature is verified, a count that does not grow (when either count
    is non-zero) is refused and audited as ``account:passkey:clone``. Only a validly signed
    response can raise that alarm.

Roles that require a passkey
    Organization administrators and security officers (``PASSKEY_ROLES``): once they have
    a passkey, it is the only second factor offered and accepted, but for a recovery code
    (no TOTP, which can be phished; the single-use recovery codes stay the way back in when
    every passkey is lost); their last passkey cannot be removed. Until they register
    one, ``enrolment_required`` says so (the security page warns; staff areas gate on it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
import secrets
import uuid
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit

from sqlalchemy import BigInteger, ForeignKey, ForeignKeyConstraint, Index, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column
from webauthn import (
    base64url_to_bytes,
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import parse_client_data_json
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from labvault.accounts.models import SUBJECT_TYPE, Account, AccountKind, OneTimeCode
from labvault.core.access.principals import ANONYMOUS, Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import Outcome
from labvault.core.crypto.errors import DecryptionError
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import Base, HasRandomId, RawBytes, utcnow
from labvault.core.ratelimit import RateRule
from labvault.staff.models import StaffRole

__all__ = [
    "AUTHENTICATION",
    "METHOD",
    "PASSKEY_ROLES",
    "REGISTRATION",
    "STEP_UP",
    "PasskeyError",
    "PasskeyInfo",
    "PasskeyPanel",
    "Passkeys",
    "RelyingParty",
    "WebAuthnCredential",
    "relying_party",
]

METHOD = "webauthn"
"""The second factor's name (sessions, ``_factors``, the pages)."""
TABLE = "webauthn_credentials"
REGISTRATION = "webauthn-registration"
AUTHENTICATION = "webauthn-authentication"
STEP_UP = "webauthn-step-up"
"""The challenge purpose of a signed-in session re-proving its passkey (step-up)."""
CHALLENGE_BYTES = 32
CHALLENGE_TTL = dt.timedelta(minutes=3)
CEREMONY_TIMEOUT_MS = 120_000
"""What the browser is told (a hint); the challenge outlives it a little."""
MAX_PASSKEYS = 10
MAX_CREDENTIAL_ID = 1023
"""The longest credential id WebAuthn allows (bytes)."""
MAX_LABEL = 60
RP_NAME = "labvault"
PASSKEY_ROLES = frozenset({StaffRole.ORGANIZATION_ADMIN.value, StaffRole.SECURITY_OFFICER.value})
PASSKEY_CHALLENGES_PER_ACCOUNT = RateRule("passkey-challenge-account", "30/hour")
_PARIS = zoneinfo.ZoneInfo("Europe/Paris")
_KNOWN_TRANSPORTS = frozenset(transport.value for transport in AuthenticatorTransport)
_REGISTRATION_FAILED = "La clé d'accès n'a pas pu être enregistrée. Réessayez."


class WebAuthnCredential(HasRandomId, Base):
    """A passkey of an account: its public key and label sealed under the account's key."""

    __tablename__ = TABLE
    __table_args__ = (
        Index(
            "uq_webauthn_credentials_tenant_id_credential_id",
            "tenant_id",
            "credential_id",
            unique=True,
        ),
        Index("ix_webauthn_credentials_account_id", "account_id"),
        ForeignKeyConstraint(
            ["tenant_id", "account_id"], ["accounts.tenant_id", "accounts.id"], ondelete="CASCADE"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    account_id: Mapped[uuid.UUID]
    credential_id: Mapped[bytes] = mapped_column(RawBytes)
    public_key: Mapped[bytes] = mapped_column(RawBytes)
    label: Mapped[bytes] = mapped_column(RawBytes)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    transports: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]


@dataclasses.dataclass(frozen=True, slots=True)
class RelyingParty:
    id: str
    origin: str
    name: str = RP_NAME


def relying_party(public_url: str) -> RelyingParty | None:
    """The relying party that ``public_url`` makes, or ``None`` where browsers refuse
    WebAuthn (an IP address, or plain http on a host other than localhost)."""
    try:
        parts = urlsplit(public_url)
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None
    if not host or parts.scheme not in {"http", "https"}:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    if parts.scheme == "http" and host != "localhost" and not host.endswith(".localhost"):
        return None
    default_port = 443 if parts.scheme == "https" else 80
    suffix = "" if port in (None, default_port) else f":{port}"
    return RelyingParty(host, f"{parts.scheme}://{host}{suffix}")


class PasskeyError(Exception):
    """A passkey step that cannot be done, with a French message for the user."""


@dataclasses.dataclass(frozen=True, slots=True)
class PasskeyInfo:
    id: uuid.UUID
    label: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    transports: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class PasskeyRow:
    """One passkey as the security page shows it (times in Paris)."""

    id: uuid.UUID
    label: str
    created_at: str
    last_used_at: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class PasskeyPanel:
    """What the security page says about passkeys."""

    available: bool
    required: bool
    items: tuple[PasskeyRow, ...]


class AuditFn(Protocol):
    def __call__(
        self,
        action: AuditAction,
        account_id: uuid.UUID | None,
        *,
        principal: Principal = ANONYMOUS,
        outcome: Outcome = Outcome.SUCCESS,
    ) -> None: ...


SendFn = Callable[[Account, str, str, str], None]
"""Sends a message to the account's owner: account, subject, body, category."""


def _principal(account: Account) -> Principal:
    return Principal(PrincipalKind(account.kind), str(account.id), role=account.role)


def _rate_identifier(account_id: uuid.UUID) -> str:
    return hashlib.sha256(b"labvault/v1|passkeys|" + account_id.bytes).hexdigest()[:32]


def _paris(moment: dt.datetime) -> str:
    local = moment.astimezone(_PARIS)
    return f"le {local:%d/%m/%Y} à {local:%H:%M}"


def _bytes_of(value: object) -> bytes | None:
    """A base64url text of the browser's JSON as bytes; ``None`` if it is not one."""
    if not isinstance(value, str) or not value or len(value) > 65536:
        return None
    try:
        return base64url_to_bytes(value)
    except ValueError:
        return None


def _response_field(credential: Mapping[str, Any], name: str) -> object:
    response = credential.get("response")
    return response.get(name) if isinstance(response, Mapping) else None


def _transports(credential: Mapping[str, Any]) -> str:
    listed = _response_field(credential, "transports")
    if not isinstance(listed, list):
        return ""
    known = [value for value in listed if isinstance(value, str) and value in _KNOWN_TRANSPORTS]
    return ",".join(dict.fromkeys(known))


def _label_text(label: str | None, now: dt.datetime) -> str:
    text = " ".join((label or "").split())
    if not text:
        return f"Clé d'accès ajoutée le {now.astimezone(_PARIS):%d/%m/%Y}"
    if len(text) > MAX_LABEL:
        raise PasskeyError(f"Le nom de la clé doit faire au plus {MAX_LABEL} caractères.")
    if not text.isprintable():
        raise PasskeyError("Le nom de la clé contient des caractères non autorisés.")
    return text


class Passkeys:
    """Passkeys of one tenant's accounts, in the caller's transaction.

    Built by ``AccountService`` with its own plumbing (keyring, audit, mail, rate limits).
    """

    def __init__(
        self,
        session: Session,
        *,
        tenant_id: uuid.UUID,
        public_url: str,
        keyring: Callable[[Principal], TenantKeyring],
        audit: AuditFn,
        send: SendFn,
        check_rate: Callable[[RateRule, str], None],
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._keyring = keyring
        self._audit = audit
        self._send = send
        self._check_rate = check_rate
        self._clock = clock
        self.relying_party = relying_party(public_url)

    # -- policy ------------------------------------------------------------------------

    def _rp(self) -> RelyingParty:
        if self.relying_party is None:
            raise PasskeyError("Les clés d'accès ne sont pas disponibles à cette adresse.")
        return self.relying_party

    def _credentials(self, account_id: uuid.UUID) -> list[WebAuthnCredential]:
        return list(
            self._session.scalars(
                select(WebAuthnCredential)
                .where(
                    WebAuthnCredential.tenant_id == self._tenant_id,
                    WebAuthnCredential.account_id == account_id,
                )
                .order_by(WebAuthnCredential.created_at, WebAuthnCredential.id)
            )
        )

    def has_any(self, account_id: uuid.UUID) -> bool:
        return (
            self._session.scalar(
                select(WebAuthnCredential.id)
                .where(
                    WebAuthnCredential.tenant_id == self._tenant_id,
                    WebAuthnCredential.account_id == account_id,
                )
                .limit(1)
            )
            is not None
        )

    @staticmethod
    def required(account: Account) -> bool:
        """Whether the account's role requires a passkey as its second factor."""
        return account.kind == AccountKind.STAFF.value and account.role in PASSKEY_ROLES

    def enrolment_required(self, account: Account) -> bool:
        """A role that requires a passkey, and none yet: staff areas send it to enrol."""
        return (
            self.relying_party is not None
            and self.required(account)
            and not self.has_any(account.id)
        )

    def offered(self, account: Account, methods: Sequence[str]) -> tuple[str, ...]:
        """The second factors the account may use: a passkey first when it has one, and
        nothing else for the roles that require one. Where passkeys are unavailable (see
        ``relying_party``), ``methods`` as they are."""
        others = tuple(method for method in methods if method != METHOD)
        if self.relying_party is None or not self.has_any(account.id):
            return others
        if self.required(account):
            # No TOTP (phishable, and the role's factor is the passkey); a recovery code
            # stays the way back in when every passkey is lost.
            return (METHOD, *(method for method in others if method == "recovery"))
        return (METHOD, *others)

    # -- challenges --------------------------------------------------------------------

    @staticmethod
    def _challenge_hash(session_id: uuid.UUID, purpose: str, challenge: bytes) -> bytes:
        return hashlib.sha256(
            b"labvault/v1|webauthn|" + session_id.bytes + purpose.encode() + b"|" + challenge
        ).digest()

    def _new_challenge(self, account: Account, session_id: uuid.UUID, purpose: str) -> bytes:
        self._check_rate(PASSKEY_CHALLENGES_PER_ACCOUNT, _rate_identifier(account.id))
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
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        self._session.add(
            OneTimeCode(
                id=uuid.uuid4(),
                tenant_id=self._tenant_id,
                account_id=account.id,
                purpose=purpose,
                code_hash=self._challenge_hash(session_id, purpose, challenge),
                expires_at=now + CHALLENGE_TTL,
                attempts=0,
            )
        )
        return challenge

    def _claim_challenge(
        self,
        account: Account,
        session_id: uuid.UUID,
        purpose: str,
        credential: Mapping[str, Any],
    ) -> bytes | None:
        """The challenge the browser answered, if it is the live one this session asked
        for: it is used up here, before the answer is verified."""
        client_data = _bytes_of(_response_field(credential, "clientDataJSON"))
        if client_data is None:
            return None
        try:
            challenge = parse_client_data_json(client_data).challenge
        except Exception:  # any malformed client data (several exception types)
            return None
        if len(challenge) != CHALLENGE_BYTES:
            return None
        now = self._clock()
        record = self._session.scalar(
            select(OneTimeCode).where(
                OneTimeCode.tenant_id == self._tenant_id,
                OneTimeCode.account_id == account.id,
                OneTimeCode.purpose == purpose,
                OneTimeCode.code_hash == self._challenge_hash(session_id, purpose, challenge),
            )
        )
        if record is None or record.used_at is not None or record.expires_at <= now:
            return None
        claimed = self._session.execute(
            update(OneTimeCode)
            .where(OneTimeCode.id == record.id, OneTimeCode.used_at.is_(None))
            .values(used_at=now)
        )
        return challenge if claimed.rowcount else None  # type: ignore[attr-defined]

    @staticmethod
    def _descriptor(credential: WebAuthnCredential) -> PublicKeyCredentialDescriptor:
        transports = [
            AuthenticatorTransport(value) for value in credential.transports.split(",") if value
        ]
        return PublicKeyCredentialDescriptor(
            id=bytes(credential.credential_id), transports=transports or None
        )

    # -- registration (signed in) ------------------------------------------------------

    def registration_options(self, account: Account, session_id: uuid.UUID) -> str:
        """The options for ``navigator.credentials.create``, as JSON."""
        rp = self._rp()
        existing = self._credentials(account.id)
        if len(existing) >= MAX_PASSKEYS:
            raise PasskeyError(
                f"Vous avez déjà {MAX_PASSKEYS} clés d'accès : retirez-en une avant d'en "
                "ajouter une autre."
            )
        challenge = self._new_challenge(account, session_id, REGISTRATION)
        short = str(account.id)[:8]  # no email address on the authenticator
        options = generate_registration_options(
            rp_id=rp.id,
            rp_name=rp.name,
            user_id=account.id.bytes,
            user_name=f"compte-{short}",
            user_display_name=f"Compte labvault {short}",
            challenge=challenge,
            timeout=CEREMONY_TIMEOUT_MS,
            attestation=AttestationConveyancePreference.NONE,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=[self._descriptor(credential) for credential in existing],
        )
        return options_to_json(options)

    def register(
        self,
        account: Account,
        session_id: uuid.UUID,
        credential: Mapping[str, Any],
        label: str | None = None,
    ) -> PasskeyInfo:
        """Verify the browser's answer to the registration options and keep the passkey.
        Every refusal is audited; the owner is told of a new passkey by email."""
        rp = self._rp()
        principal = _principal(account)
        now = self._clock()
        name = _label_text(label, now)
        challenge = self._claim_challenge(account, session_id, REGISTRATION, credential)
        if challenge is None:
            self._refuse_registration(account, principal)
        try:
            verified = verify_registration_response(
                credential=dict(credential),
                expected_challenge=challenge,
                expected_rp_id=rp.id,
                expected_origin=rp.origin,
                require_user_verification=False,
            )
        except Exception:  # untrusted input: py_webauthn raises several types on it
            self._refuse_registration(account, principal)
        credential_id = verified.credential_id
        if len(credential_id) > MAX_CREDENTIAL_ID:
            self._refuse_registration(account, principal)
        if self._session.scalar(
            select(WebAuthnCredential.id).where(
                WebAuthnCredential.tenant_id == self._tenant_id,
                WebAuthnCredential.credential_id == credential_id,
            )
        ):
            self._refuse_registration(account, principal, "Cette clé d'accès est déjà enregistrée.")
        if len(self._credentials(account.id)) >= MAX_PASSKEYS:
            self._refuse_registration(account, principal)
        key = self._keyring(principal).open_data_keys(SUBJECT_TYPE, [account.id], "enrolment")[
            account.id
        ]
        row_id = uuid.uuid4()
        sealed = key.seal_row(
            TABLE, row_id, {"public_key": verified.credential_public_key, "label": name.encode()}
        )
        transports = _transports(credential)
        record = WebAuthnCredential(
            id=row_id,
            tenant_id=self._tenant_id,
            account_id=account.id,
            credential_id=credential_id,
            public_key=sealed["public_key"],
            label=sealed["label"],
            sign_count=verified.sign_count,
            transports=transports,
            created_at=now,
        )
        self._session.add(record)
        self._session.flush()
        self._audit(AuditAction.ACCOUNT_PASSKEY_REGISTER, account.id, principal=principal)
        self._send(
            account,
            "Une clé d'accès a été ajoutée à votre compte",
            f"Une clé d'accès a été ajoutée à votre compte {_paris(now)} (heure de Paris). "
            "Elle permet de confirmer vos connexions.\n\nSi ce n'était pas vous, retirez-la "
            "depuis la page « Sécurité de votre compte », changez votre mot de passe et "
            "contactez votre laboratoire.",
            "account:passkey-added",
        )
        return PasskeyInfo(row_id, name, now, None, tuple(filter(None, transports.split(","))))

    def _refuse_registration(
        self, account: Account, principal: Principal, message: str = _REGISTRATION_FAILED
    ) -> NoReturn:
        self._audit(
            AuditAction.ACCOUNT_PASSKEY_FAILURE,
            account.id,
            principal=principal,
            outcome=Outcome.FAILURE,
        )
        raise PasskeyError(message)

    # -- authentication (second factor) ------------------------------------------------

    def authentication_options(
        self, account: Account, session_id: uuid.UUID, purpose: str = AUTHENTICATION
    ) -> str:
        """The options for ``navigator.credentials.get``, as JSON, for the pending login
        of ``session_id`` (or, with ``purpose=STEP_UP``, its signed-in step-up)."""
        rp = self._rp()
        credentials = self._credentials(account.id)
        if not credentials:
            raise PasskeyError("Aucune clé d'accès n'est enregistrée pour ce compte.")
        challenge = self._new_challenge(account, session_id, purpose)
        options = generate_authentication_options(
            rp_id=rp.id,
            challenge=challenge,
            timeout=CEREMONY_TIMEOUT_MS,
            allow_credentials=[self._descriptor(credential) for credential in credentials],
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        return options_to_json(options)

    def check_assertion(
        self,
        account: Account,
        session_id: uuid.UUID,
        presented: str,
        purpose: str = AUTHENTICATION,
    ) -> bool:
        """Whether ``presented`` (the browser's answer to the authentication options, as
        JSON) proves the passkey. A regressed sign count is refused and audited."""
        rp = self.relying_party
        if rp is None or len(presented) > 65536:
            return False
        try:
            credential = json.loads(presented)
        except ValueError:
            return False
        if not isinstance(credential, dict):
            return False
        challenge = self._claim_challenge(account, session_id, purpose, credential)
        raw_id = _bytes_of(credential.get("rawId"))
        if challenge is None or raw_id is None:
            return False
        stored = self._session.scalar(
            select(WebAuthnCredential).where(
                WebAuthnCredential.tenant_id == self._tenant_id,
                WebAuthnCredential.account_id == account.id,
                WebAuthnCredential.credential_id == raw_id,
            )
        )
        user_handle = _response_field(credential, "userHandle")
        if stored is None or (
            user_handle is not None and _bytes_of(user_handle) != account.id.bytes
        ):
            return False
        principal = _principal(account)
        key = self._keyring(principal).open_data_keys(SUBJECT_TYPE, [account.id], "authentication")[
            account.id
        ]
        try:
            public_key = key.open(stored.public_key, TABLE, "public_key", stored.id)
        except DecryptionError:  # altered or moved in the database
            self._audit(
                AuditAction.ACCOUNT_PASSKEY_FAILURE,
                account.id,
                principal=principal,
                outcome=Outcome.FAILURE,
            )
            return False
        try:
            verified = verify_authentication_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=rp.id,
                expected_origin=rp.origin,
                credential_public_key=public_key,
                credential_current_sign_count=0,  # checked below, once the signature is good
                require_user_verification=False,
            )
        except Exception:  # untrusted input: py_webauthn raises several types on it
            return False
        count = verified.new_sign_count
        if (count or stored.sign_count) and count <= stored.sign_count:
            self._audit(
                AuditAction.ACCOUNT_PASSKEY_CLONE,
                account.id,
                principal=principal,
                outcome=Outcome.DENIED,
            )
            return False
        stored.sign_count = count
        stored.last_used_at = self._clock()
        return True

    # -- listing and removal -----------------------------------------------------------

    def listing(self, account: Account) -> list[PasskeyInfo]:
        """The account's passkeys, labels opened (one audited unwrap of the account key)."""
        rows = self._credentials(account.id)
        if not rows:
            return []
        key = self._keyring(_principal(account)).open_data_keys(
            SUBJECT_TYPE, [account.id], "security-settings"
        )[account.id]
        return [
            PasskeyInfo(
                row.id,
                key.open(row.label, TABLE, "label", row.id).decode(),
                row.created_at,
                row.last_used_at,
                tuple(filter(None, row.transports.split(","))),
            )
            for row in rows
        ]

    def panel(self, account: Account) -> PasskeyPanel:
        return PasskeyPanel(
            available=self.relying_party is not None,
            required=self.required(account),
            items=tuple(
                PasskeyRow(
                    item.id,
                    item.label,
                    _paris(item.created_at),
                    None if item.last_used_at is None else _paris(item.last_used_at),
                )
                for item in self.listing(account)
            ),
        )

    def delete(self, account: Account, passkey_id: uuid.UUID) -> bool:
        """Remove one of the account's passkeys; False if it has no such passkey. The last
        passkey of a role that requires one stays."""
        rows = self._credentials(account.id)
        target = next((row for row in rows if row.id == passkey_id), None)
        if target is None:
            return False
        if self.required(account) and len(rows) == 1:
            raise PasskeyError(
                "Votre rôle exige une clé d'accès : ajoutez-en une autre avant de retirer celle-ci."
            )
        self._session.delete(target)
        self._session.flush()
        principal = _principal(account)
        self._audit(AuditAction.ACCOUNT_PASSKEY_DELETE, account.id, principal=principal)
        self._send(
            account,
            "Une clé d'accès a été retirée de votre compte",
            f"Une clé d'accès a été retirée de votre compte {_paris(self._clock())} (heure de "
            "Paris).\n\nSi ce n'était pas vous, changez tout de suite votre mot de passe et "
            "contactez votre laboratoire.",
            "account:passkey-removed",
        )
        return True
