"""`aggregator.bounded`: a call past its time or memory bound, or one that kills its worker, costs
that call only (a ParseError naming the URL), and the pool goes on. Real worker processes
throughout; the functions they run are below, at module level so that they pickle."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import pickle
import resource
import signal
import time
from collections.abc import Iterator

import pytest

from aggregator.bounded import (
    LimitExceeded,
    MemoryLimitExceeded,
    ParsePool,
    TimeLimitExceeded,
    WorkerDied,
    call_bounded,
)
from aggregator.errors import ParseError
from aggregator.parse import parse

URL = "https://bad.example.cn/feed.xml"
SECONDS = 0.25
# Scheduling slack on a shared, loaded 2-core machine; what is tested is that the call ends
# near its bound instead of running on (the slow calls would take 30 s and more).
SLACK = 5.0
MEMORY = 512 << 20


# --- what the workers run --------------------------------------------------------------------
# Standard-library callables where one does the job: a fresh worker then need not import this
# module (and pytest with it) before it can run the call, which keeps the restarts quick.

C_SPIN = (hashlib.pbkdf2_hmac, "sha256", b"password", b"salt", 10**9)  # minutes in one C call


def spin_python() -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pass


def swallow_timeouts() -> None:
    """Catches every exception and carries on, as careless code might."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except Exception:
            pass


def fail_parse(url: str) -> None:
    raise ParseError(url, "not an RSS, Atom or JSON feed")


# --- the pool --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[ParsePool]:
    """One pool for the module: every test leaves it working for the next, which is the point."""
    with ParsePool(2, seconds=SECONDS, memory_bytes=MEMORY) as p:
        yield p


def run(pool: ParsePool, fn: object, *args: object) -> object:
    return asyncio.run(pool.run(URL, fn, *args))  # type: ignore[arg-type]


def assert_parse_error(pool: ParsePool, reason: str, fn: object, *args: object) -> ParseError:
    with pytest.raises(ParseError) as caught:
        run(pool, fn, *args)
    err = caught.value
    assert err.url == URL
    assert err.reason == reason
    # What a person reads; which signal stopped which worker is for the debug log.
    assert str(err) == f"parse {URL}: {reason}"
    assert isinstance(err.__cause__, LimitExceeded)
    return err


def assert_still_works(pool: ParsePool) -> None:
    assert run(pool, str, "经济日报") == "经济日报"


def test_a_parse_error_from_a_worker_reads_as_it_would_here(pool: ParsePool) -> None:
    # The pool sets the worker's whole traceback as the cause of what it raised: the
    # stored last_error must still be the one line a parse here gives.
    body = b"<html><body>not a feed"
    with pytest.raises(ParseError) as here:
        parse(body, URL, "text/html")
    with pytest.raises(ParseError) as there:
        run(pool, parse, body, URL, "text/html")
    assert str(there.value) == str(here.value)
    assert str(here.value).startswith(f"parse {URL}: not an RSS, Atom or JSON feed: ")
    assert "\n" not in str(there.value) and "Traceback" not in str(there.value)


def test_results_and_the_call_s_own_errors_pass_through(pool: ParsePool) -> None:
    assert run(pool, dict, {"a": [1, 2]}) == {"a": [1, 2]}
    with pytest.raises(ParseError) as caught:
        run(pool, fail_parse, URL)
    assert caught.value.reason == "not an RSS, Atom or JSON feed"
    with pytest.raises(ValueError, match="bad value"):
        run(pool, int, "bad value")
    assert pool.submit(int, "ff", base=16).result() == 255  # the Executor contract, kwargs too


def test_memory_bound_is_set_in_every_worker(pool: ParsePool) -> None:
    limits = {pool.submit(resource.getrlimit, resource.RLIMIT_AS).result()[0] for _ in range(4)}
    assert limits == {MEMORY}


@pytest.mark.parametrize("fn", [time.sleep, spin_python], ids=["sleeping", "spinning"])
def test_time_bound(pool: ParsePool, fn: object) -> None:
    args = (30,) if fn is time.sleep else ()
    before = pool.restarts
    started = time.monotonic()
    err = assert_parse_error(pool, f"took longer than {SECONDS:g}s", fn, *args)
    assert SECONDS <= time.monotonic() - started < SECONDS + SLACK
    assert isinstance(err.__cause__, TimeLimitExceeded)
    assert isinstance(err.__cause__, TimeoutError)
    assert pool.restarts == before  # no worker died: the call unwound
    assert_still_works(pool)


def test_time_bound_keeps_the_worker(pool: ParsePool) -> None:
    before = pool.restarts
    worker = pool.submit(os.getpid).result()
    with pytest.raises(TimeLimitExceeded):
        pool.submit(time.sleep, 30).result()
    assert pool.restarts == before
    assert len({pool.submit(os.getpid).result() for _ in range(6)} | {worker}) <= 2


@pytest.mark.parametrize("call", [(swallow_timeouts,), C_SPIN], ids=["swallowed", "in-C"])
def test_call_that_does_not_unwind_is_killed_at_twice_the_bound(
    pool: ParsePool, call: tuple[object, ...]
) -> None:
    before = pool.restarts
    started = time.monotonic()
    err = assert_parse_error(pool, err_reason_died(), *call)
    assert isinstance(err.__cause__, WorkerDied)
    assert time.monotonic() - started < 2 * SECONDS + SLACK
    assert pool.restarts == before + 1
    assert_still_works(pool)


def err_reason_died() -> str:
    return "the worker parsing it died: killed past its time or memory bound, or crashed"


def test_memory_bound(pool: ParsePool) -> None:
    err = assert_parse_error(pool, "needed more than 512 MiB", bytearray, 2 << 30)
    assert isinstance(err.__cause__, MemoryLimitExceeded)
    assert isinstance(err.__cause__, MemoryError)
    assert_still_works(pool)


@pytest.mark.parametrize(
    "call",
    [(os._exit, 3), (signal.raise_signal, signal.SIGKILL), (signal.raise_signal, signal.SIGSEGV)],
    ids=["os._exit", "SIGKILL", "SIGSEGV"],
)
def test_dead_worker_costs_one_call_and_the_pool_recovers(
    pool: ParsePool, call: tuple[object, ...]
) -> None:
    before = pool.restarts
    err = assert_parse_error(pool, err_reason_died(), *call)
    assert isinstance(err.__cause__, WorkerDied)
    assert pool.restarts == before + 1
    assert_still_works(pool)
    assert [run(pool, abs, -i) for i in range(4)] == [0, 1, 2, 3]


def test_bystanders_of_a_dead_worker_are_run_again_alone() -> None:
    """A dead worker breaks every call in flight in the pool; only the killer may fail. A pool
    of its own, warmed up, with a bound long enough that the bystander is surely in flight when
    the killer dies, whatever the machine's load."""
    with ParsePool(2, seconds=5, memory_bytes=MEMORY) as p:
        assert list(p.map(abs, [-1, -2])) == [1, 2]

        async def both() -> list[object]:
            bystander = p.run(URL, time.sleep, 0.3)
            killer = p.run(URL, signal.raise_signal, signal.SIGKILL)
            return await asyncio.gather(bystander, killer, return_exceptions=True)

        bystander, killer = asyncio.run(both())
        assert bystander is None  # what time.sleep returns: run again, alone, and finished
        assert isinstance(killer, ParseError)
        assert killer.reason == err_reason_died()
        assert p.restarts == 2  # the shared pool, then the killer's own
        assert p.submit(str, "ok").result() == "ok"


def test_shutdown_ends_every_worker_of_a_broken_pool() -> None:
    """A broken pool's clean-up signals the workers it knows of, then waits for all of
    them; one it started meanwhile (on demand, as a call came in) would never stop, nor would
    the interpreter at exit. Shutdown kills what is left of every broken pool."""
    p = ParsePool(1, seconds=5, memory_bytes=MEMORY)
    assert p.submit(abs, -1).result() == 1
    broken = p._generation.pool if p._generation else None
    assert broken is not None
    with pytest.raises(ParseError):
        asyncio.run(p.run(URL, signal.raise_signal, signal.SIGKILL))
    assert p.restarts == 1
    # What the race leaves: a live process among the broken pool's workers.
    late = multiprocessing.get_context("forkserver").Process(
        target=time.sleep,
        args=(60,),
        daemon=True,  # a failed run must not wait for it at exit
    )
    late.start()
    broken._processes[late.pid] = late  # type: ignore[attr-defined,index]
    p.shutdown()
    late.join(10)
    assert late.exitcode is not None, "a broken pool's worker outlived the shutdown"


def test_no_new_calls_after_shutdown() -> None:
    p = ParsePool(1, seconds=SECONDS)
    p.shutdown()
    with pytest.raises(RuntimeError):
        p.submit(abs, 1)


# --- call_bounded in this process ------------------------------------------------------------


def test_call_bounded_here_restores_the_alarm_it_found() -> None:
    """pytest-timeout (and anyone else) may have SIGALRM armed; it is put back as it was."""
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 5.0)
    try:
        assert call_bounded(1.0, str, "x") == "x"
        with pytest.raises(TimeLimitExceeded) as caught:
            call_bounded(0.05, time.sleep, 5)
        assert caught.value.reason == "took longer than 0.05s"
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 3.5 < remaining <= 5.0
        assert fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)


def test_call_bounded_here_turns_memory_error_into_the_bound() -> None:
    def out_of_memory() -> None:
        raise MemoryError

    with pytest.raises(MemoryLimitExceeded) as caught:
        call_bounded(1.0, out_of_memory)
    assert caught.value.reason in ("ran out of memory", f"needed more than {MEMORY >> 20} MiB")


@pytest.mark.parametrize(
    "error",
    [
        TimeLimitExceeded("took longer than 3s", "SIGALRM after 3s in worker 7"),
        MemoryLimitExceeded("needed more than 512 MiB"),
        WorkerDied("died", "BrokenProcessPool()"),
    ],
)
def test_limit_errors_cross_processes_intact(error: LimitExceeded) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.reason, copy.detail, str(copy)) == (error.reason, error.detail, str(error))


def _interrupt_myself() -> str:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    return "still here"


def test_a_worker_leaves_ctrl_c_to_the_pool_s_owner(pool: ParsePool) -> None:
    # The terminal sends SIGINT to its whole process group, workers included.
    assert run(pool, _interrupt_myself) == "still here"
    assert_still_works(pool)
