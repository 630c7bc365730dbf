"""Entry identity: stable ids, the keys that find one story across sources, and the check for
sources whose guids cannot be trusted. Pure functions on plain values.

- An entry's id is stable across polls and restarts: from the feed's guid when it is a real one,
  else the link, else a hash of title, date and content.
- Some sources give every entry the same guid, or a new guid on every poll (some CMSs do);
  `guid_problem` recognizes both so the source is switched to link identity.
- The same story published by several sources is found by its canonical link (tracking
  parameters such as `utm_*` removed) or by a guid that is a global URI. Exact, never fuzzy.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

GUID = "guid"
LINK = "link"

# Query parameters that only track the reader; the same article is the same without them.
_TRACKING = re.compile(
    r"^(utm_[a-z_]+|fbclid|gclid|dclid|gbraid|wbraid|msclkid|mc_cid|mc_eid|igshid|yclid"
    r"|_hsenc|_hsmi|spm|scm|ref_src)$",
    re.IGNORECASE,
)
_URI = re.compile(r"^[a-z][a-z0-9+.-]*:\S+$", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def entry_id(
    source: str,
    guid: str,
    link: str,
    title: str,
    date: datetime | None,
    content: str,
    mode: str = GUID,
) -> str:
    """16 hex digits of SHA-256 over the source and the best key this entry has."""
    if mode == GUID and guid.strip():
        key = "guid:" + guid.strip()
    elif link.strip():
        key = "link:" + link.strip()
    elif guid.strip():
        key = "guid:" + guid.strip()
    else:
        key = "hash:" + "\n".join((title, date.isoformat() if date else "", content))
    # surrogatepass: a JSON Feed may carry a lone surrogate (an escaped "\ud800") in its ids.
    return hashlib.sha256(f"{source}\n{key}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def canonical_url(url: str) -> str:
    """The URL without what varies between copies of one link: scheme (http and https count
    alike), case of the host, default port, fragment, tracking parameters. Empty when `url`
    is not an absolute http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return ""
    host = parts.hostname.lower()
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k)
    ]
    return urlunsplit(("", host, parts.path or "/", urlencode(query), "")).removeprefix("//")


def dedup_keys(link: str, guid: str) -> tuple[str, ...]:
    """The keys under which another source's copy of this story would be found."""
    keys: list[str] = []
    canonical = canonical_url(link)
    if canonical:
        keys.append("url:" + canonical)
    guid = guid.strip()
    if guid and _URI.match(guid):
        # A guid that is a URL is a link too; one that is another URI (tag:, urn:) is global.
        as_url = canonical_url(guid)
        keys.append("url:" + as_url if as_url else "uri:" + guid)
    return tuple(dict.fromkeys(keys))


def guids_by_link(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """link → guid of the (guid, link) pairs of one document, for `guid_problem` next time;
    a link that several guids share is left out."""
    links = Counter(k.strip() for g, k in pairs if g.strip() and k.strip())
    return {
        k.strip(): g.strip() for g, k in pairs if g.strip() and k.strip() and links[k.strip()] == 1
    }


def guid_problem(pairs: Sequence[tuple[str, str]], previous: Mapping[str, str]) -> str | None:
    """Why this source's guids cannot identify its entries, or None when they can.

    `pairs` are (guid, link) of this document's entries; `previous` maps link → guid from the
    last poll. Guids are bad when different links share one guid, or when most links seen last
    time come back with a different guid (a CMS that makes new guids on every request).
    """
    with_both = [(g.strip(), k.strip()) for g, k in pairs if g.strip() and k.strip()]
    links_by_guid: dict[str, set[str]] = {}
    for guid, link in with_both:
        links_by_guid.setdefault(guid, set()).add(link)
    shared = [g for g, links in links_by_guid.items() if len(links) > 1]
    if shared:
        return f"{len(shared)} guid(s) shared by entries with different links"
    # A link several entries share (a podcast's episodes all linking to the show) says
    # nothing about whether one of them kept its guid.
    listed = Counter(k for _, k in with_both)
    again = [(g, previous[k]) for g, k in with_both if k in previous and listed[k] == 1]
    if len(again) >= 3:
        changed = Counter(g != old for g, old in again)[True]
        if changed * 2 > len(again):
            return f"{changed} of {len(again)} entries came back with a new guid"
    return None
