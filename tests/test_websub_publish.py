"""WebSub as a publisher: `settings.websub_hub` advertised in every feed and in a Link header,
and pinged once per changed feed URL by the worker that notices the change, retried with
backoff while the hub fails; never by the web process."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import feedparser
import pytest
from lxml import etree

from aggregator import config, keys
from aggregator.errors import ConfigError
from aggregator.fetch import Fetcher
from aggregator.push import PING_WINDOW, Push
from aggregator.store import Store
from aggregator.websub import RETRY_FIRST
from tests.conftest import ConfigWriter, FeedServer, free_port
from tests.hub import Hub
from tests.weblinks import ATOM, eventually, http_get, wait_for

TAG = "财经"


def test_a_hub_needs_public_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse("settings: {websub_hub: 'https://hub.example/'}\n", tmp_path / "f.yaml")
    assert caught.value.problems == [
        "settings.websub_hub: needs settings.public_url: the hub is told our feeds' URLs, "
        "which only public_url gives"
    ]
    loaded = config.parse(
        "settings: {websub_hub: 'https://hub.example/', public_url: 'https://agg.example'}\n",
        tmp_path / "f.yaml",
    )
    assert loaded.settings.websub_hub == "https://hub.example/"
    with pytest.raises(ConfigError, match="settings.websub_hub: not an http"):
        config.parse(
            "settings: {websub_hub: 'ftp://hub/', public_url: 'https://a.example'}\n",
            tmp_path / "f.yaml",
        )


def urls_of(base: str) -> list[str]:
    """Every feed URL a change of the one source below pings: its tag, category and all."""
    paths = [f"/tags/{quote(TAG)}", "/categories/news", "/all"]
    return [f"{base}{p}.{fmt}" for p in paths for fmt in ("atom", "rss", "json")]


def test_a_change_pings_each_feed_url_once_from_the_worker_never_the_web(
    write_config: ConfigWriter, feed_server: FeedServer, environ: dict[str, str]
) -> None:
    """feeds.yaml → `aggregator web`, `aggregator poll`, `aggregator worker` → the hub."""
    hub = Hub()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    feed_server.copy("rss2.xml", "news.xml")
    write_config.write(
        [
            {
                "name": "news",
                "url": feed_server.url("news.xml"),
                "tags": [TAG],
                "category": "news",
                "interval": "1h",
            }
        ],
        settings={"public_url": base, "websub_hub": hub.url},
    )
    env = {
        **environ,
        "AGGREGATOR_CONFIG": str(write_config.path),
        "AGGREGATOR_REDIS_URL": write_config.redis_url,
    }
    web = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "web", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_for(base, web)
        polled = subprocess.run(
            [sys.executable, "-m", "aggregator", "poll"], env=env, capture_output=True, timeout=60
        )
        assert polled.returncode == 0, polled.stderr
        # the feed advertises the hub in its body and in a Link header, with its self URL
        answer = http_get(base + f"/tags/{quote(TAG)}.atom")
        assert answer.status == 200
        self_url = f"{base}/tags/{quote(TAG)}.atom"
        assert answer.headers["Link"] == f'<{hub.url}>; rel="hub", <{self_url}>; rel="self"'
        links = {
            a.get("rel"): a.get("href") for a in etree.fromstring(answer.body).iter(ATOM + "link")
        }
        assert (links["hub"], links["self"]) == (hub.url, self_url)
        rss = http_get(base + "/all.rss")
        assert f'<{hub.url}>; rel="hub"' in rss.headers["Link"]
        assert json.loads(http_get(base + "/all.json").body)["hubs"] == [
            {"type": "WebSub", "url": hub.url}
        ]
        time.sleep(1.5)
        assert hub.requests == []  # the web process and `poll` never ping

        worker = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        expected = urls_of(base)
        assert eventually(lambda: set(hub.pings) >= set(expected), 30)
        time.sleep(PING_WINDOW + 2)
        assert Counter(hub.pings) == Counter(expected)  # exactly one per feed URL

        # the source adds an entry and is polled: one more ping per feed URL
        text = (feed_server.root / "news.xml").read_text(encoding="utf-8")
        item = (
            "<item><title>Pushed news</title><link>http://example.com/pushed</link>"
            "<guid>pushed-news</guid></item>"
        )
        (feed_server.root / "news.xml").write_text(
            text.replace("<item>", item + "<item>", 1), encoding="utf-8"
        )
        store = Store.from_url(write_config.redis_url)
        try:
            store.client.zadd(keys.DUE, {"news": 0})
        finally:
            store.close()
        assert eventually(lambda: len(hub.pings) >= 2 * len(expected), 30)
        time.sleep(PING_WINDOW + 2)
        assert Counter(hub.pings) == Counter(expected * 2)
        titles = [e.title for e in feedparser.parse(http_get(expected[0]).body).entries]
        assert "Pushed news" in titles
    finally:
        for process in (worker, web):
            if process is not None:
                process.terminate()
                process.wait(20)
        hub.close()


def test_a_failing_hub_is_pinged_again_with_backoff(
    write_config: ConfigWriter, feed_server: FeedServer, store: Store
) -> None:
    hub = Hub(failing_pings=9)
    base = "http://agg.test"
    loaded = write_config.write(
        [{"name": "news", "url": feed_server.url("rss2.xml"), "tags": [TAG], "category": "news"}],
        settings={"public_url": base, "websub_hub": hub.url},
    )
    store.client.incr(keys.version(keys.index("tag", TAG)))
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    expected = [u for u in urls_of(base) if "/tags/" in u]

    async def rounds() -> list[int]:
        async with Fetcher(loaded.settings) as fetcher:
            push = Push(loaded, store, fetcher, clock=lambda: now[0])
            seen = []
            for step in (0, PING_WINDOW, 1, RETRY_FIRST, 1, 2 * RETRY_FIRST, 4 * RETRY_FIRST):
                now[0] += timedelta(seconds=step)
                await push.publish()
                seen.append(len(hub.requests))
            return seen

    try:
        seen = asyncio.run(rounds())
    finally:
        hub.close()
    # queued for the window; 3 pings (one per format) fail; none until the backoff has passed;
    # they fail again, and the backoff doubles; a third time; the fourth reaches the hub
    assert seen == [0, 3, 3, 6, 6, 9, 12]
    assert Counter(hub.pings) == Counter(expected)  # each reached the hub once in the end


def test_a_push_tick_reads_in_one_thread_hop_and_each_step_fails_alone(
    write_config: ConfigWriter,
    feed_server: FeedServer,
    store: Store,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A WebSub tick runs every second: its reads (the inbox, the subscriptions) share one
    thread hop, and a failed read still fails only the step that needed it."""
    loaded = write_config.write([{"name": "news", "url": feed_server.url("rss2.xml")}])
    store.client.set(keys.WEBSUB_INBOX, "not a list")  # the inbox cannot be read
    store.client.set(keys.WEBSUB_NAMES, "not a set")  # nor the subscriptions
    hops: list[object] = []
    to_thread = asyncio.to_thread

    async def counted(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await to_thread(func, *args, **kwargs)

    async def tick() -> None:
        async with Fetcher(loaded.settings) as fetcher:
            push = Push(loaded, store, fetcher)
            monkeypatch.setattr(asyncio, "to_thread", counted)
            await push.tick()

    with caplog.at_level(logging.ERROR, logger="aggregator.push"):
        asyncio.run(tick())
    said = [r.getMessage() for r in caplog.records if r.name == "aggregator.push"]
    assert len(hops) == 1
    assert [m for m in said if "taking WebSub distributions" in m]
    assert [m for m in said if "reading WebSub subscriptions" in m]
