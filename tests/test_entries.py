"""Entries you can trust: identity, cross-source deduplication, bad guids, retention, filters.
Pure functions on plain values first, then the whole poll on a real Redis and HTTP server."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from aggregator import keys
from aggregator.config import Config, Source
from aggregator.identity import canonical_url, dedup_keys, guid_problem
from aggregator.normalize import Filter
from aggregator.store import Store
from aggregator.update import Outcome
from tests.conftest import ConfigWriter, FeedServer, poll_now

NOW = datetime(2024, 6, 1, tzinfo=UTC)


# --- identity: pure ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("https://Example.COM/a?utm_source=x&id=3&utm_medium=y#top", "example.com/a?id=3"),
        ("http://example.com:80/a?fbclid=1", "example.com/a"),
        ("https://example.com:443/a", "example.com/a"),
        ("https://example.com:8443/a?b=1&a=2", "example.com:8443/a?b=1&a=2"),
        (
            "https://news.example.cn/x.html?spm=a1.b2&infoCode=NW1",
            "news.example.cn/x.html?infoCode=NW1",
        ),
        ("https://example.com", "example.com/"),
        ("ftp://example.com/a", ""),
        ("/relative/path", ""),
        ("https://[::1", ""),
    ],
)
def test_canonical_url(url: str, canonical: str) -> None:
    assert canonical_url(url) == canonical


def test_dedup_keys_use_links_and_global_guids_only() -> None:
    assert dedup_keys("https://a.example/x?utm_campaign=c", "12345") == ("url:a.example/x",)
    assert dedup_keys("", "tag:a.example,2024:1") == ("uri:tag:a.example,2024:1",)
    assert dedup_keys("https://a.example/x", "http://a.example/x") == ("url:a.example/x",)
    assert dedup_keys("", "") == ()


def test_guid_problem_spots_shared_and_churning_guids() -> None:
    fine = [("g1", "https://a/1"), ("g2", "https://a/2"), ("g3", "https://a/3")]
    assert guid_problem(fine, {}) is None
    assert guid_problem(fine, {"https://a/1": "g1", "https://a/2": "g2"}) is None
    shared = [("same", "https://a/1"), ("same", "https://a/2")]
    assert "shared" in (guid_problem(shared, {}) or "")
    # the same link twice under one guid is one entry listed twice, not a bad guid
    assert guid_problem([("g", "https://a/1"), ("g", "https://a/1")], {}) is None
    previous = {"https://a/1": "old1", "https://a/2": "old2", "https://a/3": "old3"}
    churned = [("new1", "https://a/1"), ("new2", "https://a/2"), ("new3", "https://a/3")]
    assert "new guid" in (guid_problem(churned, previous) or "")
    # one changed guid among many is an edit, not churn
    mostly = [("old1", "https://a/1"), ("old2", "https://a/2"), ("new3", "https://a/3")]
    assert guid_problem(mostly, previous) is None


def test_filters_match_words_case_insensitively_and_regexes() -> None:
    keep = Filter(include=["稳就业", "Python", "re:直播.*岗"], exclude=["广告"])
    assert keep.keeps("各地稳就业举措")
    assert keep.keeps("learning PYTHON")
    assert keep.keeps("网络招聘、直播带岗亮点纷呈")
    assert not keep.keeps("直播 without the last char")
    assert not keep.keeps("稳就业 广告")
    assert not keep.keeps("nothing relevant")
    assert Filter([], ["re:^\\d+$"]).keeps("abc") and not Filter([], ["re:^\\d+$"]).keeps("42")


def test_catastrophic_filter_pattern_is_time_bounded() -> None:
    evil = Filter(include=["re:(a+)+$"], exclude=[])
    started = time.perf_counter()
    assert not evil.keeps("a" * 5000 + "!")  # gives up: treated as no match
    assert time.perf_counter() - started < 2


# --- the whole poll ------------------------------------------------------------------------


def poll(config: Config, store: Store, *names: str) -> list[Outcome]:
    return poll_now(config, store, names, NOW)


def rss(items: list[tuple[str, str, str, str]]) -> str:
    """(guid, link, title, date) → an RSS 2.0 document."""
    body = "".join(
        f"<item><guid isPermaLink='false'>{g}</guid><link>{link}</link><title>{t}</title>"
        f"<description>&lt;p&gt;{t} body&lt;/p&gt;</description><pubDate>{d}</pubDate></item>"
        for g, link, t, d in items
    )
    return (
        f"<?xml version='1.0'?><rss version='2.0'><channel><title>T</title>{body}</channel></rss>"
    )


DATES = [f"Mon, 0{i} Apr 2024 08:00:00 +0800" for i in range(1, 10)]


def test_one_story_from_two_sources_is_stored_once_with_both(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    feed_server.put(
        "a.xml",
        rss(
            [
                ("a-1", "https://news.example.cn/1.html?utm_source=rss", "同一个故事", DATES[0]),
                ("a-2", "https://news.example.cn/2.html", "只在A", DATES[1]),
            ]
        ),
    )
    feed_server.put(
        "b.xml", rss([("b-9", "http://NEWS.example.cn/1.html#comments", "同一个故事", DATES[0])])
    )
    config = write_config.write(
        [
            {"name": "a", "url": feed_server.url("a.xml"), "category": "ca", "tags": ["x"]},
            {"name": "b", "url": feed_server.url("b.xml"), "category": "cb", "tags": ["y", "x"]},
        ]
    )
    poll(config, store, "a")
    (outcome,) = poll(config, store, "b")
    assert (outcome.new, outcome.updated) == (0, 0)
    assert store.count("all") == 2
    story = store.entries("category", "cb")
    assert len(story) == 1 and story[0].title == "同一个故事"
    assert story[0].sources == ("a", "b")
    assert story[0].all_categories == ("ca", "cb")
    assert set(story[0].all_tags) == {"x", "y"}
    assert [e.title for e in store.entries("tag", "x")].count("同一个故事") == 1
    assert [e.title for e in store.entries("tag", "y")] == ["同一个故事"]
    # polling both again changes nothing and still shows the story once
    poll(config, store, "a", "b")
    assert store.count("all") == 2 and store.count("tag", "x") == 2


def test_source_with_one_guid_for_every_entry_uses_links(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    feed_server.put(
        "same.xml", rss([("42", f"https://s.example/{i}", f"t{i}", DATES[i]) for i in range(3)])
    )
    config = write_config.write([{"name": "same", "url": feed_server.url("same.xml")}])
    (outcome,) = poll(config, store, "same")
    assert outcome.new == 3
    state = store.source_states(["same"])[0]
    assert state.id_mode == "link"
    assert store.client.hget(keys.source("same"), "id_note")


def test_guids_that_change_on_every_poll_neither_duplicate_nor_lose_updates(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    links = [f"https://cms.example/{i}" for i in range(4)]
    feed_server.put("cms.xml", rss([(f"r1-{i}", links[i], f"t{i}", DATES[i]) for i in range(4)]))
    config = write_config.write([{"name": "cms", "url": feed_server.url("cms.xml")}])
    assert poll(config, store, "cms")[0].new == 4
    feed_server.put(
        "cms.xml",
        rss([(f"r2-{i}", links[i], f"t{i}" if i else "t0 edited", DATES[i]) for i in range(4)]),
    )
    (second,) = poll(config, store, "cms")
    assert (second.new, second.updated) == (0, 1)
    assert store.source_states(["cms"])[0].id_mode == "link"
    titles = [e.title for e in store.entries("all")]
    assert sorted(titles) == ["t0 edited", "t1", "t2", "t3"]
    feed_server.put(
        "cms.xml",
        rss([(f"r3-{i}", links[i], f"t{i}" if i else "t0 edited", DATES[i]) for i in range(4)]),
    )
    assert (poll(config, store, "cms")[0].new, store.count("all")) == (0, 4)


def test_retention_by_count_removes_every_trace_and_keeps_expired_out(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    feed_server.put(
        "r.xml", rss([(f"g{i}", f"https://r.example/{i}", f"t{i}", DATES[i]) for i in range(6)])
    )
    config = write_config.write(
        [{"name": "r", "url": feed_server.url("r.xml"), "category": "c", "tags": ["t"]}],
        settings={"retention": {"max_entries": 4, "max_age": "10000d"}},
    )
    (outcome,) = poll(config, store, "r")
    assert outcome.new == 6
    kept = store.entries("category", "c")
    assert [e.title for e in kept] == ["t5", "t4", "t3", "t2"]
    assert store.count("tag", "t") == store.count("all") == 4
    entry_keys = [k for k in store.client.scan_iter(keys.PREFIX + "entry:*")]
    assert len(entry_keys) == 4, "no orphaned entry left behind"
    # the two oldest are still in the source's document: a new poll must not bring them back
    feed_server.put(
        "r.xml", rss([(f"g{i}", f"https://r.example/{i}", f"t{i}", DATES[i]) for i in range(7)])
    )
    (again,) = poll(config, store, "r")
    assert again.new == 1
    assert [e.title for e in store.entries("category", "c")] == ["t6", "t5", "t4", "t3"]


def test_retention_by_age(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    old = "Mon, 01 Jan 2024 08:00:00 +0800"  # five months before NOW
    feed_server.put(
        "age.xml",
        rss(
            [
                ("old", "https://a.example/old", "old", old),
                ("new", "https://a.example/new", "new", DATES[8]),
            ]
        ),
    )
    config = write_config.write(
        [{"name": "age", "url": feed_server.url("age.xml"), "tags": ["t"]}],
        settings={"retention": {"max_age": "90d"}},
    )
    poll(config, store, "age")
    assert [e.title for e in store.entries("all")] == ["new"]
    assert store.count("tag", "t") == 1


def test_retention_keeps_a_merged_entry_filed_in_another_category(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    feed_server.put(
        "p.xml",
        rss(
            [
                ("p", "https://s.example/story", "story", DATES[0]),
                ("q", "https://s.example/q", "newer", DATES[5]),
            ]
        ),
    )
    feed_server.put("m.xml", rss([("m", "https://s.example/story", "story", DATES[0])]))
    config = write_config.write(
        [
            {"name": "p", "url": feed_server.url("p.xml"), "category": "cp"},
            {"name": "m", "url": feed_server.url("m.xml"), "category": "cm"},
        ],
    )
    poll(config, store, "p", "m")
    assert store.count("category", "cm") == 1
    assert store.enforce_retention("cp", 1, 10**9, NOW) == 1
    assert [e.title for e in store.entries("category", "cp")] == ["newer"]
    assert [e.title for e in store.entries("category", "cm")] == ["story"]
    assert store.count("all") == 2


def test_two_sources_polled_at_once_store_the_story_once(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    names = [f"s{i}" for i in range(6)]
    for i, name in enumerate(names):
        feed_server.put(
            f"{name}.xml",
            rss(
                [
                    (f"{name}-g", "https://same.example/story", "story", DATES[0]),
                    (f"{name}-own", f"https://same.example/{i}", f"own {i}", DATES[1]),
                ]
            ),
        )
    config = write_config.write([{"name": n, "url": feed_server.url(f"{n}.xml")} for n in names])
    outcomes = poll(config, store, *names)
    assert all(o.ok for o in outcomes)
    assert store.count("all") == 7
    story = [e for e in store.entries("all") if e.title == "story"]
    assert len(story) == 1 and sorted(story[0].sources) == names


def test_expired_entries_leave_no_alias_behind(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    feed_server.put("a.xml", rss([("a", "https://x.example/s", "s", DATES[0])]))
    feed_server.put("b.xml", rss([("b", "https://x.example/s", "s", DATES[0])]))
    config = write_config.write(
        [
            {"name": "a", "url": feed_server.url("a.xml"), "category": "c"},
            {"name": "b", "url": feed_server.url("b.xml"), "category": "c"},
        ]
    )
    poll(config, store, "a", "b")
    assert list(store.client.scan_iter(keys.PREFIX + "alias:*"))
    assert store.enforce_retention("c", 1, 1, NOW + timedelta(days=3650)) == 1
    assert list(store.client.scan_iter(keys.PREFIX + "alias:*")) == []
    assert list(store.client.scan_iter(keys.PREFIX + "entry:*")) == []
    assert len(list(store.client.scan_iter(keys.PREFIX + "gone:*"))) == 2


def test_source_config_is_a_pure_value() -> None:
    source = Source(name="x", url="https://x.example/", include=("a",))
    assert Filter(source.include, source.exclude).keeps("A")


def test_json_feed_with_lone_surrogates_is_stored_not_failed() -> None:
    from aggregator.update import process

    body = (
        b'{"version": "https://jsonfeed.org/version/1.1", "title": "t\\ud800",'
        b' "items": [{"id": "x\\udfff", "title": "a\\ud800b", "content_html": "<p>c\\ud800</p>",'
        b' "url": "https://j.example/1"}]}'
    )
    source = Source(name="j", url="https://j.example/feed.json", tags=("t",))
    processed = process(source, body, source.url, "application/feed+json", NOW)
    (entry,) = processed.entries
    assert (entry.title, entry.content) == ("ab", "<p>c</p>")
    entry.to_json().encode("utf-8")  # storable as UTF-8
