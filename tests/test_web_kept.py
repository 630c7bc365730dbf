"""A feed this process holds fresh is answered in front of Flask (web.py `_answer_kept`): the
same status, headers and bytes as the view gives, counted alike, and never for a request whose
answer could differ (another base URL, a reload, a name only stored data decides, a stale
memo)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask, request
from prometheus_client import REGISTRY
from werkzeug.test import TestResponse

from aggregator import config as config_module
from aggregator.config import Config
from aggregator.models import Entry
from aggregator.store import Store
from aggregator.web import create_app, site
from tests.conftest import ConfigWriter
from tests.test_links import entry as tech_entry

TAG = "财经 news"
FEED = f"/tags/{quote(TAG)}.atom"
OK = ("200", "304")


def entry(n: int) -> Entry:
    return dataclasses.replace(tech_entry(n), tags=(TAG,))


def configure(write_config: ConfigWriter, title: str = "Money", **settings: Any) -> Config:
    return write_config.write(
        [{"name": "tech", "url": "https://tech.example.org/rss.xml", "tags": [TAG]}],
        settings=settings,
        tags={TAG: {"title": title}},
    )


@pytest.fixture
def filled(store: Store) -> Store:
    store.save_poll("tech", [entry(1), entry(2)], {}, None)
    return store


def counted(app: Flask) -> list[str]:
    """The paths of the requests that reached Flask."""
    seen: list[str] = []
    app.before_request(lambda: seen.append(request.path))
    return seen


def sample(name: str, **labels: str) -> float:
    return float(REGISTRY.get_sample_value(name, labels) or 0)


def parts(response: TestResponse) -> tuple[str, list[tuple[str, str]], bytes]:
    return response.status, response.headers.to_wsgi_list(), response.data


def test_a_fresh_memo_is_answered_before_flask_as_the_view_answers(
    write_config: ConfigWriter, filled: Store
) -> None:
    config = configure(
        write_config, public_url="https://feeds.example/", websub_hub="https://hub.example/"
    )
    app = create_app(config, filled, version_check=3600)
    reached = counted(app)
    client = app.test_client()
    viewed = client.get(FEED)  # renders, and records the route
    assert "Link" in viewed.headers  # the hub's: every header the view gives is compared
    etag = viewed.headers["ETag"]
    since = viewed.headers["Last-Modified"]
    # The view's own answers, from an app that checks the version on every request.
    view = create_app(config, filled, version_check=0).test_client()
    asks: list[dict[str, Any]] = [
        {},
        {"method": "HEAD"},
        {"headers": {"If-None-Match": etag}},
        {"headers": {"If-None-Match": '"other"'}},
        {"headers": {"If-Modified-Since": since}},
        {"headers": {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}},
    ]
    hits = sample("aggregator_render_cache_total", result="hit")
    answered = {s: sample("aggregator_feed_requests_total", format="atom", status=s) for s in OK}
    for ask in asks:
        method = ask.get("method", "GET")
        kept = client.open(FEED, method=method, headers=ask.get("headers", {}))
        assert parts(kept) == parts(view.open(FEED, method=method, headers=ask.get("headers", {})))
    assert len(reached) == 1  # the first request only
    assert [parts(client.get(FEED))[0] for _ in range(2)] == ["200 OK"] * 2
    assert sample("aggregator_render_cache_total", result="hit") == hits + 8 + 6
    # 200: GET, HEAD, a stale ETag, an old date, twice more; 304: the ETag, the date; each
    # answered by both apps
    assert sample("aggregator_feed_requests_total", format="atom", status="200") == (
        answered["200"] + 2 * 4 + 2
    )
    assert sample("aggregator_feed_requests_total", format="atom", status="304") == (
        answered["304"] + 2 * 2
    )
    assert client.post(FEED).status_code == 405  # not GET or HEAD: Flask answers
    assert len(reached) == 2


def test_each_base_url_and_query_is_its_own_answer(
    write_config: ConfigWriter, filled: Store
) -> None:
    config = configure(write_config, trusted_proxies=["10.0.0.0/8"])
    app = create_app(config, filled, version_check=3600)
    reached = counted(app)
    client = app.test_client()

    def self_link(host: str, remote: str, forwarded: str | None, query: str = "") -> str:
        headers = {"Host": host, **({"X-Forwarded-Host": forwarded} if forwarded else {})}
        response = client.get(FEED + query, headers=headers, environ_base={"REMOTE_ADDR": remote})
        assert response.status_code == 200
        found = response.get_data(as_text=True).split('rel="self"')[0].rsplit('href="', 1)[1]
        return found.split('"')[0]

    asks = [
        ("a.example", "192.0.2.1", None, ""),
        ("b.example", "192.0.2.1", None, ""),
        ("a.example", "192.0.2.1", "proxy.example", ""),  # not a trusted proxy: ignored
        ("a.example", "10.0.0.1", "proxy.example", ""),
        ("a.example", "10.0.0.1", "other.example", ""),
        ("a.example", "192.0.2.1", None, "?limit=1"),
    ]
    want = [
        "http://a.example/tags/%E8%B4%A2%E7%BB%8F%20news.atom",
        "http://b.example/tags/%E8%B4%A2%E7%BB%8F%20news.atom",
        "http://a.example/tags/%E8%B4%A2%E7%BB%8F%20news.atom",
        "http://proxy.example/tags/%E8%B4%A2%E7%BB%8F%20news.atom",
        "http://other.example/tags/%E8%B4%A2%E7%BB%8F%20news.atom",
        "http://a.example/tags/%E8%B4%A2%E7%BB%8F%20news.atom?limit=1",
    ]
    for _ in range(2):
        assert [self_link(*ask) for ask in asks] == want
    # once each, but the untrusted X-Forwarded-Host: the same answer as without it
    assert len(reached) == len(asks) - 1


def test_a_reload_and_a_stale_memo_go_through_the_view(
    write_config: ConfigWriter, filled: Store
) -> None:
    configure(write_config, public_url="https://feeds.example/")
    app = create_app(store=filled, load_config=config_module.from_environ, version_check=0.3)
    reached = counted(app)
    client = app.test_client()
    assert "<title>Money</title>" in client.get(FEED).get_data(as_text=True)
    assert "<title>Money</title>" in client.get(FEED).get_data(as_text=True)
    assert len(reached) == 1
    configure(write_config, "Renamed", public_url="https://feeds.example/")
    site(app).request_reload()
    assert "<title>Renamed</title>" in client.get(FEED).get_data(as_text=True)
    assert len(reached) == 2
    filled.save_poll("tech", [entry(1), entry(2), entry(3)], {}, None)
    assert "Post 3" not in client.get(FEED).get_data(as_text=True)  # fresh for 0.3 s
    time.sleep(0.4)
    assert "Post 3" in client.get(FEED).get_data(as_text=True)
    assert len(reached) == 3


def test_a_name_only_stored_data_decides_goes_through_the_view(
    write_config: ConfigWriter, filled: Store
) -> None:
    """A tag not in feeds.yaml is served while it has entries (a ZCARD each time): the view
    asks every time."""
    gone = write_config.write(
        [{"name": "tech", "url": "https://tech.example.org/rss.xml"}], settings={}
    )
    app = create_app(gone, filled, version_check=3600)
    reached = counted(app)
    client = app.test_client()
    for _ in range(3):
        assert client.get(FEED).status_code == 200
    assert len(reached) == 3
