"""Serving merged feeds from a Redis Cluster beside one Redis: a tag spanning 100 categories,
answered by the running service, cached and on a miss.

    python bench/cluster.py --repeat 3 [--misses 30] [--duration 5]

One farm of `--categories` feeds (nginx), each source in a category of its own and all under
the tag `wide`; `aggregator poll` (the whole command) stores them on a private redis-server
and, with the same feeds.yaml, on a private 3-master Redis Cluster (`harness.redis_cluster`,
started as the tests start theirs: `redis-server --cluster-enabled yes` ×3 joined by
`redis-cli --cluster create`; it needs redis-tools and the test extra). Each gets
its own `gunicorn 'aggregator.web:create_app()'` (gthread, 2 × 8). Per repeat, interleaved:
wrk on `/tags/wide.atom` (cached: requests/s), then `--misses` single requests each after the
tag's index version was bumped in Redis and the web processes' one-second memo had lapsed (a
whole miss: the index read, 50 entries read across the cluster's slots, render, cache).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import time
from contextlib import ExitStack

import yaml
from harness import (
    BIN,
    Report,
    Sample,
    Target,
    bench,
    free_port,
    log,
    redis_cluster,
    timed_command,
    tree_cpu,
)
from serve import gunicorn, wrk

PATH = "/tags/wide.atom"


def get(port: int) -> float:
    """One request's wall time in ms; it must be a 200 with 50 entries."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.perf_counter()
    conn.request("GET", PATH)
    resp = conn.getresponse()
    body = resp.read()
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    if resp.status != 200 or body.count(b"<entry>") != 50:
        raise SystemExit(f"{PATH} on :{port}: HTTP {resp.status}, {body.count(b'<entry>')} entries")
    return elapsed


def main() -> int:
    import serve

    from aggregator import keys
    from aggregator.store import Store

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--categories", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--misses", type=int, default=30, help="misses timed per repeat")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    serve.PATH, serve.QUERY = PATH, ""
    report = Report(f"A tag over {args.categories} categories, served: one Redis and a cluster")
    with ExitStack() as stack:
        b = stack.enter_context(bench(args.categories, keep=args.keep))
        cluster = stack.enter_context(redis_cluster(3))
        path = b.configure()
        data = yaml.safe_load(path.read_text("utf-8"))
        for n, source in enumerate(data["sources"]):
            source.update(category=f"c{n:03d}", tags=["wide"])
        path.write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
        deployments = {"one Redis": b.redis_url, "cluster": cluster.url}
        servers: dict[str, tuple[int, int, str]] = {}
        for name, url in deployments.items():
            env = b.env() | {"AGGREGATOR_REDIS_URL": url}
            poll = [str(BIN / "aggregator"), "poll"]
            report.add(
                f"{name}: aggregator poll, cold",
                timed_command(poll, env, b.workdir / f"{name}.txt"),
            )
            port = free_port()
            proc = stack.enter_context(
                gunicorn("aggregator.web:create_app()", port, env, b.workdir)
            )
            servers[name] = (port, proc.pid, url)
        for port, _, _ in servers.values():
            get(port)
            wrk(port, 2)  # warm-up
        for _ in range(args.repeat):
            for name, (port, pid, url) in servers.items():
                cpu = tree_cpu(pid)
                rps, requests = wrk(port, args.duration)
                report.add(
                    f"{name}: cached, req/s", Sample(rps, (tree_cpu(pid) - cpu) / requests * 1e6)
                )
                store = Store.from_url(url)
                version = keys.Layout.version(store.keys.index("tag", "wide"))
                times = []
                for _ in range(args.misses):
                    store.client.incr(version)
                    time.sleep(1.05)  # every web process's memo checks the version once a second
                    times.append(get(port))
                store.close()
                report.add(f"{name}: miss, ms", Sample(statistics.median(times), 0.0))
                log(f"  {name} misses: {', '.join(f'{t:.1f}' for t in times)}")
            report.repeat_done()
    targets = [
        Target(
            "cached: cluster / one Redis, req/s",
            lambda r: r.median("cluster: cached, req/s") / r.median("one Redis: cached, req/s"),
            0.95,
            True,
        ),
        Target("miss on the cluster", lambda r: r.median("cluster: miss, ms"), 20, False, " ms"),
        Target("miss on one Redis", lambda r: r.median("one Redis: miss, ms"), 20, False, " ms"),
    ]
    report.notes.append(
        "cached rows: requests/s by wrk -t2 -c32, CPU column the server's µs per request; miss "
        "rows: the median of each repeat's misses (one request each, after the index version "
        "was bumped and the memo lapsed), in ms."
    )
    text = report.render(targets, columns=("value", "runs", "CPU"))
    report.save("cluster", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
