"""README, "Design notes": one test per note that promises a behaviour (and per sub-bullet of
Scheduling), run end to end with the shipped defaults: feeds.yaml of our own, the CLI and the
web app as subprocesses, the local fixture server.

Not tested here, on purpose: "A poll's work with entries runs in the parse pool" says where
work runs, not what a user sees; tests/test_update_pool.py covers it."""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import redis

from tests.conftest import Route, free_port
from tests.readme_support import (
    CHINA,
    InFlight,
    Item,
    Site,
    atom,
    hours_ago,
    jingji_feed,
    parse_when,
    rss,
    standard_sources,
    stop,
    table_rows,
    tech_feed,
    tech_items,
    titles,
    wait_for,
)

JINGJI_TAG = "经济日报新闻"
XML = {"Content-Type": "application/xml"}


def due_in(row: dict[str, str]) -> float:
    """Seconds from a source's last poll to its next due time, as `status` shows them."""
    return (parse_when(row["next due"]) - parse_when(row["last poll"])).total_seconds()


def by_title(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i.get("title", ""): i for i in items}


def test_note_two_parsers(site: Site) -> None:
    """Well-formed RSS and Atom, a malformed document, and one with xml:base all give their
    entries; links and HTML are resolved against the document's URL."""
    relative = rss(
        [
            Item(
                "相对链接的文章",
                "/posts/1.html",
                hours_ago(2, CHINA),
                description='<p>见<a href="/more.html">更多</a><img src="img/a.png"></p>',
            )
        ],
        language="zh-cn",
    )
    broken = (
        b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Broken</title>'
        b"<link>https://broken.example.org/</link><item><title>Fish & Chips &nbsp; today</title>"
        b"<link>https://broken.example.org/1</link><pubDate>"
        + format_datetime(hours_ago(5)).encode()
        + b"</pubDate></item></channel></rss>"
    )
    based = atom(
        [Item("Based entry", "entries/7", hours_ago(4))],
        base="https://based.example.org/blog/",
    )
    (site.server.root / "dir").mkdir(exist_ok=True)
    site.write(
        [
            {"name": "relative", "url": site.serve("dir/relative.xml", relative)},
            {"name": "broken", "url": site.serve("broken.xml", broken)},
            {"name": "based", "url": site.serve("based.xml", based)},
            {"name": "tech", "url": site.serve("tech.xml", tech_feed())},
        ]
    )
    web = site.web(wait=False)
    polled = site.poll()
    assert polled.counts["ok"] == 4, polled.stdout
    web.wait()
    items = by_title(web.ok("/all.json").json()["items"])
    origin = f"http://127.0.0.1:{site.server.port}"
    assert items["相对链接的文章"]["url"] == origin + "/posts/1.html"
    html = items["相对链接的文章"]["content_html"]
    assert f'href="{origin}/more.html"' in html and f'src="{origin}/dir/img/a.png"' in html
    assert items["Based entry"]["url"] == "https://based.example.org/blog/entries/7"
    assert any(t.startswith("Fish & Chips") for t in items), sorted(items)
    assert "Release notes for this week" in items


class _Host(ThreadingHTTPServer):
    daemon_threads = True


def _loopback_hosts(count: int) -> tuple[list[ThreadingHTTPServer], list[InFlight]]:
    """`count` HTTP servers, each on its own loopback address (127.0.0.2, .3, …): distinct
    hosts for the per-host limits, all on this machine. Each path is a feed of its own
    story, so no two sources merge."""
    servers, counters = [], []
    for n in range(count):
        counter = InFlight(b"", 0.05)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            route = counter

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                answer = type(self).route()
                host = self.server.server_address[0]
                story = Item(f"Story {host}{self.path}", f"https://{host}{self.path}", hours_ago(1))
                body = rss([story])
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = _Host((f"127.0.0.{n + 2}", 0), Handler)
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        servers.append(server)
        counters.append(counter)
    return servers, counters


def test_note_poll_uses_every_core(site: Site) -> None:
    """From 500 sources on 2 cores `poll` deals them to poller processes; every source is
    polled and the per-host limits (shipped: 2 at once, 30 a minute) hold across them."""
    hosts = 18
    per = 29  # under the shipped 30 requests a minute to one host
    servers, counters = _loopback_hosts(hosts)
    try:
        sources = []
        for n, server in enumerate(servers):
            address, port = server.server_address[:2]
            for k in range(per):
                sources.append({"name": f"h{n}-{k}", "url": f"http://{address}:{port}/f{k}.xml"})
        assert len(sources) >= 500
        site.write(sources)
        started = time.monotonic()
        polled = site.poll()
        assert polled.counts["ok"] == len(sources), (polled.stdout[-2000:], polled.stderr[-3000:])
        assert time.monotonic() - started < 60
        assert all(c.total == per for c in counters), [c.total for c in counters]
        assert max(c.most for c in counters) <= 2, [c.most for c in counters]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_note_dates_keep_the_source_offset(site: Site) -> None:
    """+0800 is published as +08:00; CST in these feeds is China; 2024年01月01日 and
    2024/1/1 8:30 parse; a zone-less date in a zh feed is +08:00; a date more than a day past
    the fetch is clamped to the fetch time."""
    future = datetime.now(UTC) + timedelta(days=3)
    items = [
        Item("东八区时间", "https://d.example.cn/1", datetime(2022, 4, 5, 5, 50, 27, tzinfo=CHINA)),
        Item(
            "中国标准时间",
            "https://d.example.cn/2",
            hours_ago(1),
            raw_date="Mon, 04 Mar 2024 09:00:00 CST",
        ),
        Item("中文日期", "https://d.example.cn/3", hours_ago(1), raw_date="2024年01月01日 08:30"),
        Item("斜杠日期", "https://d.example.cn/4", hours_ago(1), raw_date="2024/1/1 8:30"),
        Item("没有时区", "https://d.example.cn/5", hours_ago(1), raw_date="2017-06-01T10:00:00"),
        Item("来自未来", "https://d.example.cn/6", future.astimezone(CHINA)),
        Item("刚刚发布", "https://d.example.cn/7", hours_ago(0.5, CHINA)),
    ]
    site.write(
        [
            {
                "name": "dates",
                "url": site.serve("dates.xml", rss(items, language="zh-cn", encoding="gbk")),
                "tags": ["日期"],
            }
        ]
    )
    before = datetime.now(UTC).replace(microsecond=0)
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    web.wait()
    got = by_title(web.ok("/tags/" + quote("日期", safe="") + ".json").json()["items"])
    assert got["东八区时间"]["date_published"] == "2022-04-05T05:50:27+08:00"
    assert got["中国标准时间"]["date_published"] == "2024-03-04T09:00:00+08:00"
    assert got["中文日期"]["date_published"] == "2024-01-01T08:30:00+08:00"
    assert got["斜杠日期"]["date_published"] == "2024-01-01T08:30:00+08:00"
    assert got["没有时区"]["date_published"] == "2017-06-01T10:00:00+08:00"
    assert got["刚刚发布"]["date_published"].endswith("+08:00")
    clamped = datetime.fromisoformat(got["来自未来"]["date_published"])
    assert before - timedelta(seconds=2) <= clamped <= datetime.now(UTC), clamped
    atom_body = web.ok("/tags/" + quote("日期", safe="") + ".atom").body
    assert b"2024-03-04T09:00:00+08:00" in atom_body


def test_note_charsets(site: Site) -> None:
    """Valid UTF-8 wins over any label; gb2312 and gbk are read as GB18030, big5 as cp950;
    the HTTP charset and the XML declaration are tried by strict decoding."""

    def document(title: str, encoding_label: str) -> str:
        return (
            f'<?xml version="1.0" encoding="{encoding_label}"?><rss version="2.0"><channel>'
            f"<title>{title}</title><link>https://c.example.cn/</link><language>zh</language>"
            f"<item><title>{title}</title><link>https://c.example.cn/{abs(hash(title))}</link>"
            f"<pubDate>{format_datetime(hours_ago(1, CHINA))}</pubDate></item></channel></rss>"
        )

    feeds = {
        # UTF-8 bytes that say gbk: the bytes are valid UTF-8, so UTF-8 it is.
        "utf8-says-gbk": (document("标签说谎的UTF-8", "gbk").encode("utf-8"), XML),
        # GBK bytes with characters GB2312 lacks (镕, 堃), declared gb2312.
        "gbk-says-gb2312": (document("朱镕基与王堃", "gb2312").encode("gbk"), XML),
        # Big5 with a character only cp950 has (碁 is in both; 銹 is cp950's extension).
        "big5": (document("臺灣新聞：圍碁", "big5").encode("cp950"), XML),
        # The HTTP charset says gbk, the declaration says utf-8: strict decoding decides.
        "http-gbk": (
            document("经济日报要闻", "utf-8").encode("gbk"),
            {"Content-Type": "text/xml; charset=gbk"},
        ),
    }
    sources = []
    for name, (body, headers) in feeds.items():
        sources.append(
            {"name": name, "url": site.serve(f"{name}.xml", body, headers), "tags": ["字"]}
        )
    site.write(sources)
    web = site.web(wait=False)
    polled = site.poll()
    assert polled.counts["ok"] == 4, polled.stdout
    web.wait()
    shown = set(titles(web.ok("/tags/" + quote("字", safe="") + ".atom").feed()))
    assert shown == {"标签说谎的UTF-8", "朱镕基与王堃", "臺灣新聞：圍碁", "经济日报要闻"}


def test_note_bounded_parsing(site: Site) -> None:
    """An entity-expansion bomb parses in a moment and costs only its own poll."""
    laughs = "".join(f'<!ENTITY l{n} "{("&l" + str(n - 1) + ";") * 10}">' for n in range(1, 10))
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY l0 "lol">' + laughs + "]>"
        '<rss version="2.0"><channel><title>&l9;</title><link>https://bomb.example.org/</link>'
        "<item><title>Bomb &l9;</title><link>https://bomb.example.org/1</link>"
        f"<pubDate>{format_datetime(hours_ago(1))}</pubDate></item></channel></rss>"
    ).encode("utf-8")
    sources = standard_sources(site)
    sources.append({"name": "bomb", "url": site.serve("bomb.xml", bomb)})
    site.write(sources)
    started = time.monotonic()
    web = site.web(wait=False)
    polled = site.poll()
    assert time.monotonic() - started < 15
    rows = table_rows(polled.stdout)
    assert rows["jingjiribao"]["status"] == rows["tech"]["status"] == "HTTP 200", polled.stdout
    web.wait()
    for item in web.ok("/all.json").json()["items"]:
        assert len(item.get("title", "")) < 1000  # nothing expanded


def test_note_entry_ids(site: Site) -> None:
    """An entry's id is the first 16 hex digits of SHA-256 over the source name and its guid;
    stable across polls; a source whose entries share one guid switches to link identity and
    `status` says so."""
    shared = [
        Item(
            f"同一个guid {n}", f"https://same.example.cn/{n}", hours_ago(n + 1, CHINA), guid="same"
        )
        for n in range(3)
    ]
    sources = standard_sources(site)
    sources.append(
        {"name": "sameguid", "url": site.serve("same.xml", rss(shared, language="zh-cn"))}
    )
    site.write(sources)
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    web.wait()
    items = by_title(web.ok("/all.json").json()["items"])
    item = items["直播带岗助力稳就业"]
    guid = "https://finews.example.cn/html_News/today/1.html"
    # identity.py: the source name, a newline, and the key the id was made from.
    expected = hashlib.sha256(f"jingjiribao\nguid:{guid}".encode()).hexdigest()[:16]
    assert urlsplit(item["id"]).path == f"/entries/{expected}"
    assert {f"同一个guid {n}" for n in range(3)} <= set(items)  # three entries, not one
    # another document listing the same entries: same ids
    site.serve("jingji.xml", jingji_feed() + b"\n")
    assert site.poll("jingjiribao").returncode == 0
    again = by_title(web.ok("/all.json").json()["items"])
    assert again["直播带岗助力稳就业"]["id"] == item["id"]
    assert "identified by link" in site.status()["sameguid"]["notes"]


def test_note_one_story_stored_once(site: Site) -> None:
    """Same canonical link (utm_* removed, scheme and host case ignored) or same global guid
    from different sources: one entry, filed under every source, category and tag, keeping
    the best of each field. One source's items sharing a link with distinct guids stay apart."""
    story = "https://News.Example.cn/2024/story.html"
    first = rss(
        [
            Item("同一条新闻", story, hours_ago(2, CHINA), description="<p>完整正文</p>"),
            Item(
                "全局guid的新闻",
                "https://a.example.cn/g",
                hours_ago(3, CHINA),
                guid="tag:example.cn,2024:g1",
            ),
        ],
        language="zh-cn",
    )
    second = rss(
        [
            Item(
                "",
                "http://news.example.cn/2024/story.html?utm_source=rss&utm_medium=feed",
                hours_ago(2, CHINA),
            ),
            Item(
                "全局guid的新闻",
                "https://b.example.cn/other",
                hours_ago(3, CHINA),
                guid="tag:example.cn,2024:g1",
            ),
        ],
        language="zh-cn",
    )
    show = "https://podcast.example.org/show"
    podcast = rss(
        [Item(f"Episode {n}", show, hours_ago(n + 1), guid=f"ep-{n}") for n in range(3)],
        title="A Podcast",
    )
    site.write(
        [
            {"name": "first", "url": site.serve("first.xml", first), "tags": ["甲"]},
            {
                "name": "second",
                "url": site.serve("second.xml", second),
                "category": "乙类",
                "tags": ["乙"],
            },
            {"name": "podcast", "url": site.serve("podcast.xml", podcast)},
        ]
    )
    web = site.web(wait=False)
    polled = site.poll()
    assert polled.returncode == 0
    assert polled.counts.get("merged") == 2, polled.stdout
    web.wait()
    items = web.ok("/all.json").json()["items"]
    assert len(items) == 2 + 3, [i.get("title") for i in items]
    merged = by_title(items)["同一条新闻"]  # the second source's blank title did not win
    assert "完整正文" in merged["content_html"]
    assert set(merged["_source"]["sources"]) == {"first", "second"}
    for path in (
        "/tags/%E7%94%B2.json",
        "/tags/%E4%B9%99.json",
        "/categories/" + quote("乙类") + ".json",
    ):
        shown = [i.get("title") for i in web.ok(path).json()["items"]]
        assert shown.count("同一条新闻") == 1 and shown.count("全局guid的新闻") == 1, (path, shown)
    assert [i["title"] for i in items if i["title"].startswith("Episode")] == [
        "Episode 0",
        "Episode 1",
        "Episode 2",
    ]


def test_note_writes_are_atomic(site: Site) -> None:
    """Unchanged entries are not rewritten; a changed one keeps its first-seen time, gets
    `updated` when the source gave none, and moves between indexes when its tags change."""
    sources = standard_sources(site)
    site.write(sources)
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    web.wait()
    before = by_title(web.ok("/all.json").json()["items"])

    items = tech_items()
    items[1] = Item(
        items[1].title,
        items[1].link,
        items[1].date,
        description="<p>Show notes, corrected.</p>",
        enclosure=items[1].enclosure,
    )
    site.serve("tech.xml", tech_feed(items))
    changed = site.poll("tech")
    row = table_rows(changed.stdout)["tech"]
    assert (row["new"], row["updated"]) == ("0", "1"), changed.stdout
    time.sleep(1.2)  # a web process checks a feed's version at most once a second
    after = by_title(web.ok("/all.json").json()["items"])
    podcast = after["Podcast: building static sites"]
    assert "Show notes, corrected." in podcast["content_html"]
    assert podcast["date_published"] == before["Podcast: building static sites"]["date_published"]
    modified = datetime.fromisoformat(podcast["date_modified"])
    assert datetime.now(UTC) - modified < timedelta(minutes=1), modified
    same = after["Release notes for this week"]
    assert same == before["Release notes for this week"]

    sources[1]["tags"] = ["科技"]
    site.write(sources)
    stop(web.process)  # a web process reads the tags from feeds.yaml when it starts
    web = site.web(wait=False)
    assert site.poll("tech").returncode == 0
    web.wait()
    assert web.get("/tags/node.js.json").status == 404  # no longer a tag, and nothing in it
    moved = titles(web.ok("/tags/" + quote("科技", safe="") + ".atom").feed())
    assert moved == ["Release notes for this week", "Podcast: building static sites"]
    finance = titles(web.ok("/tags/" + quote("财经", safe="") + ".atom").feed())
    assert "Release notes for this week" not in finance and "直播带岗助力稳就业" in finance


def test_note_retention(site: Site) -> None:
    """Retention runs per category after each poll; an entry leaving its last category leaves
    every index, and a tombstone keeps it from coming back while its source still lists it."""
    site.write(standard_sources(site), settings={"retention": {"max_entries": 3}})
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    web.wait()
    old = "2017年全国就业形势总体稳定"
    for path in ("/all.atom", "/categories/jingjiribao.atom", "/tags/%E8%B4%A2%E7%BB%8F.atom"):
        assert old not in titles(web.ok(path).feed()), path
    site.serve("jingji.xml", jingji_feed() + b"\n<!-- a new document, still listing it -->")
    again = site.poll("jingjiribao")
    assert again.counts["new entries"] == 0, again.stdout
    assert old not in titles(web.ok("/all.atom").feed())
    assert len(titles(web.ok("/categories/jingjiribao.atom").feed())) == 3


def test_note_redis_cluster_keys(site: Site, cluster_site: Site, cluster: Any) -> None:
    """Every key is built in keys.py: on one Redis all under the hash tag {agg}; on a cluster
    spread over every master by the key map's tags, with the same feeds served."""
    for s in (site, cluster_site):
        s.write(standard_sources(site))
        web = s.web(wait=False)
        assert s.poll().returncode == 0
        web.wait()
        web.ok("/all.atom")
        web.ok("/tags/" + quote(JINGJI_TAG, safe="") + ".json")
        assert s.cli("reload").returncode == 0
    keys = [k.decode("utf-8") for k in redis.Redis.from_url(site.redis_url).keys("*")]
    assert keys, "nothing written"
    assert all("{agg}" in k for k in keys), [k for k in keys if "{agg}" not in k]

    spread = {}
    for port in cluster.masters():
        node = redis.Redis(port=port)
        spread[port] = [k.decode("utf-8") for k in node.keys("*")]
        node.close()
    assert all(spread.values()), spread  # every master holds some of it
    names = [k for ks in spread.values() for k in ks]
    tags = {k.split("}")[0] + "}" for k in names}
    assert len(tags) > 20 and all(k.startswith("agg:{") for k in names), sorted(tags)[:5]
    entries = [k for k in names if ":entry:" in k]
    assert entries and all(k.startswith("agg:{" + k.rsplit(":", 1)[1] + "}") for k in entries)
    kinds = {k.partition("}:")[2].partition(":")[0] for k in keys}
    assert {k.partition("}:")[2].partition(":")[0] for k in names} == kinds, kinds


def test_note_scheduling_leases(site: Site) -> None:
    """Due times live in one sorted set; a worker's claim moves a source a lease ahead, so a
    worker killed mid-poll leaves it due again when the lease ends, not lost."""
    slow = InFlight(tech_feed(), 3)
    site.server.routes["/slow.xml"] = slow
    site.write([{"name": "slow", "url": site.server.url("slow.xml")}])
    worker = site.start("worker")
    wait_for(lambda: slow.total, "the worker polls", process=worker)
    stop(worker, signal.SIGKILL)  # while the server is still answering
    due = redis.Redis.from_url(site.redis_url).zscore("agg:{agg}:due", "slow")
    assert due is not None
    lease = due - time.time()
    assert 0 < lease <= 20 * 3 + 60 + 5, lease  # the shipped timeout's lease, then due again
    other = site.start("worker")
    time.sleep(2)
    assert slow.total == 1, "another worker took it before the lease ended"
    stop(other)


def test_note_scheduling_an_answer(site: Site) -> None:
    """Due again one interval later, stretched to Cache-Control max-age or RSS <ttl>, up to a
    day."""
    body = tech_feed()
    site.serve("maxage.xml", body, {**XML, "Cache-Control": "max-age=7200"})
    site.serve("ttl.xml", rss(tech_items(), ttl=180))
    site.serve("huge.xml", body, {**XML, "Cache-Control": "public, max-age=9999999"})
    site.serve("short.xml", body, {**XML, "Cache-Control": "max-age=60"})
    site.write(
        [
            {"name": name, "url": site.server.url(f"{name}.xml")}
            for name in ("maxage", "ttl", "huge", "short")
        ]
    )
    assert site.poll().counts["ok"] == 4
    rows = site.status()
    for name, seconds in (("maxage", 7200), ("ttl", 3 * 3600), ("huge", 86400), ("short", 900)):
        assert abs(due_in(rows[name]) - seconds) <= 3, name


def test_note_scheduling_failures_back_off(site: Site) -> None:
    """404, 5xx, timeouts: exponential backoff from the interval with ±10 % jitter, capped at
    a day, never given up."""
    site.server.routes["/broken.xml"] = Route(500, {"Content-Type": "text/plain"}, b"oops")
    site.write(
        [
            {"name": "missing", "url": site.server.url("missing.xml")},
            {"name": "broken", "url": site.server.url("broken.xml")},
            {"name": "daily", "url": site.server.url("missing.xml"), "interval": "1d"},
        ]
    )
    for failures in (1, 2):
        polled = site.poll()
        assert polled.returncode == 1
        rows = site.status()
        for name in ("missing", "broken"):
            expected = 900 * 2 ** (failures - 1)
            seconds = due_in(rows[name])
            assert expected * 0.9 - 2 <= seconds <= expected * 1.1 + 2, (name, failures, seconds)
        assert f"{failures} failure(s)" in rows["missing"]["notes"]
        assert "HTTP 404" in rows["missing"]["notes"] and "HTTP 500" in rows["broken"]["notes"]
        daily = due_in(rows["daily"])
        assert 86400 * 0.9 - 2 <= daily <= 86400 + 2, daily  # never beyond the day cap


def test_note_scheduling_retry_after(site: Site) -> None:
    """429 or 503 with Retry-After (seconds or a date): not before then, up to a week."""
    when = datetime.now(UTC) + timedelta(hours=5)
    site.server.routes["/busy.xml"] = Route(429, {"Retry-After": "7200"}, b"")
    site.server.routes["/down.xml"] = Route(
        503, {"Retry-After": format_datetime(when, usegmt=True)}, b""
    )
    site.server.routes["/later.xml"] = Route(429, {"Retry-After": str(30 * 86400)}, b"")
    site.write([{"name": n, "url": site.server.url(f"{n}.xml")} for n in ("busy", "down", "later")])
    assert site.poll().returncode == 1
    rows = site.status()
    assert (
        abs(
            (
                parse_when(rows["busy"]["next due"]) - parse_when(rows["busy"]["last poll"])
            ).total_seconds()
            - 7200
        )
        <= 3 * 60
    )
    assert abs((parse_when(rows["down"]["next due"]) - when).total_seconds()) <= 30 * 60
    later = due_in(rows["later"])
    assert abs(later - 7 * 86400) <= 60, later


def test_note_scheduling_redirects(site: Site) -> None:
    """301/308: the new URL is used from then on (status shows both); 302/307 are followed
    each time; 410: no longer scheduled, and status says so."""
    site.serve("new.xml", tech_feed())
    site.server.routes["/old.xml"] = Route(301, {"Location": site.server.url("new.xml")}, b"")
    site.server.routes["/temp.xml"] = Route(302, {"Location": site.server.url("new.xml")}, b"")
    site.server.routes["/gone.xml"] = Route(410, {"Content-Type": "text/plain"}, b"gone")
    site.write([{"name": n, "url": site.server.url(f"{n}.xml")} for n in ("old", "temp", "gone")])
    assert site.poll().counts["ok"] >= 2
    assert site.poll().returncode == 0
    assert len(site.requests_to("old.xml")) == 1  # the second poll went straight to new.xml
    assert len(site.requests_to("temp.xml")) == 2
    text = site.status_text()
    assert site.server.url("old.xml") in text and site.server.url("new.xml") in text
    rows = table_rows(text)
    assert "never" in rows["gone"]["next due"] and "410" in text


def test_note_politeness_per_host(site: Site) -> None:
    """settings.per_host holds across processes: two polls at once never have more than the
    shipped 2 requests under way to one host."""
    slow = InFlight(tech_feed(), 0.4)
    for n in range(6):
        site.server.routes[f"/p/{n}.xml"] = slow
    sources = [{"name": f"p{n}", "url": site.server.url(f"p/{n}.xml")} for n in range(6)]
    site.write(sources)
    first = site.start("poll", "p0", "p1", "p2")
    second = site.start("poll", "p3", "p4", "p5")
    assert first.wait(60) == 0 and second.wait(60) == 0
    assert slow.total == 6 and slow.most <= 2, (slow.total, slow.most)


def test_note_conditional_get(site: Site) -> None:
    """Stored ETag and Last-Modified are sent back; a 304, or an identical body from a server
    without validators, costs no parse and no entry write."""
    site.write(standard_sources(site))
    assert site.poll().returncode == 0
    second = site.poll()
    last = [r for r in site.server.requests if r.path == "/tech.xml"][-1]
    assert last.headers.get("If-None-Match") and last.headers.get("If-Modified-Since")
    assert last.status == 304
    assert "not modified" in second.row("tech")
    site.server.etags = False  # the same bytes again, now without validators
    quiet = site.poll()
    listed = {"jingjiribao": "4", "tech": "2"}
    for name, row in table_rows(quiet.stdout).items():
        shown = (row["status"], row["entries"], row["new"], row["updated"])
        assert shown == ("not modified", listed[name], "0", "0"), quiet.stdout
    assert site.server.requests[-1].status == 200


def test_note_feeds_are_cached(site: Site) -> None:
    """A rendered feed is cached under its index's version: many readers, one render; the ETag
    is the same from every web process; Atom enclosure links keep rel, type and length."""
    sources = standard_sources(site)
    episode = Item(
        "Episode 2: feeds",
        "https://tech.example.org/posts/ep2",
        hours_ago(4),
        enclosure=("https://tech.example.org/audio/ep2.mp3", "audio/mpeg", 654321),
    )
    site.serve("tech.xml", tech_feed([*tech_items(), episode]))
    site.write(sources)
    assert site.poll().returncode == 0
    one, two = site.web(), site.web()
    path = "/categories/technology.atom"
    # public_url unset: links follow the request, so both are asked under one name (as
    # behind one proxy); then every answer is the same bytes with the same ETag.
    host = {"Host": "feeds.example"}
    answers = [one.get(path, host) for _ in range(5)] + [two.get(path, host) for _ in range(5)]
    assert {a.status for a in answers} == {200}
    assert len({a.headers["ETag"] for a in answers}) == 1
    assert len({a.body for a in answers}) == 1
    renders = [
        float(m)
        for web in (one, two)
        for m in re.findall(
            r'aggregator_feed_renders_total\{format="atom"\} (\S+)', web.ok("/metrics").text
        )
    ]
    assert sum(renders) == 1, renders
    assert (
        '<link href="https://tech.example.org/audio/ep2.mp3" rel="enclosure" type="audio/mpeg" '
        'length="654321"/>'
    ) in answers[0].text
    site.serve(
        "tech.xml",
        tech_feed(
            [Item("Fresh story", "https://tech.example.org/fresh", hours_ago(0.2)), *tech_items()]
        ),
    )
    assert site.poll("tech").returncode == 0
    time.sleep(1.2)  # a process checks the version at most once a second
    fresh = one.get(path, host)
    assert fresh.headers["ETag"] != answers[0].headers["ETag"]
    assert titles(fresh.feed())[0] == "Fresh story"
    assert two.get(path, host).headers["ETag"] == fresh.headers["ETag"]


def test_note_embedded_redis(site: Site) -> None:
    """With no Redis URL: a redis-server on a Unix socket under data_dir, shared by commands
    run beside `aggregator run`, saved to dump.rdb on exit, and stopped by the kernel if the
    process that started it is killed."""
    env = {k: v for k, v in site.env.items() if k != "AGGREGATOR_REDIS_URL"}
    site.write(standard_sources(site))
    port = free_port()
    run = site.start("run", "--port", str(port), env=env)
    data = site.root / ".aggregator"
    sock = wait_for(
        lambda: next(iter(data.glob("*.sock")), None), "the embedded socket", process=run
    )
    client = redis.Redis(unix_socket_path=str(sock))
    wait_for(lambda: client.keys("agg:{agg}:entry:*"), "run polls into it", process=run)
    assert client.config_get("port")["port"] == "0"  # no TCP at all
    beside = site.cli("status", env=env).stdout
    assert re.search(r"jingjiribao .*│ 200 ", beside), beside  # `status` beside shares it
    pid = int(client.info("server")["process_id"])
    assert stop(run) == 0
    assert (data / "dump.rdb").is_file()
    wait_for(lambda: not _alive(pid), "the embedded redis-server stops", 10)

    run = site.start("run", "--port", str(free_port()), env=env)
    sock = wait_for(lambda: _answering(data), "the embedded socket again", process=run)
    pid = int(redis.Redis(unix_socket_path=str(sock)).info("server")["process_id"])
    stop(run, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), "the kernel stops it with its parent", 10)


def _answering(data: Path) -> Path | None:
    for path in data.glob("*.sock"):
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                return path
        except OSError:
            continue
    return None


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status
