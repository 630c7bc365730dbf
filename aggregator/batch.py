"""Batch: many concurrent awaits of one blocking call become one call on a list.

A poll makes a few small Redis calls (read the source's state, take a host slot, give it back,
record the result). Made one by one from a thousand concurrent polls, each costs a thread hop
and a round trip of its own, and those dominate a cycle whose fetches all answer 304. A
`Batcher` gathers the calls that arrive while its previous batch is on its way and sends them
together: one thread hop and one pipelined round trip for all of them (group commit). Under
light load a batch is a single call, so nothing waits longer than one round trip more than it
would alone.

It does not retry, reorder or deduplicate: a batch is sent once, its items in arrival order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(eq=False)
class _Lane(Generic[Item, Result]):
    """The calls waiting in one event loop, and the task sending them. A lane lives exactly
    as long as its sender: made with the first call, dropped when nothing is left to send."""

    waiting: list[tuple[Item, asyncio.Future[Result]]] = field(default_factory=list)
    sender: asyncio.Task[None] | None = None  # held here: a task nobody holds may be collected


class Batcher(Generic[Item, Result]):
    """`await batcher(item)` runs `call([..., item, ...])` in a thread, with whatever other
    items are waiting, and returns the result at the item's position. `call` must return one
    result per item, in order; if it raises, every caller of that batch gets the exception.

    Usable from any running loop, even from several at once (one per thread): a future
    belongs to its loop, so each loop's callers are batched apart."""

    def __init__(self, call: Callable[[list[Item]], Sequence[Result]], limit: int = 512) -> None:
        self._call = call
        self._limit = limit
        self._lanes: dict[asyncio.AbstractEventLoop, _Lane[Item, Result]] = {}

    async def __call__(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        lane = self._lanes.get(loop)
        if lane is None:
            lane = self._lanes[loop] = _Lane()
            # Started on the loop's next turn: every caller ready in this one joins the batch.
            lane.sender = loop.create_task(self._send(loop, lane))
        lane.waiting.append((item, future))
        return await future

    async def _send(self, loop: asyncio.AbstractEventLoop, lane: _Lane[Item, Result]) -> None:
        try:
            while lane.waiting:
                batch = lane.waiting[: self._limit]
                del lane.waiting[: self._limit]
                await self._run(batch)
        finally:
            # Only when cancelled (the loop shutting down) is anything still waiting, and no
            # one is left to send it: its callers must not wait forever.
            for _, future in lane.waiting:
                future.cancel()
            lane.waiting.clear()
            del self._lanes[loop]  # the next call makes a new lane; a finished loop's is not kept

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await asyncio.to_thread(self._call, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch call gave {len(results)} results for {len(batch)} items")
        except Exception as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        except BaseException:
            # Cancelled (or the process is exiting): the call may or may not have run; its
            # callers are cancelled too rather than handed a CancelledError as a result.
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
