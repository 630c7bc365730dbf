"""The updater sends the small Redis calls of concurrent polls together, and a poll records the
same state as it would alone. Real Redis, real local HTTP server; the store is only counted."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from aggregator import keys
from aggregator.errors import StorageError
from aggregator.fetch import Fetcher
from aggregator.models import SourceState
from aggregator.store import HostSlot, HostSlotRequest, StateWrite, Store
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

    def start_polls(
        self, starts: Sequence[tuple[str, HostSlotRequest]]
    ) -> list[tuple[SourceState, float]]:
        self._count("start_polls", starts)
        return super().start_polls(starts)

    def take_host_slots(self, requests: Sequence[HostSlotRequest]) -> list[float]:
        self._count("take_host_slots", requests)
        return super().take_host_slots(requests)

    def release_host_slots(self, slots: Sequence[HostSlot], *, started: bool = True) -> list[None]:
        self._count("release_host_slots" if started else "release_unused_slots", slots)
        return super().release_host_slots(slots, started=started)

    def finish_polls(self, polls: Sequence[tuple[StateWrite, HostSlot | None]]) -> list[None]:
        self._count("finish_polls", polls)
        return super().finish_polls(polls)

    def previous_guids(self, source: str) -> dict[str, str]:
        self._count("previous_guids", [source])
        return super().previous_guids(source)


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
    # Every poll starts in the same turn: one call reads every state and takes every slot.
    assert counting.calls.pop("start_polls") == [16]
    assert sum(counting.calls.pop("previous_guids")) == 15
    # A changed document's slot goes back before it is parsed; the failure's goes back with
    # its state, and only the failure has a state without entries to record.
    assert sum(counting.calls.pop("release_host_slots")) == 15
    assert counting.calls.pop("finish_polls") == [1]
    assert counting.calls == {}  # no other call: no state read or slot taken on its own

    warm = poll_now(config, counting, every, NOW)
    assert all(o.ok and o.not_modified and o.status == 304 for o in warm[:15]), warm
    assert [o.entries for o in warm[:15]] == [o.entries for o in cold[:15]]
    # Two calls per poll: the start, and the finish that records the state and gives the slot
    # back. Fetches end one by one: a finish goes with those that came while the one before
    # was on its way, so how many go together depends on timing.
    assert counting.calls.pop("start_polls") == [16]
    assert sum(counting.calls.pop("finish_polls")) == 16
    assert counting.calls == {}
    assert counting.client.exists(keys.host_inflight("127.0.0.1")) == 0  # no slot left held

    states = counting.source_states(every)
    assert all(s.status == 304 and s.failures == 0 and s.next_due for s in states[:15])
    assert (states[15].status, states[15].failures) == (500, 2)
    # each source's stored entries: those it added and those it merged into another's
    assert all(s.stored == o.new + o.merged for s, o in zip(states, cold, strict=False))


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


def held(store: Store, host: str) -> list[str]:
    """The tokens of the host's request slots under way."""
    return [str(token) for token in store.client.zrange(keys.host_inflight(host), 0, -1)]


def test_a_source_moved_to_another_host_holds_a_slot_of_the_host_it_fetches(
    write_config: ConfigWriter, feed_server: FeedServer, counting: CountingStore
) -> None:
    # 127.0.0.1 and localhost are one server but two hosts to the per-host limits.
    body = (feed_server.root / "rss2.xml").read_bytes()
    seen: list[tuple[list[str], list[str]]] = []  # (127.0.0.1's, localhost's) at each fetch

    def new() -> Route:
        seen.append((held(counting, "127.0.0.1"), held(counting, "localhost")))
        return Route(200, {"Content-Type": "application/xml"}, body)  # no validators

    feed_server.routes["/new.xml"] = new
    moved = f"http://localhost:{feed_server.port}/new.xml"
    feed_server.routes["/old.xml"] = Route(301, {"Location": moved})
    config = write_config.write([{"name": "moved", "url": feed_server.url("old.xml")}])
    source = config.source("moved")

    async def run() -> list[Outcome]:
        async with Fetcher(config.settings) as fetcher:
            updater = Updater(config, counting, fetcher, clock=lambda: NOW)
            outcomes = [await updater.poll(source)]  # follows the 301 with 127.0.0.1's slot
            counting.calls.clear()
            outcomes.append(await updater.poll(source))  # remembers it: fetches localhost
            assert counting.calls.pop("start_polls") == [1]  # took 127.0.0.1's slot, as before
            assert counting.calls.pop("release_unused_slots") == [1]  # gave it back unused
            assert counting.calls.pop("take_host_slots") == [1]  # and took localhost's
            assert counting.calls.pop("finish_polls") == [1]
            assert counting.calls == {}
            outcomes.append(await updater.poll(source))  # takes localhost's slot at once
            assert counting.calls.pop("start_polls") == [1]
            assert counting.calls.pop("finish_polls") == [1]
            assert counting.calls == {}
            return outcomes

    first, second, third = asyncio.run(run())
    assert first.ok and first.new == 3
    assert second.ok and second.not_modified and third.ok and third.not_modified
    assert len(seen) == 3
    assert len(seen[0][0]) == 1 and seen[0][1] == []  # the first poll asked 127.0.0.1
    assert all(local == [] and len(remote) == 1 for local, remote in seen[1:])
    assert counting.source_states(["moved"])[0].moved_to == moved
    assert held(counting, "127.0.0.1") == held(counting, "localhost") == []
    # Only requests made count against a host's minute: the slot given back unused does not.
    recent = counting.client.zrange
    assert len(recent(keys.host_recent("127.0.0.1"), 0, -1)) == 1
    assert len(recent(keys.host_recent("localhost"), 0, -1)) == 2


def test_no_slot_is_left_held_after_warm_failed_and_changed_polls(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    body = (feed_server.root / "atom.xml").read_bytes()
    during: dict[str, list[int]] = {}  # slots of the host held while each path was fetched
    versions = iter(range(1000))

    def watched(name: str, route: Callable[[], Route]) -> Callable[[], Route]:
        def answer() -> Route:
            during.setdefault(name, []).append(len(held(store, "127.0.0.1")))
            return route()

        return answer

    def changing() -> Route:
        text = body.replace(b"<title>", f"<title>v{next(versions)} ".encode(), 1)
        return Route(200, {"Content-Type": "application/xml"}, text)

    feed_server.copy("rss2.xml", "warm.xml")
    feed_server.routes["/failed.xml"] = watched("failed", lambda: Route(503))
    feed_server.routes["/changed.xml"] = watched("changed", changing)
    feed_server.put("broken.xml", b"<html><body>not a feed</body></html>")
    config = write_config.write(
        [
            {"name": n, "url": feed_server.url(f"{n}.xml")}
            for n in ("warm", "failed", "changed", "broken")
        ]
    )
    for _ in range(2):
        outcomes = poll_now(config, store, ["warm", "failed", "changed", "broken"], NOW)
        assert [o.ok for o in outcomes] == [True, False, True, False]
        assert held(store, "127.0.0.1") == []
    assert outcomes[0].not_modified and not outcomes[2].not_modified  # parsed again
    assert "not an RSS, Atom or JSON feed" in outcomes[3].error  # failed after its slot went
    assert all(count >= 1 for counts in during.values() for count in counts)  # held meanwhile
    # Every request made counts against the host's minute: 4 polls, twice.
    assert store.client.zcard(keys.host_recent("127.0.0.1")) == 8


def test_a_cancelled_poll_gives_its_slot_back(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    asked = threading.Event()

    def slow() -> Route:
        asked.set()  # the poll is fetching now: its slot is taken, its start call over
        return Route(503, delay=2.0)

    feed_server.routes["/slow.xml"] = slow
    config = write_config.write(
        [{"name": "slow", "url": feed_server.url("slow.xml")}],
        settings={"per_host": {"concurrency": 1, "per_minute": 6000}},
    )

    async def run() -> Outcome:
        async with Fetcher(config.settings) as fetcher:
            updater = Updater(config, store, fetcher, clock=lambda: NOW)
            task = asyncio.ensure_future(updater.poll(config.source("slow")))
            while not asked.is_set():
                await asyncio.sleep(0.01)
            assert held(store, "127.0.0.1")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert held(store, "127.0.0.1") == []
            # The gate went back too: the host's only slot is free for the next poll.
            feed_server.routes["/slow.xml"] = Route(503)
            return await asyncio.wait_for(updater.poll(config.source("slow")), 5)

    outcome = asyncio.run(run())
    assert outcome.status == 503
    assert held(store, "127.0.0.1") == []


def test_a_poll_whose_state_write_fails_gives_its_slot_back_once(
    write_config: ConfigWriter, feed_server: FeedServer, counting: CountingStore
) -> None:
    def spoil() -> Route:
        # The source's state turns into something that is not a hash while it is fetched.
        counting.client.set(keys.source("spoilt"), "not a hash")
        return Route(503)

    feed_server.routes["/spoilt.xml"] = spoil
    config = write_config.write([{"name": "spoilt", "url": feed_server.url("spoilt.xml")}])
    with pytest.raises(StorageError, match="saving spoilt"):
        poll_now(config, counting, ["spoilt"], NOW)
    assert counting.calls.pop("start_polls") == [1]
    assert counting.calls.pop("finish_polls") == [1]  # the slot went back in it
    assert counting.calls == {}  # and was not given back again
    assert held(counting, "127.0.0.1") == []
