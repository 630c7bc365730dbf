"""Dates as sources write them → timezone-aware datetimes that keep the source's own offset.

feedparser hands back dates converted to UTC (`published_parsed`), which loses the `+0800` a
Chinese source wrote; readers there want 05:50 +08:00, not 21:50 UTC the day before. So the raw
string is parsed here first, and feedparser's UTC value is only the fallback. Pure functions.
"""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def parse_date(raw: str | None, fallback: time.struct_time | None = None) -> datetime | None:
    """RFC 822 (RSS) or RFC 3339 / W3C-DTF (Atom, RSS 1.0, JSON Feed) → aware datetime.

    A date with no offset is taken as UTC. When neither form fits, `fallback` (feedparser's
    UTC struct_time, which knows many more formats) is used, as UTC.
    """
    text = (raw or "").strip()
    if text:
        parsed = _rfc822(text) or _iso8601(text)
        if parsed is not None:
            return parsed
    if fallback is not None:
        try:
            return datetime.fromtimestamp(calendar.timegm(fallback), UTC)
        except (OverflowError, ValueError):
            return None
    return None


def _rfc822(text: str) -> datetime | None:
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if value.tzinfo is None:
        # RFC 2822 §3.3: "-0000" means UTC with no information about the local zone.
        value = value.replace(tzinfo=UTC)
    return value


def _iso8601(text: str) -> datetime | None:
    # RFC 3339 §5.6 allows a lowercase "t" and "z", which fromisoformat refuses.
    candidate = text.upper()
    if len(candidate) > 10 and candidate[10] == " ":
        candidate = candidate[:10] + "T" + candidate[11:]
    try:
        value = datetime.fromisoformat(candidate)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value
