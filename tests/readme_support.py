"""What tests/test_readme*.py share: a site run the way its README says (a feeds.yaml of our
own with the shipped defaults, the CLI and the web app as subprocesses), and fixture feeds
filled in at test time from the templates under tests/data/readme/, so that dates from years
ago sit beside dates from the last hours."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message
from email.utils import format_datetime
from pathlib import Path
from string import Template
from typing import Any
from xml.sax.saxutils import escape

import feedparser
import yaml

from tests.conftest import FeedServer, Route, free_port

TEMPLATES = Path(__file__).parent / "data" / "readme"
CHINA = timezone(timedelta(hours=8), "CST")
STARTUP_SECONDS = 30.0
_LOGS: dict[int, Path] = {}  # pid → the log file of a process `Site` started


# --- fixture feeds -------------------------------------------------------------------------


# "Now" for the fixtures' recent dates, fixed for the whole run: a feed served twice is the
# same feed, not one whose dates moved by the seconds between.
STARTED = datetime.now(UTC).replace(microsecond=0)


def hours_ago(hours: float, tz: timezone = UTC) -> datetime:
    """A date in the last hours, whole seconds (feeds carry no fractions)."""
    return (STARTED - timedelta(hours=hours)).astimezone(tz)


def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Item:
    """One fixture entry. `guid` defaults to the link; `date` keeps its own UTC offset."""

    title: str
    link: str
    date: datetime
    guid: str = ""
    description: str = ""
    categories: tuple[str, ...] = ()
    enclosure: tuple[str, str, int] | None = None
    raw_date: str = ""  # written as is instead of `date` (Chinese forms, zone names)


def rss(
    items: Sequence[Item],
    *,
    title: str = "Example News",
    link: str = "https://news.example.org/",
    description: str = "",
    language: str = "en",
    encoding: str = "utf-8",
    ttl: int | None = None,
) -> bytes:
    """An RSS 2.0 document in `encoding` (gbk for the Chinese sources, as they send it)."""
    item_template = _template("rss-item.xml")
    parts = []
    for item in items:
        extra = "".join(f"\n      <category>{escape(c)}</category>" for c in item.categories)
        if item.enclosure:
            url, kind, length = item.enclosure
            extra += (
                f'\n      <enclosure url="{escape(url)}" type="{escape(kind)}" length="{length}"/>'
            )
        parts.append(
            item_template.substitute(
                title=escape(item.title),
                link=escape(item.link),
                guid=escape(item.guid or item.link),
                date=escape(item.raw_date or format_datetime(item.date)),
                extra=extra,
                description=escape(item.description or f"<p>{item.title}</p>"),
            )
        )
    text = _template("rss.xml").substitute(
        encoding=encoding,
        title=escape(title),
        link=escape(link),
        description=escape(description or title),
        language=language,
        channel_extra=f"\n    <ttl>{ttl}</ttl>" if ttl else "",
        items="".join(parts),
    )
    return text.encode(encoding)


def atom(
    items: Sequence[Item],
    *,
    title: str = "Example Atom",
    link: str = "https://atom.example.org/",
    language: str = "en",
    base: str = "",
) -> bytes:
    """An Atom 1.0 document; `base` sets xml:base, against which relative links resolve."""
    entry_template = _template("atom-entry.xml")
    entries = "".join(
        entry_template.substitute(
            id=escape(item.guid or item.link),
            title=escape(item.title),
            link=escape(item.link),
            date=item.date.isoformat(),
            content=escape(item.description or f"<p>{item.title}</p>"),
        )
        for item in items
    )
    newest = max((i.date for i in items), default=datetime(2020, 1, 1, tzinfo=UTC))
    text = _template("atom.xml").substitute(
        language=language,
        base=f' xml:base="{escape(base)}"' if base else "",
        title=escape(title),
        link=escape(link),
        id=escape(link),
        updated=newest.isoformat(),
        author="Example Author",
        entries=entries,
    )
    return text.encode("utf-8")


# The two sources most tests start from: a Chinese one sent as GBK with +0800 dates, and an
# English one, each with entries from years ago and from the last hours.
JINGJI_OLD = (
    Item(
        "2017年全国就业形势总体稳定",
        "https://finews.example.cn/html_News/2017/1203.html",
        datetime(2017, 12, 3, 9, 30, 5, tzinfo=CHINA),
        description="<p>2017年城镇新增就业人数超过预期。</p>",
    ),
    Item(
        "一季度城镇新增就业稳步增长",
        "https://finews.example.cn/html_News/2022/0405.html",
        datetime(2022, 4, 5, 5, 50, 27, tzinfo=CHINA),
        description="<p>各地围绕稳就业出台多项措施。</p><p><strong>湖南：多渠道拓宽就业岗位</strong></p>",
        categories=("财经",),
    ),
)


def jingji_items() -> list[Item]:
    recent = [
        Item(
            "直播带岗助力稳就业",
            "https://finews.example.cn/html_News/today/1.html",
            hours_ago(1, CHINA),
            description="<p>多地开展直播带岗活动，帮助求职者找到岗位。</p>",
        ),
        Item(
            "外贸出口保持韧性 多地稳订单拓市场",
            "https://finews.example.cn/html_News/today/2.html",
            hours_ago(3, CHINA),
            description="<p>出口规模保持韧性。</p><script>alert('x')</script>",
        ),
    ]
    return [*recent, *JINGJI_OLD]


def jingji_feed(items: Sequence[Item] | None = None) -> bytes:
    return rss(
        jingji_items() if items is None else items,
        title="经济日报新闻",
        link="https://finews.example.cn/category/jingjiribao.html",
        description="转载经济日报的财经新闻",
        language="zh-cn",
        encoding="gbk",
    )


def tech_items() -> list[Item]:
    return [
        Item(
            "Release notes for this week",
            "https://tech.example.org/posts/this-week",
            hours_ago(2, timezone(timedelta(hours=-5))),
        ),
        Item(
            "Podcast: building static sites",
            "https://tech.example.org/posts/podcast",
            datetime(2019, 6, 1, 10, 0, tzinfo=UTC),
            enclosure=("https://tech.example.org/audio/ep1.mp3", "audio/mpeg", 123456),
        ),
    ]


def tech_feed(items: Sequence[Item] | None = None) -> bytes:
    return rss(
        tech_items() if items is None else items,
        title="Example Tech News",
        link="https://tech.example.org/",
    )


# --- the site ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)

    def feed(self) -> Any:
        """The body read by feedparser, as a subscriber's reader would; never bozo."""
        parsed = feedparser.parse(self.body)
        assert not parsed.bozo, parsed.get("bozo_exception")
        return parsed


def fetch(url: str, headers: Mapping[str, str] | None = None, timeout: float = 15) -> Answer:
    """GET `url`; an HTTP error status is an answer too, not an exception."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.headers, bytes(response.read()))
    except urllib.error.HTTPError as err:
        return Answer(err.code, err.headers, bytes(err.read()))


@dataclass
class Web:
    """A running web process (`aggregator web`, `run` or gunicorn) at `base`."""

    base: str
    process: subprocess.Popen[bytes]

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Answer:
        return fetch(self.base + path, headers)

    def wait(self) -> Web:
        """Until it answers /healthz."""
        wait_for(lambda: _answers(self), f"web at {self.base}", process=self.process)
        return self

    def ok(self, path: str) -> Answer:
        answer = self.get(path)
        assert answer.status == 200, (path, answer.status, answer.body[:300])
        return answer


_SUMMARY = re.compile(r"(\d+) (ok|failed|new entries|merged|filtered|cut by max_entries)\b")


@dataclass(frozen=True)
class Polled:
    """One `aggregator poll`: its exit code, output, and the counts of its last line."""

    returncode: int
    stdout: str
    stderr: str
    counts: dict[str, int]

    @property
    def summary(self) -> str:
        lines = self.stdout.strip().splitlines()
        return lines[-1] if lines else ""

    def row(self, source: str) -> str:
        """The table line of `source` (rich draws the table: cells are split by │)."""
        for line in self.stdout.splitlines():
            cells = _cells(line)
            if cells and cells[0] == source:
                return line
        raise AssertionError(f"no row for {source!r} in:\n{self.stdout}")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("│┃").split("│")] if "│" in line else []


def table_rows(stdout: str) -> dict[str, dict[str, str]]:
    """First-column value → {column: cell}, for every body row of the first table in
    `stdout` (a cell that wraps onto more lines keeps its first)."""
    header = table_header(stdout)
    rows: dict[str, dict[str, str]] = {}
    for line in stdout.splitlines():
        if line.lstrip().startswith("└"):
            break  # the first table's end: a second one (status's workers) has other columns
        cells = _cells(line)
        if cells and cells[0]:
            rows.setdefault(cells[0], dict(zip(header, cells, strict=False)))
    return rows


def table_header(stdout: str) -> list[str]:
    for line in stdout.splitlines():
        if "┃" in line:
            return [c.strip() for c in line.strip().strip("┃").split("┃")]
    raise AssertionError(f"no table header in:\n{stdout}")


@dataclass
class Site:
    """One aggregator installation under `root`: its feeds.yaml, its Redis (the test's), the
    fixture feed server, and the environment its commands run with."""

    root: Path
    redis_url: str
    server: FeedServer
    base_env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.root / "feeds.yaml"

    @property
    def env(self) -> dict[str, str]:
        return dict(
            self.base_env, AGGREGATOR_CONFIG=str(self.path), AGGREGATOR_REDIS_URL=self.redis_url
        )

    def write(
        self,
        sources: Sequence[Mapping[str, Any]],
        settings: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        """feeds.yaml with the given sources and nothing else: every setting not named here
        is the README's shipped default."""
        document: dict[str, Any] = {}
        if settings:
            document["settings"] = dict(settings)
        document["sources"] = [dict(s) for s in sources]
        document.update(extra)
        self.path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")

    def serve(self, name: str, body: bytes, headers: Mapping[str, str] | None = None) -> str:
        """Serve `body` at /name; with `headers`, as a scripted route (no ETag of its own)."""
        if headers is None:
            return self.server.put(name, body)
        self.server.routes["/" + name] = Route(200, dict(headers), body)
        return self.server.url(name)

    def requests_to(self, name: str) -> list[str]:
        return [r.path for r in self.server.requests if r.path.split("?")[0] == "/" + name]

    def cli(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aggregator", *args],
            env=dict(env if env is not None else self.env),
            text=True,
            capture_output=True,
            timeout=timeout,
            cwd=cwd or self.root,
        )

    def poll(self, *names: str, env: Mapping[str, str] | None = None) -> Polled:
        done = self.cli("poll", *names, env=env)
        counts = {label: 0 for label in ("ok", "failed", "new entries")}
        lines = done.stdout.strip().splitlines()
        for number, label in _SUMMARY.findall(lines[-1] if lines else ""):
            counts[label] = int(number)
        return Polled(done.returncode, done.stdout, done.stderr, counts)

    def status(self) -> dict[str, list[str]]:
        done = self.cli("status")
        assert done.returncode == 0, done.stdout + done.stderr
        return table_rows(done.stdout)

    def status_text(self) -> str:
        done = self.cli("status")
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A long-running command (worker, web, run), stopped when the test ends."""
        return self._spawn([sys.executable, "-m", "aggregator", *args], env)

    def _spawn(
        self, command: Sequence[str], env: Mapping[str, str] | None
    ) -> subprocess.Popen[bytes]:
        # Its log goes to a file, not a pipe: a pipe nobody reads fills and stalls the process.
        log = self.root / f"process-{len(self.processes)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                list(command),
                env=dict(env if env is not None else self.env),
                stdout=subprocess.DEVNULL,
                stderr=output,
                cwd=self.root,
            )
        _LOGS[process.pid] = log
        self.processes.append(process)
        return process

    def web(
        self,
        *command: str,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        wait: bool = True,
    ) -> Web:
        """`aggregator web --port P` (or the `command` given, which must listen on `port`),
        once it answers /healthz; with wait=False at once (start it beside a poll: the two
        share only Redis), and `Web.wait()` later."""
        port = port or free_port()
        if command:
            process = self._spawn(command, env)
        else:
            process = self.start("web", "--port", str(port), env=env)
        web = Web(f"http://127.0.0.1:{port}", process)
        return web.wait() if wait else web

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        self.processes.clear()


def _answers(web: Web) -> bool:
    try:
        return web.get("/healthz").status == 200
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """End a process we started, by its id; its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def wait_for(
    check: Any,
    what: str,
    timeout: float = STARTUP_SECONDS,
    process: subprocess.Popen[bytes] | None = None,
) -> Any:
    """Call `check` until it returns something true; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"{what}: the process exited ({process.returncode}): {_log_tail(process)}"
            )
        if time.monotonic() > deadline:
            said = f"; its log ends: {_log_tail(process)}" if process is not None else ""
            raise AssertionError(f"{what}: not within {timeout} s{said}")
        time.sleep(0.1)


def gunicorn_command(port: int) -> list[str]:
    """The README's production web command with two workers on `port`, as tests start it."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--no-control-socket",
        "aggregator.web:create_app()",
    ]


def _log_tail(process: subprocess.Popen[bytes]) -> str:
    log = _LOGS.get(process.pid)
    return log.read_text(encoding="utf-8", errors="replace")[-3000:] if log else ""


def titles(parsed: Any) -> list[str]:
    return [str(e.get("title", "")) for e in parsed.entries]


def links_in(html: str) -> list[str]:
    """Every href and src on a page."""
    return re.findall(r'(?:href|src)="([^"]+)"', html)


class InFlight:
    """Counts requests a scripted route is serving at once, the most ever, and in total."""

    def __init__(self, body: bytes, delay: float) -> None:
        self.body = body
        self.delay = delay
        self.now = 0
        self.most = 0
        self.total = 0
        self._lock = threading.Lock()

    def __call__(self) -> Route:
        with self._lock:
            self.now += 1
            self.total += 1
            self.most = max(self.most, self.now)
        time.sleep(self.delay)  # the route is answered after this returns: hold the slot here
        with self._lock:
            self.now -= 1
        return Route(200, {"Content-Type": "application/xml"}, self.body)


def parse_when(text: str) -> datetime:
    """A time as `aggregator status` prints it (UTC)."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def make_site(tmp_path: Path, redis_url: str, server: FeedServer, environ: dict[str, str]) -> Site:
    root = tmp_path / "site"
    root.mkdir()
    return Site(root, redis_url, server, environ)


def standard_sources(site: Site) -> list[dict[str, Any]]:
    """The two sources most tests start from, served fresh: jingjiribao (GBK, CJK tags) and
    tech (UTF-8, its own category)."""
    return [
        {
            "name": "jingjiribao",
            "url": site.serve("jingji.xml", jingji_feed()),
            "tags": ["经济日报新闻", "财经"],
            "title": "经济日报",
        },
        {
            "name": "tech",
            "url": site.serve("tech.xml", tech_feed()),
            "category": "technology",
            "tags": ["财经", "node.js"],
        },
    ]
