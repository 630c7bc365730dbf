"""Render: stored entries → the bytes of an Atom 1.0, RSS 2.0 or JSON Feed 1.1 document.

Atom and RSS come from feedgen; JSON Feed is a plain dict. The output depends only on the
entries and the feed's description, never on the clock, so identical data renders to identical
bytes (and so to identical ETags on every web worker). feedgen 1.0.0 prepends entries unless told
`order="append"`, and stamps `updated` with the current time unless given one: both are set
here. No I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from feedgen.feed import FeedGenerator

from aggregator import __version__
from aggregator.models import Entry
from aggregator.text import xml_text

Format = Literal["atom", "rss", "json"]
FORMATS: tuple[Format, ...] = ("atom", "rss", "json")
MEDIA_TYPES: dict[Format, str] = {
    "atom": "application/atom+xml; charset=utf-8",
    "rss": "application/rss+xml; charset=utf-8",
    "json": "application/feed+json; charset=utf-8",
}
GENERATOR = "aggregator"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class FeedInfo:
    """What a merged feed says about itself. `path` is its URL path without the extension,
    e.g. `/tags/%E8%B4%A2%E7%BB%8F`; `html_path` the page that lists the same entries."""

    title: str
    description: str
    public_url: str
    path: str
    html_path: str
    hub: str | None = None

    def url(self, fmt: Format) -> str:
        return f"{self.base}{self.path}.{fmt}"

    @property
    def base(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def html_url(self) -> str:
        return self.base + self.html_path

    def entry_url(self, entry_id: str) -> str:
        return f"{self.base}/entries/{entry_id}"


def updated(entry: Entry) -> datetime:
    """An entry's last change as readers should see it."""
    return entry.updated or entry.published or entry.first_seen


def last_modified(entries: Sequence[Entry]) -> datetime | None:
    """When this set of entries last changed from our side (new or updated)."""
    if not entries:
        return None
    return max(max(e.first_seen, updated(e)) for e in entries)


def render(fmt: Format, info: FeedInfo, entries: Sequence[Entry]) -> bytes:
    if fmt == "json":
        return render_json(info, entries)
    return _render_xml(fmt, info, entries)


def _render_xml(fmt: Format, info: FeedInfo, entries: Sequence[Entry]) -> bytes:
    fg = FeedGenerator()
    title = xml_text(info.title)
    fg.id(info.url("atom"))
    fg.title(title)
    fg.subtitle(xml_text(info.description) or title)
    fg.link(href=info.html_url, rel="alternate")
    fg.link(href=info.url(fmt), rel="self")
    if info.hub:
        fg.link(href=info.hub, rel="hub")
    # RFC 4287 §4.1.1: a feed needs an author unless every entry has one.
    fg.author({"name": title})
    fg.generator(GENERATOR, version=__version__)
    newest = max((updated(e) for e in entries), default=EPOCH)
    fg.updated(newest)
    fg.lastBuildDate(newest)
    for entry in entries:
        fe = fg.add_entry(order="append")
        page = info.entry_url(entry.id)
        fe.id(page)
        fe.guid(page, permalink=True)
        fe.title(entry.title or "(untitled)")
        fe.link(href=entry.link or page, rel="alternate")
        if entry.content:
            fe.content(entry.content, type="CDATA" if fmt == "rss" else "html")
        if entry.summary:
            fe.summary(entry.summary, type="html")
        if entry.published is not None:
            fe.published(entry.published)
        fe.updated(updated(entry))
        if fmt == "rss":
            fe.pubDate(entry.date)
        for author in entry.authors:
            if author.name or author.email:
                fe.author({k: v for k, v in author.to_dict().items() if k != "uri" or v})
        for tag in entry.tags:
            fe.category(term=tag)
        for enclosure in entry.enclosures[:1] if fmt == "rss" else entry.enclosures:
            fe.enclosure(
                enclosure.url, str(enclosure.length), enclosure.type or "application/octet-stream"
            )
        if entry.source_link:
            fe.source(url=entry.source_link, title=entry.source_title or entry.source)
    if fmt == "atom":
        return bytes(fg.atom_str(pretty=False))
    return bytes(fg.rss_str(pretty=False))


def render_json(info: FeedInfo, entries: Sequence[Entry]) -> bytes:
    feed: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": info.title,
        "home_page_url": info.html_url,
        "feed_url": info.url("json"),
    }
    if info.description:
        feed["description"] = info.description
    if info.hub:
        feed["hubs"] = [{"type": "WebSub", "url": info.hub}]
    feed["items"] = [_json_item(info, e) for e in entries]
    return json.dumps(feed, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_item(info: FeedInfo, entry: Entry) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": info.entry_url(entry.id),
        "url": entry.link or info.entry_url(entry.id),
    }
    if entry.title:
        item["title"] = entry.title
    item["content_html"] = entry.content
    if entry.summary:
        item["summary"] = entry.summary
    if entry.published is not None:
        item["date_published"] = entry.published.isoformat()
    item["date_modified"] = updated(entry).isoformat()
    authors = [
        {"name": a.name or a.email, **({"url": a.uri} if a.uri else {})}
        for a in entry.authors
        if a.name or a.email
    ]
    if authors:
        item["authors"] = authors
    if entry.tags:
        item["tags"] = list(entry.tags)
    if entry.enclosures:
        item["attachments"] = [
            {
                "url": e.url,
                "mime_type": e.type or "application/octet-stream",
                **({"size_in_bytes": e.length} if e.length else {}),
            }
            for e in entry.enclosures
        ]
    item["_source"] = {
        "name": entry.source,
        "title": entry.source_title,
        "url": entry.source_link,
        "category": entry.category,
    }
    return item
