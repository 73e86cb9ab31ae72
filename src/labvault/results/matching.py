"""Which patient a received result belongs to, or why no one can say for certain.

The rule (never attach to a guessed patient):

1. INS first: PID-3 identifiers whose authority is the NIR OID (``1.2.250.1.213.1.4.8``) or
   the test OID (``.4.10``), ``urn:oid:`` accepted, looked up through the NIR blind index.
2. Traits when the message carries no INS, or an INS no record has where the one record
   found by traits has no INS on file: birth name + first given name + birth date, through
   the name blind index.
3. A candidate is attached only if it is exactly one record AND its identity traits agree
   with the claim (birth name, first given name, birth date, sex), compared in the blind
   indexes' canonical form (case, accents, hyphens, spacing).

Anything else is queued with a :class:`QueueReason`. A match by traits alone is attached
only for a record already in the sender's care (checked by the store, which knows the
sender: :meth:`~labvault.results.intake.ResultStore.ingest`), else queued ``traits-only``.
The candidates' traits are read through
:class:`~labvault.patients.scope.IdentityVerification` (a few fields of any record, each
opening audited as the sending system, purpose ``result-matching``); nothing else of the
record is decrypted. :func:`decide` is the pure decision, tested table-driven.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy.orm import Session

from labvault.core.crypto.blind_index import canonical_name_birth_date
from labvault.core.crypto.keyring import Keyring
from labvault.core.crypto.normalize import normalize_name
from labvault.patients.nir import Nir, NirError
from labvault.patients.scope import IdentityVerification
from labvault.patients.services import PatientRecord, PatientRepository
from labvault.results.incoming import PatientClaim

__all__ = ["Candidate", "Match", "PatientMatcher", "QueueReason", "decide"]

MATCHING_PURPOSE: Final = "result-matching"
TRAIT_FIELDS: Final = frozenset(
    {"birth_name", "first_names", "birth_date", "sex", "ins_number", "ins_oid"}
)


class QueueReason(enum.StrEnum):
    """Why a message waits for a person (``result_messages.queue_reason``): codes only."""

    NO_IDENTIFIER = "no-identifier"
    """No INS and not enough traits (birth name, first name, birth date) to look up."""
    INVALID_IDENTIFIER = "invalid-identifier"
    """An INS that is not a valid NIR (bad key, bad format)."""
    NO_CANDIDATE = "no-candidate"
    SEVERAL_CANDIDATES = "several-candidates"
    TRAITS_DIFFER = "traits-differ"
    """One record found, but its birth name, first name, birth date or sex differ."""
    IDENTITY_ERASED = "identity-erased"
    """The record found was erased meanwhile (its key is gone)."""
    ORDER_OF_ANOTHER_PATIENT = "order-of-another-patient"
    """The order number is already another patient's: a person must look."""
    TRAITS_ONLY = "traits-only"
    """Found by traits alone (no INS on file matched) for a record the sender has no care
    relationship with: attaching would open that record to the sender, so a person looks."""


@dataclass(frozen=True, slots=True)
class Match:
    patient_id: uuid.UUID | None
    reason: QueueReason | None
    method: str = ""
    """``ins`` or ``traits`` when matched."""

    def __post_init__(self) -> None:
        if (self.patient_id is None) == (self.reason is None):
            raise ValueError("a match has a patient or a reason, not both")

    @classmethod
    def queued(cls, reason: QueueReason) -> Match:
        return cls(None, reason)


@dataclass(frozen=True, slots=True, repr=False)
class Candidate:
    """The traits of one record found by a lookup (decrypted for this check only)."""

    id: uuid.UUID
    birth_name: str | None
    first_names: str | None
    birth_date: dt.date | None
    sex: str | None
    has_ins: bool

    def __repr__(self) -> str:
        return f"Candidate(id={self.id})"

    @classmethod
    def of(cls, record: PatientRecord) -> Candidate:
        return cls(
            id=record.id,
            birth_name=record.birth_name,
            first_names=record.first_names,
            birth_date=record.birth_date,
            sex=record.sex.value if record.sex else None,
            has_ins=record.ins_number is not None,
        )


def traits_agree(claim: PatientClaim, candidate: Candidate) -> bool:
    """Birth name, first given name, birth date and sex, as the blind indexes compare them."""
    if (
        not claim.birth_name
        or not claim.first_name
        or claim.birth_date is None
        or candidate.birth_name is None
        or candidate.first_names is None
        or candidate.birth_date is None
    ):
        return False
    claimed = canonical_name_birth_date(claim.birth_name, claim.first_name, claim.birth_date)
    recorded = canonical_name_birth_date(
        candidate.birth_name, candidate.first_names, candidate.birth_date
    )
    if claimed != recorded or not normalize_name(claim.birth_name):
        return False
    return bool(claim.sex) and claim.sex == candidate.sex


def has_traits(claim: PatientClaim) -> bool:
    return bool(
        normalize_name(claim.birth_name)
        and normalize_name(claim.first_name)
        and claim.birth_date is not None
    )


def decide(
    claim: PatientClaim,
    *,
    by_ins: Sequence[Candidate] | None,
    by_traits: Sequence[Candidate] | None,
) -> Match:
    """The decision from what the lookups found.

    ``by_ins``: records found by the claimed INS (``None``: the claim has no usable INS);
    ``by_traits``: records found by traits (``None``: not looked up).
    """
    if by_ins is not None:
        distinct = {c.id: c for c in by_ins}
        if len(distinct) > 1:
            return Match.queued(QueueReason.SEVERAL_CANDIDATES)
        if len(distinct) == 1:
            (candidate,) = distinct.values()
            if traits_agree(claim, candidate):
                return Match(candidate.id, None, "ins")
            return Match.queued(QueueReason.TRAITS_DIFFER)
        # No record has this INS: a record registered without it may still be the one.
        if by_traits is None:
            return Match.queued(QueueReason.NO_CANDIDATE)
        without_ins = [c for c in by_traits if not c.has_ins]
        if len({c.id for c in by_traits}) == 1 and len(without_ins) == 1:
            if traits_agree(claim, without_ins[0]):
                return Match(without_ins[0].id, None, "traits")
            return Match.queued(QueueReason.TRAITS_DIFFER)
        if len({c.id for c in by_traits}) > 1:
            return Match.queued(QueueReason.SEVERAL_CANDIDATES)
        return Match.queued(QueueReason.NO_CANDIDATE)
    if by_traits is None:
        return Match.queued(QueueReason.NO_IDENTIFIER)
    distinct = {c.id: c for c in by_traits}
    if not distinct:
        return Match.queued(QueueReason.NO_CANDIDATE)
    if len(distinct) > 1:
        return Match.queued(QueueReason.SEVERAL_CANDIDATES)
    (candidate,) = distinct.values()
    if traits_agree(claim, candidate):
        return Match(candidate.id, None, "traits")
    return Match.queued(QueueReason.TRAITS_DIFFER)


class PatientMatcher:
    """Runs the lookups for :func:`decide` as the keyring's principal (the sender)."""

    def __init__(self, session: Session, keyring: Keyring) -> None:
        self._patients = PatientRepository(session, keyring, IdentityVerification(TRAIT_FIELDS))

    def match(self, claim: PatientClaim) -> Match:
        ins_values = {identifier.value.replace(" ", "") for identifier in claim.ins}
        by_ins: list[Candidate] | None = None
        if ins_values:
            nirs: list[Nir] = []
            for value in sorted(ins_values):
                try:
                    nirs.append(Nir.parse(value))
                except NirError:
                    return Match.queued(QueueReason.INVALID_IDENTIFIER)
            by_ins = [
                Candidate.of(record)
                for nir in nirs
                for record in self._patients.find_by_nir(nir, purpose=MATCHING_PURPOSE)
            ]
            if by_ins:
                return decide(claim, by_ins=by_ins, by_traits=None)
        by_traits: list[Candidate] | None = None
        if has_traits(claim):
            assert claim.birth_date is not None
            by_traits = [
                Candidate.of(record)
                for record in self._patients.find_by_name(
                    claim.birth_name, claim.first_name, claim.birth_date, purpose=MATCHING_PURPOSE
                )
            ]
        return decide(claim, by_ins=by_ins, by_traits=by_traits)
