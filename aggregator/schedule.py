"""When to poll a source next: a pure decision on plain values, no Redis and no clock of its own.

A source that answered is due again one interval later; when the server says how long its
answer stays fresh (Cache-Control max-age, RSS <ttl>), that is a floor for the interval, up to a
day. One that failed backs off exponentially from its interval, with jitter so a fleet's retries
do not arrive together, capped at a day; it is never given up for good. A server that says
Retry-After (429, 503) is not asked again before then, up to a week.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

MAX_BACKOFF = 86400.0
JITTER = 0.1
MAX_HINT = 86400.0  # a server's max-age or <ttl> stretches the interval to a day at most
MAX_RETRY_AFTER = 7 * 86400.0


def polite_interval(interval: float, *hints: float | None) -> float:
    """The configured interval, stretched to what the server said its answer stays fresh."""
    return max([interval, *(min(h, MAX_HINT) for h in hints if h)])


def next_due(
    now: datetime,
    interval: float,
    failures: int = 0,
    *,
    rng: random.Random | None = None,
    retry_after: float | None = None,
) -> datetime:
    """`now` plus the interval, or, after `failures` failures in a row, plus
    min(interval × 2^(failures−1), 1 day) with ±10 % jitter; never before `retry_after`."""
    delay = backoff(interval, failures)
    if failures > 0:
        spread = (rng or random).uniform(-JITTER, JITTER)
        delay = min(delay * (1 + spread), _cap(interval))
    if retry_after:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return now + timedelta(seconds=delay)


def backoff(interval: float, failures: int) -> float:
    """The delay before the next try, without jitter."""
    if failures <= 0:
        return interval
    grown = interval * 2.0 ** min(failures - 1, 32)
    return min(grown, _cap(interval))


def _cap(interval: float) -> float:
    """Backoff stops growing at a day, or at the interval when that is longer."""
    return max(MAX_BACKOFF, interval)
