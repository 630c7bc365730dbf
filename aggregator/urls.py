"""Tag and category names in URL paths: the links we print, and reading a request path back.

A name is any Unicode text (`node.js`, `3.15晚会`, `a/b`, `100%`, `x.atom`), and its feeds live
at the name plus `.atom`, `.rss` or `.json`. So in the links we print every character but
letters, digits, `-`, `_` and `~` is percent-encoded, `.` included (as `%2E`, which RFC 3986
§2.3 allows): the only literal dot in a printed feed path is the one before the format, and a
name that ends in `.atom` is never read as a feed. A path someone typed by hand is read at its
last literal dot: `/tags/node.js.atom` is the Atom feed of `node.js`, `/tags/node.js` its page.

Telling `%2E` from `.` needs the path as it was sent, before percent-decoding. WSGI has no key
for it; the servers we run under each give one (`REQUEST_URI`: waitress, Werkzeug; `RAW_URI`:
gunicorn, Werkzeug). When it is missing, or says something else than the decoded path (a
proxy or middleware rewrote one of them), the decoded path is read instead, where every dot is
literal, and the caller picks among the readings by which names exist. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

_HEX = frozenset("0123456789abcdefABCDEF")


def name_part(name: str) -> str:
    """`name` as one path segment: percent-encoded UTF-8, `.` as `%2E`."""
    return quote(name, safe="").replace(".", "%2E")


def name_path(folder: str, name: str) -> str:
    """`/tags/node%2Ejs` for the tag `node.js`: its page, and its feeds with `.atom` etc."""
    return f"/{folder}/{name_part(name)}"


@dataclass(frozen=True, slots=True)
class Reading:
    """One way to read a path: the name, and the feed format (None: the HTML page)."""

    name: str
    fmt: str | None


def readings(tail: str, formats: Collection[str]) -> list[Reading]:
    """The ways to read `tail`, the still percent-encoded path after `/tags/`, best first: at
    its last literal dot, a feed when what follows is a format; then the whole as a name."""
    whole = Reading(decode(tail), None)
    split = extension(tail)
    if split is not None and split[1] in formats:
        return [Reading(split[0], split[1]), whole]
    return [whole]


def extension(tail: str) -> tuple[str, str] | None:
    """`tail` at its last literal dot: the name before it (decoded) and what follows."""
    stem, dot, suffix = tail.rpartition(".")
    return (decode(stem), suffix) if dot else None


def raw_tail(environ: Mapping[str, Any], prefix: str) -> str:
    """The part of the request path after `prefix` (e.g. `/tags/`), still percent-encoded
    when the server kept the path as sent; else percent-encoded here from the decoded path,
    every dot then literal."""
    decoded = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    wanted = str(environ.get("SCRIPT_NAME", "")) + prefix
    raw = _raw_path(environ)
    if raw is not None and decoded.startswith(wanted):
        try:
            sent = raw.encode("latin-1")  # WSGI strings are bytes decoded as latin-1 (PEP 3333)
            same = unquote_to_bytes(sent) == decoded.encode("latin-1")
        except UnicodeEncodeError:
            same = False
        if same:
            return raw[_skip(raw, len(wanted.encode("latin-1"))) :]
    tail = decoded[len(wanted) :] if decoded.startswith(wanted) else ""
    # Every character is literal here: keep `.` and `/` as they are, escape `%` so that
    # decoding gives the text back.
    return quote(tail.encode("latin-1"), safe="/.")


def _raw_path(environ: Mapping[str, Any]) -> str | None:
    uri = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if not isinstance(uri, str) or not uri:
        return None
    if not uri.startswith("/"):
        # the absolute form a client may send (RFC 9112 §3.2.2): http://host/path?query
        uri = urlsplit(uri).path
    return uri.split("?", 1)[0].split("#", 1)[0]


def _skip(raw: str, count: int) -> int:
    """The index in `raw` after the characters that decode to its first `count` bytes."""
    index = 0
    while count > 0 and index < len(raw):
        escaped = raw[index] == "%" and set(raw[index + 1 : index + 3]) <= _HEX
        index += 3 if escaped and len(raw) >= index + 3 else 1
        count -= 1
    return index


def decode(part: str) -> str:
    """Percent-decoded UTF-8; bytes that are not UTF-8 become U+FFFD, as Werkzeug reads them."""
    return unquote_to_bytes(part.encode("latin-1")).decode("utf-8", "replace")
