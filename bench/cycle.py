"""One poll cycle with the pollers already up: the CPU the poller processes (with their parse
pools) spend on a warm cycle (every feed 304) and on a cycle where 10 % of the feeds changed,
measured apart from what a command pays to start (imports, forking, parse pools).

    python bench/cycle.py --feeds 1000 --repeat 3 [--cluster 3] [--profile]

`aggregator poll` runs the same `Pollers.poll_many` once per command; here the pollers stay up
between cycles, as `aggregator poll` would for a cycle of its own if start-up cost nothing.
After a cold cycle (every entry new), each repeat runs: a warm cycle, then `--changed` of the
feeds rewritten with NEW_PER_CHANGE new entries, a cycle, and the same feeds written back.
The CPU is that of every poller process and its descendants (psutil), read before and after
each cycle; this process only hands out sources and collects outcomes. Compare two sizes
(`--feeds 1000` and `--feeds 10000`) for how a cycle scales.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness import (
    BIN,
    CHANGED_SHARE,
    ENTRIES,
    NEW_PER_CHANGE,
    Bench,
    Report,
    Sample,
    bench,
    log,
    py_spy_table,
    tree_cpu,
)

from aggregator import batch
from aggregator import config as config_module
from aggregator.pollers import Pollers, processes_for
from aggregator.services import open_store
from aggregator.update import Outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--changed", type=float, default=CHANGED_SHARE)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--cluster", type=int, default=0, help="a Redis Cluster of this many masters"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy over the pollers in one more cycle"
    )
    parser.add_argument(
        "--batches",
        action="store_true",
        help="log how many Redis batches the pollers sent per cycle, and their mean size",
    )
    args = parser.parse_args()
    n = args.feeds
    changed_n = max(1, round(n * args.changed))
    where = f", Redis Cluster of {args.cluster} masters" if args.cluster else ""
    report = Report(f"One cycle with the pollers up, {n} feeds × {ENTRIES} entries{where}")
    with bench(n, keep=args.keep, cluster=args.cluster) as b:
        config = config_module.load(b.config_path, b.redis_url)
        store, embedded = open_store(config)
        assert embedded is None and store.address is not None
        sources = list(config.enabled_sources)
        processes = processes_for(len(sources))
        batches = b.workdir / "batches"
        if args.batches:
            count_batches(batches)  # the pollers are forked from here: they inherit it
        with Pollers(config, store.address, processes) as pollers:

            def cycle(label: str | None, new: int, fetched: int) -> None:
                served = redis_work(b)
                before = sum(tree_cpu(pid) for pid in pollers.pids)
                started = time.perf_counter()
                outcomes = asyncio.run(pollers.poll_many(sources))
                seconds = time.perf_counter() - started
                cpu = sum(tree_cpu(pid) for pid in pollers.pids) - before
                check(outcomes, new, fetched)
                if args.batches:
                    sizes = batch_sizes(batches)  # read after every cycle: that cycle's only
                    if label is not None:
                        log("  batches: " + sizes)
                if label is not None:
                    report.add(label, Sample(seconds, cpu))
                    work = {k: v - served.get(k, 0) for k, v in redis_work(b).items()}
                    busy = sorted(work.items(), key=lambda kv: -kv[1])[:8]
                    log("  Redis: " + ", ".join(f"{k} {v:,}" for k, v in busy if v))

            def change(round_: int) -> int:
                """Rewrite a sample of the feeds with more entries than any had before: each
                gains NEW_PER_CHANGE at least. Returns how many changed."""
                picked = random.Random(f"changed:{round_}").sample(b.farm.feeds, changed_n)
                b.rewrite(picked, ENTRIES + NEW_PER_CHANGE * (round_ + 1))
                return changed_n

            log(f"cold cycle, {processes} pollers")
            cycle(None, n * ENTRIES, n)
            # The parse pools start with the first changed document: a changed cycle before
            # the measured ones, so that none of them pays for that.
            cycle(None, NEW_PER_CHANGE * changed_n, change(0))
            for r in range(args.repeat):
                log(f"repeat {r + 1}/{args.repeat}")
                cycle("warm", 0, 0)
                cycle("10 % changed", NEW_PER_CHANGE * changed_n, change(r + 1))
                report.repeat_done()
            text = report.render([], columns=("s", "runs s", "pollers' CPU s"))
            if args.profile:
                count = change(args.repeat + 1)
                text += "\n\n" + profile(
                    pollers.pids, lambda: cycle(None, NEW_PER_CHANGE * count, count), b.workdir
                )
        store.close()
    report.save(f"cycle-{n}", text)
    return 0


def count_batches(folder: Path) -> None:
    """Have every `Batcher` of this process and its forks append the size of each batch it
    sends to `folder`/<pid> (one line: the store call and the item count)."""
    folder.mkdir(exist_ok=True)
    send = batch.Batcher._run

    async def counted(self: batch.Batcher[Any, Any], items: list[Any]) -> None:
        with (folder / str(os.getpid())).open("a") as out:
            out.write(f"{getattr(self._call, '__name__', '?')} {len(items)}\n")
        await send(self, items)

    batch.Batcher._run = counted  # type: ignore[method-assign]


def batch_sizes(folder: Path) -> str:
    """Batches per store call since the last look (the files are emptied), and mean size."""
    sizes: dict[str, list[int]] = collections.defaultdict(list)
    for path in folder.iterdir():
        for line in path.read_text().splitlines():
            name, count = line.split()
            sizes[name].append(int(count))
        path.write_text("")
    return ", ".join(
        f"{name} {len(v):,} of {sum(v) / len(v):.1f}" for name, v in sorted(sizes.items())
    )


def redis_work(b: Bench) -> dict[str, int]:
    """What Redis has done so far: calls per command, and the bytes it read and wrote (on a
    cluster, summed over the masters)."""
    import redis

    ports = b.cluster.masters() if b.cluster is not None else [int(b.redis_url.split(":")[2][:-2])]
    total: dict[str, int] = {}
    for port in ports:
        with redis.Redis(port=port) as client:
            for name, stats in client.info("commandstats").items():
                key = name.removeprefix("cmdstat_")
                total[key] = total.get(key, 0) + int(stats["calls"])
            net = client.info("stats")
            for key in ("total_net_input_bytes", "total_net_output_bytes"):
                total[key] = total.get(key, 0) + int(net[key])
    return total


def check(outcomes: Sequence[Outcome], new: int, fetched: int) -> None:
    """Every poll ok, `fetched` of them a changed document, at least `new` new entries."""
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise SystemExit(f"{len(failed)} polls failed, e.g. {failed[0].source}: {failed[0].error}")
    got = sum(o.new for o in outcomes)
    changed = sum(not o.not_modified for o in outcomes)
    if got < new or (new == 0 and got) or changed != fetched:
        raise SystemExit(f"{changed} changed with {got} new entries, want {fetched} with {new}")


def profile(pids: list[int], run: Callable[[], None], workdir: Path) -> str:
    """py-spy over each poller (and its parse pool) while `run()` polls a changed cycle."""
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    spies = []
    raws = []
    for pid in pids:
        raw = workdir / f"cycle-{pid}.raw"
        raws.append(raw)
        cmd = [spy, "record", "--subprocesses", "--gil", "--rate", "250", "--format", "raw"]
        cmd += ["--output", str(raw), "--pid", str(pid), "--nonblocking"]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)
    run()
    for spy_proc in spies:
        spy_proc.send_signal(2)  # SIGINT: py-spy writes what it has
        spy_proc.wait(30)
    return "### py-spy: the pollers during a 10 % changed cycle\n\n" + py_spy_table(raws)


if __name__ == "__main__":
    sys.exit(main())
