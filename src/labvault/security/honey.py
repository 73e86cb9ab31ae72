"""Honey records: synthetic patients planted among the real ones, and the guard that
stops any principal decrypting one (issue 9, invariant I4).

Planting goes through the registration path of real patients (``prepare_patients``: same
sealing under a fresh per-patient data key, same blind indexes, random ids, the same
tables) and copies, for each honey patient, the shape of a randomly drawn real record:
which sealed columns are empty, the INS OID and identity status (both in clear at rest),
the creation time. So at rest a honey record looks like any other: the same columns, the
same ciphertext sizes, no clear value that sets it apart.

Which records are honey is a secret of the tenant's *honey key*: a data key wrapped by the
key provider (``data_keys`` row of subject type ``honey-key``), never in clear in the
database. ``honey_marks`` holds HMAC-SHA256(honey key, patient id) per honey patient: a
membership test that says nothing to whoever does not hold the key. Legitimate views ask
:class:`HoneyMembership` which of their candidate patients are honey and leave those out
before anything is decrypted; the :class:`HoneyGuard` at the decrypt choke point refuses
every request that still names one, locks the principal, raises a critical alert and
audits ``guard:honey:touched``, all committed apart from the refused transaction.

The INS OID of a honey record is copied from a real record, so it is the NIR OID in a
production tenant, never the test OID (1.2.250.1.213.1.4.10): ``ins_oid`` is stored in
clear, and a test OID would single the honey records out to anyone reading the table. The
honey NIR itself is synthetic with a valid key, sealed like any other; it is never sent to
INSi, the FHIR API or a notification, since every legitimate path filters honey records
out, and it cannot be another patient's of the tenant (the unique NIR index is checked).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from sqlalchemy import ColumnElement, Table, func, insert, select, true
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import InstrumentedAttribute, Session

from labvault.appointments.models import Appointment, AppointmentKind, AppointmentStatus
from labvault.catalog.models import Exam
from labvault.core.access.decrypt import DecryptDeniedError, DecryptRequest
from labvault.core.access.principals import Principal, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail, AuditUnavailableError, Outcome
from labvault.core.crypto.envelope import DataKey, FieldKey
from labvault.core.crypto.keyring import (
    Indexer,
    Sealer,
    data_key_context,
    require_index_generations,
)
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.crypto.providers.base import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import utcnow
from labvault.patients.ins import IdentityStatus, InsOid
from labvault.patients.models import Patient
from labvault.patients.schemas import PatientInput
from labvault.patients.services import SUBJECT_TYPE, PreparedPatient, prepare_patients
from labvault.patients.synthetic import synthetic_patient_rows
from labvault.security.honey_models import HoneyMark, HoneySet
from labvault.security.lockout import LockoutDeps, lock_principal, run_in_own_transaction
from labvault.security.models import AlertSeverity

if TYPE_CHECKING:
    from labvault.core.runtime import Runtime


HONEY_KEY_SUBJECT: Final = "honey-key"
"""``data_keys.subject_type`` of a tenant's honey key (its subject id is the tenant id)."""
HONEY_KEY_BYTES: Final = 32
ALERT_KIND: Final = "honey-record-touched"
TOUCH_PURPOSE: Final = "honey-record"
PLANT_PURPOSE: Final = "honey-plant"
PLANT_JOB: Final = "cli:guard-honey-plant"
DEFAULT_LABEL: Final = "planted"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MARK_CONTEXT = b"labvault/v1|honey-mark|"
_LOOKUP_CHUNK = 500

HONEY_AWARE_JOBS: Final[frozenset[str]] = frozenset(
    {
        # Recomputes every record's blind indexes under a new generation: honey records
        # must move too, or the old generation would single them out.
        "cli:keys-rotate-index",  # = core.crypto.index_rotation.JOB_PRINCIPAL (tested)
        # Plants them (it opens no key, but names itself here all the same).
        PLANT_JOB,
    }
)
"""The only system jobs that may open a honey patient's key without raising the alarm.

Everything else must leave honey records out before it decrypts (``HoneyMembership``).
Jobs that open no patient key need no entry: erasure (``cli:patients-erase``,
``job:accounts-purge``: keyless), retention (``job:retention``: deletes, decrypts nothing).
Reminders (``job:reminders``) are deliberately NOT here: honey patients have no upcoming
appointment, and a reminder job that ever met one must skip it, not mail it.
"""


def is_honey_aware(principal: Principal) -> bool:
    """Whether ``principal`` is a system job listed in :data:`HONEY_AWARE_JOBS`."""
    return isinstance(principal, SystemPrincipal) and principal.job in HONEY_AWARE_JOBS


class HoneyRecordTouchedError(DecryptDeniedError):
    """A decrypt request named a honey patient: refused, principal locked, alert raised.

    The message names no patient (the guard's audit event and alert do, by id)."""

    def __init__(self) -> None:
        super().__init__("access refused by the exfiltration guard")


class HoneyPlantError(ValueError):
    """Bad planting input (label, density): nothing was written."""


def honey_key_context(tenant_id: uuid.UUID, key_id: uuid.UUID) -> str:
    return data_key_context(tenant_id, HONEY_KEY_SUBJECT, tenant_id, key_id)


def _mark(key: Secret[bytes], patient_id: uuid.UUID) -> bytes:
    return hmac.new(key.reveal(), _MARK_CONTEXT + patient_id.bytes, hashlib.sha256).digest()


def _load_honey_key(
    session: Session, provider: KeyProvider, tenant_id: uuid.UUID
) -> Secret[bytes] | None:
    """The tenant's honey key unwrapped (one provider call), or ``None``: nothing planted."""
    row = session.execute(
        select(DataKeyRecord.id, DataKeyRecord.wrapped_key).where(
            DataKeyRecord.tenant_id == tenant_id,
            DataKeyRecord.subject_type == HONEY_KEY_SUBJECT,
            DataKeyRecord.subject_id == tenant_id,
        )
    ).one_or_none()
    if row is None:
        return None
    key_id, blob = row
    return provider.unwrap(bytes(blob), honey_key_context(tenant_id, key_id))


def _create_honey_key(
    session: Session, provider: KeyProvider, tenant_id: uuid.UUID
) -> Secret[bytes]:
    material = Secret(os.urandom(HONEY_KEY_BYTES))
    key_id = uuid.uuid4()
    session.add(
        DataKeyRecord(
            id=key_id,
            tenant_id=tenant_id,
            subject_type=HONEY_KEY_SUBJECT,
            subject_id=tenant_id,
            wrapped_key=provider.wrap(material, honey_key_context(tenant_id, key_id)),
            provider=provider.name,
        )
    )
    session.flush()
    return material


# -- membership ------------------------------------------------------------------------

T = TypeVar("T")


class HoneyMembership:
    """Which patients of one tenant are honey, for one request or job.

    The honey key is unwrapped at most once (a single provider call) and answers are cached
    per patient id, so a request pays one indexed query per batch of new ids and never a
    provider call per subject. Reads run in the caller's session (row-level security
    applies). Like every unwrapped key, it lives as long as its request: never share one.
    """

    def __init__(self, session: Session, provider: KeyProvider, tenant_id: uuid.UUID) -> None:
        self._session = session
        self._provider = provider
        self._tenant_id = tenant_id
        self._loaded = False
        self._key: Secret[bytes] | None = None
        self._known: dict[uuid.UUID, bool] = {}

    def __repr__(self) -> str:
        return f"HoneyMembership(tenant={self._tenant_id})"

    def __reduce__(self) -> Any:
        raise TypeError("a honey membership holds an unwrapped key and cannot be pickled")

    @property
    def tenant_id(self) -> uuid.UUID:
        return self._tenant_id

    def _honey_key(self) -> Secret[bytes] | None:
        if not self._loaded:
            self._key = _load_honey_key(self._session, self._provider, self._tenant_id)
            self._loaded = True
        return self._key

    def honey_ids(self, patient_ids: Iterable[uuid.UUID]) -> frozenset[uuid.UUID]:
        """The honey patients among ``patient_ids`` (nothing decrypted, nothing recorded)."""
        wanted = list(dict.fromkeys(patient_ids))
        if not wanted:
            return frozenset()
        key = self._honey_key()
        if key is None:
            return frozenset()
        unknown = [patient_id for patient_id in wanted if patient_id not in self._known]
        for start in range(0, len(unknown), _LOOKUP_CHUNK):
            chunk = unknown[start : start + _LOOKUP_CHUNK]
            marks = {_mark(key, patient_id): patient_id for patient_id in chunk}
            found = set(
                self._session.scalars(
                    select(HoneyMark.mark).where(
                        HoneyMark.tenant_id == self._tenant_id, HoneyMark.mark.in_(list(marks))
                    )
                )
            )
            for mark, patient_id in marks.items():
                self._known[patient_id] = mark in found
        return frozenset(patient_id for patient_id in wanted if self._known[patient_id])

    def set_of(self, patient_id: uuid.UUID) -> uuid.UUID | None:
        """The honey set ``patient_id`` was planted with; ``None``: a real patient. For leak
        attribution: a leaked identity's NIR finds its record by blind index, this says
        where and when it was planted (``honey_sets``)."""
        key = self._honey_key()
        if key is None:
            return None
        return self._session.scalar(
            select(HoneyMark.set_id).where(
                HoneyMark.tenant_id == self._tenant_id, HoneyMark.mark == _mark(key, patient_id)
            )
        )

    def is_honey(self, patient_id: uuid.UUID) -> bool:
        return patient_id in self.honey_ids([patient_id])

    def exclusion(
        self,
        column: InstrumentedAttribute[uuid.UUID] | ColumnElement[uuid.UUID],
        candidate_ids: Iterable[uuid.UUID],
    ) -> ColumnElement[bool]:
        """A WHERE condition leaving out the honey patients among ``candidate_ids``.

        For a query whose patients are known first (select the ids, then the rows to
        decrypt); ``true()`` when none is honey, so it costs nothing then."""
        honey = self.honey_ids(candidate_ids)
        if not honey:
            return true()
        return column.not_in(sorted(honey))

    def without_honey(self, items: Iterable[T], patient_id: Callable[[T], uuid.UUID]) -> list[T]:
        """``items`` (rows about patients) minus those of honey patients, order kept."""
        listed = list(items)
        honey = self.honey_ids(patient_id(item) for item in listed)
        return [item for item in listed if patient_id(item) not in honey]


def honey_filter(
    session: Session,
    provider: KeyProvider,
    tenant_id: uuid.UUID,
    column: InstrumentedAttribute[uuid.UUID] | ColumnElement[uuid.UUID],
    candidate_ids: Iterable[uuid.UUID],
) -> ColumnElement[bool]:
    """One-shot :meth:`HoneyMembership.exclusion`; a request with several lists should
    keep one :class:`HoneyMembership` instead (one unwrap for all of them)."""
    return HoneyMembership(session, provider, tenant_id).exclusion(column, candidate_ids)


# -- the response: audit, lock, alert, committed apart ---------------------------------


@dataclass(frozen=True)
class HoneyResponder:
    """What a touch of a honey record sets off, each part committed in a transaction of
    its own (``labvault.security.lockout.run_in_own_transaction``), so the refused
    request's rollback keeps it: a ``guard:honey:touched`` event per honey record named,
    as the principal who asked; then the principal locked (sessions or tokens revoked)
    and a critical alert naming the first honey record. When the refused request holds a
    lock these need (SQLite's single writer), they commit on a background thread moments
    later, once it has rolled back; the refusal is raised at once either way."""

    lockout: LockoutDeps

    def respond(self, request: DecryptRequest, touched: Sequence[uuid.UUID]) -> None:
        principal, tenant_id = request.principal, request.tenant_id

        def record(session: Session) -> bool:
            try:
                AuditTrail(session, principal).record_many(
                    AuditAction.GUARD_HONEY_TOUCHED,
                    tenant_id=tenant_id,
                    target_type=SUBJECT_TYPE,
                    target_ids=list(touched),
                    purpose=TOUCH_PURPOSE,
                    outcome=Outcome.DENIED,
                )
            except AuditUnavailableError as exc:
                # A lock wait is for run_in_own_transaction to see: it defers the work.
                if isinstance(exc.__cause__, OperationalError):
                    raise exc.__cause__ from None
                raise
            return False

        run_in_own_transaction(self.lockout.engine, tenant_id, record)
        lock_principal(
            self.lockout,
            tenant_id,
            principal,
            TOUCH_PURPOSE,
            ALERT_KIND,
            severity=AlertSeverity.CRITICAL,
            target_type=SUBJECT_TYPE,
            target_id=touched[0],
        )


# -- the guard -------------------------------------------------------------------------


class HoneyGuard:
    """The :class:`~labvault.core.access.decrypt.DecryptGuard` of honey records, for one
    keyring: refuses a whole request that names a honey patient, before any key is
    unwrapped, so nothing of that batch is decrypted."""

    def __init__(self, membership: HoneyMembership, responder: HoneyResponder) -> None:
        self._membership = membership
        self._responder = responder

    def __repr__(self) -> str:
        return f"HoneyGuard(tenant={self._membership.tenant_id})"

    @property
    def membership(self) -> HoneyMembership:
        return self._membership

    def hidden(self, subject_type: str, subject_ids: Sequence[uuid.UUID]) -> frozenset[uuid.UUID]:
        """The honey records among ``subject_ids``: lists leave them out before decrypting
        (a :class:`~labvault.core.access.decrypt.SubjectFilter`)."""
        if subject_type != SUBJECT_TYPE or not subject_ids:
            return frozenset()
        return self._membership.honey_ids(subject_ids)

    def before_decrypt(self, request: DecryptRequest) -> None:
        if request.subject_type != SUBJECT_TYPE:
            return
        if request.tenant_id != self._membership.tenant_id:
            raise DecryptDeniedError("the honey guard is another organization's")
        if is_honey_aware(request.principal):
            return
        touched = self._membership.honey_ids(request.subject_ids)
        if not touched:
            return
        ordered = [subject for subject in request.subject_ids if subject in touched]
        self._responder.respond(request, ordered)
        raise HoneyRecordTouchedError


class HoneyGuards:
    """Built once per process from the Runtime; gives each keyring its own guard.

    Wiring: ``TenantKeyring(session, provider, tenant_id, principal,
    guards=[..., honey_guards.for_session(session, tenant_id)])``.
    """

    def __init__(self, provider: KeyProvider, responder: HoneyResponder) -> None:
        self._provider = provider
        self.responder = responder

    @classmethod
    def from_runtime(cls, runtime: Runtime, lockout: LockoutDeps | None = None) -> HoneyGuards:
        """One per process; ``lockout``: the budgets' deps when already built (shared)."""
        deps = lockout or LockoutDeps.from_runtime(runtime)
        return cls(runtime.key_provider, HoneyResponder(deps))

    def membership(self, session: Session, tenant_id: uuid.UUID) -> HoneyMembership:
        return HoneyMembership(session, self._provider, tenant_id)

    def for_session(self, session: Session, tenant_id: uuid.UUID) -> HoneyGuard:
        return HoneyGuard(self.membership(session, tenant_id), self.responder)


# -- planting --------------------------------------------------------------------------

_OPTIONAL = (
    "used_name",
    "birth_place_code",
    "email",
    "phone",
    "address_line",
    "postal_code",
    "city",
)
_ROW_FIELD = {"address_line": "address"}
PATIENTS_TABLE = cast(Table, Patient.__table__)
DATA_KEYS_TABLE = cast(Table, DataKeyRecord.__table__)
APPOINTMENTS_TABLE = cast(Table, Appointment.__table__)
MARKS_TABLE = cast(Table, HoneyMark.__table__)
_PAST_STATUSES = (
    AppointmentStatus.DONE.value,
    AppointmentStatus.NO_SHOW.value,
    AppointmentStatus.CANCELLED.value,
)


@dataclass(frozen=True, slots=True)
class HoneySetSummary:
    id: uuid.UUID
    label: str
    planted_at: dt.datetime
    planted_by: str
    density_ppm: int
    population: int
    patient_count: int
    appointment_count: int
    marks: int
    """Marks still on file (a honey patient erased since then has none)."""


@dataclass(frozen=True, slots=True)
class _Template:
    """The shape of one real record: what a honey record copies."""

    created_at: dt.datetime
    ins_oid: str | None
    identity_status: str
    empty: frozenset[str]
    sizes: dict[str, int] = field(default_factory=dict)
    """Plaintext lengths of its variable-length sealed fields (ciphertext size minus the
    sealing overhead: AES-GCM keeps lengths), which a honey record matches."""


class _KeepingSealer:
    """A :class:`Sealer` that remembers the data keys it made, for sealing the honey
    patients' appointments in the same job without opening (and auditing) their keys."""

    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer
        self.keys: dict[uuid.UUID, FieldKey] = {}

    @property
    def tenant_id(self) -> uuid.UUID:
        return self._sealer.tenant_id

    @property
    def indexer(self) -> Indexer:
        return self._sealer.indexer

    def new_data_keys(
        self, subject_type: str, subject_ids: Sequence[uuid.UUID]
    ) -> tuple[list[FieldKey], list[dict[str, Any]]]:
        keys, rows = self._sealer.new_data_keys(subject_type, subject_ids)
        self.keys.update(zip(subject_ids, keys, strict=True))
        return keys, rows


def check_label(label: str) -> str:
    if not _LABEL.fullmatch(label):
        raise HoneyPlantError(
            "the label takes 1 to 64 letters, digits, '.', '-' or '_' (no personal data)"
        )
    return label


def honey_target(population: int, density: float, minimum: int) -> int:
    """How many honey patients a tenant of ``population`` real ones should hold."""
    if not 0 < density <= 0.5:
        raise HoneyPlantError("the density is a share between 0 and 0.5 (0.005 is 0.5 %)")
    if minimum < 0:
        raise HoneyPlantError("the minimum cannot be negative")
    return max(minimum, math.ceil(population * density))


def _templates(
    session: Session, tenant_id: uuid.UUID, count: int, rng: secrets.SystemRandom
) -> list[_Template]:
    """``count`` shapes drawn at random among live real records (repeats when fewer)."""
    empty_flags = [getattr(Patient, name).is_(None) for name in _OPTIONAL]
    sizes = [func.length(getattr(Patient, name)) for name in _SIZED]
    rows = session.execute(
        select(Patient.created_at, Patient.ins_oid, Patient.identity_status, *sizes, *empty_flags)
        .where(Patient.tenant_id == tenant_id, Patient.erased_at.is_(None))
        .order_by(func.random())
        .limit(count)
    ).all()
    flags_at = 3 + len(_SIZED)
    drawn = [
        _Template(
            created_at=row[0],
            ins_oid=row[1],
            identity_status=row[2],
            empty=frozenset(
                name for name, flag in zip(_OPTIONAL, row[flags_at:], strict=True) if flag
            ),
            sizes={
                name: size - _SEAL_OVERHEAD
                for name, size in zip(_SIZED, row[3:flags_at], strict=True)
                if size is not None
            },
        )
        for row in rows
    ]
    if not drawn:  # a tenant with no patient yet: the shape of a usual import
        now = utcnow()
        return [
            _Template(now, InsOid.NIR.value, IdentityStatus.PROV.value, frozenset({"used_name"}))
            for _ in range(count)
        ]
    chosen = [drawn[i] if i < len(drawn) else rng.choice(drawn) for i in range(count)]
    return [
        dataclasses.replace(t, created_at=_creation_time(session, tenant_id, t, rng))
        for t in chosen
    ]


def _creation_time(
    session: Session, tenant_id: uuid.UUID, template: _Template, rng: secrets.SystemRandom
) -> dt.datetime:
    """The template's creation time when a batch shares it (an import stamps every record
    of a batch alike), else a time a few minutes around it: a record created alone has a
    time of its own, and a copy of it would be the only duplicate."""
    shared = session.scalar(
        select(func.count())
        .select_from(Patient)
        .where(Patient.tenant_id == tenant_id, Patient.created_at == template.created_at)
    )
    if (shared or 0) > 1:
        return template.created_at
    moved = template.created_at + dt.timedelta(microseconds=rng.randint(-300_000_000, 300_000_000))
    return min(moved, utcnow())


_SIZED = ("birth_name", "used_name", "first_names", "address_line", "city", "email")
_POOL_ROWS = 400


def _closest(values: Sequence[str], length: int | None, rng: secrets.SystemRandom) -> str:
    """The value whose UTF-8 length is nearest ``length`` (any, when it is unknown)."""
    if length is None:
        return rng.choice(values)
    return min(values, key=lambda v: (abs(len(v.encode()) - length), rng.random()))


def _inputs(templates: Sequence[_Template], rng: secrets.SystemRandom) -> list[PatientInput]:
    """Synthetic identities shaped like ``templates`` (Faker fr_FR, valid NIR keys): a
    field the template leaves empty is dropped, the others take values of its lengths."""
    pool = list(synthetic_patient_rows(max(_POOL_ROWS, len(templates)), seed=rng.getrandbits(63)))
    last_names = sorted({row["birth_name"] for row in pool})
    first_names = {
        sex: sorted({row["first_names"] for row in pool if row["sex"] == sex}) for sex in "MF"
    }
    streets = sorted({row["address"] for row in pool})
    places = sorted({(row["postal_code"], row["city"]) for row in pool})
    phones = [row["phone"] for row in pool if row["phone"]]
    inputs = []
    for template, row in zip(templates, pool, strict=False):
        size = template.sizes.get
        data: dict[str, object] = dict(row)
        data["birth_name"] = _closest(last_names, size("birth_name"), rng)
        data["first_names"] = _closest(first_names[row["sex"]], size("first_names"), rng)
        data["used_name"] = _closest(last_names, size("used_name"), rng)
        data["address"] = _closest(streets, size("address_line"), rng)
        city_length = size("city")
        data["postal_code"], data["city"] = min(
            places,
            key=lambda p: (
                0 if city_length is None else abs(len(p[1].encode()) - city_length),
                rng.random(),
            ),
        )
        data["phone"] = row["phone"] or rng.choice(phones)
        data["email"] = _email_of_length(
            str(data["first_names"]), str(data["birth_name"]), size("email") or 30, rng
        )
        for name in template.empty:
            data[_ROW_FIELD.get(name, name)] = ""
        data["address_line"] = data.pop("address")
        if template.ins_oid is None:
            data["nir"] = ""
        else:
            data["ins_oid"] = template.ins_oid
        data["identity_status"] = template.identity_status
        inputs.append(PatientInput.model_validate(data))
    return inputs


_SEAL_OVERHEAD: Final = len(DataKey.generate()[0].seal(b"", "patients", "email", uuid.UUID(int=0)))
"""Bytes a sealed value adds to its plaintext (header, nonce, tag): AES-GCM keeps length."""
HONEY_EMAIL_DOMAINS: Final = ("example.org", "example.com", "example.net")
"""Reserved for documentation (RFC 2606): a mail to a honey address can reach nobody."""


def _email_of_length(first: str, last: str, length: int, rng: secrets.SystemRandom) -> str:
    """A plausible ``prénom.nom`` address of exactly ``length`` characters when it can be
    (the length of a real record's address, read from its ciphertext's size)."""
    domain = rng.choice(HONEY_EMAIL_DOMAINS)
    room = max(1, length - len(domain) - 1)
    first_slug = _ascii_slug(first.split()[0]) or "c"
    last_slug = _ascii_slug(last) or "m"
    local = f"{first_slug}.{last_slug}"
    if len(local) > room:
        local = f"{first_slug[0]}.{last_slug}"[:room].rstrip(".-")
    while len(local) < room:
        local += str(rng.randrange(10))
    return f"{local or first_slug[0]}@{domain}"


def _ascii_slug(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(ch for ch in decomposed.lower() if ch.isascii() and (ch.isalnum() or ch == "-"))


def _appointment_templates(
    session: Session, tenant_id: uuid.UUID, count: int, now: dt.datetime
) -> list[dict[str, Any]]:
    """Planning columns of past site appointments drawn at random (their patients and the
    staff who booked them are not copied)."""
    columns = (
        Appointment.site_id,
        Appointment.starts_at,
        Appointment.ends_at,
        Appointment.status,
        Appointment.walk_in,
        Appointment.confirmed_at,
        Appointment.cancelled_at,
        Appointment.checked_in_at,
        Appointment.reminder_sent_at,
        Appointment.created_at,
        Appointment.updated_at,
        Appointment.exams.is_(None),
    )
    rows = session.execute(
        select(*columns)
        .where(
            Appointment.tenant_id == tenant_id,
            Appointment.kind == AppointmentKind.SITE.value,
            Appointment.starts_at < now,
            Appointment.status.in_(_PAST_STATUSES),
            Appointment.anonymised_at.is_(None),
        )
        .order_by(func.random())
        .limit(count)
    ).all()
    names = [
        "site_id",
        "starts_at",
        "ends_at",
        "status",
        "walk_in",
        "confirmed_at",
        "cancelled_at",
        "checked_in_at",
        "reminder_sent_at",
        "created_at",
        "updated_at",
        "no_exams",
    ]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _exam_ids(session: Session, tenant_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        session.scalars(select(Exam.id).where(Exam.tenant_id == tenant_id, Exam.active.is_(True)))
    )


@dataclass(frozen=True, slots=True)
class PlantReport:
    set_id: uuid.UUID | None
    """``None``: the tenant already held enough honey patients; nothing was written."""
    planted: int
    appointments: int
    population: int
    honey_total: int


def plant_honey(
    session: Session,
    provider: KeyProvider,
    sealer: Sealer,
    audit: AuditTrail,
    *,
    density: float,
    minimum: int,
    label: str = DEFAULT_LABEL,
) -> PlantReport:
    """Plant honey patients in ``sealer``'s tenant up to ``density`` (at least ``minimum``),
    in the caller's transaction. Records one ``guard:honey:plant`` event naming the set,
    none per honey patient (a list of their ids in the log would give the set away).

    ``sealer`` is the planting job's keyring (``SystemPrincipal(PLANT_JOB)``): new data
    keys and blind indexes only, nothing is opened.
    """
    check_label(label)
    tenant_id = sealer.tenant_id
    rng = secrets.SystemRandom()
    existing = (
        session.scalar(
            select(func.count()).select_from(HoneyMark).where(HoneyMark.tenant_id == tenant_id)
        )
        or 0
    )
    live = (
        session.scalar(
            select(func.count())
            .select_from(Patient)
            .where(Patient.tenant_id == tenant_id, Patient.erased_at.is_(None))
        )
        or 0
    )
    population = max(0, live - existing)
    target = honey_target(population, density, minimum)
    wanted = target - existing
    if wanted <= 0:
        return PlantReport(None, 0, 0, population, existing)

    key = _load_honey_key(session, provider, tenant_id) or _create_honey_key(
        session, provider, tenant_id
    )
    templates = _templates(session, tenant_id, wanted, rng)
    keeping = _KeepingSealer(sealer)
    prepared = prepare_patients(_inputs(templates, rng), keeping)
    prepared, templates = _without_known_nirs(session, tenant_id, prepared, templates)

    key_rows: list[dict[str, object]] = []
    rows: list[dict[str, object]] = []
    patient_ids: list[uuid.UUID] = []
    for patient, template in zip(prepared, templates, strict=True):
        # Created when a real record was, not all at the planting instant.
        created = template.created_at
        key_rows.append({**patient.key_row, "created_at": created})
        rows.append(
            {**patient.row, "tenant_id": tenant_id, "created_at": created, "updated_at": created}
        )
        patient_ids.append(cast(uuid.UUID, patient.row["id"]))
    now = utcnow()
    honey_set = HoneySet(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        label=label,
        planted_at=now,
        planted_by=audit.principal.id,
        density_ppm=round(density * 1_000_000),
        population=population,
        patient_count=len(rows),
        appointment_count=0,
    )
    session.add(honey_set)
    session.flush()
    appointments: list[dict[str, Any]] = []
    if rows:
        session.execute(insert(DATA_KEYS_TABLE), key_rows)
        session.execute(insert(PATIENTS_TABLE), rows)
        for generations in {p.index_generations for p in prepared}:
            require_index_generations(session, tenant_id, generations)
        session.execute(
            insert(MARKS_TABLE),
            [
                {
                    "id": uuid.uuid4(),
                    "tenant_id": tenant_id,
                    "set_id": honey_set.id,
                    "mark": _mark(key, patient_id),
                }
                for patient_id in patient_ids
            ],
        )
        appointments = _honey_appointments(session, tenant_id, patient_ids, keeping.keys, rng, now)
        if appointments:
            session.execute(insert(APPOINTMENTS_TABLE), appointments)
    honey_set.appointment_count = len(appointments)
    session.flush()
    set_id = honey_set.id
    audit.record(
        AuditAction.GUARD_HONEY_PLANT,
        tenant_id=tenant_id,
        target_type="honey-set",
        target_id=set_id,
        purpose=PLANT_PURPOSE,
    )
    return PlantReport(set_id, len(rows), len(appointments), population, existing + len(rows))


def _without_known_nirs(
    session: Session,
    tenant_id: uuid.UUID,
    prepared: list[PreparedPatient],
    templates: list[_Template],
) -> tuple[list[PreparedPatient], list[_Template]]:
    """Drop honey patients whose NIR a record of the tenant already has (or another honey
    patient of this batch): the unique NIR index would refuse them."""
    candidates = {c for p in prepared for c in (p.nir_candidates or ())}
    taken = (
        set(
            session.scalars(
                select(Patient.nir_index).where(
                    Patient.tenant_id == tenant_id, Patient.nir_index.in_(candidates)
                )
            )
        )
        if candidates
        else set()
    )
    kept_p, kept_t = [], []
    for patient, template in zip(prepared, templates, strict=True):
        mine = set(patient.nir_candidates)
        if mine & taken:
            continue
        taken |= mine
        kept_p.append(patient)
        kept_t.append(template)
    return kept_p, kept_t


def _honey_appointments(
    session: Session,
    tenant_id: uuid.UUID,
    patient_ids: Sequence[uuid.UUID],
    keys: dict[uuid.UUID, FieldKey],
    rng: secrets.SystemRandom,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """One or two past appointments per honey patient, shaped like real past ones (site,
    time, status): some fall in the staff relationship window, so a stolen staff account
    browsing its sites meets honey patients too. None in the future: no capacity taken,
    no reminder due."""
    counts = [rng.choice((1, 1, 2)) for _ in patient_ids]
    shapes = _appointment_templates(session, tenant_id, sum(counts), now)
    if not shapes:
        return []
    exams = _exam_ids(session, tenant_id)
    rows: list[dict[str, Any]] = []
    drawn = 0
    for patient_id, count in zip(patient_ids, counts, strict=True):
        for _ in range(count):
            shape = dict(shapes[drawn] if drawn < len(shapes) else rng.choice(shapes))
            drawn += 1
            no_exams = shape.pop("no_exams")
            appointment_id = uuid.uuid4()
            sealed = None
            if exams and not no_exams:
                chosen = rng.sample(exams, k=min(len(exams), rng.choice((1, 1, 2, 3))))
                payload = json.dumps({"exam_ids": [str(e) for e in chosen]}).encode()
                sealed = keys[patient_id].seal_row(
                    Appointment.__tablename__, appointment_id, {"exams": payload}
                )["exams"]
            rows.append(
                {
                    **shape,
                    "id": appointment_id,
                    "tenant_id": tenant_id,
                    "patient_id": patient_id,
                    "kind": AppointmentKind.SITE.value,
                    "exams": sealed,
                    "home_address": None,
                    "sampler_staff_id": None,
                    "booked_by_account_id": None,
                    "booked_by_staff_id": None,
                    "hold_expires_at": None,
                    "anonymised_at": None,
                }
            )
    return rows


def honey_sets(session: Session, tenant_id: uuid.UUID) -> list[HoneySetSummary]:
    """Every honey set of the tenant with its marks still on file; names no patient."""
    marks: dict[uuid.UUID, int] = {
        set_id: count
        for set_id, count in session.execute(
            select(HoneyMark.set_id, func.count())
            .where(HoneyMark.tenant_id == tenant_id)
            .group_by(HoneyMark.set_id)
        )
    }
    return [
        HoneySetSummary(
            id=s.id,
            label=s.label,
            planted_at=s.planted_at,
            planted_by=s.planted_by,
            density_ppm=s.density_ppm,
            population=s.population,
            patient_count=s.patient_count,
            appointment_count=s.appointment_count,
            marks=marks.get(s.id, 0),
        )
        for s in session.scalars(
            select(HoneySet).where(HoneySet.tenant_id == tenant_id).order_by(HoneySet.planted_at)
        )
    ]
