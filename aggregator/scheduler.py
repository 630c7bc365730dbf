"""The scheduler: polls every enabled source at its interval, for as long as the worker runs.

Due times live in Redis (one sorted set), not in this process, so any number of workers on any
machines share the work: APScheduler ticks once a second, and each tick claims the sources that
are due, moving their due time ahead by a lease in the same atomic step (`Store.claim_due`).
A poll that finishes records the real next due time; one whose worker died comes due again when
the lease runs out. A poll still running when a third of its lease is left (one waiting its turn
at a busy host, a slow parse) has its lease renewed by the tick, so no other worker claims that
source meanwhile. A poll that Redis cut short (an outage, a failover) is no failure of its
source: nothing about it could be recorded, so its source is given back, due at once, on the
first tick that reaches Redis again, rather than waiting out its lease. `aggregator reload`
bumps a counter that every worker checks on each tick. The only module that imports
apscheduler.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from aggregator import metrics
from aggregator.bounded import ParsePool
from aggregator.config import Config, Source
from aggregator.errors import AggregatorError, ConfigError, StorageError
from aggregator.fetch import Fetcher
from aggregator.push import Push
from aggregator.store import Store, WorkerReport
from aggregator.update import PARSE_MODULES, Clock, Outcome, Updater, use_enough_threads, utcnow

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
PUSH_TICK_SECONDS = 1.0  # WebSub: distributions saved, subscriptions looked after
MAX_IN_FLIGHT = 64
REPORT_SECONDS = 5.0  # how often a worker writes its report for `aggregator status`


def parse_pool() -> Executor:
    """Processes for parsing (feedparser is pure Python: threads would share one core), each
    parse bounded in time and memory, a dead worker replaced (aggregator/bounded.py)."""
    return ParsePool(max_workers=os.cpu_count() or 1, preload=PARSE_MODULES)


class Worker:
    def __init__(
        self,
        load_config: Callable[[], Config],
        store: Store,
        *,
        config: Config | None = None,
        executor: Executor | None = None,
        tick: float = TICK_SECONDS,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Clock = utcnow,
        push_tick: float = PUSH_TICK_SECONDS,
        lease: float | None = None,
    ) -> None:
        self._load_config = load_config
        self.config = config or load_config()
        self.store = store
        self.executor = executor
        self.tick_seconds = tick
        self.max_in_flight = max_in_flight
        self.clock = clock
        self.polls = 0
        self.errors = 0  # polls that failed, or were cut short by Redis
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:6]}"
        self.started = clock()
        self._tasks: set[asyncio.Task[Outcome | None]] = set()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fetcher: Fetcher | None = None
        self._updater: Updater | None = None
        self._push: Push | None = None
        self.push_tick_seconds = push_tick
        self._reload_version = 0
        self._lease = lease
        # Polls under way → the due time their claim wrote (their lease), renewed by the tick.
        self._leases: dict[str, datetime] = {}
        # Sources whose poll Redis cut short → their lease: given back on the next tick.
        self._give_back: dict[str, datetime] = {}
        self._redis_down = False  # said once per outage, and again when it ends

    # --- lifecycle ------------------------------------------------------------------------

    def run(self, *, handle_signals: bool = True) -> None:
        """Poll until `stop()` is called (or SIGINT/SIGTERM; SIGHUP reloads feeds.yaml)."""
        asyncio.run(self._main(handle_signals))

    def stop(self) -> None:
        """Safe from any thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)

    async def _main(self, handle_signals: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        use_enough_threads()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop.set)
            self._loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        own_executor = self.executor is None
        executor = self.executor or parse_pool()
        self._reload_version = await asyncio.to_thread(self.store.reload_version)
        await self._apply(self.config, executor)
        # One job runs every duty when its period comes (APScheduler's wake-ups and job runs
        # were a tenth of an idle worker's loop with one job per duty); each duty runs as a
        # task of its own, never two at once, so a slow one holds up none of the others.
        duties = [
            _Duty(self._tick, self.tick_seconds),
            _Duty(self._push_tick, self.push_tick_seconds),
            _Duty(self._report, REPORT_SECONDS),
        ]
        scheduler = AsyncIOScheduler(event_loop=self._loop)
        scheduler.add_job(
            _start_due,
            "interval",
            args=[duties],
            seconds=min(duty.period for duty in duties),
            next_run_time=self.clock(),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            id="duties",
        )
        scheduler.start()
        # What start-up made (the HTTP client, the updater, the scheduler's jobs) lives as long
        # as the worker: frozen, the collections that every round of polls sets off do not
        # walk it again (gc.freeze's docs). Collected first, so no garbage is frozen with it.
        gc.collect()
        gc.freeze()
        log.info("worker started: %d sources", len(self.config.enabled_sources))
        try:
            await self._stop.wait()
        finally:
            scheduler.shutdown(wait=False)
            # The duties run as tasks of their own: a tick finishing now would start polls on
            # a client about to close, a report would list the worker again after it left.
            running = [d.task for d in duties if d.task is not None and not d.task.done()]
            for started in running:
                started.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await self._report(stopping=True)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._fetcher is not None:
                await self._fetcher.__aexit__(None, None, None)
            if own_executor:
                executor.shutdown(cancel_futures=True)
            log.info("worker stopped after %d polls", self.polls)

    def _request_reload(self) -> None:
        self._reload_version = -1  # differs from any counter: the next tick reloads

    async def _apply(self, config: Config, executor: Executor) -> None:
        """Start using `config`: a new HTTP client for its settings, the due set in step."""
        old = self._fetcher
        fetcher = await Fetcher(config.settings).__aenter__()
        self.config, self._fetcher = config, fetcher
        self._updater = Updater(config, self.store, fetcher, executor=executor, clock=self.clock)
        self._push = Push(config, self.store, fetcher, executor=executor, clock=self.clock)
        names = [s.name for s in config.enabled_sources]
        urls = {s.name: s.url for s in config.enabled_sources}
        await asyncio.to_thread(self.store.sync_sources, names, self.clock(), urls)
        if old is not None:
            running = list(self._tasks)
            asyncio.get_running_loop().create_task(_close_after(old, running))

    # --- the tick -------------------------------------------------------------------------

    @property
    def lease(self) -> timedelta:
        """How far ahead a claim moves a source's due time: a poll's request, its parse, and
        room to spare (renewed while the poll runs)."""
        seconds = self._lease or self.config.settings.timeout * 3 + 60
        return timedelta(seconds=seconds)

    async def _tick(self) -> None:
        try:
            # One thread hop for the tick's Redis calls (the reload counter, the leases, the
            # claim): a tick runs every second whether or not anything is due, and on an idle
            # worker each hop cost as much as its calls.
            claim = self._leases_to_move(self.clock())
            # The version as of now: a SIGHUP during the hop below asks the next tick to
            # reload, and must not cost this one the claims it has made meanwhile.
            known = self._reload_version
            version, claimed = await asyncio.to_thread(self._claim, claim, known)
            if version != known:
                await self._reload(version)
                claim = self._leases_to_move(self.clock())  # under the configuration now in use
                _, claimed = await asyncio.to_thread(self._claim, claim, None)
            updater = self._updater
            assert updater is not None
            names = self._leases_moved(claim, *claimed)
        except StorageError as err:
            metrics.REDIS_ERRORS.inc()
            if not self._redis_down:
                log.error("%s; polling waits for Redis", err)
            self._redis_down = True
            return
        except AggregatorError as err:
            log.error("tick failed: %s", err)
            return
        if self._redis_down:
            log.info("Redis answers again; polling resumes")
            self._redis_down = False
        for name in names:
            try:
                source = self.config.source(name)
            except KeyError:
                continue  # removed from feeds.yaml since it was scheduled
            self._leases[name] = claim.until
            task = asyncio.get_running_loop().create_task(self._poll(updater, source, claim.until))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _leases_to_move(self, now: datetime) -> _Claim:
        """What a tick at `now` asks of Redis: the sources whose poll Redis cut short, given
        back (due now); the leases of polls still under way with a third of their lease left,
        renewed; as many due sources as this worker has room for, claimed."""
        lease = self.lease
        ending = {n: u for n, u in self._leases.items() if u - now < lease / 3}
        free = self.max_in_flight - len(self._tasks)
        return _Claim(now, now + lease, dict(self._give_back), ending, free)

    def _claim(
        self, claim: _Claim, known: int | None
    ) -> tuple[int | None, tuple[list[str], list[str], list[str]]]:
        """In a thread: the reload counter (unless `known` is None); if it is still `known`,
        `claim`'s calls: the names given back, renewed and claimed."""
        version = None if known is None else self.store.reload_version()
        if version != known:
            return version, ([], [], [])
        store = self.store
        moved = store.move_leases(claim.back, claim.now, renew=False) if claim.back else []
        renewed = store.move_leases(claim.ending, claim.until, renew=True) if claim.ending else []
        return version, (moved, renewed, store.claim_due(claim.now, claim.until, claim.free))

    def _leases_moved(
        self, claim: _Claim, moved: list[str], renewed: list[str], names: list[str]
    ) -> list[str]:
        """Note what `_claim` did to the leases; the names claimed."""
        for name in claim.back:
            self._give_back.pop(name, None)
        if moved:
            log.info("%d source(s) Redis had cut short are due again", len(moved))
        for name in renewed:
            if name in self._leases:  # not finished meanwhile
                self._leases[name] = claim.until
        return names

    async def _push_tick(self) -> None:
        """WebSub's work (aggregator/push.py); it logs its own failures."""
        if self._push is not None:
            await self._push.tick()

    async def _poll(self, updater: Updater, source: Source, lease: datetime) -> Outcome | None:
        push = self._push
        try:
            outcome = await updater.poll(source)
        except StorageError as err:
            # Not the source's failure: nothing was recorded, and no backoff is due. It is
            # given back (due at once) as soon as a tick reaches Redis again.
            log.warning(
                "poll %s cut short: %s; it is polled again once Redis answers", source.name, err
            )
            metrics.REDIS_ERRORS.inc()
            self.errors += 1
            self._give_back[source.name] = self._leases.get(source.name, lease)
            return None
        except AggregatorError as err:
            self.errors += 1
            log.error("poll %s: %s", source.name, err)
            return None
        except Exception:  # a bug must not kill the worker; it is logged with its traceback
            log.exception("poll %s crashed", source.name)
            return None
        finally:
            self._leases.pop(source.name, None)
        self.polls += 1
        self.errors += not outcome.ok
        if source.websub and push is not None:
            try:
                await push.after_poll(source, outcome)
            except AggregatorError as err:
                log.error("websub %s: %s", source.name, err)
        if outcome.ok:
            # An unchanged document (a 304) is said at DEBUG (`aggregator --debug worker`):
            # at INFO every source said so every interval (50 lines a second for a thousand
            # sources every 20 s), burying the lines that say something, and formatting
            # them was a fifth of the event loop's work in a warm round. `aggregator status`
            # shows each source's last poll, and the worker's count of polls.
            (log.debug if outcome.not_modified else log.info)(
                "poll %s: HTTP %s, %d entries, %d new, %d updated",
                outcome.source,
                outcome.status,
                outcome.entries,
                outcome.new,
                outcome.updated,
            )
        else:
            log.warning("poll %s failed: %s", outcome.source, outcome.error)
        return outcome

    async def _report(self, *, stopping: bool = False) -> None:
        """Tell the fleet view (`aggregator status`) this worker runs, and what it has done;
        or, `stopping`, that it is gone."""
        report = WorkerReport(
            self.worker_id, self.host, self.pid, self.started, self.polls, self.errors, self.clock()
        )
        try:
            if stopping:
                await asyncio.to_thread(self.store.forget_worker, self.worker_id)
            else:
                await asyncio.to_thread(self.store.report_worker, report)
        except AggregatorError as err:
            if isinstance(err, StorageError):
                metrics.REDIS_ERRORS.inc()
            log.warning("cannot report this worker: %s", err)

    async def _reload(self, version: int | None) -> None:
        """feeds.yaml again: `aggregator reload` (or SIGHUP) asked for it since the last tick."""
        assert version is not None
        self._reload_version = version
        try:
            config = await asyncio.to_thread(self._load_config)
        except ConfigError as err:
            log.error("reload refused, keeping the running configuration: %s", err)
            return
        assert self._updater is not None and self._updater.executor is not None
        await self._apply(config, self._updater.executor)
        log.info("reloaded %s: %d sources", config.path, len(config.enabled_sources))


@dataclass(eq=False, slots=True)
class _Duty:
    """One of the worker's periodic duties: started once its period has passed since it last
    started, unless it still runs (a missed run is not made up)."""

    run: Callable[[], Coroutine[Any, Any, None]]
    period: float
    due: float = float("-inf")  # loop time
    task: asyncio.Task[None] | None = None


async def _start_due(duties: list[_Duty]) -> None:
    loop = asyncio.get_running_loop()
    now = loop.time()
    for duty in duties:
        if now >= duty.due and (duty.task is None or duty.task.done()):
            # A little early is still due: the job's own wake-ups drift by a few ms.
            duty.due = now + duty.period * 0.9
            duty.task = loop.create_task(duty.run())
            duty.task.add_done_callback(_said_if_crashed)


def _said_if_crashed(task: asyncio.Task[None]) -> None:
    """Log a duty's unexpected failure (as APScheduler did for a job): it runs again next
    period."""
    if not task.cancelled() and (err := task.exception()) is not None:
        log.error("%s crashed", task.get_coro(), exc_info=err)


@dataclass(frozen=True, slots=True)
class _Claim:
    """A tick's calls to Redis (`Worker._leases_to_move`)."""

    now: datetime
    until: datetime  # the lease of what it claims or renews
    back: dict[str, datetime]  # cut short by Redis → its lease: due again now
    ending: dict[str, datetime]  # under way → its lease, ending: renewed to `until`
    free: int  # how many it may claim


async def _close_after(fetcher: Fetcher, tasks: list[asyncio.Task[Outcome | None]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    await fetcher.__aexit__(None, None, None)
