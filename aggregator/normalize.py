"""Normalize: a `ParsedFeed` from one source → the `Entry` values we store and republish.

Here entries get their stable ids, plain-text titles, sanitized HTML (nh3: no script, no event
handlers, relative links made absolute), text without the characters XML 1.0 forbids, the
source's category and tags, and the source's include/exclude filters. Pure: no Redis, no HTTP.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable
from datetime import datetime
from urllib.parse import urljoin

import nh3

from aggregator.config import Source
from aggregator.models import Author, Enclosure, Entry, ParsedEntry, ParsedFeed
from aggregator.text import xml_text

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
    cleaned = nh3.clean(
        fragment,
        attributes=_ATTRIBUTES,
        url_relative=("rewrite_with_base", base) if base else "pass_through",
    )
    # After cleaning: nh3 decodes character references such as &#x0b; into the raw character.
    return xml_text(cleaned).strip()


def plain_text(fragment: str) -> str:
    """HTML → one line of text (titles, filter matching)."""
    if not fragment:
        return ""
    stripped = nh3.clean(fragment, tags=set(), attributes={})
    return _SPACE.sub(" ", xml_text(html.unescape(stripped))).strip()


def entry_id(source: str, entry: ParsedEntry) -> str:
    """Stable across polls and restarts: from the guid, else the link, else the content."""
    if entry.guid.strip():
        key = "guid:" + entry.guid.strip()
    elif entry.link.strip():
        key = "link:" + entry.link.strip()
    else:
        date = entry.published or entry.updated
        key = "hash:" + "\n".join((entry.title, date.isoformat() if date else "", entry.content))
    return hashlib.sha256(f"{source}\n{key}".encode()).hexdigest()[:16]


class Filter:
    """A source's include/exclude lists. Plain words match case-insensitively; `re:` entries are
    regular expressions (validated by the config)."""

    def __init__(self, include: Iterable[str], exclude: Iterable[str]) -> None:
        self._include = [self._compile(p) for p in include]
        self._exclude = [self._compile(p) for p in exclude]

    @staticmethod
    def _compile(pattern: str) -> re.Pattern[str]:
        if pattern.startswith("re:"):
            return re.compile(pattern[3:])
        return re.compile(re.escape(pattern), re.IGNORECASE)

    def keeps(self, text: str) -> bool:
        if self._include and not any(p.search(text) for p in self._include):
            return False
        return not any(p.search(text) for p in self._exclude)


def normalize(
    source: Source,
    feed: ParsedFeed,
    *,
    feed_url: str,
    fetched_at: datetime,
    source_title: str = "",
) -> list[Entry]:
    """Every entry of `feed` that passes the source's filters, once each, in document order."""
    keep = Filter(source.include, source.exclude)
    source_link = feed.link or feed_url
    entries: list[Entry] = []
    seen: set[str] = set()
    for parsed in feed.entries:
        ident = entry_id(source.name, parsed)
        if ident in seen:
            continue
        seen.add(ident)
        link = urljoin(feed_url, parsed.link.strip()) if parsed.link.strip() else ""
        base = link or feed_url
        title = plain_text(parsed.title)
        content = sanitize(parsed.content or parsed.summary, base)
        summary = sanitize(parsed.summary, base) if parsed.content else ""
        if not keep.keeps(title + "\n" + plain_text(content)):
            continue
        entries.append(
            Entry(
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
                    Author(xml_text(a.name), xml_text(a.email), xml_text(a.uri))
                    for a in parsed.authors
                ),
                published=parsed.published,
                updated=parsed.updated,
                enclosures=tuple(
                    Enclosure(xml_text(urljoin(base, e.url)), xml_text(e.type), e.length)
                    for e in parsed.enclosures
                ),
                categories=tuple(xml_text(c) for c in parsed.categories),
                source_title=xml_text(source_title or feed.title or source.name),
                source_link=xml_text(source_link),
            )
        )
    return entries
