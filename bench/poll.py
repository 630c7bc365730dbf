"""Benchmark one poll cycle, as `aggregator poll` runs it, against a local farm of feeds.

Run by hand (not part of the test suite); see bench/README.md. In one run, on one farm:

* our cold cycle (empty Redis: every entry new), warm cycle (every feed answers 304) and a cycle
  where 10 % of the feeds changed (2 new entries each);
* the `reader` library, cold then warm (`update_feeds(workers=8, scheduled=False)`);
* `feedparser.parse(bytes)` with its defaults alone over the same files, in a Pool of 2;
* with `--feeds` above `--scale-base`, our cold cycle on the first `--scale-base` feeds too,
  for the scaling target.

The farm is served by nginx (its own config, on a free loopback port) and our entries go to a
redis-server started here on a free loopback port. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import html
import importlib
import json
import multiprocessing
import os
import pickle
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import yaml
from procs import free_port, redis_server, stop_process, wait_for_port
from prose import SECTIONS, Prose

from aggregator import config as config_module
from aggregator.config import Config, Source
from aggregator.fetch import Fetcher
from aggregator.models import Entry, entry_digest
from aggregator.normalize import normalize
from aggregator.parse import parse
from aggregator.pollers import Pollers, processes_for
from aggregator.scheduler import parse_pool
from aggregator.services import open_store
from aggregator.store import Store
from aggregator.update import MAX_POLLS, Outcome, Updater, process

BENCH_DIR = Path(__file__).resolve().parent
ENTRIES = 20  # per feed
NEW_PER_CHANGE = 2  # entries added to a changed feed
CHANGED_SHARE = 0.10
# Every feed is on 127.0.0.1, standing for many hosts: that one host must not be the
# bottleneck, so it may have as many requests under way as the poller runs polls at once. (At
# 64, polls queued at the host's gate while the polls holding it waited for their Redis
# batches: the event loop sat idle a fifth of a warm cycle.)
PER_HOST_CONCURRENCY = MAX_POLLS
READER_WORKERS = 8
FEEDPARSER_PROCESSES = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ------------------------------------------------------------------------------------------
# The farm: N feeds, 20 entries each, ~1-2 KB of HTML per entry.
# ------------------------------------------------------------------------------------------

FORMATS = ("rss2", "atom", "rss1", "json")
GBK = "gbk-rss2"
EXTENSION = {"rss2": "rss", "atom": "atom", "rss1": "rdf", "json": "json", GBK: "rss"}
MIME_TYPES = {
    "rss": "application/rss+xml",
    "atom": "application/atom+xml",
    "rdf": "application/rdf+xml",
    "json": "application/feed+json",
}
OFFSETS = (UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=2)))
CHINA = timezone(timedelta(hours=8))

WORDS = (
    "market economy growth policy report analysts said quarter investment company shares "
    "government officials announced plan energy prices rose fell percent billion million "
    "consumers demand supply chain workers jobs industry technology data cloud software "
    "network security research university study climate weather city council residents "
    "transport rail airport project construction housing rents inflation rates central bank "
    "trade exports imports tariffs agreement talks minister election campaign voters court "
    "ruling law regulators investigation health hospital patients vaccine school students "
    "teachers budget spending tax reform pension farmers harvest water river coast storm "
    "season team match coach league championship festival music film museum exhibition "
    "startup founders funding round platform users service launch update release version"
).split()
ZH_WORDS = (
    "经济 日报 记者 市场 企业 稳就业 消费 投资 增长 创新 改革 数字 产业 金融 银行 服务 农业 "
    "制造业 出口 外贸 地方 政府 项目 建设 城市 乡村 振兴 科技 人才 高质量 发展 推进 加快 实施 "
    "提升 完善 支持 保障 民生 就业岗位 直播 带货 平台 数据 显示 同比 百分点 亿元 一季度 上半年 "
    "全年 国家 统计局 发布 部门 工作 会议 指出 要求 进一步 优化 营商环境 中小企业 融资 成本 "
    "降低 物流 供应链 新能源 汽车 电池 光伏 绿色 低碳 转型 消费者 零售 电商 春节 假期 旅游 "
    "文化 体育 教育 医疗 养老 住房 交通 基础设施 港口 铁路 高速公路 机场 区域 协调 合作"
).split()
PROSE = Prose(WORDS, ZH_WORDS)
_sentence, _phrase, _slug = PROSE.sentence, PROSE.phrase, PROSE.slug
AUTHORS = ("Alex Morgan", "Sam Lee", "Jordan Kim", "Taylor Chen", "Robin Patel", "Casey Diaz")
ZH_AUTHORS = ("王伟", "李娜", "张敏", "刘洋", "陈静", "杨帆")


@dataclass(frozen=True, slots=True)
class FeedSpec:
    index: int
    kind: str

    @property
    def name(self) -> str:
        return f"f{self.index:05d}"

    @property
    def path(self) -> str:
        return f"{self.name}.{EXTENSION[self.kind]}"

    @property
    def chinese(self) -> bool:
        return self.kind == GBK


@dataclass(frozen=True, slots=True)
class Item:
    guid: str
    link: str
    title: str
    summary: str
    content: str
    published: datetime
    updated: datetime
    author: str
    categories: tuple[str, ...]
    enclosure: tuple[str, int, str] | None


def farm_specs(count: int) -> list[FeedSpec]:
    """Every tenth feed is GBK-encoded Chinese RSS 2.0; the others cycle through the 4 formats."""
    specs = []
    for i in range(count):
        if i % 10 == 9:
            specs.append(FeedSpec(i, GBK))
        else:
            specs.append(FeedSpec(i, FORMATS[(i - (i + 1) // 10) % len(FORMATS)]))
    return specs


def _paragraph(rng: random.Random, chinese: bool) -> str:
    out: list[str] = []
    for _ in range(rng.randint(2, 5)):
        out.append(html.escape(_sentence(rng, chinese), quote=False))
        roll = rng.random()
        if roll < 0.25:  # a relative link: made absolute by feedparser/nh3
            href = f"/{rng.choice(SECTIONS)}/2024/{_slug(rng)}.html"
            out.append(f'<a href="{href}">{_phrase(rng, chinese)}</a>')
        elif roll < 0.35:
            out.append(f"<strong>{_phrase(rng, chinese)}</strong>")
        elif roll < 0.45:
            out.append(f"<em>{_phrase(rng, chinese)}</em>")
    return "<p>" + ("" if chinese else " ").join(out) + "</p>"


def _content(rng: random.Random, chinese: bool) -> str:
    """1-2 KB (UTF-8) of the HTML news sites publish, with the odd thing a sanitizer removes."""
    target = rng.randint(1000, 2000)
    blocks: list[str] = []
    size = 0
    while size < target:
        roll = rng.random()
        if roll < 0.55:
            block = _paragraph(rng, chinese)
        elif roll < 0.65:
            items = "".join(f"<li>{_phrase(rng, chinese)}</li>" for _ in range(rng.randint(2, 5)))
            block = f"<ul>{items}</ul>"
        elif roll < 0.73:
            block = f"<blockquote><p>{html.escape(_sentence(rng, chinese))}</p></blockquote>"
        elif roll < 0.83:
            src = f"/img/2024/{_slug(rng)}.jpg"
            alt = html.escape(_phrase(rng, chinese))
            block = f'<figure><img src="{src}" alt="{alt}" width="640" height="360"></figure>'
        elif roll < 0.92:
            block = f"<h3>{html.escape(_phrase(rng, chinese))}</h3>"
        else:  # tracking junk a sanitizer must drop
            block = (
                f'<p onclick="track({rng.randint(1, 999)})" style="color:red">'
                f"{html.escape(_sentence(rng, chinese))}</p>"
                f"<script>window.track&&track({rng.randint(1, 999)});</script>"
            )
        blocks.append(block)
        size += len(block.encode("utf-8"))
    return "\n".join(blocks)


def _site(spec: FeedSpec) -> str:
    return f"http://site{spec.index}.example"


def _feed_offset(spec: FeedSpec) -> timezone:
    return CHINA if spec.chinese else OFFSETS[spec.index % len(OFFSETS)]


def make_item(spec: FeedSpec, k: int, base: datetime) -> Item:
    """Entry `k` of a feed: the same for the same (feed, k, base) on every rewrite. `base` is a
    few days back, so that retention's max_age (90 days by default) keeps every entry."""
    rng = random.Random(f"{spec.index}:{k}")
    chinese = spec.chinese
    slug = _slug(rng)
    link = f"{_site(spec)}/{rng.choice(SECTIONS)}/2024/{slug}.html"
    published = (
        base + timedelta(hours=6 * k + spec.index % 24, minutes=rng.randint(0, 59))
    ).astimezone(_feed_offset(spec))
    title = _sentence(rng, chinese).rstrip(".。")[:90]
    content = _content(rng, chinese)
    summary = _sentence(rng, chinese)
    enclosure = None
    if rng.random() < 0.15:
        enclosure = (f"{_site(spec)}/media/{slug}.mp3", rng.randint(10**5, 10**7), "audio/mpeg")
    return Item(
        guid=f"{_site(spec)}/?p={spec.index * 1000 + k}",
        link=link,
        title=title,
        summary=summary,
        content=content,
        published=published,
        updated=published + timedelta(minutes=rng.randint(0, 90)),
        author=rng.choice(ZH_AUTHORS if chinese else AUTHORS),
        categories=tuple(rng.sample(ZH_WORDS if chinese else SECTIONS, 2)),
        enclosure=enclosure,
    )


def _x(text: str) -> str:
    return html.escape(text, quote=True)


def _feed_title(spec: FeedSpec) -> str:
    return f"经济新闻 {spec.index}" if spec.chinese else f"Site {spec.index} news"


def render_rss2(spec: FeedSpec, items: Sequence[Item], url: str) -> bytes:
    encoding = "GBK" if spec.chinese else "utf-8"
    out = [
        f'<?xml version="1.0" encoding="{encoding}"?>',
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:atom="http://www.w3.org/2005/Atom">',
        "<channel>",
        f"<title>{_x(_feed_title(spec))}</title>",
        f"<link>{_site(spec)}/</link>",
        f"<description>{_x(_feed_title(spec))}</description>",
        f"<language>{'zh-cn' if spec.chinese else 'en'}</language>",
        f'<atom:link href="{url}" rel="self" type="application/rss+xml"/>',
        f"<lastBuildDate>{format_datetime(items[0].updated)}</lastBuildDate>",
    ]
    for it in items:
        out += [
            "<item>",
            f"<title>{_x(it.title)}</title>",
            f"<link>{it.link}</link>",
            f'<guid isPermaLink="false">{it.guid}</guid>',
            f"<pubDate>{format_datetime(it.published)}</pubDate>",
            f"<dc:creator>{_x(it.author)}</dc:creator>",
            *(f"<category>{_x(c)}</category>" for c in it.categories),
            f"<description>{_x(it.summary)}</description>",
            f"<content:encoded><![CDATA[{it.content}]]></content:encoded>",
        ]
        if it.enclosure:
            out.append(
                f'<enclosure url="{it.enclosure[0]}" length="{it.enclosure[1]}"'
                f' type="{it.enclosure[2]}"/>'
            )
        out.append("</item>")
    out += ["</channel>", "</rss>", ""]
    return "\n".join(out).encode("gbk" if spec.chinese else "utf-8")


def render_atom(spec: FeedSpec, items: Sequence[Item], url: str) -> bytes:
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">',
        f"<title>{_x(_feed_title(spec))}</title>",
        f'<link rel="alternate" type="text/html" href="{_site(spec)}/"/>',
        f'<link rel="self" href="{url}"/>',
        f"<id>tag:site{spec.index}.example,2024:feed</id>",
        f"<updated>{items[0].updated.isoformat()}</updated>",
        f"<author><name>Site {spec.index} newsroom</name></author>",
    ]
    for it in items:
        out += [
            "<entry>",
            f'<title type="text">{_x(it.title)}</title>',
            f'<link rel="alternate" type="text/html" href="{it.link}"/>',
            f"<id>{it.guid}</id>",
            f"<published>{it.published.isoformat()}</published>",
            f"<updated>{it.updated.isoformat()}</updated>",
            f"<author><name>{_x(it.author)}</name></author>",
            *(f'<category term="{_x(c)}"/>' for c in it.categories),
            f'<summary type="html">{_x(it.summary)}</summary>',
            f'<content type="html">{_x(it.content)}</content>',
        ]
        if it.enclosure:
            out.append(
                f'<link rel="enclosure" href="{it.enclosure[0]}" length="{it.enclosure[1]}"'
                f' type="{it.enclosure[2]}"/>'
            )
        out.append("</entry>")
    out += ["</feed>", ""]
    return "\n".join(out).encode("utf-8")


def render_rss1(spec: FeedSpec, items: Sequence[Item], url: str) -> bytes:
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
        ' xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmlns:content="http://purl.org/rss/1.0/modules/content/">',
        f'<channel rdf:about="{url}">',
        f"<title>{_x(_feed_title(spec))}</title>",
        f"<link>{_site(spec)}/</link>",
        f"<description>{_x(_feed_title(spec))}</description>",
        "<items><rdf:Seq>",
        *(f'<rdf:li rdf:resource="{it.link}"/>' for it in items),
        "</rdf:Seq></items>",
        "</channel>",
    ]
    for it in items:
        out += [
            f'<item rdf:about="{it.link}">',
            f"<title>{_x(it.title)}</title>",
            f"<link>{it.link}</link>",
            f"<description>{_x(it.summary)}</description>",
            f"<dc:date>{it.published.isoformat()}</dc:date>",
            f"<dc:creator>{_x(it.author)}</dc:creator>",
            *(f"<dc:subject>{_x(c)}</dc:subject>" for c in it.categories),
            f"<content:encoded><![CDATA[{it.content}]]></content:encoded>",
            "</item>",
        ]
    out += ["</rdf:RDF>", ""]
    return "\n".join(out).encode("utf-8")


def render_json(spec: FeedSpec, items: Sequence[Item], url: str) -> bytes:
    feed: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": _feed_title(spec),
        "home_page_url": f"{_site(spec)}/",
        "feed_url": url,
        "language": "en",
        "authors": [{"name": f"Site {spec.index} newsroom"}],
        "items": [],
    }
    for it in items:
        item: dict[str, Any] = {
            "id": it.guid,
            "url": it.link,
            "title": it.title,
            "content_html": it.content,
            "summary": it.summary,
            "date_published": it.published.isoformat(),
            "date_modified": it.updated.isoformat(),
            "authors": [{"name": it.author}],
            "tags": list(it.categories),
        }
        if it.enclosure:
            item["attachments"] = [
                {
                    "url": it.enclosure[0],
                    "size_in_bytes": it.enclosure[1],
                    "mime_type": it.enclosure[2],
                }
            ]
        feed["items"].append(item)
    return json.dumps(feed, ensure_ascii=False, indent=1).encode("utf-8")


RENDER: dict[str, Callable[[FeedSpec, Sequence[Item], str], bytes]] = {
    "rss2": render_rss2,
    GBK: render_rss2,
    "atom": render_atom,
    "rss1": render_rss1,
    "json": render_json,
}


@dataclass(frozen=True, slots=True)
class Farm:
    root: Path
    base_url: str
    base_date: datetime  # entry 0's date; the others follow 6 hours apart


def write_feed(farm: Farm, spec: FeedSpec, count: int, mtime: float) -> int:
    """Write entries 0..count-1 of `spec`, newest first, atomically; return the size."""
    items = [make_item(spec, k, farm.base_date) for k in reversed(range(count))]
    body = RENDER[spec.kind](spec, items, farm.base_url + spec.path)
    path = os.path.join(farm.root, spec.path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(body)
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)
    return len(body)


def _write_feed_star(args: tuple[Farm, FeedSpec, int, float]) -> int:
    return write_feed(*args)


def build_farm(pool: Pool, farm: Farm, specs: Sequence[FeedSpec]) -> int:
    """The base farm (20 entries per feed); returns its size in bytes."""
    farm.root.mkdir(parents=True, exist_ok=True)
    mtime = time.time() - 86400
    jobs = [(farm, s, ENTRIES, mtime) for s in specs]
    return sum(pool.imap_unordered(_write_feed_star, jobs, chunksize=32))


def rewrite(pool: Pool, farm: Farm, specs: Sequence[FeedSpec], count: int, mtime: float) -> None:
    """Rewrite `specs` with `count` entries and a new mtime (so a new ETag and Last-Modified)."""
    jobs = [(farm, s, count, mtime) for s in specs]
    for _ in pool.imap_unordered(_write_feed_star, jobs, chunksize=8):
        pass


# ------------------------------------------------------------------------------------------
# Servers: nginx for the farm, redis-server for our store. Both on free loopback ports.
# ------------------------------------------------------------------------------------------


NGINX_CONF = """\
{user}worker_processes {workers};
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    types {{
{types}
    }}
    default_type application/octet-stream;
    charset off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        etag on;
        if_modified_since exact;
        location / {{ }}
    }}
}}
"""


@contextmanager
def nginx(
    root: Path, workdir: Path, port: int, workers: int, connections: int
) -> Iterator[subprocess.Popen[bytes]]:
    """nginx serving `root` on 127.0.0.1:`port`, in the foreground of a child process. Static
    files get ETag ("mtime-size") and Last-Modified, and conditional GETs get 304."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        raise SystemExit("nginx not found: apt-get update && apt-get install -y nginx-light")
    conf_dir = workdir / "nginx"
    conf_dir.mkdir(parents=True, exist_ok=True)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    types = "\n".join(f"        {mime} {ext};" for ext, mime in MIME_TYPES.items())
    conf = conf_dir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            # As root, nginx's workers would otherwise run as nobody, who cannot read a
            # directory made by mkdtemp (mode 0700).
            user="user root;\n" if os.geteuid() == 0 else "",
            workers=workers,
            nofile=soft,
            connections=connections,
            dir=conf_dir,
            types=types,
            port=port,
            root=root,
        )
    )
    log = conf_dir / "nginx-error.log"
    with open(conf_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(conf_dir), "-e", str(log)],
            stdout=err,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_port(port, proc, "nginx", conf_dir / "stderr.log")
        yield proc
    finally:
        stop_process(proc, signal.SIGQUIT)  # graceful: the workers finish, then the master


def raise_nofile() -> tuple[int, int]:
    """Raise the soft file-descriptor limit to the hard one; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ------------------------------------------------------------------------------------------
# CPU accounting of the processes that take part in a cycle.
# ------------------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command name) of every process."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, _, tail = f.read().rpartition(")")
        except OSError:
            continue
        table[int(entry)] = (int(tail.split()[1]), head.partition("(")[2])
    return table


def descendants(pid: int, table: dict[int, tuple[int, str]]) -> set[int]:
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in table.items():
            if ppid == parent and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def python_descendants(exclude: Callable[[], set[int]]) -> list[int]:
    """The Python processes below this one (forkserver and parse-pool workers: the pool may
    replace a worker, so they are looked up again for each cycle), less `exclude()`."""
    table = process_table()
    skip = exclude()
    return sorted(
        p
        for p in descendants(os.getpid(), table)
        if p not in skip and table[p][1].startswith("python")
    )


@dataclass(slots=True)
class CpuMeter:
    """CPU seconds spent by each group of processes between `start()` and `stop()`; each
    group's processes are looked up at `start()`."""

    groups: dict[str, Callable[[], list[int]]]
    pids: dict[str, list[int]] = field(default_factory=dict)
    before: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        return {name: sum(proc_cpu(p) for p in pids) for name, pids in self.pids.items()}

    def start(self) -> None:
        self.pids = {name: find() for name, find in self.groups.items()}
        self.before = self._read()

    def stop(self) -> dict[str, float]:
        after = self._read()
        return {k: after[k] - self.before.get(k, 0.0) for k in after}


def redis_calls(store: Store) -> Counter[str]:
    """Calls per Redis command since the server started (INFO commandstats)."""
    stats = store.client.info("commandstats")
    return Counter(
        {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if "calls" in v}
    )


# ------------------------------------------------------------------------------------------
# Our cycle: exactly the objects `aggregator poll` (cli._poll_all) uses, without the bar.
# ------------------------------------------------------------------------------------------


def write_config(workdir: Path, base_url: str, specs: Sequence[FeedSpec], redis_port: int) -> Path:
    sources = []
    for spec in specs:
        source: dict[str, Any] = {
            "name": spec.name,
            "url": base_url + spec.path,
            # category: the default, the source's name (retention keeps 1000 per category)
            "tags": ["经济日报新闻", "财经"] if spec.chinese else [f"tag{spec.index % 10}"],
        }
        sources.append(source)
    data = {
        "settings": {
            "redis_url": f"redis://127.0.0.1:{redis_port}/0",
            "data_dir": str(workdir / "data"),
            "min_interval": "1s",  # local sources: no politeness floor needed
            # Every feed is on one host, 127.0.0.1: the default of 2 requests at once per host
            # would make that host the bottleneck of the whole cycle.
            "per_host": {"concurrency": PER_HOST_CONCURRENCY, "per_minute": 1_000_000},
        },
        "sources": sources,
    }
    path = workdir / "feeds.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


Cycle = Callable[[Sequence[Source]], Awaitable[list[Outcome]]]


def in_process(config: Config, store: Store, executor: Executor) -> Cycle:
    """The cycle `aggregator poll` runs for fewer sources: one Updater in this process."""

    async def cycle(sources: Sequence[Source]) -> list[Outcome]:
        async with Fetcher(config.settings) as fetcher:
            updater = Updater(config, store, fetcher, executor=executor)
            return await updater.poll_many(sources)

    return cycle


@dataclass(slots=True)
class Timed:
    seconds: float
    cpu: dict[str, float]
    outcomes: list[Outcome]
    redis_commands: Counter[str]  # calls per command during the cycle


def our_cycle(store: Store, cycle: Cycle, sources: Sequence[Source], meter: CpuMeter) -> Timed:
    calls = redis_calls(store)
    seconds, cpu, outcomes = measured(meter, lambda: asyncio.run(cycle(sources)))
    commands = redis_calls(store)
    commands.subtract(calls)
    commands["info"] -= 1  # our own INFO
    return Timed(seconds, cpu, outcomes, +commands)


def warm_pool(
    executor: Executor, sources: Sequence[Source], root: Path, specs: Sequence[FeedSpec]
) -> float:
    """Start the pool's processes and import the parse stack in each, outside the timings:
    a running service has its pool up already. Returns the seconds it took."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    jobs = []
    for source, spec in list(zip(sources, specs, strict=True))[:8]:
        body = (root / spec.path).read_bytes()
        jobs.append(executor.submit(process, source, body, source.url, "", now))
    for job in jobs:
        job.result()
    return time.perf_counter() - started


class CheckFailed(Exception):
    pass


def _failures(outcomes: Sequence[Outcome]) -> str:
    bad = [o for o in outcomes if not o.ok][:5]
    return "; ".join(f"{o.source}: {o.error}" for o in bad)


def check_cold(outcomes: Sequence[Outcome], store: Store, n: int) -> None:
    new = sum(o.new for o in outcomes)
    stored = store.count("all")
    failed = sum(not o.ok for o in outcomes)
    if failed or new != n * ENTRIES or stored != n * ENTRIES:
        raise CheckFailed(
            f"cold: {failed} failed, {new} new, {stored} stored; want {n * ENTRIES} "
            f"({_failures(outcomes)})"
        )


def check_warm(outcomes: Sequence[Outcome]) -> None:
    modified = sum(not o.not_modified for o in outcomes)
    new = sum(o.new for o in outcomes)
    if modified or new:
        raise CheckFailed(
            f"warm: {modified} not answered 304, {new} new; want 0 and 0 ({_failures(outcomes)})"
        )


def check_changed(outcomes: Sequence[Outcome], changed: set[str]) -> None:
    wrong = [
        o.source
        for o in outcomes
        if (o.source in changed) != (not o.not_modified)
        or o.new != (NEW_PER_CHANGE if o.source in changed else 0)
        or o.updated
        or not o.ok
    ]
    if wrong:
        raise CheckFailed(
            f"10 % changed: {len(wrong)} sources wrong, e.g. {wrong[:5]}; new="
            f"{sum(o.new for o in outcomes)} want {NEW_PER_CHANGE * len(changed)} "
            f"({_failures(outcomes)})"
        )


# ------------------------------------------------------------------------------------------
# The comparisons: reader, and feedparser alone.
# ------------------------------------------------------------------------------------------


def measured(meter: CpuMeter, fn: Callable[[], Any]) -> tuple[float, dict[str, float], Any]:
    """Wall seconds, CPU seconds by process group (this process's as "bench (parent)"), and
    what `fn()` returned."""
    gc.collect()
    meter.start()
    cpu0 = time.process_time()
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    cpu["bench (parent)"] = time.process_time() - cpu0
    return seconds, cpu, result


def reader_cycles(
    urls: Sequence[str], db: Path, n: int, meter: CpuMeter
) -> tuple[tuple[float, dict[str, float]], tuple[float, dict[str, float]]]:
    """`reader`: add every feed, then `update_feeds` cold, then warm: (seconds, CPU) of each.
    reader runs in this process (its workers are threads), so its CPU is "bench (parent)"."""
    from reader import make_reader

    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    reader = make_reader(str(db))

    def update() -> None:
        reader.update_feeds(workers=READER_WORKERS, scheduled=False)

    try:
        for url in urls:
            reader.add_feed(url)
        cold, cold_cpu, _ = measured(meter, update)
        total = reader.get_entry_counts().total
        if total != n * ENTRIES:
            raise CheckFailed(f"reader cold: {total} entries, want {n * ENTRIES}")
        warm, warm_cpu, _ = measured(meter, update)
        broken = sum(1 for f in reader.get_feeds() if f.last_exception is not None)
        if broken or reader.get_entry_counts().total != total:
            raise CheckFailed(f"reader warm: {broken} feeds failed")
        return (cold, cold_cpu), (warm, warm_cpu)
    finally:
        reader.close()


def _feedparser_file(path: str) -> int:
    import feedparser

    with open(path, "rb") as f:
        data = f.read()
    return len(feedparser.parse(data).entries)  # its defaults: sanitize, resolve URIs


def _import_feedparser(_: int) -> int:
    import feedparser

    return len(feedparser.__version__)


def feedparser_alone(
    pool: Pool, paths: Sequence[str], meter: CpuMeter
) -> tuple[float, dict[str, float], int]:
    """`feedparser.parse(bytes)` over every file in `pool`: seconds, CPU, entries."""
    seconds, cpu, counts = measured(meter, lambda: pool.map(_feedparser_file, paths, chunksize=4))
    return seconds, cpu, sum(counts)


# ------------------------------------------------------------------------------------------
# Where the time goes: each stage alone, one process, over the farm (`--breakdown`).
# ------------------------------------------------------------------------------------------


def _entries_of(result: Any) -> list[Entry]:
    """`update.process` returns the entries, or an object carrying them as `.entries`."""
    return list(result if isinstance(result, list) else result.entries)


def breakdown(
    config: Config, store: Store, root: Path, specs: Sequence[FeedSpec], sources: Sequence[Source]
) -> list[tuple[str, float]]:
    """CPU seconds of each stage alone, in this one process, over every feed of the farm."""
    rows: list[tuple[str, float]] = []

    def timed(label: str, fn: Callable[[], Any], runs: int = 2) -> Any:
        """The least CPU time of `runs` runs: the machine is shared and noisy."""
        best = float("inf")
        for _ in range(runs):
            gc.collect()
            started = time.process_time()
            result = fn()
            best = min(best, time.process_time() - started)
        rows.append((label, best))
        return result

    types = [MIME_TYPES[EXTENSION[s.kind]] for s in specs]
    jobs = list(zip(sources, types, strict=True))
    bodies: list[bytes] = timed("read files", lambda: [(root / s.path).read_bytes() for s in specs])
    now = datetime.now(UTC)
    timed(
        "parse (aggregator.parse: feedparser without its sanitizer; JSON Feed by hand)",
        lambda: [parse(b, s.url, t) for b, (s, t) in zip(bodies, jobs, strict=True)],
    )
    xml = [(b, s, t) for b, (s, t) in zip(bodies, jobs, strict=True) if "json" not in t]
    timed("  of which the XML feeds", lambda: [parse(b, s.url, t) for b, s, t in xml])
    import feedparser

    timed(
        "  for comparison: feedparser.parse defaults (sanitizer on), the XML feeds",
        lambda: [feedparser.parse(b) for b, _, _ in xml],
    )
    headers = [{"content-location": s.url, "content-type": t} for _, s, t in xml]
    timed(
        "  what-if: our feedparser call with resolve_relative_uris=False, XML feeds",
        lambda: [
            feedparser.parse(
                b, response_headers=h, sanitize_html=False, resolve_relative_uris=False
            )
            for (b, _, _), h in zip(xml, headers, strict=True)
        ],
    )

    def parse_all(parse_one: Callable[[bytes], Any]) -> list[Any]:
        return [parse_one(b) for b in bodies]

    for module in ("feedparser_rs", "fastfeedparser"):  # optional: other parsers, if installed
        try:
            other = importlib.import_module(module)
        except ImportError:
            continue
        timed(f"  what-if: {module}.parse, every feed", functools.partial(parse_all, other.parse))
    feeds = [parse(b, s.url, t) for b, (s, t) in zip(bodies, jobs, strict=True)]
    timed(
        "normalize (ids, nh3 sanitize, plain text, filters)",
        lambda: [
            normalize(s, f, feed_url=s.url, fetched_at=now)
            for f, (s, _) in zip(feeds, jobs, strict=True)
        ],
    )
    results: list[Any] = timed(
        "update.process = parse + normalize (what a pool worker runs)",
        lambda: [process(s, b, s.url, t, now) for b, (s, t) in zip(bodies, jobs, strict=True)],
    )
    entries = [_entries_of(r) for r in results]
    timed(
        "pickle + unpickle: (source, body) to the pool, its result back",
        lambda: [
            (pickle.loads(pickle.dumps((s, b, s.url, t, now))), pickle.loads(pickle.dumps(r)))
            for b, (s, t), r in zip(bodies, jobs, results, strict=True)
        ],
    )
    timed(
        "entry_digest + Entry.to_json of every entry (save_poll does both)",
        lambda: [(entry_digest(x), x.to_json()) for e in entries for x in e],
    )
    store.client.flushall()
    state: dict[str, str | int | float] = {"status": 200}
    wall = time.perf_counter()
    timed(
        "Store.save_poll, every feed in turn (this process's CPU)",
        lambda: [
            store.save_poll(s.name, e, state, now) for s, e in zip(sources, entries, strict=True)
        ],
    )
    rows.append(("  same, wall clock (with Redis round trips)", time.perf_counter() - wall))
    retention = config.settings.retention
    enforce = getattr(store, "enforce_retention", None)
    if enforce is not None:
        timed(
            "Store.enforce_retention per source (CPU)",
            lambda: [
                enforce(s.category_name, retention.max_entries, retention.max_age, now)
                for s in sources
            ],
        )
    timed(
        "Store.source_states per source (CPU)",
        lambda: [store.source_states([s.name]) for s in sources],
    )
    store.client.flushall()

    async def fetch_all() -> None:
        async with Fetcher(config.settings) as fetcher:
            await asyncio.gather(*(fetcher.fetch(s.url) for s in sources))

    wall = time.perf_counter()
    timed("fetch every feed at once (Fetcher, all 200; CPU)", lambda: asyncio.run(fetch_all()))
    rows.append(("  same, wall clock", time.perf_counter() - wall))
    return rows


# ------------------------------------------------------------------------------------------
# py-spy over one cold cycle (`--profile`): which functions the CPU samples land in.
# ------------------------------------------------------------------------------------------

PROCESS_FRAME = re.compile(r'process (\d+):"')
MARKERS: tuple[tuple[str, str], ...] = (
    ("Updater.poll (everything per source in the parent)", "poll (aggregator/update.py"),
    ("Fetcher.fetch", "fetch (aggregator/fetch.py"),
    ("pyreqwest (any)", "pyreqwest/"),
    ("Store.source_states", "source_states (aggregator/store.py"),
    ("Store.save_poll", "save_poll (aggregator/store.py"),
    ("  entry_digest", "entry_digest (aggregator/models.py"),
    ("  Entry.to_json", "to_json (aggregator/models.py"),
    ("  redis-py (any)", "redis/"),
    ("asyncio.to_thread machinery (threads)", "concurrent/futures/thread.py"),
    ("process-pool plumbing (pickle, queues)", "concurrent/futures/process.py"),
    ("multiprocessing (any)", "multiprocessing/"),
    ("update.process (in a pool worker)", "process (aggregator/update.py"),
    ("  feedparser.parse", "parse (feedparser/api.py"),
    ("  aggregator.parse (all)", "parse (aggregator/parse.py"),
    ("  normalize (all)", "normalize (aggregator/normalize.py"),
    ("    sanitize (nh3)", "sanitize (aggregator/normalize.py"),
    ("    plain_text (nh3)", "plain_text (aggregator/normalize.py"),
    ("    entry_id", "entry_id (aggregator/normalize.py"),
    ("    Entry(...) / xml_text", "xml_text (aggregator/text.py"),
    ("  dates.parse_date", "parse_date (aggregator/dates.py"),
)


def summarize_profile(raw: Path, main_pid: int) -> str:
    """Collapsed stacks from `py-spy record --format raw --subprocesses` → a table of the share
    of CPU samples under each marker, for the parent and for the pool workers."""
    totals: Counter[str] = Counter()
    hits: dict[str, Counter[str]] = {"parent": Counter(), "workers": Counter()}
    leaves: dict[str, Counter[str]] = {"parent": Counter(), "workers": Counter()}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # A child's stack is prefixed by its ancestors' process frames (forkserver, worker).
        processes = PROCESS_FRAME.findall(stack)
        if not processes or processes[0] != str(main_pid):
            continue
        kind = "parent" if len(processes) == 1 else "workers"
        totals[kind] += count
        seen = set()
        for label, needle in MARKERS:
            if needle in stack and label not in seen:
                hits[kind][label] += count
                seen.add(label)
        leaf = stack.rsplit(";", 1)[-1]
        leaves[kind][leaf] += count
    out = []
    for kind in ("parent", "workers"):
        total = totals[kind] or 1
        out.append(f"\n{kind}: {totals[kind]} samples holding the GIL\n")
        out.append("| under | share |\n| --- | ---: |")
        for label, _ in MARKERS:
            if hits[kind][label]:
                out.append(f"| {label} | {100 * hits[kind][label] / total:.1f} % |")
        out.append("\ntop leaf functions:\n\n| function | share |\n| --- | ---: |")
        for leaf, count in leaves[kind].most_common(15):
            out.append(f"| `{leaf}` | {100 * count / total:.1f} % |")
    return "\n".join(out)


@contextmanager
def py_spy(out: Path, rate: int) -> Iterator[None]:
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(binary):
        raise SystemExit("py-spy not found: pip install py-spy")
    log = out.with_suffix(".log")
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(os.getpid()),
                "--subprocesses",
                "--gil",  # only the thread holding the GIL: Python's CPU time, idle left out
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=err,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    time.sleep(3)  # attaching takes a moment
    try:
        yield
    finally:
        stop_process(proc, signal.SIGINT)  # py-spy writes its output on SIGINT


# ------------------------------------------------------------------------------------------
# The run.
# ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    code: str = ""
    commands: dict[str, dict[str, float]] = field(default_factory=dict)
    load: list[str] = field(default_factory=list)  # 1-minute load average after each repeat

    def add(self, key: str, seconds: float, cpu: dict[str, float] | None = None) -> None:
        self.samples.setdefault(key, []).append(seconds)
        if cpu is not None:
            self.cpu.setdefault(key, []).append(cpu)
        print(f"  {key}: {seconds:.2f} s", flush=True)

    def add_cycle(self, key: str, timed: Timed, sources: int) -> None:
        self.add(key, timed.seconds, timed.cpu)
        # Redis calls per source, of the latest run: they hardly vary between runs.
        self.commands[key] = {k: v / sources for k, v in timed.redis_commands.items()}

    def client_cpu(self, key: str) -> float | None:
        """Median CPU seconds of everything but the farm's nginx."""
        runs = self.cpu.get(key)
        if not runs:
            return None
        return statistics.median(
            sum(v for group, v in run.items() if group != "nginx") for run in runs
        )

    def median(self, key: str) -> float | None:
        values = self.samples.get(key)
        return statistics.median(values) if values else None


def code_version() -> str:
    """The aggregator checkout measured: commit, and whether its work tree had changes."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=BENCH_DIR.parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args: argparse.Namespace) -> int:
    n: int = args.feeds
    scale_base: int = args.scale_base if args.scale_base is not None else (1000 if n > 1000 else 0)
    if scale_base >= n:
        scale_base = 0
    soft, hard = raise_nofile()
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    results = Results(code=code_version())
    workdir_arg: Path | None = args.workdir
    with ExitStack() as stack:
        if workdir_arg is None:
            workdir = Path(tempfile.mkdtemp(prefix="aggregator-bench-"))
            if not args.keep:
                stack.callback(shutil.rmtree, workdir, True)
        else:
            workdir = workdir_arg.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        root = workdir / "farm"
        nginx_port, redis_port = free_port(), free_port()
        base_url = f"http://127.0.0.1:{nginx_port}/"
        base_date = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        farm = Farm(root, base_url, base_date - timedelta(days=8))
        specs = farm_specs(n)
        log(
            f"workdir {workdir}; {n} feeds; nproc {os.cpu_count()}; Python "
            f"{sys.version.split()[0]}; RLIMIT_NOFILE {soft}/{hard}; code {results.code}"
        )
        mp = multiprocessing.get_context("forkserver")
        helper: Pool = stack.enter_context(mp.Pool(FEEDPARSER_PROCESSES))
        helper.map(_import_feedparser, range(FEEDPARSER_PROCESSES * 4))

        started = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        size = build_farm(helper, farm, specs)
        kinds = Counter(s.kind for s in specs)
        log(
            f"farm: {size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s; "
            + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        )
        results.notes.append(
            f"farm: {n} feeds x {ENTRIES} entries, {size / 1e6:.1f} MB, "
            + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        )
        # Connections at once: ours (MAX_POLLS, 256, per polling process), reader (8 threads).
        connections = 4096
        nginx_proc = stack.enter_context(
            nginx(root, workdir, nginx_port, args.nginx_workers, connections)
        )
        redis_proc = stack.enter_context(redis_server(workdir, redis_port))
        config = config_module.load(write_config(workdir, base_url, specs, redis_port))
        sources = list(config.enabled_sources)
        store, embedded = open_store(config)
        assert embedded is None
        stack.callback(store.close)
        processes = args.pollers if args.pollers is not None else processes_for(n)
        pollers: Pollers | None = None
        # As `aggregator poll` does for this many sources, started outside the timings: a
        # running service has its processes up already.
        if processes > 1:
            started = time.perf_counter()
            assert store.address is not None
            pollers = stack.enter_context(Pollers(config, store.address, processes))
            cycle: Cycle = pollers.poll_many
            log(f"{processes} poller processes up in {time.perf_counter() - started:.2f} s")
        else:
            executor = stack.enter_context(parse_pool())
            warmup = warm_pool(executor, sources, root, specs)
            log(f"parse pool warm-up (forkserver + imports): {warmup:.2f} s")
            cycle = in_process(config, store, executor)
        results.notes.append(
            f"ours polled in {processes} poller processes"
            if pollers
            else "ours polled in the measuring process"
        )
        helper_pids = {int(p.pid) for p in getattr(helper, "_pool", []) if p.pid}

        def nginx_pids() -> list[int]:
            return [nginx_proc.pid, *descendants(nginx_proc.pid, process_table())]

        def poller_pids() -> list[int]:
            return pollers.pids if pollers else []

        def not_parse_pool() -> set[int]:
            return {redis_proc.pid, *nginx_pids(), *helper_pids, *poller_pids()}

        meter = CpuMeter(
            {
                "pollers": poller_pids,
                "parse pool": lambda: python_descendants(not_parse_pool),
                "redis-server": lambda: [redis_proc.pid],
                "nginx": nginx_pids,
            }
        )
        nginx_meter = CpuMeter({"nginx": nginx_pids})
        helper_meter = CpuMeter({"parse pool": lambda: sorted(helper_pids), "nginx": nginx_pids})
        urls = [s.url for s in sources]
        paths = [str(root / s.path) for s in specs]
        changed_n = max(1, round(n * CHANGED_SHARE))

        for r in range(args.repeat):
            log(f"repeat {r + 1}/{args.repeat}")
            try:
                store.client.flushall()
                t = our_cycle(store, cycle, sources, meter)
                check_cold(t.outcomes, store, n)
                results.add_cycle("ours cold", t, n)
                t = our_cycle(store, cycle, sources, meter)
                check_warm(t.outcomes)
                results.add_cycle("ours warm", t, n)
                rng = random.Random(f"changed:{r}")
                changed_specs = sorted(rng.sample(specs, changed_n), key=lambda s: s.index)
                grown = ENTRIES + NEW_PER_CHANGE
                rewrite(helper, farm, changed_specs, grown, time.time() + 1)
                t = our_cycle(store, cycle, sources, meter)
                check_changed(t.outcomes, {s.name for s in changed_specs})
                results.add_cycle("ours 10 % changed", t, n)
                rewrite(helper, farm, changed_specs, ENTRIES, time.time() + 2)
                if scale_base:
                    store.client.flushall()
                    t = our_cycle(store, cycle, sources[:scale_base], meter)
                    check_cold(t.outcomes, store, scale_base)
                    results.add_cycle(f"ours cold, first {scale_base} feeds", t, scale_base)
                    t = our_cycle(store, cycle, sources[:scale_base], meter)
                    check_warm(t.outcomes)
                    results.add_cycle(f"ours warm, first {scale_base} feeds", t, scale_base)
            except CheckFailed as err:
                results.failed.append(str(err))
                log(f"CHECK FAILED: {err}")
                rewrite(helper, farm, specs, ENTRIES, time.time() + 3)
            if not args.no_reader:
                try:
                    cold, warm = reader_cycles(urls, workdir / "reader.sqlite", n, nginx_meter)
                    results.add("reader cold", *cold)
                    results.add("reader warm", *warm)
                except CheckFailed as err:
                    results.failed.append(str(err))
                    log(f"CHECK FAILED: {err}")
            if not args.no_feedparser:
                seconds, cpu, parsed = feedparser_alone(helper, paths, helper_meter)
                results.add("feedparser alone", seconds, cpu)
                want = sum(ENTRIES for s in specs if s.kind != "json")
                if parsed != want:
                    results.failed.append(f"feedparser alone: {parsed} entries, want {want}")
            results.load.append(f"{os.getloadavg()[0]:.1f}")
        results.notes.append(
            "feedparser alone reads no JSON Feed (0 entries from those files, by design of "
            "feedparser 6); it parsed the other files' entries"
        )

        profile_text = ""
        for cycle in args.profile:
            log(f"profiling one more {cycle} cycle with py-spy")
            store.client.flushall()
            if cycle == "warm":
                our_cycle(store, cycle, sources, meter)  # fills Redis and validators
            raw = workdir / f"profile-{cycle}.txt"
            with py_spy(raw, args.profile_rate):
                t = our_cycle(store, cycle, sources, meter)
            summary = summarize_profile(raw, os.getpid())
            profile_text += f"\n\n### py-spy, {cycle} cycle ({t.seconds:.2f} s)\n{summary}"
            if args.profile_out:
                shutil.copy(raw, f"{args.profile_out}-{cycle}.txt")
            print(f"profiled {cycle} cycle: {t.seconds:.2f} s{summary}", flush=True)

        breakdown_rows: list[tuple[str, float]] = []
        if args.breakdown:
            log("stage breakdown, one process")
            breakdown_rows = breakdown(config, store, root, specs, sources)

    report = render_report(args, n, scale_base, results, breakdown_rows)
    print(report)
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"poll-{n}-{stamp}.md").write_text(report + profile_text + "\n", encoding="utf-8")
    (out_dir / f"poll-{n}-{stamp}.json").write_text(
        json.dumps(
            {
                "feeds": n,
                "repeat": args.repeat,
                "nproc": os.cpu_count(),
                "python": sys.version.split()[0],
                "samples": results.samples,
                "cpu": results.cpu,
                "redis_commands_per_source": results.commands,
                "breakdown": breakdown_rows,
                "failed": results.failed,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    return 1 if results.failed else 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_report(
    args: argparse.Namespace,
    n: int,
    scale_base: int,
    results: Results,
    breakdown_rows: Sequence[tuple[str, float]],
) -> str:
    m = results.median
    lines = [
        f"\n## poll cycle, {n} feeds, median of {args.repeat} "
        f"(nproc {os.cpu_count()}, Python {sys.version.split()[0]}, code {results.code})\n",
        f"load average (1 min) after each repeat: {', '.join(results.load) or '-'}\n",
        "CPU seconds (medians): parent = the measuring process (our event loop and threads"
        " when it polls; reader and its threads), pollers = our poller processes, pool = the"
        " parsing processes (ours; feedparser's Pool), client = parent + pollers + pool +"
        " redis, i.e. all but the farm's nginx.\n",
        "| measurement | median s | runs s | parent CPU | pollers CPU | pool CPU | redis CPU"
        " | nginx CPU | client CPU |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, values in results.samples.items():
        cpu = results.cpu.get(key)

        def med(group: str, cpu: list[dict[str, float]] | None = cpu) -> str:
            return _fmt(statistics.median(c.get(group, 0.0) for c in cpu)) if cpu else "-"

        lines.append(
            f"| {key} | {m(key):.2f} | {', '.join(f'{v:.2f}' for v in values)} | "
            f"{med('bench (parent)')} | {med('pollers')} | {med('parse pool')} | "
            f"{med('redis-server')} | {med('nginx')} | {_fmt(results.client_cpu(key))} |"
        )
    lines += [
        "",
        "Targets, on wall-clock medians. The client-CPU ratio beside them is a cross-check"
        " that a busy shared machine disturbs less (it ignores how the work spreads on the cores).",
        "",
        "| target | ratio of medians | each repeat | client-CPU ratio | want | result |",
        "| --- | ---: | --- | ---: | --- | --- |",
    ]
    # (label, numerator, denominator, bound, at least?) -- 10,000 vs 1,000 feeds: <= 10.5
    targets = [
        ("cold: reader cold / ours cold", "reader cold", "ours cold", 3.0, True),
        ("cold: feedparser alone / ours cold", "feedparser alone", "ours cold", 0.9, True),
        ("warm: reader warm / ours warm", "reader warm", "ours warm", 5.0, True),
    ]
    if scale_base:
        base = f"ours cold, first {scale_base} feeds"
        label = f"scale: ours cold {n} / ours cold {scale_base}"
        targets.append((label, "ours cold", base, 1.05 * n / scale_base, False))
        # Not a target of the issue; the same bound, to show how the warm cycle scales.
        base = f"ours warm, first {scale_base} feeds"
        label = f"(no target) scale: ours warm {n} / ours warm {scale_base}"
        targets.append((label, "ours warm", base, 1.05 * n / scale_base, False))
    for label, top, bottom, bound, at_least in targets:
        a, b = m(top), m(bottom)
        value = a / b if a is not None and b else None
        tops, bottoms = results.samples.get(top, []), results.samples.get(bottom, [])
        each = [x / y for x, y in zip(tops, bottoms, strict=False)]  # per repeat
        ca, cb = results.client_cpu(top), results.client_cpu(bottom)
        cpu_ratio = ca / cb if ca is not None and cb else None
        if value is None:
            verdict = "not measured"
        else:
            verdict = "PASS" if (value >= bound if at_least else value <= bound) else "FAIL"
        lines.append(
            f"| {label} | {_fmt(value)} | {', '.join(f'{e:.2f}' for e in each) or '-'} | "
            f"{_fmt(cpu_ratio)} | {'>=' if at_least else '<='} {bound:g} | {verdict} |"
        )
    if results.commands:
        names = sorted(
            {c for per in results.commands.values() for c in per},
            key=lambda c: -max(per.get(c, 0.0) for per in results.commands.values()),
        )
        keys = list(results.commands)
        lines += [
            "",
            "Redis commands per source in a cycle (INFO commandstats):",
            "",
            "| command | " + " | ".join(keys) + " |",
            "| --- |" + " ---: |" * len(keys),
        ]
        for name in names:
            cells = " | ".join(f"{results.commands[k].get(name, 0.0):.2f}" for k in keys)
            lines.append(f"| {name} | {cells} |")
        totals = " | ".join(f"{sum(results.commands[k].values()):.2f}" for k in keys)
        lines.append(f"| all | {totals} |")
    if breakdown_rows:
        lines += [
            "",
            f"stage breakdown, one process, CPU seconds for all {n} feeds:",
            "",
            "| stage | s | ms per feed |",
            "| --- | ---: | ---: |",
        ]
        for label, seconds in breakdown_rows:
            lines.append(f"| {label} | {seconds:.2f} | {1000 * seconds / n:.2f} |")
    for note in results.notes:
        lines.append(f"\nnote: {note}")
    for failure in results.failed:
        lines.append(f"\nCHECK FAILED: {failure}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--feeds", type=int, default=1000, help="feeds in the farm (1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (3)")
    parser.add_argument(
        "--scale-base",
        type=int,
        default=None,
        help="also time our cold cycle on the first M feeds (default 1000 when --feeds > 1000)",
    )
    parser.add_argument("--no-reader", action="store_true", help="skip the reader library")
    parser.add_argument("--no-feedparser", action="store_true", help="skip feedparser alone")
    parser.add_argument(
        "--pollers",
        type=int,
        default=None,
        help="poller processes for ours (default: as `aggregator poll` picks; 1: in process)",
    )
    parser.add_argument("--nginx-workers", type=int, default=2, choices=(1, 2))
    parser.add_argument("--breakdown", action="store_true", help="time each stage alone")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        choices=("cold", "warm"),
        help="py-spy over one more such cycle (repeatable)",
    )
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples/s (200)")
    parser.add_argument("--profile-out", help="keep py-spy's raw stacks as PREFIX-cycle.txt")
    parser.add_argument("--workdir", type=Path, help="work here instead of a new temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)
    if args.feeds < 10 or args.repeat < 1:
        parser.error("--feeds must be at least 10 and --repeat at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
