"""Redis going away under a running worker, and a worker started before its Redis: end to end
with `aggregator worker` processes, a redis-server of the test's own that it stops and starts
again on the same port and files, and the fixture feed server.

A Redis outage is no fault of any source: no source may be recorded as failed or pushed into
backoff by it, none may lose its due time, and every source is polled again within one interval
of Redis coming back. A poll longer than its lease keeps it (renewed), so a second worker never
polls the same source at once."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from aggregator.store import Store
from tests.conftest import ConfigWriter, FeedServer, Route
from tests.processes import free_port, redis_server_path, wait_until_answering
from tests.readme_support import Item, hours_ago, make_site, rss, stop, wait_for
from tests.test_worker import running


class OwnRedis:
    """A redis-server on a fixed free port whose data survives a kill -9 (append-only file,
    fsync always), so it can go away and come back as a crashed server does."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_path(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        try:
            wait_until_answering(client, self.process, 10, "the outage test's redis-server")
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = OwnRedis(folder)
    yield server
    server.kill()
    shutil.rmtree(folder, ignore_errors=True)


def _states(url: str, names: list[str]) -> list[Any]:
    store = Store.from_url(url)
    try:
        return store.source_states(names)
    finally:
        store.close()


def test_every_source_is_polled_again_within_an_interval_of_an_outage(
    tmp_path: Path, own_redis: OwnRedis, feed_server: FeedServer, environ: dict[str, str]
) -> None:
    """200 sources every 10 s; Redis killed for 5 s while the worker polls. Within one
    interval of its return every source has been polled again, none is marked failed or in
    backoff, and the worker is still running."""
    own_redis.start()
    site = make_site(tmp_path, own_redis.url, feed_server, environ)
    try:
        items = [Item(f"Story {k}", f"https://o.example.org/{k}", hours_ago(k)) for k in range(3)]
        url = site.serve("outage.xml", rss(items))
        names = [f"s{n:03d}" for n in range(200)]
        sources = [{"name": n, "url": f"{url}?{n}", "interval": "10s"} for n in names]
        site.write(
            sources,
            settings={"min_interval": "1s", "per_host": {"concurrency": 50, "per_minute": 100_000}},
        )
        worker = site.start("worker")
        wait_for(
            lambda: all(s.last_poll for s in _states(own_redis.url, names)),
            "the first round polled",
            process=worker,
        )
        time.sleep(3)  # into the next rounds: polls are under way when Redis goes
        own_redis.kill()
        time.sleep(5)
        # Taken before the restart: the worker's next tick may reach Redis before start()
        # has seen it answer, and a poll made then is a poll after the outage.
        back = datetime.now(UTC)
        own_redis.start()

        def behind() -> list[tuple[str, Any]]:
            found = _states(own_redis.url, names)
            return [(s.name, s.last_poll) for s in found if not s.last_poll or s.last_poll < back]

        try:
            wait_for(
                lambda: not behind(),
                "every source polled again after the outage",
                timeout=10 + 3,  # one interval, and a tick's worth of slack on a busy machine
                process=worker,
            )
        except AssertionError as err:
            raise AssertionError(f"not polled since {back}: {behind()[:10]}; {err}") from None
        states = _states(own_redis.url, names)
        assert not [s.name for s in states if s.failures or s.last_error], states
        assert worker.poll() is None, "the worker died"
        log = (tmp_path / "site" / "process-0.log").read_text(encoding="utf-8")
        assert "Traceback" not in log, log[-3000:]
        assert "polling waits for Redis" in log and "polling resumes" in log, log[-3000:]
        stop(worker)
    finally:
        site.stop_all()


def test_a_worker_started_before_its_redis_waits_for_it(
    tmp_path: Path, own_redis: OwnRedis, feed_server: FeedServer, environ: dict[str, str]
) -> None:
    """`aggregator worker` with nobody at its Redis URL says so in a log line and keeps
    trying; once Redis is there it polls, with no traceback."""
    site = make_site(tmp_path, own_redis.url, feed_server, environ)
    try:
        url = site.serve("early.xml", rss([Item("Early", "https://e.example.org/1", hours_ago(1))]))
        site.write([{"name": "early", "url": url}])
        worker = site.start("worker")
        log = Path(tmp_path / "site" / "process-0.log")
        wait_for(lambda: "trying again in" in log.read_text(), "a line saying it waits", 15, worker)
        own_redis.start()
        wait_for(
            lambda: _states(own_redis.url, ["early"])[0].entries == 1,
            "the source polled once Redis is there",
            timeout=20,
            process=worker,
        )
        text = log.read_text(encoding="utf-8")
        assert "Traceback" not in text, text
        assert f"Redis at {own_redis.url} does not answer; trying again in 1 s" in text, text
        stop(worker)
    finally:
        site.stop_all()


def test_a_poll_longer_than_its_lease_keeps_it(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    """Two workers with a 2-second lease, one source whose server takes 5 s to answer: the
    lease is renewed while the poll runs, so the source is never fetched by both at once."""
    under_way: Counter[str] = Counter()
    most: Counter[str] = Counter()
    lock = threading.Lock()
    body = (feed_server.root / "rss2.xml").read_bytes()

    def slow() -> Route:
        with lock:
            under_way["slow"] += 1
            most["slow"] = max(most["slow"], under_way["slow"])
        try:
            time.sleep(5)
        finally:
            with lock:
                under_way["slow"] -= 1
        return Route(200, {"Content-Type": "application/rss+xml"}, body)

    feed_server.routes["/slow.xml"] = slow
    write_config.write(
        [{"name": "slow", "url": feed_server.url("slow.xml"), "interval": "1h"}],
        settings={"timeout": "20s"},
    )
    with running(store, count=2, lease=2) as workers:
        deadline = time.monotonic() + 20
        while not store.source_states(["slow"])[0].last_poll:
            assert time.monotonic() < deadline, "the slow source was never polled"
            time.sleep(0.1)
        time.sleep(1)  # a second claim would have started by now
    assert most["slow"] == 1, f"{most['slow']} polls of one source at once"
    assert sum(w.polls for w in workers) == 1
    assert store.source_states(["slow"])[0].entries > 0
