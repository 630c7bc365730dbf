"""The pages in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by Selenium, against the web app served by a real WSGI server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import feedparser
import jsonschema
import pytest
from lxml import etree
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from waitress.server import create_server

from aggregator.config import Config
from aggregator.models import Entry
from aggregator.store import Store
from aggregator.web import create_app
from tests.conftest import SCHEMAS, ConfigWriter, free_port

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium and chromium-driver (see .ci/run)")
    pytest.skip("no chromium/chromedriver here", allow_module_level=True)

CST = timezone(timedelta(hours=8))
TAGS = ["经济日报新闻", "财经", "tech news"]
SEED_TITLE = "从面对面到屏对屏——各地稳就业举措亮点纷呈"


@pytest.fixture
def site(write_config: ConfigWriter, store: Store) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config: Config = write_config.write(
        [
            {"name": "jingjiribao", "url": "https://finews.example.cn/rss.xml", "tags": TAGS[:2]},
            {
                "name": "tech",
                "url": "https://tech.example/rss.xml",
                "category": "tech",
                "tags": [TAGS[2]],
            },
        ],
        settings={"public_url": base},
        categories={"jingjiribao": {"title": "经济日报新闻"}},
        tags={"经济日报新闻": {"title": "经济日报新闻", "description": "经济日报每日要闻"}},
    )
    store.save_poll(
        "jingjiribao",
        [
            Entry(
                id="3d1692eb5dbbc894",
                source="jingjiribao",
                category="jingjiribao",
                tags=tuple(TAGS[:2]),
                title=SEED_TITLE,
                link="http://finews.zning.xyz/html_News/NewsShare.html?infoCode=NW1",
                content="<p>稳就业就是保民生。</p><p><strong>湖南：“春风”送岗暖民心</strong></p>",
                summary="",
                first_seen=datetime(2022, 4, 5, tzinfo=UTC),
                published=datetime(2022, 4, 5, 5, 50, 27, tzinfo=CST),
                source_title="经济日报",
            )
        ],
        {},
        None,
    )
    server: Any = create_server(create_app(config, store), host="127.0.0.1", port=port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield base
    server.close()
    thread.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,1200",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def test_index_lists_every_tag_and_its_feeds_are_valid(
    site: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(site + "/")
    shown = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "ul.feeds li > a")]
    for tag in TAGS:
        assert tag in shown
    assert "经济日报每日要闻" in browser.page_source
    browser.save_screenshot(str(tmp_path / "index.png"))
    if os.environ.get("SCREENSHOTS"):
        browser.save_screenshot(os.environ["SCREENSHOTS"] + "/index.png")

    links = browser.find_elements(By.CSS_SELECTOR, "head link[rel=alternate]")
    assert len(links) == 3 * (1 + len(TAGS) + 2)  # all, every tag, every category
    rng = etree.RelaxNG(etree.parse(str(SCHEMAS / "atom.rng")))
    schema = json.loads((SCHEMAS / "jsonfeed-1.1.schema.json").read_text())
    for link in links:
        href, kind = link.get_attribute("href"), link.get_attribute("type")
        assert href and href.startswith(site)
        body = urllib.request.urlopen(href, timeout=10).read()
        if kind == "application/atom+xml":
            assert rng.validate(etree.fromstring(body)), (href, rng.error_log)
        elif kind == "application/feed+json":
            jsonschema.validate(json.loads(body), schema)
        else:
            assert kind == "application/rss+xml"
            parsed = feedparser.parse(body)
            assert not parsed.bozo and parsed.version == "rss20", href


def test_entry_page_shows_chinese_text_and_back_links(site: str, browser: webdriver.Chrome) -> None:
    browser.get(site + "/tags/%E8%B4%A2%E7%BB%8F")
    browser.find_element(By.LINK_TEXT, SEED_TITLE).click()
    assert browser.current_url == site + "/entries/3d1692eb5dbbc894"
    assert browser.find_element(By.TAG_NAME, "h1").text == SEED_TITLE
    assert "2022-04-05 05:50:27 +0800" in browser.find_element(By.CSS_SELECTOR, ".meta").text
    assert "湖南：“春风”送岗暖民心" in browser.find_element(By.CSS_SELECTOR, ".content").text
    if os.environ.get("SCREENSHOTS"):
        browser.save_screenshot(os.environ["SCREENSHOTS"] + "/entry.png")
    back = browser.find_elements(By.CSS_SELECTOR, "p.back a")
    assert [a.text for a in back] == ["返回经济日报新闻", "返回首页"]
    back[0].click()
    assert browser.current_url == site + "/categories/jingjiribao"
    assert SEED_TITLE in browser.page_source
