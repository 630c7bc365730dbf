"""Published feeds: valid for their format, paged (RFC 5005), cached per index version."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import jsonschema
import pytest
from flask.testing import FlaskClient
from lxml import etree

from aggregator import keys
from aggregator.config import Config
from aggregator.models import Author, Enclosure, Entry, RetentionRule
from aggregator.store import Store
from aggregator.web import create_app
from tests.conftest import SCHEMAS, ConfigWriter

ATOM = "{http://www.w3.org/2005/Atom}"
CST = timezone(timedelta(hours=8))
RNG = etree.RelaxNG(etree.parse(str(SCHEMAS / "atom.rng")))
JSON_SCHEMA = json.loads((SCHEMAS / "jsonfeed-1.1.schema.json").read_text())


def entry(n: int, **changes: object) -> Entry:
    values: dict[str, object] = {
        "id": f"{n:016x}",
        "source": "pod",
        "category": "audio",
        "tags": ("播客",),
        "title": f"第{n}集",
        "link": f"https://pod.example.cn/{n}",
        "content": f"<p>节目 {n}</p>",
        "summary": "",
        "first_seen": datetime(2024, 1, 1, tzinfo=UTC),
        "published": datetime(2024, 3, 1, 8, 0, tzinfo=CST) + timedelta(hours=n),
        "enclosures": (
            Enclosure(f"https://pod.example.cn/{n}.mp3", "audio/mpeg", 1000 + n),
            Enclosure(f"https://pod.example.cn/{n}.ogg", "audio/ogg", 0),
        ),
        "source_title": "播客源",
        "source_link": "https://pod.example.cn/",
    }
    values.update(changes)
    return Entry(**values)  # type: ignore[arg-type]


@pytest.fixture
def config(write_config: ConfigWriter) -> Config:
    return write_config.write(
        [
            {
                "name": "pod",
                "url": "https://pod.example.cn/rss",
                "category": "audio",
                "tags": ["播客"],
                "interval": "10m",
            },
            {
                "name": "slow",
                "url": "https://slow.example/rss",
                "category": "audio",
                "interval": "6h",
            },
            {
                "name": "daily",
                "url": "https://daily.example/rss",
                "category": "daily",
                "interval": "1d",
            },
        ],
        settings={"public_url": "https://agg.example/"},
    )


@pytest.fixture
def client(config: Config, store: Store) -> FlaskClient:
    return create_app(config, store, version_check=0).test_client()


def atom_links(element: etree._Element) -> dict[str, list[etree._Element]]:
    out: dict[str, list[etree._Element]] = {}
    for link in element.findall(f"{ATOM}link"):
        out.setdefault(link.get("rel", "alternate"), []).append(link)
    return out


def test_atom_is_valid_with_enclosures_and_source(client: FlaskClient, store: Store) -> None:
    store.save_poll("pod", [entry(1, authors=(Author("主播"),)), entry(2)], {}, None)
    body = client.get("/categories/audio.atom").data
    feed = etree.fromstring(body)
    assert RNG.validate(feed), RNG.error_log
    links = atom_links(feed)
    assert links["self"][0].get("href") == "https://agg.example/categories/audio.atom"
    assert "hub" not in links  # no settings.websub_hub: no hub is advertised
    assert feed.find(f"{ATOM}author/{ATOM}name") is not None  # RFC 4287 §4.1.1
    ids = [e.findtext(f"{ATOM}id") for e in feed.iterfind(f"{ATOM}entry")]
    assert len(ids) == len(set(ids)) == 2
    first = feed.find(f"{ATOM}entry")
    assert first is not None
    entry_links = atom_links(first)
    assert [a.get("href") for a in entry_links["alternate"]] == ["https://pod.example.cn/2"]
    enclosures = [(a.get("href"), a.get("type"), a.get("length")) for a in entry_links["enclosure"]]
    assert enclosures == [
        ("https://pod.example.cn/2.mp3", "audio/mpeg", "1002"),
        ("https://pod.example.cn/2.ogg", "audio/ogg", None),
    ]
    assert first.findtext(f"{ATOM}source/{ATOM}title") == "播客源"
    assert first.findtext(f"{ATOM}published") == "2024-03-01T10:00:00+08:00"


def test_rss_has_every_required_element(client: FlaskClient, store: Store) -> None:
    store.save_poll("pod", [entry(1), entry(2, title="", content="<p>无题</p>")], {}, None)
    rss = etree.fromstring(client.get("/tags/" + quote("播客") + ".rss").data)
    assert rss.get("version") == "2.0"
    channel = rss.find("channel")
    assert channel is not None
    for required in ("title", "link", "description"):
        assert (channel.findtext(required) or "").strip(), required
    assert [a.get("rel") for a in channel.findall(f"{ATOM}link")] == ["self", "first"]
    items = channel.findall("item")
    assert len(items) == 2
    for item in items:
        assert item.findtext("title") or item.findtext("description")
        date = parsedate_to_datetime(item.findtext("pubDate") or "")
        assert date.utcoffset() == timedelta(hours=8)
        guid = item.find("guid")
        assert guid is not None and guid.get("isPermaLink") == "true"
        assert (guid.text or "").startswith("https://agg.example/entries/")
        enclosure = item.find("enclosure")
        assert enclosure is not None and enclosure.get("type") == "audio/mpeg"
        assert item.find("source") is not None and item.find("source").get("url")
    assert items[0].findtext("pubDate") == "Fri, 01 Mar 2024 10:00:00 +0800"


def test_json_feed_is_valid_with_attachments(client: FlaskClient, store: Store) -> None:
    store.save_poll("pod", [entry(1)], {}, None)
    feed = client.get("/all.json").get_json()
    jsonschema.validate(feed, JSON_SCHEMA)
    assert "hubs" not in feed
    item = feed["items"][0]
    assert item["attachments"][0] == {
        "url": "https://pod.example.cn/1.mp3",
        "mime_type": "audio/mpeg",
        "size_in_bytes": 1001,
    }
    assert item["_source"]["title"] == "播客源"


def test_rfc5005_paging_walks_back_through_everything(client: FlaskClient, store: Store) -> None:
    store.save_poll("pod", [entry(n) for n in range(7)], {}, None)
    seen: list[str] = []
    url: str | None = "/categories/audio.atom?limit=3"
    pages = 0
    while url:
        feed = etree.fromstring(client.get(url.removeprefix("https://agg.example")).data)
        assert RNG.validate(feed), RNG.error_log
        links = atom_links(feed)
        assert links["first"][0].get("href") == "https://agg.example/categories/audio.atom?limit=3"
        assert ("previous" in links) == (pages > 0)
        seen += [e.findtext(f"{ATOM}title") or "" for e in feed.iterfind(f"{ATOM}entry")]
        url = links["next"][0].get("href") if "next" in links else None
        pages += 1
    assert pages == 3
    assert seen == [f"第{n}集" for n in range(6, -1, -1)]
    assert client.get("/categories/audio.atom?limit=3&page=9").status_code == 404
    assert client.get("/categories/audio.atom?page=0").status_code == 400
    json_page = client.get("/categories/audio.json?limit=3&page=2").get_json()
    assert json_page["next_url"] == "https://agg.example/categories/audio.json?page=3&limit=3"


def test_rendering_is_cached_per_index_version(
    client: FlaskClient, store: Store, config: Config
) -> None:
    store.save_poll("pod", [entry(1)], {}, None)
    first = client.get("/tags/" + quote("播客") + ".json")
    # Tamper with the copy cached in Redis: another web process must serve it, not render.
    (key,) = store.client.keys(keys.PREFIX + "rendered:tag:*")
    store.client.hset(key, "body", first.data.decode().replace("第1集", "CACHED"))
    other = create_app(config, store, version_check=0).test_client()
    assert "CACHED" in other.get("/tags/" + quote("播客") + ".json").get_data(as_text=True)
    # New data bumps the tag's version: the next request renders afresh.
    store.save_poll("pod", [entry(1), entry(2)], {}, None)
    fresh = client.get("/tags/" + quote("播客") + ".json").get_json()
    assert [i["title"] for i in fresh["items"]] == ["第2集", "第1集"]
    # Retention is a change too.
    store.enforce_retention("audio", RetentionRule(1, 10**9), datetime(2024, 6, 1, tzinfo=UTC))
    after = client.get("/tags/" + quote("播客") + ".json").get_json()
    assert [i["title"] for i in after["items"]] == ["第2集"]


def commands(store: Store) -> dict[str, int]:
    stats = store.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_a_miss_reads_redis_once_and_a_held_feed_checks_once(config: Config, store: Store) -> None:
    """One node: the version check, the rendering cached for the version and the entries to
    render from are one script; the rendering is written back in one MULTI; a feed the
    process holds is checked with the script alone. (commandstats counts the script's own
    calls too: GET, HGET, ZREVRANGE, MGET here are the script's.)"""
    store.save_poll("pod", [entry(1), entry(2)], {}, None)
    client = create_app(config, store, version_check=0).test_client()
    assert client.get("/all.atom").status_code == 200  # the script loaded

    def asked(*paths: str, app: FlaskClient = client) -> dict[str, int]:
        before = commands(store)
        for path in paths:
            assert app.get(path).status_code == 200
        after = commands(store)
        return {
            k: n - before.get(k, 0) for k, n in after.items() if k != "info" and n != before.get(k)
        }

    # a miss, then the same feed held and checked
    assert asked("/categories/audio.atom", "/categories/audio.atom") == {
        "evalsha": 2,
        "get": 2,
        "hget": 1,
        "zrevrange": 1,
        "mget": 1,
        "multi": 1,
        "hset": 1,
        "expire": 1,
        "exec": 1,
    }
    # Another process finds the rendering: the same script reads it, nothing is written.
    other = create_app(config, store, version_check=0).test_client()
    assert asked("/categories/audio.atom", app=other) == {
        "evalsha": 1,
        "get": 1,
        "hget": 1,
        "hmget": 1,
    }


def test_cache_control_follows_the_fastest_source(client: FlaskClient, store: Store) -> None:
    assert client.get("/categories/audio.rss").cache_control.max_age == 600
    assert client.get("/categories/daily.rss").cache_control.max_age == 3600  # capped
    assert client.get("/all.rss").cache_control.max_age == 600
    response = client.get("/all.rss")
    assert response.cache_control.public


def test_same_data_same_etag_across_apps_and_304(config: Config, store: Store) -> None:
    store.save_poll("pod", [entry(1)], {}, None)
    one = create_app(config, store).test_client().get("/all.atom")
    store.client.delete(*store.client.keys(keys.PREFIX + "rendered:*"))
    two = create_app(config, store).test_client().get("/all.atom")
    assert one.headers["ETag"] == two.headers["ETag"] and one.data == two.data
    again = (
        create_app(config, store)
        .test_client()
        .get("/all.atom", headers={"If-None-Match": one.headers["ETag"]})
    )
    assert again.status_code == 304
    assert one.headers["Last-Modified"] == "Fri, 01 Mar 2024 01:00:00 GMT"
    client = create_app(config, store).test_client()
    for tags in ("W/" + one.headers["ETag"], '"other", ' + one.headers["ETag"], "*"):
        assert client.get("/all.atom", headers={"If-None-Match": tags}).status_code == 304
    # If-None-Match decides when present, even when If-Modified-Since would say 304
    stale = client.get(
        "/all.atom",
        headers={"If-None-Match": '"other"', "If-Modified-Since": one.headers["Last-Modified"]},
    )
    assert stale.status_code == 200 and stale.data == one.data
    not_modified = client.get("/all.atom", headers={"If-None-Match": one.headers["ETag"]})
    assert not_modified.headers["ETag"] == one.headers["ETag"] and not not_modified.data


def test_a_process_serves_a_feed_from_memory_between_version_checks(
    config: Config, store: Store
) -> None:
    store.save_poll("pod", [entry(1)], {}, None)
    client = create_app(config, store, version_check=3600).test_client()
    first = client.get("/all.json")
    # New data in Redis: within the check interval this process still serves what it has,
    # without asking Redis at all (even a broken connection would not be noticed).
    store.save_poll("pod", [entry(1), entry(2)], {}, None)
    assert client.get("/all.json").data == first.data
    conditional = client.get("/all.json", headers={"If-None-Match": first.headers["ETag"]})
    assert conditional.status_code == 304
    fresh = create_app(config, store, version_check=0).test_client().get("/all.json")
    assert [i["title"] for i in fresh.get_json()["items"]] == ["第2集", "第1集"]
