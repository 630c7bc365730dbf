"""The scheduler: due times in Redis, leases shared by several workers, reload."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from aggregator import config as config_module
from aggregator import keys
from aggregator.scheduler import Worker, _Duty, _start_due
from aggregator.store import Store
from tests.conftest import ConfigWriter, FeedServer, Route


@contextmanager
def running(store: Store, count: int = 1, lease: float | None = None) -> Iterator[list[Worker]]:
    """`count` workers in threads of this process, ticking every 0.1 s (`lease`: seconds a
    claim holds a source before it is renewed or lapses)."""
    executor = ThreadPoolExecutor(2)
    workers = [
        Worker(config_module.from_environ, store, executor=executor, tick=0.1, lease=lease)
        for _ in range(count)
    ]
    threads = [threading.Thread(target=w.run, kwargs={"handle_signals": False}) for w in workers]
    for thread in threads:
        thread.start()
    try:
        yield workers
    finally:
        for w in workers:
            w.stop()
        for thread in threads:
            thread.join(20)
        executor.shutdown()
        assert not any(t.is_alive() for t in threads)


def eventually(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_worker_polls_every_source_and_a_bad_one_stops_nothing(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    write_config.write(
        [
            {"name": "tech", "url": feed_server.url("rss2.xml"), "tags": ["t"], "interval": "1h"},
            {"name": "broken", "url": feed_server.url("missing.xml"), "interval": "1h"},
            {"name": "science", "url": feed_server.url("atom.xml"), "interval": "1h"},
        ]
    )
    started = datetime.now(UTC)
    with running(store):
        eventually(
            lambda: all(s.last_poll for s in store.source_states(["tech", "broken", "science"]))
        )
    tech, broken, science = store.source_states(["tech", "broken", "science"])
    assert (tech.status, tech.entries, tech.failures) == (200, 3, 0)
    assert (science.status, science.entries) == (200, 3)
    assert broken.status == 404 and broken.failures == 1
    assert "404" in broken.last_error and feed_server.url("missing.xml") in broken.last_error
    assert store.count("all") == 6
    # next due one interval ahead; the failed source backs off from the same interval
    assert tech.next_due is not None and broken.next_due is not None
    assert 3500 < (tech.next_due - started).total_seconds() < 3700
    assert 3000 < (broken.next_due - started).total_seconds() < 4200


def test_two_workers_share_the_sources_without_polling_twice(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    names = [f"s{i}" for i in range(12)]
    for name in names:
        feed_server.copy("rss2.xml", f"{name}.xml")
    write_config.write(
        [{"name": n, "url": feed_server.url(f"{n}.xml"), "interval": "1h"} for n in names]
    )
    with running(store, count=2) as workers:
        eventually(lambda: all(s.last_poll for s in store.source_states(names)))
        time.sleep(0.5)  # several more ticks: nothing is due again
    requested = sorted(r.path for r in feed_server.requests)
    assert requested == sorted(f"/{n}.xml" for n in names)
    assert sum(w.polls for w in workers) == len(names)


def test_reload_applies_the_new_file(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    first = {"name": "tech", "url": feed_server.url("rss2.xml"), "interval": "1h"}
    write_config.write([first])
    with running(store):
        eventually(lambda: store.source_states(["tech"])[0].last_poll is not None)
        write_config.write(
            [
                first,
                {
                    "name": "json",
                    "url": feed_server.url("feed.json"),
                    "tags": ["j"],
                    "interval": "1h",
                },
            ]
        )
        store.request_reload()
        eventually(lambda: store.count("tag", "j") == 3)
        # a broken file is refused whole; the running configuration stays
        write_config.path.write_text("sources: [{name: BAD}]\n", encoding="utf-8")
        store.request_reload()
        time.sleep(0.5)
    assert {r.path for r in feed_server.requests} == {"/rss2.xml", "/feed.json"}


def test_a_gone_source_whose_url_changes_is_scheduled_again(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    feed_server.routes["/old.xml"] = Route(410)
    source = {"name": "moved", "url": feed_server.url("old.xml"), "tags": ["m"], "interval": "1h"}
    write_config.write([source])
    with running(store):
        eventually(lambda: store.source_states(["moved"])[0].gone)
        # the editor finds the feed's new address and reloads
        write_config.write([{**source, "url": feed_server.url("rss2.xml")}])
        store.request_reload()
        eventually(lambda: store.count("tag", "m") == 3)
    (state,) = store.source_states(["moved"])
    assert not state.gone and state.status == 200
    assert state.next_due is not None and state.next_due.year < 9999


def test_an_unchanged_document_is_logged_at_debug_a_changed_one_at_info(
    write_config: ConfigWriter,
    feed_server: FeedServer,
    store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_config.write([{"name": "tech", "url": feed_server.url("rss2.xml"), "interval": "1h"}])
    caplog.set_level(logging.DEBUG, logger="aggregator.scheduler")
    with running(store):
        eventually(lambda: store.source_states(["tech"])[0].status == 200)
        store.client.zadd(keys.DUE, {"tech": 0})  # due again at once: the answer is a 304
        eventually(lambda: store.source_states(["tech"])[0].status == 304)
        eventually(lambda: any("HTTP 304" in r.getMessage() for r in caplog.records))
    polls = [(r.levelname, r.getMessage()) for r in caplog.records if "poll tech" in r.getMessage()]
    assert polls == [
        ("INFO", "poll tech: HTTP 200, 3 entries, 3 new, 0 updated"),
        ("DEBUG", "poll tech: HTTP 304, 3 entries, 0 new, 0 updated"),
    ]


def test_one_job_runs_each_duty_at_its_period_never_twice_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker's duties (the tick, the WebSub tick, the report) share one scheduler job:
    each starts when its period comes, unless it still runs; a crash is logged and the duty
    runs again at its next period."""
    started: list[str] = []
    release = asyncio.Event()

    async def slow() -> None:
        started.append("slow")
        await release.wait()

    async def often() -> None:
        started.append("often")

    async def crashes() -> None:
        started.append("crashes")
        raise RuntimeError("boom")

    async def scenario() -> None:
        duties = [_Duty(slow, 0.01), _Duty(often, 0.01), _Duty(crashes, 0.01), _Duty(often, 60)]
        for _ in range(3):
            await _start_due(duties)
            await asyncio.sleep(0.02)
        release.set()
        await asyncio.sleep(0.02)
        await _start_due(duties)
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, logger="aggregator.scheduler"):
        asyncio.run(scenario())
    assert started.count("slow") == 2  # not while it ran; again once it had ended
    assert started.count("often") == 4 + 1  # every run; the 60 s one once
    assert started.count("crashes") == 4
    crashes_logged = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes_logged) == 4 and all(r.exc_info for r in crashes_logged)


def test_a_reload_asked_during_a_tick_keeps_the_tick_s_claims(
    write_config: ConfigWriter,
    feed_server: FeedServer,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGHUP (or `aggregator reload`) while a tick's claim is on its way to Redis: the next
    tick reloads, and the sources this one claimed are still polled now, not when their lease
    runs out."""
    write_config.write([{"name": "tech", "url": feed_server.url("rss2.xml"), "interval": "1h"}])
    claim = Worker._claim
    asked: list[bool] = []

    def claim_then_sighup(self: Worker, *args: object) -> object:
        found = claim(self, *args)  # type: ignore[arg-type]
        if found[1][2] and not asked:  # it claimed something
            asked.append(True)
            self._request_reload()  # what SIGHUP does, while the claim is in flight
        return found

    monkeypatch.setattr(Worker, "_claim", claim_then_sighup)
    with running(store):
        eventually(lambda: store.source_states(["tech"])[0].last_poll is not None, timeout=5)
    assert asked


def test_stopping_cancels_the_duties_before_the_worker_leaves(
    write_config: ConfigWriter, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duty still running when the worker stops is cancelled before its last report: none
    goes on past the HTTP client's close or lists the worker again after it left."""
    write_config.write([])
    events: list[str] = []
    report = Worker._report

    async def endless_push_tick(self: Worker) -> None:
        events.append("push tick")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def reported(self: Worker, stopping: bool = False) -> None:
        if stopping:
            events.append("last report")
        await report(self, stopping=stopping)

    monkeypatch.setattr(Worker, "_push_tick", endless_push_tick)
    monkeypatch.setattr(Worker, "_report", reported)
    with running(store):
        eventually(lambda: "push tick" in events)
    assert events[-2:] == ["cancelled", "last report"], events
