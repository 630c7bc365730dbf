"""Serving merged feeds: the cached feed under gunicorn against a bare Flask route returning the
same bytes, and the time to answer on a cache miss.

    python bench/serve.py --repeat 3 [--duration 10]

`aggregator poll` (the whole command) stores 10 farm feeds × 20 entries in one category,
`bench`. Then `gunicorn 'aggregator.web:create_app()'` (gthread, 2 workers × 8 threads)
serves `/categories/bench.atom?limit=100`; bench/bare_app.py, under the same gunicorn
settings, answers the same path with that response's bytes and headers. wrk (2 threads, 32
connections) loads the two in turn, `--repeat` times; the CPU column is the server's (gunicorn
and its workers) per request, in µs. In this process, through Flask's test client on the same
store: requests on a miss (the category's index version bumped before each, so neither the
process's memo nor the rendering cached in Redis answers) and, beside them, cached requests;
then the same called as WSGI apps, without the test client, and cached requests to an app as
deployed (a fresh memo, answered before Flask).
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import pstats
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import (
    BIN,
    Bench,
    Report,
    Sample,
    Server,
    Target,
    bench,
    free_port,
    log,
    py_spy,
    server,
    timed_command,
    tree_cpu,
)

PATH = "/categories/bench.atom"
QUERY = "?limit=100"
HEADERS = ("Content-Type", "ETag", "Cache-Control", "Last-Modified")
GUNICORN = ["--worker-class", "gthread", "--workers", "2", "--threads", "8"]
GUNICORN += ["--no-control-socket", "--log-level", "warning"]


def gunicorn(app: str, port: int, env: dict[str, str], workdir: Path) -> Server:
    cmd = [str(BIN / "gunicorn"), *GUNICORN, "--bind", f"127.0.0.1:{port}", app]
    return server(cmd, port, workdir / f"gunicorn-{port}.log", env)


def fetch(port: int) -> tuple[bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", PATH + QUERY)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 200:
        raise SystemExit(f"{PATH}: HTTP {resp.status}: {body[:200]!r}")
    return body, {h: resp.headers[h] for h in HEADERS if resp.headers[h]}


def wrk(port: int, seconds: int) -> tuple[float, int]:
    """(requests per second, requests) of one wrk run; every answer must be a 200."""
    cmd = ["wrk", "-t2", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{port}{PATH}{QUERY}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk: errors\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


def in_process(b: Bench, runs: int, report: Report, profile: bool) -> str:
    """Requests through Flask's test client: on a miss, then cached; the same as WSGI calls;
    with `profile`, a cProfile of more misses."""
    from prometheus_client import REGISTRY
    from werkzeug.test import EnvironBuilder

    from aggregator import config, keys, web

    app = web.create_app(config.load(b.config_path, b.redis_url), version_check=0)
    client = app.test_client()
    store = app.extensions["aggregator"].store
    version = keys.version(keys.index("category", "bench"))

    def renders() -> float:
        sample = REGISTRY.get_sample_value("aggregator_feed_renders_total", {"format": "atom"})
        return sample or 0.0

    def request(miss: bool) -> Sample:
        if miss:
            store.client.incr(version)
        before = renders()
        started, cpu = time.perf_counter(), time.process_time()
        resp = client.get(PATH + QUERY)
        sample = Sample(time.perf_counter() - started, time.process_time() - cpu)
        if resp.status_code != 200 or renders() != before + miss:
            raise SystemExit(f"in process: HTTP {resp.status_code}, miss={miss} not as asked")
        return Sample(sample.seconds * 1000, sample.cpu * 1000)

    for miss in (True, False):
        request(miss)  # the first of each: imports, templates, connections
        for _ in range(runs):
            report.add(f"{'miss' if miss else 'cached'}, in process", request(miss))
    # The same app called as WSGI, without the test client's own work (its environ builder
    # and response wrapper, 0.05 to 0.3 ms a request here); and an app as deployed (the memo
    # checked once a second), which answers a fresh memo before Flask.
    environ = EnvironBuilder(path=PATH, query_string=QUERY[1:]).get_environ()
    deployed = web.create_app(config.load(b.config_path, b.redis_url))

    def called(wsgi: Any, miss: bool) -> Sample:
        if miss:
            store.client.incr(version)
        before = renders()
        statuses: list[str] = []
        started, cpu = time.perf_counter(), time.process_time()
        body = b"".join(wsgi(dict(environ), lambda status, _, *__: statuses.append(status)))
        sample = Sample(time.perf_counter() - started, time.process_time() - cpu)
        if statuses != ["200 OK"] or not body or renders() != before + miss:
            raise SystemExit(f"WSGI call: {statuses}, miss={miss} not as asked")
        return Sample(sample.seconds * 1000, sample.cpu * 1000)

    for name, wsgi, miss in (("miss", app, True), ("cached, memo fresh", deployed, False)):
        called(wsgi, miss)
        for _ in range(runs):
            report.add(f"{name}, WSGI call", called(wsgi, miss))
    if not profile:
        return ""
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [request(True) for _ in range(runs)])
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:20]  # type: ignore[attr-defined]
    lines = [f"cProfile of {runs} misses, own time per miss:", ""]
    lines += ["| own ms | inclusive ms | calls | function |", "| ---: | ---: | ---: | --- |"]
    for (filename, line, name), (_, calls, own, inclusive, _) in rows:
        where = f"{'/'.join(Path(filename).parts[-2:])}:{line}({name})"
        lines.append(
            f"| {own / runs * 1000:.3f} | {inclusive / runs * 1000:.3f} | {calls // runs} "
            f"| `{where}` |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--misses", type=int, default=200, help="requests timed in process")
    parser.add_argument("--profile", action="store_true", help="py-spy and cProfile too")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    load = Report("Serving a cached merged feed of 100 entries: gunicorn + wrk")
    inproc = Report("A miss and a cached request in process (Flask test client), ms", verbose=False)
    with bench(10, keep=args.keep) as b:
        b.configure(category="bench")
        env = b.env()
        timed_command([str(BIN / "aggregator"), "poll"], env, b.workdir / "poll.txt")
        real_port, bare_port = free_port(), free_port()
        with gunicorn("aggregator.web:create_app()", real_port, env, b.workdir) as real:
            body, headers = fetch(real_port)
            (b.workdir / "body.bin").write_bytes(body)
            bare_env = env | {
                "BARE_BODY": str(b.workdir / "body.bin"),
                "BARE_HEADERS": json.dumps(headers),
                "BARE_PATH": PATH,
                "PYTHONPATH": str(Path(__file__).parent),
            }
            with gunicorn("bare_app:create_app()", bare_port, bare_env, b.workdir) as bare:
                if fetch(bare_port)[0] != body:
                    raise SystemExit("the bare route does not answer the same bytes")
                log(f"{len(body):,} bytes, {body.count(b'<entry>')} entries")
                servers = {
                    "ours, cached": (real_port, real.pid),
                    "bare Flask": (bare_port, bare.pid),
                }
                for port, _ in servers.values():
                    wrk(port, 2)  # warm-up
                for _ in range(args.repeat):
                    for key, (port, pid) in servers.items():
                        cpu = tree_cpu(pid)
                        rps, requests = wrk(port, args.duration)
                        load.add(key, Sample(rps, (tree_cpu(pid) - cpu) / requests * 1e6))
                    load.repeat_done()
                spied = ""
                if args.profile:
                    for key, (port, pid) in servers.items():
                        log(f"profiling {key} under wrk")
                        target = ["--pid", str(pid), "--duration", str(args.duration), "--gil"]
                        with ThreadPoolExecutor(1) as spy:
                            job = spy.submit(py_spy, target, env, b.workdir / f"spy-{port}")
                            time.sleep(2)  # py-spy attaches
                            wrk(port, args.duration)
                            spied += f"\n\n### py-spy --gil: {key}, gunicorn under wrk\n\n"
                            spied += job.result()
        spied += "\n\n" + in_process(b, args.misses, inproc, args.profile)
        inproc.repeat_done()
    ratio = Target(
        "cached / bare", lambda r: r.median("ours, cached") / r.median("bare Flask"), 0.95, True
    )
    # less disturbed by a busy machine than requests/s, though not immune
    by_cpu = Target(
        "(cross-check) bare / cached, server CPU per request",
        lambda r: r.cpu("bare Flask") / r.cpu("ours, cached"),
        0.95,
        True,
    )
    load.notes.append(f"{len(body):,} bytes per answer; headers {headers}.")
    miss = Target("render on a miss", lambda r: r.median("miss, in process"), 1.5, False, " ms")
    text = load.render([ratio, by_cpu], columns=("req/s", "runs req/s", "server CPU µs/req"))
    text += "\n\n" + inproc.render([miss], columns=("ms", "runs ms", "CPU ms")) + spied
    load.save("serve", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
