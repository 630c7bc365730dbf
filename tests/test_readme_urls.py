"""README, "URLs": one test per row of the URL table, and one per promise of the text under
it (limit and page, unknown names, caching headers), against `aggregator web` run as a user
runs it, reading back what a subscriber's reader would."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import jsonschema
from lxml import etree

from aggregator.embedded import redis_server_binary
from tests.conftest import SCHEMAS, free_port
from tests.readme_support import (
    CHINA,
    Item,
    Site,
    Web,
    hours_ago,
    links_in,
    rss,
    standard_sources,
    titles,
    wait_for,
)

JINGJI_TAG = "经济日报新闻"
# Names config accepts that a URL must carry: dots, punctuation, spaces, slashes, %, #, ?,
# emoji, CJK.
AWKWARD_TAGS = ["node.js", "3.15晚会", "C# & .NET", "新闻/要闻", "100% 干货", "why?", "🔥 热点"]


def polled_site(site: Site) -> Web:
    sources = standard_sources(site)
    sources[1]["tags"] = ["财经", *AWKWARD_TAGS]
    sources[1]["category"] = "科技 · 互联网"
    site.write(sources)
    web = site.web(wait=False)
    polled = site.poll()
    assert polled.returncode == 0, polled.stdout + polled.stderr
    return web.wait()


def feed_path(kind: str, name: str, fmt: str) -> str:
    return f"/{kind}/{quote(name, safe='')}.{fmt}"


def assert_valid(atom: bytes, jsonfeed: bytes) -> None:
    rng = etree.RelaxNG(etree.parse(str(SCHEMAS / "atom.rng")))
    assert rng.validate(etree.fromstring(atom)), rng.error_log
    schema = json.loads((SCHEMAS / "jsonfeed-1.1.schema.json").read_text())
    jsonschema.validate(json.loads(jsonfeed), schema)


def dates_newest_first(parsed: object) -> None:
    dates = [e.get("published_parsed") or e.get("updated_parsed") for e in parsed.entries]  # type: ignore[attr-defined]
    assert dates == sorted(dates, reverse=True), dates


def test_row_url_tag_feeds(site: Site) -> None:
    """`/tags/<tag>.atom .rss .json`: the merged feed of a tag in three formats, newest first,
    for every name config accepts, percent-encoded (and `node.js` typed as is)."""
    web = polled_site(site)
    atom = web.ok(feed_path("tags", "财经", "atom"))
    rss_feed = web.ok(feed_path("tags", "财经", "rss"))
    jsonfeed = web.ok(feed_path("tags", "财经", "json"))
    assert atom.headers["Content-Type"].startswith("application/atom+xml")
    assert rss_feed.headers["Content-Type"].startswith("application/rss+xml")
    assert jsonfeed.headers["Content-Type"].startswith("application/feed+json")
    for parsed in (atom.feed(), rss_feed.feed()):
        shown = titles(parsed)
        assert len(shown) == 6 == len(set(shown)), shown
        assert {
            "2017年全国就业形势总体稳定",
            "直播带岗助力稳就业",
            "Release notes for this week",
        } <= set(shown)
        dates_newest_first(parsed)
    items = jsonfeed.json()["items"]
    assert [i["title"] for i in items] == titles(atom.feed())
    old = next(i for i in items if i["title"] == "一季度城镇新增就业稳步增长")
    assert old["date_published"] == "2022-04-05T05:50:27+08:00"
    assert b"2022-04-05T05:50:27+08:00" in atom.body
    assert b"Tue, 05 Apr 2022 05:50:27 +0800" in rss_feed.body
    assert_valid(atom.body, jsonfeed.body)

    for name in AWKWARD_TAGS:
        for fmt in ("atom", "rss", "json"):
            answer = web.get(feed_path("tags", name, fmt))
            assert answer.status == 200, (name, fmt, answer.status, answer.body[:200])
        parsed = web.ok(feed_path("tags", name, "atom")).feed()
        assert titles(parsed) == ["Release notes for this week", "Podcast: building static sites"]
        assert parsed.feed.title == name
    typed = web.ok("/tags/node.js.atom").feed()
    assert typed.feed.title == "node.js" and len(typed.entries) == 2
    assert "node.js" in web.ok("/tags/node.js").text


def test_row_url_category_feeds(site: Site) -> None:
    """`/categories/<category>.atom .rss .json`: the same for a category."""
    web = polled_site(site)
    category = "科技 · 互联网"
    for fmt in ("atom", "rss"):
        parsed = web.ok(feed_path("categories", category, fmt)).feed()
        assert titles(parsed) == ["Release notes for this week", "Podcast: building static sites"]
    jingji = web.ok(feed_path("categories", "jingjiribao", "json")).json()
    assert [i["title"] for i in jingji["items"]] == [
        "直播带岗助力稳就业",
        "外贸出口保持韧性 多地稳订单拓市场",
        "一季度城镇新增就业稳步增长",
        "2017年全国就业形势总体稳定",
    ]
    atom = web.ok(feed_path("categories", "jingjiribao", "atom")).body
    assert_valid(atom, json.dumps(jingji).encode("utf-8"))
    assert b"2017-12-03T09:30:05+08:00" in atom


def test_row_url_all_feeds(site: Site) -> None:
    """`/all.atom .rss .json`: everything, newest first."""
    web = polled_site(site)
    for fmt in ("atom", "rss"):
        parsed = web.ok(f"/all.{fmt}").feed()
        assert len(parsed.entries) == 6
        dates_newest_first(parsed)
    items = web.ok("/all.json").json()["items"]
    assert {i["_source"]["name"] for i in items} == {"jingjiribao", "tech"}
    assert items[0]["title"] == "直播带岗助力稳就业"
    assert items[-1]["title"] == "2017年全国就业形势总体稳定"


def test_row_url_html_pages(site: Site) -> None:
    """`/`, `/tags/<tag>`, `/categories/<category>`, `/entries/<id>`: an index with subscribe
    and autodiscovery links, listings, entry pages; every link they print answers 200."""
    web = polled_site(site)
    index = web.ok("/").text
    head = index.split("</head>")[0]
    assert 'rel="alternate" type="application/atom+xml"' in head
    assert 'type="application/feed+json"' in head
    assert "经济日报新闻" in index and "🔥 热点" in index
    seen: set[str] = set()
    pages = ["/"]
    while pages:
        page = pages.pop()
        answer = web.ok(page)
        if not answer.headers["Content-Type"].startswith("text/html"):
            continue
        for link in links_in(answer.text):
            url = urljoin(web.base + page, link.replace("&amp;", "&"))
            parts = urlsplit(url)
            if parts.netloc != urlsplit(web.base).netloc:
                continue
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            if path not in seen:
                seen.add(path)
                assert web.get(path).status == 200, (page, link)
                if not path.endswith((".atom", ".rss", ".json", ".opml", ".css")):
                    pages.append(path)
    for name in AWKWARD_TAGS:
        # Printed with the name's dots as %2E (a name ending in ".atom" stays a name) ...
        assert f"/tags/{quote(name, safe='').replace('.', '%2E')}" in seen, (name, sorted(seen))
        # ... and typed as a person would, dots and all, it answers too.
        for tail in ("", ".atom", ".rss", ".json"):
            assert web.get(f"/tags/{quote(name, safe='')}{tail}").status == 200, (name, tail)
    entries = [p for p in seen if p.startswith("/entries/")]
    assert len(entries) >= 6, sorted(seen)
    listing = web.ok("/tags/" + quote(JINGJI_TAG, safe="")).text
    assert "直播带岗助力稳就业" in listing and "2017年全国就业形势总体稳定" in listing
    item = web.ok("/all.json").json()["items"][-1]
    entry = web.ok(urlsplit(item["id"]).path).text
    assert "2017年全国就业形势总体稳定" in entry and "城镇新增就业人数超过预期" in entry


def test_row_url_sources_opml(site: Site) -> None:
    """`/sources.opml`: the sources as OPML 2.0, one folder per category."""
    web = polled_site(site)
    answer = web.ok("/sources.opml")
    root = etree.fromstring(answer.body)
    assert root.get("version") == "2.0"
    folders = {f.get("text"): [o.get("xmlUrl") for o in f] for f in root.find("body")}
    assert folders == {
        "jingjiribao": [site.server.url("jingji.xml")],
        "科技 · 互联网": [site.server.url("tech.xml")],
    }
    again = web.get("/sources.opml", {"If-None-Match": answer.headers["ETag"]})
    assert again.status == 304


def test_row_url_health(site: Site, tmp_path: Path) -> None:
    """`/healthz` liveness; `/readyz` Redis reachable (503 when not); `/metrics` Prometheus."""
    web = polled_site(site)
    assert web.ok("/healthz").status == 200
    assert web.ok("/readyz").status == 200
    web.ok("/all.atom")
    metrics = web.ok("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert 'aggregator_feed_requests_total{format="atom",status="200"}' in metrics.text

    # A Redis of our own that we can stop under a running web process.
    binary = shutil.which("redis-server") or redis_server_binary()
    port = free_port()
    redis_process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        env = dict(site.env, AGGREGATOR_REDIS_URL=f"redis://127.0.0.1:{port}/0")
        time.sleep(0.3)
        lonely = site.web(env=env)
        assert lonely.get("/readyz").status == 200
    finally:
        redis_process.terminate()
        redis_process.wait(10)
    assert wait_for(lambda: lonely.get("/readyz").status == 503, "readyz says 503", 5)
    assert lonely.get("/healthz").status == 200
    assert lonely.get("/all.atom").status == 503


def test_url_text_limit_and_page(site: Site) -> None:
    """Feeds take `?limit=N` (default 50, at most 500) and `?page=N` (RFC 5005, 1 = newest)."""
    many = [
        Item(f"第{n}条快讯", f"https://kuaixun.example.cn/{n}", hours_ago(n / 10, CHINA))
        for n in range(505)
    ]
    site.write(
        [
            {
                "name": "kuaixun",
                "url": site.serve("many.xml", rss(many, language="zh-cn")),
                "tags": ["快讯"],
            }
        ]
    )
    web = site.web(wait=False)
    polled = site.poll()
    assert polled.counts["new entries"] == 505, polled.stdout
    web.wait()
    path = feed_path("tags", "快讯", "atom")
    assert len(web.ok(path).feed().entries) == 50
    assert len(web.ok(path + "?limit=7").feed().entries) == 7
    assert len(web.ok(path + "?limit=1000").feed().entries) == 500
    first = web.ok(path + "?limit=200").feed()
    second = web.ok(path + "?limit=200&page=2").feed()
    third = web.ok(path + "?limit=200&page=3").feed()
    assert titles(first)[0] == "第0条快讯" and titles(second)[0] == "第200条快讯"
    assert len(third.entries) == 105 and titles(third)[-1] == "第504条快讯"
    rels = {link.rel: link.href for link in second.feed.links}
    assert {"first", "previous", "next"} <= set(rels), rels
    assert (
        "page=3" in rels["next"]
        and web.get(urlsplit(rels["next"]).path + "?" + urlsplit(rels["next"]).query).status == 200
    )
    assert "next" not in {link.rel for link in third.feed.links}
    jsonfeed = web.ok(feed_path("tags", "快讯", "json") + "?limit=200").json()
    assert "page=2" in jsonfeed["next_url"]
    assert web.get(path + "?page=99").status == 404
    assert web.get(path + "?limit=0").status == 400


def test_url_text_unknown_names(site: Site) -> None:
    """An unknown tag, category or format is a 404 with a short plain-text reason."""
    web = polled_site(site)
    for path in (
        feed_path("tags", "没有这个标签", "atom"),
        feed_path("categories", "没有这个分类", "rss"),
        "/tags/" + quote("没有这个标签", safe=""),
        feed_path("tags", "财经", "xml"),
        "/all.txt",
    ):
        answer = web.get(path)
        assert answer.status == 404, path
        assert answer.headers["Content-Type"].startswith("text/plain"), path
        assert len(answer.text.splitlines()) == 1 and len(answer.text) < 200, answer.text
    assert "没有这个标签" in web.get(feed_path("tags", "没有这个标签", "atom")).text


def test_url_text_caching_headers(site: Site) -> None:
    """ETag (a hash of the bytes), Last-Modified (the newest entry), Cache-Control max-age of
    the feed's shortest interval, and 304 for conditional requests."""
    web = polled_site(site)
    path = feed_path("tags", JINGJI_TAG, "atom")
    answer = web.ok(path)
    etag = answer.headers["ETag"]
    assert etag and answer.headers["Cache-Control"] == "public, max-age=900"
    modified = parsedate_to_datetime(answer.headers["Last-Modified"])
    # The feed last changed when its newest entry came in: not before that entry's date,
    # not after now.
    assert hours_ago(1) - timedelta(seconds=5) <= modified <= datetime.now(UTC), modified
    assert web.get(path, {"If-None-Match": etag}).status == 304
    assert web.get(path, {"If-Modified-Since": answer.headers["Last-Modified"]}).status == 304
    earlier = (modified - timedelta(hours=1)).astimezone(UTC)
    since = earlier.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert web.get(path, {"If-Modified-Since": since}).status == 200
    assert web.get(path, {"If-None-Match": '"something-else"'}).status == 200
