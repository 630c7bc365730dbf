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
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

from aggregator.bounded import ParsePool
from aggregator.config import Config, Source
from aggregator.errors import AggregatorError, StorageError
from aggregator.fetch import Fetcher
from aggregator.store import Address, Store
from aggregator.update import MAX_POLLS, Outcome, Updater

SOURCES_PER_PROCESS = 250  # fewer per process and a process's start-up outweighs its share
START_SECONDS = 60.0  # for a poller to start and say it is ready


def processes_for(sources: int, cpus: int | None = None) -> int:
    """How many poller processes a cycle of `sources` is worth: one per core, but no more
    than one per SOURCES_PER_PROCESS sources; 1 means poll in this process."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(cpus, sources // SOURCES_PER_PROCESS))


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
        *,
        parse_workers: int | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        cpus = os.cpu_count() or 1
        self._job = _Job(
            config,
            address,
            parse_workers or max(1, cpus // processes),
            max(1, MAX_POLLS // processes),
        )
        self.processes = processes
        self._children: list[tuple[BaseProcess, Connection]] = []

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
        # forkserver: the caller may run threads, whose held locks a fork would copy.
        context = multiprocessing.get_context("forkserver")
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
                self._expect(conn.recv(), "ready", child)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Ask each process to stop, and end it if it does not."""
        for _, conn in self._children:
            try:
                conn.send(None)
            except OSError:
                pass  # already gone
        for process, conn in self._children:
            process.join(10)
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
        for failure in failures:
            if not isinstance(failure, Exception):
                raise failure  # cancelled, or the process is exiting
        if failures:
            raise failures[0]
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

        try:
            conn.send(list(sources))
        except OSError as err:  # its end of the pipe is closed: it has died
            process.join(1)
            raise PollerDied(f"poller {process.pid} ended (exit code {process.exitcode})") from err
        loop.add_reader(conn.fileno(), readable)
        try:
            while True:
                kind, value = await messages.get()
                if kind == "done":
                    await done(value)
                    continue
                self._expect((kind, value), "finished", process)
                return
        finally:
            if not conn.closed:
                loop.remove_reader(conn.fileno())

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


# --- inside a poller process ---------------------------------------------------------------


def _serve(conn: Connection, job: _Job) -> None:
    """A poller's life: start its parse pool, then poll each share it is sent, until it is
    sent None or its parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops us
    store = Store.at(job.address)
    with ParsePool(max_workers=job.parse_workers) as executor:
        _warm(executor, job.parse_workers)
        asyncio.run(_cycles(conn, job, store, executor))
    store.close()


def _ready() -> int:
    import aggregator.update  # noqa: F401  (the parse stack, imported once per worker)

    return os.getpid()


def _warm(executor: Executor, workers: int) -> None:
    """Start every parse worker now rather than in the first cycle that needs one."""
    for job in [executor.submit(_ready) for _ in range(workers)]:
        job.result()


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
