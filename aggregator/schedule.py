"""When to poll a source next: a pure decision on plain values, no Redis and no clock of its own.

A source that answered is due again one interval later. One that failed backs off exponentially
from its interval, with jitter so a fleet's retries do not arrive together, capped at a day; it
is never given up for good.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

MAX_BACKOFF = 86400.0
JITTER = 0.1


def next_due(
    now: datetime,
    interval: float,
    failures: int = 0,
    *,
    rng: random.Random | None = None,
) -> datetime:
    """`now` plus the interval, or, after `failures` failures in a row, plus
    min(interval × 2^(failures−1), 1 day) with ±10 % jitter."""
    delay = backoff(interval, failures)
    if failures > 0:
        spread = (rng or random).uniform(-JITTER, JITTER)
        delay = min(delay * (1 + spread), _cap(interval))
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
