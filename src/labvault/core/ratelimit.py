"""Rate limits: the brute-force brake in front of authentication and other costly paths.

The seam is :class:`RateLimiter`; :class:`LimitsRateLimiter` implements it with the
:pypi:`limits` library on the storage named by ``LABVAULT_RATELIMIT_STORAGE``:

- ``memory://`` (embedded default): counters live in this process only. Fine for one
  process; with several app workers each one would grant the full budget.
- ``redis://host:6379/0`` (production; also ``rediss://`` and ``redis+unix://``): counters
  are shared by every app process. Redis socket options may be given in the URL's query
  (``?socket_timeout=0.2&socket_connect_timeout=0.2``); without them both default to
  :data:`DEFAULT_SOCKET_TIMEOUT` so that a stalled Redis cannot hang a login.

**Strategy: moving window** (:class:`limits.strategies.MovingWindowRateLimiter`). It keeps the
timestamps of the last ``limit`` granted hits per key, so "10 per minute" holds over *every*
60-second interval, exactly. A fixed window lets 2x the limit through around a window
boundary, and the sliding-window counter only approximates (it weights the previous
window's count; its in-memory variant may under-admit under contention and its reset time is
an estimate). The cost is O(limit) entries per key, small for authentication limits (at
most a few hundred); on Redis each hit is one atomic Lua script. The oldest entry also gives
an exact ``retry_after``. Denied hits are not recorded: hammering a saturated key does not
extend the wait; :func:`progressive_delay` and the lockout after
:data:`LOCKOUT_AFTER_FAILURES` handle persistent guessing.

**Identifiers never carry personal data in clear.** Callers pass *already hashed*
identifiers (a blind index such as ``BlindIndexer.email(...).hex()``, an HMAC from
:func:`hashed_identifier`, or a random account UUID); the limiter refuses anything that is
not an opaque token (:data:`IDENTIFIER_PATTERN`: an e-mail address or an IP address is
rejected with ``ValueError``). Keys look like
``labvault:rl:<rule name>/<identifier>/.../<amount>/<multiples>/<granularity>``
(:meth:`LimitsRateLimiter.storage_key`) and expire with their window.

**Fail closed.** When the storage cannot answer (Redis down, timing out, read-only, out of
memory...), :meth:`LimitsRateLimiter.hit`, ``test`` and ``reset`` raise
:class:`RateLimiterUnavailable`; they never report "allowed". Authentication paths treat it
as "deny": they call :meth:`~RateLimiter.hit_or_deny`, which turns the outage into a denying
:class:`RateDecision` (``retry_after`` = :data:`UNAVAILABLE_RETRY_AFTER`) and logs it. Other
paths may decide otherwise, explicitly, by catching the exception.

Intended use on login (issue "accounts and authentication", item 6), all *before* the
password hash is computed, and identically for known and unknown accounts (no enumeration:
the per-account key is derived from the submitted, normalised login, not from a looked-up
account)::

    for rule, ids in ((LOGIN_GLOBAL_SECOND, ()), (LOGIN_CLIENT_MINUTE, (client_key,)),
                      (LOGIN_ACCOUNT_MINUTE, (login_key,)), (LOGIN_ACCOUNT_HOUR, (login_key,))):
        decision = limiter.hit_or_deny(rule, *ids)
        if not decision.allowed:
            return too_many_attempts(retry_after=decision.retry_after)
"""

from __future__ import annotations

import hmac
import re
import time
from dataclasses import dataclass, field
from typing import Final, NoReturn, Protocol
from urllib.parse import urlsplit

from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from limits.util import WindowStats

from labvault.core.config import ConfigurationError
from labvault.core.logging import get_logger

__all__ = [
    "DEFAULT_SOCKET_TIMEOUT",
    "IDENTIFIER_PATTERN",
    "KEY_PREFIX",
    "LOCKOUT_AFTER_FAILURES",
    "LOGIN_ACCOUNT_HOUR",
    "LOGIN_ACCOUNT_MINUTE",
    "LOGIN_CLIENT_MINUTE",
    "LOGIN_GLOBAL_SECOND",
    "MIN_RETRY_AFTER",
    "PROGRESSIVE_DELAY_CAP",
    "PROGRESSIVE_DELAY_FIRST",
    "PROGRESSIVE_DELAY_FREE_FAILURES",
    "UNAVAILABLE_RETRY_AFTER",
    "LimitsRateLimiter",
    "RateDecision",
    "RateLimiter",
    "RateLimiterUnavailable",
    "RateRule",
    "hashed_identifier",
    "progressive_delay",
]

_log = get_logger("labvault.ratelimit")

#: Prefix of every rate-limit key in the storage.
KEY_PREFIX: Final = "labvault:rl:"
#: Seconds allowed to connect to Redis and for each command, unless the URL says otherwise.
DEFAULT_SOCKET_TIMEOUT: Final = 0.5
#: ``retry_after`` of the denial :meth:`RateLimiter.hit_or_deny` returns when the storage is down.
UNAVAILABLE_RETRY_AFTER: Final = 5.0
#: A denial always asks to wait at least this long (seconds), even at a window's very end.
MIN_RETRY_AFTER: Final = 0.001

#: Consecutive failed logins after which an account is locked until it is unlocked by an
#: e-mailed link or by an admin. NIST SP 800-63B (5.2.2) requires limiting consecutive failed
#: attempts on one account to no more than 100; this is that upper bound.
LOCKOUT_AFTER_FAILURES: Final = 100

#: Failures that cost no delay (typos), then 0.5 s, doubling, capped.
PROGRESSIVE_DELAY_FREE_FAILURES: Final = 3
PROGRESSIVE_DELAY_FIRST: Final = 0.5
PROGRESSIVE_DELAY_CAP: Final = 10.0

#: An identifier must be an opaque token: hex or base64url digest, or a UUID.
IDENTIFIER_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
_RULE_NAME = re.compile(r"[a-z0-9][a-z0-9:_.-]{0,63}")
_KEY_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9:_.-]{1,64}:")
_REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "redis+unix"})


@dataclass(frozen=True, slots=True)
class RateRule:
    """A named limit, e.g. ``RateRule("login:account:minute", "10/minute")``.

    ``limit`` uses the :pypi:`limits` notation (``"10/minute"``, ``"50 per hour"``,
    ``"300/second"``, ``"5/15 minutes"``), exactly one limit per rule; it is parsed once, here.
    ``name`` (lowercase letters, digits and ``:_.-``) namespaces the keys: two rules with
    different names never share counters.
    """

    name: str
    limit: str
    item: RateLimitItem = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _RULE_NAME.fullmatch(self.name):
            raise ValueError(
                f"rate rule name {self.name!r}: use 1-64 lowercase letters, digits and ':_.-'"
            )
        try:
            items = parse_many(self.limit)
        except ValueError as exc:
            raise ValueError(
                f"rate rule {self.name!r}: {self.limit!r} is not a limit like '10/minute'"
            ) from exc
        if len(items) != 1:
            raise ValueError(f"rate rule {self.name!r}: give exactly one limit, not {self.limit!r}")
        parsed = items[0]
        if parsed.amount < 1:
            raise ValueError(f"rate rule {self.name!r}: the limit must allow at least one hit")
        item = type(parsed)(parsed.amount, parsed.multiples, namespace=self.name)
        object.__setattr__(self, "item", item)

    @property
    def amount(self) -> int:
        """Hits allowed per window."""
        return self.item.amount

    @property
    def window_seconds(self) -> int:
        return self.item.get_expiry()


#: Per submitted login (hashed, whether or not the account exists).
LOGIN_ACCOUNT_MINUTE: Final = RateRule("login:account:minute", "10/minute")
LOGIN_ACCOUNT_HOUR: Final = RateRule("login:account:hour", "50/hour")
#: Per client address (hashed).
LOGIN_CLIENT_MINUTE: Final = RateRule("login:client:minute", "30/minute")
#: All login attempts on the platform (no identifier): bounds the hashing load.
LOGIN_GLOBAL_SECOND: Final = RateRule("login:global:second", "300/second")


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer to one check.

    ``allowed``: whether the attempt may proceed (and, for ``hit``, was counted).
    ``retry_after``: seconds to wait before the next attempt can be allowed; 0.0 when
    allowed, at least :data:`MIN_RETRY_AFTER` when denied. ``remaining``: hits left in the
    window after this one (informative; other processes may consume them concurrently).

    A decision has no truth value (``if limiter.hit(...)`` raises ``TypeError``): a dataclass
    is always truthy, which would turn every denial into "allowed". Read ``.allowed``.
    """

    allowed: bool
    retry_after: float
    remaining: int

    def __bool__(self) -> NoReturn:
        raise TypeError("a RateDecision has no truth value; read decision.allowed")


class RateLimiterUnavailable(Exception):  # noqa: N818 - reads as a state, like KeyError
    """The rate-limit storage cannot answer, so nothing may be assumed allowed.

    The message names the storage (scheme, host, port; never credentials) and the error type;
    the underlying exception is chained as ``__cause__``.
    """


class RateLimiter(Protocol):
    """Counts attempts per rule and identifiers, shared as widely as its storage is."""

    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        """Count one attempt if the rule allows it. Raises :class:`RateLimiterUnavailable`."""
        ...

    def test(self, rule: RateRule, *identifiers: str) -> RateDecision:
        """Whether one more attempt would be allowed, without counting it."""
        ...

    def hit_or_deny(self, rule: RateRule, *identifiers: str) -> RateDecision:
        """``hit``, with an unreachable storage answered as a denial (authentication paths)."""
        ...

    def reset(self, rule: RateRule, *identifiers: str) -> None:
        """Forget the attempts counted for these identifiers (e.g. after an unlock)."""
        ...

    def close(self) -> None:
        """Release connections; the limiter is not used afterwards."""
        ...


def progressive_delay(consecutive_failures: int) -> float:
    """Seconds to make the next attempt wait after ``consecutive_failures`` failed logins.

    0 for the first :data:`PROGRESSIVE_DELAY_FREE_FAILURES` failures, then 0.5, 1, 2, 4, 8
    and :data:`PROGRESSIVE_DELAY_CAP` (10 s) from the 9th failure on. Non-decreasing, capped;
    a pure function. Callers enforce it as "no attempt before last failure + delay" (answering
    early attempts with the same denial, ``retry_after`` = the rest of the delay) rather than by
    sleeping, which would tie up a worker per attacker request. Apply it the same way to known
    and unknown logins.
    """
    if consecutive_failures < 0:
        raise ValueError("consecutive_failures must be >= 0")
    beyond = consecutive_failures - PROGRESSIVE_DELAY_FREE_FAILURES
    if beyond <= 0:
        return 0.0
    # The exponent is bounded: 2**16 * 0.5 is far over the cap, and huge counts cannot overflow.
    return min(PROGRESSIVE_DELAY_FIRST * 2.0 ** min(beyond - 1, 16), PROGRESSIVE_DELAY_CAP)


def hashed_identifier(key: bytes, value: str) -> str:
    """An opaque identifier for ``value`` (a client address, a normalised login): HMAC-SHA256
    under ``key``, 128 bits in hex.

    Keyed, because a plain hash of an IPv4 address or an e-mail address is reversed by trying
    them all. ``key`` comes from the key provider (e.g. an index key); it is never stored with
    the counters. Normalise ``value`` first (``normalize_email``...): equal inputs must match.
    """
    if len(key) < 16:
        raise ValueError("the identifier key must be at least 16 bytes")
    return hmac.digest(key, value.encode(), "sha256")[:16].hex()


def _check_identifiers(identifiers: tuple[str, ...]) -> None:
    for identifier in identifiers:
        if not isinstance(identifier, str) or not IDENTIFIER_PATTERN.fullmatch(identifier):
            # The value itself is not echoed: it may be exactly the personal data refused here.
            raise ValueError(
                "rate-limit identifiers must be opaque tokens (16-128 characters of "
                "[A-Za-z0-9_-]: a hex digest, hashed_identifier(...), a UUID), never an "
                "e-mail or IP address in clear"
            )


def _describe(storage_url: str) -> str:
    """The storage, for messages: scheme, host, port, database; no credentials, no query."""
    parts = urlsplit(storage_url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


class LimitsRateLimiter:
    """:class:`RateLimiter` on :pypi:`limits`, moving-window strategy (see the module doc).

    ``storage_url``: ``memory://`` or a Redis URL (the ``LABVAULT_RATELIMIT_STORAGE``
    setting). Building one does not contact Redis; the first check does. Thread-safe.
    """

    def __init__(
        self,
        storage_url: str,
        *,
        key_prefix: str = KEY_PREFIX,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    ) -> None:
        if not _KEY_PREFIX_PATTERN.fullmatch(key_prefix):
            raise ValueError("key_prefix: 1-64 characters of [A-Za-z0-9:_.-], ending with ':'")
        scheme = urlsplit(storage_url).scheme
        self.description = _describe(storage_url)
        self.key_prefix = key_prefix
        storage: object
        if scheme == "memory":
            storage = storage_from_string(storage_url)
        elif scheme in _REDIS_SCHEMES:
            # redis-py lets the URL's query (socket_timeout=...) override these keywords.
            storage = storage_from_string(
                storage_url,
                key_prefix=key_prefix[:-1],  # RedisStorage adds the ':' itself
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
            )
        else:
            raise ConfigurationError(
                "LABVAULT_RATELIMIT_STORAGE must be 'memory://' or a Redis URL such as "
                f"'redis://127.0.0.1:6379/0' (got a {scheme or 'scheme-less'!r} URL)"
            )
        if not isinstance(storage, Storage):  # an async storage: not usable here
            raise ConfigurationError("LABVAULT_RATELIMIT_STORAGE: use a synchronous storage")
        self._storage = storage
        self._strategy = MovingWindowRateLimiter(storage)
        base = storage.base_exceptions
        # redis-py raises RedisError subclasses (ConnectionError, TimeoutError, ResponseError
        # such as READONLY or OOM); limits may wrap them in StorageError; OSError in case a raw
        # socket error escapes. Anything else propagates as is: still never "allowed".
        self._errors: tuple[type[Exception], ...] = (
            StorageError,
            OSError,
            *(base if isinstance(base, tuple) else (base,)),
        )

    def __repr__(self) -> str:
        return f"LimitsRateLimiter({self.description!r}, key_prefix={self.key_prefix!r})"

    def storage_key(self, rule: RateRule, *identifiers: str) -> str:
        """The key the counters of ``rule`` for ``identifiers`` are stored under."""
        _check_identifiers(identifiers)
        return f"{self.key_prefix}{rule.item.key_for(*identifiers)}"

    def _unavailable(self, exc: Exception) -> RateLimiterUnavailable:
        return RateLimiterUnavailable(
            f"rate-limit storage {self.description} is unavailable ({type(exc).__name__}); "
            "treat the attempt as denied"
        )

    @staticmethod
    def _decision(allowed: bool, stats: WindowStats) -> RateDecision:
        remaining = max(0, int(stats.remaining))
        if allowed:
            return RateDecision(allowed=True, retry_after=0.0, remaining=remaining)
        if remaining > 0:  # the window emptied between the two storage calls
            return RateDecision(allowed=False, retry_after=MIN_RETRY_AFTER, remaining=0)
        wait = stats.reset_time - time.time()
        return RateDecision(allowed=False, retry_after=max(wait, MIN_RETRY_AFTER), remaining=0)

    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        """Count one attempt if allowed. Two storage calls (one Lua script each on Redis):
        the atomic acquire, then the window's state for ``remaining`` / ``retry_after``."""
        _check_identifiers(identifiers)
        try:
            allowed = self._strategy.hit(rule.item, *identifiers)
            stats = self._strategy.get_window_stats(rule.item, *identifiers)
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        return self._decision(allowed is True, stats)

    def test(self, rule: RateRule, *identifiers: str) -> RateDecision:
        """Whether one more attempt would be allowed now; counts nothing. One storage call."""
        _check_identifiers(identifiers)
        try:
            stats = self._strategy.get_window_stats(rule.item, *identifiers)
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        return self._decision(stats.remaining >= 1, stats)

    def hit_or_deny(self, rule: RateRule, *identifiers: str) -> RateDecision:
        """``hit``; if the storage is unavailable, a denial with ``retry_after`` =
        :data:`UNAVAILABLE_RETRY_AFTER` (fail closed, for authentication paths)."""
        try:
            return self.hit(rule, *identifiers)
        except RateLimiterUnavailable as exc:
            _log.warning(
                "ratelimit.unavailable",
                rule=rule.name,
                storage=self.description,
                error=type(exc.__cause__).__name__,
                outcome="denied",
            )
            return RateDecision(allowed=False, retry_after=UNAVAILABLE_RETRY_AFTER, remaining=0)

    def reset(self, rule: RateRule, *identifiers: str) -> None:
        """Forget the attempts counted for ``rule`` and ``identifiers``."""
        _check_identifiers(identifiers)
        try:
            self._strategy.clear(rule.item, *identifiers)
        except self._errors as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        if isinstance(self._storage, RedisStorage):
            self._storage.storage.close()
        elif isinstance(self._storage, MemoryStorage):
            self._storage.timer.cancel()
