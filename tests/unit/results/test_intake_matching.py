"""The matching decision, table-driven: a result is attached only to exactly one record
whose traits agree; every other case is queued with its reason."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from labvault.results.incoming import PatientClaim, PatientIdentifierClaim
from labvault.results.matching import Candidate, QueueReason, decide, traits_agree

BIRTH = dt.date(1979, 3, 15)
A = uuid.UUID(int=1)
B = uuid.UUID(int=2)


def claim(**changes: object) -> PatientClaim:
    values: dict[str, object] = {
        "identifiers": (PatientIdentifierClaim("279037512345678", "1.2.250.1.213.1.4.8", "INS"),),
        "birth_name": "Dupont-Lefèvre",
        "first_names": ("Hélène", "Marie"),
        "birth_date": BIRTH,
        "sex": "F",
    }
    values.update(changes)
    return PatientClaim(**values)  # type: ignore[arg-type]


def record(
    id_: uuid.UUID = A,
    *,
    birth_name: str = "DUPONT LEFEVRE",
    first_names: str = "Helene Marie",
    birth_date: dt.date = BIRTH,
    sex: str = "F",
    has_ins: bool = True,
) -> Candidate:
    return Candidate(id_, birth_name, first_names, birth_date, sex, has_ins)


CASES = [
    # (name, claim, by_ins, by_traits, expected: patient id or reason)
    ("ins, one record, traits agree", claim(), [record()], None, A),
    ("ins, two records", claim(), [record(A), record(B)], None, QueueReason.SEVERAL_CANDIDATES),
    (
        "ins, birth name differs",
        claim(),
        [record(birth_name="Durand")],
        None,
        QueueReason.TRAITS_DIFFER,
    ),
    (
        "ins, first name differs",
        claim(),
        [record(first_names="Marie Hélène")],
        None,
        QueueReason.TRAITS_DIFFER,
    ),
    (
        "ins, birth date differs",
        claim(),
        [record(birth_date=dt.date(1979, 3, 16))],
        None,
        QueueReason.TRAITS_DIFFER,
    ),
    ("ins, sex differs", claim(), [record(sex="M")], None, QueueReason.TRAITS_DIFFER),
    ("ins, claim without sex", claim(sex=""), [record()], None, QueueReason.TRAITS_DIFFER),
    ("ins unknown, traits not looked up", claim(), [], None, QueueReason.NO_CANDIDATE),
    ("ins unknown, one record without ins", claim(), [], [record(has_ins=False)], A),
    ("ins unknown, the record has another ins", claim(), [], [record()], QueueReason.NO_CANDIDATE),
    (
        "ins unknown, two records by traits",
        claim(),
        [],
        [record(A, has_ins=False), record(B, has_ins=False)],
        QueueReason.SEVERAL_CANDIDATES,
    ),
    ("no ins, one record", claim(identifiers=()), None, [record()], A),
    ("no ins, none", claim(identifiers=()), None, [], QueueReason.NO_CANDIDATE),
    (
        "no ins, two",
        claim(identifiers=()),
        None,
        [record(A), record(B)],
        QueueReason.SEVERAL_CANDIDATES,
    ),
    (
        "no ins, sex differs",
        claim(identifiers=()),
        None,
        [record(sex="M")],
        QueueReason.TRAITS_DIFFER,
    ),
    (
        "no ins, no traits",
        claim(identifiers=(), birth_date=None),
        None,
        None,
        QueueReason.NO_IDENTIFIER,
    ),
    ("same record found twice", claim(), [record(A), record(A)], None, A),
]


@pytest.mark.parametrize(
    ("claimed", "by_ins", "by_traits", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(
    claimed: PatientClaim,
    by_ins: list[Candidate] | None,
    by_traits: list[Candidate] | None,
    expected: uuid.UUID | QueueReason,
) -> None:
    match = decide(claimed, by_ins=by_ins, by_traits=by_traits)
    if isinstance(expected, QueueReason):
        assert match.patient_id is None
        assert match.reason is expected
    else:
        assert match.patient_id == expected
        assert match.reason is None


def test_traits_are_compared_as_the_blind_indexes_normalise() -> None:
    spelled = claim(birth_name="  dupont lefevre ", first_names=("HELENE",))
    assert traits_agree(spelled, record())
    assert not traits_agree(claim(birth_name=""), record(birth_name=""))


def test_a_candidate_repr_names_no_trait() -> None:
    assert "DUPONT" not in repr(record())
