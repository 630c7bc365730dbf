"""Entries you can trust: identity, cross-source deduplication, bad guids, retention, filters.
Pure functions on plain values first, then the whole poll on a real Redis and HTTP server."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from aggregator import keys
from aggregator.config import Config, Source
from aggregator.identity import canonical_url, dedup_keys, guid_problem
from aggregator.models import RetentionRule
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
        settings={"retention": {"max_entries": 4}},
    )
    (outcome,) = poll(config, store, "r")
    # what subscribers can see is new; the two oldest were cut at once
    assert (outcome.entries, outcome.new, outcome.cut) == (6, 4, 2)
    kept = store.entries("category", "c")
    assert [e.title for e in kept] == ["t5", "t4", "t3", "t2"]
    assert store.count("tag", "t") == store.count("all") == 4
    assert store.source_states(["r"])[0].stored == 4
    entry_keys = [k for k in store.client.scan_iter(keys.PREFIX + "entry:*")]
    assert len(entry_keys) == 4, "no orphaned entry left behind"
    # the two oldest are still in the source's document: a new poll must not bring them back
    feed_server.put(
        "r.xml", rss([(f"g{i}", f"https://r.example/{i}", f"t{i}", DATES[i]) for i in range(7)])
    )
    (again,) = poll(config, store, "r")
    assert (again.new, again.cut) == (1, 3)  # t0 and t1 kept out, t2 cut now
    assert [e.title for e in store.entries("category", "c")] == ["t6", "t5", "t4", "t3"]


OLD = "Sun, 01 Jan 2017 08:00:00 +0800"


def test_an_old_dated_entry_stays_while_its_source_lists_it(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    feed_server.put(
        "age.xml",
        rss(
            [
                ("old", "https://a.example/old", "old", OLD),
                ("new", "https://a.example/new", "new", DATES[8]),
            ]
        ),
    )
    config = write_config.write(
        [{"name": "age", "url": feed_server.url("age.xml"), "tags": ["t"]}],
        settings={"retention": {"max_age": "90d", "keep_per_source": 0}},
    )
    day = timedelta(days=1)
    (first,) = poll_now(config, store, ["age"], NOW)
    assert (first.new, first.cut) == (2, 0)
    assert sorted(e.title for e in store.entries("tag", "t")) == ["new", "old"]
    # listed for 200 days, however old its date: never removed by age
    (confirmed,) = poll_now(config, store, ["age"], NOW + 200 * day)
    assert confirmed.not_modified
    feed_server.put("age.xml", rss([("new", "https://a.example/new", "new", DATES[8])]))
    poll_now(config, store, ["age"], NOW + 201 * day)
    assert sorted(e.title for e in store.entries("all")) == ["new", "old"]
    # no longer listed: it goes max_age after the poll that last listed it (day 200)
    feed_server.put(
        "age.xml",
        rss(
            [
                ("new", "https://a.example/new", "new", DATES[8]),
                ("n2", "https://a.example/2", "n2", OLD),
            ]
        ),
    )
    poll_now(config, store, ["age"], NOW + 289 * day)
    assert sorted(e.title for e in store.entries("all")) == ["n2", "new", "old"]
    feed_server.put("age.xml", rss([("new", "https://a.example/new", "new", DATES[8])]))
    poll_now(config, store, ["age"], NOW + 291 * day)
    assert sorted(e.title for e in store.entries("all")) == ["n2", "new"]
    assert store.count("tag", "t") == 2
    assert store.source_states(["age"])[0].stored == 2
    assert not list(store.client.scan_iter(keys.PREFIX + "gone:*")), (
        "no tombstone: if it is listed again, it is back"
    )


def test_each_source_keeps_its_newest_against_the_age_rule(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    first = [(f"a{i}", f"https://k.example/{i}", f"a{i}", DATES[i]) for i in range(3)]
    feed_server.put("k.xml", rss(first))
    config = write_config.write(
        [{"name": "k", "url": feed_server.url("k.xml")}],
        settings={"retention": {"max_age": "90d", "keep_per_source": 2}},
    )
    day = timedelta(days=1)
    poll_now(config, store, ["k"], NOW)
    feed_server.put("k.xml", rss([("d", "https://k.example/d", "d", OLD)]))
    poll_now(config, store, ["k"], NOW + day)
    feed_server.put(
        "k.xml",
        rss([("d", "https://k.example/d", "d", OLD), ("e", "https://k.example/e", "e", OLD)]),
    )
    poll_now(config, store, ["k"], NOW + 100 * day)
    # a0-a2 were last listed on day 0; of them, the source's two newest by date stay
    assert sorted(e.title for e in store.entries("all")) == ["a1", "a2", "d", "e"]


def test_a_store_of_the_earlier_version_gets_back_what_age_had_hidden(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    feed_server.put("up.xml", rss([("g", "https://u.example/1", "hidden", OLD)]))
    config = write_config.write([{"name": "up", "url": feed_server.url("up.xml")}])
    poll(config, store, "up")
    (entry,) = store.entries("all")
    # What the earlier version left: the entry deleted by age and tombstoned, the source's
    # state with validators but no record of what its document listed.
    store.drop_entries("up", [entry.id])
    store.client.set(keys.gone(entry.id), 1)
    store.client.hdel(keys.source("up"), "listing")
    feed_server.requests.clear()
    (again,) = poll(config, store, "up")
    assert "If-None-Match" not in feed_server.requests[0].headers, "read whole, once"
    assert (again.new, again.cut) == (1, 0)
    assert [e.title for e in store.entries("all")] == ["hidden"]
    assert poll(config, store, "up")[0].not_modified  # and conditional again after that


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
    assert len(store.enforce_retention("cp", RetentionRule(1, 10**9), NOW).cut) == 1
    assert [e.title for e in store.entries("category", "cp")] == ["newer"]
    assert [e.title for e in store.entries("category", "cm")] == ["story"]
    assert store.count("all") == 2


def test_a_merged_entry_stays_while_another_source_lists_it(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    feed_server.put("p.xml", rss([("p", "https://s.example/story", "story", OLD)]))
    feed_server.put("m.xml", rss([("m", "https://s.example/story", "story", OLD)]))
    config = write_config.write(
        [
            {"name": "p", "url": feed_server.url("p.xml")},
            {"name": "m", "url": feed_server.url("m.xml")},
        ],
        settings={"retention": {"keep_per_source": 0}},
    )
    day = timedelta(days=1)
    poll_now(config, store, ["p", "m"], NOW)
    feed_server.put("p.xml", rss([("p2", "https://s.example/2", "other", OLD)]))
    poll_now(config, store, ["p"], NOW + day)
    feed_server.put("p.xml", rss([("p3", "https://s.example/3", "third", OLD)]))
    poll_now(config, store, ["p"], NOW + 200 * day)
    # p let the story go 199 days ago, but m still lists it; "other", listed only on day 1,
    # is gone
    assert sorted(e.title for e in store.entries("all")) == ["story", "third"]


def test_one_sources_items_sharing_a_link_are_distinct_entries(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    show = "https://pod.example/show"
    feed_server.put("pod.xml", rss([(f"ep{i}", show, f"Episode {i}", DATES[i]) for i in range(3)]))
    config = write_config.write([{"name": "pod", "url": feed_server.url("pod.xml")}])
    (first,) = poll(config, store, "pod")
    assert (first.new, first.merged) == (3, 0)
    assert [e.title for e in store.entries("all")] == ["Episode 2", "Episode 1", "Episode 0"]
    feed_server.put("pod.xml", rss([(f"ep{i}", show, f"Episode {i}", DATES[i]) for i in range(4)]))
    (second,) = poll(config, store, "pod")
    assert (second.new, second.updated) == (1, 0), second
    assert store.count("all") == 4


def test_a_merged_story_keeps_the_best_of_each_source(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    guid = "http://same.example/story/1"
    feed_server.put("bare.xml", rss([(guid, "", "", DATES[0])]))
    feed_server.put("full.xml", rss([(guid, "https://same.example/story/1", "有标题", DATES[0])]))
    config = write_config.write(
        [
            {"name": "bare", "url": feed_server.url("bare.xml")},
            {"name": "full", "url": feed_server.url("full.xml")},
        ]
    )
    poll(config, store, "bare")
    (merged,) = poll(config, store, "full")
    assert merged.merged == 1
    (entry,) = store.entries("all")
    assert (entry.title, entry.link) == ("有标题", "https://same.example/story/1")
    assert sorted(entry.sources) == ["bare", "full"]
    # the bare source polled again (changed elsewhere) does not blank them
    feed_server.put(
        "bare.xml", rss([(guid, "", "", DATES[0]), ("x", "https://b.example/x", "x", DATES[1])])
    )
    poll(config, store, "bare")
    (entry,) = [e for e in store.entries("all") if e.guid == guid]
    assert (entry.title, entry.link) == ("有标题", "https://same.example/story/1")


def test_changed_filters_take_back_stored_entries_on_the_next_poll(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    items = [
        ("a", "https://f.example/a", "稳就业新举措", DATES[0]),
        ("b", "https://f.example/b", "广告：限时优惠", DATES[1]),
        ("c", "https://f.example/c", "直播带岗", DATES[2]),
    ]
    feed_server.put("f.xml", rss(items))
    source = {"name": "f", "url": feed_server.url("f.xml"), "tags": ["t"]}
    config = write_config.write([source])
    assert poll(config, store, "f")[0].new == 3
    config = write_config.write([{**source, "exclude": ["广告"]}])
    (excluded,) = poll(config, store, "f")  # the server would answer 304: read whole anyway
    assert not excluded.not_modified
    assert (excluded.new, excluded.filtered) == (0, 1)
    assert sorted(e.title for e in store.entries("tag", "t")) == ["直播带岗", "稳就业新举措"]
    config = write_config.write([{**source, "include": ["稳就业"]}])
    (included,) = poll(config, store, "f")
    assert (included.new, included.filtered) == (0, 2)
    assert [e.title for e in store.entries("all")] == ["稳就业新举措"]
    assert store.source_states(["f"])[0].stored == 1
    config = write_config.write([source])
    assert poll(config, store, "f")[0].new == 2  # filters gone: the others are back
    assert poll(config, store, "f")[0].not_modified


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
    assert len(store.enforce_retention("c", RetentionRule(0, 1), NOW).cut) == 1
    for kind in ("alias", "entry", "canon", "source:a:*", "source:b:*"):
        leftover = [
            k for k in store.client.scan_iter(keys.PREFIX + kind + "*") if ":guids" not in k
        ]
        assert leftover == [], kind
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


def test_many_sources_polled_at_once_with_one_story_all_succeed(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    # Each save of the story conflicts with the others (WATCH): retried apart, none gives up.
    names = [f"m{i}" for i in range(100)]
    for name in names:
        feed_server.put(f"{name}.xml", rss([(f"{name}-g", "https://one.example/s", "s", DATES[0])]))
    config = write_config.write(
        [{"name": n, "url": feed_server.url(f"{n}.xml")} for n in names],
        settings={"per_host": {"concurrency": 100, "per_minute": 6000}},
    )
    outcomes = poll(config, store, *names)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert (sum(o.new for o in outcomes), sum(o.merged for o in outcomes)) == (1, 99)
    (story,) = store.entries("all")
    assert sorted(story.sources) == sorted(names)


def test_an_unlisted_entry_ages_out_while_its_source_answers_304(
    store: Store, write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    both = [("old", "https://a.example/old", "old", OLD), ("new", "https://a.example/n", "n", OLD)]
    feed_server.put("q.xml", rss(both))
    config = write_config.write(
        [{"name": "q", "url": feed_server.url("q.xml")}],
        settings={"retention": {"max_age": "90d", "keep_per_source": 0}},
    )
    day = timedelta(days=1)
    poll_now(config, store, ["q"], NOW)
    feed_server.put("q.xml", rss(both[1:]))
    poll_now(config, store, ["q"], NOW + day)  # "old" last listed on day 0
    (kept,) = poll_now(config, store, ["q"], NOW + 89 * day)
    assert kept.not_modified and store.count("all") == 2
    (aged,) = poll_now(config, store, ["q"], NOW + 91 * day)
    assert aged.not_modified
    assert [e.title for e in store.entries("all")] == ["n"]
    assert store.source_states(["q"])[0].age_check is None  # nothing left to come of age
