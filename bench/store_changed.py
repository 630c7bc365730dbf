"""`store_changed` on one fixed set of changed documents, against a store holding N sources'
data: whether a changed document costs more CPU when there are more sources, apart from
everything else a cycle does (the pollers, Redis and nginx sharing the cores).

    python bench/store_changed.py --feeds 1000 [--docs 100]

The store is filled as a cold cycle fills it (every feed's document stored, by a pool of two
parse workers that then have N/2 documents behind them, as a poller's worker has). The same
`--docs` feeds (drawn from the first 1,000, so the set is the same at every size) are then
rewritten with 2 more entries and stored by a fresh worker, and rewritten again with 2 more and
stored by one of the aged workers. Each worker reports the CPU per document (process_time
inside the worker, so nothing else on the machine is counted), its garbage collections
(gc.callbacks) and its objects (len(gc.get_objects())).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

from harness import ENTRIES, MIME_TYPES, Bench, Feed, bench, log

from aggregator import config as config_module
from aggregator.models import FetchResult, Validators
from aggregator.services import open_store
from aggregator.store import Address
from aggregator.update import PARSE_MODULES, Changed, store_changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=100)
    args = parser.parse_args()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", *PARSE_MODULES])
    with bench(args.feeds) as b:
        config = config_module.load(b.config_path, b.redis_url)
        store, _ = open_store(config)
        assert store.address is not None
        address = store.address
        picked = random.Random("docs").sample(b.farm.feeds[:1000], args.docs)
        with ProcessPoolExecutor(2, mp_context=context) as aged:
            started = time.perf_counter()
            fill = [changes(b, config, b.farm.feeds[i::2], ENTRIES) for i in range(2)]
            filled = list(aged.map(run, [address, address], fill))
            log(
                f"filled {args.feeds} sources in {time.perf_counter() - started:.1f} s: "
                + "; ".join(describe(f) for f in filled)
            )
            b.rewrite(picked, ENTRIES + 2)
            with ProcessPoolExecutor(1, mp_context=context) as fresh:
                got = fresh.submit(run, address, changes(b, config, picked, ENTRIES + 2)).result()
            log(f"fresh worker, {args.docs} changed documents: {describe(got)}")
            b.rewrite(picked, ENTRIES + 4)
            got = aged.submit(run, address, changes(b, config, picked, ENTRIES + 4)).result()
            log(f"aged worker, {args.docs} changed documents: {describe(got)}")
        store.close()
    return 0


def changes(b: Bench, config: Any, feeds: Any, count: int) -> list[Changed]:
    """What a poll hands the parse pool for each of `feeds` (their documents as on disk)."""
    sources = {s.name: s for s in config.enabled_sources}
    now = datetime.now(UTC)
    out = []
    for feed in feeds:
        assert isinstance(feed, Feed)
        url = b.farm.url(feed)
        body = (b.farm.root / feed.path).read_bytes()
        fetched = FetchResult(url, url, 200, MIME_TYPES[feed.kind], body, Validators(f'"{count}"'))
        state: dict[str, str | int | float] = {"url": url, "last_poll": now.timestamp()}
        out.append(
            Changed(
                sources[feed.name],
                fetched,
                now,
                "guid",
                state,
                config.interval(sources[feed.name]),
                config.settings.retention.rule,
            )
        )
    return out


def run(address: Address, batch: list[Changed]) -> dict[str, Any]:
    """In a worker: store each change, timing each; the collections made meanwhile."""
    collections: dict[int, list[float]] = {0: [], 1: [], 2: []}
    begun: list[float] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            begun.append(time.process_time())
        else:
            collections[info["generation"]].append(time.process_time() - begun.pop())

    objects_before = len(gc.get_objects())
    gc.callbacks.append(watch)
    per_doc = []
    try:
        for changed in batch:
            started = time.process_time()
            store_changed(address, changed)
            per_doc.append(time.process_time() - started)
    finally:
        gc.callbacks.remove(watch)
    return {
        "docs": len(batch),
        "ms_median": 1000 * statistics.median(per_doc),
        "ms_mean": 1000 * statistics.fmean(per_doc),
        "gc": {g: (len(t), 1000 * sum(t)) for g, t in collections.items()},
        "objects_before": objects_before,
        "objects_after": len(gc.get_objects()),
    }


def describe(r: dict[str, Any]) -> str:
    gcs = ", ".join(f"gen{g} {n}× {ms:.0f} ms" for g, (n, ms) in r["gc"].items())
    return (
        f"{r['docs']} docs, {r['ms_median']:.2f} ms median, {r['ms_mean']:.2f} ms mean per doc; "
        f"{gcs}; objects {r['objects_before']:,} → {r['objects_after']:,}"
    )


if __name__ == "__main__":
    sys.exit(main())
