"""README, "Metrics and the fleet view", as an operator meets them: `/metrics` of
`aggregator run` after its polls, `aggregator worker --metrics-port P`, gunicorn workers summed
under PROMETHEUS_MULTIPROC_DIR, and `aggregator status` listing the running workers (one Redis
and a cluster)."""

from __future__ import annotations

import signal
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests import readme_support
from tests.conftest import free_port
from tests.readme_support import (
    Site,
    Web,
    fetch,
    gunicorn_command,
    standard_sources,
    stop,
    table_rows,
    wait_for,
)

FLEET_TITLE = "Workers (seen in the last minute)"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels` in Prometheus text; 0 if absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def polls(text: str, outcome: str) -> float:
    return sample(text, "aggregator_polls_total", outcome=outcome)


def test_run_serves_poll_metrics(site: Site) -> None:
    """`aggregator run`: its /metrics counts the polls it made, by outcome, their fetch and
    parse+store times, the entries stored, and the source left in backoff."""
    sources = [*standard_sources(site), {"name": "missing", "url": site.server.url("gone.xml")}]
    site.write(sources)
    port = free_port()
    web = Web(f"http://127.0.0.1:{port}", site.start("run", "--port", str(port))).wait()

    def all_polled() -> str | None:
        text = web.ok("/metrics").text
        return text if polls(text, "ok") + polls(text, "failed") >= 3 else None

    text = wait_for(all_polled, "three polls counted", process=web.process)
    assert polls(text, "ok") == 2 and polls(text, "failed") == 1, text
    assert polls(text, "not_modified") == 0
    assert sample(text, "aggregator_fetch_seconds_count") == 3
    assert sample(text, "aggregator_parse_store_seconds_count") == 2  # the 404 parsed nothing
    assert sample(text, "aggregator_parse_store_seconds_sum") > 0
    assert sample(text, "aggregator_entries_total", kind="new") == 6  # 4 + 2, none merged
    assert sample(text, "aggregator_entries_total", kind="updated") == 0
    assert sample(text, "aggregator_sources_in_backoff") == 1
    assert sample(text, "aggregator_redis_errors_total") == 0

    # The web half counts its render cache: one rendering, then answers from it.
    for _ in range(3):
        web.ok("/all.atom")
    text = web.ok("/metrics").text
    assert sample(text, "aggregator_render_cache_total", result="miss") == 1
    assert sample(text, "aggregator_render_cache_total", result="hit") == 2


def test_worker_metrics_port(site: Site) -> None:
    """`aggregator worker --metrics-port P` serves its metrics on P, and they move with its
    polls; without the option it serves nothing."""
    site.write(
        standard_sources(site),
        settings={
            "min_interval": "1s",
            "default_interval": "1s",
            "per_host": {"concurrency": 2, "per_minute": 600},
        },
    )
    port = free_port()
    worker = site.start("worker", "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"

    def scraped() -> str | None:
        try:
            answer = fetch(url)
        except OSError:
            return None
        return answer.text if answer.status == 200 and polls(answer.text, "ok") >= 2 else None

    first = wait_for(scraped, "the worker's metrics count its first polls", process=worker)
    assert port in listening(worker.pid)
    assert sample(first, "aggregator_entries_total", kind="new") == 6

    # Every second each source is polled again: 304s, counted as they come.
    def moved() -> str | None:
        text = fetch(url).text
        return text if polls(text, "not_modified") >= 4 else None

    later = wait_for(
        moved,
        "the worker's metrics move with its polls",
        timeout=20,
        process=worker,
    )
    assert sample(later, "aggregator_fetch_seconds_count") >= 6
    assert polls(later, "failed") == 0
    assert stop(worker) == 0

    # Off by default: a worker started without the option listens on no port at all.
    plain = site.start("worker")
    polled = len(site.requests_to("tech.xml"))
    wait_for(lambda: len(site.requests_to("tech.xml")) > polled + 1, "the plain worker polls", 20)
    assert plain.poll() is None
    assert listening(plain.pid) == set()


def listening(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (Linux: its sockets' inodes in /proc/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_gunicorn_workers_summed(site: Site, tmp_path: Path) -> None:
    """Under gunicorn with PROMETHEUS_MULTIPROC_DIR, /metrics from any worker sums every
    worker's counts. One worker is kept busy by a request that has not finished arriving,
    so the other answers the feed five times; then the first answers once."""
    site.write(standard_sources(site))
    assert site.poll().returncode == 0
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    port = free_port()
    web = site.web(
        *gunicorn_command(port),
        env={**site.env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
        port=port,
    )
    wait_for(lambda: len(list(multiproc.glob("counter_*.db"))) >= 2, "both workers started")
    with socket.create_connection(("127.0.0.1", port)) as held:
        held.sendall(f"GET /all.atom HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        time.sleep(0.5)  # taken by one worker, which now waits for the rest of it
        for _ in range(5):
            web.ok("/all.atom")
        held.sendall(b"Connection: close\r\n\r\n")
        assert held.recv(64).startswith(b"HTTP/1.1 200")
    for _ in range(4):  # whichever worker answers
        text = web.ok("/metrics").text
        assert sample(text, "aggregator_render_cache_total", result="miss") == 1, text
        assert sample(text, "aggregator_render_cache_total", result="hit") == 5
        assert sample(text, "aggregator_feed_requests_total", format="atom", status="200") == 6


def workers_table(site: Site) -> dict[str, dict[str, str]]:
    """`aggregator status`'s fleet table, by worker id ({} when it says there is none)."""
    text = site.status_text()
    assert "Sources (times in UTC)" in text
    if "No workers seen in the last minute." in text:
        return {}
    _, title, rest = text.partition(FLEET_TITLE)
    assert title, text
    return table_rows(rest)


def check_fleet_view(site: Site) -> None:
    site.write(standard_sources(site) + [{"name": "missing", "url": site.server.url("x.xml")}])
    assert workers_table(site) == {}
    worker = site.start("worker")

    def listed() -> dict[str, str] | None:
        rows = workers_table(site)
        mine = [r for r in rows.values() if r["pid"] == str(worker.pid)]
        return mine[0] if mine and int(mine[0]["polls"]) >= 3 else None

    row = wait_for(listed, "status lists the worker with its polls", 30, process=worker)
    assert row["host"] == socket.gethostname()
    assert row["errors"] == "1"  # the missing source
    started = datetime.strptime(row["started"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - started) < timedelta(seconds=60)
    assert stop(worker, signal.SIGTERM) == 0
    assert workers_table(site) == {}  # a worker that stops says so


def test_status_lists_running_workers(site: Site) -> None:
    check_fleet_view(site)


def test_status_lists_running_workers_on_a_cluster(cluster_site: Site) -> None:
    check_fleet_view(cluster_site)


def test_a_worker_without_metrics_port_counts_nothing(site: Site) -> None:
    """A worker whose metrics no one can read (no --metrics-port) polls as any other and
    reports to the fleet view, but never imports prometheus_client to count."""
    site.write(standard_sources(site))
    # Its stderr (where -X importtime writes) goes to the log `Site` keeps for it.
    worker = site._spawn([sys.executable, "-X", "importtime", "-m", "aggregator", "worker"], None)

    def polled() -> bool:
        rows = workers_table(site)
        return any(r["pid"] == str(worker.pid) and int(r["polls"]) >= 2 for r in rows.values())

    wait_for(polled, "the worker polled both sources", 30, process=worker)
    assert stop(worker, signal.SIGTERM) == 0
    imported = readme_support._LOGS[worker.pid].read_text(encoding="utf-8", errors="replace")
    assert "aggregator.scheduler" in imported  # the log is the worker's
    assert "prometheus_client" not in imported
