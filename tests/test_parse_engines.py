"""The fast reader (feedparser_rs) against the reference (feedparser): every document must come
out of `process` (parse + normalize) the same either way, but for the order of HTML
attributes, which feedparser rewrites when it resolves relative links.

Each case is a document feeds in the wild write; a case feedparser_rs calls malformed goes to
feedparser on both sides, so those cases check the fallback is taken rather than the output.
Links and guids stay as written in both (normalize resolves links against the document's URL).

Known differences, left out of the cases: feedparser_rs ignores an RSS item's atom:updated
(feedparser reads it as the updated date), and feedparser 6.0 gives each Atom author after
the first the fields of the ones before that it lacks (feedparser_rs does not: see the last
test).
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser_rs
import pytest

from aggregator import parse as parse_module
from aggregator.config import Source
from aggregator.models import Author, Entry
from aggregator.update import process

FEEDS = Path(__file__).parent / "data" / "feeds"
URL = "https://feeds.example.org/dir/feed.xml"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def rss(items: str, channel: str = "", namespaces: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0" {namespaces}><channel>'
        f"<title>T</title><link>https://site.example.org/</link>{channel}{items}"
        "</channel></rss>"
    ).encode()


def atom(entries: str, head: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">'
        "<title>A</title><id>urn:a</id><updated>2024-01-01T00:00:00Z</updated>"
        f'<link href="https://site.example.org/"/>{head}{entries}</feed>'
    ).encode()


DC = 'xmlns:dc="http://purl.org/dc/elements/1.1/"'
CONTENT = 'xmlns:content="http://purl.org/rss/1.0/modules/content/"'
ATOM_NS = 'xmlns:atom="http://www.w3.org/2005/Atom"'

CASES: dict[str, bytes] = {
    "rss: entities and markup in titles": rss(
        "<item><title>Use &lt;b&gt; tags &amp; more</title><link>/a</link></item>"
        "<item><title>1 &lt; 2 and AT&amp;T</title><guid>g2</guid></item>"
        "<item><title><![CDATA[<em>Big</em> news]]></title><guid>g3</guid></item>"
        "<item><title>Caf&#233; &#x4E2D;&#x6587;</title><guid>g4</guid></item>"
    ),
    "rss: description as text, as escaped HTML, as CDATA": rss(
        "<item><guid>1</guid><description>AT&amp;T rates rise 5% &lt; 6%</description></item>"
        '<item><guid>2</guid><description>&lt;p&gt;para &lt;a href="/x"&gt;rel&lt;/a&gt;'
        "&lt;/p&gt;</description></item>"
        "<item><guid>3</guid><description><![CDATA[<p>cdata <img src='i.png'></p>]]>"
        "</description></item>"
    ),
    "rss: content:encoded beside description": rss(
        "<item><guid>1</guid><description>short</description>"
        "<content:encoded><![CDATA[<p>long <a href='../up'>up</a></p>]]></content:encoded>"
        "</item>",
        namespaces=CONTENT,
    ),
    "rss: dates in every form": rss(
        "<item><guid>1</guid><pubDate>Tue, 20 Feb 2024 14:30:00 -0500</pubDate></item>"
        "<item><guid>2</guid><pubDate>Tue, 20 Feb 2024 14:30:00 CST</pubDate></item>"
        "<item><guid>3</guid><pubDate>2024年01月01日 10:00</pubDate></item>"
        "<item><guid>4</guid><pubDate>2024/01/02 08:00:00</pubDate></item>"
        "<item><guid>5</guid><dc:date>2024-03-05T16:45:00+08:00</dc:date></item>"
        "<item><guid>6</guid><pubDate>Wed, 21 Feb 2024 10:00:00 GMT</pubDate>"
        "<dc:date>2024-02-22T10:00:00Z</dc:date></item>"
        "<item><guid>8</guid><pubDate>not a date</pubDate></item>"
        "<item><guid>9</guid></item>",
        namespaces=f"{DC} {ATOM_NS}",
    ),
    "rss: authors, categories, enclosures": rss(
        "<item><guid>1</guid><author>ed@example.org (Ed Itor)</author>"
        "<category>One</category><category domain='x'>Two</category>"
        '<enclosure url="/a.mp3" type="audio/mpeg" length="12"/>'
        '<enclosure url="https://cdn.example.org/b.mp4" type="video/mp4"/></item>'
        "<item><guid>2</guid><dc:creator>张三</dc:creator><category>财经</category></item>"
        "<item><guid>3</guid><author>plain@example.org</author></item>",
        channel="<managingEditor>boss@example.org (Boss)</managingEditor>",
        namespaces=DC,
    ),
    "rss: no guid, no link, relative link, permalink guid": rss(
        "<item><title>only a title</title></item>"
        "<item><link>posts/relative</link><description>d</description></item>"
        "<item><guid isPermaLink='true'>https://site.example.org/p</guid></item>"
        "<item><guid isPermaLink='false'>id-4</guid><link>https://site.example.org/4</link>"
        "</item>"
    ),
    "rss: ttl and language": rss(
        "<item><guid>1</guid><pubDate>2024-01-01 10:00</pubDate></item>",
        channel="<ttl>45</ttl><language>zh-cn</language>",
    ),
    "rss 0.91": (
        b'<?xml version="1.0"?><rss version="0.91"><channel><title>Old</title>'
        b"<link>https://old.example.org/</link><description>d</description><language>en</language>"
        b"<item><title>Item</title><link>https://old.example.org/1</link>"
        b"<description>text &amp; more</description></item></channel></rss>"
    ),
    "rss 1.0 with dc and content": (
        b'<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
        b' xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        b' xmlns:content="http://purl.org/rss/1.0/modules/content/">'
        b'<channel rdf:about="https://r.example.org/"><title>R</title>'
        b"<link>https://r.example.org/</link><description>d</description></channel>"
        b'<item rdf:about="https://r.example.org/1"><title>One</title>'
        b"<link>https://r.example.org/1</link><description>plain</description>"
        b"<content:encoded><![CDATA[<p>rich</p>]]></content:encoded>"
        b"<dc:creator>Ann</dc:creator><dc:subject>topic</dc:subject>"
        b"<dc:date>2024-03-05T16:45:00-04:00</dc:date></item></rdf:RDF>"
    ),
    "atom: text kinds": atom(
        '<entry><id>1</id><title type="html">Caf&amp;eacute; &lt;b&gt;Bold&lt;/b&gt;</title>'
        '<updated>2024-02-01T00:00:00Z</updated><summary type="text">1 &lt; 2</summary>'
        '<content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><p>x<b>y</b></p>'
        "</div></content></entry>"
        '<entry><id>2</id><title type="text">Plain &lt;tag&gt;</title>'
        '<updated>2024-02-02T00:00:00Z</updated><content type="text">a &amp; b</content>'
        "</entry>"
        "<entry><id>3</id><title>T3</title><published>2024-02-03T00:00:00+08:00</published>"
        '<updated>2024-02-03T00:00:00+08:00</updated><content type="html">'
        "&lt;p&gt;same dates&lt;/p&gt;</content></entry>"
    ),
    "atom: links, authors, categories": atom(
        "<entry><id>1</id><title>L</title><updated>2024-02-01T00:00:00Z</updated>"
        '<link rel="alternate" href="/posts/1"/><link rel="enclosure" href="/f.pdf"'
        ' type="application/pdf" length="99"/><link rel="related" href="/other"/>'
        "<author><email>only@example.org</email></author>"
        '<category term="t1"/><category term="t2" label="Two"/></entry>'
        "<entry><id>2</id><title>No author</title><updated>2024-02-02T00:00:00Z</updated>"
        '<link href="https://site.example.org/2"/></entry>',
        head="<author><name>Feed Author</name></author>",
    ),
    "atom 0.3": (
        b'<?xml version="1.0"?><feed version="0.3" xmlns="http://purl.org/atom/ns#">'
        b'<title>Old Atom</title><link rel="alternate" type="text/html"'
        b' href="https://a03.example.org/"/><modified>2024-01-01T00:00:00Z</modified>'
        b"<entry><title>E</title><id>urn:e</id>"
        b'<link rel="alternate" type="text/html" href="https://a03.example.org/e"/>'
        b"<issued>2024-01-01T00:00:00Z</issued><modified>2024-01-02T00:00:00Z</modified>"
        b'<content type="text/html" mode="escaped">&lt;p&gt;hi&lt;/p&gt;</content></entry>'
        b"</feed>"
    ),
    "malformed: undefined HTML entity": rss(
        "<item><guid>1</guid><title>a&nbsp;b &copy;</title></item>"
    ),
    "malformed: unclosed element": rss("<item><guid>1</guid><title>open</item>"),
    "xml:base": atom(
        '<entry xml:base="https://other.example.org/dir/"><id>1</id><title>B</title>'
        '<updated>2024-02-01T00:00:00Z</updated><link href="page"/>'
        '<content type="html">&lt;img src="pic.png"&gt;</content></entry>'
    ),
}
FILES = sorted(p.name for p in FEEDS.iterdir() if p.suffix in {".xml", ".rdf"})

_TAG = re.compile(r'<([a-zA-Z][\w-]*)((?:\s+[\w:-]+="[^"]*")+)\s*(/?)>')
_ATTR = re.compile(r'[\w:-]+="[^"]*"')


def _attributes_sorted(html: str) -> str:
    return _TAG.sub(lambda m: f"<{m[1]} {' '.join(sorted(_ATTR.findall(m[2])))}{m[3]}>", html)


def comparable(entries: list[Entry]) -> list[Entry]:
    return [
        dataclasses.replace(
            e,
            content=_attributes_sorted(e.content),
            summary=_attributes_sorted(e.summary),
            digest="",
        )
        for e in entries
    ]


def processed(body: bytes, *, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    reference = parse_module.read_xml

    def read_xml(data: bytes, url: str, content_type: str = "", **_: Any) -> Any:
        return reference(data, url, content_type, fast=fast)

    with monkeypatch.context() as patch:
        patch.setattr(parse_module, "read_xml", read_xml)
        source = Source(name="src", url=URL, tags=["t"])
        return process(source, body, URL, "application/xml", NOW)


def _body(case: str) -> bytes:
    return CASES[case] if case in CASES else (FEEDS / case).read_bytes()


@pytest.mark.parametrize("case", [*FILES, *CASES])
def test_both_readers_give_the_same_entries(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _body(case)
    fast = processed(body, fast=True, monkeypatch=monkeypatch)
    slow = processed(body, fast=False, monkeypatch=monkeypatch)
    assert fast.entries, "a case must have entries, or it compares nothing"
    assert comparable(fast.entries) == comparable(slow.entries)
    assert (fast.ttl, fast.id_mode, fast.future_dated) == (
        slow.ttl,
        slow.id_mode,
        slow.future_dated,
    )


@pytest.mark.parametrize("case", [*FILES, *CASES])
def test_feed_level_fields_agree(case: str) -> None:
    body = _body(case)
    fast = parse_module.parse_xml_feed(body, URL, "application/xml", fast=True)
    slow = parse_module.parse_xml_feed(body, URL, "application/xml", fast=False)
    assert (fast.title, fast.link, fast.format, fast.ttl, fast.base) == (
        slow.title,
        slow.link,
        slow.format,
        slow.ttl,
        slow.base,
    )


@pytest.mark.parametrize(
    "case", ["malformed: undefined HTML entity", "malformed: unclosed element", "xml:base"]
)
def test_documents_the_fast_reader_cannot_take_go_to_feedparser(case: str) -> None:
    doc = parse_module.read_xml(parse_module.harden_prolog(CASES[case]), URL)
    assert type(doc).__module__.startswith("feedparser.")  # feedparser's dict, not feedparser_rs


def test_well_formed_documents_take_the_fast_reader() -> None:
    for name in FILES:
        body = parse_module.harden_prolog(parse_module.to_utf8((FEEDS / name).read_bytes()).data)
        assert isinstance(parse_module.read_xml(body, URL), feedparser_rs.FeedParserDict), name


def test_each_author_keeps_only_its_own_fields() -> None:
    body = atom(
        "<entry><id>3</id><title>Two authors</title><updated>2024-02-03T00:00:00Z</updated>"
        "<author><name>One</name><email>one@example.org</email></author>"
        "<author><name>Two</name><uri>https://two.example.org/</uri></author></entry>"
    )
    (entry,) = parse_module.parse_xml_feed(body, URL).entries
    assert entry.authors == (
        Author(name="One", email="one@example.org"),
        Author(name="Two", uri="https://two.example.org/"),
    )
