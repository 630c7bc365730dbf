"""The updater sends the small Redis calls of concurrent polls together, and a poll records the
same state as it would alone. Real Redis, real local HTTP server; the store is only counted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from aggregator.errors import StorageError
from aggregator.fetch import Fetcher
from aggregator.models import SourceState
from aggregator.store import HostSlotRequest, StateWrite, Store
from aggregator.update import Outcome, Updater
from tests.conftest import ConfigWriter, FeedServer, Route, free_port, poll_now

NOW = datetime.now(UTC).replace(microsecond=0)


class CountingStore(Store):
    """The real store, remembering how many items each list call was given."""

    def __init__(self, url: str) -> None:
        other = Store.from_url(url)
        super().__init__(other.client, other.binary)
        self.calls: dict[str, list[int]] = {}

    def _count(self, name: str, items: Sequence[Any]) -> None:
        self.calls.setdefault(name, []).append(len(items))

    def source_states(self, names: Sequence[str]) -> list[SourceState]:
        self._count("source_states", names)
        return super().source_states(names)

    def take_host_slots(self, requests: Sequence[HostSlotRequest]) -> list[float]:
        self._count("take_host_slots", requests)
        return super().take_host_slots(requests)

    def release_host_slots(self, slots: Sequence[tuple[str, str]]) -> list[None]:
        self._count("release_host_slots", slots)
        return super().release_host_slots(slots)

    def save_states(self, polls: Sequence[StateWrite]) -> list[None]:
        self._count("save_states", polls)
        return super().save_states(polls)

    def previous_guids_many(self, sources: Sequence[str]) -> list[dict[str, str]]:
        self._count("previous_guids_many", sources)
        return super().previous_guids_many(sources)


@pytest.fixture
def counting(redis_url: str) -> Any:
    store = CountingStore(redis_url)
    yield store
    store.close()


def test_concurrent_polls_share_round_trips(
    write_config: ConfigWriter, feed_server: FeedServer, counting: CountingStore
) -> None:
    names = [f"s{i}" for i in range(15)]
    fixtures = ("rss2.xml", "atom.xml", "feed.json")
    paths = {n: f"{n}-{fixtures[i % 3]}" for i, n in enumerate(names)}
    for path in paths.values():
        feed_server.copy(path.split("-", 1)[1], path)
    feed_server.routes["/broken.xml"] = Route(500)
    config = write_config.write(
        [{"name": n, "url": feed_server.url(paths[n])} for n in names]
        + [{"name": "broken", "url": feed_server.url("broken.xml")}],
        settings={"per_host": {"concurrency": 64, "per_minute": 6000}},
    )
    every = [*names, "broken"]

    cold = poll_now(config, counting, every, NOW)
    assert [o.ok for o in cold] == [True] * 15 + [False]
    assert sum(o.new for o in cold) > 0
    assert counting.calls["source_states"] == [16]  # every poll starts in the same turn
    assert sum(counting.calls["previous_guids_many"]) == 15
    assert sum(counting.calls["take_host_slots"]) == 16
    assert sum(counting.calls["release_host_slots"]) == 16
    assert counting.calls["save_states"] == [1]  # only the failure; the others saved entries

    counting.calls.clear()
    warm = poll_now(config, counting, every, NOW)
    assert all(o.ok and o.not_modified and o.status == 304 for o in warm[:15])
    assert [o.entries for o in warm[:15]] == [o.entries for o in cold[:15]]
    assert counting.calls["source_states"] == [16]
    assert counting.calls["take_host_slots"] == [16]
    assert "previous_guids_many" not in counting.calls
    # Fetches end one by one: a release or a save goes with those that came while the one
    # before was on its way, so how many go together depends on timing.
    assert sum(counting.calls["release_host_slots"]) == sum(counting.calls["save_states"]) == 16

    states = counting.source_states(every)
    assert all(s.status == 304 and s.failures == 0 and s.next_due for s in states[:15])
    assert (states[15].status, states[15].failures) == (500, 2)
    assert all(s.stored == o.new for s, o in zip(states, cold, strict=False))


def test_per_host_concurrency_holds_when_slot_takes_go_together(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store, redis_url: str
) -> None:
    # Two updaters on two connections, each allowed 3 at once by its own gate: Redis alone
    # keeps the host to 3, and a batch's takes count against each other.
    names = [f"s{i}" for i in range(12)]
    for name in names:
        feed_server.routes[f"/{name}.xml"] = Route(503, delay=0.1)
    config = write_config.write(
        [{"name": n, "url": feed_server.url(f"{n}.xml")} for n in names],
        settings={"per_host": {"concurrency": 3, "per_minute": 6000}},
    )
    other = Store.from_url(redis_url)
    peak = [0]

    async def watch(stop: asyncio.Event) -> None:
        while not stop.is_set():
            held = await asyncio.to_thread(store.client.zcard, "agg:{agg}:host:127.0.0.1:inflight")
            peak[0] = max(peak[0], int(held))
            await asyncio.sleep(0.005)

    async def two_workers() -> list[Outcome]:
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(watch(stop))
        async with Fetcher(config.settings) as f1, Fetcher(config.settings) as f2:
            one = Updater(config, store, f1, clock=lambda: NOW)
            two = Updater(config, other, f2, clock=lambda: NOW)
            sources = [config.source(n) for n in names]
            a, b = await asyncio.gather(one.poll_many(sources[:6]), two.poll_many(sources[6:]))
        stop.set()
        await watcher
        return a + b

    try:
        outcomes = asyncio.run(two_workers())
    finally:
        other.close()
    assert [o.status for o in outcomes] == [503] * 12
    assert 1 <= peak[0] <= 3


def test_a_poll_whose_store_is_gone_raises_storage_error(
    write_config: ConfigWriter, feed_server: FeedServer
) -> None:
    config = write_config.write([{"name": "a", "url": feed_server.url("rss2.xml")}])
    dead = Store.from_url(f"redis://127.0.0.1:{free_port()}/0")

    async def run() -> Outcome:
        async with Fetcher(config.settings) as fetcher:
            return await Updater(config, dead, fetcher).poll(config.source("a"))

    try:
        with pytest.raises(StorageError, match="reading source states"):
            asyncio.run(run())
    finally:
        dead.close()
