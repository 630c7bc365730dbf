"""`aggregator poll` as people run it: the whole command, from cron or by hand, on a farm of
feeds served by nginx, beside the reader library and feedparser alone, each a whole process.

    python bench/poll.py --feeds 1000 --repeat 3 [--profile]

Each repeat runs, in turn: our cold poll (Redis flushed: every entry new), reader cold (a new
database), feedparser alone, our warm poll (every feed answers 304), reader warm, then
`--small` runs each of `aggregator poll NAME` (one source, 304), the same with feeds.yaml
edited just before (a comment added: checked anew, not read as kept), `aggregator status`,
`aggregator --help`, and two floors: `python -c pass` and `python -c "import aggregator.cli"`.
After the repeats, in this process: reading the feeds.yaml and printing a table of every
source, which every such command pays beside its work. Every figure is a median over the
repeats; the CPU column counts the command and every process it started (its pollers and parse
pools), not redis-server or nginx. `--profile` adds py-spy
over one more run of each of our commands, and `python -X importtime` of the CLI.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from pathlib import Path

from harness import (
    BIN,
    CHANGED_SHARE,
    ENTRIES,
    NEW_PER_CHANGE,
    Report,
    Sample,
    Target,
    bench,
    log,
    py_spy,
    timed_command,
)

PEERS = str(Path(__file__).with_name("peers.py"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small", type=int, default=5, help="runs per repeat of the small ones")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--changed",
        type=float,
        default=CHANGED_SHARE,
        help="share of the feeds rewritten (NEW_PER_CHANGE new entries each) before the "
        "'ours 10 %% changed' poll; 0 leaves it out",
    )
    parser.add_argument("--no-reader", action="store_true", help="leave reader out")
    parser.add_argument("--no-feedparser", action="store_true", help="leave feedparser out")
    parser.add_argument(
        "--cluster", type=int, default=0, help="a Redis Cluster of this many masters"
    )
    args = parser.parse_args()
    n, py, agg = args.feeds, sys.executable, str(BIN / "aggregator")
    where = f", Redis Cluster of {args.cluster} masters" if args.cluster else ""
    report = Report(f"`aggregator poll` as a whole command, {n} feeds × {ENTRIES} entries{where}")
    with bench(n, keep=args.keep, cluster=args.cluster) as b:
        env, out = b.env(), b.workdir / "out.txt"
        urls = b.workdir / "urls.txt"
        urls.write_text("\n".join(b.farm.url(f) for f in b.farm.feeds))
        db = b.workdir / "reader.sqlite"
        want_fp = ENTRIES * sum(f.kind != "json" for f in b.farm.feeds)

        def polled(new: int, count: int = n) -> Callable[[str], bool]:
            def ok(text: str) -> bool:
                summary = f"{count} ok, 0 failed, {new} new entries" in text
                return summary and (new > 0 or text.count("not modified") == count)

            return ok

        def reader_ok(text: str) -> bool:
            return f"entries {n * ENTRIES} broken 0" in text

        first = b.farm.feeds[0].name
        edits = [0]

        def edited() -> None:
            """feeds.yaml with a new comment: its bytes changed, the next command checks it
            anew rather than reading it as kept (aggregator/config_cache.py)."""
            edits[0] += 1
            with open(b.config_path, "a", encoding="utf-8") as f:
                f.write(f"# edit {edits[0]}\n")

        small: dict[str, tuple[list[str], Callable[[str], bool] | None]] = {
            "ours, one source (304)": ([agg, "poll", first], polled(0, 1)),
            "ours, one source (304), feeds.yaml just edited": (
                [agg, "poll", first],
                polled(0, 1),
            ),
            "ours, status": ([agg, "status"], lambda t: first in t),
            "ours, --help": ([agg, "--help"], lambda t: "Usage" in t),
            "floor: python -c pass": ([py, "-c", "pass"], None),
            "floor: python -c 'import aggregator.cli'": ([py, "-c", "import aggregator.cli"], None),
        }
        changed_n = max(1, round(n * args.changed)) if args.changed > 0 else 0
        for r in range(args.repeat):
            log(f"repeat {r + 1}/{args.repeat}")
            b.flush()
            report.add("ours cold", timed_command([agg, "poll"], env, out, polled(n * ENTRIES)))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            reader = [py, PEERS, "reader", str(db), str(urls)]
            if not args.no_reader:
                report.add("reader cold", timed_command(reader, env, out, reader_ok))
            fp = [py, PEERS, "feedparser", str(b.farm.root)]
            if not args.no_feedparser:
                report.add(
                    "feedparser alone",
                    timed_command(fp, env, out, lambda t: f"entries {want_fp}" in t),
                )
            report.add("ours warm", timed_command([agg, "poll"], env, out, polled(0)))
            if not args.no_reader:
                report.add("reader warm", timed_command(reader, env, out, reader_ok))
            if changed_n:
                # A cycle as most are: a few feeds with a new entry or two, the rest 304.
                picked = random.Random(f"changed:{r}").sample(b.farm.feeds, changed_n)
                b.rewrite(picked, ENTRIES + NEW_PER_CHANGE)
                report.add(
                    "ours 10 % changed",
                    timed_command(
                        [agg, "poll"], env, out, polled_changed(n, changed_n * NEW_PER_CHANGE)
                    ),
                )
                b.rewrite(picked, ENTRIES)  # the farm as it was, for the next repeat
                # read once more (untimed), so that `poll NAME` below meets a 304 as it did
                timed_command([agg, "poll"], env, out, None)
            for key, (cmd, ok) in small.items():
                for _ in range(args.small):
                    if "just edited" in key:
                        edited()
                    report.add(key, timed_command(cmd, env, out, ok))
            report.repeat_done()

        targets = [
            Target(
                "cold: reader / ours",
                lambda r: r.median("reader cold") / r.median("ours cold"),
                3,
                True,
            ),
            Target(
                "cold: feedparser alone / ours",
                lambda r: r.median("feedparser alone") / r.median("ours cold"),
                1.0,
                True,
            ),
            Target(
                "warm: reader / ours",
                lambda r: r.median("reader warm") / r.median("ours warm"),
                3,
                True,
            ),
            Target(
                "one source (304)", lambda r: r.median("ours, one source (304)"), 0.25, False, " s"
            ),
            Target("status", lambda r: r.median("ours, status"), 0.3, False, " s"),
            Target("--help", lambda r: r.median("ours, --help"), 0.15, False, " s"),
        ]
        report.notes.append(
            "reader: `update_feeds(workers=8, scheduled=False)` after `add_feed` of every URL; "
            "feedparser alone: `feedparser.parse(bytes)` with its defaults over every file in a "
            "Pool of 2 (it finds no entries in JSON Feed). Ours: the farm's feeds.yaml and the "
            "private redis-server in AGGREGATOR_CONFIG and AGGREGATOR_REDIS_URL."
        )
        text = report.render(targets) + "\n\n" + explain(b.config_path, n, args.repeat)
        if args.profile:
            b.flush()
            timed_command([agg, "poll"], env, out)
            profiles = {"cold": [agg, "poll"], "warm": [agg, "poll"]}
            if changed_n:
                profiles["10 % changed"] = [agg, "poll"]
            profiles |= {"one source": [agg, "poll", first], "status": [agg, "status"]}
            picked = random.Random("changed:profile").sample(b.farm.feeds, changed_n)
            for name, cmd in profiles.items():
                if name == "cold":
                    b.flush()
                if name == "10 % changed":
                    b.rewrite(picked, ENTRIES + NEW_PER_CHANGE)
                log(f"profiling {name}")
                path = b.workdir / f"profile-{name.replace(' ', '-')}"
                text += f"\n\n### py-spy: {name}\n\n" + py_spy(["--", *cmd], env, path)
            text += "\n\n### python -X importtime -c 'import aggregator.cli'\n\n"
            text += import_times(py, env, b.workdir / "importtime.txt")
    report.save(f"poll-{n}", text)
    return 0


def polled_changed(count: int, new: int) -> Callable[[str], bool]:
    """The summary of a cycle where some feeds changed: every source ok, `new` entries."""
    return lambda text: f"{count} ok, 0 failed, {new} new entries" in text


def explain(config_path: Path, n: int, repeat: int) -> str:
    """In process, what a command pays before and after polling: reading the feeds.yaml of
    `n` sources (libyaml's loader, which config.load uses, beside PyYAML's pure-Python one),
    and printing a rich table of `n` rows shaped like the poll summary to a file at width 200
    (the CLI draws its tables with aggregator/table.py now; rich's is kept as the yardstick)."""
    import io
    import time

    import yaml
    from rich.console import Console
    from rich.table import Table

    from aggregator import config

    text = config_path.read_text("utf-8")
    columns = ("source", "status", "entries", "new", "updated", "merged", "filtered", "cut")

    def table() -> None:
        t = Table(title=f"Polled {n} sources")
        for column in (*columns, "time"):
            t.add_column(column)
        for i in range(n):
            t.add_row(f"f{i:05d}", "not modified", "20", "0", "0", "0", "0", "0", "0.05s")
        Console(file=io.StringIO(), soft_wrap=True, width=200).print(t)

    cases = {
        "config.load(feeds.yaml)": lambda: config.load(config_path),
        "of which yaml.load with CSafeLoader (libyaml)": lambda: yaml.load(
            text, Loader=yaml.CSafeLoader
        ),
        "beside it: yaml.safe_load (PyYAML, pure Python)": lambda: yaml.safe_load(text),
        f"rich Table of {n} rows, printed": table,
    }
    inproc = Report(f"In process: reading feeds.yaml and printing a table, {n} sources")
    inproc.verbose = False
    for _ in range(repeat):
        for key, fn in cases.items():
            started, cpu = time.perf_counter(), time.process_time()
            fn()
            inproc.add(key, Sample(time.perf_counter() - started, time.process_time() - cpu))
    return inproc.render([])


def import_times(py: str, env: dict[str, str], out: Path) -> str:
    timed_command([py, "-X", "importtime", "-c", "import aggregator.cli"], env, out)
    rows = []
    for line in out.read_text().splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            own, cumulative, name = line.removeprefix("import time:").split("|")
            rows.append((int(cumulative), int(own), name.strip()))
    rows.sort(reverse=True)
    lines = ["| cumulative ms | own ms | module |", "| ---: | ---: | --- |"]
    lines += [f"| {c / 1000:.1f} | {o / 1000:.1f} | `{name}` |" for c, o, name in rows[:20]]
    packages: dict[str, int] = {}
    for _, own_us, name in rows:
        packages[name.split(".")[0]] = packages.get(name.split(".")[0], 0) + own_us
    lines += ["", "| own ms, all its modules | package |", "| ---: | --- |"]
    best = sorted(packages.items(), key=lambda kv: -kv[1])[:20]
    lines += [f"| {us / 1000:.1f} | `{package}` |" for package, us in best]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
