"""Export: stored entries → Jekyll posts in the seed's format (`seed/000_3d1692eb5dbbc894.txt`).

One post per entry at `_posts/YYYY-MM-DD-<id>.html`, its date in the source's own UTC offset:
YAML front matter (layout, title, date, categories, tags), the entry's HTML on one line, the
original link, and a line of links back to the entry's category page and to the home page.

`render_post` is pure. `export_jekyll` reads the store a page at a time and writes only the
files whose bytes change, each through a temporary file and a rename, so a re-run leaves
unchanged posts (and their modification times) alone and a reader never sees half a post. It
never writes to Redis, and never deletes a post whose entry has left the store: a static site
keeps its archive.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

import yaml

from aggregator import keys, urls
from aggregator.config import Config
from aggregator.models import Entry
from aggregator.store import Store

POSTS = "_posts"
PAGE = 200
_ID = re.compile(r"[0-9a-f]{16}")

# The seed's wording. DESIGN.md's feeds.yaml has no key for it (only each category's title,
# which is used): a `settings` key for these words would be an interface change.
BACK = "返回{}"
HOME_TITLE = "首页"

# Escaped in a double-quoted scalar: `\` and `"`; what is not printable (YAML 1.1 §5.1); line
# breaks, which the scalar would fold into spaces; and U+FEFF, which libyaml (Ruby's Psych, so
# Jekyll) takes for a byte order mark (PyYAML's own emitter escapes it too).
_YAML_UNSAFE = re.compile(
    '[^\x09\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]|[\\\\"]'
)
_YAML_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\x00": "\\0",
    "\x07": "\\a",
    "\x08": "\\b",
    "\n": "\\n",
    "\x0b": "\\v",
    "\x0c": "\\f",
    "\r": "\\r",
    "\x1b": "\\e",
    "\x85": "\\N",
    "\u2028": "\\L",
    "\u2029": "\\P",
}
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LIQUID = re.compile(r"\{(?=[{%])")
_NOT_IN_AUTOLINK = re.compile(r"[\x00-\x20\x7f<>{}]")
_MARKDOWN_TEXT = re.compile(r"[\\\[\]&<>{]")
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null", "nil", "~"}
_POST = re.compile(r"\d{4}-\d{2}-\d{2}-([0-9a-f]{16})\.html")


def yaml_quoted(value: str) -> str:
    """`value` as a YAML double-quoted scalar that PyYAML and Ruby's Psych read back exactly."""

    def escape(match: re.Match[str]) -> str:
        char = match[0]
        if char in _YAML_ESCAPES:
            return _YAML_ESCAPES[char]
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return '"' + _YAML_UNSAFE.sub(escape, value) + '"'


def _is_plain(words: str) -> bool:
    """True when `words` reads back as this very string as a plain scalar, in PyYAML and in
    Ruby's Psych: no indicator at the start (Psych also reads `:word` as a symbol), no `: ` or
    ` #` inside, and not a number, date, boolean (Psych ignores case) or null."""
    for word in words.split(" "):
        if not word[:1].isalnum() or not any(c.isalpha() for c in word):
            return False
        if word.lower() in _YAML_WORDS:
            return False
    try:
        return bool(yaml.safe_load(f"k: {words}") == {"k": words})
    except yaml.YAMLError:
        return False


def jekyll_words(values: Iterable[str]) -> str:
    """A front-matter value for `categories` or `tags`.

    Jekyll takes a string split on white space or a YAML list (`Utils.pluralized_array_from_hash`
    calls `String#split`, and drops anything else, numbers included). The seed writes the string;
    so do we whenever it is lossless: no value holds white space and the words read back as a
    string. Otherwise a flow list of double-quoted values, which Jekyll takes verbatim.
    """
    items = list(values)
    if not items:
        return "[]"
    joined = " ".join(items)
    if not any(c.isspace() for item in items for c in item) and _is_plain(joined):
        return joined
    return "[" + ", ".join(yaml_quoted(item) for item in items) + "]"


def jekyll_date(value: datetime) -> str:
    """`2022-04-05 05:50:27 +0800`: the time and offset the source wrote."""
    return f"{value.year:04d}-{value:%m-%d %H:%M:%S} {value:%z}"


def post_name(entry: Entry) -> str:
    """`YYYY-MM-DD-<id>.html`, the date in the source's own offset (Jekyll's post naming)."""
    if not _ID.fullmatch(entry.id):
        raise ValueError(f"entry id {entry.id!r} is not 16 hex digits")
    return f"{entry.date.year:04d}-{entry.date:%m-%d}-{entry.id}.html"


def one_line_html(html: str) -> str:
    """The entry's HTML on one line, as the seed has it, meaning the same DOM.

    A line break becomes `&#10;`, which parses to the same character in text, in RCDATA and in
    attribute values: the only places sanitized HTML (no script, style or comments) holds one.
    The `{` that opens a Liquid tag (`{{`, `{%`) becomes `&#123;`, so Jekyll never runs
    template code that arrived in a feed, and a post that quotes Liquid still builds.
    """
    return _LIQUID.sub("&#123;", _LINE_BREAK.sub("&#10;", html))


def _autolink(url: str) -> str:
    """`url` for a Markdown autolink `<…>`: percent-encode what would end or break it (white
    space, controls, angle brackets) and braces, which Liquid would read."""
    return _NOT_IN_AUTOLINK.sub(lambda m: quote(m[0], safe=""), url)


def _link_text(text: str) -> str:
    """Text inside `[…]`: brackets and backslashes escaped for Markdown, `& < >` as
    references, which read the same in Markdown and in HTML, and Liquid braces likewise."""
    return _MARKDOWN_TEXT.sub(
        lambda m: {"&": "&amp;", "<": "&lt;", ">": "&gt;", "{": "&#123;"}.get(m[0], "\\" + m[0]),
        text,
    )


def network_path(url: str) -> str:
    """`https://finews.withounder.com/x/` → `//finews.withounder.com/x`: a network-path
    reference (RFC 3986 §4.2), as the seed writes its links, so they follow the scheme the page
    is served over."""
    parts = urlsplit(url)
    return f"//{parts.netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True, slots=True)
class BackLinks:
    """What the last line of a post links to, and what it says.

    `base` is the site root as a network-path reference, or "" for links from the root of
    whatever site serves the posts (no public_url configured: the export does not know where
    the aggregator is reached); the category page is `category_path` (its `{}` is the
    percent-encoded category, `.` as `%2E` as our pages print it) under it, by default the
    category page our web app serves. Each link says `back` filled with the category's
    configured title, or with `home_title` for the home page.
    """

    base: str
    category_title: Callable[[str], str]
    category_path: str = "/categories/{}"
    back: str = BACK
    home_title: str = HOME_TITLE

    @classmethod
    def from_config(cls, config: Config) -> BackLinks:
        public_url = config.settings.public_url
        return cls(network_path(public_url) if public_url else "", config.category_title)

    def line(self, category: str) -> str:
        title = _link_text(self.back.format(self.category_title(category)))
        url = self.base + self.category_path.format(urls.name_part(category))
        home = _link_text(self.back.format(self.home_title))
        return f"[{title}]({url})｜[{home}]({self.base}/)"


def render_post(entry: Entry, links: BackLinks) -> str:
    """One post, exactly in the seed's form (which has no newline at the very end). A story
    that also came through other sources (cross-source dedup) lists every category and tag it
    is filed under, as our own pages do; its back link goes to its first source's category.
    An entry without a link has no link paragraph. The post depends on the entry alone, not on
    which export wrote it, so exports by tag and by category never rewrite each other's posts."""
    lines = [
        "---",
        "layout: post",
        f"title: {yaml_quoted(entry.title)}",
        f"date: {jekyll_date(entry.date)}",
        f"categories: {jekyll_words(entry.all_categories)}",
        f"tags: {jekyll_words(entry.all_tags)}",
        "---",
        one_line_html(entry.content),
        "",
    ]
    if entry.link:
        lines += [f"<{_autolink(entry.link)}>", ""]
    lines.append(links.line(entry.category))
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ExportResult:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    renamed: int = 0  # posts whose date changed: the file under the old date was removed

    @property
    def total(self) -> int:
        return self.new + self.updated + self.unchanged


def stored_entries(store: Store, kind: keys.Kind, name: str = "") -> Iterator[Entry]:
    """Every entry of a tag, a category or all, newest first, a page at a time. An entry that
    arrives meanwhile can shift a page: it is seen twice at most, never missed."""
    total = store.count(kind, name)
    seen: set[str] = set()
    for offset in range(0, total, PAGE):
        for entry in store.entries(kind, name, limit=PAGE, offset=offset):
            if entry.id not in seen:
                seen.add(entry.id)
                yield entry


def _write_if_changed(path: Path, data: bytes) -> bool | None:
    """Write `data` to `path` unless it already holds exactly that. True: a new file; False:
    rewritten; None: unchanged, not touched."""
    try:
        if path.read_bytes() == data:
            return None
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = None
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".html")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644 if mode is None else mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return mode is None


def write_posts(out: Path, entries: Iterable[Entry], links: BackLinks) -> ExportResult:
    """Write each entry's post under `out/_posts`, touching only the files that change."""
    posts = out / POSTS
    posts.mkdir(parents=True, exist_ok=True)
    present: dict[str, list[Path]] = {}
    for path in posts.iterdir():
        match = _POST.fullmatch(path.name)
        if match:
            present.setdefault(match[1], []).append(path)
    new = updated = unchanged = renamed = 0
    for entry in entries:
        name = post_name(entry)
        written = _write_if_changed(posts / name, render_post(entry, links).encode("utf-8"))
        if written is None:
            unchanged += 1
        elif written:
            new += 1
        else:
            updated += 1
        # The date moved (the source corrected it): the post under the old date goes, or
        # Jekyll would publish the entry twice.
        for stale in present.pop(entry.id, []):
            if stale.name != name:
                stale.unlink(missing_ok=True)
                renamed += 1
    return ExportResult(new, updated, unchanged, renamed)


def export_jekyll(
    store: Store, config: Config, out: Path, kind: keys.Kind = "all", name: str = ""
) -> ExportResult:
    """Write the posts of every stored entry of a tag, a category, or all of them."""
    return write_posts(out, stored_entries(store, kind, name), BackLinks.from_config(config))
