"""Batcher: concurrent awaits become few calls on lists, each caller gets its own result."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from aggregator.batch import Batcher


class Recorder:
    """A batch call that doubles each item and remembers every list it was given; it can be
    held (an event) or made to fail or to answer short."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[int] = set()
        self.hold: threading.Event | None = None
        self.fail: Callable[[list[int]], Exception | None] = lambda items: None
        self.short = False

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.threads.add(threading.get_ident())
        if self.hold is not None:
            assert self.hold.wait(10)
        error = self.fail(items)
        if error is not None:
            raise error
        results = [2 * i for i in items]
        return results[:-1] if self.short else results


def test_concurrent_callers_share_one_call_and_get_their_own_results() -> None:
    call = Recorder()
    batcher: Batcher[int, int] = Batcher(call)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(batcher(i) for i in range(200))))

    assert asyncio.run(main()) == [2 * i for i in range(200)]
    assert call.calls == [list(range(200))]  # one call, items in arrival order
    assert threading.get_ident() not in call.threads  # run in a thread, not on the loop


def test_callers_arriving_during_a_call_go_together_in_the_next() -> None:
    call = Recorder()
    batcher: Batcher[int, int] = Batcher(call)

    async def main() -> tuple[int, list[int]]:
        call.hold = threading.Event()
        first = asyncio.ensure_future(batcher(0))
        while not call.calls:  # the first call is under way, held
            await asyncio.sleep(0.001)
        later = asyncio.gather(*(batcher(i) for i in range(1, 50)))
        await asyncio.sleep(0.05)
        assert len(call.calls) == 1  # the late ones wait for the call in flight
        call.hold.set()
        return await first, list(await later)

    first, later = asyncio.run(main())
    assert (first, later) == (0, [2 * i for i in range(1, 50)])
    assert call.calls == [[0], list(range(1, 50))]


def test_a_batch_is_at_most_limit_items() -> None:
    call = Recorder()
    batcher: Batcher[int, int] = Batcher(call, limit=10)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(batcher(i) for i in range(25))))

    assert asyncio.run(main()) == [2 * i for i in range(25)]
    assert [len(c) for c in call.calls] == [10, 10, 5]


def test_an_exception_reaches_every_caller_of_its_batch_and_later_calls_work() -> None:
    call = Recorder()
    call.fail = lambda items: ValueError(f"bad batch {items}") if 3 in items else None
    batcher: Batcher[int, int] = Batcher(call)

    async def main() -> tuple[list[int | BaseException], list[int]]:
        failed = await asyncio.gather(*(batcher(i) for i in range(5)), return_exceptions=True)
        return failed, list(await asyncio.gather(*(batcher(i) for i in range(5, 8))))

    failed, later = asyncio.run(main())
    assert all(isinstance(f, ValueError) for f in failed)
    assert str(failed[0]) == "bad batch [0, 1, 2, 3, 4]"
    assert later == [10, 12, 14]
    assert call.calls == [[0, 1, 2, 3, 4], [5, 6, 7]]


def test_a_call_giving_the_wrong_number_of_results_is_an_error() -> None:
    call = Recorder()
    call.short = True
    batcher: Batcher[int, int] = Batcher(call)

    async def main() -> list[int | BaseException]:
        return list(await asyncio.gather(*(batcher(i) for i in range(3)), return_exceptions=True))

    outcomes = asyncio.run(main())
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert isinstance(outcome, RuntimeError)
        assert "2 results for 3 items" in str(outcome)


def test_a_cancelled_caller_leaves_the_others_their_results() -> None:
    call = Recorder()
    batcher: Batcher[int, int] = Batcher(call)

    async def main() -> tuple[bool, list[int]]:
        call.hold = threading.Event()
        tasks = [asyncio.ensure_future(batcher(i)) for i in range(4)]
        while not call.calls:
            await asyncio.sleep(0.001)
        tasks[1].cancel()
        call.hold.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return tasks[1].cancelled(), [t.result() for t in tasks if not t.cancelled()]

    assert asyncio.run(main()) == (True, [0, 4, 6])


def test_one_batcher_serves_one_loop_after_another_and_loops_in_threads() -> None:
    call = Recorder()
    batcher: Batcher[int, int] = Batcher(call)

    async def some(start: int) -> list[int]:
        return list(await asyncio.gather(*(batcher(i) for i in range(start, start + 20))))

    assert asyncio.run(some(0)) == [2 * i for i in range(20)]
    assert asyncio.run(some(100)) == [2 * i for i in range(100, 120)]

    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def in_thread(start: int) -> None:
        try:
            results[start] = asyncio.run(some(start))
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=in_thread, args=(s,)) for s in (1000, 2000, 3000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert results == {s: [2 * i for i in range(s, s + 20)] for s in (1000, 2000, 3000)}
    # No batch mixed two loops' callers: each call's items are from one range.
    assert all(len({i // 100 for i in items}) == 1 for items in call.calls)


def test_what_a_finished_loop_left_waiting_is_never_sent() -> None:
    call = Recorder()
    batcher: Batcher[int, int] = Batcher(call)
    hold = call.hold = threading.Event()
    callers: list[asyncio.Future[int]] = []

    async def main() -> None:
        callers.append(asyncio.ensure_future(batcher(0)))
        while not call.calls:
            await asyncio.sleep(0.001)
        callers.append(asyncio.ensure_future(batcher(1)))  # waits behind the held call
        await asyncio.sleep(0.01)
        # Returning makes asyncio.run cancel every task (the sender and both callers), then
        # wait for the held thread: let it go soon.
        threading.Timer(0.1, hold.set).start()

    asyncio.run(main())  # every caller is cancelled with the loop
    call.hold = None
    assert asyncio.run(asyncio.wait_for(batcher(5), 5)) == 10
    assert call.calls == [[0], [5]]  # item 1's loop is gone: it is not sent with a later batch
