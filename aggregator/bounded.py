"""Bounded: run a parse in a worker process with a time and a memory bound, so that one
pathological feed costs one source's poll, never the worker that polls them all.

- `init_worker` (the pool's initializer) caps each worker's address space once (RLIMIT_AS,
  1 GiB by default): an allocation past it raises MemoryError in that worker.
- `call_bounded` runs one call in the worker's main thread under a wall-clock bound: SIGALRM
  (setitimer) raises `TimeLimitExceeded` at `seconds`. Two kernel-enforced backstops kill the
  worker at twice the bound when the call does not unwind: ITIMER_PROF with the default SIGPROF
  action for a call spinning in C code, where no Python signal handler runs, and SIGALRM's own
  default action for a call that swallowed the exception or blocks.
- `ParsePool`, a ProcessPoolExecutor (forkserver: the parent runs threads) behind the
  Executor interface, replaces its pool when a worker dies (the OOM killer, a segfault, a
  backstop), which breaks every call in flight in it. A call that was alone in flight failed
  by itself; the others are run again one at a time in a separate process, so the feed that
  kills its worker is the only one that fails. `ParsePool.run` turns every bound into
  `ParseError(url, reason)`.

Does not know what it runs (any picklable callable), retry a call that failed by itself, or
bound the parent process. One case has no bound: a call that blocks (spending no CPU) inside
C code from its start, since neither backstop then fires; parsing does not block.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext, ForkServerContext
from types import FrameType
from typing import Any, ParamSpec, TypeVar

from aggregator.errors import ParseError

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger(__name__)

DEFAULT_SECONDS = 30.0
DEFAULT_MEMORY_BYTES = 1 << 30  # 1 GiB: feedparser holds a 10 MB feed in well under 200 MiB
OWNER_CHECK_SECONDS = 1.0  # how often a worker looks whether its pool's owner is still there


class LimitExceeded(Exception):
    """A call went past a bound. `reason` is what a person reads ("took longer than 30s");
    `str()` is the detail behind it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason

    def __reduce__(self) -> tuple[Any, ...]:  # crosses the process boundary intact
        return (type(self), (self.reason, self.detail))

    def __str__(self) -> str:
        return self.detail


class TimeLimitExceeded(LimitExceeded, TimeoutError):
    """The call ran past its time bound."""


class MemoryLimitExceeded(LimitExceeded, MemoryError):
    """The call needed more memory than the worker's address-space bound."""


class WorkerDied(LimitExceeded):
    """The worker running the call died: killed by a backstop or the OOM killer, or crashed."""


# --- inside the worker -----------------------------------------------------------------------


def init_worker(memory_bytes: int, owner: int = 0) -> None:
    """Pool initializer: bound this worker's address space to `memory_bytes` (0: no bound),
    write no core files (a crashed worker's heap is no use on disk), and leave Ctrl-C to the
    process that owns the pool (the terminal sends SIGINT to every process of its group; a
    worker that took it would fail its call, or die and take the pool down). With `owner`,
    the worker ends itself once that process is gone (see `_outlive_not`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if owner:
        threading.Thread(target=_outlive_not, args=(owner,), daemon=True).start()
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    if memory_bytes > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _outlive_not(owner: int) -> None:
    """End this worker once `owner` has gone. A pool's owner killed outright (SIGKILL, the
    OOM killer) never sends its workers their stop message, and they cannot see it go: each
    holds both ends of the pipe it waits on for work."""
    while True:
        time.sleep(OWNER_CHECK_SECONDS)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass  # alive, under another user (a pid reused): keep going


def call_bounded(seconds: float, func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in this process's main thread, bounded to `seconds` of wall time and to
    the memory `init_worker` allowed. Raises TimeLimitExceeded or MemoryLimitExceeded; any
    other exception of `func` passes through. `seconds` <= 0 sets no time bound. Restores the
    signal handlers and timers it found (pytest-timeout, for one, uses SIGALRM)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("call_bounded needs the main thread: signals are delivered there")
    reason = f"took longer than {seconds:g}s"
    expired = False

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal expired
        expired = True
        # Backstop: if the call swallows this exception or blocks, SIGALRM's default action
        # ends the process `seconds` later; the pool sees the worker die.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        raise TimeLimitExceeded(reason, f"SIGALRM after {seconds:g}s in worker {os.getpid()}")

    started = time.monotonic()
    previous_alarm = signal.signal(signal.SIGALRM, on_alarm)
    previous_prof = signal.signal(signal.SIGPROF, signal.SIG_DFL)
    # ITIMER_PROF counts this process's CPU time, and SIGPROF's default action ends it: the
    # backstop for a call spinning in C code, where on_alarm never gets to run.
    old_prof = signal.setitimer(signal.ITIMER_PROF, 2 * seconds)
    old_real = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        result = func(*args)
    except LimitExceeded:
        raise
    except MemoryError as err:
        raise MemoryLimitExceeded(_memory_reason(), f"{err!r} in worker {os.getpid()}") from err
    except BaseException as err:
        if expired:  # the call caught our exception and raised another on its way out
            raise TimeLimitExceeded(reason) from err
        raise
    finally:
        # An alarm landing in here would leave SIGALRM armed with its default action, which
        # ends the process: so the clean-up is done again until it completes.
        while True:
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.setitimer(signal.ITIMER_PROF, 0)
                _restore(signal.SIGALRM, previous_alarm)
                _restore(signal.SIGPROF, previous_prof)
                _rearm(signal.ITIMER_REAL, old_real, time.monotonic() - started)
                _rearm(signal.ITIMER_PROF, old_prof, 0.0)
                break
            except TimeLimitExceeded:
                continue
    if expired:  # the call caught our exception and returned anyway
        raise TimeLimitExceeded(reason)
    return result


def _restore(signum: int, handler: Any) -> None:
    if handler is not None:  # None: installed from C, and Python cannot put it back
        signal.signal(signum, handler)


def _rearm(which: int, old: tuple[float, float], elapsed: float) -> None:
    delay, interval = old
    if delay > 0:
        signal.setitimer(which, max(delay - elapsed, 0.001), interval)


def _memory_reason() -> str:
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return "ran out of memory"
    return f"needed more than {limit // (1 << 20)} MiB"


# --- the pool, in the parent ---------------------------------------------------------------

_DIED = "the worker parsing it died: killed past its time or memory bound, or crashed"


@dataclass(eq=False)
class _Call:
    task: Callable[[], Any]
    outer: Future[Any] = field(default_factory=Future)
    inner: Future[Any] | None = None


@dataclass(eq=False)
class _Generation:
    """One ProcessPoolExecutor, and the calls in flight in it."""

    pool: ProcessPoolExecutor
    inflight: set[_Call] = field(default_factory=set)
    broken_with: int = 0  # calls in flight when it broke; 0 while it works


class ParsePool(Executor):
    """Process pool for parsing, every call bounded (see the module doc), that outlives its
    workers. `submit` keeps the Executor contract, failing a future with a LimitExceeded when a
    bound is hit; `run` is for the per-source update and raises ParseError instead."""

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        seconds: float = DEFAULT_SECONDS,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        mp_context: BaseContext | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        """`preload` names modules a forkserver imports once, before it forks the workers:
        each then starts with them loaded instead of importing them itself."""
        self.max_workers = max_workers or os.cpu_count() or 1
        self.seconds = seconds
        self.memory_bytes = memory_bytes
        self.restarts = 0  # pools replaced after a worker died
        # forkserver, because forking a process that runs threads (APScheduler, the web
        # server) can copy a held lock into the child.
        self._context = mp_context or multiprocessing.get_context("forkserver")
        if preload and isinstance(self._context, ForkServerContext):
            self._context.set_forkserver_preload(["__main__", *preload])
        self._lock = threading.RLock()
        self._generation: _Generation | None = None
        self._suspects: deque[_Call] = deque()  # to run again one at a time
        self._solo: ProcessPoolExecutor | None = None
        self._solo_busy = False
        self._closed = False
        self._retired: list[ProcessPoolExecutor] = []  # broken pools, ended at shutdown

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=self._context,
            initializer=init_worker,
            initargs=(self.memory_bytes, os.getpid()),
        )

    # --- the Executor interface -----------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        target: Callable[..., T] = functools.partial(fn, **kwargs) if kwargs else fn
        call = _Call(functools.partial(call_bounded, self.seconds, target, *args))
        call.outer.add_done_callback(functools.partial(_cancel_inner, call))
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            for _ in range(2):  # the second try is on a fresh pool
                generation = self._current()
                try:
                    inner = generation.pool.submit(call.task)
                except BrokenProcessPool:
                    self._retire(generation)
                    continue
                generation.inflight.add(call)
                break
            else:
                raise BrokenProcessPool("a fresh process pool broke at once")
            call.inner = inner
        inner.add_done_callback(functools.partial(self._main_done, generation, call))
        return call.outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Calls waiting to be run again alone are cancelled, whatever `cancel_futures` says."""
        with self._lock:
            self._closed = True
            generation, solo = self._generation, self._solo
            suspects = list(self._suspects)
            self._suspects.clear()
        for call in suspects:
            call.outer.cancel()
        for pool in (generation.pool if generation else None, solo):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        with self._lock:
            retired, self._retired = self._retired, []
        for pool in retired:
            _end_workers(pool)

    async def run(self, url: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker; a bound hit or a dead worker is `ParseError(url, reason)`."""
        try:
            return await asyncio.wrap_future(self.submit(fn, *args))
        except LimitExceeded as err:
            # The reason is for people ("took longer than 30s"); which signal in which
            # worker is for the log.
            log.debug("parse %s: %s", url, err.detail)
            raise ParseError(url, err.reason, detail="") from err

    # --- recovery -------------------------------------------------------------------------

    def _current(self) -> _Generation:
        if self._generation is None:
            self._generation = _Generation(self._new_pool(self.max_workers))
        return self._generation

    def _retire(self, generation: _Generation) -> None:
        """A broken pool is not used again; it ends its own processes (see `_end_workers`)."""
        if self._generation is generation:
            self._generation = None
            self.restarts += 1
            self._retired.append(generation.pool)

    def _main_done(self, generation: _Generation, call: _Call, inner: Future[Any]) -> None:
        broken = not inner.cancelled() and isinstance(inner.exception(), BrokenProcessPool)
        with self._lock:
            if broken and not generation.broken_with:
                # Every call in flight fails at once, so the ones not yet called back are
                # exactly those the dead worker took down with it.
                generation.broken_with = len(generation.inflight)
                self._retire(generation)
            generation.inflight.discard(call)
            alone = generation.broken_with == 1
            if broken and not alone and not self._closed:
                self._suspects.append(call)
        if not broken:
            _settle(call.outer, inner)
        elif alone or self._closed:
            _fail(call.outer, WorkerDied(_DIED, repr(inner.exception())))
        else:
            self._pump()

    def _pump(self) -> None:
        """Run the next suspect alone in its own process, if none is running."""
        with self._lock:
            if self._solo_busy or self._closed:
                return
            while self._suspects and self._suspects[0].outer.done():
                self._suspects.popleft()  # cancelled meanwhile
            if not self._suspects:
                return
            call = self._suspects.popleft()
            if self._solo is None:
                self._solo = self._new_pool(1)
            solo = self._solo
            self._solo_busy = True
            inner: Future[Any] | None
            try:
                call.inner = inner = solo.submit(call.task)
            except BrokenProcessPool as err:
                self._solo, self._solo_busy = None, False
                _fail(call.outer, WorkerDied(_DIED, repr(err)))
                inner = None
        if inner is None:
            self._pump()
        else:
            inner.add_done_callback(functools.partial(self._solo_done, solo, call))

    def _solo_done(self, solo: ProcessPoolExecutor, call: _Call, inner: Future[Any]) -> None:
        broken = not inner.cancelled() and isinstance(inner.exception(), BrokenProcessPool)
        with self._lock:
            self._solo_busy = False
            if broken and self._solo is solo:
                self._solo = None
                self.restarts += 1
                self._retired.append(solo)
        if broken:  # alone in its process: this call is the one that kills workers
            _fail(call.outer, WorkerDied(_DIED, repr(inner.exception())))
        else:
            _settle(call.outer, inner)
        self._pump()


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Kill what is left of a broken pool's workers. CPython's clean-up of a broken pool
    (`terminate_broken`) signals the workers it knows of, then joins them; a worker the pool
    started meanwhile (it starts them on demand, when a call is submitted) is never told to
    stop, so that join, and then the interpreter's exit, which joins the pool's thread, wait
    for ever: a worker that would not stop, seen once in the test suite."""
    for process in list(getattr(pool, "_processes", {}).values()):
        try:
            if process.pid is not None and process.exitcode is None:
                process.kill()
        except (OSError, ValueError):
            pass  # gone meanwhile, or already closed


def _settle(outer: Future[Any], inner: Future[Any]) -> None:
    """Give `outer` what `inner` ended with, unless `outer` was cancelled meanwhile."""
    if inner.cancelled():
        outer.cancel()
        return
    error = inner.exception()
    try:
        if error is not None:
            outer.set_exception(error)
        else:
            outer.set_result(inner.result())
    except InvalidStateError:  # cancelled by its waiter meanwhile
        pass


def _fail(outer: Future[Any], error: BaseException) -> None:
    try:
        outer.set_exception(error)
    except InvalidStateError:
        pass


def _cancel_inner(call: _Call, outer: Future[Any]) -> None:
    if outer.cancelled() and call.inner is not None:
        call.inner.cancel()
