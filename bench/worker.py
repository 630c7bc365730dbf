"""`aggregator worker` in its steady state: CPU seconds per warm round of every source.

    python bench/worker.py --feeds 1000 --interval 10 --repeat 3 [--profile]

Starts `aggregator worker` as a subprocess on the farm (AGGREGATOR_CONFIG and
AGGREGATOR_REDIS_URL as for `aggregator poll`), every source at `--interval` seconds, and lets
it settle: the cold round, then one whole warm round. Then, `--repeat` times, a window of
`--rounds` intervals: the CPU seconds of the worker and its child processes (/proc, through
psutil) over the window, and the polls nginx answered in it (its access log: all must be 304),
give the CPU seconds per round of `--feeds` polls. `--profile` runs py-spy over the worker and
its children for one more window.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from harness import BIN, Report, Sample, Target, bench, log, py_spy, stop_process, tree_cpu


def statuses(access_log: Path) -> tuple[int, int]:
    """Requests nginx answered so far: (304s, others)."""
    lines = access_log.read_text().split()
    not_modified = lines.count("304")
    return not_modified, len(lines) - not_modified


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between polls")
    parser.add_argument("--rounds", type=int, default=3, help="intervals per window")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    n = args.feeds
    report = Report(f"`aggregator worker`, {n} sources polled every {args.interval:g} s")
    with bench(n, keep=args.keep, access_log=True) as b:
        b.configure({"default_interval": f"{args.interval:g}s"})
        env, access = b.env(), b.workdir / "access.log"
        with open(b.workdir / "worker.log", "wb") as out:
            worker = subprocess.Popen(
                [str(BIN / "aggregator"), "worker"], env=env, stdout=out, stderr=out
            )
        try:
            deadline = time.monotonic() + 60 + 4 * args.interval
            while statuses(access)[0] < n:  # the cold round and one warm round
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"worker did not settle: {statuses(access)} answers")
                time.sleep(0.5)
            log(f"settled: {statuses(access)} answers (304, other)")
            window = args.rounds * args.interval
            for r in range(args.repeat):
                cpu0, (warm0, other0) = tree_cpu(worker.pid), statuses(access)
                time.sleep(window)
                cpu, (warm, other) = tree_cpu(worker.pid) - cpu0, statuses(access)
                polls = warm - warm0
                if other != other0 or polls < n:
                    raise SystemExit(f"window {r + 1}: {polls} 304s, {other - other0} others")
                rounds = polls / n
                report.add("warm round", Sample(window / rounds, cpu / rounds))
                log(f"  window {r + 1}: {polls} polls, {cpu:.2f} CPU s in {window:g} s")
                report.repeat_done()
            goal = Target("warm round", lambda r: r.cpu("warm round"), 0.2, False, " CPU s")
            text = report.render([goal], ("s per round", "runs s", "CPU s per round"))
            text += (
                f"\n\nA round: {n} polls, every one a 304. CPU: the worker and its children over "
                "the window (idle ticks between polls included), divided by the rounds in it."
            )
            if args.profile:
                target = ["--pid", str(worker.pid), "--duration", str(int(window))]
                path = b.workdir / "profile-worker"
                text += "\n\n### py-spy: the worker, one window\n\n" + py_spy(target, env, path)
        finally:
            stop_process(worker)
    report.save(f"worker-{n}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
