"""Pollers: a cycle dealt out to poller processes, each with its own event loop, HTTP client,
parse pool and Redis connections. Real processes, real Redis, real local HTTP server."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Iterator

import pytest

from aggregator.config import Config
from aggregator.errors import StorageError
from aggregator.pollers import SOURCES_PER_PROCESS, PollerDied, Pollers, processes_for
from aggregator.store import Address, Store
from aggregator.update import Outcome, first_failure
from tests.conftest import ConfigWriter, FeedServer, Route, free_port

FIXTURES = ["rss2.xml", "atom.xml", "rss1.rdf", "feed.json", "gbk.xml"]


def test_one_process_per_core_but_not_for_a_few_sources() -> None:
    assert processes_for(1, cpus=8) == 1
    assert processes_for(SOURCES_PER_PROCESS * 2 - 1, cpus=8) == 1
    assert processes_for(SOURCES_PER_PROCESS * 2, cpus=8) == 2
    assert processes_for(SOURCES_PER_PROCESS * 100, cpus=8) == 8
    assert processes_for(SOURCES_PER_PROCESS * 100, cpus=1) == 1


@pytest.fixture
def config(write_config: ConfigWriter, feed_server: FeedServer) -> Config:
    return write_config.write(
        [{"name": f"s{i}", "url": feed_server.url(FIXTURES[i % len(FIXTURES)])} for i in range(7)]
    )


@pytest.fixture
def pollers(config: Config, store: Store) -> Iterator[Pollers]:
    assert store.address is not None
    with Pollers(config, store.address, 2) as running:
        yield running


def test_a_cycle_is_shared_out_and_outcomes_come_back_in_order(
    config: Config, store: Store, pollers: Pollers
) -> None:
    pids = pollers.pids
    assert len(pids) == 2 and os.getpid() not in pids
    seen: list[str] = []
    sources = list(config.sources)
    first = asyncio.run(pollers.poll_many(sources, lambda o: seen.append(o.source)))
    assert [o.source for o in first] == [s.name for s in sources]
    assert sorted(seen) == sorted(s.name for s in sources)
    assert all(o.ok and o.status == 200 and o.entries > 0 for o in first), first
    assert sum(o.new for o in first) > 0
    states = store.source_states([s.name for s in sources])
    assert [s.entries for s in states] == [o.entries for o in first]
    assert all(s.validators.etag for s in states)

    # The same processes poll the next cycle: every source answers 304 to their validators.
    again = asyncio.run(pollers.poll_many(sources))
    assert pollers.pids == pids
    assert [(o.ok, o.not_modified, o.new) for o in again] == [(True, True, 0)] * len(sources)


def test_an_async_on_done_is_awaited(config: Config, pollers: Pollers) -> None:
    done: list[Outcome] = []

    async def record(outcome: Outcome) -> None:
        await asyncio.sleep(0)
        done.append(outcome)

    outcomes = asyncio.run(pollers.poll_many(list(config.sources)[:3], record))
    assert sorted(o.source for o in done) == sorted(o.source for o in outcomes)


def test_redis_out_of_reach_is_a_storage_error(config: Config, store: Store) -> None:
    assert store.address is not None
    nowhere = Address(f"redis://127.0.0.1:{free_port()}/0", store.address.lifetimes)
    with Pollers(config, nowhere, 2) as pollers:
        with pytest.raises(StorageError):
            asyncio.run(pollers.poll_many(list(config.sources)))


def test_a_poller_that_died_is_reported_and_its_parse_workers_go_too(
    config: Config, pollers: Pollers
) -> None:
    victim = pollers.pids[0]
    assert not _descendants(victim)  # no parse pool until a document needs parsing
    asyncio.run(pollers.poll_many(list(config.sources)))  # the first poll: every one changed
    below = _descendants(victim)  # its forkserver and parse worker
    assert below
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(PollerDied, match="ended"):
        asyncio.run(pollers.poll_many(list(config.sources)))
    # Killed outright, it sent its parse worker no stop message: the worker sees its owner
    # gone and ends itself, and its forkserver follows.
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in below) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in below if _alive(p)]


def test_a_cycle_cut_short_stops_its_pollers(
    config: Config, feed_server: FeedServer, pollers: Pollers
) -> None:
    # A cycle cancelled (or whose on_done raised) leaves pollers still polling their shares:
    # what they send would reach the next cycle. They are stopped, and the Pollers refuses
    # another cycle.
    feed_server.routes["/slow.xml"] = Route(body=b"<rss/>", delay=5)
    slow = [dataclasses.replace(config.sources[0], url=feed_server.url("slow.xml"))] * 2
    slow = [dataclasses.replace(s, name=f"slow{i}") for i, s in enumerate(slow)]
    pids = pollers.pids

    async def cut_short() -> None:
        await asyncio.wait_for(pollers.poll_many(slow), 0.5)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(cut_short())
    assert time.monotonic() - started < 4
    for pid in pids:
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"poller {pid} still running"
    with pytest.raises(RuntimeError, match="middle of a cycle"):
        asyncio.run(pollers.poll_many(list(config.sources)))


def test_an_on_done_that_raises_ends_the_cycle(config: Config, pollers: Pollers) -> None:
    def boom(outcome: Outcome) -> None:
        raise ValueError(f"no room for {outcome.source}")

    with pytest.raises(ValueError, match="no room"):
        asyncio.run(pollers.poll_many(list(config.sources), boom))


def test_which_failure_of_a_cycle_is_raised() -> None:
    bug, gone = ValueError("a bug"), StorageError("Redis went away")
    cancelled = asyncio.CancelledError()
    assert first_failure([bug]) is bug
    assert first_failure([bug, gone]) is gone
    assert first_failure([bug, gone, cancelled]) is cancelled


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = {child for child, ppid in parents.items() if ppid == parent} - found
        found |= children
        frontier.extend(children)
    return found
