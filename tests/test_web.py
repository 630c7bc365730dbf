"""The web app, built by the same factory production uses, on a real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import feedparser
import pytest
from flask import Flask
from flask.testing import FlaskClient

from aggregator.config import Config
from aggregator.models import Entry
from aggregator.store import Store
from aggregator.web import create_app
from tests.conftest import ConfigWriter

CST = timezone(timedelta(hours=8))
TAG = "经济日报新闻"


def make_entry(n: int, **changes: object) -> Entry:
    values: dict[str, object] = {
        "id": f"{n:016x}",
        "source": "jingjiribao",
        "category": "jingjiribao",
        "tags": (TAG,),
        "title": f"标题 {n}",
        "link": f"https://finews.example.cn/{n}.html",
        "content": f"<p>正文 {n}</p>",
        "summary": "",
        "first_seen": datetime(2024, 1, 1, tzinfo=UTC),
        "published": datetime(2022, 4, 5, 5, 50, tzinfo=CST) + timedelta(minutes=n),
    }
    values.update(changes)
    return Entry(**values)  # type: ignore[arg-type]


@pytest.fixture
def config(write_config: ConfigWriter) -> Config:
    return write_config.write(
        [
            {"name": "jingjiribao", "url": "https://finews.example.cn/rss.xml", "tags": [TAG]},
            {"name": "quiet", "url": "https://quiet.example.org/rss.xml", "tags": ["empty tag"]},
        ],
        settings={"public_url": "https://news.example.org/"},
        categories={"jingjiribao": {"title": "经济日报"}},
    )


@pytest.fixture
def app(config: Config, store: Store) -> Iterator[Flask]:
    yield create_app(config, store, version_check=0)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def fill(store: Store, count: int) -> list[Entry]:
    entries = [make_entry(n) for n in range(count)]
    store.save_poll("jingjiribao", entries, {"status": 200}, None)
    return entries


def test_percent_encoded_unicode_tag_newest_first(client: FlaskClient, store: Store) -> None:
    fill(store, 5)
    response = client.get(f"/tags/{quote(TAG)}.atom")
    assert response.status_code == 200
    assert response.content_type == "application/atom+xml; charset=utf-8"
    parsed = feedparser.parse(response.data)
    assert [e.title for e in parsed.entries] == [f"标题 {n}" for n in (4, 3, 2, 1, 0)]
    assert parsed.feed.title == TAG
    self_links = [link.href for link in parsed.feed.links if link.rel == "self"]
    assert self_links == [f"https://news.example.org/tags/{quote(TAG, safe='')}.atom"]


def test_limit_default_cap_and_bad_values(client: FlaskClient, store: Store) -> None:
    fill(store, 60)
    path = "/categories/jingjiribao.json"
    assert len(client.get(path).get_json()["items"]) == 50
    assert len(client.get(path + "?limit=7").get_json()["items"]) == 7
    assert len(client.get(path + "?limit=100000").get_json()["items"]) == 60  # capped at 500
    for bad in ("0", "-3", "many"):
        response = client.get(f"{path}?limit={bad}")
        assert response.status_code == 400
        assert "limit" in response.get_data(as_text=True)


def test_unknown_tag_category_and_format_are_404_with_a_reason(client: FlaskClient) -> None:
    for path in ("/tags/nope.atom", "/categories/nope.rss", "/all.xml", "/tags/empty%20tag.csv"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.content_type.startswith("text/plain")
        assert response.get_data(as_text=True).startswith("404 Not Found: ")
    # a tag from the config with no entries yet is an empty feed, not a 404
    empty = client.get("/tags/empty%20tag.rss")
    assert empty.status_code == 200
    assert feedparser.parse(empty.data).entries == []


def test_etag_last_modified_and_304(client: FlaskClient, store: Store) -> None:
    fill(store, 3)
    first = client.get("/all.rss")
    etag = first.headers["ETag"]
    assert first.headers["Last-Modified"]
    assert "max-age" in first.headers["Cache-Control"]
    again = client.get("/all.rss", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    since = client.get("/all.rss", headers={"If-Modified-Since": first.headers["Last-Modified"]})
    assert since.status_code == 304
    # new data: a new ETag, and the old one no longer matches
    store.save_poll("jingjiribao", [make_entry(9)], {}, None)
    changed = client.get("/all.rss", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def test_identical_data_renders_identical_bytes(config: Config, store: Store) -> None:
    fill(store, 4)
    one = create_app(config, store).test_client()
    two = create_app(config, store).test_client()
    for path in ("/all.atom", "/all.rss", "/all.json"):
        a, b = one.get(path), two.get(path)
        assert a.data == b.data and a.headers["ETag"] == b.headers["ETag"]


def test_json_feed_keeps_offsets_and_source(client: FlaskClient, store: Store) -> None:
    fill(store, 1)
    item = client.get(f"/tags/{quote(TAG)}.json").get_json()["items"][0]
    assert item["date_published"] == "2022-04-05T05:50:00+08:00"
    assert item["id"] == "https://news.example.org/entries/0000000000000000"
    assert item["_source"]["name"] == "jingjiribao"


def test_html_pages(client: FlaskClient, store: Store) -> None:
    fill(store, 2)
    index = client.get("/").get_data(as_text=True)
    assert TAG in index and "empty tag" in index
    assert f'href="https://news.example.org/tags/{quote(TAG, safe="")}.atom"' in index
    page = client.get("/entries/0000000000000001").get_data(as_text=True)
    assert "标题 1" in page and "<p>正文 1</p>" in page and "2022-04-05 05:51:00 +0800" in page
    assert "经济日报" in page
    assert client.get("/entries/ffffffffffffffff").status_code == 404
    listing = client.get(f"/tags/{quote(TAG)}").get_data(as_text=True)
    assert "标题 0" in listing and "标题 1" in listing


def test_health_readiness_and_metrics(client: FlaskClient, config: Config) -> None:
    assert client.get("/healthz").data == b"ok\n"
    assert client.get("/readyz").status_code == 200
    client.get("/all.atom")
    assert b"aggregator_feed_requests_total" in client.get("/metrics").data
    gone = create_app(config, Store.from_url("redis://127.0.0.1:1/0")).test_client()
    assert gone.get("/readyz").status_code == 503
    down = gone.get("/all.atom")
    assert down.status_code == 503 and down.headers["Retry-After"]


def test_json_feed_is_valid_json_with_unicode(client: FlaskClient, store: Store) -> None:
    store.save_poll("jingjiribao", [make_entry(1, title="emoji 🔭 and مرحبا")], {}, None)
    body = client.get("/all.json").data.decode("utf-8")
    assert "🔭" in body and "مرحبا" in body
    assert json.loads(body)["version"] == "https://jsonfeed.org/version/1.1"
