"""Metrics and the fleet's reports at the store: what `aggregator status` and `/metrics` read,
with times of our choosing (the end-to-end tests are in test_readme_metrics.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from aggregator import metrics
from aggregator.store import Store, WorkerReport


def value(name: str, **labels: str) -> float:
    return float(REGISTRY.get_sample_value(name, labels) or 0)


def test_lease_takeovers_counted(store: Store) -> None:
    """A source claimed again after its lease ran out with no poll recorded is a takeover;
    one whose poll recorded its next due time is not."""
    start = datetime.now(UTC)
    store.sync_sources(["a", "b"], start)
    before = value("aggregator_lease_takeovers_total")
    lease = start + timedelta(seconds=60)
    assert sorted(store.claim_due(start, lease, 10)) == ["a", "b"]
    # "a" finishes (due again in 30 s); "b"'s worker died: its lease runs out.
    store.save_state("a", {"status": 200}, start + timedelta(seconds=30))
    later = start + timedelta(seconds=61)
    assert sorted(store.claim_due(later, later + timedelta(seconds=60), 10)) == ["a", "b"]
    assert value("aggregator_lease_takeovers_total") == before + 1
    # Both finish this time: nothing taken over on the next claim.
    for name in ("a", "b"):
        store.save_state(name, {"status": 200}, later + timedelta(seconds=1))
    again = later + timedelta(seconds=2)
    assert sorted(store.claim_due(again, again + timedelta(seconds=60), 10)) == ["a", "b"]
    assert value("aggregator_lease_takeovers_total") == before + 1


def test_fleet_reports_expire(store: Store) -> None:
    """A worker that died without a word leaves the view once its report is older than the
    horizon, and once the report itself expired; one that stops leaves at once."""
    now = datetime.now(UTC)
    report = WorkerReport("h:1:ab", "h", 1, now - timedelta(minutes=5), 10, 2, now)
    store.report_worker(report)
    store.report_worker(WorkerReport("h:2:cd", "h", 2, now, 0, 0, now - timedelta(seconds=90)))
    (seen,) = store.workers_seen(now)
    assert (seen.worker_id, seen.polls, seen.errors, seen.pid) == ("h:1:ab", 10, 2, 1)
    assert abs(seen.last_seen - now) < timedelta(milliseconds=1)
    assert store.workers_seen(now + timedelta(seconds=59)) == [seen]
    assert store.workers_seen(now + timedelta(seconds=61)) == []
    assert store.workers_seen(now + timedelta(seconds=61), within=120) == [seen]
    store.report_worker(report, ttl=1)
    time.sleep(1.2)
    assert store.workers_seen(now) == []  # the report expired: not listed within the horizon
    store.report_worker(report)
    store.forget_worker(report.worker_id)
    assert store.workers_seen(now) == []


def test_backoff_gauge_follows_outcomes() -> None:
    """A source is in backoff from its failed poll until one succeeds; the counts move once
    per poll."""

    class Seen:
        def __init__(self, source: str, ok: bool, new: int = 0) -> None:
            self.source, self.ok, self.new = source, ok, new
            self.not_modified, self.updated, self.merged = False, 0, 0

    before = value("aggregator_polls_total", outcome="failed")
    new = value("aggregator_entries_total", kind="new")
    in_backoff = value("aggregator_sources_in_backoff")
    metrics.polled(Seen("a-test-source", False))
    metrics.polled(Seen("a-test-source", False))
    assert value("aggregator_sources_in_backoff") == in_backoff + 1
    assert value("aggregator_polls_total", outcome="failed") == before + 2
    metrics.polled(Seen("a-test-source", True, new=3))
    assert value("aggregator_sources_in_backoff") == in_backoff
    assert value("aggregator_entries_total", kind="new") == new + 3
