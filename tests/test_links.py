"""Links where it runs: without settings.public_url, self and page links come from the request's
own scheme, host and port (X-Forwarded-* only from settings.trusted_proxies); with it, it wins.
Rendered feeds are cached per base URL, in this process and in Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from lxml import etree

from aggregator import __version__, opml
from aggregator.cli import main
from aggregator.config import Config
from aggregator.models import Entry
from aggregator.store import Store
from aggregator.web import create_app
from tests.conftest import ConfigWriter
from tests.weblinks import ATOM, page

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "news.example.org"}


def entry(n: int) -> Entry:
    return Entry(
        id=f"{n:016x}",
        source="tech",
        category="tech",
        tags=("python",),
        title=f"Post {n}",
        link=f"https://tech.example.org/{n}.html",
        content=f"<p>body {n}</p>",
        summary="",
        first_seen=datetime(2024, 1, 1, tzinfo=UTC),
        published=datetime(2024, 3, 1, n, tzinfo=UTC),
    )


def configure(write_config: ConfigWriter, **settings: Any) -> Config:
    return write_config.write(
        [{"name": "tech", "url": "https://tech.example.org/rss.xml", "tags": ["python"]}],
        settings=settings,
    )


def atom_links(app: Flask, url: str, **kwargs: Any) -> dict[str, str]:
    response = app.test_client().get(url, **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    root = etree.fromstring(response.data)
    links = {str(a.get("rel")): str(a.get("href")) for a in root.findall(f"{ATOM}link")}
    links["id"] = str(root.findtext(f"{ATOM}id"))
    links["entry"] = str(root.findtext(f"{ATOM}entry/{ATOM}id"))
    return links


@pytest.fixture
def filled(store: Store) -> Store:
    store.save_poll("tech", [entry(1)], {}, None)
    return store


def test_links_follow_the_request_when_public_url_is_unset(
    write_config: ConfigWriter, filled: Store
) -> None:
    config = configure(write_config)
    assert config.settings.public_url is None
    app = create_app(config, filled)
    links = atom_links(app, "http://127.0.0.1:8765/tags/python.atom")
    assert links["self"] == "http://127.0.0.1:8765/tags/python.atom"
    assert links["alternate"] == "http://127.0.0.1:8765/tags/python"
    assert links["entry"] == "http://127.0.0.1:8765/entries/0000000000000001"
    feed = app.test_client().get("https://feeds.example.net/all.json").get_json()
    assert feed["feed_url"] == "https://feeds.example.net/all.json"
    assert feed["home_page_url"] == "https://feeds.example.net/"
    index = page(app.test_client().get("http://[::1]:9000/").data)
    assert "http://[::1]:9000/tags/python" in index.hrefs
    assert "http://[::1]:9000/categories/tech.rss" in index.hrefs


def test_each_base_url_has_its_own_cached_rendering(
    write_config: ConfigWriter, filled: Store
) -> None:
    config = configure(write_config)
    one = create_app(config, filled)
    assert atom_links(one, "http://a.test/all.atom")["self"] == "http://a.test/all.atom"
    # the same process, the memo of a.test in memory: b.test still gets its own links
    assert atom_links(one, "http://b.test/all.atom")["self"] == "http://b.test/all.atom"
    # another process, a.test's and b.test's renderings in Redis: c.test gets its own
    two = create_app(config, filled)
    assert atom_links(two, "http://c.test:81/all.atom")["self"] == "http://c.test:81/all.atom"
    assert atom_links(two, "http://a.test/all.atom")["self"] == "http://a.test/all.atom"


def test_forwarded_headers_only_from_a_trusted_proxy(
    write_config: ConfigWriter, filled: Store
) -> None:
    config = configure(write_config, trusted_proxies=["10.0.0.0/8", "::1"])
    app = create_app(config, filled)

    def self_link(remote: str) -> str:
        return atom_links(
            app,
            "http://10.1.2.3:8000/all.atom",
            headers=FORWARDED,
            environ_base={"REMOTE_ADDR": remote},
        )["self"]

    assert self_link("10.9.8.7") == "https://news.example.org/all.atom"
    assert self_link("::ffff:10.9.8.7") == "https://news.example.org/all.atom"
    assert self_link("::1") == "https://news.example.org/all.atom"
    assert self_link("192.0.2.1") == "http://10.1.2.3:8000/all.atom"
    ported = atom_links(
        app,
        "http://10.1.2.3:8000/all.atom",
        headers={**FORWARDED, "X-Forwarded-Port": "8443"},
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
    )
    assert ported["self"] == "https://news.example.org:8443/all.atom"
    assert self_link("") == "http://10.1.2.3:8000/all.atom"
    # not configured: nobody is believed, loopback included
    plain = create_app(configure(write_config), filled)
    fooled = atom_links(plain, "http://127.0.0.1:8000/all.atom", headers=FORWARDED, environ_base={})
    assert fooled["self"] == "http://127.0.0.1:8000/all.atom"


def test_a_forwarded_scheme_that_is_not_http_is_not_used(
    write_config: ConfigWriter, filled: Store
) -> None:
    app = create_app(configure(write_config, trusted_proxies=["127.0.0.1"]), filled)
    links = atom_links(
        app, "http://127.0.0.1:8000/all.atom", headers={"X-Forwarded-Proto": "javascript"}
    )
    assert links["self"] == "http://127.0.0.1:8000/all.atom"


def test_a_host_header_no_host_has_falls_back_to_the_server_address(
    write_config: ConfigWriter, filled: Store
) -> None:
    app = create_app(configure(write_config), filled)
    links = atom_links(app, "/all.atom", headers={"Host": 'evil"><x'})
    assert links["self"] == "http://localhost/all.atom"


def test_public_url_wins(write_config: ConfigWriter, filled: Store) -> None:
    config = configure(
        write_config, public_url="https://feeds.example.com/news/", trusted_proxies=["127.0.0.1"]
    )
    app = create_app(config, filled)
    links = atom_links(app, "http://127.0.0.1:8765/tags/python.atom", headers=FORWARDED)
    assert links["self"] == "https://feeds.example.com/news/tags/python.atom"
    assert links["alternate"] == "https://feeds.example.com/news/tags/python"
    index = page(app.test_client().get("http://127.0.0.1:8765/").data)
    assert "https://feeds.example.com/news/tags/python" in index.hrefs


def test_opml_export_and_user_agent_without_public_url(
    write_config: ConfigWriter, filled: Store, tmp_path: Path
) -> None:
    config = configure(write_config)
    assert config.settings.agent == f"aggregator/{__version__}"
    # /sources.opml names the site it was asked from; the command line knows none
    served = create_app(config, filled).test_client().get("http://127.0.0.1:8765/sources.opml")
    title = etree.fromstring(served.data).findtext("head/title")
    assert title == "Sources of http://127.0.0.1:8765/"
    assert etree.fromstring(opml.render(config)).findtext("head/title") == "Sources"
    # Jekyll posts link back from the root of the site that serves them
    result = CliRunner().invoke(main, ["export", "jekyll", "--out", str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    (post,) = (tmp_path / "site" / "_posts").iterdir()
    assert post.read_text(encoding="utf-8").endswith("[返回tech](/categories/tech)｜[返回首页](/)")


def test_json_feed_links_are_the_request_base_too(
    write_config: ConfigWriter, filled: Store
) -> None:
    app = create_app(configure(write_config), filled)
    body = app.test_client().get("http://localhost:8001/tags/python.json").data
    item = json.loads(body)["items"][0]
    assert item["id"] == "http://localhost:8001/entries/0000000000000001"
