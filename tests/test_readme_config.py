"""README, "Configuration: feeds.yaml": one test per row of the key table, each run the way a
user runs the service (feeds.yaml of our own with the shipped defaults but for the key under
test, `python -m aggregator ...` subprocesses, `aggregator web`), asserting on what a
subscriber gets back."""

from __future__ import annotations

import gzip
import re
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import redis

from aggregator import __version__
from tests.conftest import Route, free_port
from tests.readme_support import (
    CHINA,
    JINGJI_OLD,
    InFlight,
    Item,
    Site,
    hours_ago,
    jingji_feed,
    parse_when,
    rss,
    standard_sources,
    stop,
    tech_feed,
    titles,
    wait_for,
)

JINGJI_TAG = "经济日报新闻"


def one_line_error(text: str) -> None:
    """A failure reason a person reads: no traceback, no repr of a cause chain."""
    assert "Traceback" not in text and "causes" not in text, text
    assert "Error(" not in text, text


def due_after_poll(site: Site, name: str) -> timedelta:
    row = site.status()[name]
    return parse_when(row["next due"]) - parse_when(row["last poll"])


def assert_about(actual: timedelta, seconds: float) -> None:
    assert abs(actual.total_seconds() - seconds) <= 3, (actual, seconds)


# --- settings ------------------------------------------------------------------------------


def test_row_settings_redis_url(site: Site) -> None:
    """`redis://`, `rediss://`, `unix://` or `redis+cluster://`; AGGREGATOR_REDIS_URL wins."""
    sources = standard_sources(site)
    no_env = {k: v for k, v in site.env.items() if k != "AGGREGATOR_REDIS_URL"}

    # redis:// from the file alone: the entries land in that Redis.
    site.write(sources, settings={"redis_url": site.redis_url})
    polled = site.poll(env=no_env)
    assert polled.returncode == 0, polled.stdout + polled.stderr
    client = redis.Redis.from_url(site.redis_url)
    assert any(b":entry:" in k for k in client.keys("*"))
    client.flushall()

    # The variable wins over an unreachable URL in the file.
    site.write(sources, settings={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    polled = site.poll()
    assert polled.returncode == 0, polled.stdout + polled.stderr
    assert polled.counts["ok"] == 2
    assert any(b":entry:" in k for k in client.keys("*"))

    # redis+cluster:// is accepted from the file and from the variable (tests/test_cluster.py
    # runs every command on real clusters); anything else that is not a Redis URL is refused.
    cluster = f"redis+cluster://127.0.0.1:{free_port()}"
    site.write(sources, settings={"redis_url": cluster})
    assert site.cli("check", env=no_env).returncode == 0
    site.write(sources)
    assert site.cli("check", env={**site.env, "AGGREGATOR_REDIS_URL": cluster}).returncode == 0
    refused = site.cli("check", env={**site.env, "AGGREGATOR_REDIS_URL": "memcached://x:1"})
    assert refused.returncode == 1 and "AGGREGATOR_REDIS_URL" in refused.stderr
    assert "not a Redis URL" in refused.stderr, refused.stderr

    # Offline there is no TLS Redis: the URL is accepted by `check`, and a command that
    # needs the server says in one line that it is not there.
    dead = free_port()
    for url in (f"rediss://127.0.0.1:{dead}/0",):
        site.write(sources, settings={"redis_url": url})
        checked = site.cli("check", env=no_env)
        assert checked.returncode == 0, (url, checked.stderr)
        failed = site.cli("status", env=no_env)
        assert failed.returncode != 0, url
        message = failed.stderr.strip()
        assert message and len(message.splitlines()) == 1, (url, message)
        one_line_error(message)
    # unix:// is what the embedded Redis uses (test_row_settings_data_dir runs on one).
    site.write(sources, settings={"redis_url": f"unix://{site.root}/redis.sock"})
    assert site.cli("check", env=no_env).returncode == 0
    site.write(sources, settings={"redis_url": "http://127.0.0.1:6379/"})
    refused = site.cli("check", env=no_env)
    assert refused.returncode == 1 and "settings.redis_url" in refused.stderr


def test_row_settings_data_dir(site: Site, tmp_path: Path) -> None:
    """The embedded Redis keeps its socket, log and dump.rdb under data_dir, relative to
    feeds.yaml's folder (whatever the working directory)."""
    env = {k: v for k, v in site.env.items() if k != "AGGREGATOR_REDIS_URL"}
    site.write(standard_sources(site), settings={"data_dir": "state"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    polled = site.cli("poll", env=env, cwd=elsewhere)
    assert polled.returncode == 0, polled.stdout + polled.stderr
    state = site.root / "state"
    assert (state / "dump.rdb").is_file(), sorted(p.name for p in state.iterdir())
    assert not (elsewhere / "state").exists() and not (site.root / ".aggregator").exists()
    # A later command starts it again from that dump: the entries are still there.
    status = site.cli("status", env=env, cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert re.search(r"jingjiribao .*│ 4 +│ [1-9]", status.stdout), status.stdout


def test_row_settings_public_url(site: Site) -> None:
    """Unset (the default): self and page links are built from the request's own scheme, host
    and port. Configured: it wins."""
    site.write(standard_sources(site))
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    web.wait()
    path = "/tags/" + quote(JINGJI_TAG, safe="")
    feed = web.ok(path + ".atom").feed()
    self_links = [link.href for link in feed.feed.links if link.rel == "self"]
    assert self_links == [web.base + path + ".atom"]
    assert web.ok("/all.json").json()["feed_url"] == web.base + "/all.json"
    index = web.ok("/").text
    assert f'href="{web.base}/tags/' in index and "localhost:8000" not in index
    stop(web.process)

    site.write(standard_sources(site), settings={"public_url": "https://news.example.cn/agg"})
    web = site.web()
    feed = web.ok(path + ".atom").feed()
    assert [link.href for link in feed.feed.links if link.rel == "self"] == [
        "https://news.example.cn/agg" + path + ".atom"
    ]
    item = web.ok("/all.json").json()["items"][0]
    assert item["id"].startswith("https://news.example.cn/agg/entries/")


def test_row_settings_trusted_proxies(site: Site) -> None:
    """With public_url unset, X-Forwarded-Proto/-Host make our links only for a request from
    an address listed in trusted_proxies; anyone else's are ignored."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "news.example.cn"}
    site.write(standard_sources(site))
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    web.wait()
    ignored = web.get("/all.json", forwarded).json()["feed_url"]
    assert ignored == web.base + "/all.json", ignored  # 127.0.0.1 is nobody's proxy yet
    stop(web.process)
    site.write(standard_sources(site), settings={"trusted_proxies": ["127.0.0.0/8"]})
    web = site.web()
    assert web.get("/all.json", forwarded).json()["feed_url"] == "https://news.example.cn/all.json"
    assert web.ok("/all.json").json()["feed_url"] == web.base + "/all.json"  # none sent


def test_row_settings_default_interval(site: Site) -> None:
    """A source that names no interval is polled every default_interval (15m shipped); the
    feeds say so in Cache-Control."""
    site.write(standard_sources(site))
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    assert_about(due_after_poll(site, "tech"), 15 * 60)
    web.wait()
    assert web.ok("/categories/technology.atom").headers["Cache-Control"] == ("public, max-age=900")
    stop(web.process)
    site.write(standard_sources(site), settings={"default_interval": "2h"})
    assert site.poll("tech").returncode == 0
    assert_about(due_after_poll(site, "tech"), 2 * 3600)


def test_row_settings_min_interval(site: Site) -> None:
    """No source is polled more often than min_interval (1m shipped)."""
    sources = standard_sources(site)
    sources[1]["interval"] = "10s"
    site.write(sources)
    assert site.poll("tech").returncode == 0
    assert_about(due_after_poll(site, "tech"), 60)
    site.write(sources, settings={"min_interval": "5s"})
    assert site.poll("tech").returncode == 0
    assert_about(due_after_poll(site, "tech"), 10)


def test_row_settings_timeout(site: Site) -> None:
    """The whole request is bounded by timeout; the failure is one line with the limit."""
    site.server.routes["/slow.xml"] = Route(
        200, {"Content-Type": "application/xml"}, tech_feed(), 4
    )
    site.server.routes["/quick.xml"] = Route(
        200, {"Content-Type": "application/xml"}, tech_feed(), 0.3
    )
    site.write(
        [
            {"name": "slow", "url": site.server.url("slow.xml")},
            {"name": "quick", "url": site.server.url("quick.xml")},
        ],
        settings={"timeout": "1s"},
    )
    polled = site.poll()
    assert polled.counts["ok"] == 1 and polled.counts["failed"] == 1, polled.stdout
    assert re.search(r"timed out after 1 ?s", polled.row("slow")), polled.stdout
    notes = site.status()["slow"]["notes"]
    assert re.search(r"timed out after 1 ?s", notes), notes
    one_line_error(notes)


def test_row_settings_max_bytes(site: Site) -> None:
    """The largest body read, counted after decompression: a small gzip that inflates past
    the limit is refused like a large body."""
    big = rss(
        [
            Item(f"Item {n}", f"https://big.example.org/{n}", hours_ago(n), "x" * 300)
            for n in range(20)
        ]
    )
    assert len(big) > 6000
    site.serve("big.xml", big)
    site.serve("small.xml", tech_feed())
    site.serve("bomb.xml", gzip.compress(big), {"Content-Encoding": "gzip"})
    site.server.routes["/bomb.xml"].headers["Content-Type"] = "application/xml"
    sources = [
        {"name": "big", "url": site.server.url("big.xml")},
        {"name": "small", "url": site.server.url("small.xml")},
        {"name": "bomb", "url": site.server.url("bomb.xml")},
    ]
    site.write(sources)
    default = site.poll()
    assert default.counts["ok"] == 3, default.stdout  # 10MB shipped: all of these fit

    redis.Redis.from_url(site.redis_url).flushall()  # no validators: whole bodies again
    site.write(sources, settings={"max_bytes": "4KB"})
    limited = site.poll()
    assert limited.counts["ok"] == 1 and limited.counts["failed"] == 2, limited.stdout
    for name in ("big", "bomb"):
        assert "max_bytes" in limited.row(name), limited.stdout
    assert len(gzip.compress(big)) < 4000  # the bomb was small on the wire


def test_row_settings_user_agent(site: Site) -> None:
    """`aggregator/<version> (+<public_url>)` unless set."""
    sources = standard_sources(site)[1:]
    site.write(sources)
    assert site.poll().returncode == 0
    agent = site.server.requests[-1].headers["User-Agent"]
    assert agent.startswith(f"aggregator/{__version__}"), agent
    site.write(sources, settings={"public_url": "https://news.example.cn/"})
    assert site.poll().returncode == 0
    assert site.server.requests[-1].headers["User-Agent"] == (
        f"aggregator/{__version__} (+https://news.example.cn/)"
    )
    site.write(sources, settings={"user_agent": "NewsDesk/2.0 (+mailto:desk@example.cn)"})
    assert site.poll().returncode == 0
    assert site.server.requests[-1].headers["User-Agent"] == (
        "NewsDesk/2.0 (+mailto:desk@example.cn)"
    )


def test_row_settings_retention(site: Site) -> None:
    """Per category: newest max_entries kept; an entry goes max_age after its source last
    listed it, never while listed (a 304 lists again); each source keeps keep_per_source."""
    sources = standard_sources(site)
    site.write(sources)
    web = site.web(wait=False)
    first = site.poll()
    assert first.returncode == 0
    web.wait()
    shown = titles(web.ok("/all.atom").feed())
    # Shipped defaults keep the 2017, 2019 and 2022 entries their feeds still list.
    for title in (
        "2017年全国就业形势总体稳定",
        "一季度城镇新增就业稳步增长",
        "Podcast: building static sites",
    ):
        assert title in shown, shown
    assert len(shown) == 6 == first.counts["new entries"]
    stop(web.process)

    # max_entries caps each category, newest by date kept; "new" counts only what is seen.
    redis.Redis.from_url(site.redis_url).flushall()
    site.write(sources, settings={"retention": {"max_entries": 3}})
    web = site.web(wait=False)
    capped = site.poll()
    assert capped.counts["new entries"] == 3 + 2, capped.stdout
    assert capped.counts.get("cut by max_entries") == 1, capped.stdout
    web.wait()
    kept = titles(web.ok("/categories/jingjiribao.atom").feed())
    assert "2017年全国就业形势总体稳定" not in kept and len(kept) == 3, kept
    assert site.status()["jingjiribao"]["stored"] == "3"
    stop(web.process)

    # Age counts from the last listing; keep_per_source holds a source's newest.
    redis.Redis.from_url(site.redis_url).flushall()
    recent = Item("最新消息", "https://finews.example.cn/new.html", hours_ago(1, CHINA))
    site.serve("jingji.xml", jingji_feed([recent, *JINGJI_OLD]))
    site.serve("tech.xml", tech_feed())
    site.write(sources, settings={"retention": {"max_age": "2s", "keep_per_source": 2}})
    assert site.poll().counts["new entries"] == 3 + 2
    site.serve("jingji.xml", jingji_feed([recent]))  # the old two are no longer listed
    assert site.poll().returncode == 0
    time.sleep(2.5)  # past max_age since they were last listed
    web = site.web(wait=False)
    assert site.poll().returncode == 0  # tech answers 304: its 2019 entry is listed again
    web.wait()
    left = titles(web.ok("/all.atom").feed())
    assert "最新消息" in left and "Podcast: building static sites" in left, left
    assert "一季度城镇新增就业稳步增长" in left, left  # second newest of its source: kept
    assert "2017年全国就业形势总体稳定" not in left, left  # unlisted, aged out


def test_row_settings_per_host(site: Site) -> None:
    """`concurrency` requests at once to one host (2 shipped) and `per_minute` (30 shipped)."""
    slow = InFlight(tech_feed(), 0.4)
    for n in range(6):
        site.server.routes[f"/host/{n}.xml"] = slow
    sources = [{"name": f"s{n}", "url": site.server.url(f"host/{n}.xml")} for n in range(6)]
    site.write(sources)
    polled = site.poll()
    assert polled.counts["ok"] == 6, polled.stdout
    assert slow.most == 2, slow.most  # the shipped limit, and used to the full

    # per_minute: 3 lets three of five start, and the poll waits for the minute to pass.
    redis.Redis.from_url(site.redis_url).flushall()
    quick = InFlight(tech_feed(), 0.0)
    for n in range(5):
        site.server.routes[f"/host/{n}.xml"] = quick
    site.write(sources[:5], settings={"per_host": {"per_minute": 3}})
    waiting = site.start("poll")
    wait_for(lambda: quick.total >= 3, "three requests made", timeout=30, process=waiting)
    time.sleep(1.5)  # the other two would have been asked for by now, were they allowed
    assert waiting.poll() is None, "the poll did not wait for the per-minute limit"
    assert quick.total == 3, quick.total
    stop(waiting)


def test_row_settings_block_private_addresses(site: Site) -> None:
    """true refuses a source resolving to a loopback address, with the reason on the source;
    the server never sees the request. false (shipped) polls it."""
    sources = standard_sources(site)[1:]
    site.write(sources)
    assert site.poll().counts["ok"] == 1
    redis.Redis.from_url(site.redis_url).flushall()
    seen = len(site.server.requests)
    site.write(sources, settings={"block_private_addresses": True})
    polled = site.poll()
    assert polled.returncode == 1 and polled.counts["failed"] == 1, polled.stdout
    assert len(site.server.requests) == seen
    notes = site.status()["tech"]["notes"]
    assert "127.0.0.1" in notes and ("private" in notes or "loopback" in notes), notes
    one_line_error(notes)


def test_row_settings_websub_hub(site: Site) -> None:
    """Advertised in every feed we publish and pinged on change; needs public_url. (The pings,
    once per changed feed URL and only from workers: tests/test_websub_publish.py.)"""
    hub = "http://127.0.0.1:9/hub"  # advertised only: nothing here asks it anything
    site.write(standard_sources(site), settings={"websub_hub": hub})
    refused = site.cli("check")
    assert refused.returncode == 1
    assert "settings.websub_hub" in refused.stderr and "settings.public_url" in refused.stderr
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    site.write(standard_sources(site), settings={"websub_hub": hub, "public_url": base})
    assert site.cli("check").returncode == 0
    web = site.web(wait=False, port=port)
    assert site.poll().returncode == 0
    web.wait()
    path = "/tags/" + quote(JINGJI_TAG, safe="") + ".atom"
    answer = web.ok(path)
    assert f'<{hub}>; rel="hub"' in answer.headers["Link"], answer.headers["Link"]
    links = {link["rel"]: link["href"] for link in answer.feed().feed.links}
    assert links["hub"] == hub and links["self"].startswith(base)
    assert web.ok("/all.json").json()["hubs"] == [{"type": "WebSub", "url": hub}]


# --- sources -------------------------------------------------------------------------------


def test_row_sources_name(site: Site) -> None:
    """Unique, [a-z0-9_-]+, required; `poll NAME` polls only that source."""
    url = site.serve("tech.xml", tech_feed())
    site.write(
        [
            {"name": "Tech News", "url": url},
            {"name": "a", "url": url},
            {"url": url},
            {"name": "a", "url": url},
        ]
    )
    checked = site.cli("check")
    assert checked.returncode == 1
    for problem in ("sources[0].name", "sources[2].name: required", "sources[3].name: duplicate"):
        assert problem in checked.stderr, checked.stderr
    sources = standard_sources(site)
    site.write(sources)
    polled = site.poll("tech")
    assert polled.returncode == 0 and polled.counts["ok"] == 1
    assert site.requests_to("tech.xml") and not site.requests_to("jingji.xml")
    unknown = site.cli("poll", "nosuch")
    assert unknown.returncode == 2 and "nosuch" in unknown.stderr


def test_row_sources_url(site: Site) -> None:
    """The feed, http or https; anything else is refused by `check` with its place."""
    site.write([{"name": "a", "url": "ftp://files.example.cn/rss.xml"}])
    checked = site.cli("check")
    assert checked.returncode == 1
    assert "sources[0].url: not an http(s) URL" in checked.stderr
    # Offline there is no TLS feed server: an https URL on a plain-HTTP port is polled and
    # fails with one line, the http one beside it is read.
    sources = standard_sources(site)
    sources.append({"name": "tls", "url": f"https://127.0.0.1:{site.server.port}/tech.xml"})
    site.write(sources)
    polled = site.poll()
    assert polled.counts["ok"] == 2 and polled.counts["failed"] == 1, polled.stdout
    notes = site.status()["tls"]["notes"]
    assert notes, "the failure is recorded on the source"
    one_line_error(notes)


def test_row_sources_category(site: Site) -> None:
    """Its entries are filed under the category; it defaults to the name."""
    site.write(standard_sources(site))
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    web.wait()
    tech = titles(web.ok("/categories/technology.atom").feed())
    assert tech == ["Release notes for this week", "Podcast: building static sites"]
    jingji = web.ok("/categories/jingjiribao.json").json()["items"]
    assert {i["_source"]["category"] for i in jingji} == {"jingjiribao"}
    assert len(jingji) == 4
    assert web.get("/categories/tech.atom").status == 404  # the name is not its category


def test_row_sources_tags(site: Site) -> None:
    """The merged feeds its entries appear in: any Unicode text; none by default."""
    sources = standard_sources(site)
    sources.append(
        {
            "name": "plain",
            "url": site.serve(
                "plain.xml",
                rss([Item("Untagged story", "https://plain.example.org/1", hours_ago(5))]),
            ),
        }
    )
    site.write(sources)
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    web.wait()
    both = titles(web.ok("/tags/" + quote("财经", safe="") + ".atom").feed())
    assert len(both) == 6 and "直播带岗助力稳就业" in both and "Release notes for this week" in both
    assert "Untagged story" not in both
    only = titles(web.ok("/tags/" + quote(JINGJI_TAG, safe="") + ".rss").feed())
    assert len(only) == 4 and "Release notes for this week" not in only
    node = web.ok("/tags/node.js.json").json()["items"]
    assert [i["title"] for i in node] == [
        "Release notes for this week",
        "Podcast: building static sites",
    ]
    assert "Untagged story" in titles(web.ok("/all.atom").feed())


def test_row_sources_title(site: Site) -> None:
    """The source's title in our feeds; else the feed's own."""
    site.write(standard_sources(site))
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    web.wait()
    items = web.ok("/all.json").json()["items"]
    by_source = {i["_source"]["name"]: i["_source"]["title"] for i in items}
    assert by_source == {"jingjiribao": "经济日报", "tech": "Example Tech News"}
    atom = web.ok("/categories/jingjiribao.atom").text
    assert "<source><title>经济日报</title>" in atom


def test_row_sources_interval(site: Site) -> None:
    """This source's poll interval; readers are told its feeds change no faster (max-age,
    at most an hour)."""
    sources = standard_sources(site)
    sources[0]["interval"] = "5m"
    sources[1]["interval"] = "2h"
    site.write(sources)
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    rows = site.status()
    assert_about(
        parse_when(rows["jingjiribao"]["next due"]) - parse_when(rows["jingjiribao"]["last poll"]),
        300,
    )
    assert_about(parse_when(rows["tech"]["next due"]) - parse_when(rows["tech"]["last poll"]), 7200)
    web.wait()
    assert web.ok("/categories/technology.rss").headers["Cache-Control"] == "public, max-age=3600"
    assert web.ok("/categories/jingjiribao.rss").headers["Cache-Control"] == "public, max-age=300"
    # a tag of both sources: the shortest
    assert web.ok("/tags/%E8%B4%A2%E7%BB%8F.rss").headers["Cache-Control"] == (
        "public, max-age=300"
    )


def test_row_sources_include_exclude(site: Site) -> None:
    """Plain words (case-insensitive) or `re:` expressions on title and text; a change of
    filters, after `reload`, removes what they now refuse on the next poll, even a 304."""
    sources = standard_sources(site)
    sources[0]["include"] = ["稳就业", "re:直播.*岗"]
    sources[0]["exclude"] = ["2017年"]
    sources[1]["include"] = ["RELEASE"]
    site.write(sources)
    polled = site.poll()
    assert polled.returncode == 0
    # jingji: 直播带岗助力稳就业 (both), 一季度… (稳就业 in its text); the 2017 one is excluded
    # though its text says 就业; 外贸出口… matches nothing. tech: only "Release notes".
    assert polled.counts["new entries"] == 3, polled.stdout
    assert polled.counts.get("filtered") == 3, polled.stdout
    web = site.web()
    shown = titles(web.ok("/all.atom").feed())
    assert sorted(shown) == sorted(
        ["直播带岗助力稳就业", "一季度城镇新增就业稳步增长", "Release notes for this week"]
    )
    stop(web.process)

    sources[0]["exclude"] = ["直播"]
    site.write(sources)
    assert site.cli("reload").returncode == 0
    web = site.web(wait=False)
    again = site.poll()
    # The server would answer 304; the changed filters make the poll read the document whole.
    assert "HTTP 200" in again.row("jingjiribao"), again.stdout
    assert "not modified" in again.row("tech"), again.stdout
    web.wait()
    shown = titles(web.ok("/all.atom").feed())
    assert "直播带岗助力稳就业" not in shown and "一季度城镇新增就业稳步增长" in shown, shown


def test_row_sources_enabled(site: Site) -> None:
    """false stops polling it; `status` says so."""
    sources = standard_sources(site)
    sources[1]["enabled"] = False
    site.write(sources)
    polled = site.poll()
    assert polled.counts["ok"] == 1, polled.stdout
    assert not site.requests_to("tech.xml")
    rows = site.status()
    assert rows["tech"]["enabled"] == "no" and rows["tech"]["next due"] == "-"
    assert rows["jingjiribao"]["enabled"] == "yes"


def test_row_sources_websub(site: Site) -> None:
    """`true`: subscribe when the source advertises a hub; needs public_url to be reachable,
    and `status` says so when it is unset. (Subscription, signed pushes reaching the merged
    feed, renewal, denial and the safety net: tests/test_websub.py.)"""
    sources = standard_sources(site)
    sources[1]["websub"] = True
    site.write(sources)
    assert site.cli("check").returncode == 0
    assert site.poll().returncode == 0
    notes = site.status()[sources[1]["name"]]["notes"]
    assert "public_url" in notes, notes  # no callback a hub could reach: polled as ever
    sources[1]["websub"] = "yes please"
    site.write(sources)
    refused = site.cli("check")
    assert refused.returncode == 1 and "sources[1].websub" in refused.stderr


def test_row_categories_and_tags_metadata(site: Site) -> None:
    """`title`, `description` shown in feeds and pages; the name when none."""
    site.write(
        standard_sources(site),
        categories={"technology": {"title": "科技", "description": "科技与互联网"}},
        tags={JINGJI_TAG: {"title": "经济日报 · 要闻", "description": "经济日报每日要闻"}},
    )
    web = site.web(wait=False)
    assert site.poll().returncode == 0
    web.wait()
    tag = "/tags/" + quote(JINGJI_TAG, safe="")
    atom = web.ok(tag + ".atom").feed()
    assert atom.feed.title == "经济日报 · 要闻" and atom.feed.subtitle == "经济日报每日要闻"
    rss_feed = web.ok(tag + ".rss").feed()
    assert rss_feed.feed.title == "经济日报 · 要闻"
    assert rss_feed.feed.description == "经济日报每日要闻"
    category = web.ok("/categories/technology.json").json()
    assert category["title"] == "科技" and category["description"] == "科技与互联网"
    page = web.ok(tag).text
    assert "经济日报 · 要闻" in page
    index = web.ok("/").text
    assert "科技与互联网" in index and "经济日报每日要闻" in index
    # no metadata: the name
    assert web.ok("/tags/node.js.atom").feed().feed.title == "node.js"
    assert web.ok("/categories/jingjiribao.json").json()["title"] == "jingjiribao"
