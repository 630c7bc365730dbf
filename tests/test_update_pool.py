"""A changed document is parsed, normalized and saved in the parse pool's worker, which
reaches Redis by the store's address: the polling process only fetches. Real pool, real
Redis, real local HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from aggregator import keys
from aggregator.bounded import ParsePool
from aggregator.config import Config, Source
from aggregator.errors import ParseError, StorageError
from aggregator.fetch import Fetcher
from aggregator.models import FetchResult, RetentionRule, Validators
from aggregator.store import Address, Store
from aggregator.update import Changed, Outcome, Updater, store_changed
from tests.conftest import ConfigWriter, FeedServer, free_port

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def pool() -> Iterator[ParsePool]:
    with ParsePool(1, seconds=20) as p:
        yield p


def poll_in_pool(config: Config, store: Store, pool: ParsePool, names: list[str]) -> list[Outcome]:
    async def run() -> list[Outcome]:
        async with Fetcher(config.settings) as fetcher:
            updater = Updater(config, store, fetcher, executor=pool, clock=lambda: NOW)
            return await updater.poll_many([config.source(n) for n in names])

    return asyncio.run(run())


def test_the_worker_saves_the_entries_and_the_state(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store, pool: ParsePool
) -> None:
    config = write_config.write(
        [
            {"name": "rss", "url": feed_server.url("rss2.xml")},
            {"name": "gbk", "url": feed_server.url("gbk.xml"), "category": "财经"},
        ]
    )
    first = poll_in_pool(config, store, pool, ["rss", "gbk"])
    assert [o.ok for o in first] == [True, True] and first[0].new == 3
    assert first[1].new > 0
    assert store.count("category", "rss") == 3
    assert store.count("category", "财经") == first[1].new
    rss = store.source_states(["rss"])[0]
    assert (rss.status, rss.entries, rss.id_mode) == (200, 3, "guid")
    assert rss.validators.etag  # kept once the document was read whole
    assert rss.next_due is not None and rss.next_due > NOW
    assert store.previous_guids("rss")  # the guid memory is written too

    again = poll_in_pool(config, store, pool, ["rss", "gbk"])
    assert [(o.ok, o.not_modified, o.new) for o in again] == [(True, True, 0)] * 2


def test_a_document_that_is_no_feed_fails_in_the_worker_and_keeps_no_validators(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store, pool: ParsePool
) -> None:
    feed_server.put("page.xml", b"<html><body>not a feed</body></html>")
    config = write_config.write([{"name": "page", "url": feed_server.url("page.xml")}])
    (outcome,) = poll_in_pool(config, store, pool, ["page"])
    assert not outcome.ok and "not an RSS, Atom or JSON feed" in outcome.error
    state = store.source_states(["page"])[0]
    assert state.failures == 1 and state.validators.etag == ""
    assert store.count("category", "page") == 0


def test_redis_out_of_the_workers_reach_is_a_storage_error_not_a_parse_error(
    write_config: ConfigWriter, feed_server: FeedServer, redis_url: str, pool: ParsePool
) -> None:
    config = write_config.write([{"name": "rss", "url": feed_server.url("rss2.xml")}])
    store = Store.from_url(redis_url)
    assert store.address is not None
    store.address = Address(f"redis://127.0.0.1:{free_port()}/0", store.address.lifetimes)
    try:
        with pytest.raises(StorageError):
            poll_in_pool(config, store, pool, ["rss"])
    finally:
        store.close()


def test_a_failed_call_drops_the_workers_connections(store: Store) -> None:
    address = store.address
    assert address is not None
    first = Store.at(address)
    assert Store.at(address) is first  # one store per address in a process
    changed = Changed(
        source=Source(name="src", url="http://127.0.0.1/x.xml"),
        fetched=FetchResult(
            url="http://127.0.0.1/x.xml",
            final_url="http://127.0.0.1/x.xml",
            status=200,
            content_type="text/html",
            body=b"<html>no feed</html>",
            validators=Validators(),
        ),
        fetched_at=NOW,
        id_mode="guid",
        state={"status": 200},
        interval=3600.0,
        retention=RetentionRule(100, 86400.0),
    )
    with pytest.raises(ParseError):
        store_changed(address, changed)
    again = Store.at(address)
    assert again is not first  # connected again after the failure
    assert store.client.exists(keys.source("src")) == 0  # nothing was written
    again.forget()
