"""Every tag and category name feeds.yaml accepts has working feeds and pages, and every link
our pages and feeds print answers 200: dots, slashes, `%`, `#`, `?`, emoji, a name ending in
`.atom`, in-process and through a real `python -m aggregator web`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from lxml import etree

from aggregator import urls
from aggregator.config import Config
from aggregator.models import Entry
from aggregator.store import Store
from aggregator.web import create_app
from tests.conftest import ConfigWriter
from tests.weblinks import ATOM, Answer, crawl, feed_title_and_links, http_get, page, serving

NAMES = [
    "node.js",
    "3.15晚会",
    "经济日报新闻",
    "a b",
    "a/b",
    "/lead",
    "trail/",
    "a//b",
    "100%",
    "%2E",
    "50%25",
    "C#",
    "why?",
    "q?x=1&y=2",
    "hash#tag",
    "emoji 🔭",
    "x.atom",
    "x.rss.json",
    ".hidden",
    "trail.",
    "a..b",
    "...",
    "+plus+",
    "semi;colon",
    "<b>&\"'",
    "back\\slash",
    "~tilde~",
    "مرحبا",
    "all",
    "entries",
]
FOLDERS = {"tag": "tags", "category": "categories"}
FORMATS = ("atom", "rss", "json")


def entry_of(name: str, n: int = 1) -> Entry:
    return Entry(
        id=f"{n:016x}",
        source=f"src{n - 1}",
        category=name,
        tags=(name,),
        title=f"entry {n}",
        link=f"https://src.example/{n}.html",
        content=f"<p>body {n}</p>",
        summary="",
        first_seen=datetime(2024, 1, 1, tzinfo=UTC),
        published=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=n),
    )


def configure(write_config: ConfigWriter, names: list[str], **settings: Any) -> Config:
    sources = [
        {"name": f"src{i}", "url": f"https://src{i}.example/rss.xml", "category": n, "tags": [n]}
        for i, n in enumerate(names)
    ]
    return write_config.write(sources, settings=settings)


def client_get(client: FlaskClient, raw: bool) -> Any:
    """GET through the Werkzeug test client, with or without the raw path (REQUEST_URI and
    RAW_URI) a server would give."""
    hide = {} if raw else {"REQUEST_URI": "", "RAW_URI": ""}

    def get(url: str) -> Answer:
        response = client.get(url, environ_overrides=hide)
        return Answer(
            response.status_code,
            response.content_type or "",
            response.data,
            dict(response.headers),
        )

    return get


def check_name(answers: dict[str, Answer], base: str, name: str) -> None:
    """The index printed this name's page and feed links, and each shows this name."""
    for folder in FOLDERS.values():
        page_url = base + urls.name_path(folder, name)
        assert page_url in answers, (name, page_url, sorted(answers))
        assert page(answers[page_url].body).h1 == name
        for fmt in FORMATS:
            feed = answers[page_url + "." + fmt]
            title, links = feed_title_and_links(feed.content_type, feed.body)
            assert title == name, (page_url, fmt)
            assert page_url + "." + fmt in links  # its self link is where it was found


def assert_all_200(answers: dict[str, Answer]) -> None:
    bad = {url: a.status for url, a in answers.items() if a.status != 200}
    assert not bad, bad


@pytest.mark.parametrize("raw", [True, False], ids=["raw-path", "decoded-path-only"])
@pytest.mark.parametrize("name", NAMES)
def test_every_link_of_an_awkward_name_answers(
    write_config: ConfigWriter, store: Store, name: str, raw: bool
) -> None:
    config = configure(write_config, [name])
    store.save_poll("src0", [entry_of(name)], {}, None)
    client = create_app(config, store, version_check=0).test_client()
    answers = crawl(client_get(client, raw), "http://localhost/")
    assert_all_200(answers)
    check_name(answers, "http://localhost", name)
    assert "http://localhost/entries/0000000000000001" in answers


def test_a_name_and_the_same_name_with_a_format_are_told_apart(
    write_config: ConfigWriter, store: Store
) -> None:
    names = ["x", "x.atom", "x.atom.atom", "node", "node.js"]
    config = configure(write_config, names)
    client = create_app(config, store, version_check=0).test_client()
    answers = crawl(client_get(client, True), "http://localhost/")
    assert_all_200(answers)
    for name in names:
        check_name(answers, "http://localhost", name)


def typed(client: FlaskClient, path: str) -> tuple[int, str]:
    """What a path typed by hand (literal dots) shows: the page's h1 or the feed's title."""
    response = client.get(path)
    if response.status_code != 200:
        return response.status_code, response.get_data(as_text=True)
    if response.content_type.startswith("text/html"):
        return 200, "page " + page(response.data).h1
    if response.content_type.startswith("application/feed+json"):
        return 200, "json " + json.loads(response.data)["title"]
    root = etree.fromstring(response.data)
    kind = "atom" if root.tag == f"{ATOM}feed" else "rss"
    title = root.findtext(f"{ATOM}title") or root.findtext("channel/title")
    return 200, f"{kind} {title}"


def test_paths_typed_with_literal_dots(write_config: ConfigWriter, store: Store) -> None:
    config = configure(write_config, ["node.js", "3.15晚会", "x.atom", "a/b"])
    client = create_app(config, store, version_check=0).test_client()
    assert typed(client, "/tags/node.js.atom") == (200, "atom node.js")
    assert typed(client, "/tags/node.js.rss") == (200, "rss node.js")
    assert typed(client, "/categories/node.js.json") == (200, "json node.js")
    assert typed(client, "/tags/node.js") == (200, "page node.js")
    assert typed(client, "/tags/" + quote("3.15晚会") + ".json") == (200, "json 3.15晚会")
    assert typed(client, "/tags/" + quote("3.15晚会")) == (200, "page 3.15晚会")
    # no tag "x": the page of "x.atom" rather than a 404
    assert typed(client, "/tags/x.atom") == (200, "page x.atom")
    assert typed(client, "/tags/x.atom.atom") == (200, "atom x.atom")
    assert typed(client, "/tags/a/b.rss") == (200, "rss a/b")
    status, reason = typed(client, "/tags/node.js.csv")
    assert status == 404 and "unknown feed format 'csv'" in reason
    status, reason = typed(client, "/tags/node.jsx")
    assert status == 404 and "no tag named 'node.jsx'" in reason


@pytest.fixture
def web_names(
    write_config: ConfigWriter, store: Store, environ: dict[str, str], tmp_path: Path
) -> Iterator[str]:
    configure(write_config, NAMES)
    for i, name in enumerate(NAMES):
        store.save_poll(f"src{i}", [entry_of(name, i + 1)], {}, None)
    env = {
        **environ,
        "AGGREGATOR_CONFIG": str(write_config.path),
        "AGGREGATOR_REDIS_URL": write_config.redis_url,
    }
    with serving("web", env, tmp_path / "web.log") as (base, _):
        yield base


def test_every_link_answers_through_aggregator_web(web_names: str) -> None:
    answers = crawl(http_get, web_names + "/")
    assert_all_200(answers)
    for name in NAMES:
        check_name(answers, web_names, name)
    entries = [u for u in answers if "/entries/" in u]
    assert len(entries) == len(NAMES)
