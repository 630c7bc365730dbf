"""Dates as sources write them → timezone-aware datetimes that keep the source's own offset.

feedparser hands back dates converted to UTC (`published_parsed`), which loses the `+0800` a
Chinese source wrote; readers there want 05:50 +08:00, not 21:50 UTC the day before. It also
gets Chinese sources' dates wrong: `CST` is US Central to it, and `2024年01月01日` or
`2024/1/1 8:30:00` land silently in the current month. So the raw string is always parsed here
first, in the forms these sources write; feedparser's UTC value is only the fallback for forms
we do not know, and never for a date that looks like one of ours but is invalid.

A date that names no zone is read in the caller's `default_tz` (UTC unless the caller knows
better: `parse` passes China's +08:00 for Chinese feeds). Pure functions; no feedparser
handlers are registered (that would be a global side effect at import).
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email.utils import parsedate_to_datetime

# China Standard Time. Every source we read that writes "CST" is Chinese, where it means
# UTC+8; RFC 822 §5.1 (and so email.utils and feedparser) read it as US Central, -06:00,
# which puts the entry 14 hours off. Taiwan, Hong Kong, Macau and Singapore are +08:00 too.
CHINA_TZ = timezone(timedelta(hours=8))

_CST = re.compile(r"(?<![A-Za-z])CST(?![A-Za-z])")
_NEGATIVE_ZERO = re.compile(r"-0000\s*$")
# 2024年01月01日, 2024年1月1日 08:30, 2024/01/01, 2024/1/1 8:30:00, 2024-1-1 8:30, 2024.1.1,
# each with an optional offset; one separator throughout (2024/01-01 is not a date).
_LOOSE = re.compile(
    r"(?P<year>\d{4})\s*"
    r"(?:年\s*(?P<m1>\d{1,2})\s*月\s*(?P<d1>\d{1,2})\s*日?"
    r"|(?P<sep>[-/.])(?P<m2>\d{1,2})(?P=sep)(?P<d2>\d{1,2}))"
    r"(?:(?:\s+|T|(?<=日)\s*)(?P<hour>\d{1,2})[:：](?P<minute>\d{2})"
    r"(?:[:：](?P<second>\d{2})(?:[.,](?P<fraction>\d{1,6}))?)?)?"
    r"\s*(?P<zone>Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?",
    re.IGNORECASE,
)
# Looks like one of the forms above: then a failure is final, never feedparser's guess.
_LOOSE_PREFIX = re.compile(r"\d{4}\s*[年/.]")


def parse_date(
    raw: str | None, fallback: time.struct_time | None = None, *, default_tz: tzinfo = UTC
) -> datetime | None:
    """RFC 822 (RSS), RFC 3339 / W3C-DTF (Atom, RSS 1.0, JSON Feed) or the forms Chinese
    sources write → aware datetime.

    A date with no offset is taken in `default_tz`. When no form fits, `fallback` (feedparser's
    UTC struct_time, which knows many more formats) is used, as UTC, unless the string looked
    like a Chinese or slash date: feedparser misreads those.
    """
    text = _CST.sub("+0800", (raw or "").strip())
    if text:
        parsed = _rfc822(text, default_tz) or _iso8601(text, default_tz) or _loose(text, default_tz)
        if parsed is not None:
            return parsed
        if _LOOSE_PREFIX.match(text):
            return None
    if fallback is not None:
        try:
            return datetime.fromtimestamp(calendar.timegm(fallback), UTC)
        except (OverflowError, ValueError):
            return None
    return None


def clamp_future(
    value: datetime, now: datetime, tolerance: timedelta = timedelta(days=1)
) -> tuple[datetime, bool]:
    """A date more than `tolerance` after `now` (the fetch time) is a wrong clock, a wrong zone
    or a wrong format, not news from the future: it would pin the entry to the top of every
    feed. Returns (now in the value's own offset, True) for such a date, else (value, False).
    Both datetimes must be aware."""
    if value - now > tolerance:
        return now.astimezone(value.tzinfo), True
    return value, False


def _rfc822(text: str, default_tz: tzinfo) -> datetime | None:
    try:
        value = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if value.tzinfo is None:
        # RFC 2822 §3.3: "-0000" means UTC with no information about the local zone. Anything
        # else naive named no zone (or one email.utils does not know): the caller's default.
        zone = UTC if _NEGATIVE_ZERO.search(text) else default_tz
        value = value.replace(tzinfo=zone)
    return value


def _iso8601(text: str, default_tz: tzinfo) -> datetime | None:
    # RFC 3339 §5.6 allows a lowercase "t" and "z", which fromisoformat refuses.
    candidate = text.upper()
    if len(candidate) > 10 and candidate[10] == " ":
        candidate = candidate[:10] + "T" + candidate[11:]
    try:
        value = datetime.fromisoformat(candidate)
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=default_tz)
    return value


def _loose(text: str, default_tz: tzinfo) -> datetime | None:
    match = _LOOSE.fullmatch(text)
    if match is None:
        return None
    part = match.groupdict()
    fraction = (part["fraction"] or "").ljust(6, "0")
    try:
        return datetime(
            int(part["year"]),
            int(part["m1"] or part["m2"]),
            int(part["d1"] or part["d2"]),
            int(part["hour"] or 0),
            int(part["minute"] or 0),
            int(part["second"] or 0),
            int(fraction or 0),
            tzinfo=_zone(part["zone"]) or default_tz,
        )
    except ValueError:
        return None


def _zone(raw: str | None) -> tzinfo | None:
    if not raw:
        return None
    if raw.upper() in ("Z", "UTC", "GMT"):
        return UTC
    sign = -1 if raw[0] == "-" else 1
    digits = raw[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError(f"offset out of range: {raw}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))
