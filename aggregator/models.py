"""Plain values passed between the stages. No I/O here but reading the stored entries'
dictionary (a file of this package, once), and nothing here imports another module of this
package; besides the standard library, only the codecs of the stored entry (orjson, zstandard).

Datetimes are always timezone-aware and keep the offset the source wrote (`+08:00` stays
`+08:00`): subscribers in the source's own time zone see the time as it was published.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import zstandard


@dataclass(frozen=True, slots=True)
class Author:
    name: str = ""
    email: str = ""
    uri: str = ""

    def to_dict(self) -> dict[str, str]:
        pairs = (("name", self.name), ("email", self.email), ("uri", self.uri))
        return {key: value for key, value in pairs if value}


@dataclass(frozen=True, slots=True)
class Enclosure:
    url: str
    type: str = ""
    length: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "type": self.type, "length": self.length}


# --- fetch results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Validators:
    """What a server told us to send back next time (RFC 9110 §13 conditional requests)."""

    etag: str = ""
    last_modified: str = ""


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A 2xx answer. `moved_to` is where permanent redirects (301, 308) led, to be used from
    now on; `max_age` the server's Cache-Control freshness, a floor for the poll interval."""

    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes
    validators: Validators = Validators()
    moved_to: str = ""
    max_age: float | None = None
    # The response's Link header fields, joined by ", " (RFC 8288 §3): where a source names
    # its WebSub hub and self URL first (WebSub §4).
    links: str = ""


@dataclass(frozen=True, slots=True)
class NotModified:
    """The server answered 304: nothing to parse, only the source's state changes."""

    url: str
    validators: Validators = Validators()
    moved_to: str = ""
    max_age: float | None = None


# --- parse results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedEntry:
    """One entry as the source wrote it: HTML not yet sanitized, ids not yet derived."""

    guid: str = ""
    link: str = ""
    title: str = ""
    content: str = ""
    summary: str = ""
    authors: tuple[Author, ...] = ()
    published: datetime | None = None
    updated: datetime | None = None
    enclosures: tuple[Enclosure, ...] = ()
    categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    title: str = ""
    link: str = ""
    format: str = ""
    entries: tuple[ParsedEntry, ...] = ()
    ttl: float | None = None  # RSS 2.0 <ttl>: minutes the channel may be cached, in seconds
    # What relative links in the entries' HTML are relative to, when the format says (an XML
    # document's own URL, RFC 3986 §5.1.3); "" leaves it to the entry's link.
    base: str = ""
    # WebSub discovery in the document (WebSub §4): `<link rel="hub">` (Atom, RSS atom:link)
    # or JSON Feed `hubs`, and the self URL (`rel="self"`, JSON Feed `feed_url`).
    hubs: tuple[str, ...] = ()
    self_url: str = ""


# --- the normalized entry ------------------------------------------------------------------

# The first byte of a stored entry says how the JSON after it is compressed; an entry that
# starts with "{" is plain JSON.
ZLIB_MARK = b"\x01"  # zlib (entries written before zstd)
ZSTD_MARK = b"\x02"  # Zstandard level 1 of the JSON object (written before DICT_MARK)
# The values of STORED_FIELDS as one JSON array, Zstandard level 3 with the dictionary shipped
# as aggregator/entries.dict (bench/entry_dictionary.py). Leaving the keys out and starting
# from a dictionary of typical entries saves about 180 bytes an entry (bench/MEMORY.md). A new
# dictionary or field list needs a new marker: what this one wrote must read forever.
DICT_MARK = b"\x03"
_ZSTD_LEVEL = 3
# Frames without zstd's 4-byte magic number: the marker byte already says what follows.
_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS
# In the order DICT_MARK entries list them; never reorder, only a new marker changes it.
STORED_FIELDS = (
    "id",
    "source",
    "category",
    "tags",
    "title",
    "link",
    "content",
    "summary",
    "authors",
    "published",
    "updated",
    "enclosures",
    "categories",
    "source_title",
    "source_link",
    "first_seen",
    "guid",
    "merged",
    "digest",
)


@dataclass(frozen=True, slots=True)
class Origin:
    """Another source the same story arrived through (cross-source deduplication): its name,
    the id the entry has there, and where that source files it."""

    source: str
    id: str
    category: str
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "id": self.id,
            "category": self.category,
            "tags": list(self.tags),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _from_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True)
class Entry:
    """An entry as we store and republish it (DESIGN.md, "The normalized entry")."""

    id: str
    source: str
    category: str
    tags: tuple[str, ...]
    title: str
    link: str
    content: str
    summary: str
    first_seen: datetime
    authors: tuple[Author, ...] = ()
    published: datetime | None = None
    updated: datetime | None = None
    enclosures: tuple[Enclosure, ...] = ()
    categories: tuple[str, ...] = ()
    source_title: str = ""
    source_link: str = ""
    guid: str = ""
    merged: tuple[Origin, ...] = ()
    digest: str = ""

    @property
    def date(self) -> datetime:
        """The date readers sort by: published, else updated, else when we first saw it."""
        return self.published or self.updated or self.first_seen

    @property
    def sources(self) -> tuple[str, ...]:
        """Every source this entry came through, the first one first."""
        return tuple(dict.fromkeys((self.source, *(o.source for o in self.merged))))

    @property
    def all_categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.category, *(o.category for o in self.merged))))

    @property
    def all_tags(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.tags, *(t for o in self.merged for t in o.tags))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "category": self.category,
            "tags": list(self.tags),
            "title": self.title,
            "link": self.link,
            "content": self.content,
            "summary": self.summary,
            "authors": [a.to_dict() for a in self.authors],
            "published": _iso(self.published),
            "updated": _iso(self.updated),
            "enclosures": [e.to_dict() for e in self.enclosures],
            "categories": list(self.categories),
            "source_title": self.source_title,
            "source_link": self.source_link,
            "first_seen": _iso(self.first_seen),
            "guid": self.guid,
            "merged": [o.to_dict() for o in self.merged],
            "digest": self.digest,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    def to_json_bytes(self) -> bytes:
        """`to_json` encoded as UTF-8, through orjson (three times as fast)."""
        return _dumps(self.to_dict())

    def stored_fields(self) -> bytes:
        """What DICT_MARK compresses: the values of `to_dict` in STORED_FIELDS order, one JSON
        array (the keys are the same in every entry)."""
        data = self.to_dict()
        return _dumps([data[name] for name in STORED_FIELDS])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        first_seen = _from_iso(data["first_seen"])
        assert first_seen is not None
        return cls(
            id=data["id"],
            source=data["source"],
            category=data["category"],
            tags=tuple(data["tags"]),
            title=data["title"],
            link=data["link"],
            content=data["content"],
            summary=data["summary"],
            first_seen=first_seen,
            authors=tuple(Author(**a) for a in data["authors"]),
            published=_from_iso(data["published"]),
            updated=_from_iso(data["updated"]),
            enclosures=tuple(Enclosure(**e) for e in data["enclosures"]),
            categories=tuple(data.get("categories", ())),
            source_title=data.get("source_title", ""),
            source_link=data.get("source_link", ""),
            guid=data.get("guid", ""),
            merged=tuple(
                Origin(o["source"], o["id"], o["category"], tuple(o.get("tags", ())))
                for o in data.get("merged", ())
            ),
            digest=data.get("digest", ""),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Entry:
        return cls.from_dict(_loads(raw))

    def to_stored(self) -> bytes:
        """The entry as kept in Redis: `stored_fields`, compressed with Zstandard and the
        shipped dictionary, behind a marker byte (DICT_MARK). About 0.4 of the JSON, which
        with the indexes brings Redis memory per entry under 0.8 of the JSON (bench/MEMORY.md).
        It writes in about 9 µs an entry more than 0x02 did, and reads as fast."""
        return DICT_MARK + _ZSTD.compressor().compress(self.stored_fields())

    @classmethod
    def from_stored(cls, raw: bytes | str) -> Entry:
        """Reads what `to_stored` writes and what it wrote before: zstd and zlib of the JSON
        object, and plain JSON."""
        if isinstance(raw, bytes):
            mark = raw[:1]
            if mark == DICT_MARK:
                values = _loads(_ZSTD.dict_decompressor().decompress(raw[1:]))
                return cls.from_dict(dict(zip(STORED_FIELDS, values, strict=True)))
            if mark == ZSTD_MARK:
                return cls.from_json(_ZSTD.decompressor().decompress(raw[1:]))
            if mark == ZLIB_MARK:
                return cls.from_json(zlib.decompress(raw[1:]))
        return cls.from_json(raw)


def _dumps(data: Any) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError:  # a lone surrogate, which orjson refuses and json escapes
        return json.dumps(data, separators=(",", ":")).encode("ascii")


def _loads(raw: str | bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # a lone surrogate escaped by json (_dumps)
        return json.loads(raw)


def guids_to_stored(guids: Mapping[str, str]) -> bytes:
    """A source's link → guid memory as kept in Redis: one Zstandard frame of its JSON object.
    As a hash it cost 184 bytes an entry (links longer than 64 bytes make Redis keep a hash
    table of separate strings); compressed, the links' shared prefixes cost almost nothing
    (bench/MEMORY.md). Only a poll of that source reads it, whole."""
    return zstandard.ZstdCompressor(level=3).compress(_dumps(dict(guids)))


def guids_from_stored(raw: bytes) -> dict[str, str]:
    data: dict[str, str] = _loads(_ZSTD.decompressor().decompress(raw))
    return data


class _Zstd:
    """zstandard's (de)compressors hold native state and are not safe to share between
    threads: one of each per thread. The dictionary is read once per process, when first
    needed (a package file, like the templates)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._dictionary: zstandard.ZstdCompressionDict | None = None

    def dictionary(self) -> zstandard.ZstdCompressionDict:
        with self._lock:
            if self._dictionary is None:
                data = (Path(__file__).parent / "entries.dict").read_bytes()
                self._dictionary = zstandard.ZstdCompressionDict(
                    data, dict_type=zstandard.DICT_TYPE_RAWCONTENT
                )
            return self._dictionary

    def compressor(self) -> zstandard.ZstdCompressor:
        found: zstandard.ZstdCompressor | None = getattr(self._local, "compressor", None)
        if found is None:
            found = self._local.compressor = zstandard.ZstdCompressor(
                compression_params=zstandard.ZstdCompressionParameters.from_level(
                    _ZSTD_LEVEL, format=_FORMAT
                ),
                dict_data=self.dictionary(),
            )
        return found

    def dict_decompressor(self) -> zstandard.ZstdDecompressor:
        found: zstandard.ZstdDecompressor | None = getattr(self._local, "dict_decompressor", None)
        if found is None:
            found = self._local.dict_decompressor = zstandard.ZstdDecompressor(
                dict_data=self.dictionary(), format=_FORMAT
            )
        return found

    def decompressor(self) -> zstandard.ZstdDecompressor:
        found: zstandard.ZstdDecompressor | None = getattr(self._local, "decompressor", None)
        if found is None:
            found = self._local.decompressor = zstandard.ZstdDecompressor()
        return found


_ZSTD = _Zstd()


# --- retention ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """settings.retention as the store applies it: the newest `max_entries` per category;
    `max_age` seconds after a source last listed an entry; each source's `keep_per_source`
    newest kept against age."""

    max_entries: int
    max_age: float
    keep_per_source: int = 0


# --- per-source state ----------------------------------------------------------------------


# What a full poll records of its document; a state without it was written by an earlier
# version, which did not remember what each document listed (retention needs it).
LISTING = "2"


@dataclass(frozen=True, slots=True)
class SourceState:
    """What we remember about polling one source; shown by `aggregator status`."""

    name: str
    url: str = ""
    status: int = 0
    last_poll: datetime | None = None
    last_success: datetime | None = None
    next_due: datetime | None = None
    last_error: str = ""
    failures: int = 0
    entries: int = 0
    new_entries: int = 0
    stored: int = 0  # entries of this source stored now
    validators: Validators = field(default_factory=Validators)
    id_mode: str = "guid"
    moved_to: str = ""  # where a permanent redirect from `moved_from` led
    moved_from: str = ""
    gone: bool = False  # answered 410: not polled again on schedule
    body_hash: str = ""
    # What the last full poll was made under: the version of what a poll records of its
    # document (`LISTING`), and the source's filing (`Source.filing_key`); either differing
    # means the next poll fetches and reads the document whole, whatever its validators say.
    listing: str = ""
    filing: str = ""
    # When the next entry the source no longer lists comes of age (epoch seconds): a poll
    # answered 304 runs retention from then on (settings.retention.max_age).
    age_check: float | None = None

    def fetch_url(self, configured: str) -> str:
        """The URL to poll: the permanent redirect's target while feeds.yaml still names the
        URL that redirected; the configured one once an editor changes it."""
        return self.moved_to if self.moved_to and self.moved_from == configured else configured


def entry_digest(entry: Entry) -> str:
    """A hash of everything the source says about an entry, plus where we file it; not of when
    we first saw it, nor of what we add (other origins, the digest itself), nor of the guid (a
    guid that changes on every poll is not a change of the story, nor the id derived from it).
    Equal digests mean there is nothing to rewrite."""
    data = entry.to_dict()
    for ours in ("first_seen", "merged", "digest", "guid", "id"):
        del data[ours]
    blob = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(blob.encode("utf-8"), digest_size=12).hexdigest()
