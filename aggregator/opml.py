"""OPML: the sources as an OPML 2.0 document, and OPML documents back to feeds.yaml sources.

`render` writes every source as an `rss` outline (text, title, xmlUrl, htmlUrl when known, and
its category in the `category` attribute), grouped in one outline per category, as feed readers
export their folders (http://opml.org/spec2.opml). It reads nothing but what it is given;
`known_feeds` reads the store for the feeds' own titles and home pages.

`parse` reads OPML 1.0 and 2.0 from untrusted bytes: every outline with an xmlUrl, at any
depth, filed under its `category` attribute, else the text of the folder outline around it.
It uses pyexpat with defusedxml's defaults: an entity declaration anywhere refuses the document
(no entity expansion bombs, no external entities), and nothing is ever fetched. `to_sources`
turns the outlines into feeds.yaml source entries with generated names, refusing the ones that
duplicate a source already configured. `add_sources` appends entries to the text of a
feeds.yaml, leaving every other byte as it was (comments included), and `merge` checks the
result still says everything the file said before, plus the new sources. No file is written
here.
"""

from __future__ import annotations

import codecs
import json
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xml.parsers import expat

import yaml

from aggregator import config as config_module
from aggregator.config import Config, Source
from aggregator.errors import AggregatorError, ConfigError
from aggregator.store import Store
from aggregator.text import xml_text

MEDIA_TYPE = "text/x-opml; charset=utf-8"
SPEC = "http://opml.org/spec2.opml"
MAX_NAME = 48
KNOWN_PER_CATEGORY = 20

_HTTP = re.compile(r"^https?://[^/\s]+", re.IGNORECASE)
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x1f\x7f\s]+")
_DECLARED = re.compile(rb"^(?:\xef\xbb\xbf)?\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z][\w.:-]*)")
_EXPAT_CODECS = {"utf-8", "utf-16", "utf-16-le", "utf-16-be", "ascii", "iso8859-1"}


class OpmlError(AggregatorError):
    """An OPML document we will not read, or sources we could not add to feeds.yaml."""


# --- export --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownFeed:
    """What the feed itself told us when we polled it: its title and its home page."""

    title: str = ""
    html_url: str = ""


def known_feeds(
    config: Config, store: Store, per_category: int = KNOWN_PER_CATEGORY
) -> dict[str, KnownFeed]:
    """Each source's feed title and home page, from its newest stored entry (the source state
    does not record them). Reads the newest `per_category` entries of each category: a source
    with nothing among them stays unknown."""
    sources = {s.name: s for s in config.sources}
    known: dict[str, KnownFeed] = {}
    for category in dict.fromkeys(s.category_name for s in config.sources):
        for entry in store.entries("category", category, limit=per_category):
            source = sources.get(entry.source)
            if source is None or entry.source in known:
                continue
            # normalize falls back to the source's name and to the feed's own URL: not news.
            title = entry.source_title if entry.source_title != source.name else ""
            link = entry.source_link
            if not _HTTP.match(link) or link.rstrip("/") == source.url.rstrip("/"):
                link = ""
            known[entry.source] = KnownFeed(title, link)
    return known


def render(
    config: Config, known: Mapping[str, KnownFeed] | None = None, site: str | None = None
) -> bytes:
    """Every source, enabled or not, in one folder outline per category (in the order the
    categories first appear in feeds.yaml). The title names `site` (default: public_url), or
    no site when there is none: the command line without public_url does not know where the
    aggregator is reached. Identical input gives identical bytes."""
    known = known or {}
    site = site or config.settings.public_url
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = xml_text(f"Sources of {site}" if site else "Sources")
    ET.SubElement(head, "docs").text = SPEC
    body = ET.SubElement(root, "body")
    groups: dict[str, list[Source]] = {}
    for source in config.sources:
        groups.setdefault(source.category_name, []).append(source)
    for category, members in groups.items():
        label = xml_text(config.category_title(category))
        folder = ET.SubElement(body, "outline", text=label, title=label)
        for source in members:
            feed = known.get(source.name, KnownFeed())
            title = source.title or feed.title or source.name
            attributes = {"type": "rss", "text": title, "title": title, "xmlUrl": source.url}
            if feed.html_url:
                attributes["htmlUrl"] = feed.html_url
            attributes["category"] = category
            ET.SubElement(folder, "outline", {k: xml_text(v) for k, v in attributes.items()})
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"


# --- import --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedOutline:
    """One outline with an xmlUrl, as the file has it (text cleaned of control characters)."""

    url: str
    title: str = ""
    html_url: str = ""
    category: str = ""


def _clean(value: str) -> str:
    """Attribute text as one line: control characters and runs of white space become one
    space, none at either end (so it is a valid feeds.yaml title or category)."""
    return _CONTROL_OR_SPACE.sub(" ", value).strip()


def _category(value: str) -> str:
    """The `category` attribute. OPML 2.0 makes it comma-separated, slash-delimited paths
    (`/Boston/Weather,/Politics`); a value in that form gives its first path. Anything else,
    such as our own export's category names, is taken whole."""
    value = _clean(value)
    if value.startswith("/"):
        value = value.split(",")[0].strip().strip("/").strip()
    return value


def _refuse_entities(*args: Any) -> None:
    raise OpmlError(f"refusing an XML entity declaration ({args[0]!r}): OPML needs none")


def _decoded(data: bytes) -> bytes | str:
    """Expat reads UTF-8, UTF-16, ASCII and Latin-1 itself; anything else a document declares
    (GBK, GB18030, Big5 …) is decoded here."""
    match = _DECLARED.match(data)
    if not match:
        return data
    declared = match[1].decode("ascii")
    try:
        codec = codecs.lookup(declared).name
    except LookupError as err:
        raise OpmlError(f"unknown encoding {declared!r}") from err
    if codec in _EXPAT_CODECS:
        return data
    try:
        return data.decode(codec)
    except UnicodeDecodeError as err:
        raise OpmlError(f"not {declared} text: {err}") from err


def parse(data: bytes) -> list[FeedOutline]:
    """The feed outlines of an OPML 1.0 or 2.0 document, in document order."""
    feeds: list[FeedOutline] = []
    folders: list[str] = []  # per open outline: the folder name it gives its children
    root: list[str] = []

    def start(name: str, raw: dict[str, str]) -> None:
        if not root:
            root.append(name)
            if name != "opml":
                raise OpmlError(f"not an OPML document: the root element is <{name}>")
        if name != "outline":
            return
        attributes = {key.lower(): value for key, value in raw.items()}
        title = _clean(attributes.get("text") or attributes.get("title") or "")
        url = attributes.get("xmlurl", "").strip()
        if not url:
            folders.append(title)
            return
        folders.append("")  # a feed outline is no folder
        category = _category(attributes.get("category", ""))
        if not category:
            category = next((f for f in reversed(folders) if f), "")
        html_url = attributes.get("htmlurl", "").strip()
        feeds.append(FeedOutline(url, title, html_url, category))

    def end(name: str) -> None:
        if name == "outline":
            folders.pop()

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.EntityDeclHandler = _refuse_entities
    parser.UnparsedEntityDeclHandler = _refuse_entities
    try:
        parser.Parse(_decoded(data), True)
    except expat.ExpatError as err:
        raise OpmlError(f"not well-formed XML: {err}") from err
    except ValueError as err:  # pyexpat: an encoding it cannot map
        raise OpmlError(f"cannot read the document's encoding: {err}") from err
    if not root:
        raise OpmlError("empty document")
    return feeds


def _feed_url(url: str) -> str:
    """`feed://host/x` and `feed:https://host/x` (the feed URI scheme some readers write) as
    the http(s) URLs they stand for."""
    if url.lower().startswith("feed:"):
        rest = url[5:]
        return rest if rest.lower().startswith(("http://", "https://")) else "http:" + rest
    return url


def _url_key(url: str) -> str:
    """URLs that name the same feed compare equal: scheme and host are case-insensitive, the
    fragment is never sent, and an empty path is `/` (RFC 3986 §6.2.2-6.2.3)."""
    parts = urlsplit(url.strip())
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, "")
    )


def _slug(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")[:MAX_NAME].strip("-")


def base_name(outline: FeedOutline) -> str:
    """A source name for an outline, `[a-z0-9_-]+`: from its title when the title is mostly
    Latin letters and digits (`BBC News - Business` → `bbc-news-business`), else from the feed's
    host (`经济日报` at www.ce.cn → `ce-cn`)."""
    folded = unicodedata.normalize("NFKD", outline.title)
    alnum = [c for c in folded if c.isalnum()]
    if alnum and 2 * sum(c.isascii() for c in alnum) >= len(alnum):
        slug = _slug(outline.title)
        if slug:
            return slug
    host = (urlsplit(outline.url).hostname or "").removeprefix("www.")
    return _slug(host) or "feed"


def _unique(base: str, taken: set[str]) -> str:
    name, number = base, 2
    while name in taken:
        suffix = f"-{number}"
        name = base[: MAX_NAME - len(suffix)].rstrip("-") + suffix
        number += 1
    return name


@dataclass(frozen=True, slots=True)
class Conversion:
    """Source entries for feeds.yaml, and one line for each outline left out, saying why."""

    sources: tuple[dict[str, str], ...]
    refused: tuple[str, ...]


def to_sources(outlines: Sequence[FeedOutline], existing: Sequence[Source] = ()) -> Conversion:
    """feeds.yaml source entries (name, url, category and title when known) for `outlines`.

    An outline is refused when its feed is an `existing` source's (same URL), when the name it
    would get is an existing source's, when the file lists its feed twice, or when feeds.yaml
    would not accept it (not an http(s) URL). Names are unique among the new and the existing.
    """
    by_url = {_url_key(s.url): (i, s) for i, s in enumerate(existing)}
    by_name = {s.name: (i, s) for i, s in enumerate(existing)}
    taken = set(by_name)
    listed: dict[str, str] = {}
    sources: list[dict[str, str]] = []
    refused: list[str] = []
    for outline in outlines:
        label = repr(outline.title or outline.url)
        url = _feed_url(outline.url)
        key = _url_key(url)
        if key in by_url:
            index, source = by_url[key]
            refused.append(f"{label}: {url} is already sources[{index}] ({source.name})")
            continue
        if key in listed:
            refused.append(f"{label}: {url} is listed twice (first as {listed[key]})")
            continue
        base = base_name(outline)
        if base in by_name:
            index, source = by_name[base]
            refused.append(f"{label}: the name {base!r} is already sources[{index}] ({source.url})")
            continue
        entry = {"name": _unique(base, taken), "url": url}
        if outline.category:
            entry["category"] = outline.category
        if outline.title:
            entry["title"] = outline.title
        try:
            config_module.check_source(entry)
        except ValueError as err:
            refused.append(f"{label}: {err}")
            continue
        taken.add(entry["name"])
        listed[key] = entry["name"]
        sources.append(entry)
    return Conversion(tuple(sources), tuple(refused))


def sources_block(sources: Sequence[Mapping[str, str]], indent: int) -> str:
    """Source entries as the items of a block sequence, each `- ` at column `indent`."""
    if not sources:
        return ""
    dumped = yaml.safe_dump(
        [dict(s) for s in sources],
        allow_unicode=True,
        sort_keys=False,
        default_flow_style=False,
        width=1 << 20,
    )
    return "".join(" " * indent + line for line in dumped.splitlines(keepends=True))


def sources_document(sources: Sequence[Mapping[str, str]]) -> str:
    """A feeds.yaml holding just these sources: what `aggregator opml import` prints."""
    text = "sources:\n" + sources_block(sources, 2) if sources else "sources: []\n"
    try:
        config_module.parse(text, Path("<opml import>"))
    except ConfigError as err:  # to_sources admits only entries feeds.yaml accepts
        raise OpmlError(f"the sources would not pass `aggregator check`: {err}") from err
    return text


# --- adding sources to a feeds.yaml --------------------------------------------------------


def _walk(node: yaml.Node, seen: set[int]) -> Iterator[yaml.Node]:
    if id(node) in seen:
        return
    seen.add(id(node))
    yield node
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from _walk(key, seen)
            yield from _walk(value, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _walk(item, seen)


def _content_end(node: yaml.Node) -> int:
    """Where the text of `node` ends. A block collection's own end mark is the next token,
    past any comments after it; its last scalar or flow collection ends where it ends."""
    ends = [
        n.end_mark.index
        for n in _walk(node, set())
        if isinstance(n, yaml.ScalarNode) or getattr(n, "flow_style", False)
    ]
    return max(ends, default=node.end_mark.index)


def _next_line(text: str, index: int) -> int:
    """The start of the line after the one `index` is on (past a trailing comment), or the
    end of the text; `index` itself when it already starts a line."""
    if index > 0 and text[index - 1] == "\n":
        return index
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline + 1


def _insert(text: str, at: int, block: str, newline: str) -> str:
    if at == len(text) and text and not text.endswith("\n"):
        block = "\n" + block
    return text[:at] + block.replace("\n", newline) + text[at:]


def add_sources(text: str, sources: Sequence[Mapping[str, str]]) -> str:
    """The text of a feeds.yaml with `sources` appended to its `sources` list, every other
    character kept. A block list gets block items at its own indentation, after its last item
    (before any comment lines that follow it); a flow list gets flow items (JSON objects, which
    YAML reads) after its last item; an empty or missing list becomes a block list."""
    if not sources:
        return text
    newline = "\r\n" if "\r\n" in text else "\n"
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        raise OpmlError(f"not valid YAML: {err}") from err
    node: yaml.Node | None = None
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "sources":
                node = value
    elif root is not None:
        raise OpmlError("the file is not a mapping of settings and sources")
    if node is None:
        return _insert(text, len(text), "sources:\n" + sources_block(sources, 2), newline)
    if isinstance(node, yaml.SequenceNode) and node.value:
        if not node.flow_style:
            at = _next_line(text, _content_end(node.value[-1]))
            return _insert(text, at, sources_block(sources, node.start_mark.column), newline)
        # Right after the last item, so a trailing comma or comment stays where it was.
        at = _content_end(node.value[-1])
        items = "".join(", " + json.dumps(dict(s), ensure_ascii=False) for s in sources)
        return text[:at] + items + text[at:]
    if not isinstance(node, yaml.SequenceNode):
        raise OpmlError("`sources` is not a list")
    start, end = node.start_mark.index, node.end_mark.index
    text = text[:start] + text[end:]  # `[]`: a block list replaces it
    return _insert(text, _next_line(text, start), sources_block(sources, 2), newline)


def merge(text: str, path: Path, sources: Sequence[Mapping[str, str]]) -> str:
    """`add_sources`, checked: the result must be a valid feeds.yaml that says everything the
    old one said, plus `sources` at the end of the list; else OpmlError, and nothing to write."""
    old = config_module.parse(text, path)
    merged = add_sources(text, sources)
    try:
        new = config_module.parse(merged, path)
    except ConfigError as err:
        raise OpmlError(f"adding the sources would make {path} invalid: {err}") from err
    expected = old.sources + tuple(config_module.check_source(s) for s in sources)
    if (
        new.sources != expected
        or new.settings != old.settings
        or dict(new.categories) != dict(old.categories)
        or dict(new.tags) != dict(old.tags)
    ):
        raise OpmlError(f"could not add the sources to {path} without changing anything else")
    return merged
