"""Redis memory per stored entry, against the entry's own JSON.

    python bench/memory.py --feeds 500

`aggregator poll` (the whole command) stores the farm's feeds (20 entries each, 1-2 KB of HTML,
a tenth of them Chinese) in a private redis-server flushed first. The growth of `used_memory`
(every key the poll wrote: entries, indexes, source states, the schedule) divided by the
entries stored is set against `len(entry.to_json())` of the same entries read back; then each
kind of key's share, by MEMORY USAGE of every key.

Then speed, the stored form against the one before it (zstd level 1 of the JSON object, marker
0x02, which still reads), side by side on the same entries: encoding and decoding each entry,
and what serving pays on a miss, `Store.entries` of the newest 101 (MGET and decoding), with
those 101 written in each form in turn. Medians of `--repeat` rounds, in process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable

import redis
from harness import BIN, ENTRIES, Report, Sample, Target, bench, timed_command


def kind_of(name: str) -> str:
    """`source:f00001:listed` → `source:…:listed`, `index:tag:x` → `index:tag`."""
    parts = name.split(":")
    if parts[0] == "source":
        return "source:…:" + parts[2] if len(parts) > 2 else "source"
    return ":".join(parts[:2]) if parts[0] in ("index", "version") else parts[0]


def what_if(blobs: list[bytes | bytearray | memoryview]) -> dict[str, float]:
    """Bytes per entry of the entries' JSON compressed other ways (not stored so: a guide to
    what a change of encoding would save)."""
    import zstandard

    trained = zstandard.train_dictionary(16384, blobs[: min(len(blobs), 2000)])
    with_dict = zstandard.ZstdCompressor(level=3, dict_data=trained)
    plain = zstandard.ZstdCompressor(level=3)
    n = len(blobs)
    return {
        "zstd -3, each alone": sum(len(plain.compress(b)) for b in blobs) / n,
        "zstd -3 with a 16 KB dictionary trained on them": sum(
            len(with_dict.compress(b)) for b in blobs
        )
        / n,
    }


def best_of(rounds: int, work: Callable[[], object]) -> float:
    """Median seconds of `rounds` runs of `work`."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(redis_url: str, rounds: int) -> list[tuple[str, float, float]]:
    """(what, µs with the form before, µs with the stored form now) per entry or per read."""
    import zstandard

    from aggregator import keys
    from aggregator.models import ZSTD_MARK, Entry
    from aggregator.store import Store

    def before(e: Entry) -> bytes:
        return ZSTD_MARK + zstandard.ZstdCompressor(level=1).compress(e.to_json_bytes())

    old_codec = zstandard.ZstdCompressor(level=1)
    store = Store.from_url(redis_url)
    entries = store.entries("all", limit=2000)
    n = len(entries)
    now_blobs = [e.to_stored() for e in entries]
    old_blobs = [ZSTD_MARK + old_codec.compress(e.to_json_bytes()) for e in entries]
    rows = [
        (
            "encode one entry",
            best_of(
                rounds, lambda: [ZSTD_MARK + old_codec.compress(e.to_json_bytes()) for e in entries]
            )
            / n,
            best_of(rounds, lambda: [e.to_stored() for e in entries]) / n,
        ),
        (
            "decode one entry",
            best_of(rounds, lambda: [Entry.from_stored(b) for b in old_blobs]) / n,
            best_of(rounds, lambda: [Entry.from_stored(b) for b in now_blobs]) / n,
        ),
    ]
    newest = entries[:101]
    read = lambda: store.entries("all", limit=101)  # noqa: E731
    now_read = best_of(rounds, read)
    store.binary.mset({keys.entry(e.id): before(e) for e in newest})
    old_read = best_of(rounds, read)
    store.binary.mset({keys.entry(e.id): e.to_stored() for e in newest})
    store.close()
    rows.append(("`Store.entries`, newest 101", old_read, now_read))
    return [(what, old * 1e6, now * 1e6) for what, old, now in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--feeds", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--repeat", type=int, default=51, help="rounds of each speed figure")
    args = parser.parse_args()
    from aggregator import keys
    from aggregator.store import Store

    report = Report(f"Redis memory per stored entry, {args.feeds} feeds × {ENTRIES} entries")
    with bench(args.feeds, keep=args.keep) as b:
        client = redis.Redis.from_url(b.redis_url)
        client.flushall()
        baseline = int(client.info("memory")["used_memory"])
        timed_command([str(BIN / "aggregator"), "poll"], b.env(), b.workdir / "poll.txt")
        growth = int(client.info("memory")["used_memory"]) - baseline
        store = Store.from_url(b.redis_url)
        count = store.count("all")
        blobs: list[bytes | bytearray | memoryview] = [
            e.to_json().encode() for e in store.entries("all", limit=count)
        ]
        json_bytes = sum(map(len, blobs))
        store.close()
        kinds: Counter[str] = Counter()
        names = [k.decode() for k in client.scan_iter(count=1000)]
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name, samples=0)
        for name, usage in zip(names, pipe.execute(), strict=True):
            kinds[kind_of(name.removeprefix(keys.PREFIX))] += int(usage or 0)
        client.close()
        timings = speed(b.redis_url, args.repeat)
    report.add("Redis used_memory growth per entry", Sample(growth / count, 0))
    report.add("entry JSON per entry", Sample(json_bytes / count, 0))
    target = Target(
        "Redis / JSON",
        lambda r: r.median("Redis used_memory growth per entry") / r.median("entry JSON per entry"),
        0.8,
        False,
    )
    text = report.render([target], columns=("bytes", "runs"))
    text += f"\n\n{count:,} entries. MEMORY USAGE by kind of key, bytes per entry:\n\n"
    text += "| key kind | bytes per entry | share |\n| --- | ---: | ---: |\n"
    total = sum(kinds.values()) or 1
    text += "\n".join(
        f"| `{kind}` | {usage / count:,.0f} | {usage / total:.1%} |"
        for kind, usage in kinds.most_common()
    )
    text += "\n\nWhat-if, the entry JSON encoded otherwise (bytes per entry, value alone):\n\n"
    text += "\n".join(f"- {label}: {size:,.0f}" for label, size in what_if(blobs).items())
    text += "\n\nSpeed, in process, median of " + str(args.repeat) + " rounds (µs):\n\n"
    text += "| work | form before (0x02) | stored form now | now / before |\n"
    text += "| --- | ---: | ---: | ---: |\n"
    text += "\n".join(
        f"| {w} | {old:,.1f} | {now:,.1f} | {now / old:.2f} |" for w, old, now in timings
    )
    report.save(f"memory-{args.feeds}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
