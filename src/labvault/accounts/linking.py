"""Linking a patient account to Patient records: its own, and minors it acts for.

An account is a login, not a person's file (``accounts.models``). This module sets
``accounts.patient_id`` (the account's own record) and ``account_dependents`` rows (a parent
or legal guardian acting for a minor), once the link is proven, in one of two ways.

Online, with a code sent to the contact on file
    A signed-in patient account gives birth name, first name(s), birth date and NIR. The
    input is checked first (a malformed NIR gets a precise French error: that says nothing
    about any record). Then rate limits (per account and per client) are spent, before any
    lookup or decryption. The record is found by the NIR blind index, opened through the
    keyring (so the opening is audited, and the patient sees it in their access history),
    and its traits compared, normalised (case, accents, spaces, hyphens; the first given
    name typed must be one of the record's given names). Only when a record matches, is not
    linked yet and has an email address, a 6-digit code is sent to THAT address (not the
    account's): whoever controls the contact the laboratory has on file proves the record
    is theirs (or, for a minor, that they are the contact the family gave). If the record is
    already linked, its contact gets a notice without any personal data instead. The answer
    to the account is the same in every case ("if these details match a record, a code was
    sent to its contact; otherwise go to the lab desk"), and the routes answer after the
    same minimum time, delivering mail after the answer: the form is no NIR/identity oracle.
    Every request also retires the account's pending code, matched or not, so that a
    previous code working or not says nothing about the latest request either.

    The pending link is a ``one_time_codes`` row whose purpose names what the right code
    will link: ``link:<o|p|g>:<record id, base64url>`` (own record, parent, legal
    guardian). The code's keyed hash covers that purpose, so a code is good for that
    record only; 10 minutes, 5 attempts, single use, like the email codes. (The table has no
    column for a target; the purpose holds it, which stores in clear what
    ``accounts.patient_id`` and ``account_dependents`` store anyway once linked.)

    The security phrase of a message shows its *recipient* that it is genuine. The code goes
    to the record's contact, who is not necessarily the account's owner: the message carries
    the phrase of the patient account registered under the recipient's address (usually the
    requesting account itself), and no phrase if there is none. Putting the requesting
    account's phrase in a message to somebody else's mailbox would hand that phrase to a
    third party (and, to the record's real owner, a phrase that is not theirs).

At the lab desk
    The patient shows an identity document (for a minor: the livret de famille or a court
    decision). In their account they ask for a short desk code (``desk-link``, 30 minutes,
    5 attempts), shown on screen. A receptionist (no other role: organization admins and
    security officers have no health data) enters the record id found by their search, the
    account's email address and the code; the link is made with the receptionist as the
    audited actor. A wrong code, an unknown address or record and a refused role all get
    the same answer (``LinkNotFoundError``, a 404).

Dependents
    A dependent must be under 18: checked from the decrypted birth date when added and every
    time the guardian acts (``acts_for``), never stored in clear (not in
    ``account_dependents``). The right ends on the 18th birthday (a 29 February birth: on
    28 February of a common year, the earlier day). Guardians list and remove dependents;
    staff can revoke one.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import enum
import hmac
import re
import unicodedata
import uuid
import zoneinfo
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labvault.accounts.models import (
    Account,
    AccountDependent,
    AccountKind,
    AccountStatus,
    DependentRelationship,
    DependentVerification,
    OneTimeCode,
)
from labvault.accounts.services import AccountService, InvalidInputError
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import Outcome
from labvault.core.contact import parse_email
from labvault.core.crypto.keyring import Keyring
from labvault.core.crypto.normalize import normalize_name
from labvault.core.crypto.otp import new_email_code
from labvault.core.crypto.secret import Secret
from labvault.core.mail.message import OutgoingMessage
from labvault.core.ratelimit import RateRule
from labvault.patients.nir import Nir, NirError, NirProblem
from labvault.patients.scope import IdentityVerification, staff_scope, window_from
from labvault.patients.services import SUBJECT_TYPE as PATIENT_SUBJECT
from labvault.patients.services import PatientRepository
from labvault.staff.models import StaffRole

__all__ = [
    "DESK_CODE_TTL",
    "LINK_CODE_TTL",
    "ActingRecord",
    "DeskCode",
    "IdentityTraits",
    "LinkCodeError",
    "LinkConflictError",
    "LinkForbiddenError",
    "LinkNotFoundError",
    "PatientLinks",
    "Relationship",
    "TraitsError",
    "account_acts_for",
    "is_minor",
    "parse_traits",
]

LINK_CODE_TTL: Final = dt.timedelta(minutes=10)
LINK_CODE_ATTEMPTS: Final = 5
DESK_CODE_TTL: Final = dt.timedelta(minutes=30)
DESK_PURPOSE: Final = "desk-link"
LINK_PREFIX: Final = "link:"
MAJORITY: Final = 18
PARIS: Final = zoneinfo.ZoneInfo("Europe/Paris")

LINK_PER_ACCOUNT: Final = RateRule("patient-link-account", "5/day")
LINK_PER_CLIENT: Final = RateRule("patient-link-client", "20/day")
CONFIRM_PER_ACCOUNT: Final = RateRule("patient-link-confirm-account", "10/minute")
DESK_CODES_PER_ACCOUNT: Final = RateRule("desk-code-account", "10/hour")
DESK_PER_STAFF: Final = RateRule("desk-link-staff", "60/hour")

LINK_PURPOSE: Final = "account-link"
"""The audit purpose of the lookups, openings and links of this module."""
GUARDIAN_PURPOSE: Final = "guardian-check"
LIST_PURPOSE: Final = "account-patients"
DESK_ROLES: Final = frozenset({StaffRole.RECEPTIONIST.value})

CODE_INVALID: Final = "Code incorrect ou expiré. Demandez un nouveau code si besoin."
NOT_FOUND: Final = "Aucun rattachement possible avec ces informations."
_MAX_NAME: Final = 100
_MAX_FIRST_NAMES: Final = 200
_EARLIEST: Final = dt.date(1900, 1, 1)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_GIVEN_NAME_SEPARATOR = re.compile(r"[\s,]+")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")

_NIR_MESSAGES: Final[dict[NirProblem, str]] = {
    NirProblem.EMPTY: "Saisissez votre numéro de sécurité sociale.",
    NirProblem.BAD_CHARACTER: (
        "Le numéro de sécurité sociale ne contient que des chiffres (2A ou 2B pour un "
        "département de naissance en Corse) ; les espaces sont acceptés."
    ),
    NirProblem.TOO_SHORT: (
        "Ce numéro est trop court : un numéro de sécurité sociale compte 15 caractères, "
        "clé comprise."
    ),
    NirProblem.TOO_LONG: (
        "Ce numéro est trop long : un numéro de sécurité sociale compte 15 caractères, "
        "clé comprise."
    ),
    NirProblem.MISSING_KEY: (
        "La clé manque : ajoutez les 2 derniers chiffres du numéro (15 caractères en tout)."
    ),
    NirProblem.LETTERS_IN_KEY: "La clé (les 2 derniers caractères) doit être faite de 2 chiffres.",
    NirProblem.BAD_KEY: (
        "La clé (les 2 derniers chiffres) ne correspond pas au reste du numéro : vérifiez-le, "
        "une erreur de frappe est probable."
    ),
    NirProblem.BAD_SEX: "Le premier chiffre du numéro de sécurité sociale doit être 1 ou 2.",
    NirProblem.BAD_MONTH: (
        "Le mois de naissance (4e et 5e chiffres) n'est pas valable : vérifiez le numéro."
    ),
    NirProblem.BAD_DEPARTMENT: (
        "Le département de naissance (6e et 7e caractères) n'est pas valable : vérifiez le numéro."
    ),
    NirProblem.BAD_COMMUNE: (
        "La commune ou le pays de naissance (8e à 10e chiffres) ne peut pas être 000 : "
        "vérifiez le numéro."
    ),
    NirProblem.BAD_ORDER: (
        "Le numéro d'ordre (11e à 13e chiffres) ne peut pas être 000 : vérifiez le numéro."
    ),
}


class Relationship(enum.StrEnum):
    """Whose record a link is for: the account's owner, or a minor they act for."""

    SELF = "self"
    PARENT = DependentRelationship.PARENT.value
    LEGAL_GUARDIAN = DependentRelationship.LEGAL_GUARDIAN.value


_PURPOSE_LETTERS: Final = {
    Relationship.SELF: "o",
    Relationship.PARENT: "p",
    Relationship.LEGAL_GUARDIAN: "g",
}
_LETTER_RELATIONSHIPS: Final = {letter: rel for rel, letter in _PURPOSE_LETTERS.items()}


# --- errors -----------------------------------------------------------------------------------


class TraitsError(InvalidInputError):
    """Identity traits that cannot be used as given: French messages by field."""

    def __init__(self, errors: dict[str, str], codes: dict[str, str] | None = None) -> None:
        super().__init__(next(iter(errors.values())))
        self.errors = errors
        self.codes = codes or {}


class LinkCodeError(InvalidInputError):
    """A wrong, used, expired or exhausted link code (one message for every reason)."""

    def __init__(self) -> None:
        super().__init__(CODE_INVALID)


class LinkConflictError(InvalidInputError):
    """The link was proven but cannot be made as it stands (already linked, no longer a
    minor...): the French message says why."""


class LinkForbiddenError(Exception):
    """This account may not do this (e.g. a staff account on a patient's link routes)."""


class LinkNotFoundError(Exception):
    """The one answer of the desk routes to anything they cannot do: unknown account,
    record or code, wrong code, or a staff member whose role may not (I7)."""


# --- input ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class IdentityTraits:
    """What a patient types to find their record. Its repr shows nothing."""

    birth_name: str
    first_names: str
    birth_date: dt.date
    nir: Nir

    def __repr__(self) -> str:
        return "IdentityTraits(**********)"


def _clean(value: str) -> str:
    return " ".join(unicodedata.normalize("NFC", value).split())


def _check_name(value: str, field: str, errors: dict[str, str], *, limit: int) -> str:
    cleaned = _clean(value)
    labels = {"birth_name": "votre nom de naissance", "first_names": "votre prénom"}
    if not cleaned:
        errors[field] = f"Saisissez {labels.get(field, 'ce champ')}."
    elif len(cleaned) > limit:
        errors[field] = f"Ce champ est trop long ({limit} caractères au plus)."
    elif _UNPRINTABLE.search(value):
        errors[field] = "Ce champ contient des caractères invisibles ou de contrôle."
    elif not _LETTER.search(cleaned) or _DIGIT.search(cleaned):
        errors[field] = "Ce champ ne doit contenir que des lettres (sans chiffres)."
    return cleaned


def parse_traits(
    birth_name: str, first_names: str, birth_date: str, nir: str, *, today: dt.date
) -> IdentityTraits:
    """Check and normalise the traits typed in a form or sent to the API.

    Raises :class:`TraitsError` with a French message per field (``birth_name``,
    ``first_names``, ``birth_date``, ``nir``) and, for the NIR, the stable problem code.
    """
    errors: dict[str, str] = {}
    codes: dict[str, str] = {}
    name = _check_name(birth_name, "birth_name", errors, limit=_MAX_NAME)
    given = _check_name(first_names, "first_names", errors, limit=_MAX_FIRST_NAMES)
    born: dt.date | None = None
    text = birth_date.strip()
    if not text:
        errors["birth_date"] = "Saisissez la date de naissance."
    else:
        if _ISO_DATE.fullmatch(text):
            try:
                born = dt.date.fromisoformat(text)
            except ValueError:
                born = None
        if born is None:
            errors["birth_date"] = "Saisissez une date réelle, au format AAAA-MM-JJ."
        elif born > today:
            errors["birth_date"] = "La date de naissance ne peut pas être dans le futur."
        elif born < _EARLIEST:
            errors["birth_date"] = "La date de naissance ne peut pas être avant 1900."
    parsed: Nir | None = None
    if len(nir) > 64:
        errors["nir"] = _NIR_MESSAGES[NirProblem.TOO_LONG]
        codes["nir"] = NirProblem.TOO_LONG.value
    else:
        try:
            parsed = Nir.parse(nir)
        except NirError as exc:
            errors["nir"] = _NIR_MESSAGES[exc.problem]
            codes["nir"] = exc.problem.value
    if parsed is not None and born is not None and "birth_date" not in errors:
        if parsed.birth_year != f"{born.year % 100:02d}":
            errors["nir"] = (
                "Les 2e et 3e chiffres du numéro (l'année de naissance) ne correspondent pas à "
                "la date de naissance saisie."
            )
            codes["nir"] = "birth_year_mismatch"
        elif 1 <= int(parsed.birth_month) <= 12 and int(parsed.birth_month) != born.month:
            errors["nir"] = (
                "Les 4e et 5e chiffres du numéro (le mois de naissance) ne correspondent pas à "
                "la date de naissance saisie."
            )
            codes["nir"] = "birth_month_mismatch"
    if errors or parsed is None or born is None:
        raise TraitsError(errors, codes)
    return IdentityTraits(name, given, born, parsed)


# --- ages -------------------------------------------------------------------------------------


def eighteenth_birthday(birth_date: dt.date) -> dt.date:
    """The day the right of a guardian ends; 28 February for a 29 February birth."""
    year = birth_date.year + MAJORITY
    try:
        return birth_date.replace(year=year)
    except ValueError:
        return dt.date(year, 2, 28)


def is_minor(birth_date: dt.date, today: dt.date) -> bool:
    return today < eighteenth_birthday(birth_date)


def paris_today(now: dt.datetime) -> dt.date:
    return now.astimezone(PARIS).date()


def _given_names(first_names: str) -> set[str]:
    names = {normalize_name(part) for part in _GIVEN_NAME_SEPARATOR.split(first_names.strip())}
    names.add(normalize_name(first_names))
    return {name for name in names if name}


def traits_match(
    traits: IdentityTraits, birth_name: str, first_names: str, birth_date: dt.date
) -> bool:
    """Birth name and birth date equal (normalised); the first given name typed (or the
    whole text typed) is one of the record's given names (or all of them)."""
    typed = {normalize_name(traits.first_names)}
    first = _GIVEN_NAME_SEPARATOR.split(traits.first_names.strip(), maxsplit=1)[0]
    typed.add(normalize_name(first))
    return (
        hmac.compare_digest(
            normalize_name(traits.birth_name).encode(), normalize_name(birth_name).encode()
        )
        and traits.birth_date == birth_date
        and bool(typed & _given_names(first_names))
    )


# --- link purposes ----------------------------------------------------------------------------


def link_purpose(relationship: Relationship, patient_id: uuid.UUID) -> str:
    """``link:o:<22 characters>``: what the code of a pending online link will link."""
    encoded = base64.urlsafe_b64encode(patient_id.bytes).decode().rstrip("=")
    return f"{LINK_PREFIX}{_PURPOSE_LETTERS[relationship]}:{encoded}"


def parse_link_purpose(purpose: str) -> tuple[Relationship, uuid.UUID] | None:
    prefix, letter, encoded = purpose[: len(LINK_PREFIX)], purpose[5:6], purpose[7:]
    if prefix != LINK_PREFIX or letter not in _LETTER_RELATIONSHIPS or purpose[6:7] != ":":
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded + "==")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 16:
        return None
    return _LETTER_RELATIONSHIPS[letter], uuid.UUID(bytes=raw)


# --- results ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ActingRecord:
    """A record an account acts for, with as little as a person needs to tell them apart."""

    id: uuid.UUID
    relationship: Relationship
    first_name: str
    birth_name_initial: str

    def __repr__(self) -> str:
        return f"ActingRecord(id={self.id}, relationship={self.relationship.value})"


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class DeskCode:
    code: Secret[str]
    expires_at: dt.datetime

    def __repr__(self) -> str:
        return "DeskCode(**********)"


@dataclasses.dataclass(frozen=True, slots=True)
class Linked:
    patient_id: uuid.UUID
    relationship: Relationship


# --- the guardian's right ---------------------------------------------------------------------


def _verifier(session: Session, keyring: Keyring, *fields: str) -> PatientRepository:
    """The patient repository reading only ``fields`` of any record, to check a claim about
    it (each opening audited as the caller: see ``IdentityVerification``)."""
    return PatientRepository(session, keyring, IdentityVerification(frozenset(fields)))


def account_acts_for(
    session: Session,
    keyring: Keyring,
    account: Account,
    patient_id: uuid.UUID,
    *,
    today: dt.date,
) -> bool:
    """Whether ``account`` may act for the record ``patient_id`` today: its own record, or a
    current (not revoked) dependent who is still under 18, checked from the birth date
    decrypted now (the opening is audited, purpose ``guardian-check``).

    False for another tenant's account or record, an account that is not an active patient
    account, a revoked row, and from the dependent's 18th birthday on.
    """
    tenant_id = keyring.tenant_id
    if (
        account.tenant_id != tenant_id
        or account.kind != AccountKind.PATIENT.value
        or account.status != AccountStatus.ACTIVE.value
    ):
        return False
    if account.patient_id is not None and account.patient_id == patient_id:
        return True
    row = session.scalar(
        select(AccountDependent.id).where(
            AccountDependent.tenant_id == tenant_id,
            AccountDependent.account_id == account.id,
            AccountDependent.patient_id == patient_id,
            AccountDependent.revoked_at.is_(None),
        )
    )
    if row is None:
        return False
    record = _verifier(session, keyring, "birth_date").get(patient_id, purpose=GUARDIAN_PURPOSE)
    if record is None or record.birth_date is None:
        return False
    return is_minor(record.birth_date, today)


# --- the service ------------------------------------------------------------------------------


class PatientLinks:
    """Record links of one tenant's accounts, on an :class:`AccountService` (its transaction,
    keys, mailer, rate limiter, clock and audit context)."""

    def __init__(self, accounts: AccountService) -> None:
        self._accounts = accounts
        self._session: Session = accounts._session
        self._tenant_id: uuid.UUID = accounts._tenant_id

    # -- plumbing ------------------------------------------------------------------------

    def _now(self) -> dt.datetime:
        return self._accounts._clock()

    def today(self) -> dt.date:
        return paris_today(self._now())

    def _keyring(self, principal: Principal) -> Keyring:
        return self._accounts._keyring(principal)

    def _audit(
        self,
        action: AuditAction,
        principal: Principal,
        *,
        target_type: str,
        target_id: uuid.UUID | None,
        purpose: str = LINK_PURPOSE,
        outcome: Outcome = Outcome.SUCCESS,
    ) -> None:
        self._keyring(principal).audit.record(
            action,
            tenant_id=self._tenant_id,
            target_type=target_type,
            target_id=target_id,
            purpose=purpose,
            outcome=outcome,
        )

    def _account_event(
        self,
        action: AuditAction,
        account: Account,
        principal: Principal,
        outcome: Outcome = Outcome.SUCCESS,
    ) -> None:
        self._audit(action, principal, target_type="account", target_id=account.id, outcome=outcome)

    def _require_patient_account(self, account: Account) -> Principal:
        if (
            account.kind != AccountKind.PATIENT.value
            or account.tenant_id != self._tenant_id
            or account.status != AccountStatus.ACTIVE.value
        ):
            raise LinkForbiddenError
        return self._accounts._principal(account)

    def _throttle(self, rule: RateRule, identifier: str) -> None:
        self._accounts._check_rate(rule, identifier, AuditAction.ACCOUNT_PATIENT_LINK_THROTTLED)

    def _in_desk_scope(self, staff: Account, principal: Principal, patient_id: uuid.UUID) -> bool:
        """The receptionist reaches the record: in care at one of their sites, or under a
        break-glass grant (a walk-in with no appointment yet)."""
        if staff.staff_id is None:
            return False
        scope = staff_scope(
            self._session,
            principal,
            self._tenant_id,
            staff.staff_id,
            window=window_from(self._accounts._settings),
            now=self._now(),
        )
        return PatientRepository(self._session, self._keyring(principal), scope).exists(patient_id)

    def _patient_exists(self, patient_id: uuid.UUID, by: Principal) -> bool:
        return _verifier(self._session, self._keyring(by), "identity_status").exists(patient_id)

    def _retire(self, account_id: uuid.UUID, *, desk: bool) -> None:
        purpose = (
            OneTimeCode.purpose == DESK_PURPOSE
            if desk
            else OneTimeCode.purpose.startswith(LINK_PREFIX, autoescape=True)
        )
        self._session.execute(
            update(OneTimeCode)
            .where(OneTimeCode.account_id == account_id, purpose, OneTimeCode.used_at.is_(None))
            .values(used_at=self._now())
        )

    def _new_code(self, account_id: uuid.UUID, purpose: str, ttl: dt.timedelta) -> Secret[str]:
        code = new_email_code()
        now = self._now()
        self._session.add(
            OneTimeCode(
                id=uuid.uuid4(),
                tenant_id=self._tenant_id,
                account_id=account_id,
                purpose=purpose,
                code_hash=self._accounts._code_hash(account_id, purpose, code.reveal()),
                expires_at=now + ttl,
                attempts=0,
                created_at=now,
            )
        )
        return code

    def _take_code(self, account_id: uuid.UUID, code: str, *, desk: bool) -> OneTimeCode | None:
        """The account's latest pending code if ``code`` is it (counted as an attempt, not
        used up yet: the caller marks it used once the link is made)."""
        purpose = (
            OneTimeCode.purpose == DESK_PURPOSE
            if desk
            else OneTimeCode.purpose.startswith(LINK_PREFIX, autoescape=True)
        )
        record = self._session.scalar(
            select(OneTimeCode)
            .where(OneTimeCode.account_id == account_id, purpose, OneTimeCode.used_at.is_(None))
            .order_by(OneTimeCode.created_at.desc())
            .limit(1)
        )
        if (
            record is None
            or record.tenant_id != self._tenant_id
            or record.expires_at <= self._now()
            or record.attempts >= LINK_CODE_ATTEMPTS
        ):
            return None
        record.attempts += 1
        if len(code) > 32 or not code.isascii():
            return None
        expected = self._accounts._code_hash(account_id, record.purpose, code)
        if not hmac.compare_digest(record.code_hash, expected):
            return None
        return record

    def _recipient_phrase(self, keyring: Keyring, address: str) -> str | None:
        """The security phrase of the patient account registered under ``address``, if any:
        the phrase its recipient knows (see the module's docstring)."""
        indexes = keyring.indexer.email_candidates(address)
        owner = self._accounts._find(indexes, AccountKind.PATIENT)
        if owner is None or owner.security_phrase is None:
            return None
        mailer = Principal(PrincipalKind.SYSTEM, "system:mailer")
        return self._accounts._open(owner, mailer)["security_phrase"]

    def _send_to_contact(
        self, keyring: Keyring, address: str, subject: str, body: str, category: str
    ) -> None:
        phrase = self._recipient_phrase(keyring, address)
        footer = (
            f"\n\nVotre phrase de sécurité : « {phrase} ». Un message sans elle ne vient pas de "
            "votre laboratoire."
            if phrase
            else "\n\nVotre laboratoire ne vous demandera jamais ce code par téléphone ou par "
            "e-mail."
        )
        self._accounts._mailer.send(
            OutgoingMessage(to=address, subject=subject, text=body + footer, category=category)
        )

    # -- online link ---------------------------------------------------------------------

    def request_link(
        self,
        account: Account,
        traits: IdentityTraits,
        relationship: Relationship,
        *,
        client_id: str,
    ) -> None:
        """Send a code to the contact of the record these traits name, if one matches and
        can be linked. The same outcome for the caller whatever happened (see the module)."""
        principal = self._require_patient_account(account)
        if relationship is Relationship.SELF and account.patient_id is not None:
            raise LinkConflictError("Votre compte est déjà rattaché à votre dossier.")
        if relationship is not Relationship.SELF and not is_minor(traits.birth_date, self.today()):
            raise TraitsError(
                {
                    "birth_date": "Seul le dossier d'un enfant de moins de 18 ans peut être "
                    "ajouté à votre compte."
                },
                {"birth_date": "not_a_minor"},
            )
        # Limits first: nothing is looked up or decrypted past them.
        self._throttle(LINK_PER_CLIENT, client_id)
        self._throttle(LINK_PER_ACCOUNT, account.id.hex)
        self._retire(account.id, desk=False)
        keyring = self._keyring(principal)
        verifier = _verifier(
            self._session, keyring, "birth_name", "first_names", "birth_date", "email"
        )
        found = verifier.find_by_nir(traits.nir, purpose=LINK_PURPOSE)
        patient = found[0] if len(found) == 1 else None
        sent = False
        if patient is not None and patient.id != account.patient_id:
            matched = patient.birth_date is not None and traits_match(
                traits, patient.birth_name or "", patient.first_names or "", patient.birth_date
            )
            address = patient.email
            if matched and address:
                if self._linked(account, patient.id, relationship):
                    self._notify_already_linked(keyring, address)
                else:
                    purpose = link_purpose(relationship, patient.id)
                    code = self._new_code(account.id, purpose, LINK_CODE_TTL)
                    self._send_code(keyring, address, code, relationship)
                    sent = True
        self._account_event(
            AuditAction.ACCOUNT_PATIENT_LINK_REQUEST,
            account,
            principal,
            Outcome.SUCCESS if sent else Outcome.FAILURE,
        )

    def _linked(self, account: Account, patient_id: uuid.UUID, relationship: Relationship) -> bool:
        """Whether linking would change nothing or take the record from someone: linked to
        an account as its own record, or already a current dependent of this account."""
        if relationship is Relationship.SELF:
            owner = self._session.scalar(
                select(Account.id).where(
                    Account.tenant_id == self._tenant_id, Account.patient_id == patient_id
                )
            )
            return owner is not None
        current = self._session.scalar(
            select(AccountDependent.id).where(
                AccountDependent.tenant_id == self._tenant_id,
                AccountDependent.account_id == account.id,
                AccountDependent.patient_id == patient_id,
                AccountDependent.revoked_at.is_(None),
            )
        )
        return current is not None

    def _send_code(
        self, keyring: Keyring, address: str, code: Secret[str], relationship: Relationship
    ) -> None:
        if relationship is Relationship.SELF:
            what = "rattacher votre dossier du laboratoire à un compte en ligne"
        else:
            what = (
                "permettre au compte en ligne d'un parent ou représentant légal d'agir pour "
                "un dossier d'enfant dont cette adresse est le contact"
            )
        self._send_to_contact(
            keyring,
            address,
            "Votre code de rattachement",
            f"Une demande vient d'être faite pour {what}.\n\n"
            f"Votre code de rattachement : {code.reveal()}\nIl est valable 10 minutes.\n\n"
            "Si vous n'êtes pas à l'origine de cette demande, ne communiquez ce code à "
            "personne : sans lui, rien n'est rattaché. Vous pouvez prévenir votre laboratoire.",
            "account:patient-link-code",
        )

    def _notify_already_linked(self, keyring: Keyring, address: str) -> None:
        self._send_to_contact(
            keyring,
            address,
            "Demande de rattachement d'un dossier",
            "Une demande vient d'être faite pour rattacher à un compte en ligne un dossier "
            "dont cette adresse est le contact. Ce dossier est déjà rattaché : aucun code n'a "
            "été envoyé et rien n'a changé.\n\nSi vous n'êtes pas à l'origine de cette "
            "demande, vous pouvez prévenir votre laboratoire.",
            "account:patient-link-notice",
        )

    def confirm_link(self, account: Account, code: str) -> Linked:
        """Make the pending link with its code. ``LinkCodeError`` for every bad code;
        ``LinkConflictError`` if the record can no longer be linked (the code is used up)."""
        principal = self._require_patient_account(account)
        self._throttle(CONFIRM_PER_ACCOUNT, account.id.hex)
        record = self._take_code(account.id, code, desk=False)
        target = None if record is None else parse_link_purpose(record.purpose)
        if record is None or target is None:
            self._account_event(
                AuditAction.ACCOUNT_PATIENT_LINK_FAILURE, account, principal, Outcome.FAILURE
            )
            raise LinkCodeError
        record.used_at = self._now()
        relationship, patient_id = target
        self._establish(
            account,
            patient_id,
            relationship,
            DependentVerification.CONTACT_CODE,
            by=principal,
            purpose=LINK_PURPOSE,
        )
        return Linked(patient_id, relationship)

    def _establish(
        self,
        account: Account,
        patient_id: uuid.UUID,
        relationship: Relationship,
        verification: DependentVerification,
        *,
        by: Principal,
        purpose: str,
    ) -> None:
        """Make the link, or raise ``LinkConflictError`` (audited) and change nothing."""
        try:
            self._make(account, patient_id, relationship, verification, by=by, purpose=purpose)
        except LinkConflictError:
            self._account_event(
                AuditAction.ACCOUNT_PATIENT_LINK_FAILURE, account, by, Outcome.FAILURE
            )
            raise
        self._accounts._send(
            account,
            "Un dossier a été rattaché à votre compte"
            if relationship is Relationship.SELF
            else "Un dossier d'enfant a été ajouté à votre compte",
            "Un dossier du laboratoire vient d'être rattaché à votre compte en ligne. Vous le "
            "retrouvez dans la rubrique « Vos dossiers ».\n\nSi vous n'êtes pas à l'origine de "
            "ce rattachement, contactez tout de suite votre laboratoire.",
            "account:patient-link-done",
        )

    def _make(
        self,
        account: Account,
        patient_id: uuid.UUID,
        relationship: Relationship,
        verification: DependentVerification,
        *,
        by: Principal,
        purpose: str,
    ) -> None:
        if not self._patient_exists(patient_id, by):
            raise LinkConflictError(
                "Ce dossier ne peut plus être rattaché. Adressez-vous au laboratoire."
            )
        if relationship is Relationship.SELF:
            if account.patient_id is not None:
                raise LinkConflictError("Ce compte est déjà rattaché à un dossier.")
            if self._linked(account, patient_id, relationship):
                raise LinkConflictError("Ce dossier est déjà rattaché à un autre compte.")
            try:
                with self._session.begin_nested():
                    account.patient_id = patient_id
                    self._session.flush()
            except IntegrityError:  # linked by a concurrent request meanwhile
                self._session.refresh(account)
                raise LinkConflictError("Ce dossier est déjà rattaché à un autre compte.") from None
            self._audit(
                AuditAction.ACCOUNT_PATIENT_LINK_CONFIRM,
                by,
                target_type=PATIENT_SUBJECT,
                target_id=patient_id,
                purpose=purpose,
            )
            return
        if patient_id == account.patient_id:
            raise LinkConflictError("C'est le dossier de ce compte lui-même.")
        born = _verifier(self._session, self._keyring(by), "birth_date").get(
            patient_id, purpose=GUARDIAN_PURPOSE
        )
        if born is None or born.birth_date is None or not is_minor(born.birth_date, self.today()):
            raise LinkConflictError(
                "Cette personne a 18 ans ou plus : son dossier ne peut pas être ajouté."
            )
        existing = self._session.scalar(
            select(AccountDependent).where(
                AccountDependent.account_id == account.id,
                AccountDependent.patient_id == patient_id,
            )
        )
        if existing is not None and existing.revoked_at is None:
            raise LinkConflictError("Ce dossier d'enfant est déjà rattaché à ce compte.")
        now = self._now()
        if existing is not None:
            existing.revoked_at = None
            existing.relationship = relationship.value
            existing.verified_by = verification.value
            existing.created_at = now
        else:
            self._session.add(
                AccountDependent(
                    id=uuid.uuid4(),
                    tenant_id=self._tenant_id,
                    account_id=account.id,
                    patient_id=patient_id,
                    relationship=relationship.value,
                    verified_by=verification.value,
                    created_at=now,
                )
            )
        self._session.flush()
        self._audit(
            AuditAction.ACCOUNT_DEPENDENT_ADD,
            by,
            target_type=PATIENT_SUBJECT,
            target_id=patient_id,
            purpose=purpose,
        )

    # -- at the lab desk -----------------------------------------------------------------

    def new_desk_code(self, account: Account) -> DeskCode:
        """A short code for the lab desk, shown to the account (never sent): 30 minutes."""
        principal = self._require_patient_account(account)
        self._throttle(DESK_CODES_PER_ACCOUNT, account.id.hex)
        self._retire(account.id, desk=True)
        code = self._new_code(account.id, DESK_PURPOSE, DESK_CODE_TTL)
        self._account_event(AuditAction.ACCOUNT_DESK_CODE_CREATE, account, principal)
        return DeskCode(code, self._now() + DESK_CODE_TTL)

    def desk_principal(self, staff: Account) -> Principal:
        """The receptionist's principal, or ``LinkNotFoundError`` (audited as denied)."""
        principal = self._accounts._principal(staff)
        if (
            staff.kind != AccountKind.STAFF.value
            or staff.tenant_id != self._tenant_id
            or staff.status != AccountStatus.ACTIVE.value
            or staff.role not in DESK_ROLES
        ):
            self._audit(
                AuditAction.ACCOUNT_PATIENT_LINK_FAILURE,
                principal,
                target_type="account",
                target_id=None,
                purpose="desk-link",
                outcome=Outcome.DENIED,
            )
            raise LinkNotFoundError
        return principal

    def _desk_failed(self, principal: Principal, account: Account | None) -> LinkNotFoundError:
        self._audit(
            AuditAction.ACCOUNT_PATIENT_LINK_FAILURE,
            principal,
            target_type="account",
            target_id=None if account is None else account.id,
            purpose="desk-link",
            outcome=Outcome.FAILURE,
        )
        return LinkNotFoundError()

    def _patient_account(self, email: str) -> Account | None:
        try:
            address = parse_email(email)
        except ValueError:
            return None
        account = self._accounts._find(
            self._accounts._email_indexes(address, AccountKind.PATIENT), AccountKind.PATIENT
        )
        if account is None or account.status != AccountStatus.ACTIVE.value:
            return None
        return account

    def desk_link(
        self,
        staff: Account,
        *,
        patient_id: uuid.UUID,
        email: str,
        code: str,
        relationship: Relationship,
    ) -> Linked:
        """A receptionist links the record ``patient_id`` to the account of ``email``, whose
        owner, present at the desk, gives the desk code shown in their account."""
        principal = self.desk_principal(staff)
        self._throttle(DESK_PER_STAFF, staff.id.hex)
        account = self._patient_account(email)
        if account is None or not self._in_desk_scope(staff, principal, patient_id):
            raise self._desk_failed(principal, account)
        record = self._take_code(account.id, code, desk=True)
        if record is None:
            raise self._desk_failed(principal, account)
        self._establish(
            account,
            patient_id,
            relationship,
            DependentVerification.LAB_DESK,
            by=principal,
            purpose="desk-link",
        )
        record.used_at = self._now()
        return Linked(patient_id, relationship)

    def staff_revoke_dependent(self, staff: Account, *, patient_id: uuid.UUID, email: str) -> None:
        """A receptionist ends a guardian's right to act for a minor's record."""
        principal = self.desk_principal(staff)
        self._throttle(DESK_PER_STAFF, staff.id.hex)
        account = self._patient_account(email)
        if account is None or not self._revoke(account, patient_id, principal):
            raise self._desk_failed(principal, account)

    # -- dependents and listing ----------------------------------------------------------

    def _revoke(self, account: Account, patient_id: uuid.UUID, by: Principal) -> bool:
        row = self._session.scalar(
            select(AccountDependent).where(
                AccountDependent.tenant_id == self._tenant_id,
                AccountDependent.account_id == account.id,
                AccountDependent.patient_id == patient_id,
                AccountDependent.revoked_at.is_(None),
            )
        )
        if row is None:
            return False
        row.revoked_at = self._now()
        self._audit(
            AuditAction.ACCOUNT_DEPENDENT_REVOKE,
            by,
            target_type=PATIENT_SUBJECT,
            target_id=patient_id,
        )
        return True

    def remove_dependent(self, account: Account, patient_id: uuid.UUID) -> bool:
        """The guardian stops acting for a dependent; False if there is no such one."""
        principal = self._require_patient_account(account)
        return self._revoke(account, patient_id, principal)

    def acts_for(self, account: Account, patient_id: uuid.UUID) -> bool:
        """See :func:`account_acts_for` (the access policy of bookings and results calls it)."""
        return account_acts_for(
            self._session,
            self._keyring(self._accounts._principal(account)),
            account,
            patient_id,
            today=self.today(),
        )

    def records(self, account: Account) -> list[ActingRecord]:
        """The records this account acts for now: its own, then its current dependents
        (under 18 today), with first name and birth-name initial (openings audited)."""
        principal = self._require_patient_account(account)
        wanted: dict[uuid.UUID, Relationship] = {}
        if account.patient_id is not None:
            wanted[account.patient_id] = Relationship.SELF
        for patient_id, relationship in self._session.execute(
            select(AccountDependent.patient_id, AccountDependent.relationship)
            .where(
                AccountDependent.tenant_id == self._tenant_id,
                AccountDependent.account_id == account.id,
                AccountDependent.revoked_at.is_(None),
            )
            .order_by(AccountDependent.created_at, AccountDependent.id)
        ):
            wanted.setdefault(patient_id, Relationship(relationship))
        if not wanted:
            return []
        opened = {
            record.id: record
            for record in _verifier(
                self._session, self._keyring(principal), "birth_name", "first_names", "birth_date"
            ).get_many(list(wanted), purpose=LIST_PURPOSE)
        }
        present = [opened[i] for i in wanted if i in opened]
        today = self.today()
        listed = []
        for patient in present:
            relationship = wanted[patient.id]
            born = patient.birth_date
            if born is None or (
                relationship is not Relationship.SELF and not is_minor(born, today)
            ):
                continue
            first = _GIVEN_NAME_SEPARATOR.split((patient.first_names or "").strip())[0]
            listed.append(
                ActingRecord(
                    id=patient.id,
                    relationship=relationship,
                    first_name=first,
                    birth_name_initial=(patient.birth_name or "?")[:1].upper(),
                )
            )
        return listed
