"""config → `aggregator poll` → HTTP GET of the merged feeds → parse them back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import feedparser
import jsonschema
import pytest
from lxml import etree

from tests.conftest import SCHEMAS, ConfigWriter, FeedServer, free_port

TAG = "经济日报新闻"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture
def site(
    write_config: ConfigWriter, feed_server: FeedServer, environ: dict[str, str]
) -> dict[str, str]:
    feed_server.copy("gbk.xml", "jingji.xml")
    write_config.write(
        [
            {
                "name": "jingjiribao",
                "url": feed_server.url("jingji.xml"),
                "tags": [TAG, "财经"],
                "title": "经济日报",
            },
            {"name": "tech", "url": feed_server.url("rss2.xml"), "category": "tech", "tags": [TAG]},
            {"name": "science", "url": feed_server.url("atom.xml"), "tags": ["science"]},
            {"name": "rdf", "url": feed_server.url("rss1.rdf"), "tags": ["science"]},
            {"name": "jsonfeed", "url": feed_server.url("feed.json"), "tags": [TAG]},
        ],
        settings={"public_url": "http://aggregator.test"},
        tags={TAG: {"title": TAG, "description": "经济日报每日要闻"}},
    )
    env = dict(environ)
    env["AGGREGATOR_CONFIG"] = str(write_config.path)
    env["AGGREGATOR_REDIS_URL"] = write_config.redis_url
    return env


@pytest.fixture
def web(site: dict[str, str]) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "web", "--port", str(port)],
        env=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=2).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("aggregator web did not start") from None
            time.sleep(0.05)
    yield base
    process.terminate()
    process.wait(10)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def test_poll_then_merged_tag_feed_in_three_formats(site: dict[str, str], web: str) -> None:
    first = cli("poll", env=site)
    assert first.returncode == 0, first.stdout + first.stderr
    # what the summary calls new is what the feeds now serve (all.atom: 14 entries)
    assert "5 ok, 0 failed, 14 new entries, 0 merged, 0 filtered, 0 cut by max_entries" in (
        first.stdout
    )
    status = cli("status", env=site)
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in status.stdout.splitlines()]
    rows = {row[0]: row for row in cells if row}
    # source, enabled, last poll, status, entries, stored: the 2022 article is kept
    assert [rows["jingjiribao"][i] for i in (1, 3, 4, 5)] == ["yes", "200", "3", "3"], rows
    assert [rows["rdf"][i] for i in (3, 4, 5)] == ["200", "2", "2"], rows

    path = f"/tags/{quote(TAG)}"
    atom = get(web + path + ".atom")
    rss = get(web + path + ".rss")
    jsonfeed = get(web + path + ".json")

    # gbk.xml has 3 items, rss2.xml 3, feed.json 3: 9 entries in the tag, each once.
    for body in (atom, rss):
        parsed = feedparser.parse(body)
        assert not parsed.bozo, parsed.get("bozo_exception")
        titles = [e.title for e in parsed.entries]
        assert len(titles) == 9 == len(set(titles))
        assert "一季度城镇新增就业稳步增长" in titles
        dates = [e.published_parsed or e.updated_parsed for e in parsed.entries]
        assert dates == sorted(dates, reverse=True), "newest first"
        for entry in parsed.entries:
            text = entry.get("content", [{"value": ""}])[0]["value"] + entry.get("summary", "")
            assert "<script" not in text and "onclick" not in text and "alert(" not in text
    feed = json.loads(jsonfeed)
    assert len(feed["items"]) == 9
    assert "<script" not in jsonfeed.decode("utf-8")

    # the +0800 of the GBK source is kept, not converted to UTC
    assert b"2022-04-05T05:50:27+08:00" in atom
    assert b"Tue, 05 Apr 2022 05:50:27 +0800" in rss
    gbk_item = next(i for i in feed["items"] if i["title"] == "一季度城镇新增就业稳步增长")
    assert gbk_item["date_published"] == "2022-04-05T05:50:27+08:00"
    offset = datetime.fromisoformat(gbk_item["date_published"]).utcoffset()
    assert offset is not None and offset.total_seconds() == 8 * 3600
    assert "湖南：多渠道拓宽就业岗位" in gbk_item["content_html"]

    # the outputs are valid for their formats
    rng = etree.RelaxNG(etree.parse(str(SCHEMAS / "atom.rng")))
    assert rng.validate(etree.fromstring(atom)), rng.error_log
    schema = json.loads((SCHEMAS / "jsonfeed-1.1.schema.json").read_text())
    jsonschema.validate(feed, schema)

    # a second poll adds nothing, and the feed is byte-identical
    second = cli("poll", env=site)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 new entries" in second.stdout
    assert get(web + path + ".atom") == atom


def test_all_feed_and_unknown_tag(site: dict[str, str], web: str) -> None:
    assert cli("poll", env=site).returncode == 0
    parsed = feedparser.parse(get(web + "/all.atom"))
    assert len(parsed.entries) == 3 + 3 + 3 + 2 + 3
    with pytest.raises(urllib.error.HTTPError) as err:
        get(web + "/tags/" + quote("没有这个标签") + ".atom")
    assert err.value.code == 404
    assert "没有这个标签" in err.value.read().decode("utf-8")


def test_check_lists_every_problem(tmp_path: Path, environ: dict[str, str]) -> None:
    bad = tmp_path / "feeds.yaml"
    bad.write_text(
        "settings: {default_interval: soon, colour: red}\n"
        "sources:\n"
        "  - {name: Bad Name, url: 'https://a.example/'}\n"
        "  - {name: ok, url: 'ftp://b.example/'}\n"
        "  - {name: ok, url: 'https://c.example/'}\n",
        encoding="utf-8",
    )
    env = dict(environ, AGGREGATOR_CONFIG=str(bad))
    result = cli("check", env=env)
    assert result.returncode == 1
    for problem in (
        "settings.default_interval: not a duration",
        "settings.colour: unknown key",
        "sources[0].name:",
        "sources[1].url: not an http(s) URL",
        "sources[2].name: duplicate name 'ok'",
    ):
        assert problem in result.stderr, result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(
        "sources: [{name: a, url: 'https://a.example/', tags: [财经]}]\n", encoding="utf-8"
    )
    result = cli("check", env=dict(environ, AGGREGATOR_CONFIG=str(good)))
    assert result.returncode == 0, result.stderr
    assert "OK, 1 sources" in result.stdout
