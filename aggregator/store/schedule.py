"""The schedule and each source's polling state: due times in one sorted set (claimed a
lease ahead by a script), the state hash per source, and the reload counter.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from redis.commands.core import Script

from aggregator import keys, metrics
from aggregator.keys import Layout
from aggregator.models import SourceState, Validators, guids_from_stored
from aggregator.store.base import _dt, _some, _storage_errors, _ts
from aggregator.store.hosts import Hosts, HostSlot, HostSlotRequest, _queue_releases, _spread

# A source whose due time is still the lease end its last claim set was claimed and its poll
# never recorded a due time: the lease ran out unfinished, and this claim takes it over. The
# lease is kept as ZSCORE writes it, so the comparison is of one string with itself.
_CLAIM = """
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local taken = 0
for _, name in ipairs(names) do
  if redis.call('HGET', KEYS[2], name) == redis.call('ZSCORE', KEYS[1], name) then
    taken = taken + 1
  end
  redis.call('ZADD', KEYS[1], ARGV[2], name)
  redis.call('HSET', KEYS[2], name, redis.call('ZSCORE', KEYS[1], name))
end
return {taken, names}
"""
# For each (name, lease) pair after ARGV[2]: the source's due time moves to ARGV[1] only where
# it still is that lease, the due time its claim wrote. ARGV[2] = '1': a renewal, recorded as
# the lease in KEYS[2] (so that its running out is a takeover); else the source is given back,
# and its lease forgotten. Answers the names moved.
_MOVE_LEASES = """
local moved = {}
for i = 3, #ARGV, 2 do
  local due = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if due and tonumber(due) == tonumber(ARGV[i + 1]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    if ARGV[2] == '1' then
      redis.call('HSET', KEYS[2], ARGV[i], redis.call('ZSCORE', KEYS[1], ARGV[i]))
    else
      redis.call('HDEL', KEYS[2], ARGV[i])
    end
    table.insert(moved, ARGV[i])
  end
end
return moved
"""
# One poll that stored no entries, for `Store.finish_polls`: source, state fields, next due.
StateWrite = tuple[str, Mapping[str, str | int | float], datetime | None]


class Schedule(Hosts):
    @functools.cached_property
    def _claim(self) -> Script:
        return self.client.register_script(_CLAIM)

    def save_state(
        self, source: str, state: Mapping[str, str | int | float], next_due: datetime | None
    ) -> None:
        """Record a poll that stored no entries (not modified, or failed)."""
        self.finish_polls([((source, state, next_due), None)])

    def finish_polls(self, polls: Sequence[tuple[StateWrite, HostSlot | None]]) -> list[None]:
        """Record many polls that stored no entries, in one MULTI/EXEC: the writes `save_poll`
        makes for such a poll, for each (source, state, next due time) in order, each poll
        also giving back the request slot it names (if any): a poll that ends with its state
        costs one round trip, not two. Nothing is read first, so nothing is WATCHed and there
        is nothing to retry. The due times go in one ZADD and the slots in one ZREM per host,
        after the states: redis-py's work is per command, whatever its size (on a cluster,
        where this is no transaction, a state recorded without its due time is polled again
        when its lease runs out, as before)."""
        if not polls:
            return []
        with _storage_errors(f"saving {_some(source for (source, _, _), _ in polls)}"):
            pipe: Any = self._batch()
            due: dict[str, float] = {}
            for (source, state, next_due), _ in polls:
                _queue_state(self.keys, pipe, source, state, None)
                if next_due is not None:
                    due[source] = _ts(next_due)  # a source twice: its last poll's, as in order
            if due:
                pipe.zadd(keys.DUE, due)
            _queue_releases(self.keys, pipe, (slot for _, slot in polls if slot is not None))
            pipe.execute()
        return [None] * len(polls)

    def source_states(self, names: Sequence[str]) -> list[SourceState]:
        """Each source's state, with `stored` counting the entries of it stored now."""
        with _storage_errors("reading source states"):
            pipe = self.client.pipeline(transaction=False)
            # Every due time in one reply rather than a ZSCORE per source: `aggregator status`
            # reads a thousand sources, and each command costs redis-py as much to send as
            # to read.
            pipe.zrange(keys.DUE, 0, -1, withscores=True)
            for name in names:
                pipe.hgetall(self.keys.source(name))
                pipe.zcard(self.keys.source_entries(name))
            due, *replies = pipe.execute()
        due_at: dict[str, float] = dict(due)
        return [
            dataclasses.replace(_state(name, state, due_at.get(name)), stored=count)
            for name, state, count in zip(names, replies[::2], replies[1::2], strict=True)
        ]

    def previous_guids(self, source: str) -> dict[str, str]:
        """link → guid of the source's entries at its last full poll."""
        key = self.keys.source_guids(source)
        with _storage_errors(f"reading the guids of {source}"):
            try:
                raw = self.binary.get(key)
            except redis.ResponseError:  # WRONGTYPE: a hash, as earlier versions kept it
                reply = self.client.hgetall(key)
                return {str(k): str(v) for k, v in reply.items()}
        return guids_from_stored(raw) if isinstance(raw, bytes) and raw else {}

    # --- scheduling -----------------------------------------------------------------------

    def sync_sources(
        self, names: Sequence[str], now: datetime, urls: Mapping[str, str] | None = None
    ) -> None:
        """Make the due set hold exactly `names`: new sources are due now, gone ones leave.
        With `urls` (name → configured URL): a source that answered 410 and whose URL has
        been changed since is due now too (it was no longer scheduled)."""
        with _storage_errors("syncing sources"):
            present: set[str] = {str(n) for n in self.client.zrange(keys.DUE, 0, -1)}
            revived = self._revived(urls or {})
            pipe = self.client.pipeline(transaction=True)
            gone = present - set(names)
            if gone:
                pipe.zrem(keys.DUE, *gone)
                pipe.hdel(keys.LEASES, *gone)
            if names:
                pipe.zadd(keys.DUE, {n: now.timestamp() for n in names}, nx=True)
            if revived:
                pipe.zadd(keys.DUE, {n: now.timestamp() for n in revived}, xx=True)
            pipe.execute()

    def _revived(self, urls: Mapping[str, str]) -> list[str]:
        """The sources of `urls` that answered 410 at a URL other than the one configured."""
        pipe = self.client.pipeline(transaction=False)
        for name in urls:
            pipe.hmget(self.keys.source(name), "gone", "url", "moved_from")
        replies = pipe.execute() if urls else []
        return [
            name
            for (name, url), (gone, polled, moved_from) in zip(urls.items(), replies, strict=True)
            if gone == "1" and url not in (polled, moved_from)
        ]

    def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> list[str]:
        """Take up to `limit` due sources, moving their due time to `lease_until` in the same
        step: another worker will not take them, and if this one dies they come due again
        (counted as lease takeovers when they are claimed again)."""
        if limit <= 0:
            return []
        with _storage_errors("claiming due sources"):
            taken, names = self._claim(
                keys=[keys.DUE, keys.LEASES], args=[now.timestamp(), _ts(lease_until), limit]
            )
        if taken:
            metrics.LEASE_TAKEOVERS.inc(int(taken))
        return [str(n) for n in names]

    def move_leases(
        self, leases: Mapping[str, datetime], to: datetime, *, renew: bool
    ) -> list[str]:
        """For each source → the lease its claim wrote (`claim_due`'s `lease_until`): move
        its due time to `to` where it is still that lease, so the move never undoes a poll
        that recorded its next due time meanwhile, nor another worker's claim. `renew`: a
        later `to` renews the lease of a poll still running (recorded as its lease, see
        `_CLAIM`); else `to` = now gives back a source whose poll Redis cut short. The names
        moved."""
        if not leases:
            return []
        args: list[float | str] = [_ts(to), "1" if renew else "0"]
        for name, until in leases.items():
            args += [name, _ts(until)]
        with _storage_errors(f"moving the leases of {_some(leases)}"):
            moved = self._move_leases(keys=[keys.DUE, keys.LEASES], args=args)
        return [str(n) for n in moved]

    @functools.cached_property
    def _move_leases(self) -> Script:
        return self.client.register_script(_MOVE_LEASES)

    def start_polls(
        self, starts: Sequence[tuple[str, HostSlotRequest]]
    ) -> list[tuple[SourceState, float]]:
        """`source_states` and `take_host_slots` in one round trip: for each (source, request),
        the source's state (without its due time and stored count, which a poll does not use)
        and the request's wait (0 when the slot is ours)."""
        if not starts:
            return []
        requests = [request for _, request in starts]
        action = f"reading source states of {_some(n for n, _ in starts)} and taking their slots"
        with _storage_errors(action):
            pipe = self.client.pipeline(transaction=False)
            for name, _ in starts:
                pipe.hgetall(self.keys.source(name))
            groups = self._queue_host_slots(pipe, requests)
            replies = pipe.execute(raise_on_error=False)
            states = replies[: len(starts)]
            slots = _spread(groups, replies[len(starts) :], len(requests))
            waits = self._host_slot_waits(requests, slots)
            self._raise_first_error(requests, waits, [*states, *waits])
        return [
            (_state(name, data, None), float(wait))
            for (name, _), data, wait in zip(starts, states, waits, strict=True)
        ]

    def reload_version(self) -> int:
        with _storage_errors("reading the reload counter"):
            return int(self.client.get(keys.RELOAD) or 0)

    def request_reload(self) -> int:
        with _storage_errors("asking workers to reload"):
            return int(self.client.incr(keys.RELOAD))


def _queue_state(
    k: Layout,
    pipe: Any,
    source: str,
    state: Mapping[str, str | int | float],
    next_due: datetime | None,
    new: int = 0,
) -> None:
    """Queue the writes that record one poll: its state fields, the entries it added (`new`),
    and its next due time unless None (left as it is)."""
    pipe.hset(k.source(source), mapping={**state, "new": new})
    if next_due is not None:
        pipe.zadd(keys.DUE, {source: _ts(next_due)})


def _queue_state_read(k: Layout, pipe: Any, source: str) -> None:
    """Queue the reads of one source's state: its hash and its due time (see `_state`)."""
    pipe.hgetall(k.source(source))
    pipe.zscore(keys.DUE, source)


def _state(name: str, data: dict[str, str], due: float | None) -> SourceState:
    return SourceState(
        name=name,
        url=data.get("url", ""),
        status=int(data.get("status") or 0),
        last_poll=_dt(data.get("last_poll")),
        last_success=_dt(data.get("last_success")),
        next_due=datetime.fromtimestamp(due, UTC) if due is not None else None,
        last_error=data.get("last_error", ""),
        failures=int(data.get("failures") or 0),
        entries=int(data.get("entries") or 0),
        new_entries=int(data.get("new") or 0),
        validators=Validators(data.get("etag", ""), data.get("last_modified", "")),
        id_mode=data.get("id_mode") or "guid",
        moved_to=data.get("moved_to", ""),
        moved_from=data.get("moved_from", ""),
        gone=data.get("gone") == "1",
        body_hash=data.get("body_hash", ""),
        listing=data.get("listing", ""),
        age_check=float(data["age_check"]) if data.get("age_check") else None,
        filing=data.get("filing", ""),
    )
