"""HTTP clients side by side: one conditional GET (a 304) per feed of a local nginx farm.

The client a poller uses decides what a cycle of unchanged feeds costs (DESIGN.md: "an HTTP
client chosen by measured throughput"). For each client, N requests with the feed's ETag and
Last-Modified, at most 256 at once (MAX_POLLS), in a fresh event loop per run; the clients
alternate run by run and the medians of wall and CPU seconds (all of this process's threads)
are reported. `aggregator.fetch.Fetcher` is measured too: our client with its limits.

    python bench/http_clients.py --feeds 1000 --repeat 7

Clients that are not installed are skipped: `pip install aiohttp httpx` adds them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

from harness import Report, Sample, bench

from aggregator.config import Settings
from aggregator.fetch import Fetcher
from aggregator.models import NotModified, Validators
from aggregator.update import MAX_POLLS

Pair = tuple[str, Validators]
Run = Callable[[Sequence[Pair]], Coroutine[Any, Any, list[int]]]


async def _bounded(pairs: Sequence[Pair], one: Callable[[Pair], Awaitable[int]]) -> list[int]:
    running = asyncio.Semaphore(MAX_POLLS)

    async def limited(pair: Pair) -> int:
        async with running:
            return await one(pair)

    return list(await asyncio.gather(*(limited(p) for p in pairs)))


def _headers(v: Validators) -> dict[str, str]:
    return {"If-None-Match": v.etag, "If-Modified-Since": v.last_modified}


async def ours(pairs: Sequence[Pair]) -> list[int]:
    async with Fetcher(Settings()) as fetcher:

        async def one(pair: Pair) -> int:
            result = await fetcher.fetch(*pair)
            return 304 if isinstance(result, NotModified) else result.status

        return await _bounded(pairs, one)


async def pyreqwest(pairs: Sequence[Pair]) -> list[int]:
    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().max_connections(MAX_POLLS).timeout(timedelta(seconds=20)).build()
    async with client:

        async def one(pair: Pair) -> int:
            request = client.get(pair[0]).headers(_headers(pair[1])).build_streamed()
            async with request as response:
                while await response.body_reader.read_chunk() is not None:
                    pass
                return int(response.status)

        return await _bounded(pairs, one)


async def aiohttp(pairs: Sequence[Pair]) -> list[int]:
    import aiohttp as client_module

    timeout = client_module.ClientTimeout(total=20, connect=10, sock_read=20)
    async with client_module.ClientSession(timeout=timeout) as session:

        async def one(pair: Pair) -> int:
            async with session.get(pair[0], headers=_headers(pair[1])) as response:
                await response.read()
                return int(response.status)

        return await _bounded(pairs, one)


async def httpx(pairs: Sequence[Pair]) -> list[int]:
    import httpx as client_module

    limits = client_module.Limits(max_connections=MAX_POLLS)
    async with client_module.AsyncClient(limits=limits, timeout=20) as client:

        async def one(pair: Pair) -> int:
            response = await client.get(pair[0], headers=_headers(pair[1]))
            return int(response.status_code)

        return await _bounded(pairs, one)


CLIENTS: dict[str, tuple[str, Run]] = {
    "aggregator Fetcher (pyreqwest)": ("pyreqwest", ours),
    "pyreqwest": ("pyreqwest", pyreqwest),
    "aiohttp": ("aiohttp", aiohttp),
    "httpx": ("httpx", httpx),
}


def validators_of(urls: Sequence[str]) -> list[Pair]:
    async def first() -> list[Pair]:
        async with Fetcher(Settings()) as fetcher:
            results = await asyncio.gather(*(fetcher.fetch(u) for u in urls))
        return [(u, r.validators) for u, r in zip(urls, results, strict=True)]

    return asyncio.run(first())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    clients = {k: run for k, (module, run) in CLIENTS.items() if importlib.util.find_spec(module)}
    report = Report(f"{args.feeds} conditional GETs (all 304), one client at a time")
    with bench(args.feeds) as b:
        pairs = validators_of([b.farm.url(f) for f in b.farm.feeds])
        for _ in range(args.repeat):
            for name, run in clients.items():
                started, cpu = time.perf_counter(), time.process_time()
                statuses: Any = asyncio.run(run(pairs))
                report.add(name, Sample(time.perf_counter() - started, time.process_time() - cpu))
                if set(statuses) != {304}:
                    raise SystemExit(f"{name}: statuses {sorted(set(statuses))}, want only 304")
            report.repeat_done()
    report.notes.append("CPU: every thread of the measuring process.")
    report.save(f"http-clients-{args.feeds}", report.render([]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
