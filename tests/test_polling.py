"""Polling as a good citizen: status codes, redirects, Retry-After, freshness hints, validators,
and per-host limits shared by several workers. Real Redis, real local HTTP server."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from aggregator import keys
from aggregator.config import Config
from aggregator.fetch import Fetcher
from aggregator.models import SourceState
from aggregator.store import Store
from aggregator.update import GONE, Outcome, Updater
from tests.conftest import ConfigWriter, FeedServer, Route, poll_now

NOW = datetime.now(UTC).replace(microsecond=0)


def poll(config: Config, store: Store, *names: str) -> list[Outcome]:
    return poll_now(config, store, names, NOW)


def state(store: Store, name: str) -> SourceState:
    return store.source_states([name])[0]


def seconds_until_due(store: Store, name: str) -> float:
    due = state(store, name).next_due
    assert due is not None
    return (due - NOW).total_seconds()


def test_permanent_redirect_is_remembered_temporary_is_not(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    feed_server.copy("rss2.xml", "new.xml")
    feed_server.routes["/old.xml"] = Route(301, {"Location": feed_server.url("new.xml")})
    feed_server.routes["/old308.xml"] = Route(308, {"Location": "/new.xml"})
    feed_server.routes["/tmp.xml"] = Route(302, {"Location": feed_server.url("new.xml")})
    feed_server.routes["/tmp307.xml"] = Route(307, {"Location": feed_server.url("new.xml")})
    config = write_config.write(
        [
            {"name": "p301", "url": feed_server.url("old.xml")},
            {"name": "p308", "url": feed_server.url("old308.xml")},
            {"name": "t302", "url": feed_server.url("tmp.xml")},
            {"name": "t307", "url": feed_server.url("tmp307.xml")},
        ]
    )
    yaml_before = write_config.path.read_text()
    assert all(o.ok for o in poll(config, store, "p301", "p308", "t302", "t307"))
    for name in ("p301", "p308"):
        s = state(store, name)
        assert s.moved_to == feed_server.url("new.xml") and s.url == s.moved_to
        assert s.moved_from == config.source(name).url
    for name in ("t302", "t307"):
        s = state(store, name)
        assert s.moved_to == "" and s.url == config.source(name).url
    feed_server.requests.clear()
    poll(config, store, "p301", "t302")
    asked = sorted(r.path for r in feed_server.requests)
    assert asked == ["/new.xml", "/new.xml", "/tmp.xml"]  # the 301 is not asked again
    assert write_config.path.read_text() == yaml_before

    # an editor who changes the URL in feeds.yaml wins over the remembered redirect
    feed_server.copy("atom.xml", "edited.xml")
    edited = write_config.write([{"name": "p301", "url": feed_server.url("edited.xml")}])
    feed_server.requests.clear()
    poll(edited, store, "p301")
    assert [r.path for r in feed_server.requests] == ["/edited.xml"]
    assert state(store, "p301").moved_to == ""


def test_gone_source_stops_being_scheduled_until_it_answers_again(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    feed_server.routes["/gone.xml"] = Route(410, {}, b"gone")
    config = write_config.write([{"name": "gone", "url": feed_server.url("gone.xml")}])
    (outcome,) = poll(config, store, "gone")
    assert not outcome.ok and outcome.status == 410
    s = state(store, "gone")
    assert s.gone and "no longer polled" in s.last_error
    assert s.next_due == GONE
    assert store.claim_due(NOW + timedelta(days=3650), NOW + timedelta(days=3651), 10) == []
    del feed_server.routes["/gone.xml"]
    feed_server.copy("rss2.xml", "gone.xml")
    assert poll(config, store, "gone")[0].ok
    assert not state(store, "gone").gone
    assert 0 < seconds_until_due(store, "gone") <= config.interval(config.source("gone"))


def test_errors_back_off_exponentially(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    feed_server.routes["/err.xml"] = Route(500, {}, b"oops")
    config = write_config.write(
        [{"name": "err", "url": feed_server.url("err.xml"), "interval": "10m"}]
    )
    delays = []
    for failures in (1, 2, 3, 4):
        (outcome,) = poll(config, store, "err")
        assert not outcome.ok and outcome.status == 500
        assert state(store, "err").failures == failures
        delays.append(seconds_until_due(store, "err"))
    for failures, delay in enumerate(delays, start=1):
        expected = 600 * 2 ** (failures - 1)
        assert expected * 0.89 <= delay <= expected * 1.11, (failures, delay)


def test_retry_after_in_seconds_and_as_a_date(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    later = datetime.now(UTC) + timedelta(hours=5)
    feed_server.routes["/busy.xml"] = Route(429, {"Retry-After": "7200"})
    feed_server.routes["/down.xml"] = Route(503, {"Retry-After": format_datetime(later, True)})
    config = write_config.write(
        [
            {"name": "busy", "url": feed_server.url("busy.xml"), "interval": "1m"},
            {"name": "down", "url": feed_server.url("down.xml"), "interval": "1m"},
            {"name": "fine", "url": feed_server.url("rss2.xml"), "interval": "1m"},
        ]
    )
    poll(config, store, "busy", "down", "fine")
    assert 7200 <= seconds_until_due(store, "busy") < 7300
    assert 5 * 3600 - 120 <= seconds_until_due(store, "down") <= 5 * 3600 + 60
    assert seconds_until_due(store, "fine") == 60  # the others' waits are theirs alone


def test_cache_control_max_age_is_a_floor_for_the_interval(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    body = (feed_server.root / "rss2.xml").read_bytes()
    feed_server.routes["/fresh.xml"] = Route(
        200,
        {"Content-Type": "application/rss+xml", "Cache-Control": "public, max-age=7200"},
        body,
    )
    feed_server.routes["/forever.xml"] = Route(
        200, {"Content-Type": "application/rss+xml", "Cache-Control": "max-age=31536000"}, body
    )
    config = write_config.write(
        [
            {"name": "fresh", "url": feed_server.url("fresh.xml"), "interval": "15m"},
            {"name": "forever", "url": feed_server.url("forever.xml"), "interval": "15m"},
        ]
    )
    poll(config, store, "fresh", "forever")
    assert seconds_until_due(store, "fresh") == 7200
    assert seconds_until_due(store, "forever") == 86400  # capped at a day


def test_conditional_get_and_unchanged_body_without_validators(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    body = (feed_server.root / "atom.xml").read_bytes()
    feed_server.routes["/plain.xml"] = Route(200, {"Content-Type": "application/xml"}, body)
    config = write_config.write(
        [
            {"name": "etag", "url": feed_server.url("rss2.xml")},
            {"name": "plain", "url": feed_server.url("plain.xml")},
        ]
    )
    first = poll(config, store, "etag", "plain")
    assert [o.new for o in first] == [3, 3]
    second = poll(config, store, "etag", "plain")
    assert [(o.status, o.not_modified) for o in second] == [(304, True), (200, True)]
    assert feed_server.requests[-2].headers.get("If-None-Match") or feed_server.requests[
        -1
    ].headers.get("If-None-Match")
    feed_server.routes["/plain.xml"] = Route(
        200, {"Content-Type": "application/xml"}, body.replace(b"Tide Pools", b"Tidal Pools")
    )
    (changed,) = poll(config, store, "plain")
    assert (changed.not_modified, changed.updated) == (False, 1)


def test_per_host_concurrency_holds_across_two_workers(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store, redis_url: str
) -> None:
    lock = threading.Lock()
    counts = {"now": 0, "max": 0}
    body = (feed_server.root / "rss2.xml").read_bytes()

    def slow() -> Route:
        with lock:
            counts["now"] += 1
            counts["max"] = max(counts["max"], counts["now"])
        time.sleep(0.15)
        with lock:
            counts["now"] -= 1
        return Route(200, {"Content-Type": "application/xml"}, body)

    names = [f"s{i}" for i in range(8)]
    for name in names:
        feed_server.routes[f"/{name}.xml"] = slow
    config = write_config.write(
        [{"name": n, "url": feed_server.url(f"{n}.xml")} for n in names],
        settings={"per_host": {"concurrency": 2, "per_minute": 1000}},
    )
    other = Store.from_url(redis_url)

    async def two_workers() -> list[Outcome]:
        async with Fetcher(config.settings) as f1, Fetcher(config.settings) as f2:
            one = Updater(config, store, f1, clock=lambda: NOW)
            two = Updater(config, other, f2, clock=lambda: NOW)
            sources = [config.source(n) for n in names]
            a, b = await asyncio.gather(one.poll_many(sources[:4]), two.poll_many(sources[4:]))
            return a + b

    try:
        outcomes = asyncio.run(two_workers())
    finally:
        other.close()
    assert all(o.ok for o in outcomes)
    assert counts["max"] == 2


def test_per_host_rate_is_a_sliding_minute(store: Store) -> None:
    take = store.take_host_slot
    assert [take("h.example", f"t{i}", 1000.0 + i, 30, 10, 3) for i in range(3)] == [0, 0, 0]
    for token in ("t0", "t1", "t2"):
        store.release_host_slot("h.example", token)
    wait = take("h.example", "t3", 1010.0, 30, 10, 3)
    assert 49 <= wait <= 51  # the oldest start (1000) leaves the window at 1060
    assert take("other.example", "x", 1010.0, 30, 10, 3) == 0  # other hosts are not held up
    assert take("h.example", "t3", 1060.5, 30, 10, 3) == 0
    # a slot whose worker died lapses after its lease
    assert take("c.example", "a", 2000.0, 30, 1, 100) == 0
    assert take("c.example", "b", 2001.0, 30, 1, 100) > 0
    assert take("c.example", "b", 2031.0, 30, 1, 100) == 0


def test_a_poll_waits_for_room_in_the_hosts_minute(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    # Other workers made the minute's 3 requests to the host; the oldest leaves it in 1 s.
    config = write_config.write(
        [{"name": "a", "url": feed_server.url("rss2.xml")}],
        settings={"per_host": {"concurrency": 2, "per_minute": 3}},
    )
    now = time.time()
    recent = keys.host_recent("127.0.0.1")
    store.client.zadd(recent, {"w1": now - 59, "w2": now - 30, "w3": now - 1})
    started = time.monotonic()
    (outcome,) = poll(config, store, "a")
    assert outcome.ok and outcome.new == 3
    assert time.monotonic() - started >= 0.5  # its start found no room: it waited, then took
    assert "w1" not in store.client.zrange(recent, 0, -1) and store.client.zcard(recent) == 3
    assert store.client.zcard(keys.host_inflight("127.0.0.1")) == 0


def test_status_says_moved_gone_and_failing(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    from click.testing import CliRunner

    from aggregator.cli import main

    feed_server.copy("rss2.xml", "new.xml")
    feed_server.routes["/old.xml"] = Route(301, {"Location": feed_server.url("new.xml")})
    feed_server.routes["/gone.xml"] = Route(410)
    feed_server.routes["/err.xml"] = Route(503)
    config = write_config.write(
        [
            {"name": "moved", "url": feed_server.url("old.xml")},
            {"name": "gone", "url": feed_server.url("gone.xml")},
            {"name": "err", "url": feed_server.url("err.xml")},
        ]
    )
    poll(config, store, "moved", "gone", "err")
    result = CliRunner().invoke(main, ["status"], terminal_width=400)
    assert result.exit_code == 0, result.output
    lines = {
        line.split("│")[1].strip(): line
        for line in result.output.splitlines()
        if line.count("│") > 3 and line.split("│")[1].strip()
    }
    assert "moved" in lines, result.output
    assert "moved permanently" in lines["moved"] and "/new.xml" in lines["moved"]
    assert "never (gone)" in lines["gone"]
    assert "1 failure(s) in a row" in lines["err"] and "503" in lines["err"]


def test_a_document_that_failed_to_parse_is_fetched_again_not_304(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    feed_server.put("broken.xml", b"<html><body>not a feed</body></html>")
    config = write_config.write([{"name": "broken", "url": feed_server.url("broken.xml")}])
    first = poll(config, store, "broken")[0]
    assert not first.ok and "not an RSS, Atom or JSON feed" in first.error
    assert state(store, "broken").validators.etag == ""
    again = poll(config, store, "broken")[0]
    assert feed_server.requests[-1].status == 200  # fetched whole again, not a 304
    assert not again.ok and state(store, "broken").failures == 2
