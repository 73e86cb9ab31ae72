"""Password hashing (Argon2id) and the policy for new passwords (NIST SP 800-63B).

Hashing
    Argon2id through argon2-cffi, with OWASP's first recommended configuration by default:
    m = 19 MiB (19,456 KiB), t = 2, p = 1, a 16-byte random salt and a 32-byte tag, stored in
    the PHC string format (``$argon2id$v=19$m=19456,t=2,p=1$<salt>$<tag>``), so every stored
    hash carries its own parameters. ``needs_rehash`` says when they differ from the current
    ones; the login flow then re-hashes the password it just verified, which is how a change
    of parameters reaches every active account without a migration.

    Verifying a wrong password returns ``False``; only a stored value that is not a usable
    Argon2 hash raises (``PasswordHashError``): that is corrupt data, not a failed login.

No user enumeration by timing (DESIGN I7)
    A login for an unknown account must cost what a login for a known one costs.
    ``verify_dummy`` runs a full verification against ``DUMMY_HASH``, a real hash of a random
    password made once (lazily, with the same parameters), and always answers ``False``.
    A wrong password costs a full Argon2 run too: Argon2 cannot stop early.

Normalisation
    Passwords are NFKC-normalised before hashing (and before every check of the policy), as
    SP 800-63B §5.1.1.2 recommends. The same password typed on different keyboards, systems
    or input methods can reach us as different code points: "é" precomposed (U+00E9) from a
    French AZERTY keyboard on Windows, "e" + U+0301 (combining acute) from some macOS and
    mobile input paths, full-width letters (U+FF21...) from an East Asian input method, the
    "fi" ligature (U+FB01) pasted from a PDF, a no-break space from a French-typography
    autocorrect. Without normalisation the user would be told that the right password is
    wrong. NFKC is not case folding: "Soleil" and "soleil" remain different passwords. Lone
    surrogates (which no keyboard produces) are hashed as they are (UTF-8 with
    ``surrogatepass``) instead of crashing.

Policy for new passwords (SP 800-63B §3.1.1.2 of revision 4, §5.1.1.2 of revision 3)
    - at least 8 characters (Unicode code points after NFKC): accounts here always have a
      second factor (DESIGN: MFA everywhere); a deployment where the password would be the
      only factor needs ``PasswordPolicy(min_length=15)``, as revision 4 requires;
    - up to 128 characters (the guideline asks for at least 64), spaces and every Unicode
      character allowed, nothing truncated;
    - no composition rules (no "one digit, one capital, one symbol");
    - refused if on the list of common passwords shipped in ``data/`` (the 100,000 most
      common, compared case-insensitively after NFKC; see ``data/README.md``), if it is a
      run of one repeated character, a short repeated unit, or a trivial sequence
      ("12345678", "abcdefgh", the keyboard rows "azertyui", "qwertyui", ...), and if it
      contains the account's own name or the local part of its email address.
    Each refusal raises ``PasswordRejected`` with a stable ``code`` and a French ``message``
    for the form; neither ever contains the password.
"""

from __future__ import annotations

import gzip
import re
import secrets
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Literal

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from labvault.core.crypto.errors import CryptoError
from labvault.core.crypto.secret import Secret

__all__ = [
    "COMMON_PASSWORDS_COUNT",
    "DEFAULT_HASHER",
    "DEFAULT_PARAMETERS",
    "DEFAULT_POLICY",
    "DUMMY_HASH",
    "OWASP_CONFIGURATIONS",
    "Argon2Parameters",
    "PasswordHashError",
    "PasswordHasher",
    "PasswordPolicy",
    "PasswordRejected",
    "RejectionCode",
    "check_new_password",
    "common_passwords",
    "is_common_password",
    "normalize_password",
    "verify_dummy",
]


# --------------------------------------------------------------------------- hashing


@dataclass(frozen=True, slots=True)
class Argon2Parameters:
    """Argon2id cost parameters. ``memory_cost`` is in KiB (19,456 KiB = 19 MiB)."""

    time_cost: int = 2
    memory_cost: int = 19_456
    parallelism: int = 1
    hash_len: int = 32
    salt_len: int = 16

    def meets_owasp_minimum(self) -> bool:
        """At least as strong, in memory and passes, as one of OWASP's configurations."""
        return self.parallelism >= 1 and any(
            self.memory_cost >= memory and self.time_cost >= time
            for memory, time in OWASP_CONFIGURATIONS
        )

    def describe(self) -> str:
        return (
            f"Argon2id m={self.memory_cost} KiB ({self.memory_cost / 1024:g} MiB), "
            f"t={self.time_cost}, p={self.parallelism}"
        )


# OWASP Password Storage Cheat Sheet, Argon2id: (memory KiB, iterations), parallelism 1;
# "these configuration settings provide an equal level of defense".
OWASP_CONFIGURATIONS: tuple[tuple[int, int], ...] = (
    (47_104, 1),
    (19_456, 2),
    (12_288, 3),
    (9_216, 4),
    (7_168, 5),
)
DEFAULT_PARAMETERS = Argon2Parameters()

# Bounds on the parameters read from a stored hash: a tampered row must not be able to make
# one login allocate gigabytes or spin for minutes.
_MAX_STORED_MEMORY_KIB = 1024 * 1024
_MAX_STORED_TIME_COST = 64
_MAX_STORED_PARALLELISM = 64
# PHC string of an Argon2 hash: base64 without padding; a salt of 8 bytes or more (11
# characters) and a tag of 4 bytes or more (6 characters), the minimums of RFC 9106.
_STORED_HASH = re.compile(
    r"\$argon2(?:id|i|d)\$(?:v=(?:16|19)\$)?m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]{11,}\$[A-Za-z0-9+/]{6,}"
)


class PasswordHashError(CryptoError):
    """A stored password hash is not a usable Argon2 hash (corrupt or tampered data)."""


def normalize_password(password: Secret[str]) -> Secret[str]:
    """The NFKC form of ``password`` (see the module docstring for why)."""
    return Secret(unicodedata.normalize("NFKC", _reveal(password)))


def _reveal(password: Secret[str]) -> str:
    if not isinstance(password, Secret):
        raise TypeError("passwords must be passed wrapped in Secret")
    value = password.reveal()
    if not isinstance(value, str):
        raise TypeError("a password is a str wrapped in Secret")
    return value


def _password_bytes(password: Secret[str]) -> bytes:
    return normalize_password(password).reveal().encode("utf-8", "surrogatepass")


class PasswordHasher:
    """Argon2id hashing with fixed parameters; refuses parameters below OWASP's minimum."""

    __slots__ = ("_dummy_hash", "_hasher", "_lock", "parameters")

    def __init__(self, parameters: Argon2Parameters = DEFAULT_PARAMETERS) -> None:
        if not parameters.meets_owasp_minimum():
            raise ValueError(
                f"{parameters.describe()} is weaker than every OWASP Argon2id configuration"
            )
        self.parameters = parameters
        self._hasher = argon2.PasswordHasher(
            time_cost=parameters.time_cost,
            memory_cost=parameters.memory_cost,
            parallelism=parameters.parallelism,
            hash_len=parameters.hash_len,
            salt_len=parameters.salt_len,
            type=argon2.Type.ID,
        )
        self._dummy_hash: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PasswordHasher({self.parameters.describe()})"

    def hash(self, password: Secret[str]) -> str:
        """A new PHC-format Argon2id hash of the NFKC form of ``password``, fresh salt."""
        return self._hasher.hash(_password_bytes(password))

    def verify(self, stored: str, password: Secret[str]) -> bool:
        """Whether ``password`` matches ``stored``; ``False`` for a wrong password.

        Raises ``PasswordHashError`` when ``stored`` is not a usable Argon2 hash. Hashes of
        the other Argon2 variants or of older parameters still verify (and
        ``needs_rehash`` says to replace them).
        """
        self._check_stored(stored)
        try:
            return self._hasher.verify(stored, _password_bytes(password))
        except VerifyMismatchError:
            return False
        except VerificationError as exc:  # e.g. "Decoding failed": a damaged salt or tag
            raise PasswordHashError(f"stored password hash is corrupt ({exc})") from None

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other parameters (weaker or not) or variant."""
        self._check_stored(stored)
        return self._hasher.check_needs_rehash(stored)

    @property
    def dummy_hash(self) -> str:
        """A real hash, with these parameters, of a random password nobody knows."""
        if self._dummy_hash is None:
            with self._lock:
                if self._dummy_hash is None:
                    self._dummy_hash = self.hash(Secret(secrets.token_urlsafe(32)))
        return self._dummy_hash

    def verify_dummy(self, password: Secret[str]) -> bool:
        """Costs what ``verify`` costs and always answers ``False`` (unknown account)."""
        self.verify(self.dummy_hash, password)
        return False

    @staticmethod
    def _check_stored(stored: str) -> None:
        if not isinstance(stored, str):
            raise PasswordHashError("stored password hash is not a string")
        if _STORED_HASH.fullmatch(stored) is None:
            raise PasswordHashError("stored password hash is not a well-formed Argon2 hash")
        try:
            found = argon2.extract_parameters(stored)
        except InvalidHashError:
            raise PasswordHashError("stored password hash is not an Argon2 hash") from None
        if (
            found.memory_cost > _MAX_STORED_MEMORY_KIB
            or found.time_cost > _MAX_STORED_TIME_COST
            or found.parallelism > _MAX_STORED_PARALLELISM
        ):
            raise PasswordHashError("stored password hash has out-of-range parameters")


DEFAULT_HASHER = PasswordHasher()


def verify_dummy(password: Secret[str]) -> bool:
    """``DEFAULT_HASHER.verify_dummy``: the login path for an account that does not exist."""
    return DEFAULT_HASHER.verify_dummy(password)


if TYPE_CHECKING:
    DUMMY_HASH: str
else:

    def __getattr__(name: str) -> str:
        # PEP 562: DUMMY_HASH is computed on first access (one Argon2 run), not at import.
        if name == "DUMMY_HASH":
            return DEFAULT_HASHER.dummy_hash
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- policy

RejectionCode = Literal["too_short", "too_long", "common", "contains_context", "repetitive"]


class PasswordRejected(ValueError):  # noqa: N818 (a refusal of user input, not a fault)
    """A new password was refused; ``message`` is French, for the form, without the value."""

    def __init__(self, code: RejectionCode, message: str) -> None:
        super().__init__(message)
        self.code: RejectionCode = code
        self.message = message

    def __repr__(self) -> str:
        return f"PasswordRejected({self.code!r}, {self.message!r})"


_COMMON_PASSWORDS_FILE = "common-passwords.txt.gz"
COMMON_PASSWORDS_COUNT = 100_000


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list (NFKC, case-folded), read once per process on first use."""
    source = resources.files("labvault.core.crypto") / "data" / _COMMON_PASSWORDS_FILE
    text = gzip.decompress(source.read_bytes()).decode("utf-8")
    return frozenset(line for line in text.split("\n") if line)


def is_common_password(password: Secret[str]) -> bool:
    """Whether ``password`` is on the list, case-insensitively after NFKC."""
    return normalize_password(password).reveal().casefold() in common_passwords()


# Runs that take no thought to type. Each is checked forwards and backwards; the letter rows
# are also joined, for a finger sliding from one row to the next.
_SEQUENCES: tuple[str, ...] = (
    "01234567890",
    "abcdefghijklmnopqrstuvwxyz",
    "azertyuiopqsdfghjklmwxcvbn",  # AZERTY (France, Belgium)
    "qwertyuiopasdfghjklzxcvbnm",  # QWERTY
    "qwertzuiopasdfghjklyxcvbnm",  # QWERTZ (Switzerland, Germany)
    "&\u00e9\"'(-\u00e8_\u00e7\u00e0)=",  # AZERTY digit row without Shift: &é"'(-è_çà)=
    "1234567890\u00b0+",  # AZERTY digit row with Shift: 1234567890°+
    "!@#$%^&*()_+",  # QWERTY digit row with Shift
)
_MAX_REPEATED_UNIT = 3  # "aaaaaaaa", "abababab", "abcabcabc"
_MIN_RUN = 3  # each of the (at most two) runs of a repetitive password
_WORD_SEPARATORS = re.compile(r"[\W_]+")


def _fold(value: str) -> str:
    """NFKC, case-folded, accents removed: "Élodie" and "elodie" compare equal."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", value).casefold())
    return unicodedata.normalize(
        "NFC", "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    )


def _is_trivial_run(run: str) -> bool:
    if len(run) < _MIN_RUN:
        return False
    for unit in range(1, _MAX_REPEATED_UNIT + 1):
        if len(run) >= 2 * unit and all(run[i] == run[i - unit] for i in range(unit, len(run))):
            return True
    backwards = run[::-1]
    return any(run in sequence or backwards in sequence for sequence in _SEQUENCES)


def _is_repetitive(folded: str) -> bool:
    """One trivial run, or two joined ("abcd1234", "azerty123", "aaaa1111")."""
    if _is_trivial_run(folded):
        return True
    return any(
        _is_trivial_run(folded[:cut]) and _is_trivial_run(folded[cut:])
        for cut in range(_MIN_RUN, len(folded) - _MIN_RUN + 1)
    )


def _context_words(context: Sequence[str], min_length: int) -> set[str]:
    words: set[str] = set()
    for item in context:
        folded = _fold(item).strip()
        if "@" in folded:  # an email address: its local part is what people reuse
            folded = folded.rsplit("@", 1)[0]
        candidates = [folded, *_WORD_SEPARATORS.split(folded)]
        words.update(word for word in candidates if len(word) >= min_length)
    return words


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """Rules for a new password (see the module docstring); lengths in code points."""

    min_length: int = 8
    max_length: int = 128
    min_context_length: int = 4

    def __post_init__(self) -> None:
        if self.min_length < 8:
            raise ValueError("SP 800-63B never allows fewer than 8 characters")
        if self.max_length < 64:
            raise ValueError("SP 800-63B requires accepting at least 64 characters")
        if self.max_length < self.min_length:
            raise ValueError("max_length is below min_length")

    def check(self, password: Secret[str], *, context: Sequence[str] = ()) -> None:
        """Returns if ``password`` may be set; raises ``PasswordRejected`` otherwise.

        ``context``: what the account is known by (email address, names); a password
        containing one of them, or any word of 4 or more characters of them, is refused.
        """
        if isinstance(context, str):
            raise TypeError("context is a sequence of strings, not one string")
        normalized = normalize_password(password).reveal()
        length = len(normalized)
        if length < self.min_length:
            raise PasswordRejected(
                "too_short",
                f"Le mot de passe doit contenir au moins {self.min_length} caractères.",
            )
        if length > self.max_length:
            raise PasswordRejected(
                "too_long",
                f"Le mot de passe ne doit pas dépasser {self.max_length} caractères.",
            )
        folded = _fold(normalized)
        if _is_repetitive(normalized.casefold()) or _is_repetitive(folded):
            raise PasswordRejected(
                "repetitive",
                "Le mot de passe ne doit pas être un même caractère répété ni une suite "
                "évidente (comme aaaaaaaa, 12345678, abcdefgh ou azertyui).",
            )
        if any(word in folded for word in _context_words(context, self.min_context_length)):
            raise PasswordRejected(
                "contains_context",
                "Le mot de passe ne doit pas contenir votre nom ni votre adresse électronique.",
            )
        if normalized.casefold() in common_passwords():
            raise PasswordRejected(
                "common",
                "Ce mot de passe fait partie des mots de passe les plus courants ou déjà "
                "divulgués. Choisissez-en un autre, par exemple une phrase de plusieurs mots.",
            )


DEFAULT_POLICY = PasswordPolicy()


def check_new_password(password: Secret[str], *, context: Sequence[str] = ()) -> None:
    """``DEFAULT_POLICY.check``: raises ``PasswordRejected`` (code, French message)."""
    DEFAULT_POLICY.check(password, context=context)
