"""Parse: bytes of a fetched document → `ParsedFeed`, for every format we read.

RSS 0.9x/1.0/2.0 and Atom 0.3/1.0 are read by feedparser_rs when the document is well formed,
else by feedparser (`read_xml`), after two steps of our own: `charset.to_utf8` decides the
real encoding (Chinese sources' labels are often wrong) and hands the parser UTF-8, and
`harden_prolog` rewrites everything before the root element so that no DOCTYPE can define an
entity that expands to more than its own reference (billion laughs, and one 50 KB entity
referenced 50,000 times, which made feedparser 6.0.14 run 46 s and reach 2.4 GB). JSON Feed
1.0/1.1 is read here: feedparser 6.0 does not know it and returns no entries. Dates are read
from the raw strings (`dates`), in China's +08:00 when a Chinese feed names no zone.

HTML is left unsanitized and ids are not derived: that is `normalize`. Time and memory bounds
on a whole parse are `bounded`'s job. No I/O.
"""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, tzinfo
from typing import Any

import feedparser
import feedparser_rs
from feedparser.mixin import _FeedParserMixin

from aggregator.charset import CHINESE_ENCODINGS, to_utf8
from aggregator.dates import CHINA_TZ, parse_date
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


# --- RSS and Atom, through feedparser_rs or feedparser ------------------------------------


def parse_xml_feed(
    body: bytes, url: str, content_type: str = "", *, fast: bool = True
) -> ParsedFeed:
    """`fast=False` reads with feedparser alone (the reference the fast path is tested
    against)."""
    decoded = to_utf8(body, content_type)
    doc = read_xml(harden_prolog(decoded.data), url, content_type, fast=fast)
    if not doc.get("version") and not doc.entries:
        cause = doc.get("bozo_exception")
        reason = "not an RSS, Atom or JSON feed"
        if isinstance(cause, BaseException):
            raise ParseError(url, reason) from cause
        raise ParseError(url, reason)
    feed = doc.feed
    zone = default_zone(_text(feed.get("language", "")), decoded.encoding)
    rss = not str(doc.get("version", "")).startswith("atom")
    return ParsedFeed(
        title=_text(feed.get("title", "")),
        link=feed.get("link", "") or "",
        format=doc.get("version", "") or "",
        entries=tuple(_xml_entry(e, _authors(feed), zone, rss=rss) for e in doc.entries),
        ttl=_ttl(feed.get("ttl")),
        base=url,
        hubs=_rel_links(feed, "hub"),
        self_url=next(iter(_rel_links(feed, "self")), ""),
    )


def _rel_links(feed: Any, rel: str) -> tuple[str, ...]:
    """The hrefs of the feed's links of relation `rel`, in document order, each once."""
    found = [
        link.get("href") or ""
        for link in feed.get("links") or ()
        if hasattr(link, "get") and str(link.get("rel") or "").lower() == rel
    ]
    return tuple(dict.fromkeys(h.strip() for h in found if isinstance(h, str) and h.strip()))


def read_xml(data: bytes, url: str, content_type: str = "", *, fast: bool = True) -> Any:
    """A UTF-8 RSS or Atom document read into feedparser's shape of dicts.

    feedparser_rs (Rust, twenty times faster here) reads every well-formed document without
    xml:base; feedparser, the reference, reads the rest: anything feedparser_rs calls
    malformed (feedparser's loose parser recovers more), documents whose relative links hang
    on xml:base (feedparser_rs is not told the document's URL), documents at its entry limit,
    and Atom 0.3 documents with base64-encoded text. Neither sanitizes: that is nh3's job in
    normalize, which also resolves relative links against the document's URL
    (`ParsedFeed.base`); feedparser resolves them first only against an xml:base."""
    xml_base = b"xml:base" in data
    # Atom 0.3's mode="base64" text only feedparser decodes.
    if fast and not xml_base and not _BASE64_MODE.search(data):
        try:
            doc = feedparser_rs.parse(data, sanitize_html=False, resolve_relative_uris=False)
        except Exception:  # noqa: BLE001 - feedparser, below, reads it or says why not
            doc = None
        if (
            doc is not None
            and not doc.bozo
            and doc.get("version")
            and len(doc.entries) < _FAST_LIMITS.max_entries
        ):
            return doc
    media_type = content_type.split(";")[0].strip() or "application/xml"
    # The bytes are UTF-8 now, whatever the header said: tell feedparser so.
    headers = {"content-type": f"{media_type}; charset=utf-8"}
    if xml_base:
        # feedparser resolves links, guids and HTML against the document's URL as soon as it
        # knows it; that is left to normalize, but for xml:base, which only feedparser reads.
        headers["content-location"] = url
    return feedparser.parse(
        data, response_headers=headers, sanitize_html=False, resolve_relative_uris=xml_base
    )


_FAST_LIMITS = feedparser_rs.ParserLimits()
_BASE64_MODE = re.compile(rb"""mode\s*=\s*["']base64["']""")


def _ttl(value: Any) -> float | None:
    """RSS 2.0 <ttl> is a number of minutes; anything else is ignored."""
    try:
        minutes = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return minutes * 60 if minutes > 0 else None


def default_zone(language: str, encoding: str = "") -> tzinfo:
    """The zone of dates that name none: China's for a Chinese feed, by its language (zh,
    zh-cn, zh-TW …: every region that writes Chinese is on +08:00) or by its encoding (GB18030
    or Big5 text is Chinese); UTC otherwise."""
    if language.strip().lower().startswith("zh") or encoding in CHINESE_ENCODINGS:
        return CHINA_TZ
    return UTC


# --- the prolog: no entity may expand to more than its reference ----------------------------

_ROOT = re.compile(rb"<[A-Za-z_]")
_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_DOCTYPE_NAME = re.compile(rb"<!DOCTYPE\s+([A-Za-z_][\w.:-]*)", re.IGNORECASE)
_LITERAL = rb"""(?:"[^"<>&%]*"|'[^'<>&%]*')"""
_EXTERNAL_ID = re.compile(
    rb"\s+(PUBLIC\s+" + _LITERAL + rb"\s+" + _LITERAL + rb"|SYSTEM\s+" + _LITERAL + rb")\s*\Z"
)
_SCAN_STOP = re.compile(rb"[\"'>\[]")
_SUBSET_STOP = re.compile(rb"[<\]]")
_ENTITY = re.compile(r"""<!ENTITY\s+(%\s+)?([A-Za-z_][\w.-]*)\s+(?:"([^"]*)"|'([^']*)')?""")
_CHAR_REF = re.compile(r"&#(?:[0-9]{1,7}|x[0-9A-Fa-f]{1,6});")
_PLAIN = re.compile(r"[^&<>%\"']*")
XML_DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'


def harden_prolog(data: bytes) -> bytes:
    """Rewrite everything before the root element of a UTF-8 document: our own XML declaration,
    then the first DOCTYPE with its internal subset rebuilt, then the root element onwards.
    Comments, processing instructions and anything else in the prolog are dropped.

    In the rebuilt subset every general entity is declared again, either with its value, when
    that is one character reference or plain text no longer than the reference that names the
    entity, or else empty; parameter entities, external entities and the other declarations
    go. So a reference never expands to more than itself and expat parses the document as
    before, only without the blow-up. Writing the whole prolog, not just cutting the subset, is
    needed because feedparser 6.0.14 (`sanitizer.replace_doctype`) re-inserts any "safe"-looking
    `<!ENTITY` line it finds before the first `<name`, even inside a comment or a literal, and
    its loose parser then expands it without limit.
    """
    end = len(data)
    pos = 0
    doctype = b""
    while pos < end:
        lt = data.find(b"<", pos)
        if lt < 0:
            pos = end
        elif data.startswith(b"<?", lt):
            pos = _after(data, b"?>", lt + 2)
        elif data.startswith(b"<!--", lt):
            pos = _after(data, b"-->", lt + 4)
        elif _DOCTYPE.match(data, lt):
            pos, rebuilt = _doctype(data, lt)
            doctype = doctype or rebuilt  # XML allows one; a second is ignored
        elif _ROOT.match(data, lt):
            pos = lt
            break
        else:  # not allowed in a prolog (XML 1.0 §2.8): an <!ENTITY outside a DOCTYPE, "<1" …
            pos = lt + 1
    return XML_DECLARATION + (doctype + b"\n" if doctype else b"") + data[pos:]


def _after(data: bytes, marker: bytes, start: int) -> int:
    """The position after the next `marker`, or the end: an unclosed construct runs to it."""
    found = data.find(marker, start)
    return len(data) if found < 0 else found + len(marker)


def _scan(data: bytes, pos: int, stops: bytes) -> int:
    """The position of the next byte in `stops` outside quoted literals, or the end."""
    while True:
        match = _SCAN_STOP.search(data, pos)
        if match is None:
            return len(data)
        found = match.group()
        if found in stops:
            return match.start()
        if found in b"\"'":
            close = data.find(found, match.end())
            if close < 0:
                return len(data)
            pos = close + 1
        else:
            pos = match.end()


def _doctype(data: bytes, start: int) -> tuple[int, bytes]:
    """(where the DOCTYPE at `start` ends, the DOCTYPE rebuilt)."""
    end = len(data)
    stop = _scan(data, start, b"[>")
    head = data[start:stop]
    entities: dict[str, str] = {}
    if stop < end and data[stop : stop + 1] == b"[":
        pos = stop + 1
        while pos < end:
            found = _SUBSET_STOP.search(data, pos)  # whitespace, PE references, junk: skipped
            if found is None:
                pos = end
                break
            pos = found.start()
            if data[pos : pos + 1] == b"]":
                pos = _after(data, b">", pos + 1)
                break
            if data.startswith(b"<!--", pos):
                pos = _after(data, b"-->", pos + 4)
            elif data.startswith(b"<?", pos):
                pos = _after(data, b"?>", pos + 2)
            else:
                close = _scan(data, pos + 1, b">")
                _declare(data[pos:close].decode("utf-8", "replace"), entities)
                pos = close + 1
        stop = min(pos, end)
    else:
        stop = min(stop + 1, end)
    name = _DOCTYPE_NAME.match(head)
    external = _EXTERNAL_ID.search(head)
    rebuilt = b"<!DOCTYPE " + (name.group(1) if name else b"feed")
    if external is not None:
        rebuilt += b" " + external.group(1)
    if entities:
        lines = "".join(f'<!ENTITY {key} "{value}">\n' for key, value in entities.items())
        rebuilt += b" [\n" + lines.encode("utf-8") + b"]"
    return stop, rebuilt + b">"


def _declare(declaration: str, entities: dict[str, str]) -> None:
    """Record a general entity declaration: its value when it cannot amplify, else ""."""
    match = _ENTITY.match(declaration)
    if match is None or match.group(1):  # not an entity, or a parameter entity
        return
    name = match.group(2)
    value = match.group(3) if match.group(3) is not None else match.group(4)
    if name in entities:  # XML 1.0 §4.2: the first declaration binds
        return
    safe = value is not None and (
        _CHAR_REF.fullmatch(value) is not None
        or (_PLAIN.fullmatch(value) is not None and len(value) <= len(name) + 2)
    )
    entities[name] = value if safe and value is not None else ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _authors(owner: Any) -> tuple[Author, ...]:
    """The authors of a feed or entry; feedparser_rs leaves an RSS item's <author> out of
    `authors` and has it only as `author_detail`."""
    raw = owner.get("authors") or [owner.get("author_detail")]
    return tuple(
        Author(
            name=_text(a.get("name", "")),
            email=_text(a.get("email", "")),
            uri=_text(a.get("href", "")),
        )
        for a in raw
        if hasattr(a, "get") and (a.get("name") or a.get("email") or a.get("href"))
    )


def _xml_entry(
    entry: Any, feed_authors: tuple[Author, ...], zone: tzinfo, *, rss: bool = True
) -> ParsedEntry:
    """`feed_authors` stand for an entry that names none (RFC 4287 §4.2.1); `zone` is for
    dates that name none. Either parser's entry comes out the same
    (tests/test_parse_engines.py). Links and guids are as the document wrote them: normalize
    resolves links, and a guid is an identifier, not resolved against wherever the feed is
    served from today."""
    content = _first_content(entry)
    summary = (entry.get("summary") or "", (entry.get("summary_detail") or {}).get("type"))
    if summary[0] == content[0]:
        summary = ("", None)  # without a summary, feedparser copies the content there
    title = entry.get("title") or ""
    if rss:
        # RSS says nothing of a title's markup; feedparser takes it for HTML when it looks
        # like HTML, feedparser_rs always does.
        title_type = "text/html" if _FeedParserMixin.looks_like_html(title) else "text/plain"
    else:
        title_type = (entry.get("title_detail") or {}).get("type") or "text/plain"
    (published, published_utc), (updated, updated_utc) = _dates(entry, rss)
    return ParsedEntry(
        guid=_text(entry.get("id", "")),
        link=_text(entry.get("link", "")),
        title=_as_html(title, title_type),
        content=_as_html(*content),
        summary=_as_html(summary[0], summary[1] or "text/html"),
        authors=_authors(entry) or feed_authors,
        # The raw strings first (`dates`): the parsers' *_parsed are UTC and misread CST and
        # Chinese forms; they are only the fallback for forms we do not know.
        published=parse_date(published, published_utc, default_tz=zone),
        updated=parse_date(updated, updated_utc, default_tz=zone),
        enclosures=tuple(
            Enclosure(url=e["href"], type=_text(e.get("type", "")), length=_int(e.get("length")))
            for e in entry.get("enclosures") or ()
            if e.get("href")
        ),
        categories=tuple(t["term"] for t in entry.get("tags") or () if t.get("term")),
    )


def _first_content(entry: Any) -> tuple[str, str | None]:
    for part in entry.get("content") or ():
        value = part.get("value") or ""
        if value:
            return value, part.get("type") or ""
    return "", None


def _as_html(value: str, media_type: str | None) -> str:
    return value if "html" in (media_type or "") else html.escape(value, quote=False)


Date = tuple[str, Any]  # the raw string, and the parser's UTC struct_time of it (or None)


def _dates(entry: Any, rss: bool) -> tuple[Date, Date]:
    """(published, updated) as the document wrote them, the same from either parser: an
    `updated` equal to `published` says nothing more, and an RSS item's only date (pubDate,
    or dc:date, which feedparser files as "updated") is when it was published."""
    # dict.get: FeedParserDict.get("updated") falls back to "published" (feedparser #310)
    own = dict.get if isinstance(entry, dict) else type(entry).get
    published: Date = (_text(entry.get("published", "")), entry.get("published_parsed"))
    updated: Date = (_text(own(entry, "updated", "")), own(entry, "updated_parsed"))
    none: Date = ("", None)
    if updated[0] == published[0]:
        updated = none
    if rss and not published[0]:
        published, updated = updated, none
    return published, updated


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
    zone = default_zone(_text(data.get("language", "")))  # JSON Feed 1.1 "language"
    return ParsedFeed(
        title=_text(data.get("title", "")),
        link=_text(data.get("home_page_url", "")),
        format=f"json{version.replace('.', '')}",
        entries=tuple(_json_entry(i, feed_authors, zone) for i in items if isinstance(i, dict)),
        hubs=_json_hubs(data.get("hubs")),
        self_url=_text(data.get("feed_url", "")).strip(),
    )


def _json_hubs(raw: Any) -> tuple[str, ...]:
    """JSON Feed 1.1 `hubs`: the WebSub ones (type "WebSub", any case), each once."""
    if not isinstance(raw, list):
        return ()
    found = [
        _text(h.get("url", "")).strip()
        for h in raw
        if isinstance(h, dict) and _text(h.get("type", "")).lower() == "websub"
    ]
    return tuple(dict.fromkeys(u for u in found if u))


def _json_authors(data: dict[str, Any]) -> tuple[Author, ...]:
    raw = data.get("authors")
    if not isinstance(raw, list):  # JSON Feed 1.0 has a single "author"
        raw = [data["author"]] if isinstance(data.get("author"), dict) else []
    return tuple(
        Author(name=_text(a.get("name", "")), uri=_text(a.get("url", "")))
        for a in raw
        if isinstance(a, dict) and (a.get("name") or a.get("url"))
    )


def _json_entry(
    item: dict[str, Any], feed_authors: tuple[Author, ...], zone: tzinfo
) -> ParsedEntry:
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
        published=parse_date(_text(item.get("date_published", "")), default_tz=zone),
        updated=parse_date(_text(item.get("date_modified", "")), default_tz=zone),
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
