"""Blind indexes: keyed hashes that allow exact lookups on encrypted values.

Each tenant has one index key per kind, wrapped by the key provider. The NIR has only
~10^11 possible values, so without the key an attacker could hash them all; that is why
index keys never sit in the database unwrapped and why each kind has its own key.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
import re
from collections.abc import Mapping
from typing import NoReturn

from labvault.core.crypto.normalize import normalize_email, normalize_name, normalize_phone
from labvault.core.crypto.secret import Secret

INDEX_KEY_BYTES = 32
# During a rotation the old and the new generation coexist; never more.
MAX_GENERATIONS = 2
# "Jean-Pierre Marc": given names are separated by spaces or commas; a hyphen joins one name.
_GIVEN_NAME_SEPARATOR = re.compile(r"[\s,]+")


class IndexKind(enum.StrEnum):
    NIR = "nir"
    EMAIL = "email"
    PHONE = "phone"
    NAME_BIRTH_DATE = "name_birth_date"
    # Its own key: a staff member who is also a patient is not linkable across the tables.
    STAFF_EMAIL = "staff_email"


class BlindIndexer:
    """Computes blind indexes for one tenant from its unwrapped index keys.

    Index keys come in generations. Normally there is one; while ``labvault keys
    rotate-index`` runs there are two: rows are being moved from the older to the newest.
    Writes always use the newest (``nir``, ``email``...); lookups must try every generation
    still held (``nir_candidates``...), newest first, so that a record answers whichever
    side of the migration it is on.
    """

    __slots__ = ("_generations",)

    def __init__(self, keys: Mapping[IndexKind, Secret[bytes]], *, generation: int = 1) -> None:
        self._generations: tuple[tuple[int, dict[IndexKind, bytes]], ...] = (
            (generation, _reveal_all(keys)),
        )

    @classmethod
    def from_generations(
        cls, generations: Mapping[int, Mapping[IndexKind, Secret[bytes]]]
    ) -> BlindIndexer:
        """An indexer over several generations of keys (at most two: old and new)."""
        if not generations:
            raise ValueError("missing index keys: no generation")
        if len(generations) > MAX_GENERATIONS:
            raise ValueError(
                f"{len(generations)} index key generations are held; at most "
                f"{MAX_GENERATIONS} may coexist (finish the running rotation first)"
            )
        ordered = sorted(generations, reverse=True)
        if any(generation < 1 for generation in ordered):
            raise ValueError("index key generations start at 1")
        indexer = cls(generations[ordered[0]], generation=ordered[0])
        indexer._generations = tuple(
            (generation, _reveal_all(generations[generation])) for generation in ordered
        )
        return indexer

    def __repr__(self) -> str:
        return "BlindIndexer('**********')"

    def __reduce__(self) -> NoReturn:
        raise TypeError("index keys cannot be pickled: they must never leave the process")

    @property
    def generation(self) -> int:
        """The newest generation: the one every write uses (store it as ``index_generation``)."""
        return self._generations[0][0]

    @property
    def generations(self) -> tuple[int, ...]:
        """Every generation held, newest first."""
        return tuple(generation for generation, _ in self._generations)

    @property
    def rotating(self) -> bool:
        """Whether an older generation is still held (an index-key rotation is running)."""
        return len(self._generations) > 1

    def _digest(self, kind: IndexKind, canonical: str) -> bytes:
        return hmac.digest(self._generations[0][1][kind], canonical.encode(), "sha256")

    def _candidates(self, kind: IndexKind, canonical: str) -> tuple[bytes, ...]:
        message = canonical.encode()
        return tuple(hmac.digest(keys[kind], message, "sha256") for _, keys in self._generations)

    # Writes: the newest generation's digest.

    def nir(self, compact_nir: str) -> bytes:
        """``compact_nir`` is the 15-character form given by ``Nir.compact``."""
        return self._digest(IndexKind.NIR, _canonical_nir(compact_nir))

    def email(self, address: str) -> bytes:
        return self._digest(IndexKind.EMAIL, normalize_email(address))

    def staff_email(self, address: str) -> bytes:
        return self._digest(IndexKind.STAFF_EMAIL, normalize_email(address))

    def phone(self, number: str) -> bytes:
        return self._digest(IndexKind.PHONE, normalize_phone(number))

    def name_birth_date(self, birth_name: str, first_name: str, birth_date: dt.date) -> bytes:
        """Birth name, first given name and birth date: the identity-matching triple."""
        canonical = canonical_name_birth_date(birth_name, first_name, birth_date)
        return self._digest(IndexKind.NAME_BIRTH_DATE, canonical)

    # Lookups: one digest per generation held, newest first (match with ``column.in_``).

    def nir_candidates(self, compact_nir: str) -> tuple[bytes, ...]:
        return self._candidates(IndexKind.NIR, _canonical_nir(compact_nir))

    def email_candidates(self, address: str) -> tuple[bytes, ...]:
        return self._candidates(IndexKind.EMAIL, normalize_email(address))

    def staff_email_candidates(self, address: str) -> tuple[bytes, ...]:
        return self._candidates(IndexKind.STAFF_EMAIL, normalize_email(address))

    def phone_candidates(self, number: str) -> tuple[bytes, ...]:
        return self._candidates(IndexKind.PHONE, normalize_phone(number))

    def name_birth_date_candidates(
        self, birth_name: str, first_name: str, birth_date: dt.date
    ) -> tuple[bytes, ...]:
        canonical = canonical_name_birth_date(birth_name, first_name, birth_date)
        return self._candidates(IndexKind.NAME_BIRTH_DATE, canonical)


def _reveal_all(keys: Mapping[IndexKind, Secret[bytes]]) -> dict[IndexKind, bytes]:
    missing = set(IndexKind) - set(keys)
    if missing:
        raise ValueError(f"missing index keys: {sorted(missing)}")
    return {kind: keys[kind].reveal() for kind in IndexKind}


def _canonical_nir(compact_nir: str) -> str:
    return compact_nir.upper()


def canonical_name_birth_date(birth_name: str, first_name: str, birth_date: dt.date) -> str:
    """The normalised triple that the name index hashes."""
    given = _GIVEN_NAME_SEPARATOR.split(first_name.strip(), maxsplit=1)[0]
    return f"{normalize_name(birth_name)}\x1f{normalize_name(given)}\x1f{birth_date.isoformat()}"
