"""`aggregator reload` (and SIGHUP) reaches every web process: `aggregator web`, the web half of
`aggregator run`, gunicorn workers. Each checks the reload counter at most about once a second
and re-reads feeds.yaml; a bad file is refused and the running config kept."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from lxml import etree

from aggregator import config as config_module
from aggregator.store import Store
from aggregator.web import create_app
from tests.conftest import ConfigWriter, FeedServer, free_port
from tests.readme_support import gunicorn_command
from tests.weblinks import ATOM, eventually, http_get, page, serving, wait_for

NEW_TAG = "新标签"
NEW_TITLE = "新标签的标题"


def first(write_config: ConfigWriter, url: str, **extra: Any) -> None:
    tags = ["财经", "x", "x.atom"]
    write_config.write([{"name": "one", "url": url, "tags": tags, "interval": "10m"}], **extra)


def second(write_config: ConfigWriter, url: str) -> None:
    """A new source with a new tag that has a title, and a shorter interval for the first."""
    write_config.write(
        [
            {"name": "one", "url": url, "tags": ["财经"], "interval": "5m"},
            {"name": "two", "url": url + "?two", "tags": [NEW_TAG]},
        ],
        tags={NEW_TAG: {"title": NEW_TITLE}},
    )


def reloaded(base: str) -> Callable[[], bool]:
    """True once every part of the second config shows at `base`."""

    def check() -> bool:
        index = http_get(base + "/").body.decode("utf-8")
        feed = http_get(base + "/tags/" + quote(NEW_TAG) + ".atom")
        sources = http_get(base + "/sources.opml").body.decode("utf-8")
        cache = http_get(base + "/tags/" + quote("财经") + ".atom").headers["Cache-Control"]
        return (
            NEW_TITLE in index
            and feed.status == 200
            and etree.fromstring(feed.body).findtext(f"{ATOM}title") == NEW_TITLE
            and "?two" in sources
            and cache == "public, max-age=300"
        )

    return check


def started_as_first(base: str) -> None:
    assert not reloaded(base)()
    assert http_get(base + "/tags/" + quote(NEW_TAG) + ".atom").status == 404
    cache = http_get(base + "/tags/" + quote("财经") + ".atom").headers["Cache-Control"]
    assert cache == "public, max-age=600"


def env_of(write_config: ConfigWriter, environ: dict[str, str]) -> dict[str, str]:
    return {
        **environ,
        "AGGREGATOR_CONFIG": str(write_config.path),
        "AGGREGATOR_REDIS_URL": write_config.redis_url,
    }


def cli_reload(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aggregator", "reload"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_reload_reaches_aggregator_web(
    write_config: ConfigWriter, environ: dict[str, str], tmp_path: Path
) -> None:
    url = "https://one.example/rss.xml"
    first(write_config, url)
    env = env_of(write_config, environ)
    with serving("web", env, tmp_path / "web.log") as (base, _):
        started_as_first(base)
        second(write_config, url)
        time.sleep(1.5)  # no reload asked: the running config stays
        assert not reloaded(base)()
        cli_reload(env)
        assert eventually(reloaded(base), 2.5)
    assert "reloaded" in (tmp_path / "web.log").read_text(encoding="utf-8")


def test_sighup_reloads_aggregator_web_and_a_bad_file_is_refused(
    write_config: ConfigWriter, environ: dict[str, str], tmp_path: Path
) -> None:
    url = "https://one.example/rss.xml"
    first(write_config, url)
    env = env_of(write_config, environ)
    log = tmp_path / "web.log"
    with serving("web", env, log) as (base, pid):
        started_as_first(base)
        # `aggregator reload` checks the file first; a signal does not
        write_config.path.write_text("sources: [{name: Bad Name, url: nope}]\n", "utf-8")
        os.kill(pid, signal.SIGHUP)
        # the next request finds the reload asked for
        assert eventually(
            lambda: bool(http_get(base + "/")) and "reload refused" in log.read_text("utf-8"), 3
        )
        started_as_first(base)  # still serving the first config
        second(write_config, url)
        os.kill(pid, signal.SIGHUP)
        assert eventually(reloaded(base), 2.5)


def test_reload_reaches_the_web_half_of_aggregator_run_with_links_where_it_runs(
    write_config: ConfigWriter, feed_server: FeedServer, environ: dict[str, str], tmp_path: Path
) -> None:
    url = feed_server.url("rss2.xml")
    first(write_config, url)  # no public_url
    env = env_of(write_config, environ)
    with serving("run", env, tmp_path / "run.log") as (base, _):
        assert eventually(lambda: b"<entry>" in http_get(base + "/all.atom").body, 10)
        root = etree.fromstring(http_get(base + "/all.atom").body)
        links = {a.get("rel"): a.get("href") for a in root.findall(f"{ATOM}link")}
        assert links["self"] == base + "/all.atom"
        assert links["alternate"] == base + "/"
        assert str(root.findtext(f"{ATOM}entry/{ATOM}id")).startswith(base + "/entries/")
        started_as_first(base)
        second(write_config, url)
        cli_reload(env)
        assert eventually(reloaded(base), 2.5)


def test_reload_reaches_every_gunicorn_worker(
    write_config: ConfigWriter, environ: dict[str, str], tmp_path: Path
) -> None:
    url = "https://one.example/rss.xml"
    first(write_config, url)
    env = env_of(write_config, environ)
    port = free_port()
    command = gunicorn_command(port)
    with (tmp_path / "gunicorn.log").open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(base, process)
            started_as_first(base)
            # gunicorn gives the path as sent (RAW_URI): the page of "x.atom", not the feed of "x"
            answer = http_get(base + "/tags/x%2Eatom")
            assert answer.content_type.startswith("text/html") and page(answer.body).h1 == "x.atom"
            assert http_get(base + "/tags/x.atom").content_type.startswith("application/atom")
            second(write_config, url)
            cli_reload(env)
            time.sleep(2.5)
            # whichever worker answers, it serves the new config
            for _ in range(12):
                assert reloaded(base)()
        finally:
            process.terminate()
            process.wait(20)


def test_in_process_reload_and_refusal(
    write_config: ConfigWriter, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    url = "https://one.example/rss.xml"
    first(write_config, url)
    app = create_app(load_config=config_module.from_environ, store=store, reload_check=0)
    client = app.test_client()
    assert NEW_TITLE not in client.get("/").get_data(as_text=True)
    second(write_config, url)
    assert NEW_TITLE not in client.get("/").get_data(as_text=True)  # nobody asked
    store.request_reload()
    assert NEW_TITLE in client.get("/").get_data(as_text=True)
    write_config.path.write_text("settings: {timeout: forever}\n", encoding="utf-8")
    store.request_reload()
    with caplog.at_level(logging.ERROR, logger="aggregator.web"):
        assert NEW_TITLE in client.get("/").get_data(as_text=True)
    assert "reload refused, keeping the running configuration" in caplog.text
    assert "settings.timeout" in caplog.text
