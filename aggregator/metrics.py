"""Prometheus metrics: every metric this package exports, defined once, and the small calls the
stages make to move them. At the bottom: imports only prometheus_client, and that when a
metric is first counted or served; `aggregator poll`, which serves none, counts nothing
(`stop_counting`).

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
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

# prometheus_client's own switch for multiprocess mode (read by it at import, and here).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Polls: a fetch takes milliseconds to the timeout (20 s by default); parsing and saving one
# document milliseconds to the parse bound.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)

# The metrics, made with prometheus_client's import on first use (`_define`): a process that
# counts nothing (`aggregator status`, `check`, `--help`) never imports it. Read as attributes
# of this module (`metrics.CACHE_HIT.inc()`); once made they are plain module globals.
POLLS: Counter
FETCH_SECONDS: Histogram
PARSE_STORE_SECONDS: Histogram
ENTRIES: Counter
SOURCES_IN_BACKOFF: Gauge
LEASE_TAKEOVERS: Counter
REDIS_ERRORS: Counter
REDIS_RETRIES: Counter
FEED_REQUESTS: Counter
FEED_RENDERS: Counter
RENDER_CACHE: Counter
CONFLICT: Counter
FAILOVER: Counter
CACHE_HIT: Counter
CACHE_MISS: Counter
_OK: Counter
_NOT_MODIFIED: Counter
_FAILED: Counter
_NEW: Counter
_UPDATED: Counter
_MERGED: Counter

_counting = True
_defined = False
_defining = threading.Lock()


def _define() -> None:
    global POLLS, FETCH_SECONDS, PARSE_STORE_SECONDS, ENTRIES, SOURCES_IN_BACKOFF
    global LEASE_TAKEOVERS, REDIS_ERRORS, REDIS_RETRIES, FEED_REQUESTS, FEED_RENDERS
    global RENDER_CACHE, CONFLICT, FAILOVER, CACHE_HIT, CACHE_MISS
    global _OK, _NOT_MODIFIED, _FAILED, _NEW, _UPDATED, _MERGED, _defined
    from prometheus_client import Counter, Gauge, Histogram

    POLLS = Counter("aggregator_polls", "Polls finished, by outcome", ["outcome"])
    FETCH_SECONDS = Histogram(
        "aggregator_fetch_seconds",
        "Time to fetch a source's document (or its 304)",
        buckets=_SECONDS,
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
        "aggregator_redis_errors",
        "Redis failures that reached a worker's tick or poll, or a request",
    )
    REDIS_RETRIES = Counter(
        "aggregator_redis_retries",
        "Store operations made again: a transaction whose keys changed (conflict), a cluster "
        "call during a failover (failover)",
        ["reason"],
    )
    FEED_REQUESTS = Counter(
        "aggregator_feed_requests", "Feed requests served", ["format", "status"]
    )
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
    _defined = True


def _ready() -> bool:
    """Whether this process counts; its metrics made the first time it does."""
    if not _counting:
        return False
    if not _defined:
        with _defining:
            if not _defined:
                _define()
    return True


class _Uncounted:
    """What a metric is in a process that counts nothing: every call a no-op."""

    def labels(self, *values: str) -> _Uncounted:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def time(self) -> AbstractContextManager[None]:
        return nullcontext()


_UNCOUNTED = _Uncounted()


def __getattr__(name: str) -> Any:
    """A metric read before it is made: made now, or a no-op where nothing is counted."""
    if name not in __annotations__ or name in globals():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _ready():
        return _UNCOUNTED
    return globals()[name]


def made() -> None:
    """For a process that serves its metrics (the web app, a worker with --metrics-port):
    every metric made now, so that it is listed, at zero, before anything is counted."""
    _ready()


def stop_counting() -> None:
    """For a process whose counts no one can read (`aggregator poll`, which serves no
    /metrics): nothing is counted from now on, and prometheus_client is not imported for it."""
    global _counting
    _counting = False


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
    if not _ready():
        return outcome
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
    if not _ready():
        return
    PARSE_STORE_SECONDS.observe(seconds)
    if retries:
        CONFLICT.inc(retries)


def conflicted() -> None:
    """A store transaction is made again: what it read changed meanwhile."""
    _conflicts[0] += 1
    if _ready():
        CONFLICT.inc()


def conflicts() -> int:
    """Transactions made again in this process so far: a parse-pool worker reports those of
    one document back to the polling process, whose registry is the one served."""
    return _conflicts[0]


def exposition() -> tuple[bytes, str]:
    """This process's metrics as Prometheus text, and its media type; with
    PROMETHEUS_MULTIPROC_DIR set (gunicorn), every process's that writes there, summed."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    made()
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
        if not _ready():
            return
        child = _answered[(fmt, status)] = FEED_REQUESTS.labels(fmt, str(status))
    child.inc()
