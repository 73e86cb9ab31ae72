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
    """Computes blind indexes for one tenant from its unwrapped index keys."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[IndexKind, Secret[bytes]]) -> None:
        missing = set(IndexKind) - set(keys)
        if missing:
            raise ValueError(f"missing index keys: {sorted(missing)}")
        self._keys = {kind: keys[kind].reveal() for kind in IndexKind}

    def __repr__(self) -> str:
        return "BlindIndexer('**********')"

    def __reduce__(self) -> NoReturn:
        raise TypeError("index keys cannot be pickled: they must never leave the process")

    def _digest(self, kind: IndexKind, canonical: str) -> bytes:
        return hmac.digest(self._keys[kind], canonical.encode(), "sha256")

    def nir(self, compact_nir: str) -> bytes:
        """``compact_nir`` is the 15-character form given by ``Nir.compact``."""
        return self._digest(IndexKind.NIR, compact_nir.upper())

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


def canonical_name_birth_date(birth_name: str, first_name: str, birth_date: dt.date) -> str:
    """The normalised triple that the name index hashes."""
    given = _GIVEN_NAME_SEPARATOR.split(first_name.strip(), maxsplit=1)[0]
    return f"{normalize_name(birth_name)}\x1f{normalize_name(given)}\x1f{birth_date.isoformat()}"
