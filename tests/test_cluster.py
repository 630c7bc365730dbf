"""Redis Cluster end to end: feeds.yaml → `aggregator poll`/`worker` → `aggregator web`, on real
clusters the tests start (tests/clusters.py), beside one Redis doing the same work.

A cluster must serve exactly what one node serves, spread its data over every master, dedup a
story two sources in different slots bring at once, repair on the next poll whatever a worker
killed at any step of a write left, and ride through a master's failover."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from redis.cluster import RedisCluster

from aggregator import keys
from aggregator.store import Store
from aggregator.store.staged import Staged
from tests.conftest import FeedServer
from tests.readme_support import (
    Item,
    Site,
    hours_ago,
    make_site,
    rss,
    standard_sources,
    stop,
    tech_feed,
    tech_items,
    wait_for,
)

CRASH_HOOK = Path(__file__).parent / "crash_hook"


def fixture_sources(site: Site) -> list[dict[str, Any]]:
    """The standard sources, a copy of tech in another category (the same stories from a
    source in another slot), and the fixture feeds of every format and charset."""
    sources = standard_sources(site)
    sources.append(
        {"name": "tech-mirror", "url": site.server.url("tech.xml"), "category": "mirrors"}
    )
    for name, category in [
        ("atom.xml", "formats"),
        ("feed.json", "formats"),
        ("rss1.rdf", "formats"),
        ("rss2.xml", "formats"),
        ("gbk.xml", "新闻"),
        ("gbk2.xml", "新闻"),
        ("gb2312-labelled.xml", "新闻"),
    ]:
        sources.append(
            {
                "name": name.replace(".", "-"),
                "url": site.server.url(name),
                "category": category,
                "tags": ["全部", name.split(".")[1]],
            }
        )
    return sources


def stored(url: str) -> dict[str, list[tuple[str, str]]]:
    """Every feed's entries as the store serves them (title, date), by feed. (Which copy of a
    story two sources bring keeps its id depends on which saved first: ids are not compared.)"""
    store = Store.from_url(url)
    try:
        feeds: dict[str, list[tuple[str, str]]] = {}
        tags = {t for e in store.entries("all", limit=10_000) for t in e.all_tags}
        categories = {c for e in store.entries("all", limit=10_000) for c in e.all_categories}
        names = [("all", ""), *(("tag", t) for t in tags), *(("category", c) for c in categories)]
        for kind, name in names:
            feeds[f"{kind}:{name}"] = [
                (e.title, e.date.isoformat())
                for e in store.entries(kind, name, limit=10_000)  # type: ignore[arg-type]
            ]
        return feeds
    finally:
        store.close()


def served(site: Site, web: Any, feeds: list[str]) -> dict[str, Any]:
    """What a subscriber reads: each JSON Feed's items (title, dates, content)."""
    out = {}
    for path in feeds:
        items = web.ok(path).json()["items"]
        out[path] = [(i["title"], i.get("date_published"), i.get("content_html")) for i in items]
    return out


def _post(path: Path) -> tuple[str, ...]:
    """An exported post, less what depends on which of two sources bringing one story saved
    first (its id in the file name, the order of its categories, the category it links back
    to): the date, then each line with the categories sorted."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("categories: "):
            line = "categories: " + " ".join(sorted(line.split()[1:]))
        lines.append(re.sub(r"^\[返回[^\]]*\]\(/categories/[^)]*\)", "[返回…]", line))
    return (path.name[:10], *lines)


def feed_paths(names: dict[str, Any]) -> list[str]:
    paths = []
    for key in names:
        kind, _, name = key.partition(":")
        if kind == "all":
            paths.append("/all.json")
        else:
            folder = "tags" if kind == "tag" else "categories"
            paths.append(f"/{folder}/{quote(name, safe='')}.json")
    return paths


def test_cluster_serves_what_one_node_serves(site: Site, cluster_site: Site) -> None:
    """The same feeds.yaml polled on one Redis and on a cluster: every merged feed, status,
    export, reload and retention come out the same."""
    sources = fixture_sources(site)
    settings = {"retention": {"max_entries": 4}}  # the 新闻 category is cut on both
    for s in (site, cluster_site):
        s.write(sources, settings=settings)
    first = [s.poll() for s in (site, cluster_site)]
    assert first[0].returncode == first[1].returncode == 0, first[1].stdout + first[1].stderr
    # What counts as new before max_entries cuts depends on which source saved first.
    same = ("ok", "failed")
    assert [first[0].counts[c] for c in same] == [first[1].counts[c] for c in same]
    counts = first[1].counts
    assert counts["failed"] == 0 and counts["merged"] >= 2 and counts["cut by max_entries"] > 0

    one, spread = stored(site.redis_url), stored(cluster_site.redis_url)
    assert one == spread
    assert len(spread["all:"]) >= 12, spread["all:"]
    assert len(spread["category:新闻"]) == 4

    webs = [s.web() for s in (site, cluster_site)]
    paths = feed_paths(one)
    assert served(site, webs[0], paths) == served(cluster_site, webs[1], paths)
    for path in ("/all.atom", "/tags/" + quote("全部", safe="") + ".rss", "/"):
        webs[1].ok(path)
    page = webs[1].ok("/all.json").json()["items"][0]["id"]  # our page of the entry
    assert page.startswith(webs[1].base + "/entries/")
    assert webs[1].ok(page.removeprefix(webs[1].base)).status == 200

    # A changed entry and a new one: updated in place on both, the same way.
    items = tech_items()
    items[0] = Item(items[0].title, items[0].link, items[0].date, description="<p>Fixed.</p>")
    items.append(Item("A new post", "https://tech.example.com/new", hours_ago(0.5)))
    site.serve("tech.xml", tech_feed(items))
    again = [s.poll() for s in (site, cluster_site)]
    assert again[0].summary == again[1].summary, (again[0].stdout, again[1].stdout)
    assert "1 new entries" in again[1].summary, again[1].stdout
    assert stored(site.redis_url) == stored(cluster_site.redis_url)

    status = [s.status() for s in (site, cluster_site)]
    for name in (s["name"] for s in sources):
        # Entries in the document: the same counts. (Not "stored": which of two sources
        # bringing one story keeps it when max_entries cuts between copies dated alike depends
        # on which saved first, as the feeds above show the same entries either way; the
        # total stored is compared above.)
        one_row, cluster_row = status[0][name], status[1][name]
        assert one_row["entries"] == cluster_row["entries"], (one_row, cluster_row)

    exports = []
    for s in (site, cluster_site):
        out = s.root / "export"
        done = s.cli("export", "jekyll", "--out", str(out))
        assert done.returncode == 0, done.stderr
        exports.append(sorted(_post(p) for p in (out / "_posts").iterdir()))
    assert exports[0] == exports[1] and exports[1]

    reloaded = cluster_site.cli("reload")
    assert reloaded.returncode == 0, reloaded.stderr


def test_cluster_spreads_keys_and_memory(cluster: Any, cluster_site: Site) -> None:
    """1,000 sources in 20 categories on 3 masters: each master holds 20–50 % of the keys and
    of the memory, and every merged feed is complete."""
    sources = []
    for n in range(1000):
        items = [
            Item(f"Story {n}.{k}", f"https://s{n}.example.org/{k}", hours_ago(n / 10 + k))
            for k in range(3)
        ]
        sources.append(
            {
                "name": f"source-{n:04d}",
                "url": cluster_site.serve(f"s{n}.xml", rss(items)),
                "category": f"category-{n % 20:02d}",
                "tags": [f"tag-{n % 7}"],
            }
        )
    cluster_site.write(sources, settings={"per_host": {"concurrency": 16, "per_minute": 100_000}})
    done = cluster_site.cli("poll", timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1000 ok, 0 failed, 3000 new entries" in done.stdout, done.stdout[-500:]

    counts, memory = cluster.key_counts(), cluster.used_memory()
    for reading in (counts, memory):
        total = sum(reading.values())
        shares = {port: value / total for port, value in reading.items()}
        assert len(shares) == 3 and all(0.2 <= s <= 0.5 for s in shares.values()), shares

    store = Store.from_url(cluster.url)
    try:
        assert store.count("all") == 3000
        for c in range(20):
            assert store.count("category", f"category-{c:02d}") == 150
        for t in range(7):
            expected = sum(3 for n in range(1000) if n % 7 == t)
            assert len(store.entries("tag", f"tag-{t}", limit=1000)) == expected
    finally:
        store.close()
    newest = cluster_site.web().ok("/all.json").json()["items"]
    assert [i["title"] for i in newest[:3]] == ["Story 0.0", "Story 1.0", "Story 2.0"]


def test_cluster_dedups_one_story_from_many_slots_at_once(cluster: Any, cluster_site: Site) -> None:
    """40 sources (spread over the slots) publish the same 5 stories, polled at once: each
    story is stored once, its claim settled (no TTL left)."""
    items = [
        Item(f"Shared story {k}", f"https://wire.example.org/{k}", hours_ago(k + 1))
        for k in range(5)
    ]
    sources = [
        {
            "name": f"paper-{n:02d}",
            "url": cluster_site.serve(f"paper-{n}.xml", rss(items)),
            "category": f"desk-{n % 4}",
        }
        for n in range(40)
    ]
    # One host serves them all: politeness would spread the 40 requests over two minutes.
    cluster_site.write(sources, settings={"per_host": {"concurrency": 8, "per_minute": 1000}})
    done = cluster_site.poll()
    assert done.returncode == 0, done.stderr
    assert "40 ok, 0 failed, 5 new entries, 195 merged" in done.summary, done.stdout
    assert [e[0] for e in stored(cluster.url)["all:"]] == [i.title for i in items]
    client = RedisCluster.from_url(cluster.url.replace("redis+cluster", "redis"))
    try:
        claims = list(client.scan_iter("*:canon:*", target_nodes=RedisCluster.PRIMARIES))
        assert claims and all(client.pttl(k) == -1 for k in claims)
    finally:
        client.close()


@pytest.mark.parametrize("step", Staged.STEPS)
def test_cluster_write_killed_at_any_step_is_repaired(
    step: str, site: Site, cluster: Any, cluster_site: Site
) -> None:
    """A poller killed (kill -9, as it were) at any step of a staged write: readers never see
    an entry half written, and the next poll leaves exactly what one uninterrupted poll
    leaves on one Redis."""
    sources = fixture_sources(site)
    for s in (site, cluster_site):
        s.write(sources)
    assert site.poll().returncode == 0
    env = dict(
        cluster_site.env,
        PYTHONPATH=os.pathsep.join([str(CRASH_HOOK), os.environ.get("PYTHONPATH", "")]),
        AGGREGATOR_TEST_CRASH_AT=step,
    )
    crashed = cluster_site.poll(env=env)
    assert crashed.counts["ok"] < len(sources), crashed.stdout  # the crash happened
    for entries in stored(cluster.url).values():
        # Whatever the crash left, a feed lists only whole entries.
        assert all(title for title, _ in entries)
    repaired = cluster_site.poll()
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert stored(cluster.url) == stored(site.redis_url)
    client = RedisCluster.from_url(cluster.url.replace("redis+cluster", "redis"))
    try:
        claims = list(client.scan_iter("*:canon:*", target_nodes=RedisCluster.PRIMARIES))
        in_flight = [k for k in claims if client.pttl(k) != -1]
        assert claims and not in_flight, in_flight
    finally:
        client.close()


def test_cluster_rides_through_a_failover(
    failover_cluster: Any, tmp_path: Path, feed_server: FeedServer, environ: dict[str, str]
) -> None:
    """3 masters with a replica each: kill -9 a master while a worker polls and a web process
    serves. /readyz says 503 while its slots are uncovered and 200 once the replica took
    over; the worker goes on; nothing fetched is lost or stored twice."""
    site = make_site(tmp_path, failover_cluster.every_node_url, feed_server, environ)
    try:
        _failover(site, failover_cluster)
    finally:
        site.stop_all()


def _failover(site: Site, cluster: Any) -> None:
    def feed(n: int, count: int) -> bytes:
        return rss(
            [
                Item(f"Item {n}.{k}", f"https://f{n}.example.org/{k}", hours_ago(k / 10 + n / 100))
                for k in range(count)
            ]
        )

    sources = [
        {"name": f"f{n:02d}", "url": site.serve(f"f{n}.xml", feed(n, 3)), "interval": "2s"}
        for n in range(30)
    ]
    site.write(sources, settings={"min_interval": "1s"})
    worker = site.start("worker")
    web = site.web()
    # Every node named: whichever master is killed, a process started after still connects.
    url = cluster.every_node_url
    wait_for(lambda: _count(url) == 90, "the first round stored", process=worker)

    for n in range(30):
        site.serve(f"f{n}.xml", feed(n, 5))  # two new items each, fetched around the kill
    victim = cluster.masters()[0]
    cluster.kill(victim)
    saw_down = False
    seen: list[tuple[float, int]] = []  # (seconds since the kill, status) as it changed
    killed = time.monotonic()
    while time.monotonic() < killed + 30:
        status = web.get("/readyz").status
        if not seen or seen[-1][1] != status:
            seen.append((round(time.monotonic() - killed, 1), status))
        saw_down = saw_down or status == 503
        if saw_down and status == 200:
            break
        time.sleep(0.1)
    assert saw_down, f"/readyz never said a slot was uncovered: {seen}"
    assert web.get("/readyz").status == 200, "/readyz not ready after the failover"
    cluster.wait_ok(15)
    wait_for(lambda: _count(url) == 150, "every new item stored", process=worker, timeout=60)
    assert worker.poll() is None, "the worker died"
    titles = [i["title"] for i in web.ok("/all.json?limit=200").json()["items"]]
    assert len(titles) == len(set(titles)) == 150
    stop(worker)


def _count(url: str) -> int:
    try:
        store = Store.from_url(url)
    except Exception:
        return -1
    try:
        return store.count("all")
    except Exception:
        return -1
    finally:
        store.close()


def test_redis_errors_name_the_cluster(cluster_site: Site) -> None:
    """A cluster nobody answers at: one line naming it, no traceback."""
    from tests.conftest import free_port

    dead = f"redis+cluster://127.0.0.1:{free_port()}"
    cluster_site.write(standard_sources(cluster_site))
    done = cluster_site.cli("status", env={**cluster_site.env, "AGGREGATOR_REDIS_URL": dead})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and dead in done.stderr, done.stderr


def test_staged_index_writes_of_thousands_of_entries(cluster: Any) -> None:
    """A feed listing thousands of entries: its index additions and removals fit the scripts
    that apply them (Lua's unpack takes at most a few thousand values at once)."""

    client = RedisCluster.from_url(cluster.url.replace("redis+cluster", "redis"))
    index = keys.CLUSTER.index("tag", "a feed of thousands")
    try:
        with Staged(client) as pipe:
            pipe.multi()
            pipe.zadd(index, {f"id{n}": n for n in range(10_000)})
            pipe.execute()
        assert client.zcard(index) == 10_000
        version = int(client.get(keys.Layout.version(index)) or 0)
        assert version >= 1
        with Staged(client) as pipe:
            pipe.multi()
            pipe.zrem(index, *(f"id{n}" for n in range(9_000)))
            pipe.execute()
        assert client.zcard(index) == 1_000
        assert int(client.get(keys.Layout.version(index)) or 0) > version
    finally:
        client.close()


def test_a_claim_left_in_flight_by_a_crash_is_renewed_by_its_owner(cluster: Any) -> None:
    """A write claiming a story whose claim it already holds in flight (a crashed write of the
    same entry took it) renews the in-flight time: the claim cannot lapse before this write
    settles it, which would let another source store a second copy meanwhile."""
    from aggregator.store import staged

    client = RedisCluster.from_url(cluster.url.replace("redis+cluster", "redis"))
    key = keys.CLUSTER.canon("https://wire.example.org/crashed")
    try:
        client.set(key, "entry-a", px=300)  # what the crashed write left: about to lapse
        assert client.eval(staged._CLAIM_NEW, 1, key, "entry-a", staged.IN_FLIGHT_MS) == 1
        assert client.pttl(key) > 1000
        assert client.eval(staged._CLAIM_NEW, 1, key, "entry-b", staged.IN_FLIGHT_MS) == 0
        client.persist(key)  # settled: an owner's claim stays settled
        assert client.eval(staged._CLAIM_NEW, 1, key, "entry-a", staged.IN_FLIGHT_MS) == 1
        assert client.pttl(key) == -1
    finally:
        client.delete(key)
        client.close()
