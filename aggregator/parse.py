"""Parse: bytes of a fetched document → `ParsedFeed`, for every format we read.

RSS 0.9x/1.0/2.0 and Atom 0.3/1.0 go through feedparser (it also finds the charset from the HTTP
header and the XML declaration, and resolves relative links against xml:base). JSON Feed 1.0/1.1
is read here: feedparser 6.0 does not know it and returns no entries. HTML is left unsanitized
and ids are not derived: that is `normalize`. No I/O.
"""

from __future__ import annotations

import html
import json
from typing import Any

import feedparser

from aggregator.dates import parse_date
from aggregator.errors import ParseError
from aggregator.models import Author, Enclosure, ParsedEntry, ParsedFeed

JSON_FEED_PREFIX = "https://jsonfeed.org/version/"


def parse(body: bytes, url: str, content_type: str = "") -> ParsedFeed:
    """Parse one document fetched from `url`; raise ParseError when it is not a feed."""
    if _looks_like_json(body, content_type):
        return parse_json_feed(body, url)
    return parse_xml_feed(body, url, content_type)


def _looks_like_json(body: bytes, content_type: str) -> bool:
    head = body[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"{") or "json" in content_type.lower()


# --- RSS and Atom, through feedparser ------------------------------------------------------


def parse_xml_feed(body: bytes, url: str, content_type: str = "") -> ParsedFeed:
    headers = {"content-location": url}
    if content_type:
        headers["content-type"] = content_type
    # Sanitizing is nh3's job in normalize; feedparser's own sanitizer would only cost time.
    doc = feedparser.parse(
        body, response_headers=headers, sanitize_html=False, resolve_relative_uris=True
    )
    if not doc.get("version") and not doc.entries:
        cause = doc.get("bozo_exception")
        reason = "not an RSS, Atom or JSON feed"
        if cause is not None:
            raise ParseError(url, reason) from cause
        raise ParseError(url, reason)
    feed = doc.feed
    return ParsedFeed(
        title=_text(feed.get("title", "")),
        link=feed.get("link", "") or "",
        format=doc.get("version", "") or "",
        entries=tuple(_xml_entry(e, _authors(feed.get("authors"))) for e in doc.entries),
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _authors(raw: Any) -> tuple[Author, ...]:
    return tuple(
        Author(
            name=_text(a.get("name", "")),
            email=_text(a.get("email", "")),
            uri=_text(a.get("href", "")),
        )
        for a in raw or ()
        if isinstance(a, dict) and (a.get("name") or a.get("email") or a.get("href"))
    )


def _xml_entry(entry: Any, feed_authors: tuple[Author, ...]) -> ParsedEntry:
    """`feed_authors` stand for an entry that names none (RFC 4287 §4.2.1)."""
    content = ""
    for part in entry.get("content") or ():
        value = part.get("value") or ""
        if value:
            content = value if "html" in (part.get("type") or "") else html.escape(value)
            break
    summary = entry.get("summary") or ""
    detail = entry.get("summary_detail") or {}
    if summary and "html" not in (detail.get("type") or "text/html"):
        summary = html.escape(summary)
    if summary == content:
        summary = ""
    title = entry.get("title") or ""
    title_type = (entry.get("title_detail") or {}).get("type") or "text/plain"
    return ParsedEntry(
        guid=_text(entry.get("id", "")),
        link=_text(entry.get("link", "")),
        title=title if "html" in title_type else html.escape(title, quote=False),
        content=content,
        summary=summary,
        authors=_authors(entry.get("authors")) or feed_authors,
        published=parse_date(entry.get("published"), entry.get("published_parsed")),
        # dict.get: FeedParserDict.get("updated") falls back to "published" (feedparser #310)
        updated=parse_date(dict.get(entry, "updated"), dict.get(entry, "updated_parsed")),
        enclosures=tuple(
            Enclosure(url=e["href"], type=_text(e.get("type", "")), length=_int(e.get("length")))
            for e in entry.get("enclosures") or ()
            if e.get("href")
        ),
        categories=tuple(t["term"] for t in entry.get("tags") or () if t.get("term")),
    )


def _int(value: Any) -> int:
    try:
        return max(int(str(value).strip()), 0)
    except (TypeError, ValueError):
        return 0


# --- JSON Feed (https://jsonfeed.org/version/1.1) ------------------------------------------


def parse_json_feed(body: bytes, url: str) -> ParsedFeed:
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ParseError(url, "not valid JSON") from err
    if not isinstance(data, dict) or not str(data.get("version", "")).startswith(JSON_FEED_PREFIX):
        raise ParseError(url, "JSON without a JSON Feed version")
    version = str(data["version"]).removeprefix(JSON_FEED_PREFIX)
    items = data.get("items")
    if not isinstance(items, list):
        raise ParseError(url, "JSON Feed without an items list")
    feed_authors = _json_authors(data)
    return ParsedFeed(
        title=_text(data.get("title", "")),
        link=_text(data.get("home_page_url", "")),
        format=f"json{version.replace('.', '')}",
        entries=tuple(_json_entry(i, feed_authors) for i in items if isinstance(i, dict)),
    )


def _json_authors(data: dict[str, Any]) -> tuple[Author, ...]:
    raw = data.get("authors")
    if not isinstance(raw, list):  # JSON Feed 1.0 has a single "author"
        raw = [data["author"]] if isinstance(data.get("author"), dict) else []
    return tuple(
        Author(name=_text(a.get("name", "")), uri=_text(a.get("url", "")))
        for a in raw
        if isinstance(a, dict) and (a.get("name") or a.get("url"))
    )


def _json_entry(item: dict[str, Any], feed_authors: tuple[Author, ...]) -> ParsedEntry:
    content = _text(item.get("content_html", ""))
    if not content and _text(item.get("content_text", "")):
        content = _paragraphs(item["content_text"])
    guid = item.get("id")
    return ParsedEntry(
        guid=str(guid) if isinstance(guid, str | int) and not isinstance(guid, bool) else "",
        link=_text(item.get("url", "")) or _text(item.get("external_url", "")),
        title=html.escape(_text(item.get("title", "")), quote=False),
        content=content,
        summary=html.escape(_text(item.get("summary", "")), quote=False),
        authors=_json_authors(item) or feed_authors,
        published=parse_date(_text(item.get("date_published", ""))),
        updated=parse_date(_text(item.get("date_modified", ""))),
        enclosures=tuple(
            Enclosure(
                url=a["url"],
                type=_text(a.get("mime_type", "")),
                length=_int(a.get("size_in_bytes")),
            )
            for a in item.get("attachments") or ()
            if isinstance(a, dict) and isinstance(a.get("url"), str)
        ),
        categories=tuple(t for t in item.get("tags") or () if isinstance(t, str) and t),
    )


def _paragraphs(text: str) -> str:
    blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
    return "".join(
        "<p>" + html.escape(b, quote=False).replace("\n", "<br>") + "</p>" for b in blocks if b
    )
