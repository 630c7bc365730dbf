"""Normalize: a `ParsedFeed` from one source → the `Entry` values we store and republish.

Here entries get their stable ids, plain-text titles, sanitized HTML (nh3: no script, no event
handlers, relative links made absolute), text without the characters XML 1.0 forbids, the
source's category and tags, and the source's include/exclude filters. Pure: no Redis, no HTTP.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import re
from collections.abc import Iterable
from datetime import datetime
from urllib.parse import urljoin

import nh3
import regex

from aggregator import identity
from aggregator.config import Source
from aggregator.dates import clamp_future
from aggregator.identity import GUID
from aggregator.models import Author, Enclosure, Entry, ParsedEntry, ParsedFeed, entry_digest
from aggregator.text import xml_text

log = logging.getLogger(__name__)

FILTER_TIMEOUT = 0.1  # seconds one filter pattern may spend on one entry
_SPACE = re.compile(r"\s+")
_ATTRIBUTES = {tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()}
# "*" replaces ammonia's generic attributes (lang, title), so they are named again here.
_ATTRIBUTES["*"] = {"class", "dir", "lang", "title"}
_ATTRIBUTES.setdefault("img", set()).update({"src", "alt", "title", "width", "height"})


def sanitize(fragment: str, base: str) -> str:
    """Untrusted HTML → HTML safe to embed: nh3 drops scripts, styles and event handlers and
    makes relative links absolute against `base`."""
    if not fragment:
        return ""
    # nh3 cannot take lone surrogates; they go first. After cleaning: nh3 decodes character
    # references such as &#x0b; into the raw character.
    return xml_text(_cleaner(base).clean(xml_text(fragment))).strip()


@functools.lru_cache(maxsize=64)
def _cleaner(base: str) -> nh3.Cleaner:
    """A Cleaner is built once per base: building one costs as much as cleaning a 2 KB
    fragment, and every entry of an RSS or Atom document shares the document's URL."""
    return nh3.Cleaner(
        attributes=_ATTRIBUTES,
        url_relative=("rewrite_with_base", base) if base else "pass_through",
    )


_TEXT_ONLY = nh3.Cleaner(tags=set(), attributes={})


def plain_text(fragment: str) -> str:
    """HTML → one line of text (titles, filter matching)."""
    if not fragment:
        return ""
    stripped = _TEXT_ONLY.clean(xml_text(fragment))
    return _SPACE.sub(" ", xml_text(html.unescape(stripped))).strip()


def _not_future(value: datetime | None, fetched_at: datetime) -> datetime | None:
    """A date far past the fetch time is clamped to it (see `dates.clamp_future`)."""
    return clamp_future(value, fetched_at)[0] if value is not None else None


def future_dated(feed: ParsedFeed, fetched_at: datetime) -> int:
    """How many entries of `feed` carry a date `normalize` will clamp."""
    return sum(
        1
        for e in feed.entries
        if any(d is not None and clamp_future(d, fetched_at)[1] for d in (e.published, e.updated))
    )


def entry_id(source: str, entry: ParsedEntry, mode: str = GUID) -> str:
    """Stable across polls and restarts: from the guid, else the link, else the content."""
    return identity.entry_id(
        source,
        entry.guid,
        entry.link,
        entry.title,
        entry.published or entry.updated,
        entry.content,
        mode,
    )


class Filter:
    """A source's include/exclude lists. Plain words match case-insensitively; `re:` entries are
    regular expressions (validated by the config), run with a time bound so a catastrophic
    pattern costs at most FILTER_TIMEOUT per entry instead of hanging the worker."""

    def __init__(self, include: Iterable[str], exclude: Iterable[str]) -> None:
        self._include = [self._compile(p) for p in include]
        self._exclude = [self._compile(p) for p in exclude]

    @staticmethod
    def _compile(pattern: str) -> regex.Pattern[str]:
        if pattern.startswith("re:"):
            return regex.compile(pattern[3:])
        return regex.compile(regex.escape(pattern), regex.IGNORECASE)

    @staticmethod
    def _matches(patterns: list[regex.Pattern[str]], text: str) -> bool:
        for pattern in patterns:
            try:
                if pattern.search(text, timeout=FILTER_TIMEOUT):
                    return True
            except TimeoutError:
                log.warning("filter %r gave up after %ss", pattern.pattern, FILTER_TIMEOUT)
        return False

    @property
    def active(self) -> bool:
        """False when the source has no filters: then the text need not even be made."""
        return bool(self._include or self._exclude)

    def keeps(self, text: str) -> bool:
        if self._include and not self._matches(self._include, text):
            return False
        return not self._matches(self._exclude, text)


def refused_by_filters(source: Source, entries: Iterable[Entry]) -> list[str]:
    """The ids of stored `entries` that the source's filters refuse, tested on what
    `normalize` tests: the title and the text of the content."""
    keep = Filter(source.include, source.exclude)
    if not keep.active:
        return []
    return [e.id for e in entries if not keep.keeps(e.title + "\n" + plain_text(e.content))]


def normalize(
    source: Source,
    feed: ParsedFeed,
    *,
    feed_url: str,
    fetched_at: datetime,
    source_title: str = "",
    id_mode: str = GUID,
    refused: list[str] | None = None,
) -> list[Entry]:
    """Every entry of `feed` that passes the source's filters, once each, in document order.
    `id_mode` is `guid`, or `link` for a source whose guids were found unusable. The ids of
    the entries the filters refuse are added to `refused`, when given."""
    keep = Filter(source.include, source.exclude)
    source_link = feed.link or feed_url
    entries: list[Entry] = []
    seen: set[str] = set()
    for parsed in feed.entries:
        ident = entry_id(source.name, parsed, id_mode)
        if ident in seen:
            continue
        seen.add(ident)
        link = urljoin(feed_url, parsed.link.strip()) if parsed.link.strip() else ""
        base = link or feed_url
        title = plain_text(parsed.title)
        content = sanitize(parsed.content or parsed.summary, feed.base or base)
        summary = sanitize(parsed.summary, feed.base or base) if parsed.content else ""
        if keep.active and not keep.keeps(title + "\n" + plain_text(content)):
            if refused is not None:
                refused.append(ident)
            continue
        entry = Entry(
            id=ident,
            source=source.name,
            category=source.category_name,
            tags=source.tags,
            title=title,
            link=xml_text(link),
            content=content,
            summary=summary,
            first_seen=fetched_at,
            authors=tuple(
                Author(xml_text(a.name), xml_text(a.email), xml_text(a.uri)) for a in parsed.authors
            ),
            published=_not_future(parsed.published, fetched_at),
            updated=_not_future(parsed.updated, fetched_at),
            enclosures=tuple(
                Enclosure(xml_text(urljoin(feed.base or base, e.url)), xml_text(e.type), e.length)
                for e in parsed.enclosures
            ),
            categories=tuple(xml_text(c) for c in parsed.categories),
            source_title=xml_text(source_title or feed.title or source.name),
            source_link=xml_text(source_link),
            guid=xml_text(parsed.guid.strip()),
        )
        # The digest is the store's "did the source change this?" test: made here, in the
        # parse worker, so the process that writes to Redis does not spend its time on it.
        entries.append(dataclasses.replace(entry, digest=entry_digest(entry)))
    return entries
