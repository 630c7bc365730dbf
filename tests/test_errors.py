"""What a source's failure reads as: one line a person understands, in the table of `status`
and in the stored last_error, however deep the cause and wherever it was raised."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from aggregator.bounded import ParsePool
from aggregator.errors import (
    MAX_DETAIL,
    FetchError,
    ParseError,
    SourceError,
    StorageError,
    one_line,
)
from aggregator.fetch import Fetcher
from aggregator.store import Address, Store
from aggregator.update import Updater
from tests.conftest import ConfigWriter, FeedServer, free_port, poll_now

URL = "https://feeds.example.cn/rss.xml"


class Deep(Exception):
    """A cause whose text runs over several lines, as a traceback or a repr can."""


def raised(err: SourceError, cause: BaseException) -> SourceError:
    try:
        raise err from cause
    except SourceError as caught:
        return caught


def test_one_line() -> None:
    assert one_line("a\n  b\tc\r\n") == "a b c"
    assert one_line("x" * 10, 5) == "xxxx…"
    assert one_line("short", 5) == "short"


def test_a_parse_error_shows_its_cause_on_one_line() -> None:
    err = raised(ParseError(URL, "not an RSS, Atom or JSON feed"), Deep("line 1\nline 2\n"))
    assert str(err) == f"parse {URL}: not an RSS, Atom or JSON feed: Deep: line 1 line 2"


def test_a_long_cause_is_cut() -> None:
    err = raised(ParseError(URL, "not a feed"), Deep("y" * 5000))
    assert len(err.detail) == MAX_DETAIL and err.detail.endswith("…")
    assert "\n" not in str(err)


def test_a_fetch_error_says_it_in_its_reason_alone() -> None:
    cause = Deep("('connection error', {'causes': [{'message': 'tcp connect error'}]})")
    err = raised(FetchError("http://127.0.0.1:9/x.xml", "connection refused by 127.0.0.1:9"), cause)
    assert str(err) == "fetch http://127.0.0.1:9/x.xml: connection refused by 127.0.0.1:9"
    assert err.__cause__ is cause  # kept for the log and for callers


def test_an_explicit_detail_wins_over_the_cause() -> None:
    err = raised(ParseError(URL, "took longer than 30s", detail=""), Deep("SIGALRM in worker 7"))
    assert str(err) == f"parse {URL}: took longer than 30s"


@pytest.mark.parametrize(
    "err",
    [
        ParseError(URL, "not a feed"),
        FetchError(URL, "HTTP 503 Service Unavailable", 503, 120.0),
    ],
)
def test_the_text_survives_a_process_boundary(err: SourceError) -> None:
    original = raised(err, Deep("the real cause"))
    copy = pickle.loads(pickle.dumps(original))
    # A process pool puts the worker's formatted traceback where the cause was.
    copy.__cause__ = Deep('Traceback (most recent call last):\n  File "x.py"\n')
    assert type(copy) is type(original)
    assert str(copy) == str(original)
    assert (copy.url, copy.reason) == (original.url, original.reason)
    assert getattr(copy, "status", None) == getattr(original, "status", None)
    assert getattr(copy, "retry_after", None) == getattr(original, "retry_after", None)


def test_the_stored_last_error_is_the_one_line(write_config: ConfigWriter, store: Store) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/feed.xml"
    config = write_config.write([{"name": "closed", "url": url}])
    (outcome,) = poll_now(config, store, ["closed"], datetime.now(UTC))
    expected = f"fetch {url}: connection refused by 127.0.0.1:{port}"
    assert not outcome.ok and outcome.error == expected
    (state,) = store.source_states(["closed"])
    assert state.last_error == expected and state.failures == 1


def test_redis_failing_in_the_parse_pool_is_a_storage_error(
    write_config: ConfigWriter, feed_server: FeedServer, redis_url: str
) -> None:
    # The worker reaches Redis by the store's address; a cluster it cannot reach fails with
    # redis-py's RedisClusterException, which is no RedisError: still Redis, never "parse".
    config = write_config.write([{"name": "rss", "url": feed_server.url("rss2.xml")}])
    store = Store.from_url(redis_url)
    assert store.address is not None
    dead = f"redis+cluster://127.0.0.1:{free_port()}"
    store.address = Address(dead, store.address.lifetimes)

    async def poll() -> None:
        async with Fetcher(config.settings) as fetcher:
            updater = Updater(config, store, fetcher, executor=pool)
            await updater.poll(config.source("rss"))

    try:
        with ParsePool(1, seconds=20) as pool, pytest.raises(StorageError) as info:
            asyncio.run(poll())
    finally:
        store.close()
    assert "Redis" in str(info.value) and dead in str(info.value)  # what failed, and where
    assert not isinstance(info.value, SourceError)


def test_debug_shows_the_detail_behind_a_one_line_failure(
    write_config: ConfigWriter, environ: dict[str, str]
) -> None:
    closed = free_port()  # nothing listens here
    url = f"http://127.0.0.1:{closed}/feed.xml"
    write_config.write([{"name": "down", "url": url}])
    env = {
        **environ,
        "AGGREGATOR_CONFIG": str(write_config.path),
        "AGGREGATOR_REDIS_URL": write_config.redis_url,
    }

    def poll(*flags: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "aggregator", *flags, "poll"]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    plain, debug = poll(), poll("--debug")
    for done in (plain, debug):
        assert done.returncode == 1  # its only poll failed
        assert f"connection refused by 127.0.0.1:{closed}" in done.stdout
    assert "DEBUG" not in plain.stderr
    # the HTTP client's own chain of causes, which the table's one line leaves out
    detail = [line for line in debug.stderr.splitlines() if "DEBUG aggregator.fetch" in line]
    assert detail and "Connection refused" in detail[0], debug.stderr
