"""Politeness per host across the fleet (settings.per_host): request slots taken and given
back by a script on the host's two sorted sets (one slot on a cluster: the host's tag).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from redis.commands.core import Script
from redis.exceptions import NoScriptError

from aggregator.keys import Layout
from aggregator.store.base import StoreBase, _some, _storage_errors

# Politeness per host, across every worker (settings.per_host): at most `concurrency` requests
# under way and `per_minute` started in any sliding minute. A slot whose worker died lapses.
# For each request of one host, in order (5 arguments each: now, lease end, token,
# concurrency, per_minute): '0' when the slot is taken, else the seconds to wait (as text:
# Lua numbers are truncated to integers on the way out).
_HOST_SLOT = """
local waits = {}
for i = 1, #ARGV, 5 do
  local now = tonumber(ARGV[i])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60)
  local wait = '0'
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[i + 3]) then
    wait = '0.05'
  elseif redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[i + 4]) then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    wait = tostring(math.max(tonumber(oldest[2]) + 60 - now, 0.01))
  else
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i + 2])
    redis.call('ZADD', KEYS[2], now, ARGV[i + 2])
    redis.call('EXPIRE', KEYS[1], 3600)
    redis.call('EXPIRE', KEYS[2], 120)
  end
  table.insert(waits, wait)
end
return waits
"""


@dataclasses.dataclass(frozen=True, slots=True)
class HostSlotRequest:
    """One `take_host_slot` call: `host`'s slot for `token`, asked at `now` (epoch seconds)
    for `lease` seconds, under the host's limits."""

    host: str
    token: str
    now: float
    lease: float
    concurrency: int
    per_minute: int


# A request slot taken with `take_host_slots`: (host, token).
HostSlot = tuple[str, str]
_Groups = list[list[int]]  # positions of the requests each queued script call asks for


def _spread(groups: _Groups, replies: Sequence[Any], count: int) -> list[Any]:
    """Each of `count` requests' reply, out of the script calls' `replies` (`groups` says
    whose): a call that failed fails each of its requests."""
    waits: list[Any] = [None] * count
    for positions, reply in zip(groups, replies, strict=True):
        for k, i in enumerate(positions):
            waits[i] = reply if isinstance(reply, Exception) else reply[k]
    return waits


def _queue_releases(k: Layout, pipe: Any, slots: Iterable[HostSlot], started: bool = True) -> None:
    """Queue the giving back of request slots (see `Store.release_host_slots`): one ZREM per
    host and set for all of its tokens, not one per slot."""
    tokens: dict[str, list[str]] = {}
    for host, token in slots:
        tokens.setdefault(host, []).append(token)
    for host, taken in tokens.items():
        pipe.zrem(k.host_inflight(host), *taken)
        if not started:
            pipe.zrem(k.host_recent(host), *taken)


class Hosts(StoreBase):
    @functools.cached_property
    def _host_slot(self) -> Script:
        return self.client.register_script(_HOST_SLOT)

    def take_host_slot(
        self, host: str, token: str, now: float, lease: float, concurrency: int, per_minute: int
    ) -> float:
        """Try to start a request to `host`: 0 when the slot is ours (release it with
        `release_host_slot`), else how many seconds to wait before trying again."""
        request = HostSlotRequest(host, token, now, lease, concurrency, per_minute)
        return self.take_host_slots([request])[0]

    def take_host_slots(self, requests: Sequence[HostSlotRequest]) -> list[float]:
        """`take_host_slot` for each request, in order, in one round trip. The script takes
        a host's requests in order, so requests of one batch for one host count against
        each other."""
        if not requests:
            return []
        with _storage_errors(f"taking a request slot for {_some(r.host for r in requests)}"):
            waits = self._host_slot_waits(requests, self._host_slot_replies(requests))
            self._raise_first_error(requests, waits, waits)
        return [float(wait) for wait in waits]

    def _queue_host_slots(self, pipe: Any, requests: Sequence[HostSlotRequest]) -> _Groups:
        """Queue the host slot script once per host, for that host's requests in order: a
        command costs redis-py as much as the next, and a poller's batch of polls often
        asks one host many times. EVALSHA itself, not the Script object: a Script in a
        pipeline first asks SCRIPT EXISTS, a round trip of its own on every batch. Returns
        the positions in `requests` of each command's requests (for `_spread`)."""
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.host, []).append(i)
        for host, positions in groups.items():
            args: list[float | str | int] = []
            for i in positions:
                r = requests[i]
                args += [r.now, r.now + r.lease, r.token, r.concurrency, r.per_minute]
            keys = (self.keys.host_inflight(host), self.keys.host_recent(host))
            pipe.evalsha(self._host_slot.sha, 2, *keys, *args)
        return list(groups.values())

    def _host_slot_replies(self, requests: Sequence[HostSlotRequest]) -> list[Any]:
        """One pipeline of the host slot script, its replies (errors among them) in order."""
        pipe = self.client.pipeline(transaction=False)
        groups = self._queue_host_slots(pipe, requests)
        return _spread(groups, pipe.execute(raise_on_error=False), len(requests))

    def _host_slot_waits(
        self, requests: Sequence[HostSlotRequest], replies: Sequence[Any]
    ) -> list[Any]:
        """The script's `replies` to `requests`, those a server that lost its scripts
        (restarted, SCRIPT FLUSH) did not run sent again with the script loaded."""
        waits = list(replies)
        lost = [i for i, wait in enumerate(waits) if isinstance(wait, NoScriptError)]
        if lost:
            self._host_slot.sha = str(self.client.script_load(_HOST_SLOT))
            again = self._host_slot_replies([requests[i] for i in lost])
            for i, wait in zip(lost, again, strict=True):
                waits[i] = wait
        return waits

    def _raise_first_error(
        self, requests: Sequence[HostSlotRequest], waits: Sequence[Any], replies: Sequence[Any]
    ) -> None:
        """Raise the first error among `replies`, if any, once the slots that `requests` did
        take are given back: the batch fails for every caller, and none learns it has one."""
        error = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if error is None:
            return
        taken = [
            (r.host, r.token)
            for r, wait in zip(requests, waits, strict=True)
            if not isinstance(wait, Exception) and float(wait) <= 0
        ]
        self.release_host_slots(taken)
        raise error

    def release_host_slot(self, host: str, token: str) -> None:
        self.release_host_slots([(host, token)])

    def release_host_slots(self, slots: Sequence[HostSlot], *, started: bool = True) -> list[None]:
        """Give back each (host, token) slot, in one round trip. A slot given back unused
        (`started=False`: no request was made with it) leaves the host's per-minute count
        too."""
        if not slots:
            return []
        with _storage_errors(f"releasing a request slot for {_some(host for host, _ in slots)}"):
            pipe = self.client.pipeline(transaction=False)
            _queue_releases(self.keys, pipe, slots, started)
            pipe.execute()
        return [None] * len(slots)
