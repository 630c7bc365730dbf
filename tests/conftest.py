"""Real parts for every test: a private redis-server on a free loopback port, and a real HTTP
server on 127.0.0.1 serving fixture feeds (with ETags, so conditional GET is exercised)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from aggregator import config as config_module
from aggregator.config import Config
from aggregator.fetch import Fetcher
from aggregator.store import Store
from aggregator.update import Outcome, Updater
from tests.clusters import Cluster
from tests.processes import free_port, redis_server_path, wait_until_answering

DATA = Path(__file__).parent / "data"
FEEDS = DATA / "feeds"
SCHEMAS = Path(__file__).parent / "schemas"


@pytest.fixture(scope="session", autouse=True)
def config_cache_home() -> Iterator[Path]:
    """The checked feeds.yaml files that commands keep (aggregator/config_cache.py) go to a
    folder of the session's, for this process and every command it starts, not to ~/.cache."""
    folder = Path(tempfile.mkdtemp(prefix="aggregator-test-cache-"))
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before
    shutil.rmtree(folder, ignore_errors=True)


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server of our own for the whole session, never the machine's shared one."""
    binary = redis_server_path()
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="aggregator-test-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    wait_until_answering(client, process, 10, "test redis-server")
    client.close()
    yield url
    process.terminate()
    process.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    s = Store.from_url(redis_url)
    yield s
    s.close()


# --- Redis Cluster (tests/clusters.py; without redis-cli skipped, under CI=true failed) -----


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    """Three masters, no replicas, for the whole session; tests take it through `cluster`."""
    started = Cluster.started(masters=3)
    yield started
    started.stop()


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:
    """The session's cluster, whole and empty."""
    redis_cluster.wait_ok(10)
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def failover_cluster() -> Iterator[Cluster]:
    """Three masters with a replica each, of this test alone, its nodes judged failed after
    2 s without an answer, so a killed master's replica takes over within seconds."""
    started = Cluster.started(masters=3, replicas=1, node_timeout_ms=2000)
    yield started
    started.stop()


# --- the feed server -----------------------------------------------------------------------


@dataclass
class Route:
    """A scripted answer for one path: status, headers, body, and an optional delay."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    status: int


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients closing kept-alive connections is normal here; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FeedServer:
    """Serves files under `root` (a copy of tests/data/feeds) with ETag and Last-Modified,
    answering conditional requests with 304, plus scripted `routes`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.routes: dict[str, Route | Callable[[], Route]] = {}
        self.requests: list[Request] = []
        self.etags = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def put(self, name: str, body: bytes | str) -> str:
        data = body.encode("utf-8") if isinstance(body, str) else body
        (self.root / name).write_bytes(data)
        return self.url(name)

    def copy(self, fixture: str, name: str | None = None) -> str:
        return self.put(name or fixture, (FEEDS / fixture).read_bytes())

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        route = self.routes.get(path)
        if route is not None:
            answer = route() if callable(route) else route
            time.sleep(answer.delay)
            self._send(h, answer.status, answer.headers, answer.body)
            return
        file = self.root / path.lstrip("/")
        if not file.is_file():
            self._send(h, 404, {"Content-Type": "text/plain"}, b"not found")
            return
        body = file.read_bytes()
        headers = {"Content-Type": _content_type(file.name)}
        if self.etags:
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            headers["ETag"] = etag
            headers["Last-Modified"] = formatdate(file.stat().st_mtime, usegmt=True)
            if h.headers.get("If-None-Match") == etag:
                self._send(h, 304, {"ETag": etag}, b"")
                return
        self._send(h, 200, headers, body)

    def _send(
        self, h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        self.requests.append(Request(h.path, dict(h.headers.items()), status))
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if status != 304:
            h.wfile.write(body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/feed+json"
    if name.endswith((".xml", ".rdf")):
        return "application/xml"
    return "application/octet-stream"


@pytest.fixture
def feed_server(tmp_path: Path) -> Iterator[FeedServer]:
    root = tmp_path / "www"
    shutil.copytree(FEEDS, root)
    server = FeedServer(root)
    yield server
    server.close()


# --- configuration -------------------------------------------------------------------------


@dataclass
class ConfigWriter:
    """Writes a feeds.yaml under a temporary folder and points the environment at it."""

    path: Path
    redis_url: str
    monkeypatch: pytest.MonkeyPatch

    def write(self, sources: list[dict[str, Any]], **extra: Any) -> Config:
        # Retention as shipped: the fixtures, dated 2022 and 2024, are listed, so they stay.
        settings = {
            "min_interval": "1s",
            "timeout": "5s",
            "per_host": {"concurrency": 8, "per_minute": 6000},
            **extra.pop("settings", {}),
        }
        document = {"settings": settings, "sources": sources, **extra}
        self.path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        self.monkeypatch.setenv(config_module.ENV_CONFIG, str(self.path))
        self.monkeypatch.setenv(config_module.ENV_REDIS_URL, self.redis_url)
        return config_module.from_environ()


@pytest.fixture
def write_config(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> ConfigWriter:
    return ConfigWriter(tmp_path / "feeds.yaml", redis_url, monkeypatch)


@pytest.fixture
def environ() -> dict[str, str]:
    """The environment for a subprocess: this one, less any Redis URL from the machine."""
    env = dict(os.environ)
    env.pop(config_module.ENV_REDIS_URL, None)
    return env


def poll_now(config: Config, store: Store, names: Sequence[str], now: datetime) -> list[Outcome]:
    """Poll the named sources once, as `aggregator poll` does, with the clock stopped at `now`
    (parsing in this process)."""

    async def run() -> list[Outcome]:
        async with Fetcher(config.settings) as fetcher:
            updater = Updater(config, store, fetcher, clock=lambda: now)
            return await updater.poll_many([config.source(n) for n in names])

    return asyncio.run(run())


@pytest.fixture
def site(
    tmp_path: Path, redis_url: str, feed_server: FeedServer, environ: dict[str, str]
) -> Iterator[Any]:
    """One aggregator installation for the README's end-to-end tests (tests/readme_support.py:
    its own feeds.yaml with the shipped defaults, the CLI and web processes as users start
    them), stopped after the test."""
    from tests.readme_support import make_site

    s = make_site(tmp_path, redis_url, feed_server, environ)
    yield s
    s.stop_all()


@pytest.fixture
def cluster_site(
    tmp_path: Path, cluster: Any, feed_server: FeedServer, environ: dict[str, str]
) -> Iterator[Any]:
    """An installation like `site`, on a 3-master Redis Cluster (redis+cluster://)."""
    from tests.readme_support import make_site

    (tmp_path / "cluster").mkdir()
    s = make_site(tmp_path / "cluster", cluster.url, feed_server, environ)
    yield s
    s.stop_all()
