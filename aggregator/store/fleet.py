"""The fleet: which workers run, and what each has done. Each worker writes its report every
few seconds (a hash with a TTL) and its time in one sorted set; `aggregator status` reads the
workers seen within a horizon. Every key is under `{agg}` (aggregator/keys.py): one slot on a
cluster too, so the reports are read in one pipeline to one node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aggregator import keys
from aggregator.store.base import StoreBase, _storage_errors

REPORT_TTL = 60  # seconds a report outlives its worker's last word
FORGET_AFTER = 86400  # a worker not seen for a day leaves the sorted set


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerReport:
    """One worker as it last reported: `polls` finished, `errors` the failed ones."""

    worker_id: str
    host: str
    pid: int
    started: datetime
    polls: int
    errors: int
    last_seen: datetime

    def to_fields(self) -> dict[str, str | int | float]:
        return {
            "host": self.host,
            "pid": self.pid,
            "started": self.started.timestamp(),
            "polls": self.polls,
            "errors": self.errors,
        }

    @classmethod
    def from_fields(cls, worker_id: str, data: Mapping[str, str], seen: float) -> WorkerReport:
        return cls(
            worker_id,
            data.get("host", ""),
            int(data.get("pid") or 0),
            datetime.fromtimestamp(float(data.get("started") or 0), UTC),
            int(data.get("polls") or 0),
            int(data.get("errors") or 0),
            datetime.fromtimestamp(seen, UTC),
        )


class Fleet(StoreBase):
    def report_worker(self, report: WorkerReport, ttl: int = REPORT_TTL) -> None:
        """Write `report` (its `last_seen` is when): one round trip."""
        seen = report.last_seen.timestamp()
        key = keys.worker(report.worker_id)
        with _storage_errors(f"reporting worker {report.worker_id}"):
            pipe: Any = self.client.pipeline(transaction=True)
            pipe.hset(key, mapping=report.to_fields())
            pipe.expire(key, ttl)
            pipe.zadd(keys.WORKERS, {report.worker_id: seen})
            pipe.zremrangebyscore(keys.WORKERS, "-inf", seen - FORGET_AFTER)
            pipe.execute()

    def forget_worker(self, worker_id: str) -> None:
        """A worker that stops says so: it is not listed any more."""
        with _storage_errors(f"removing worker {worker_id}"):
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(keys.worker(worker_id))
            pipe.zrem(keys.WORKERS, worker_id)
            pipe.execute()

    def workers_seen(self, now: datetime, within: float = REPORT_TTL) -> list[WorkerReport]:
        """The workers that reported in the `within` seconds before `now`, by when each
        started. Two round trips: who, then every report in one pipeline (one slot)."""
        since = now.timestamp() - within
        with _storage_errors("reading the workers' reports"):
            reply: Any = self.client.zrangebyscore(keys.WORKERS, since, "+inf", withscores=True)
            seen: list[tuple[str, float]] = list(reply)
            pipe = self.client.pipeline(transaction=False)
            for worker_id, _ in seen:
                pipe.hgetall(keys.worker(worker_id))
            reports = pipe.execute() if seen else []
        found = [
            WorkerReport.from_fields(str(worker_id), data, float(score))
            for (worker_id, score), data in zip(seen, reports, strict=True)
            if data  # its report expired: it has not reported for a while
        ]
        return sorted(found, key=lambda r: (r.started, r.worker_id))
