"""`aggregator worker` in its steady state: CPU seconds per warm round of every source.

    python bench/worker.py --feeds 1000 --interval 20 --repeat 3 [--profile] [--metrics]

Starts `aggregator worker` as a subprocess on the farm (AGGREGATOR_CONFIG and
AGGREGATOR_REDIS_URL as for `aggregator poll`), every source at `--interval` seconds, and lets
it settle: the cold round, then one whole warm round. Then, `--repeat` times, a window that
lasts until nginx has answered `--rounds` × `--feeds` more polls (its access log; every one
must be a 304): the CPU seconds of the worker and its child processes over the window (/proc,
through psutil), per round of `--feeds` polls, idle ticks included. `--profile` runs py-spy
(`--gil`) over the worker and its children for `--rounds` intervals more.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    BIN,
    Report,
    Sample,
    Target,
    bench,
    free_port,
    log,
    py_spy,
    stop_process,
    tree_cpu,
)


def statuses(access_log: Path) -> tuple[int, int]:
    """Requests nginx answered so far: (304s, others)."""
    lines = access_log.read_text().split()
    not_modified = lines.count("304")
    return not_modified, len(lines) - not_modified


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between polls")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of polls per window")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="run the worker with --metrics-port (it counts its polls only then)",
    )
    args = parser.parse_args()
    n = args.feeds
    served = ", with --metrics-port" if args.metrics else ""
    report = Report(f"`aggregator worker`{served}, {n} sources polled every {args.interval:g} s")
    with bench(n, keep=args.keep, access_log=True) as b:
        b.configure({"default_interval": f"{args.interval:g}s"})
        env, access = b.env(), b.workdir / "access.log"
        command = [str(BIN / "aggregator"), "worker"]
        if args.metrics:
            command += ["--metrics-port", str(free_port())]
        with open(b.workdir / "worker.log", "wb") as out:
            worker = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 60 + 4 * args.interval
            while statuses(access)[0] < n:  # the cold round and one warm round
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"worker did not settle: {statuses(access)} answers")
                time.sleep(0.5)
            log(f"settled: {statuses(access)} answers (304, other)")
            for r in range(args.repeat):
                cpu0, (warm0, other0), started = tree_cpu(worker.pid), statuses(access), time.time()
                while statuses(access)[0] - warm0 < args.rounds * n:
                    if time.time() - started > 10 * args.rounds * args.interval + 60:
                        raise SystemExit(f"window {r + 1}: too few polls {statuses(access)}")
                    time.sleep(0.2)
                window = time.time() - started
                cpu, (warm, other) = tree_cpu(worker.pid) - cpu0, statuses(access)
                polls = warm - warm0
                if other != other0:
                    raise SystemExit(f"window {r + 1}: {other - other0} answers were not 304")
                rounds = polls / n
                report.add("warm round", Sample(window / rounds, cpu / rounds))
                log(f"  window {r + 1}: {polls} polls, {cpu:.2f} CPU s in {window:.1f} s")
                report.repeat_done()
            goal = Target("warm round", lambda r: r.cpu("warm round"), 0.2, False, " CPU s")
            text = report.render([goal], ("s per round", "runs s", "CPU s per round"))
            text += (
                f"\n\nA round: {n} polls, every one a 304. CPU: the worker and its children over "
                "the window (idle ticks between polls included), divided by the rounds in it."
            )
            if args.profile:
                seconds = str(int(args.rounds * args.interval))
                # --gil: the thread holding the GIL only, i.e. Python's CPU, idle left out
                target = ["--pid", str(worker.pid), "--duration", seconds, "--gil"]
                path = b.workdir / "profile-worker"
                text += "\n\n### py-spy: the worker, one window\n\n" + py_spy(target, env, path)
        finally:
            stop_process(worker)
    report.save(f"worker-{n}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
