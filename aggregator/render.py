"""Render: stored entries → the bytes of an Atom 1.0, RSS 2.0 or JSON Feed 1.1 document.

For Atom and RSS, feedgen writes the feed's head (its `updated` is set here: feedgen would
stamp the current time) and the entries are written here as escaped text, spliced in before
the head's end tag; JSON Feed is a plain dict. The output depends only on the entries and the
feed's description, never on the clock, so identical data renders to identical bytes (and so
to identical ETags on every web worker). No I/O.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Literal, cast

from feedgen.feed import FeedGenerator
from lxml import etree

from aggregator import __version__
from aggregator.models import Author, Entry
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
ATOM = "http://www.w3.org/2005/Atom"
OCTETS = "application/octet-stream"
UNTITLED = "(untitled)"
_EMAIL = re.compile(r"[^\r\n]+@[^\r\n]+")  # atom.rng: ".+@.+", "." matching no CR or LF
_MEDIA_TYPE = re.compile(r"[^\r\n]+/[^\r\n]+")  # atom.rng: ".+/.+"


@dataclass(frozen=True, slots=True)
class FeedInfo:
    """What a merged feed says about itself. `base_url` is where the site is (the configured
    public_url, else the address the request came to); `path` the feed's URL path without the
    extension, e.g. `/tags/%E8%B4%A2%E7%BB%8F`; `html_path` the page that lists the same
    entries. `page` (1 = newest) and `has_next` make it one page of an RFC 5005 paged feed."""

    title: str
    description: str
    base_url: str
    path: str
    html_path: str
    hub: str | None = None
    page: int = 1
    has_next: bool = False
    limit: int | None = None  # kept in paging links when not the default

    @property
    def base(self) -> str:
        return self.base_url.rstrip("/")

    def url(self, fmt: Format, page: int = 1) -> str:
        query = [f"page={page}"] if page > 1 else []
        if self.limit is not None:
            query.append(f"limit={self.limit}")
        return f"{self.base}{self.path}.{fmt}" + ("?" + "&".join(query) if query else "")

    @property
    def html_url(self) -> str:
        return self.base + self.html_path

    def entry_url(self, entry_id: str) -> str:
        return f"{self.base}/entries/{entry_id}"

    def paging(self, fmt: Format) -> dict[str, str]:
        """RFC 5005 §3 paging links: rel → URL."""
        links = {"first": self.url(fmt)}
        if self.page > 1:
            links["previous"] = self.url(fmt, self.page - 1)
        if self.has_next:
            links["next"] = self.url(fmt, self.page + 1)
        return links


def updated(entry: Entry) -> datetime:
    """An entry's last change as readers should see it."""
    return entry.updated or entry.published or entry.first_seen


def last_modified(entries: Sequence[Entry]) -> datetime | None:
    """When this set of entries last changed from our side (new or updated)."""
    if not entries:
        return None
    return max(max(e.first_seen, updated(e)) for e in entries)


def render(fmt: Format, info: FeedInfo, entries: Sequence[Entry]) -> bytes:
    newest = max((updated(e) for e in entries), default=EPOCH)
    return _join(_frame(fmt, info, newest), [_entry_bytes(fmt, info, e) for e in entries])


@dataclass(frozen=True, slots=True)
class Fragment:
    """One entry as a feed of one format and base URL shows it: its bytes, and the two times
    the feed's head and Last-Modified are made of."""

    body: bytes
    updated: datetime  # `updated(entry)`
    changed: datetime  # max(first_seen, updated): what `last_modified` takes
    digest: bytes  # of `body` (`_digest`): what the document's ETag is made of
    # Both times in µs since the epoch: a feed's maxima compare them a hundred times, and
    # datetimes with offsets compare forty times slower than ints.
    updated_at: int
    changed_at: int


class Fragments:
    """Rendered entries kept by one process, keyed by the entry's stored bytes (which decide
    the entry exactly: no hash to collide), the format and the base URL (the only part of a
    feed's info an entry shows, in its page link); at most `max_bytes` of keys and fragments,
    least recently used dropped first. A feed rendered again after a poll then decodes and
    writes only the entries it has not shown before.

    Beside them, the last `FRAMES` documents' frames (`_frame`: feedgen's head, the tail),
    keyed by all they show: the format, the feed's info and its newest entry's time, which a
    poll often leaves as it was (an older entry added, updated or cut)."""

    FRAMES = 64

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self._max = max_bytes
        self._size = 0
        self._items: OrderedDict[tuple[str, str, bytes], Fragment] = OrderedDict()
        self._frames: OrderedDict[tuple[str, FeedInfo, str], tuple[bytes, bytes, bytes]]
        self._frames = OrderedDict()
        self._lock = threading.Lock()

    def frame(self, fmt: Format, info: FeedInfo, newest: datetime) -> tuple[bytes, bytes, bytes]:
        """`_frame(fmt, info, newest)`, kept."""
        key = (fmt, info, newest.isoformat())  # the offset too: the text shows it
        with self._lock:
            found = self._frames.get(key)
            if found is not None:
                self._frames.move_to_end(key)
                return found
        found = _frame(fmt, info, newest)
        if self._max > 0:
            with self._lock:
                self._frames[key] = found
                while len(self._frames) > self.FRAMES:
                    self._frames.popitem(last=False)
        return found

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, keys: Sequence[tuple[str, str, bytes]]) -> list[Fragment | None]:
        with self._lock:  # once for the whole feed: a lock per entry showed in profiles
            found = [self._items.get(key) for key in keys]
            for key, fragment in zip(keys, found, strict=True):
                if fragment is not None:
                    self._items.move_to_end(key)
            return found

    def put_many(self, items: Sequence[tuple[tuple[str, str, bytes], Fragment]]) -> None:
        with self._lock:
            for key, fragment in items:
                old = self._items.pop(key, None)
                if old is not None:
                    self._size -= _weight(key, old)
                self._items[key] = fragment
                self._size += _weight(key, fragment)
            while self._size > self._max and self._items:
                dropped = self._items.popitem(last=False)
                self._size -= _weight(*dropped)


def _weight(key: tuple[str, str, bytes], fragment: Fragment) -> int:
    return len(key[2]) + len(fragment.body)


@dataclass(frozen=True, slots=True)
class Rendering:
    """A rendered document, its newest change (`last_modified`) and its ETag: a hash of its
    bytes taken part by part (the bytes around the entries, and each entry's digest kept with
    its fragment), so the same bytes give it in every process and any other bytes another."""

    body: bytes
    modified: datetime | None
    etag: str


def render_stored(
    fmt: Format, info: FeedInfo, stored: Sequence[bytes], fragments: Fragments
) -> Rendering:
    """`render(fmt, info, entries)` and `last_modified(entries)` of the entries stored as
    `stored` (`Entry.to_stored`), byte for byte, decoding and writing only the entries
    `fragments` does not hold yet."""
    base = info.base
    keys = [(fmt, base, raw) for raw in stored]
    found = fragments.get_many(keys)
    made: list[tuple[tuple[str, str, bytes], Fragment]] = []
    for index, fragment in enumerate(found):
        if fragment is None:
            entry = Entry.from_stored(keys[index][2])
            when = updated(entry)
            body = _entry_bytes(fmt, info, entry)
            changed = max(entry.first_seen, when)
            fragment = Fragment(body, when, changed, _digest(body), _micros(when), _micros(changed))
            found[index] = fragment
            made.append((keys[index], fragment))
    if made:
        fragments.put_many(made)
    shown = cast(list[Fragment], found)
    newest = max(shown, key=_UPDATED).updated if shown else EPOCH
    modified = max(shown, key=_CHANGED).changed if shown else None
    frame = fragments.frame(fmt, info, newest)
    # The head's length first: the rest (digests of one size, the format's tail) then reads
    # one way only.
    etag = hashlib.blake2b(len(frame[0]).to_bytes(8, "big"), digest_size=16)
    etag.update(frame[0])
    etag.update(b"".join([f.digest for f in shown]))
    etag.update(frame[2])
    return Rendering(_join(frame, [f.body for f in shown]), modified, etag.hexdigest())


def _digest(part: bytes) -> bytes:
    return hashlib.blake2b(part, digest_size=16).digest()


_UPDATED = operator.attrgetter("updated_at")
_CHANGED = operator.attrgetter("changed_at")
_MICROSECOND = timedelta(microseconds=1)


def _micros(when: datetime) -> int:
    return (when - EPOCH) // _MICROSECOND


def _entry_bytes(fmt: Format, info: FeedInfo, entry: Entry) -> bytes:
    """One entry's part of the document. UTF-8 encodes part by part what it encodes whole, so
    the parts join to the bytes the whole would give."""
    if fmt == "json":
        return _dumps(_json_item(info, entry)).encode("utf-8")
    parts: list[str] = []
    (_atom_entry if fmt == "atom" else _rss_item)(parts, entry, info)
    return "".join(parts).encode("utf-8")


def _join(frame: tuple[bytes, bytes, bytes], parts: Sequence[bytes]) -> bytes:
    """The document: its entries' parts in their `_frame`: after its head, separated by what
    goes between, before its tail (one copy of the bytes for XML, with no separator)."""
    head, between, tail = frame
    if between:
        return b"".join((head, between.join(parts), tail))
    return b"".join([head, *parts, tail])


def _frame(fmt: Format, info: FeedInfo, newest: datetime) -> tuple[bytes, bytes, bytes]:
    """The bytes before the entries, between two of them, and after them."""
    if fmt == "json":
        return _json_frame(info)
    return _xml_frame(fmt, info, newest)


def _xml_frame(fmt: Format, info: FeedInfo, newest: datetime) -> tuple[bytes, bytes, bytes]:
    fg = FeedGenerator()
    title = _shown(info.title) or UNTITLED
    fg.id(info.url("atom"))
    fg.title(title)
    fg.subtitle(_shown(info.description) or title)
    # feedgen makes the RSS channel <link> the last link given: the HTML page goes last.
    fg.link(href=info.url(fmt, info.page), rel="self")
    fg.link(href=info.html_url, rel="alternate")
    # RFC 4287 §4.1.1: a feed needs an author unless every entry has one.
    fg.author({"name": title})
    fg.generator(GENERATOR, version=__version__)
    fg.updated(newest)
    fg.lastBuildDate(newest)
    # feedgen writes the feed's head; the entries are written here, as text spliced in
    # before its end tag. feedgen's setters check and convert every value and cost three
    # quarters of a render, and its entry links lose every attribute but href (an enclosure
    # would become a second alternate link, which RFC 4287 §4.1.1 forbids); lxml elements
    # cost twice the text.
    root, _ = fg._create_atom() if fmt == "atom" else fg._create_rss()
    _paging_links(fmt, info, root)
    head = bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    end = b"</feed>" if fmt == "atom" else b"</channel></rss>"
    if not head.endswith(end):
        raise AssertionError(f"feedgen's {fmt} head does not end with {end!r}")
    return head[: -len(end)], b"", end


def _paging_links(fmt: Format, info: FeedInfo, root: Any) -> None:
    """RFC 5005 paging links and the hub, after the feed's other links: feedgen writes only
    rel="self" and "alternate" (and the RSS channel no atom:link but self).

    feedgen builds its Atom tree without namespaces and declares the Atom namespace as a plain
    `xmlns` attribute on <feed>: the text it writes is namespaced, the tree is not. So Atom
    elements are named bare here, and the RSS channel's atom:link in full."""
    if fmt == "atom":
        container, link_tag = root, "link"
    else:
        container, link_tag = root.find("channel"), f"{{{ATOM}}}link"
    extra = dict(info.paging(fmt))
    if info.hub:
        extra["hub"] = info.hub
    links = container.findall(link_tag)
    anchor = links[-1] if links else container[0]
    for rel, href in extra.items():
        link = etree.Element(link_tag, href=href, rel=rel)
        anchor.addnext(link)
        anchor = link


# --- entries as XML text, escaped as lxml escapes ------------------------------------------
# Entry text is XML-safe already (normalize strips what XML 1.0 forbids); tags and source
# names come from feeds.yaml and go through `xml_text` here. Chained str.replace: escaping
# is most of the work, and str.translate, which looks each character up in a dict, or a
# function call per element, cost several times as much.


def _t(value: str) -> str:
    """Character data, escaped."""
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value.replace("\r", "&#13;") if "\r" in value else value


def _a(value: str) -> str:
    """An attribute value, escaped (for double quotes)."""
    value = _t(value).replace('"', "&quot;")
    if "\t" in value or "\n" in value:
        value = value.replace("\t", "&#9;").replace("\n", "&#10;")
    return value


def _atom_entry(parts: list[str], entry: Entry, info: FeedInfo) -> None:
    """One <entry> (RFC 4287 §4.1.2). HTML goes escaped, not as CDATA: content may itself
    contain "]]>"."""
    page = _t(info.entry_url(entry.id))
    parts.append(
        f"<entry><id>{page}</id><title>{_t(entry.title or UNTITLED)}</title>"
        f"<updated>{updated(entry).isoformat()}</updated>"
    )
    if entry.content:
        parts.append(f'<content type="html">{_t(entry.content)}</content>')
    if entry.summary:
        parts.append(f'<summary type="html">{_t(entry.summary)}</summary>')
    if entry.published is not None:
        parts.append(f"<published>{entry.published.isoformat()}</published>")
    link = _a(entry.link or info.entry_url(entry.id))  # an attribute: quotes escaped too
    parts.append(f'<link href="{link}" rel="alternate" type="text/html"/>')
    for enclosure in entry.enclosures:
        kind = f' type="{_a(enclosure.type)}"' if _MEDIA_TYPE.fullmatch(enclosure.type) else ""
        length = f' length="{enclosure.length}"' if enclosure.length else ""
        parts.append(f'<link href="{_a(enclosure.url)}" rel="enclosure"{kind}{length}/>')
    for author in entry.authors:
        fields = _author(author, "atom")
        if fields:
            inner = "".join(
                f"<{name}>{_t(fields[name])}</{name}>"
                for name in ("name", "email", "uri")
                if name in fields
            )
            parts.append(f"<author>{inner}</author>")
    for tag in entry.all_tags:
        parts.append(f'<category term="{_a(xml_text(tag))}"/>')
    if entry.source_link:
        title = _t(entry.source_title or xml_text(entry.source))
        parts.append(
            f'<source><title>{title}</title><link href="{_a(entry.source_link)}"/></source>'
        )
    parts.append("</entry>")


def _rss_item(parts: list[str], entry: Entry, info: FeedInfo) -> None:
    """One <item>: the summary is the description and the content content:encoded when there
    are both, else the description is whichever there is. (feedgen declares the content
    namespace on <rss>.)"""
    page = _t(info.entry_url(entry.id))
    link = _t(entry.link) if entry.link else page
    parts.append(f"<item><title>{_t(entry.title or UNTITLED)}</title><link>{link}</link>")
    if entry.summary or entry.content:
        parts.append(f"<description>{_t(entry.summary or entry.content)}</description>")
    if entry.summary and entry.content:
        parts.append(f"<content:encoded>{_t(entry.content)}</content:encoded>")
    parts.append(
        f'<guid isPermaLink="true">{page}</guid><pubDate>{format_datetime(entry.date)}</pubDate>'
    )
    for author in entry.authors:
        fields = _author(author, "rss")
        if "email" in fields:  # RSS 2.0 <author> is an email address, a name may follow
            name = fields.get("name")
            text = f"{fields['email']} ({name})" if name else fields["email"]
            parts.append(f"<author>{_t(text)}</author>")
    for tag in entry.all_tags:
        parts.append(f"<category>{_t(xml_text(tag))}</category>")
    if entry.enclosures:  # RSS 2.0 allows one enclosure per item
        first = entry.enclosures[0]
        parts.append(
            f'<enclosure url="{_a(first.url)}" length="{first.length}"'
            f' type="{_a(first.type or OCTETS)}"/>'
        )
    if entry.source_link:
        title = _t(entry.source_title or xml_text(entry.source))
        parts.append(f'<source url="{_a(entry.source_link)}">{title}</source>')
    parts.append("</item>")


def _shown(text: str) -> str:
    """`text` as XML can carry it, or "" when nothing visible would be left."""
    cleaned = xml_text(text)
    return cleaned if cleaned.strip() else ""


def _author(author: Author, fmt: Format) -> dict[str, str]:
    """feedgen drops an Atom author without a name, and RFC 4287 §3.2.2 wants an email that
    looks like one (atom.rng: `.+@.+`): the email stands in for a missing name, and an email
    that is not one is left out."""
    email = xml_text(author.email) if _EMAIL.fullmatch(author.email) else ""
    name = xml_text(author.name) or (xml_text(author.email) if fmt == "atom" else "")
    out = {"name": name, "email": email, "uri": xml_text(author.uri)}
    return {k: v for k, v in out.items() if v}


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_frame(info: FeedInfo) -> tuple[bytes, bytes, bytes]:
    """The feed object around its items (each item's JSON), its last member: what
    `json.dumps` gives for the whole, since without spaces an array is its items' JSON joined
    by commas."""
    feed: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": _shown(info.title) or UNTITLED,
        "home_page_url": info.html_url,
        "feed_url": info.url("json", info.page),
    }
    if _shown(info.description):
        feed["description"] = _shown(info.description)
    if info.has_next:
        feed["next_url"] = info.url("json", info.page + 1)
    if info.hub:
        feed["hubs"] = [{"type": "WebSub", "url": info.hub}]
    head = _dumps(feed).encode("utf-8")
    return head[:-1] + b',"items":[', b",", b"]}"


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
    if entry.all_tags:
        item["tags"] = list(entry.all_tags)
    if entry.enclosures:
        item["attachments"] = [
            {
                "url": e.url,
                "mime_type": e.type or OCTETS,
                **({"size_in_bytes": e.length} if e.length else {}),
            }
            for e in entry.enclosures
        ]
    item["_source"] = {
        "name": entry.source,
        "title": entry.source_title,
        "url": entry.source_link,
        "category": entry.category,
        "sources": list(entry.sources),
    }
    return item
