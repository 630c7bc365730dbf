"""Pollers: one cycle of many polls spread over processes, so that it uses every core.

A cycle in which most sources answer 304 is bound by request overhead, all of it in the event
loop of the process that polls: one core busy, the others idle (the parse pool has nothing to
do). `Pollers` starts a few poller processes, each with its own event loop, HTTP client, parse
pool and Redis connections, deals the sources of a cycle out among them and gathers their
outcomes. The processes live as long as the `Pollers`: cycle after cycle, their connections and
parse pools stay up.

Nothing a poll does needs to know: per-host politeness is counted in Redis (across processes,
as across workers), each source's state is read and written there, and each process runs the
ordinary `Updater`. The sources are dealt round-robin, so a process gets every n-th source
whatever its host.

Not for the scheduler's worker, whose ticks claim a few due sources at a time: a fleet there is
several `aggregator worker` processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, ForkServerContext
from multiprocessing.process import BaseProcess
from types import FrameType, TracebackType
from typing import Any

from aggregator.bounded import ParsePool, init_worker
from aggregator.config import Config, Source
from aggregator.errors import AggregatorError, StorageError
from aggregator.fetch import Fetcher
from aggregator.store import Address, Store
from aggregator.update import MAX_POLLS, PARSE_MODULES, Outcome, Updater, first_failure

SOURCES_PER_PROCESS = 250  # fewer per process and a process's start-up outweighs its share
START_SECONDS = 60.0  # for a poller to start and say it is ready
STOP_SECONDS = 10.0  # for pollers to stop when asked, before they are made to


def processes_for(sources: int, cpus: int | None = None) -> int:
    """How many poller processes a cycle of `sources` is worth: one per core, but no more
    than one per SOURCES_PER_PROCESS sources; 1 means poll in this process."""
    cpus = cpus or usable_cpus()
    return max(1, min(cpus, sources // SOURCES_PER_PROCESS))


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class _Job:
    """What a poller needs to start: all of it crosses the process boundary by pickle."""

    config: Config
    address: Address
    parse_workers: int
    max_polls: int


class PollerDied(AggregatorError):
    """A poller process ended in the middle of a cycle (killed, or crashed)."""


class Pollers:
    """`processes` poller processes. Use as `with Pollers(...) as pollers:`, then
    `await pollers.poll_many(sources)` as often as needed, from one event loop at a time."""

    def __init__(
        self,
        config: Config,
        address: Address,
        processes: int,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        # The cores are shared out: each process parses with its share, polls with its share
        # of MAX_POLLS.
        parse_workers = max(1, usable_cpus() // processes)
        self._job = _Job(config, address, parse_workers, max(1, MAX_POLLS // processes))
        self.processes = processes
        self._children: list[tuple[BaseProcess, Connection]] = []
        self._abandoned = False  # a process was stopped mid-cycle (see `_share`)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._children if p.pid is not None]

    def __enter__(self) -> Pollers:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the processes and wait until each has its parse pool up."""
        context = _context()
        try:
            for _ in range(self.processes):
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=_serve, args=(theirs, self._job), name="aggregator-poller"
                )
                process.start()
                theirs.close()
                self._children.append((process, ours))
            for child, conn in self._children:
                if not conn.poll(START_SECONDS):
                    raise PollerDied(f"poller {child.pid} did not start in {START_SECONDS:g}s")
                try:
                    message = conn.recv()
                except EOFError:
                    message = ("died", None)
                self._expect(message, "ready", child)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Ask each process to stop; end those that have not within 10 s (SIGTERM, then
        SIGKILL)."""
        for _, conn in self._children:
            try:
                conn.send(None)
            except OSError:
                pass  # already gone
        deadline = time.monotonic() + STOP_SECONDS
        for process, _ in self._children:
            process.join(max(0.0, deadline - time.monotonic()))
        for process, _ in self._children:
            if process.is_alive():
                process.terminate()
        for process, conn in self._children:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self._children.clear()

    async def poll_many(
        self,
        sources: Sequence[Source],
        on_done: Callable[[Outcome], Awaitable[None] | None] | None = None,
    ) -> list[Outcome]:
        """Poll every source once, dealt round-robin to the processes; outcomes in the order
        given, `on_done` called in this loop as each arrives. Like `Updater.poll_many`, a
        StorageError propagates, once every process has finished its share."""
        if not self._children:
            raise RuntimeError("use Pollers as a context manager")
        if self._abandoned:
            raise RuntimeError("a poller was stopped in the middle of a cycle: start anew")
        outcomes: dict[str, Outcome] = {}

        async def done(outcome: Outcome) -> None:
            outcomes[outcome.source] = outcome
            if on_done is not None:
                maybe = on_done(outcome)
                if maybe is not None:
                    await maybe

        n = len(self._children)
        shares = [
            self._share(process, conn, sources[i::n], done)
            for i, (process, conn) in enumerate(self._children)
        ]
        failures = [r for r in await asyncio.gather(*shares, return_exceptions=True) if r]
        if failures:
            raise first_failure(failures)
        return [outcomes[s.name] for s in sources]

    async def _share(
        self,
        process: BaseProcess,
        conn: Connection,
        sources: Sequence[Source],
        done: Callable[[Outcome], Awaitable[None]],
    ) -> None:
        """Send one process its share and take its outcomes until it says it has finished."""
        if not sources:
            return
        loop = asyncio.get_running_loop()
        messages: asyncio.Queue[Any] = asyncio.Queue()

        def readable() -> None:
            try:
                while conn.poll():
                    messages.put_nowait(conn.recv())
            except (EOFError, OSError):
                loop.remove_reader(conn.fileno())
                messages.put_nowait(("died", None))

        ended = False  # the process has reported the end of its share
        try:
            try:
                conn.send(list(sources))
            except OSError:  # its end of the pipe is closed: it has died
                message: tuple[str, Any] = ("died", None)
            else:
                loop.add_reader(conn.fileno(), readable)
                message = await messages.get()
                while message[0] == "done":
                    await done(message[1])
                    message = await messages.get()
            ended = True
            self._expect(message, "finished", process)
        finally:
            if not conn.closed:
                loop.remove_reader(conn.fileno())
            if not ended:
                # Cancelled, or on_done raised: the process is still polling its share, and
                # what it sends would reach the next cycle. It is stopped instead.
                self._abandoned = True
                process.terminate()

    @staticmethod
    def _expect(message: tuple[str, Any], kind: str, process: BaseProcess) -> None:
        got, value = message
        if got == kind:
            return
        if got == "storage":
            raise StorageError(value)
        if got == "error":
            raise AggregatorError(f"poller {process.pid} failed: {value}")
        process.join(1)
        raise PollerDied(f"poller {process.pid} ended (exit code {process.exitcode})")


def _context() -> ForkContext | ForkServerContext:
    """How to start the pollers. A plain fork when this process runs no other thread: the
    pollers start at once, with everything this process imported. Otherwise forkserver (a
    fork would copy a lock another thread holds, held for good), which imports the poller
    module once and forks each poller from that."""
    if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", "aggregator.pollers"])
    return context


# --- inside a poller process ---------------------------------------------------------------


def _serve(conn: Connection, job: _Job) -> None:
    """A poller's life: start its parse pool, then poll each share it is sent, until it is
    sent None or its parent goes away. SIGTERM (the parent stopping it mid-cycle) ends it too,
    and its parse pool with it."""
    init_worker(0)  # no core files; Ctrl-C is for the parent, which stops us
    signal.signal(signal.SIGTERM, _terminated)
    store = Store.at(job.address)
    # The pool starts with the first changed document: a cycle of 304s needs none.
    executor = ParsePool(max_workers=job.parse_workers, preload=PARSE_MODULES)
    try:
        asyncio.run(_cycles(conn, job, store, executor))
    finally:
        # Waits for a parse under way (bounded): workers left without their stop message
        # would wait for work forever.
        executor.shutdown(wait=True, cancel_futures=True)
        store.close()


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


async def _cycles(conn: Connection, job: _Job, store: Store, executor: Executor) -> None:
    async with Fetcher(job.config.settings) as fetcher:
        updater = Updater(job.config, store, fetcher, executor=executor)
        conn.send(("ready", os.getpid()))
        while True:
            try:
                sources = await asyncio.to_thread(conn.recv)
            except (EOFError, OSError):
                return  # the parent is gone
            if sources is None:
                return
            try:
                await updater.poll_many(
                    sources, lambda o: conn.send(("done", o)), max_polls=job.max_polls
                )
            except StorageError as err:
                conn.send(("storage", str(err)))
            except Exception as err:
                conn.send(("error", f"{type(err).__name__}: {err}"))
            else:
                conn.send(("finished", None))
