"""`Updater.poll_many`'s turns: a poll whose document waits for a busy parse stage does not
keep the polls that need no parse (304s) from starting, and the bytes waiting for the parse
stage stay bounded. Real Redis, real local HTTP server; the parse stage is held by the test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from aggregator import update
from aggregator.config import Config
from aggregator.fetch import Fetcher
from aggregator.store import Store
from aggregator.update import Outcome, Updater
from tests.conftest import ConfigWriter, FeedServer, Route, poll_now

NOW = datetime.now(UTC).replace(microsecond=0)
HOLD_SECONDS = 5.0  # how long the parse stage is held at most: the old behaviour fails, not hangs


class HeldParse(ThreadPoolExecutor):
    """A parse stage that runs nothing until `release` is set, counting the documents in it."""

    def __init__(self) -> None:
        super().__init__(max_workers=8)
        self.release = threading.Event()
        self.inside = 0
        self.most_inside = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)

        def held() -> Any:
            self.release.wait(HOLD_SECONDS)
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.inside -= 1

        return super().submit(held)


def setup(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store, changed: int, warm: int
) -> tuple[Config, list[str]]:
    """`changed` sources whose document changes on every request, then `warm` that answer 304
    once polled; every one polled once already."""
    body = (feed_server.root / "atom.xml").read_bytes()
    versions = iter(range(1_000_000))

    def changing() -> Route:
        text = body.replace(b"<title>", f"<title>v{next(versions)} ".encode(), 1)
        return Route(200, {"Content-Type": "application/xml"}, text)

    names = [f"changed{i}" for i in range(changed)] + [f"warm{i}" for i in range(warm)]
    for name in names:
        if name.startswith("changed"):
            feed_server.routes[f"/{name}.xml"] = changing
        else:
            feed_server.copy("rss2.xml", f"{name}.xml")
    config = write_config.write([{"name": n, "url": feed_server.url(f"{n}.xml")} for n in names])
    assert all(o.ok for o in poll_now(config, store, names, NOW))
    return config, names


def poll_held(
    config: Config, store: Store, names: list[str], parse: HeldParse, max_polls: int
) -> list[Outcome]:
    """`poll_many` of `names` with `max_polls` turns; the parse stage is released once every
    304 has been recorded (or after HOLD_SECONDS). Outcomes in the order they ended."""
    warm = sum(n.startswith("warm") for n in names)
    ended: list[Outcome] = []

    def done(outcome: Outcome) -> None:
        ended.append(outcome)
        if sum(o.not_modified for o in ended) == warm:
            parse.release.set()

    async def run() -> None:
        async with Fetcher(config.settings) as fetcher:
            updater = Updater(config, store, fetcher, executor=parse, clock=lambda: NOW)
            await updater.poll_many([config.source(n) for n in names], done, max_polls=max_polls)

    try:
        asyncio.run(run())
    finally:
        parse.release.set()
        parse.shutdown()
    return ended


def test_polls_that_need_no_parse_pass_documents_waiting_for_the_parse_stage(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    # Two turns, both first taken by changed documents the parse stage is holding: the 304s
    # behind them must still all be recorded before the parse stage lets any document through.
    config, names = setup(write_config, feed_server, store, changed=4, warm=20)
    parse = HeldParse()
    ended = poll_held(config, store, names, parse, max_polls=2)
    assert all(o.ok for o in ended)
    assert [o.not_modified for o in ended] == [True] * 20 + [False] * 4
    assert parse.most_inside == 4  # every changed document went to the parse stage at once


def test_the_bytes_waiting_for_the_parse_stage_are_bounded(
    write_config: ConfigWriter,
    feed_server: FeedServer,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Room for one document: the others wait for it holding their turns, as every poll did
    # before documents gave up their turns.
    monkeypatch.setattr(update, "PARSE_WAITING_BYTES", 1)
    config, names = setup(write_config, feed_server, store, changed=3, warm=4)
    parse = HeldParse()
    ended = poll_held(config, store, names, parse, max_polls=8)
    assert all(o.ok for o in ended)
    assert sorted(o.source for o in ended) == sorted(names)
    assert parse.most_inside == 1
