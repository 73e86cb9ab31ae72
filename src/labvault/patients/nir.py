"""The French NIR ("numéro de sécurité sociale") as a value object.

A NIR is personal data: nothing here ever puts one, or any part of one, into a repr, a
str or an error message (invariant I5). Read ``Nir.compact`` or ``Nir.formatted()`` on
purpose when the value is needed.

Layout, 15 characters: ``S YY MM DD CCC OOO KK`` (sex, birth year, birth month,
department, commune, order number, control key). Rules, and where they come from:

- Key: ``97 - (first 13 characters as an integer mod 97)`` with 2A read as 19 and 2B as 18,
  so 01-97 (python-stdnum ``stdnum/fr/nir.py``; CNAM ``assurance-maladie-digital/nir-validation``).
- Sex: 1 or 2 (CNAM ``NirValidator`` ``[12]``; service-public.fr F33078). A NIA, the
  waiting number of people born abroad, is built like a NIR and passes. Provisional
  numbers starting with 7 or 8 (the CNAM's NNP, another structure) and 3/4 are not NIRs.
- Birth month: 01-12, or 20-99 when the civil status gives no usable month (CNAM
  nir-validation 2.0, ``UPGRADE-2.0.md``). Validators derived from the INSEE guide are
  narrower (20, 30-42, 50-99 in django-localflavor); the CNAM's wider set is kept because
  rejecting a real NIR locks a patient out, while the key already catches typing errors.
- Department: 01-95 (20 is Corsica before 1976), 2A/2B, 91-96 also Algeria, Morocco and
  Tunisia before independence (service-public.fr F33078), 97x/98x overseas with a
  2-digit commune, 99 abroad followed by the INSEE country code. 00 does not exist.
- Commune (or country) and order number are never all zeros (gip-inclusion les-emplois
  ``NIR.FORMAT_RE``; django-localflavor ``FRNationalIdentificationNumber``).

Checks run in this order: characters and length, then the key, then the field rules. A
key mismatch almost always means a typing error somewhere in the number, so it is
reported before a field rule that the same typo may have broken.
"""

from __future__ import annotations

import datetime
import random
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["Nir", "NirError", "NirProblem", "compute_key", "synthetic_nir"]

_LENGTH: Final = 15


class NirProblem(StrEnum):
    """Why a text is not a NIR: stable codes for APIs, metrics and tests."""

    EMPTY = "empty"
    BAD_CHARACTER = "bad_character"
    TOO_SHORT = "too_short"
    MISSING_KEY = "missing_key"
    TOO_LONG = "too_long"
    LETTERS_IN_KEY = "letters_in_key"
    BAD_KEY = "bad_key"
    BAD_SEX = "bad_sex"
    BAD_MONTH = "bad_month"
    BAD_DEPARTMENT = "bad_department"
    BAD_COMMUNE = "bad_commune"
    BAD_ORDER = "bad_order"


_MESSAGES: Final[dict[NirProblem, str]] = {
    NirProblem.EMPTY: "no NIR was given",
    NirProblem.BAD_CHARACTER: (
        "a NIR holds only digits, with 2A or 2B as the department (characters 6-7) for "
        "Corsica; spaces, dots and dashes are accepted as separators"
    ),
    NirProblem.LETTERS_IN_KEY: "the control key (the last two characters) must be two digits",
    NirProblem.BAD_KEY: (
        "the control key (the last two characters) does not match the rest of the number: "
        "check it for a typing error"
    ),
    NirProblem.BAD_SEX: (
        "the first character must be 1 or 2; provisional numbers (starting with 3, 4, 7 or 8) "
        "are not NIRs"
    ),
    NirProblem.BAD_MONTH: "the birth month (characters 4-5) must be 01-12 or 20-99",
    NirProblem.BAD_DEPARTMENT: (
        "the birth department (characters 6-7) must be 01-96, 2A, 2B, 97 or 98 (overseas) "
        "or 99 (born abroad)"
    ),
    NirProblem.BAD_COMMUNE: (
        "the birth commune or country (characters 8-10, 9-10 overseas) cannot be all zeros"
    ),
    NirProblem.BAD_ORDER: "the order number (characters 11-13) cannot be all zeros",
}


class NirError(ValueError):
    """A text is not a valid NIR. The message states the rule, never the value."""

    def __init__(self, problem: NirProblem, message: str | None = None) -> None:
        self.problem = problem
        self.message = _MESSAGES[problem] if message is None else message
        super().__init__(self.message)

    def __reduce__(self) -> tuple[type[NirError], tuple[NirProblem, str]]:
        return (type(self), (self.problem, self.message))


def _length_error(length: int, expected: int) -> NirError:
    if length == 0:
        return NirError(NirProblem.EMPTY)
    if length == 13 and expected == _LENGTH:
        return NirError(
            NirProblem.MISSING_KEY,
            "13 characters: the 2-digit control key at the end is missing",
        )
    problem = NirProblem.TOO_SHORT if length < expected else NirProblem.TOO_LONG
    # Capped so that no message ever holds three digits in a row, a cheap I5 guarantee.
    count = str(length) if length < 100 else "over 99"
    return NirError(problem, f"{count} characters without separators, expected {expected}")


# Whitespace is removed with str.split(), which also knows the no-break and thin spaces
# of copy-pasted numbers; dots and dashes (hyphen, en and em dashes, minus) go with this.
_DOTS_AND_DASHES: Final = str.maketrans("", "", ".-\u2010\u2011\u2012\u2013\u2014\u2015\u2212")
_ASCII_ALPHANUMERIC: Final = re.compile(r"[0-9A-Za-z]+")
_CANONICAL: Final = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}")
_CANONICAL_BODY: Final = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{6}")

_SEXES: Final = frozenset("12")
_MONTHS: Final = frozenset(f"{month:02d}" for month in (*range(1, 13), *range(20, 100)))
_OVERSEAS: Final = frozenset(("97", "98"))


def _shape_error(compact: str) -> NirError:
    """Name the first character-level problem of a text the canonical pattern rejected."""
    if not compact:
        return NirError(NirProblem.EMPTY)
    if not compact.isascii() or _ASCII_ALPHANUMERIC.fullmatch(compact) is None:
        return NirError(NirProblem.BAD_CHARACTER)
    if len(compact) != _LENGTH:
        return _length_error(len(compact), _LENGTH)
    # Now 15 ASCII letters or digits, where str.isdigit() means 0-9 only.
    if not compact[:5].isdigit() or not compact[7:13].isdigit():
        return NirError(NirProblem.BAD_CHARACTER)
    department = compact[5:7]
    if not department.isdigit() and department not in ("2A", "2B"):
        return NirError(NirProblem.BAD_DEPARTMENT)
    return NirError(NirProblem.LETTERS_IN_KEY)


def _key_of(body: str) -> int:
    """The key of a canonical 13-character body; the caller has checked its shape."""
    department = body[5:7]
    if department == "2A":
        body = f"{body[:5]}19{body[7:]}"
    elif department == "2B":
        body = f"{body[:5]}18{body[7:]}"
    return 97 - int(body) % 97


def compute_key(first13: str) -> int:
    """Return the control key (1-97) of the first 13 characters of a NIR.

    ``first13`` is canonical: digits, with "2A" or "2B" as characters 6-7, no separators.
    """
    if _CANONICAL_BODY.fullmatch(first13) is None:
        if len(first13) != 13:
            raise _length_error(len(first13), 13)
        raise _shape_error(first13 + "00")
    return _key_of(first13)


def _check(compact: str) -> None:
    if _CANONICAL.fullmatch(compact) is None:
        raise _shape_error(compact)
    if int(compact[13:]) != _key_of(compact[:13]):
        raise NirError(NirProblem.BAD_KEY)
    if compact[0] not in _SEXES:
        raise NirError(NirProblem.BAD_SEX)
    if compact[3:5] not in _MONTHS:
        raise NirError(NirProblem.BAD_MONTH)
    department = compact[5:7]
    if department == "00":
        raise NirError(NirProblem.BAD_DEPARTMENT)
    commune = compact[8:10] if department in _OVERSEAS else compact[7:10]
    if commune in ("00", "000"):
        raise NirError(NirProblem.BAD_COMMUNE)
    if compact[10:13] == "000":
        raise NirError(NirProblem.BAD_ORDER)


@dataclass(frozen=True, slots=True, repr=False)
class Nir:
    """A valid NIR, held as its 15-character compact form, e.g. ``295109912611193``.

    Build it with ``Nir.parse`` from user input; the constructor accepts only the compact
    canonical form. ``repr`` and ``str`` are masked so a NIR never lands in a log by accident.
    """

    compact: str

    def __post_init__(self) -> None:
        _check(self.compact)

    @classmethod
    def parse(cls, text: str) -> Nir:
        """Read a NIR as people type it: separators, lowercase 2a/2b, surrounding spaces."""
        compact = "".join(text.split())
        if not compact.isalnum():
            compact = compact.translate(_DOTS_AND_DASHES)
        if compact.isascii():
            compact = compact.upper()
        return cls(compact)

    def formatted(self) -> str:
        """The grouping printed on the carte Vitale: ``2 95 10 99 126 111 93``."""
        c = self.compact
        return f"{c[0]} {c[1:3]} {c[3:5]} {c[5:7]} {c[7:10]} {c[10:13]} {c[13:]}"

    @property
    def sex_digit(self) -> str:
        """The sex: "1" male, "2" female."""
        return self.compact[0]

    @property
    def birth_year(self) -> str:
        """The last two digits of the birth year."""
        return self.compact[1:3]

    @property
    def birth_month(self) -> str:
        """The birth month "01"-"12", or "20"-"99" when the civil status gives none usable."""
        return self.compact[3:5]

    @property
    def department(self) -> str:
        """Two characters ("75", "2A", "99"), or three overseas ("971")."""
        if self.compact[5:7] in _OVERSEAS:
            return self.compact[5:8]
        return self.compact[5:7]

    @property
    def commune(self) -> str:
        """The INSEE commune code within the department (2 digits overseas) or the country."""
        if self.compact[5:7] in _OVERSEAS:
            return self.compact[8:10]
        return self.compact[7:10]

    @property
    def order(self) -> str:
        """The order number distinguishing people born at the same place and period."""
        return self.compact[10:13]

    @property
    def key(self) -> str:
        """The two-digit control key, "01" to "97"."""
        return self.compact[13:]

    def __repr__(self) -> str:
        return "Nir(***)"

    def __str__(self) -> str:
        return "***"


_METROPOLITAN_DEPARTMENTS: Final = (
    *(f"{number:02d}" for number in range(1, 96) if number != 20),
    "2A",
    "2B",
)
_OVERSEAS_DEPARTMENTS: Final = ("971", "972", "973", "974", "976")
_BORN_ABROAD_SHARE: Final = 0.06
_BORN_OVERSEAS_SHARE: Final = 0.03
_SEX_DIGITS: Final = {1: "1", 2: "2"}
_TWO_DIGITS: Final = tuple(f"{number:02d}" for number in range(100))
_THREE_DIGITS: Final = tuple(f"{number:03d}" for number in range(1000))


def synthetic_nir(rng: random.Random, *, sex: int, birth_date: datetime.date) -> Nir:
    """A NIR with a valid key for a synthetic patient (pair it with the test INS OID).

    Sex, birth year and month come from the arguments; the birthplace and order number
    are drawn from ``rng``: mostly metropolitan France (2A and 2B included), sometimes
    overseas or abroad (99 and a country code in 100-599, not necessarily a real one).
    """
    sex_digit = _SEX_DIGITS.get(sex)
    if sex_digit is None:
        raise ValueError("sex must be 1 (male) or 2 (female)")
    # Seeding calls this a million times. rng.random() costs a quarter of rng.randrange(),
    # string tables beat format specs, and the number is valid by construction, so it
    # skips the checks of Nir().
    random_ = rng.random
    draw = random_()
    if draw < _BORN_ABROAD_SHARE:
        place = f"99{_THREE_DIGITS[100 + int(random_() * 500)]}"
    elif draw < _BORN_ABROAD_SHARE + _BORN_OVERSEAS_SHARE:
        department = _OVERSEAS_DEPARTMENTS[int(random_() * len(_OVERSEAS_DEPARTMENTS))]
        place = f"{department}{_TWO_DIGITS[1 + int(random_() * 99)]}"
    else:
        department = _METROPOLITAN_DEPARTMENTS[int(random_() * len(_METROPOLITAN_DEPARTMENTS))]
        place = f"{department}{_THREE_DIGITS[1 + int(random_() * 999)]}"
    order = _THREE_DIGITS[1 + int(random_() * 999)]
    birth = _TWO_DIGITS[birth_date.year % 100] + _TWO_DIGITS[birth_date.month]
    body = f"{sex_digit}{birth}{place}{order}"
    nir = object.__new__(Nir)
    object.__setattr__(nir, "compact", f"{body}{_TWO_DIGITS[_key_of(body)]}")
    return nir
