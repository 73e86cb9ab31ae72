"""Canonical forms for values that are looked up exactly through blind indexes.

Two spellings of the same person must give the same index: "Élodie  DUPONT-Martin" and
"elodie dupont martin" are one name; "06 12 34 56 78" and "+33612345678" are one phone.
"""

from __future__ import annotations

import re
import unicodedata

from labvault.core.contact import parse_phone

# ASCII separators, Unicode hyphens and dashes (U+2010-2014), the typographic apostrophe
# (U+2019); written as escapes so that no look-alike character hides in the source.
_SEPARATORS = re.compile("[\\s\\-'`.,_\u2010-\u2014\u2019]+")


class NormalizationError(ValueError):
    """The value cannot be put in canonical form (message names the rule, not the value)."""


def normalize_name(value: str) -> str:
    """Case-, accent-, hyphen- and spacing-insensitive form of a person's name."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    folded = stripped.casefold().replace("æ", "ae").replace("œ", "oe").replace("ß", "ss")
    return _SEPARATORS.sub(" ", folded).strip()


def normalize_email(value: str) -> str:
    """Addresses are compared case-insensitively, as every real mail provider does."""
    return unicodedata.normalize("NFKC", value).strip().casefold()


def normalize_phone(value: str, default_region: str = "FR") -> str:
    """E.164 form (``+33612345678``); national French numbers are read as such."""
    try:
        return parse_phone(value, default_region)
    except ValueError:
        raise NormalizationError("not a valid phone number") from None
