"""`aggregator.parse`: bytes → `ParsedFeed` for every format; non-feeds → `ParseError` naming the
URL. Values checked against tests/data/feeds/MANIFEST.md."""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from aggregator.bounded import ParsePool
from aggregator.dates import CHINA_TZ
from aggregator.errors import ParseError
from aggregator.models import Author, Enclosure, ParsedFeed
from aggregator.parse import default_zone, harden_prolog, parse
from tests.conftest import FEEDS

BASE = "https://feeds.example.org/"

GBK_TITLES = [
    "一季度城镇新增就业稳步增长",
    "外贸出口保持韧性 多地稳订单拓市场",
    "春耕备耕有序推进 农业生产开局良好",
]


def fixture(name: str, content_type: str | None = None) -> ParsedFeed:
    if content_type is None:
        content_type = "application/feed+json" if name.endswith(".json") else "application/xml"
    return parse((FEEDS / name).read_bytes(), url=BASE + name, content_type=content_type)


# --- format detection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "title", "link", "count"),
    [
        ("rss2.xml", "rss20", "Example Tech News", "https://tech.example.org/", 3),
        ("atom.xml", "atom10", "Example Science Blog", "https://science.example.org/", 3),
        ("rss1.rdf", "rss10", "Example RDF Journal", "https://rdf.example.org/", 2),
        ("feed.json", "json11", "Example JSON Feed", "https://json.example.org/", 3),
        (
            "gbk.xml",
            "rss20",
            "经济日报新闻",
            "https://finews.example.cn/category/jingjiribao.html",
            3,
        ),
    ],
)
def test_format_detected(name: str, fmt: str, title: str, link: str, count: int) -> None:
    feed = fixture(name)
    assert feed.format == fmt
    assert feed.title == title
    assert feed.link == link
    assert len(feed.entries) == count


@pytest.mark.parametrize("content_type", ["", "application/octet-stream", "text/plain"])
def test_json_feed_detected_by_body_without_json_header(content_type: str) -> None:
    feed = fixture("feed.json", content_type)
    assert feed.format == "json11"
    assert [e.guid for e in feed.entries] == [
        "https://json.example.org/items/3",
        "https://json.example.org/items/2",
        "https://json.example.org/items/1",
    ]


def test_json_feed_with_utf8_bom() -> None:
    body = b"\xef\xbb\xbf" + (FEEDS / "feed.json").read_bytes()
    feed = parse(body, url=BASE + "feed.json")
    assert feed.format == "json11"
    assert len(feed.entries) == 3


RSS092 = b"""<?xml version="1.0"?>
<rss version="0.92"><channel><title>Old RSS</title><link>https://old.example.org/</link>
<description>d</description>
<item><title>Item</title><link>https://old.example.org/1</link><description>x</description></item>
</channel></rss>"""

ATOM03 = b"""<?xml version="1.0"?>
<feed version="0.3" xmlns="http://purl.org/atom/ns#"><title>Old Atom</title>
<link rel="alternate" type="text/html" href="https://old.example.org/"/>
<modified>2004-01-01T00:00:00Z</modified>
<entry><title>E</title><id>tag:old.example.org,2004:1</id>
<link rel="alternate" type="text/html" href="https://old.example.org/e"/>
<issued>2004-01-01T10:00:00+01:00</issued><modified>2004-01-01T10:00:00+01:00</modified></entry>
</feed>"""


@pytest.mark.parametrize(
    ("body", "fmt", "title", "link"),
    [
        (RSS092, "rss092", "Item", "https://old.example.org/1"),
        (ATOM03, "atom03", "E", "https://old.example.org/e"),
    ],
)
def test_older_formats_detected(body: bytes, fmt: str, title: str, link: str) -> None:
    feed = parse(body, url=BASE + "old.xml", content_type="application/xml")
    assert feed.format == fmt
    assert [(e.title, e.link) for e in feed.entries] == [(title, link)]


# --- what each fixture's entries hold (per MANIFEST.md) ------------------------------------


def test_rss2_entries() -> None:
    feed = fixture("rss2.xml")
    first, second, third = feed.entries
    assert first.guid == first.link == "https://tech.example.org/posts/podcast-ep1"
    assert first.enclosures == (
        Enclosure("https://tech.example.org/audio/ep1.mp3", "audio/mpeg", 123456),
    )
    assert first.published == datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    assert second.guid == "tech-example-org-item-0002"
    assert second.link == "https://tech.example.org/posts/memory-safe-drivers"
    assert second.published is not None
    assert second.published.isoformat() == "2024-02-20T14:30:00-05:00"
    # content:encoded is raw HTML here: sanitizing is normalize's job, not parse's.
    assert second.content.startswith("<p>Hobby kernel authors")
    assert "<script>" in second.content
    # Relative URLs are resolved in normalize, against the URL the feed came from
    # (RFC 3986 §5.1.3), which parse hands on as the feed's base.
    assert 'src="/img/a.png"' in second.content
    assert feed.base == BASE + "rss2.xml"
    assert second.summary.startswith("<p>Drivers written in memory-safe languages")
    assert third.authors == (Author(name="Ed Itor", email="editor@example.org"),)
    assert third.categories == ("Python",)


def test_rss2_item_without_updated_has_no_updated_date() -> None:
    """feedparser 6's FeedParserDict.get("updated") falls back to "published" with a
    DeprecationWarning (feedparser issue 310). An RSS item has only pubDate: updated is None, and
    no warning escapes (the suite runs with warnings as errors)."""
    body = (FEEDS / "rss2.xml").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feed = parse(body, url=BASE + "rss2.xml", content_type="application/xml")
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == []
    assert [e.updated for e in feed.entries] == [None, None, None]
    assert all(e.published is not None for e in feed.entries)


def test_atom_entries() -> None:
    first, second, third = fixture("atom.xml").entries
    assert first.guid == "tag:science.example.org,2024:entry-3"
    assert first.summary == ("A short survey of what survives in shallow pools after a cold month.")
    assert first.published is not None and first.updated is not None
    assert first.published.isoformat() == "2024-04-18T07:15:00-07:00"
    assert first.updated.isoformat() == "2024-04-19T09:45:00-07:00"
    assert second.title == "Observatory Notes: مرحبا بالعالم 🔭"
    # entries without <summary>: feedparser copies the content there; parse drops the copy
    assert second.summary == ""
    assert second.content.startswith("<p>Clear skies tonight.")
    # type="html" title stays HTML until normalize renders it as text
    assert third.title == "Caf&eacute; <b>Bold</b> Roasts and Their Chemistry"
    assert third.published is not None
    assert third.published.isoformat() == "2024-02-10T11:00:00+02:00"


def test_rss1_entries() -> None:
    first, second = fixture("rss1.rdf").entries
    assert first.guid == first.link == "https://rdf.example.org/articles/2"
    assert first.authors == (Author(name="Bob Example"),)
    # An item's only date, dc:date, is when it was published (feedparser calls it "updated")
    assert first.updated is None
    assert first.published is not None
    assert first.published.isoformat() == "2024-03-05T16:45:00-04:00"
    assert second.published is not None
    assert second.published.isoformat() == "2024-03-01T09:30:00+09:00"
    assert second.summary == (
        "<p>Subject, predicate, object: a simple model that keeps turning up.</p>"
    )


def test_json_feed_entries() -> None:
    first, second, third = fixture("feed.json").entries
    jay = (Author(name="Jay Son", uri="https://json.example.org/about"),)
    assert [e.authors for e in (first, second, third)] == [jay, jay, jay]
    # content_html wins over content_text
    assert first.content.startswith("<p>This item carries <em>both</em> HTML and text.</p>")
    assert second.content == (
        "<p>Nothing fancy here, just a plain text note with an attached PDF.</p>"
    )
    assert second.enclosures == (
        Enclosure("https://json.example.org/files/a.pdf", "application/pdf", 2048),
    )
    assert second.updated == datetime(2024, 5, 13, 8, 30, tzinfo=UTC)
    assert first.published is not None
    assert first.published.isoformat() == "2024-05-14T18:45:00-03:00"
    assert third.categories == ("alpha", "beta")
    assert third.published is not None
    assert third.published.utcoffset() == timedelta(hours=5, minutes=30)


# --- GBK -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/xml",
        "application/rss+xml",
        "text/xml; charset=gbk",
        "",
        # A server lying about the charset: feedparser 6.0.14 tries the header's charset first,
        # fails on the GBK bytes, and falls back to the XML declaration (bozo=True,
        # CharacterEncodingOverride). The text still comes out right.
        "text/xml; charset=utf-8",
        # Bare text/xml means us-ascii by RFC 3023; same fallback.
        "text/xml",
    ],
)
def test_gbk_decoded(content_type: str) -> None:
    feed = fixture("gbk.xml", content_type)
    assert feed.format == "rss20"
    assert feed.title == "经济日报新闻"
    assert [e.title for e in feed.entries] == GBK_TITLES
    first = feed.entries[0]
    assert first.categories == ("财经",)
    assert "湖南：多渠道拓宽就业岗位" in first.summary
    assert '<p class="em_media">（文章来源：经济日报）</p>' in first.summary
    assert first.published is not None
    assert first.published.isoformat() == "2022-04-05T05:50:27+08:00"
    assert "\ufffd" not in "".join(e.title + e.summary for e in feed.entries)


# --- JSON Feed 1.0 and content_text ----------------------------------------------------------

JSON_FEED_10 = {
    "version": "https://jsonfeed.org/version/1",
    "title": "Old JSON Feed",
    "home_page_url": "https://old-json.example.org/",
    "author": {"name": "Ann Author", "url": "https://old-json.example.org/ann"},
    "items": [
        {
            "id": 1,
            "url": "https://old-json.example.org/1",
            "title": "Item <one> & friends",
            "content_text": 'First line\nsecond line\n\n<script>alert(1)</script> & "more"',
            "date_published": "2020-01-02T03:04:05+01:00",
        },
        {
            "id": "2",
            "external_url": "https://elsewhere.example.org/2",
            "title": "Item two",
            "content_html": "<p>two</p>",
            "author": {"name": "Ivy Item"},
        },
        {"id": True, "title": "bool id is not an id", "content_text": "x"},
        "not an object",
    ],
}


def test_json_feed_10() -> None:
    feed = parse(json.dumps(JSON_FEED_10).encode(), url=BASE + "old.json")
    assert feed.format == "json1"
    assert feed.title == "Old JSON Feed"
    assert feed.link == "https://old-json.example.org/"
    first, second, third = feed.entries  # the non-object item is skipped
    # 1.0's single `author` object is read, at feed level and at item level
    assert first.authors == (Author(name="Ann Author", uri="https://old-json.example.org/ann"),)
    assert second.authors == (Author(name="Ivy Item"),)
    assert first.guid == "1"  # numeric id kept as text
    assert second.guid == "2"
    assert third.guid == ""
    assert second.link == "https://elsewhere.example.org/2"  # external_url when no url
    assert first.published == datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    # JSON titles are plain text: escaped so that normalize renders them back as written
    assert first.title == "Item &lt;one&gt; &amp; friends"


def test_content_text_becomes_escaped_paragraphs() -> None:
    first = parse(json.dumps(JSON_FEED_10).encode(), url=BASE + "old.json").entries[0]
    assert first.content == (
        '<p>First line<br>second line</p><p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; "more"</p>'
    )


def test_content_text_windows_newlines_and_blank_blocks() -> None:
    body = json.dumps(
        {
            "version": "https://jsonfeed.org/version/1.1",
            "items": [{"id": "a", "content_text": "one\r\ntwo\r\n\r\n\r\n\r\nthree\n\n  \n\n"}],
        }
    ).encode()
    (entry,) = parse(body, url=BASE + "crlf.json").entries
    assert entry.content == "<p>one<br>two</p><p>three</p>"


# --- not feeds -----------------------------------------------------------------------------

HTML_PAGE = b"""<!DOCTYPE html>
<html><head><title>Welcome</title></head><body><h1>Not a feed</h1><p>Hello.</p></body></html>"""


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (HTML_PAGE, "text/html; charset=utf-8", "not an RSS, Atom or JSON feed"),
        (HTML_PAGE, "", "not an RSS, Atom or JSON feed"),
        (b"", "", "not an RSS, Atom or JSON feed"),
        (b"", "application/feed+json", "not valid JSON"),
        (b"just some text", "text/plain", "not an RSS, Atom or JSON feed"),
        (b'{"version": "https://jsonfeed.org/version/1.1", "items": [', "", "not valid JSON"),
        (b"{\xff\xfe}", "application/json", "not valid JSON"),
        (b'{"title": "no version", "items": []}', "application/json", "JSON Feed version"),
        (b'{"version": "1.1", "items": []}', "application/json", "JSON Feed version"),
        (b"[1, 2, 3]", "application/json", "JSON Feed version"),
        (b'{"version": "https://jsonfeed.org/version/1.1"}', "", "without an items list"),
    ],
    ids=[
        "html",
        "html-no-type",
        "empty",
        "empty-json",
        "text",
        "broken-json",
        "not-utf8-json",
        "json-no-version",
        "json-bad-version",
        "json-array",
        "json-no-items",
    ],
)
def test_not_a_feed(body: bytes, content_type: str, reason: str) -> None:
    url = "https://bad.example.org/path/feed?x=1"
    with pytest.raises(ParseError) as caught:
        parse(body, url=url, content_type=content_type)
    err = caught.value
    assert err.url == url
    assert url in str(err)
    assert reason in str(err)
    assert str(err).startswith(f"parse {url}: ")


# --- encodings Chinese sources get wrong (the "Polling" issue) --------------------------------
# Fixture bytes are built here; aggregator/charset.py decides, feedparser gets UTF-8.

ZH_TITLES = [
    "朱镕基会见外宾",
    "王堃获得国家科技奖",
    "一季度城镇新增就业稳步增长",
]  # 镕 堃: not GB2312
TW_TITLES = ["臺灣經濟穩定成長", "碁盤與圍棋文化", "外貿出口保持韌性"]  # 碁: cp950's ETEN extension


def chinese_rss(
    titles: list[str],
    declared: str | None,
    *,
    channel: str = "财经频道",
    language: str | None = "zh-cn",
    dates: list[str] | None = None,
) -> str:
    encoding = f' encoding="{declared}"' if declared else ""
    lang = f"<language>{language}</language>" if language else ""
    items = "".join(
        f"<item><title>{title}</title><link>https://finews.example.cn/{i}</link>"
        f"<pubDate>{(dates or [])[i] if i < len(dates or []) else '2024年01月02日 08:30'}</pubDate>"
        f"<description>&lt;p&gt;{title}。&lt;/p&gt;</description></item>"
        for i, title in enumerate(titles)
    )
    return (
        f'<?xml version="1.0"{encoding}?>\n<rss version="2.0"><channel><title>{channel}</title>'
        f"<link>https://finews.example.cn/</link>{lang}{items}</channel></rss>"
    )


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (chinese_rss(ZH_TITLES, "gb2312").encode("gbk"), "application/rss+xml"),
        (chinese_rss(ZH_TITLES, "utf-8").encode("gbk"), "application/rss+xml"),
        (chinese_rss(ZH_TITLES, None).encode("gbk"), ""),
        (chinese_rss(ZH_TITLES, None, language=None).encode("gbk"), "application/xml"),
        (chinese_rss(ZH_TITLES, "gbk").encode("gbk"), "text/xml; charset=utf-8"),
        (chinese_rss(ZH_TITLES, "utf-8").encode("utf-8"), "text/xml; charset=gbk"),
        (chinese_rss(ZH_TITLES, "gbk").encode("utf-8"), "text/xml; charset=gbk"),
        (chinese_rss(ZH_TITLES, "gbk").encode("gbk"), "text/xml; charset=iso-8859-1"),
    ],
    ids=[
        "gbk-declared-gb2312",
        "gbk-declared-utf8",
        "gbk-undeclared",
        "gbk-undeclared-no-language",
        "http-utf8-declared-gbk",
        "http-gbk-bytes-utf8",
        "http-gbk-declared-gbk-bytes-utf8",
        "http-latin1-declared-gbk",
    ],
)
def test_chinese_titles_exactly_right(body: bytes, content_type: str) -> None:
    feed = parse(body, url=BASE + "zh.xml", content_type=content_type)
    assert feed.format == "rss20"
    assert feed.title == "财经频道"
    assert [e.title for e in feed.entries] == ZH_TITLES
    assert [e.summary for e in feed.entries] == [f"<p>{t}。</p>" for t in ZH_TITLES]
    # A Chinese feed's dates with no zone are China's, also when only the bytes say Chinese.
    assert {e.published for e in feed.entries} == {datetime(2024, 1, 2, 8, 30, tzinfo=CHINA_TZ)}


@pytest.mark.parametrize("content_type", ["text/xml", "text/xml; charset=big5", ""])
def test_big5_titles_exactly_right(content_type: str) -> None:
    body = chinese_rss(TW_TITLES, "big5", channel="財經頻道", language="zh-tw").encode("cp950")
    feed = parse(body, url=BASE + "tw.xml", content_type=content_type)
    assert feed.title == "財經頻道"
    assert [e.title for e in feed.entries] == TW_TITLES


def test_gbk_fixture_still_strictly_parsed_with_every_header() -> None:
    for content_type in ("text/xml", "text/xml; charset=utf-8", "text/html", ""):
        assert [e.title for e in fixture("gbk.xml", content_type).entries] == GBK_TITLES


def test_gb2312_labelled_fixture() -> None:
    """tests/data/feeds/MANIFEST.md, gb2312-labelled.xml: GBK bytes labelled gb2312, dates in
    the forms Chinese sources write, which feedparser alone gets wrong."""
    feed = fixture("gb2312-labelled.xml")
    assert feed.title == "科技人物周刊"
    assert [e.title for e in feed.entries] == [
        "朱镕基图书馆新馆开放",
        "王堃团队发布新型电池材料",
        "春季科普活动周启动",
    ]
    assert [e.published.isoformat() if e.published else None for e in feed.entries] == [
        "2024-03-05T08:30:00+08:00",
        "2024-03-04T21:15:00+08:00",
        "2024-03-04T09:00:00+08:00",
    ]
    assert feed.entries[1].summary == "<p>新材料在低温下仍能保持较高容量。</p>"


# --- dates as Chinese sources write them --------------------------------------------------------


def test_chinese_dates_from_the_raw_strings() -> None:
    """feedparser puts 2024年01月01日 and 2024/1/1 in the current month and reads CST as US
    Central; the raw strings are read instead."""
    dates = [
        "2024年01月01日",
        "2024/1/1 8:30:00",
        "Tue, 05 Apr 2022 05:50:27 CST",
        "2024-01-01 08:30:00",
        "2024-01-01T08:30:00+09:00",
    ]
    body = chinese_rss(["一", "二", "三", "四", "五"], "utf-8", dates=dates).encode()
    published = [e.published for e in parse(body, url=BASE + "d.xml").entries]
    assert [p.isoformat() if p else None for p in published] == [
        "2024-01-01T00:00:00+08:00",
        "2024-01-01T08:30:00+08:00",
        "2022-04-05T05:50:27+08:00",
        "2024-01-01T08:30:00+08:00",
        "2024-01-01T08:30:00+09:00",  # a zone written is a zone kept
    ]


def test_dates_without_zone_are_utc_in_a_feed_that_is_not_chinese() -> None:
    body = chinese_rss(["a"], "utf-8", language="en-us", channel="News", dates=["2024/1/1 8:30"])
    (entry,) = parse(body.replace("a</title>", "a</title>").encode(), url=BASE + "e.xml").entries
    assert entry.published == datetime(2024, 1, 1, 8, 30, tzinfo=UTC)


def test_atom_xml_lang_and_json_feed_language_choose_the_zone() -> None:
    atom = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="zh-CN"><title>T</title><id>tag:x</id>
<updated>2024-01-01T00:00:00Z</updated><entry><id>tag:e</id><title>E</title>
<updated>2024-01-01 08:30:00</updated></entry></feed>"""
    (entry,) = parse(atom, url=BASE + "a.xml").entries
    assert entry.updated == datetime(2024, 1, 1, 8, 30, tzinfo=CHINA_TZ)
    jf = {
        "version": "https://jsonfeed.org/version/1.1",
        "language": "zh-Hans",
        "items": [{"id": "1", "date_published": "2024-01-01T08:30:00"}],
    }
    (item,) = parse(json.dumps(jf).encode(), url=BASE + "j.json").entries
    assert item.published == datetime(2024, 1, 1, 8, 30, tzinfo=CHINA_TZ)


@pytest.mark.parametrize(
    ("language", "encoding", "zone"),
    [
        ("zh-cn", "utf-8", CHINA_TZ),
        ("zh-TW", "", CHINA_TZ),
        ("ZH", "", CHINA_TZ),
        ("en-us", "gb18030", CHINA_TZ),
        ("", "big5hkscs", CHINA_TZ),
        ("en", "utf-8", UTC),
        ("", "", UTC),
    ],
)
def test_default_zone(language: str, encoding: str, zone: timezone) -> None:
    assert default_zone(language, encoding) == zone


# --- DOCTYPEs cannot blow up the parser -------------------------------------------------------
# feedparser 6.0.14 on a 200 KB feed defining one 50 KB entity referenced 50,000 times ran 46 s
# and reached 2.4 GB: expat refuses the amplification, the loose parser then expands it. Each
# case here is parsed in a bounded worker (256 MiB of address space, 2 s) to prove it is cheap.


def tail(references: int) -> str:
    return (
        '<rss version="2.0"><channel><title>经济日报</title><item><title>条目</title>'
        "<description>" + "&big;" * references + "</description></item></channel></rss>"
    )


# 5,000 references of 50 KB would still be 250 MB expanded: past the pool's bound.
TAIL = tail(5_000)
BIG = "x" * 50_000
LAUGHS = '<!ENTITY lol0 "lol">' + "".join(
    f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
)
ATTACKS = {
    "50k-references": (
        f'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY big "{BIG}">\n]>\n{tail(50_000)}'
    ),
    "billion-laughs": (
        f'<?xml version="1.0"?>\n<!DOCTYPE rss [{LAUGHS}]>\n<rss version="2.0"><channel>'
        "<title>经济日报</title><item><title>条目</title><description>"
        + "&lol9;" * 100
        + "</description></item></channel></rss>"
    ),
    # feedparser re-inserts an "<!ENTITY" line found anywhere before the root element
    "in-a-comment": (
        f'<?xml version="1.0"?>\n<!DOCTYPE rss>\n<!--\n<!ENTITY big "{BIG}">\n-->\n{TAIL}'
    ),
    "outside-the-doctype": f'<?xml version="1.0"?>\n<!DOCTYPE rss>\n<!ENTITY big "{BIG}">\n{TAIL}',
    "in-the-declaration": f'<?xml version="1.0"\n<!ENTITY big "{BIG}" ?>\n<!DOCTYPE rss>\n{TAIL}',
    "in-a-literal": (
        f'<?xml version="1.0"?>\n<!DOCTYPE rss SYSTEM \'\n<!ENTITY big "{BIG}">\n\'>\n{TAIL}'
    ),
    "in-a-pi": f'<?xml version="1.0"?>\n<?php\n<!ENTITY big "{BIG}">\n?>\n<!DOCTYPE rss>\n{TAIL}',
    "parameter-entity": (
        f'<?xml version="1.0"?>\n<!DOCTYPE rss [<!ENTITY % p "<!ENTITY big \'{BIG}\'>"> %p;]>\n'
        + TAIL
    ),
}


@pytest.fixture(scope="module")
def small_pool() -> Iterator[ParsePool]:
    with ParsePool(1, seconds=2, memory_bytes=256 << 20) as pool:
        pool.submit(parse, b"<rss version='2.0'><channel/></rss>", BASE).result()  # warm
        yield pool


@pytest.mark.parametrize("name", list(ATTACKS))
def test_entity_blow_ups_are_cheap(small_pool: ParsePool, name: str) -> None:
    body = ATTACKS[name].encode("utf-8")
    started = time.monotonic()
    feed = asyncio.run(small_pool.run(BASE + "bomb.xml", parse, body, BASE + "bomb.xml"))
    assert time.monotonic() - started < 2
    assert feed.title == "经济日报"
    assert [e.title for e in feed.entries] == ["条目"]
    # Nothing expanded: a reference is at most kept as text (the loose parser writes "&amp;big").
    summary = feed.entries[0].summary
    assert "xxxxxxxxxx" not in summary
    assert len(summary) <= 2 * len(body)


def test_short_entities_survive_the_rebuilt_subset() -> None:
    body = b"""<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE rss [
  <!-- HTML entities a CMS declared for itself -->
  <!ENTITY nbsp "&#160;">
  <!ENTITY mdash '&#x2014;'>
  <!ENTITY co "Co.">
  <!ENTITY long "far longer than the reference that names it">
  <!ENTITY ext SYSTEM "file:///etc/passwd">
  <!ENTITY nbsp "first declaration wins">
]>
<rss version="2.0"><channel><title>A&nbsp;B&mdash;C &co; [&long;] [&ext;]</title>
<item><title>i</title></item></channel></rss>"""
    assert parse(body, url=BASE + "ent.xml").title == "A\xa0B\u2014C Co. [] []"


def test_rebuilt_prolog() -> None:
    body = (
        b"\n<?xml version='1.0' encoding='utf-8'?>\n<?xml-stylesheet href='s.xsl'?>\n"
        b'<!-- c --><!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
        b"'http://my.netscape.com/publish/formats/rss-0.91.dtd' [\n<!ENTITY a ']>'>\n"
        b"<!ELEMENT rss ANY>\n<!ATTLIST rss version CDATA '0.91'>\n%pe;\n]>\n<rss>]]></rss>"
    )
    assert harden_prolog(body) == (
        b'<?xml version="1.0" encoding="utf-8"?>\n'
        b'<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
        b"'http://my.netscape.com/publish/formats/rss-0.91.dtd' [\n"
        b'<!ENTITY a "">\n]>\n<rss>]]></rss>'
    )
    assert harden_prolog(b"<rss/>") == b'<?xml version="1.0" encoding="utf-8"?>\n<rss/>'


def test_netscape_rss091_still_recognised() -> None:
    body = b"""<?xml version="1.0"?>
<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN"
 "http://my.netscape.com/publish/formats/rss-0.91.dtd">
<rss version="0.91"><channel><title>Caf&eacute;</title><link>https://n.example.org/</link>
<description>d</description><language>en</language>
<item><title>i</title><link>https://n.example.org/1</link></item></channel></rss>"""
    feed = parse(body, url=BASE + "n.xml")
    assert (feed.format, feed.title) == ("rss091n", "Café")


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY big "x"><rss version="2.0"></rss>',
        b'<?xml version="1.0"?><!DOCTYPE rss [<!-- <rss version="2.0"><channel/></rss>',
        b'<?xml version="1.0"?><!DOCTYPE rss SYSTEM "<rss version=\'2.0\'><channel/></rss>',
    ],
    ids=["unclosed-subset", "unclosed-comment", "unclosed-literal"],
)
def test_unclosed_doctype_swallows_the_document(body: bytes) -> None:
    with pytest.raises(ParseError, match="not an RSS, Atom or JSON feed"):
        parse(body, url=BASE + "broken.xml")


def test_atom_03_base64_text_is_decoded() -> None:
    body = (
        b'<?xml version="1.0" encoding="utf-8"?>\n<feed version="0.3" xmlns="http://purl.org/atom/ns#">'
        b"<title>T</title><entry><id>tag:x.example,2004:1</id>"
        b'<title type="text/plain" mode="base64">SGVsbG8g5LiW55WM</title>'
        b'<link rel="alternate" type="text/html" href="http://x.example/1"/>'
        b"<issued>2004-01-01T00:00:00Z</issued></entry></feed>"
    )
    (entry,) = parse(body, "http://x.example/feed", "application/xml").entries
    assert entry.title == "Hello 世界"
