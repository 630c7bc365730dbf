"""Prometheus metrics: every metric this package exports, defined once, and the small calls the
stages make to move them. At the bottom: imports only prometheus_client.

What it does not do: serve them (the web app's `/metrics`, and `aggregator worker
--metrics-port`, do), or count across processes by itself. A parse-pool worker's figures reach
the polling process in the result it already sends back (`update.Stored`): only the polling
process's registry is served. Under gunicorn with `PROMETHEUS_MULTIPROC_DIR` set, prometheus_client
keeps each worker's values in files there and `exposition` sums them.

Labels are few and bounded (an outcome, a feed format, an entry kind): never a source name.
The hot path binds each label child once, here, so a poll pays one lock per counter.
"""

from __future__ import annotations

import os
from typing import Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# prometheus_client's own switch for multiprocess mode (read by it at import, and here).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Polls: a fetch takes milliseconds to the timeout (20 s by default); parsing and saving one
# document milliseconds to the parse bound.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)

POLLS = Counter("aggregator_polls", "Polls finished, by outcome", ["outcome"])
FETCH_SECONDS = Histogram(
    "aggregator_fetch_seconds", "Time to fetch a source's document (or its 304)", buckets=_SECONDS
)
PARSE_STORE_SECONDS = Histogram(
    "aggregator_parse_store_seconds",
    "Time a parse-pool worker took to parse, normalize and save a changed document",
    buckets=_SECONDS,
)
ENTRIES = Counter("aggregator_entries", "Entries stored by polls, by kind", ["kind"])
SOURCES_IN_BACKOFF = Gauge(
    "aggregator_sources_in_backoff",
    "Sources whose last poll by this process failed (polled again with backoff)",
    multiprocess_mode="max",
)
LEASE_TAKEOVERS = Counter(
    "aggregator_lease_takeovers",
    "Sources claimed again after an earlier claim's lease ran out with its poll unfinished",
)
REDIS_ERRORS = Counter(
    "aggregator_redis_errors", "Redis failures that reached a worker's tick or poll, or a request"
)
REDIS_RETRIES = Counter(
    "aggregator_redis_retries",
    "Store operations made again: a transaction whose keys changed (conflict), a cluster "
    "call during a failover (failover)",
    ["reason"],
)
FEED_REQUESTS = Counter("aggregator_feed_requests", "Feed requests served", ["format", "status"])
FEED_RENDERS = Counter("aggregator_feed_renders", "Feeds rendered (cache misses)", ["format"])
RENDER_CACHE = Counter(
    "aggregator_render_cache",
    "Feed answers from a rendering made before (hit: this process's memory or Redis) or "
    "rendered for this request (miss)",
    ["result"],
)

_OK = POLLS.labels("ok")
_NOT_MODIFIED = POLLS.labels("not_modified")
_FAILED = POLLS.labels("failed")
_NEW = ENTRIES.labels("new")
_UPDATED = ENTRIES.labels("updated")
_MERGED = ENTRIES.labels("merged")
CONFLICT = REDIS_RETRIES.labels("conflict")
FAILOVER = REDIS_RETRIES.labels("failover")
CACHE_HIT = RENDER_CACHE.labels("hit")
CACHE_MISS = RENDER_CACHE.labels("miss")

_failing: set[str] = set()  # sources whose last poll in this process failed
_conflicts = [0]  # CONFLICT's count in this process, readable (a Counter's value is not)


class Poll(Protocol):
    """What a poll's outcome tells the metrics (`update.Outcome` is one)."""

    @property
    def source(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def not_modified(self) -> bool: ...
    @property
    def new(self) -> int: ...
    @property
    def updated(self) -> int: ...
    @property
    def merged(self) -> int: ...


P = TypeVar("P", bound=Poll)


def polled(outcome: P) -> P:
    """Count a finished poll (its outcome, the entries it stored, whether its source is now in
    backoff); returns `outcome`, so a poll can count it as it returns it."""
    if outcome.ok:
        (_NOT_MODIFIED if outcome.not_modified else _OK).inc()
        if outcome.new:
            _NEW.inc(outcome.new)
        if outcome.updated:
            _UPDATED.inc(outcome.updated)
        if outcome.merged:
            _MERGED.inc(outcome.merged)
        if outcome.source in _failing:
            _failing.discard(outcome.source)
            SOURCES_IN_BACKOFF.set(len(_failing))
    else:
        _FAILED.inc()
        if outcome.source not in _failing:
            _failing.add(outcome.source)
            SOURCES_IN_BACKOFF.set(len(_failing))
    return outcome


def stored(seconds: float, retries: int) -> None:
    """A changed document was parsed and saved in `seconds`, its transactions made again
    `retries` times (measured where it ran: a parse-pool worker)."""
    PARSE_STORE_SECONDS.observe(seconds)
    if retries:
        CONFLICT.inc(retries)


def conflicted() -> None:
    """A store transaction is made again: what it read changed meanwhile."""
    _conflicts[0] += 1
    CONFLICT.inc()


def conflicts() -> int:
    """Transactions made again in this process so far: a parse-pool worker reports those of
    one document back to the polling process, whose registry is the one served."""
    return _conflicts[0]


def exposition() -> tuple[bytes, str]:
    """This process's metrics as Prometheus text, and its media type; with
    PROMETHEUS_MULTIPROC_DIR set (gunicorn), every process's that writes there, summed."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


_answered: dict[tuple[str, int], Counter] = {}


def feed_answered(fmt: str, status: int) -> None:
    """A feed request answered: its child of FEED_REQUESTS bound once per format and status
    (`labels()` on every request showed in the cached feed's profile)."""
    child = _answered.get((fmt, status))
    if child is None:
        child = _answered[(fmt, status)] = FEED_REQUESTS.labels(fmt, str(status))
    child.inc()
