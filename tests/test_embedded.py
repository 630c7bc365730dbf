"""`aggregator run` with no Redis URL anywhere: a real embedded redis-server under data_dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from aggregator.embedded import EmbeddedRedis, ping
from tests.conftest import FeedServer, free_port


def redis_pids(folder: Path) -> list[int]:
    """redis-server processes whose command line names `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if "redis-server" in cmdline and str(folder) in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bytes(response.read())
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} never answered") from None
            time.sleep(0.1)


def start_run(folder: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator", "run", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def entry_count(base: str) -> int:
    return len(json.loads(urllib.request.urlopen(base + "/all.json", timeout=5).read())["items"])


def test_run_embeds_redis_keeps_data_and_leaves_nothing_running(
    tmp_path: Path, feed_server: FeedServer, environ: dict[str, str]
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "feeds.yaml").write_text(
        "settings: {min_interval: 1s, data_dir: data}\n"
        f"sources: [{{name: tech, url: '{feed_server.url('rss2.xml')}', tags: [tech]}}]\n",
        encoding="utf-8",
    )
    env = dict(environ)
    env.pop("AGGREGATOR_CONFIG", None)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    process = start_run(site, port, env)
    try:
        assert wait_for(base + "/readyz", process) == b"ready\n"
        deadline = time.monotonic() + 30
        while entry_count(base) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert entry_count(base) == 3
        assert len(redis_pids(site)) == 1
        # a second command joins the running server instead of starting another
        status = subprocess.run(
            [sys.executable, "-m", "aggregator", "status"],
            cwd=site,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert "tech" in status.stdout and "200" in status.stdout
        assert len(redis_pids(site)) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert redis_pids(site) == []
    assert (site / "data" / "dump.rdb").is_file()

    # restarted with the feed gone: the entries come back from the data directory
    (feed_server.root / "rss2.xml").unlink()
    process = start_run(site, port, env)
    try:
        wait_for(base + "/healthz", process)
        assert entry_count(base) == 3
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert redis_pids(site) == []


def test_embedded_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from aggregator.embedded import EmbeddedRedis\n"
        "EmbeddedRedis(Path(sys.argv[1])).start()\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    assert parent.stdout.readline() == b"up\n"
    assert len(redis_pids(tmp_path)) == 1
    parent.kill()
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while redis_pids(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_pids(tmp_path) == []


def test_long_data_dir_uses_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis(deep)
    assert len(str(server.socket)) <= 100
    with server as url:
        assert url.startswith("unix://")
        assert ping(server.socket)
        assert server.owned
    assert not ping(server.socket)


def test_second_handle_shares_and_does_not_stop_the_server(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as url:
        joiner = EmbeddedRedis(tmp_path)
        assert joiner.start() == url
        assert not joiner.owned
        joiner.stop()
        assert ping(joiner.socket), "a joiner must not stop the owner's server"
    assert not ping(EmbeddedRedis(tmp_path).socket)
    assert os.listdir(tmp_path)  # data dir created
