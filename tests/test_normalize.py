"""`aggregator.normalize`: golden pairs for every fixture feed, then ids, filters, XML-safe text
and sanitizing on plain values.

Golden pairs (the lemon24/reader style: tests/data/full.rss beside the expected result): each
tests/data/feeds/<fixture> has tests/data/golden/<fixture>.json, the list of `Entry.to_dict()`
that parse + normalize must produce for it. Every value in them was checked by hand against
tests/data/feeds/MANIFEST.md and the fixture itself.

To regenerate after an intended change:

    UPDATE_GOLDEN=1 /tmp/venv/bin/python -m pytest tests/test_normalize.py -k golden

then read `git diff tests/data/golden` field by field before committing: a wrong value is a
bug to fix in the code, never one to bless in the golden file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import Source
from aggregator.models import Author, Enclosure, Entry, ParsedEntry, ParsedFeed
from aggregator.normalize import entry_id, normalize, plain_text, sanitize
from aggregator.parse import parse
from tests.conftest import DATA, FEEDS

GOLDEN = DATA / "golden"
FETCHED_AT = datetime(2024, 6, 1, tzinfo=UTC)
TAGS = ("t1", "标签")
FIXTURES = ["rss2.xml", "atom.xml", "rss1.rdf", "feed.json", "gbk.xml"]


def fixture_url(name: str) -> str:
    return f"https://feeds.example.org/{name}"


def content_type(name: str) -> str:
    """What the test server (tests/conftest.py) sends for this file."""
    return "application/feed+json" if name.endswith(".json") else "application/xml"


def source(name: str = "src", url: str = "https://feeds.example.org/x", **extra: Any) -> Source:
    return Source(name=name, url=url, tags=TAGS, **extra)


def run(name: str, src: Source | None = None) -> list[Entry]:
    url = fixture_url(name)
    feed = parse((FEEDS / name).read_bytes(), url=url, content_type=content_type(name))
    return normalize(src or source(url=url), feed, feed_url=url, fetched_at=FETCHED_AT)


def normalized(name: str) -> list[dict[str, Any]]:
    return [entry.to_dict() for entry in run(name)]


def load_golden(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((GOLDEN / f"{name}.json").read_text("utf-8"))
    return data


def write_golden(name: str, actual: list[dict[str, Any]]) -> None:
    path = GOLDEN / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(actual, ensure_ascii=False, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")


# --- golden pairs --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_golden(name: str) -> None:
    actual = normalized(name)
    if os.environ.get("UPDATE_GOLDEN"):
        write_golden(name, actual)
        pytest.skip(f"rewrote tests/data/golden/{name}.json; review the diff")
    assert actual == load_golden(name)


@pytest.mark.parametrize("name", FIXTURES)
def test_golden_files_are_sane(name: str) -> None:
    """Invariants of the expected files themselves, so a careless rewrite cannot bless junk."""
    golden = load_golden(name)
    assert golden, name
    assert len({e["id"] for e in golden}) == len(golden)
    for entry in golden:
        assert Entry.from_dict(entry).to_dict() == entry
        assert entry["title"] and "<" not in entry["title"] and "&" not in entry["title"]
        assert entry["link"].startswith("https://")
        html_fields = entry["content"] + entry["summary"]
        for bad in ("<script", "<style", "onclick", "onerror", "javascript:", 'src="/'):
            assert bad not in html_fields, (entry["id"], bad)
        for field in ("published", "updated"):
            if entry[field] is not None:
                assert datetime.fromisoformat(entry[field]).tzinfo is not None
        assert entry["first_seen"] == "2024-06-01T00:00:00+00:00"
        assert (entry["source"], entry["category"], entry["tags"]) == ("src", "src", list(TAGS))


def test_golden_highlights() -> None:
    """The values the golden files exist for, spelled out."""
    atom = load_golden("atom.xml")
    assert atom[2]["title"] == "Café Bold Roasts and Their Chemistry"
    assert atom[1]["title"] == "Observatory Notes: مرحبا بالعالم 🔭"
    assert atom[0]["summary"] == (
        "A short survey of what survives in shallow pools after a cold month."
    )
    assert atom[0]["updated"] == "2024-04-19T09:45:00-07:00"
    sam = {
        "name": "Dr. Sam Sample",
        "email": "sam@science.example.org",
        "uri": "https://science.example.org/about",
    }
    assert [e["authors"] for e in atom] == [[sam]] * 3

    gbk = load_golden("gbk.xml")
    assert gbk[0]["published"] == "2022-04-05T05:50:27+08:00"
    assert gbk[0]["categories"] == ["财经"]
    assert '<p class="em_media">（文章来源：经济日报）</p>' in gbk[0]["content"]
    assert "onclick" not in gbk[1]["content"] and "alert" not in gbk[1]["content"]

    rss2 = load_golden("rss2.xml")
    assert rss2[1]["published"] == "2024-02-20T14:30:00-05:00"
    assert [e["updated"] for e in rss2] == [None, None, None]
    assert (
        '<img src="https://feeds.example.org/img/a.png" alt="layer diagram">'
        in (rss2[1]["content"])
    )
    assert rss2[0]["enclosures"] == [
        {"url": "https://tech.example.org/audio/ep1.mp3", "type": "audio/mpeg", "length": 123456}
    ]
    assert rss2[2]["authors"] == [{"name": "Ed Itor", "email": "editor@example.org"}]

    rdf = load_golden("rss1.rdf")
    assert [(e["published"], e["updated"]) for e in rdf] == [
        ("2024-03-05T16:45:00-04:00", None),  # an item's only date is its publication
        ("2024-03-01T09:30:00+09:00", None),
    ]

    jf = load_golden("feed.json")
    assert jf[1]["enclosures"] == [
        {"url": "https://json.example.org/files/a.pdf", "type": "application/pdf", "length": 2048}
    ]
    assert jf[0]["authors"] == [{"name": "Jay Son", "uri": "https://json.example.org/about"}]
    assert jf[2]["categories"] == ["alpha", "beta"]


# --- ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_ids_stable_across_runs(name: str) -> None:
    first = [e.id for e in run(name)]
    url = fixture_url(name)
    feed = parse((FEEDS / name).read_bytes(), url=url, content_type=content_type(name))
    later = normalize(
        source(url=url), feed, feed_url=url, fetched_at=datetime(2030, 1, 1, tzinfo=UTC)
    )
    assert [e.id for e in later] == first
    assert len(set(first)) == len(first)
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in first)


def test_id_is_sha256_of_source_and_guid() -> None:
    # Independent of the code: pins the id scheme, so stored ids survive a refactor.
    expected = hashlib.sha256(b"src\nguid:tech-example-org-item-0002").hexdigest()[:16]
    assert run("rss2.xml")[1].id == expected


@pytest.mark.parametrize("name", FIXTURES)
def test_ids_differ_between_sources(name: str) -> None:
    url = fixture_url(name)
    a = {e.id for e in run(name, source("alpha", url))}
    b = {e.id for e in run(name, source("beta", url))}
    assert len(a) == len(b) > 0
    assert a.isdisjoint(b)


def test_id_prefers_guid_then_link_then_content() -> None:
    date = datetime(2024, 1, 1, tzinfo=UTC)
    by_guid = ParsedEntry(guid="g-1", link="https://x.example.org/1", title="T", content="c")
    # same guid: link, title and content do not matter
    assert entry_id("s", by_guid) == entry_id(
        "s", replace(by_guid, link="https://x.example.org/other", title="U", content="d")
    )
    # surrounding white space in the guid is not part of it
    assert entry_id("s", by_guid) == entry_id("s", replace(by_guid, guid="  g-1\n"))
    # a different guid with the same link is another entry
    assert entry_id("s", by_guid) != entry_id("s", replace(by_guid, guid="g-2"))

    by_link = replace(by_guid, guid="")
    assert entry_id("s", by_link) != entry_id("s", by_guid)
    assert entry_id("s", by_link) == entry_id("s", replace(by_link, guid="   ", title="U"))
    assert entry_id("s", by_link) != entry_id("s", replace(by_link, link="https://x.example.org/2"))

    by_hash = ParsedEntry(title="T", content="<p>c</p>", published=date)
    same = entry_id("s", by_hash)
    assert same == entry_id("s", ParsedEntry(title="T", content="<p>c</p>", published=date))
    assert same != entry_id("s", replace(by_hash, content="<p>d</p>"))
    assert same != entry_id("s", replace(by_hash, title="U"))
    assert same != entry_id("s", replace(by_hash, published=datetime(2024, 1, 2, tzinfo=UTC)))
    # no published: the updated date counts instead
    assert entry_id("s", replace(by_hash, published=None, updated=date)) == same
    assert same not in {entry_id("s", by_guid), entry_id("s", by_link)}
    assert entry_id("s", by_hash) != entry_id("t", by_hash)


def test_duplicate_guids_kept_once_first_wins() -> None:
    feed = ParsedFeed(
        title="F",
        entries=(
            ParsedEntry(guid="g1", link="https://x.example.org/1", title="first"),
            ParsedEntry(guid="g2", link="https://x.example.org/2", title="other"),
            ParsedEntry(guid="g1", link="https://x.example.org/1b", title="second"),
            ParsedEntry(guid=" g1 ", title="third"),
        ),
    )
    entries = normalize(source(), feed, feed_url="https://x.example.org/f", fetched_at=FETCHED_AT)
    assert [e.title for e in entries] == ["first", "other"]


def test_duplicate_guids_in_a_document() -> None:
    item = (
        "<item><title>{t}</title><guid isPermaLink='false'>dup</guid>"
        "<description>{t}</description></item>"
    )
    body = (
        "<?xml version='1.0'?><rss version='2.0'><channel><title>D</title>"
        "<link>https://d.example.org/</link>"
        + item.format(t="one")
        + item.format(t="two")
        + "<item><title>three</title><guid>other</guid></item>"
        + "</channel></rss>"
    ).encode()
    url = "https://d.example.org/feed"
    entries = normalize(source(url=url), parse(body, url=url), feed_url=url, fetched_at=FETCHED_AT)
    assert [e.title for e in entries] == ["one", "three"]


# --- filters -------------------------------------------------------------------------------


def titles(name: str, **filters: tuple[str, ...]) -> list[str]:
    return [e.title for e in run(name, source(url=fixture_url(name), **filters))]


RSS2_TITLES = [
    "Podcast Episode 1: Building Static Sites",
    "A Quick Look at Memory-Safe Drivers",
    "Five Small Python Tips for Tidy Scripts",
]


def test_no_filter_keeps_all() -> None:
    assert titles("rss2.xml") == RSS2_TITLES


def test_include_plain_word_case_insensitive_in_title() -> None:
    assert titles("rss2.xml", include=("PYTHON",)) == [RSS2_TITLES[2]]
    assert titles("rss2.xml", include=("python", "podcast")) == [RSS2_TITLES[0], RSS2_TITLES[2]]


def test_include_plain_word_in_content() -> None:
    # "anemones" is only in the content of the first Atom entry
    assert titles("atom.xml", include=("Anemones",)) == ["Tide Pools in Late Winter"]
    assert titles("gbk.xml", include=("跨境电商",)) == ["外贸出口保持韧性 多地稳订单拓市场"]


def test_plain_word_is_literal_not_regex() -> None:
    assert titles("rss2.xml", include=("Memory.Safe",)) == []
    assert titles("rss2.xml", include=("Episode 1:",)) == [RSS2_TITLES[0]]


def test_filters_match_text_not_markup() -> None:
    # every rss2 content has tags and attributes; none of these words is in the text
    assert titles("rss2.xml", exclude=("href", "strong", "<p>")) == RSS2_TITLES
    assert titles("rss2.xml", include=("noopener",)) == []


def test_exclude_plain_word() -> None:
    assert titles("rss2.xml", exclude=("drivers",)) == [RSS2_TITLES[0], RSS2_TITLES[2]]
    assert titles("gbk.xml", exclude=("湖南",)) == []


def test_regex_filters() -> None:
    assert titles("rss2.xml", exclude=("re:^A Quick",)) == [RSS2_TITLES[0], RSS2_TITLES[2]]
    # `re:` patterns are case-sensitive as written
    assert titles("rss2.xml", include=("re:python",)) == []
    assert titles("rss2.xml", include=("re:Python",)) == [RSS2_TITLES[2]]
    assert titles("rss2.xml", include=("re:(?i)python",)) == [RSS2_TITLES[2]]
    assert titles("rss2.xml", include=(r"re:Episode \d+",)) == [RSS2_TITLES[0]]


def test_include_and_exclude_together() -> None:
    assert titles("rss2.xml", include=("re:S",), exclude=("podcast",)) == RSS2_TITLES[1:]
    assert titles("atom.xml", include=("re:\\d",), exclude=("مرحبا",)) == []


# --- text: forbidden characters and scripts that must survive --------------------------------


def one(entry: ParsedEntry, feed_title: str = "Feed") -> Entry:
    feed = ParsedFeed(title=feed_title, link="https://x.example.org/", entries=(entry,))
    (result,) = normalize(
        source(), feed, feed_url="https://x.example.org/feed", fetched_at=FETCHED_AT
    )
    return result


def test_xml_forbidden_characters_stripped() -> None:
    entry = one(
        ParsedEntry(
            guid="g",
            link="https://x.example.org/a\x00b",
            title="Ti\x00t\x0bl\ufffee",
            content="<p>co\x00n\x0bte\ufffent\uffff</p>",
            summary="<p>su\x00m\x0bm\ufffeary</p>",
            authors=(Author(name="Ann\x00 Au\x0bthor\ufffe", email="a\x00@x.example.org"),),
            enclosures=(Enclosure("https://x.example.org/f\x0b.mp3", "audio/mpeg\ufffe", 1),),
            categories=("ca\x00t\ufffe",),
        ),
        feed_title="Fe\x00ed\ufffe",
    )
    assert entry.title == "Title"
    assert entry.content == "<p>content</p>"
    assert entry.summary == "<p>summary</p>"
    assert entry.link == "https://x.example.org/ab"
    assert entry.authors == (Author(name="Ann Author", email="a@x.example.org"),)
    assert entry.enclosures == (Enclosure("https://x.example.org/f.mp3", "audio/mpeg", 1),)
    assert entry.categories == ("cat",)
    assert entry.source_title == "Feed"
    # tab, LF and CR are allowed by XML 1.0 and stay in HTML
    assert one(ParsedEntry(guid="g", content="<pre>a\tb\nc</pre>")).content == "<pre>a\tb\nc</pre>"


def test_xml_forbidden_characters_from_character_references_stripped() -> None:
    entry = one(
        ParsedEntry(
            guid="g",
            title="Caf&#xe9; &#xfffe;<b>x</b>&#x1;",
            content="<p>a&#x0b;b&#xfffe;c&#xffff;d&#1;e&#xe9;</p>",
            summary="<p>s&#x0b;&#xFFFE;t</p>",
        )
    )
    forbidden = {"\x01", "\x0b", "\ufffe", "\uffff"}
    assert forbidden.isdisjoint(entry.title + entry.content + entry.summary)
    assert entry.title == "Café x"
    assert entry.content == "<p>abcdeé</p>"


TEXT = "经济日报 · 表情 😀🔭 · مرحبا بالعالم · שלום · \u200fRTL\u200e mark"


def test_chinese_emoji_and_rtl_intact() -> None:
    entry = one(
        ParsedEntry(
            guid="g",
            title=TEXT,
            content=f"<p>{TEXT}</p>",
            authors=(Author(name="李雷 👩‍💻"),),
            categories=("财经", "عربي"),
        ),
        feed_title="经济日报新闻 🗞",
    )
    assert entry.title == TEXT
    assert entry.content == f"<p>{TEXT}</p>"
    assert entry.authors == (Author(name="李雷 👩‍💻"),)
    assert entry.categories == ("财经", "عربي")
    assert entry.source_title == "经济日报新闻 🗞"
    assert Entry.from_json(entry.to_json()) == entry


# --- sanitize ------------------------------------------------------------------------------

BASE = "https://site.example.org/posts/1"


@pytest.mark.parametrize(
    ("dirty", "clean"),
    [
        ("<p>a</p><script>alert(1)</script><p>b</p>", "<p>a</p><p>b</p>"),
        ("<SCRIPT SRC=https://evil.example.org/x.js></SCRIPT><p>b</p>", "<p>b</p>"),
        ("<style>p { color: red }</style><p>b</p>", "<p>b</p>"),
        ('<p style="color:red">b</p>', "<p>b</p>"),
        ('<p onclick="evil()">b</p>', "<p>b</p>"),
        (
            '<img src="https://i.example.org/a.png" onerror="x()">',
            '<img src="https://i.example.org/a.png">',
        ),
        ('<a href="javascript:alert(1)">x</a>', '<a rel="noopener noreferrer">x</a>'),
        ('<a href="JaVaScRiPt:alert(1)">x</a>', '<a rel="noopener noreferrer">x</a>'),
        ('<a href="&#106;avascript:alert(1)">x</a>', '<a rel="noopener noreferrer">x</a>'),
        ('<a href=" javascript:alert(1)">x</a>', '<a rel="noopener noreferrer">x</a>'),
        ('<iframe src="https://evil.example.org/"></iframe><p>b</p>', "<p>b</p>"),
        (
            '<p class="em_media">（文章来源：经济日报）</p>',
            '<p class="em_media">（文章来源：经济日报）</p>',
        ),
        (
            '<img src="/img/a.png" alt="d">',
            '<img src="https://site.example.org/img/a.png" alt="d">',
        ),
        (
            '<a href="../other">o</a>',
            '<a href="https://site.example.org/other" rel="noopener noreferrer">o</a>',
        ),
        ("", ""),
    ],
)
def test_sanitize(dirty: str, clean: str) -> None:
    assert sanitize(dirty, BASE) == clean


def test_sanitize_without_base_keeps_relative_urls() -> None:
    assert sanitize('<img src="/img/a.png">', "") == '<img src="/img/a.png">'


def test_sanitize_in_normalize_uses_entry_link_as_base() -> None:
    entry = one(
        ParsedEntry(
            guid="g",
            link="/posts/7",
            content='<p><img src="pic.png"><a href="javascript:x()" onclick="y()">z</a></p>',
            enclosures=(Enclosure("audio/7.mp3"),),
        )
    )
    assert entry.link == "https://x.example.org/posts/7"
    assert entry.content == (
        '<p><img src="https://x.example.org/posts/pic.png"><a rel="noopener noreferrer">z</a></p>'
    )
    assert entry.enclosures == (Enclosure("https://x.example.org/posts/audio/7.mp3"),)


@pytest.mark.parametrize(
    ("html", "text"),
    [
        (
            "Caf&eacute; <b>Bold</b> Roasts and Their Chemistry",
            "Café Bold Roasts and Their Chemistry",
        ),
        ("a <script>alert(1)</script>b", "a b"),
        ("  spread\n over\t lines  ", "spread over lines"),
        ("Tom &amp;amp; Jerry", "Tom &amp; Jerry"),
        ("1 &lt; 2", "1 < 2"),
        ("", ""),
    ],
)
def test_plain_text(html: str, text: str) -> None:
    assert plain_text(html) == text


# --- where the rest of the entry comes from ------------------------------------------------


def test_category_tags_and_source_fields() -> None:
    url = fixture_url("rss1.rdf")
    feed = parse((FEEDS / "rss1.rdf").read_bytes(), url=url, content_type="application/xml")
    src = Source(name="rdf", url=url, category="科学", tags=("science",))
    entries = normalize(src, feed, feed_url=url, fetched_at=FETCHED_AT, source_title="Mine")
    assert {(e.source, e.category, e.tags, e.source_title) for e in entries} == {
        ("rdf", "科学", ("science",), "Mine")
    }
    assert {e.source_link for e in entries} == {"https://rdf.example.org/"}
    # a feed without a link: the URL it was fetched from
    bare = normalize(src, replace(feed, link=""), feed_url=url, fetched_at=FETCHED_AT)
    assert {e.source_link for e in bare} == {url}
    assert {e.source_title for e in bare} == {"Example RDF Journal"}


def test_content_falls_back_to_summary() -> None:
    only_summary = one(ParsedEntry(guid="g", summary="<p>s</p>"))
    assert (only_summary.content, only_summary.summary) == ("<p>s</p>", "")
    both = one(ParsedEntry(guid="g", content="<p>c</p>", summary="<p>s</p>"))
    assert (both.content, both.summary) == ("<p>c</p>", "<p>s</p>")


def test_golden_directory_matches_fixtures() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.json")) == sorted(f"{n}.json" for n in FIXTURES)
    assert isinstance(GOLDEN, Path)
