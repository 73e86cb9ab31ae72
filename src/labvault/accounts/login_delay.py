"""Progressive delay between failed logins for the same submitted login (no enumeration).

After :data:`~labvault.core.ratelimit.PROGRESSIVE_DELAY_FREE_FAILURES` failures, an attempt
for the same submitted login must come at least ``progressive_delay(n)`` seconds after the
last failure (0.5 s, doubling, capped at 10 s); an earlier one is refused with the same
"too many attempts" answer and ``Retry-After`` = the rest of the wait, rather than by
sleeping a server thread. A success ends the run.

**Keyed by the submitted login, not by an account.** The identifier is the hash of the
submitted address's blind index (as the per-login rate limits), computed the same way for an
address with an account and for one without: both get the same sequence of answers and
waits, so the delay tells nothing about which addresses have an account (invariant I7).

**State in the rate limiter's storage** (memory, or Redis shared by every worker), through
the :class:`~labvault.core.ratelimit.RateLimiter` seam only, with two moving-window rules:

- :data:`FAILURES` counts the failures of the last hour (at most ``amount`` are kept: more
  would not lengthen the capped delay);
- :data:`LAST_FAILURE` holds the time of the last failure: it allows one hit a minute and is
  cleared then hit at every failure, so its window ends exactly 60 s after the last failure
  and ``test().retry_after`` = 60 s - time elapsed since it.

Both only ever need ``test``, ``hit`` and ``reset``. A storage that cannot answer refuses
the attempt (fail closed, as every authentication limit).
"""

from __future__ import annotations

import contextlib
from typing import Final

from labvault.core.logging import get_logger
from labvault.core.ratelimit import (
    PROGRESSIVE_DELAY_CAP,
    UNAVAILABLE_RETRY_AFTER,
    RateLimiter,
    RateLimiterUnavailable,
    RateRule,
    progressive_delay,
)

__all__ = ["FAILURES", "LAST_FAILURE", "LoginDelay"]

FAILURES: Final = RateRule("login:delay:failures", "16/hour")
LAST_FAILURE: Final = RateRule("login:delay:last", "1/minute")
_log = get_logger("labvault.accounts")

assert LAST_FAILURE.window_seconds > PROGRESSIVE_DELAY_CAP, "the last failure must outlive a wait"


class LoginDelay:
    """The progressive delay of one limiter's storage."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    def wait(self, identifier: str) -> float:
        """Seconds the next attempt for ``identifier`` must still wait; 0.0 if none."""
        try:
            counted = self._limiter.test(FAILURES, identifier)
            last = self._limiter.test(LAST_FAILURE, identifier)
        except RateLimiterUnavailable:
            return UNAVAILABLE_RETRY_AFTER
        failures = FAILURES.amount - counted.remaining
        delay = progressive_delay(failures)
        if delay <= 0 or last.allowed:
            return 0.0  # too few failures, or the last one is older than any delay
        elapsed = LAST_FAILURE.window_seconds - last.retry_after
        return max(0.0, delay - elapsed)

    def failed(self, identifier: str) -> None:
        """Count a failure for ``identifier`` (best effort: the storage may be down)."""
        try:
            self._limiter.hit(FAILURES, identifier)
            self._limiter.reset(LAST_FAILURE, identifier)
            self._limiter.hit(LAST_FAILURE, identifier)
        except RateLimiterUnavailable:
            _log.warning("login_delay.unavailable", outcome="failure-not-counted")

    def succeeded(self, identifier: str) -> None:
        """A success ends the run of failures."""
        for rule in (FAILURES, LAST_FAILURE):
            with contextlib.suppress(RateLimiterUnavailable):
                self._limiter.reset(rule, identifier)
