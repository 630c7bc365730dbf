"""Helpers for the web tests: start `python -m aggregator web|run` as a user would, and follow
every link a page or feed prints."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

from lxml import etree

from tests.conftest import free_port

ATOM = "{http://www.w3.org/2005/Atom}"


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


Get = Callable[[str], Answer]


def http_get(url: str, headers: dict[str, str] | None = None) -> Answer:
    """GET over real HTTP; the path is sent exactly as written (urllib does not re-quote)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(
                response.status,
                response.headers.get("Content-Type", ""),
                bytes(response.read()),
                dict(response.headers.items()),
            )
    except urllib.error.HTTPError as err:
        return Answer(err.code, err.headers.get("Content-Type", ""), err.read(), dict(err.headers))


class _Page(HTMLParser):
    """The hrefs of <a> and <link>, and the text of <h1>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.h1 = ""
        self._in_h1 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("a", "link"):
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)
        self._in_h1 = self._in_h1 or tag == "h1"

    def handle_endtag(self, tag: str) -> None:
        if tag == "h1":
            self._in_h1 = False

    def handle_data(self, data: str) -> None:
        if self._in_h1:
            self.h1 += data


def page(body: bytes) -> _Page:
    parsed = _Page()
    parsed.feed(body.decode("utf-8"))
    return parsed


def feed_title_and_links(content_type: str, body: bytes) -> tuple[str, list[str]]:
    """A feed's title, and the links it prints about itself (self, alternate, paging)."""
    if content_type.startswith("application/feed+json"):
        data = json.loads(body)
        links = [data["home_page_url"], data["feed_url"]] + [i["id"] for i in data["items"]]
        return str(data["title"]), links
    root = etree.fromstring(body)
    if root.tag == f"{ATOM}feed":
        hrefs = [str(a.get("href")) for a in root.findall(f"{ATOM}link")]
        return str(root.findtext(f"{ATOM}title")), hrefs
    channel = root.find("channel")
    assert channel is not None
    hrefs = [str(a.get("href")) for a in channel.findall(f"{ATOM}link")]
    return str(channel.findtext("title")), [str(channel.findtext("link")), *hrefs]


def crawl(get: Get, start: str) -> dict[str, Answer]:
    """Every URL on `start`'s host reachable from it through the links of our pages and the
    self and page links of our feeds, with what it answered."""
    origin = urlsplit(start).netloc
    seen: dict[str, Answer] = {}
    queue = [start]
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        answer = seen[url] = get(url)
        if answer.status != 200:
            continue
        if answer.content_type.startswith("text/html"):
            found = page(answer.body).hrefs
        elif answer.content_type.startswith(
            ("application/atom", "application/rss", "application/feed")
        ):
            found = feed_title_and_links(answer.content_type, answer.body)[1]
        else:
            found = []
        for href in found:
            target = urldefrag(urljoin(url, href)).url
            if urlsplit(target).netloc == origin and target not in seen:
                queue.append(target)
    return seen


def wait_for(base: str, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=2).read()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{process.args!r} did not start") from None
            time.sleep(0.05)


@contextmanager
def serving(command: str, env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    """`python -m aggregator <command> --port P` running, its output in `log`; yields the
    base URL and the process id."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aggregator", command, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(base, process)
            yield base, process.pid
        finally:
            process.terminate()
            process.wait(20)


def eventually(check: Callable[[], bool], seconds: float, step: float = 0.1) -> bool:
    """True as soon as `check()` is, False when `seconds` passed without."""
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
