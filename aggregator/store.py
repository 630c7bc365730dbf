"""Store: entries, their indexes and per-source state in Redis. The only module that imports redis.

Layout (key names in `aggregator.keys`): each entry is a JSON string carrying the digest of what
its source said; a sorted set per category, per tag and one for everything orders entry ids by
date; a hash per source keeps its polling state; one sorted set keeps every source's next due
time. Cross-source deduplication keeps a key per canonical link or global guid pointing at the
entry, and an alias from each merged source's id to it; retention leaves a tombstone with a TTL
so an expired entry still in its source's document is not stored again.

Every multi-key write is one MULTI/EXEC transaction guarded by WATCH on the keys it read
(optimistic concurrency: if another worker wrote them meanwhile, the plan is made again), so
an entry, its indexes and its source's state change together or not at all. Every Redis failure
surfaces as StorageError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException

from aggregator import keys
from aggregator.errors import StorageError
from aggregator.identity import dedup_keys
from aggregator.models import (
    Entry,
    Origin,
    RetentionRule,
    SourceState,
    Validators,
    entry_digest,
)

_CLAIM = """
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, name in ipairs(names) do redis.call('ZADD', KEYS[1], ARGV[2], name) end
return names
"""
# Politeness per host, across every worker (settings.per_host): at most `concurrency` requests
# under way and `per_minute` started in any sliding minute. A slot whose worker died lapses.
# Returns '0' when the slot is taken, else the seconds to wait (as text: Lua numbers are
# truncated to integers on the way out).
_HOST_SLOT = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return '0.05'
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return tostring(math.max(tonumber(oldest[2]) + 60 - now, 0.01))
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], 3600)
redis.call('EXPIRE', KEYS[2], 120)
return '0'
"""
MAX_ATTEMPTS = 32  # a save that keeps conflicting: retried with backoff, about 5 s at most
DAY = 86400


@dataclasses.dataclass(frozen=True, slots=True)
class SaveResult:
    """What one poll's save did: entries added, rewritten and merged into another source's
    copy of the story; `cut`, entries of the document left out because retention's
    max_entries cut them before (tombstoned); `new_ids`, the ids added."""

    new: int
    updated: int
    merged: int = 0
    cut: int = 0
    new_ids: tuple[str, ...] = dataclasses.field(default=(), compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Retained:
    """What one run of retention removed: `aged`, entries no source had listed for max_age;
    `cut`, entries over the category's max_entries."""

    aged: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()


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


# One poll that stored no entries, for `Store.finish_polls`: source, state fields, next due.
StateWrite = tuple[str, Mapping[str, str | int | float], datetime | None]
# A request slot taken with `take_host_slots`: (host, token).
HostSlot = tuple[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered feed as cached: the index version it reflects, and the response parts
    (`body` is None on a miss)."""

    version: int
    body: bytes | None = None
    etag: str = ""
    last_modified: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Lifetimes:
    """How long tombstones live (seconds) after their source last listed the entry: they
    outlast retention's max_age, so an entry cut by max_entries stays out while it is listed.
    Dedup claims live as long as the entry they point at: retention deletes them with it."""

    tombstone: int = 97 * DAY

    @classmethod
    def for_max_age(cls, max_age: float) -> Lifetimes:
        return cls(tombstone=max(int(max_age) + 7 * DAY, 30 * DAY))


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    """Where a store is: enough to connect to it again from another process."""

    url: str
    lifetimes: Lifetimes


_OPEN: dict[Address, Store] = {}  # `Store.at`: one store per address in each process


def connect(url: str, *, text: bool = True) -> redis.Redis | RedisCluster:
    """A client for `url`; `redis+cluster://host:port` selects Redis Cluster. `text` clients
    answer str; the others bytes (stored entries are compressed)."""
    if url.startswith("redis+cluster://"):
        # A cluster client asks for the slot map as it is made: unreachable, that is a
        # StorageError like any other Redis failure.
        with _storage_errors(f"connecting to the cluster at {url}"):
            return RedisCluster.from_url(
                "redis://" + url.removeprefix("redis+cluster://"), decode_responses=text
            )
    return redis.Redis.from_url(url, decode_responses=text, health_check_interval=30)


def _text(value: bytes | str | None) -> str | None:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (redis.RedisError, RedisClusterException) as err:
        # RedisClusterException (no slot map, no node reachable) is not a RedisError.
        raise StorageError(f"Redis failed while {action}: {err}") from err


def _some(names: Iterable[str]) -> str:
    """Names for an error message: `a`, or `a and 4 more` for a batch."""
    first, *rest = names
    return f"{first} and {len(rest)} more" if rest else first


def _ts(value: datetime) -> float:
    return round(value.timestamp(), 6)


def _dt(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def _indexes(entry: Entry) -> set[str]:
    return {
        keys.ALL,
        *(keys.index("category", c) for c in entry.all_categories),
        *(keys.index("tag", t) for t in entry.all_tags),
    }


class Store:
    """`client` answers str; `binary` (same server) answers bytes, for the compressed entries
    and the transactions that read them."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        binary: redis.Redis | RedisCluster,
        lifetimes: Lifetimes | None = None,
    ) -> None:
        self.client = client
        self.binary = binary
        self.lifetimes = lifetimes or Lifetimes()
        self.address: Address | None = None  # set by `from_url`
        self._claim = client.register_script(_CLAIM)
        self._host_slot = client.register_script(_HOST_SLOT)

    @classmethod
    def from_url(cls, url: str, lifetimes: Lifetimes | None = None) -> Store:
        store = cls(connect(url), connect(url, text=False), lifetimes)
        store.address = Address(url, store.lifetimes)
        return store

    @classmethod
    def at(cls, address: Address) -> Store:
        """This process's store at `address`, connected once (for pool workers: a Store's
        connections cannot cross a process boundary, its address can)."""
        found = _OPEN.get(address)
        if found is None:
            found = _OPEN[address] = cls.from_url(address.url, address.lifetimes)
        return found

    def forget(self) -> None:
        """Drop this process's connections after a call was cut short (a time bound may have
        stopped it between a command and its reply): the next use reconnects."""
        if self.address is not None:
            _OPEN.pop(self.address, None)
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        self.client.close()
        self.binary.close()

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def _transaction(self, action: str, attempt: Any) -> Any:
        """Run `attempt(pipe)` (WATCH, read, MULTI, queue writes) until EXEC succeeds."""
        with _storage_errors(action):
            for tries in range(MAX_ATTEMPTS):
                with self.binary.pipeline(transaction=True) as pipe:
                    try:
                        result = attempt(pipe)
                        pipe.execute()
                        return result
                    except redis.WatchError:
                        # Many sources saving one story at once keep conflicting if they
                        # retry in step: each waits a random while, longer every time.
                        time.sleep(random.uniform(0, min(0.25, 0.002 * 2**tries)))
        raise StorageError(f"{action}: the data kept changing under us; try again")

    # --- writes ---------------------------------------------------------------------------

    def save_poll(
        self,
        source: str,
        entries: Sequence[Entry],
        state: Mapping[str, str | int | float],
        next_due: datetime | None,
        *,
        guids: Mapping[str, str] | None = None,
        listed_at: float | None = None,
    ) -> SaveResult:
        """Write one poll's result in one transaction: new entries with their indexes and dedup
        keys; changed ones (digest differs) in place, keeping their first-seen time and other
        sources, with `updated` set when the source gave none; a story another source already
        brought merged into that entry; the source's state, next due time and guid memory.
        Unchanged entries and those cut by max_entries (tombstoned) are not written. What
        the document lists is remembered for retention; `listed_at` is when the previous
        document was last confirmed (a 304 confirms it), the time the entries it listed and
        this one does not were last listed."""
        return self._transaction(  # type: ignore[no-any-return]
            f"saving {source}",
            lambda pipe: _SavePlan(self, pipe, source).run(
                entries, state, next_due, guids, listed_at
            ),
        )

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
        is nothing to retry."""
        if not polls:
            return []
        with _storage_errors(f"saving {_some(source for (source, _, _), _ in polls)}"):
            pipe: Any = self.client.pipeline(transaction=True)
            for (source, state, next_due), slot in polls:
                _queue_state(pipe, source, state, next_due)
                if slot is not None:
                    _queue_release(pipe, slot)
            pipe.execute()
        return [None] * len(polls)

    def enforce_retention(
        self, category: str, rule: RetentionRule, now: datetime, *, source: str | None = None
    ) -> Retained:
        """settings.retention after a poll of `source` filed under `category`.

        By age, per source: an entry goes once `max_age` has passed since the last time its
        source listed it (never while its latest document lists it), except the source's
        `keep_per_source` newest, and only once every source it came through has let it go.
        By count, per category: the newest `max_entries` stay; an entry leaving its only
        category is deleted and tombstoned, so that its source, which may still list it, does
        not bring it back. Deleted entries leave no index entry, alias or dedup claim."""
        aged = self._age_out(source, rule, now) if source else []
        return Retained(tuple(aged), tuple(self._cap(category, rule.max_entries)))

    def _age_out(self, source: str, rule: RetentionRule, now: datetime) -> list[str]:
        """The age rule for `source`, and on its state when the next entry it no longer
        lists comes of age (`age_check`): a poll answered 304 runs retention then."""
        listed, own = keys.source_listed(source), keys.source_entries(source)
        oldest = _ts(now) - rule.max_age  # listed last before this: aged out
        keep = rule.keep_per_source
        with _storage_errors(f"checking retention of {source}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.zrangebyscore(listed, "-inf", "(inf", withscores=True)
            pipe.zrevrange(own, 0, keep - 1)
            unlisted, newest = pipe.execute()
            candidates, due = _age_plan(unlisted, newest, oldest, rule)
            if not candidates:
                pipe = self.client.pipeline(transaction=False)
                _queue_age_check(pipe, source, due)
                pipe.execute()
                return []

        def attempt(pipe: Any) -> list[str]:
            pipe.watch(listed, own)
            unlisted = pipe.zrangebyscore(listed, "-inf", "(inf", withscores=True)
            candidates, due = _age_plan(unlisted, pipe.zrevrange(own, 0, keep - 1), oldest, rule)
            if candidates:
                pipe.watch(*map(keys.entry, candidates))
            stored = pipe.mget(list(map(keys.entry, candidates))) if candidates else []
            held = {
                ident
                for ident, raw in zip(candidates, stored, strict=True)
                if raw and _held_elsewhere(pipe, Entry.from_stored(raw), source, oldest, keep)
            }
            pipe.multi()
            touched: set[str] = set()
            gone = []
            for ident, raw in zip(candidates, stored, strict=True):
                if raw is None or ident in held:
                    # Gone already, or another source still has it: this one let it go.
                    pipe.zrem(listed, ident)
                    pipe.zrem(own, ident)
                    continue
                _queue_forget(pipe, Entry.from_stored(raw), touched, tombstone=None)
                gone.append(ident)
            for key in touched:
                pipe.incr(keys.version(key))
            _queue_age_check(pipe, source, due)
            return gone

        return self._transaction(f"enforcing retention of {source}", attempt)  # type: ignore[no-any-return]

    def _cap(self, category: str, max_entries: int) -> list[str]:
        index = keys.index("category", category)
        with _storage_errors(f"checking retention of {category}"):
            if int(self.client.zcard(index)) <= max_entries:
                return []

        def attempt(pipe: Any) -> list[str]:
            pipe.watch(index)
            victims = [str(_text(v)) for v in pipe.zrevrange(index, max_entries, -1)]
            if not victims:
                pipe.multi()
                return []
            entry_keys = [keys.entry(v) for v in victims]
            pipe.watch(*entry_keys)
            stored = pipe.mget(entry_keys)
            pipe.multi()
            touched = {index}
            for victim, raw in zip(victims, stored, strict=True):
                pipe.zrem(index, victim)
                if raw is None:
                    continue
                entry = Entry.from_stored(raw)
                if any(c != category for c in entry.all_categories):
                    continue  # still filed in another category: it only leaves this one
                _queue_forget(pipe, entry, touched, tombstone=self.lifetimes.tombstone)
            for key in touched:
                pipe.incr(keys.version(key))
            return victims

        return self._transaction(f"enforcing retention of {category}", attempt)  # type: ignore[no-any-return]

    def drop_entries(self, source: str, ids: Sequence[str]) -> int:
        """Take back what `source` brought of the entries `ids` (its filters now refuse them):
        an entry only it brought is deleted with every trace; one another source brought
        too stays for that source. Returns how many were deleted."""
        if not ids:
            return 0
        listed, own = keys.source_listed(source), keys.source_entries(source)

        def attempt(pipe: Any) -> int:
            pipe.watch(*map(keys.entry, ids))
            stored = pipe.mget(list(map(keys.entry, ids)))
            pipe.multi()
            touched: set[str] = set()
            deleted = 0
            for ident, raw in zip(ids, stored, strict=True):
                entry = Entry.from_stored(raw) if raw else None
                if entry is not None and entry.sources == (source,):
                    _queue_forget(pipe, entry, touched, tombstone=None)
                    deleted += 1
                else:
                    pipe.zrem(listed, ident)
                    pipe.zrem(own, ident)
            for key in touched:
                pipe.incr(keys.version(key))
            return deleted

        return self._transaction(f"removing filtered entries of {source}", attempt)  # type: ignore[no-any-return]

    def source_entries(self, source: str) -> list[Entry]:
        """Every stored entry `source` brought, newest first."""
        with _storage_errors(f"reading the entries of {source}"):
            ids = [str(i) for i in self.client.zrevrange(keys.source_entries(source), 0, -1)]
            raw = self.binary.mget([keys.entry(i) for i in ids]) if ids else []
        return [Entry.from_stored(r) for r in raw if r]

    # --- reads ----------------------------------------------------------------------------

    def entries(
        self, kind: keys.Kind, name: str = "", limit: int = 50, offset: int = 0
    ) -> list[Entry]:
        """Newest first."""
        if limit <= 0:
            return []
        with _storage_errors(f"reading {kind} {name}"):
            ids = [
                str(i)
                for i in self.client.zrevrange(keys.index(kind, name), offset, offset + limit - 1)
            ]
            if not ids:
                return []
            raw = self.binary.mget([keys.entry(i) for i in ids])
        return [Entry.from_stored(r) for r in raw if r]

    def cached_render(self, kind: keys.Kind, name: str, variant: str) -> Rendered:
        """The index's current version and, when one was stored for exactly that version,
        the rendered feed. One round trip."""
        with _storage_errors(f"reading the cached {kind} {name}"):
            pipe = self.binary.pipeline(transaction=False)
            pipe.get(keys.version(keys.index(kind, name)))
            pipe.hgetall(keys.rendered(kind, name, variant))
            version, cached = pipe.execute()
        version = int(version or 0)
        if cached and int(cached.get(b"version", -1)) == version:
            return Rendered(
                version,
                cached[b"body"],
                cached[b"etag"].decode(),
                cached[b"last_modified"].decode(),
            )
        return Rendered(version)

    def index_version(self, kind: keys.Kind, name: str = "") -> int:
        """The index's version: it grows with every change of the index."""
        with _storage_errors(f"reading the version of {kind} {name}"):
            return int(self.client.get(keys.version(keys.index(kind, name))) or 0)

    def cache_render(
        self, kind: keys.Kind, name: str, variant: str, rendered: Rendered, ttl: int = DAY
    ) -> None:
        key = keys.rendered(kind, name, variant)
        with _storage_errors(f"caching the {kind} {name}"):
            pipe = self.binary.pipeline(transaction=True)
            pipe.hset(
                key,
                mapping={
                    "version": rendered.version,
                    "body": rendered.body or b"",
                    "etag": rendered.etag,
                    "last_modified": rendered.last_modified,
                },
            )
            pipe.expire(key, ttl)
            pipe.execute()

    def entry(self, entry_id: str) -> Entry | None:
        with _storage_errors(f"reading entry {entry_id}"):
            raw = self.binary.get(keys.entry(entry_id))
        return Entry.from_stored(raw) if raw else None

    def count(self, kind: keys.Kind, name: str = "") -> int:
        with _storage_errors(f"counting {kind} {name}"):
            return int(self.client.zcard(keys.index(kind, name)))

    def summaries(
        self, indexes: Sequence[tuple[keys.Kind, str]]
    ) -> list[tuple[int, datetime | None]]:
        """(entry count, newest entry's date) of each index, in one round trip."""
        with _storage_errors("summarizing indexes"):
            pipe = self.client.pipeline(transaction=False)
            for kind, name in indexes:
                pipe.zcard(keys.index(kind, name))
                pipe.zrevrange(keys.index(kind, name), 0, 0, withscores=True)
            replies = pipe.execute()
        out: list[tuple[int, datetime | None]] = []
        for count, newest in zip(replies[::2], replies[1::2], strict=True):
            when = datetime.fromtimestamp(float(newest[0][1]), UTC) if newest else None
            out.append((int(count), when))
        return out

    def source_states(self, names: Sequence[str]) -> list[SourceState]:
        """Each source's state, with `stored` counting the entries of it stored now."""
        with _storage_errors("reading source states"):
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                _queue_state_read(pipe, name)
                pipe.zcard(keys.source_entries(name))
            replies = pipe.execute()
        return [
            dataclasses.replace(_state(name, replies[3 * i], replies[3 * i + 1]), stored=count)
            for i, (name, count) in enumerate(zip(names, replies[2::3], strict=True))
        ]

    def previous_guids(self, source: str) -> dict[str, str]:
        """link → guid of the source's entries at its last full poll."""
        with _storage_errors(f"reading the guids of {source}"):
            reply = self.client.hgetall(keys.source_guids(source))
        return {str(k): str(v) for k, v in reply.items()}

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
            if names:
                pipe.zadd(keys.DUE, {n: now.timestamp() for n in names}, nx=True)
            if revived:
                pipe.zadd(keys.DUE, {n: now.timestamp() for n in revived}, xx=True)
            pipe.execute()

    def _revived(self, urls: Mapping[str, str]) -> list[str]:
        """The sources of `urls` that answered 410 at a URL other than the one configured."""
        pipe = self.client.pipeline(transaction=False)
        for name in urls:
            pipe.hmget(keys.source(name), "gone", "url", "moved_from")
        replies = pipe.execute() if urls else []
        return [
            name
            for (name, url), (gone, polled, moved_from) in zip(urls.items(), replies, strict=True)
            if gone == "1" and url not in (polled, moved_from)
        ]

    def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> list[str]:
        """Take up to `limit` due sources, moving their due time to `lease_until` in the same
        step: another worker will not take them, and if this one dies they come due again."""
        if limit <= 0:
            return []
        with _storage_errors("claiming due sources"):
            names = self._claim(
                keys=[keys.DUE], args=[now.timestamp(), lease_until.timestamp(), limit]
            )
        return [str(n) for n in names]

    def take_host_slot(
        self, host: str, token: str, now: float, lease: float, concurrency: int, per_minute: int
    ) -> float:
        """Try to start a request to `host`: 0 when the slot is ours (release it with
        `release_host_slot`), else how many seconds to wait before trying again."""
        request = HostSlotRequest(host, token, now, lease, concurrency, per_minute)
        return self.take_host_slots([request])[0]

    def take_host_slots(self, requests: Sequence[HostSlotRequest]) -> list[float]:
        """`take_host_slot` for each request, in order, in one round trip. Each runs the
        script on its own, so requests of one batch for one host count against each other."""
        if not requests:
            return []
        with _storage_errors(f"taking a request slot for {_some(r.host for r in requests)}"):
            waits = self._host_slot_waits(requests, self._host_slot_replies(requests))
            self._raise_first_error(requests, waits, waits)
        return [float(wait) for wait in waits]

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
            for name, request in starts:
                pipe.hgetall(keys.source(name))
                self._queue_host_slot(pipe, request)
            replies = pipe.execute(raise_on_error=False)
            states = replies[0::2]
            waits = self._host_slot_waits(requests, replies[1::2])
            self._raise_first_error(requests, waits, [*states, *waits])
        return [
            (_state(name, data, None), float(wait))
            for (name, _), data, wait in zip(starts, states, waits, strict=True)
        ]

    def _queue_host_slot(self, pipe: Any, r: HostSlotRequest) -> None:
        """Queue the host slot script for one request. EVALSHA itself, not the Script object:
        a Script in a pipeline first asks SCRIPT EXISTS, a round trip of its own on every
        batch."""
        pipe.evalsha(
            self._host_slot.sha,
            2,
            keys.host_inflight(r.host),
            keys.host_recent(r.host),
            r.now,
            r.now + r.lease,
            r.token,
            r.concurrency,
            r.per_minute,
        )

    def _host_slot_replies(self, requests: Sequence[HostSlotRequest]) -> list[Any]:
        """One pipeline of the host slot script, its replies (errors among them) in order."""
        pipe = self.client.pipeline(transaction=False)
        for r in requests:
            self._queue_host_slot(pipe, r)
        return list(pipe.execute(raise_on_error=False))

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
            for slot in slots:
                _queue_release(pipe, slot, started)
            pipe.execute()
        return [None] * len(slots)

    def reload_version(self) -> int:
        with _storage_errors("reading the reload counter"):
            return int(self.client.get(keys.RELOAD) or 0)

    def request_reload(self) -> int:
        with _storage_errors("asking workers to reload"):
            return int(self.client.incr(keys.RELOAD))


def _queue_state(
    pipe: Any,
    source: str,
    state: Mapping[str, str | int | float],
    next_due: datetime | None,
    new: int = 0,
) -> None:
    """Queue the writes that record one poll: its state fields, the entries it added (`new`),
    and its next due time unless None (left as it is)."""
    pipe.hset(keys.source(source), mapping={**state, "new": new})
    if next_due is not None:
        pipe.zadd(keys.DUE, {source: _ts(next_due)})


def _queue_release(pipe: Any, slot: HostSlot, started: bool = True) -> None:
    """Queue the giving back of one request slot (see `Store.release_host_slots`)."""
    host, token = slot
    pipe.zrem(keys.host_inflight(host), token)
    if not started:
        pipe.zrem(keys.host_recent(host), token)


def _age_plan(
    unlisted: Sequence[tuple[Any, float]], newest: Sequence[Any], oldest: float, rule: RetentionRule
) -> tuple[list[str], float | None]:
    """Of a source's entries it no longer lists (id, when last listed) and its newest ids,
    those past the age rule, and when the next of the others comes of age (None: never)."""
    kept = {str(_text(i)) for i in newest} if rule.keep_per_source else set()
    candidates, due = [], None
    for raw, score in unlisted:
        ident = str(_text(raw))
        if ident in kept:
            continue
        if score < oldest:
            candidates.append(ident)
        elif due is None or score + rule.max_age < due:
            due = score + rule.max_age
    return candidates, due


def _queue_age_check(pipe: Any, source: str, due: float | None) -> None:
    if due is None:
        pipe.hdel(keys.source(source), "age_check")
    else:
        pipe.hset(keys.source(source), "age_check", due)


def _held_elsewhere(pipe: Any, entry: Entry, source: str, oldest: float, keep: int) -> bool:
    """Whether a source of `entry` other than `source` still keeps it: listed it at `oldest`
    or later, or counts it among its newest `keep`. (Read under WATCH: one call each.)"""
    for other in entry.sources:
        if other == source:
            continue
        seen = pipe.zscore(keys.source_listed(other), entry.id)
        if seen is not None and float(seen) >= oldest:
            return True
        rank = pipe.zrevrank(keys.source_entries(other), entry.id) if keep else None
        if rank is not None and rank < keep:
            return True
    return False


def _queue_forget(pipe: Any, entry: Entry, touched: set[str], *, tombstone: int | None) -> None:
    """Queue the deletion of `entry` with every trace: its index entries (their keys added to
    `touched`, whose versions the caller bumps), its sources' memory of it, the aliases of the
    copies merged into it and its dedup claims; with `tombstone` (seconds), a tombstone for
    each of its ids, so that a source still listing it does not bring it back."""
    pipe.delete(keys.entry(entry.id))
    for index in _indexes(entry):
        touched.add(index)
        pipe.zrem(index, entry.id)
    for source in entry.sources:
        pipe.zrem(keys.source_listed(source), entry.id)
        pipe.zrem(keys.source_entries(source), entry.id)
    for origin in entry.merged:
        pipe.delete(keys.alias(origin.id))
    for key in dedup_keys(entry.link, entry.guid):
        pipe.delete(keys.canon(key))
    if tombstone is not None:
        for ident in (entry.id, *(o.id for o in entry.merged)):
            pipe.set(keys.gone(ident), keys.CUT, ex=tombstone)


def _queue_state_read(pipe: Any, source: str) -> None:
    """Queue the reads of one source's state: its hash and its due time (see `_state`)."""
    pipe.hgetall(keys.source(source))
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


class _SavePlan:
    """One attempt at saving one poll: read under WATCH, decide, queue the writes."""

    def __init__(self, store: Store, pipe: Any, source: str) -> None:
        self.store = store
        # redis-py's Pipeline is typed for bytes or str replies alike; ours are str
        # (decode_responses=True), so it is used untyped here.
        self.pipe: Any = pipe
        self.source = source
        self.pending: dict[str, Entry] = {}  # entries to write, by id, in their final form
        self.indexes: list[tuple[str, float, str]] = []  # (index key, score, id) to add
        self.unindex: list[tuple[str, str]] = []  # (index key, id) to remove
        self.listed: dict[str, float] = {}  # stored id → date, of what this document lists

    def run(
        self,
        entries: Sequence[Entry],
        state: Mapping[str, str | int | float],
        next_due: datetime | None,
        guids: Mapping[str, str] | None,
        listed_at: float | None,
    ) -> SaveResult:
        pipe = self.pipe
        ids = [e.id for e in entries]
        claims = {e.id: [keys.canon(k) for k in dedup_keys(e.link, e.guid)] for e in entries}
        canon_keys = list(dict.fromkeys(k for ks in claims.values() for k in ks))
        listed_key = keys.source_listed(self.source)
        watched = [*map(keys.entry, ids), *map(keys.alias, ids), *map(keys.gone, ids), *canon_keys]
        pipe.watch(listed_key, *watched)
        previously = [str(_text(i)) for i in pipe.zrangebyscore(listed_key, "+inf", "+inf")]
        stored = pipe.mget(list(map(keys.entry, ids))) if ids else []
        aliases = [_text(a) for a in pipe.mget(list(map(keys.alias, ids)))] if ids else []
        gone = [_text(g) for g in pipe.mget(list(map(keys.gone, ids)))] if ids else []
        owners = (
            dict(zip(canon_keys, map(_text, pipe.mget(canon_keys)), strict=True))
            if canon_keys
            else {}
        )
        loaded = {
            e.id: Entry.from_stored(raw) for e, raw in zip(entries, stored, strict=True) if raw
        }
        targets = {t for t in (*aliases, *owners.values()) if t and t not in loaded}
        if targets:
            target_keys = [keys.entry(t) for t in targets]
            pipe.watch(*target_keys)
            for raw in pipe.mget(target_keys):
                if raw:
                    entry = Entry.from_stored(raw)
                    loaded[entry.id] = entry
        pipe.multi()

        in_document = set(ids)
        new_ids: list[str] = []
        updated = merged = cut = 0
        for entry, tombstone, alias in zip(entries, gone, aliases, strict=True):
            if tombstone == keys.CUT:
                # Cut by max_entries and still in the source's document: it stays out for as
                # long as it is listed.
                pipe.expire(keys.gone(entry.id), self.store.lifetimes.tombstone)
                cut += 1
                continue
            if tombstone is not None:
                pipe.delete(keys.gone(entry.id))  # an earlier version's: it hides nothing now
            current = self.pending.get(entry.id) or loaded.get(entry.id)
            if current is not None and current.source == self.source:
                updated += self._update(current, entry, claims[entry.id])
                continue
            target_id = alias or next(
                (owners[k] for k in claims[entry.id] if owners.get(k) in {*loaded, *self.pending}),
                None,
            )
            target = self.pending.get(target_id or "") or loaded.get(target_id or "")
            if target is not None and target.id != entry.id:
                if target.source != self.source:
                    merged += self._merge(target, entry)
                    continue
                if target.id not in in_document and target.id not in self.pending:
                    # The same story under a new id from the same source (its guid changed):
                    # it is still that source's entry, so its changes apply to the stored one.
                    pipe.set(keys.alias(entry.id), target.id)
                    same = dataclasses.replace(entry, id=target.id)
                    updated += self._update(target, same, claims[entry.id])
                    continue
                # Listed beside it in one document: a distinct entry that shares its link
                # (a podcast's episodes all linking to the show's page).
                if alias:
                    pipe.delete(keys.alias(entry.id))
            self._add(entry, claims[entry.id], owners, loaded)
            new_ids.append(entry.id)

        # One command per key, not per entry: a cold poll of 20 entries in 4 indexes is a
        # handful of commands instead of a hundred.
        if self.pending:
            pipe.mset({keys.entry(e.id): e.to_stored() for e in self.pending.values()})
        additions: dict[str, dict[str, float]] = {}
        for index, score, ident in self.indexes:
            additions.setdefault(index, {})[ident] = score
        for index, members in additions.items():
            pipe.zadd(index, members)
        removals: dict[str, list[str]] = {}
        for index, ident in self.unindex:
            removals.setdefault(index, []).append(ident)
        for index, idents in removals.items():
            pipe.zrem(index, *idents)
        for index in additions.keys() | removals.keys():
            pipe.incr(keys.version(index))  # cached renderings of this index are stale now
        self._queue_listing(previously, listed_at)
        _queue_state(pipe, self.source, state, next_due, len(new_ids))
        if guids is not None:
            pipe.delete(keys.source_guids(self.source))
            if guids:
                pipe.hset(keys.source_guids(self.source), mapping=dict(guids))
        return SaveResult(len(new_ids), updated, merged, cut, tuple(new_ids))

    def _queue_listing(self, previously: Sequence[str], listed_at: float | None) -> None:
        """Record what this document lists (settings.retention ages only what a source no
        longer lists): its entries listed now, and for each one the last document listed but
        this one does not, when it was last listed (the previous poll that confirmed it)."""
        listed_key = keys.source_listed(self.source)
        if self.listed:
            self.pipe.zadd(listed_key, dict.fromkeys(self.listed, float("inf")))
            self.pipe.zadd(keys.source_entries(self.source), self.listed)
        dropped = [i for i in previously if i not in self.listed]
        if dropped:
            when = listed_at if listed_at is not None else _ts(datetime.now(UTC))
            self.pipe.zadd(listed_key, dict.fromkeys(dropped, when))

    def _index(self, entry: Entry, score_of: Entry | None = None) -> None:
        score = _ts((score_of or entry).date)
        self.indexes += [(index, score, entry.id) for index in sorted(_indexes(entry))]

    def _claim(self, entry_id: str, claims: list[str]) -> None:
        for key in claims:
            self.pipe.set(key, entry_id)

    def _add(
        self,
        entry: Entry,
        claims: list[str],
        owners: dict[str, str | None],
        loaded: Mapping[str, Entry],
    ) -> None:
        stored = dataclasses.replace(entry, digest=entry.digest or entry_digest(entry), merged=())
        self.pending[entry.id] = stored
        self._index(stored)
        self.listed[entry.id] = _ts(stored.date)
        # A claim whose entry is gone (or was never written) is free.
        unclaimed = [
            k
            for k in claims
            if owners.get(k) in (None, entry.id)
            or (owners[k] not in loaded and owners[k] not in self.pending)
        ]
        self._claim(entry.id, unclaimed)
        for key in unclaimed:
            owners[key] = entry.id  # later entries of this batch merge into this one

    def _update(self, current: Entry, incoming: Entry, claims: list[str]) -> int:
        self.listed[current.id] = _ts(current.date)
        digest = incoming.digest or entry_digest(incoming)
        if digest == current.digest:
            return 0
        changed = dataclasses.replace(
            incoming,
            first_seen=current.first_seen,
            # An entry that changed without saying when is stamped with when we saw it change.
            updated=incoming.updated or incoming.first_seen,
            merged=current.merged,
            digest=digest,
        )
        if current.merged:
            changed = _best_of(changed, current)  # what the other sources gave stays
        self.pending[changed.id] = changed
        self.listed[changed.id] = _ts(changed.date)
        for index in sorted(_indexes(current) - _indexes(changed)):
            self.unindex.append((index, changed.id))
        self._index(changed)
        self._claim(changed.id, claims)
        return 1

    def _merge(self, target: Entry, incoming: Entry) -> int:
        """`incoming` is a copy of `target`'s story from this source: file the target where
        this source files it too, remember where it came from, and fill in what the target
        lacks and this copy has."""
        self.pipe.set(keys.alias(incoming.id), target.id)
        self.listed[target.id] = _ts(target.date)
        known = any(o.id == incoming.id for o in target.merged)
        origin = Origin(self.source, incoming.id, incoming.category, incoming.tags)
        combined = _best_of(
            target if known else dataclasses.replace(target, merged=(*target.merged, origin)),
            incoming,
        )
        if combined == target:
            return 0
        self.pending[combined.id] = combined
        self._index(combined)
        return 0 if known else 1


# What a story's copies may fill in for each other: a copy without a title or a link never
# blanks what another copy gave.
_FILLED = ("title", "link", "content", "summary", "authors", "enclosures", "published")


_TAG = re.compile(r"<[^>]*>")
_MEDIA = re.compile(r"<(img|video|audio|iframe|object|embed|svg)\b", re.IGNORECASE)


def _blank(name: str, value: Any) -> bool:
    """Empty, or for HTML (content, summary) markup with no text and no media in it: the
    `<p></p>` a source writes around an empty description."""
    if not value:
        return True
    if name in ("content", "summary"):
        return not _TAG.sub("", value).strip() and not _MEDIA.search(value)
    return False


def _best_of(entry: Entry, other: Entry) -> Entry:
    """`entry` with each of its empty fields taken from `other` where that has it."""
    filled = {
        name: getattr(other, name)
        for name in _FILLED
        if _blank(name, getattr(entry, name)) and not _blank(name, getattr(other, name))
    }
    return dataclasses.replace(entry, **filled) if filled else entry


# --- WebSub: subscription records, distributions waiting for a worker, publish pings ---------
# What the records mean is aggregator/websub.py's; these methods only keep them.

# Changed indexes, once each: for every index key and its current version (ARGV pairs), when
# the version differs from the one last pinged, record it and return the key. Atomic, so of
# many workers scanning at once only one pings for a change.
_CLAIM_CHANGES = """
local changed = {}
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    table.insert(changed, ARGV[i])
  end
end
return changed
"""
INBOX_LIMIT = 1000  # distributions waiting at most; the oldest beyond go (polling has them)


@dataclasses.dataclass(frozen=True, slots=True)
class Distribution:
    """A content distribution (WebSub §7) the web process accepted, for a worker."""

    source: str
    token: str
    content_type: str
    received: float
    body: bytes


def subscriptions(store: Store, names: Sequence[str]) -> list[dict[str, str]]:
    """Each source's subscription record ({} for none), in one round trip."""
    if not names:
        return []
    with _storage_errors("reading WebSub subscriptions"):
        pipe = store.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(keys.websub(name))
        return [{str(k): str(v) for k, v in r.items()} for r in pipe.execute()]


def subscribed_names(store: Store) -> list[str]:
    with _storage_errors("reading WebSub subscriptions"):
        return sorted(str(n) for n in store.client.smembers(keys.WEBSUB_NAMES))


def change_subscription(store: Store, name: str, change: Any) -> dict[str, str] | None:
    """Replace `name`'s record with `change(current)` (a mapping of fields; None leaves it),
    in one transaction guarded by WATCH: a verification and a worker's request never
    overwrite each other. Returns what was written."""
    key = keys.websub(name)

    def attempt(pipe: Any) -> dict[str, str] | None:
        pipe.watch(key)
        current = {str(_text(k)): str(_text(v)) for k, v in pipe.hgetall(key).items()}
        new = change(current)
        if new is None:
            pipe.multi()
            return None
        pipe.multi()
        pipe.delete(key)
        pipe.hset(key, mapping=dict(new))
        pipe.sadd(keys.WEBSUB_NAMES, name)
        return dict(new)

    return store._transaction(f"saving the WebSub subscription of {name}", attempt)  # type: ignore[no-any-return]


def forget_subscription(store: Store, name: str) -> None:
    with _storage_errors(f"removing the WebSub subscription of {name}"):
        pipe = store.client.pipeline(transaction=True)
        pipe.delete(keys.websub(name))
        pipe.srem(keys.WEBSUB_NAMES, name)
        pipe.execute()


def lock_subscription(store: Store, name: str, owner: str, seconds: int) -> bool:
    """Whether this worker may make requests for `name`'s subscription now (SET NX EX)."""
    with _storage_errors(f"locking the WebSub subscription of {name}"):
        return bool(store.client.set(keys.websub_lock(name), owner, nx=True, ex=seconds))


def unlock_subscription(store: Store, name: str, owner: str) -> None:
    with _storage_errors(f"unlocking the WebSub subscription of {name}"):
        key = keys.websub_lock(name)
        if store.client.get(key) == owner:
            store.client.delete(key)


def push_distribution(store: Store, item: Distribution) -> None:
    """Hand a distribution to the workers: one LPUSH (the web answers at once)."""
    head = json.dumps(
        {
            "source": item.source,
            "token": item.token,
            "content_type": item.content_type,
            "received": item.received,
        }
    ).encode("utf-8")
    with _storage_errors(f"queueing a WebSub distribution for {item.source}"):
        pipe = store.binary.pipeline(transaction=False)
        pipe.lpush(keys.WEBSUB_INBOX, head + b"\n" + item.body)
        pipe.ltrim(keys.WEBSUB_INBOX, 0, INBOX_LIMIT - 1)
        pipe.execute()


def take_distributions(store: Store, count: int) -> list[Distribution]:
    """Up to `count` waiting distributions, oldest first, taken off the list (RPOP)."""
    with _storage_errors("taking WebSub distributions"):
        raw: Any = store.binary.rpop(keys.WEBSUB_INBOX, count) or []
    out = []
    for item in raw:
        head, _, body = bytes(item).partition(b"\n")
        meta = json.loads(head)
        out.append(
            Distribution(
                str(meta["source"]),
                str(meta["token"]),
                str(meta["content_type"]),
                float(meta["received"]),
                body,
            )
        )
    return out


def move_due(store: Store, name: str, when: datetime, *, later: bool) -> None:
    """Move a scheduled source's next due time to `when` if that is later (`later=True`, the
    safety net's long interval) or earlier (back to its own interval). An unscheduled source
    stays unscheduled."""
    with _storage_errors(f"rescheduling {name}"):
        store.client.zadd(keys.DUE, {name: _ts(when)}, xx=True, gt=later, lt=not later)


def index_versions(store: Store, index_keys: Sequence[str]) -> list[int]:
    with _storage_errors("reading index versions"):
        found = store.client.mget([keys.version(k) for k in index_keys]) if index_keys else []
    return [int(v or 0) for v in found]


def claim_changes(store: Store, versions: Mapping[str, int]) -> list[str]:
    """The index keys whose version differs from the one last pinged, now recorded as
    pinged: of many workers, one gets each change."""
    if not versions:
        return []
    args: list[str | int] = []
    for key, version in versions.items():
        args += [key, str(version)]
    with _storage_errors("claiming changed feeds"):
        found = store.client.eval(_CLAIM_CHANGES, 1, keys.WEBSUB_PINGED, *args)
    return [str(k) for k in found]


def queue_pings(store: Store, feed_urls: Sequence[str], when: datetime) -> None:
    """Ping the hub for each URL at `when`: a URL already waiting keeps its earlier time (the
    changes of one window make one ping); one being sent now is sent again after."""
    if not feed_urls:
        return
    with _storage_errors("queueing WebSub pings"):
        store.client.zadd(keys.WEBSUB_PINGS, dict.fromkeys(feed_urls, _ts(when)), lt=True)


def claim_pings(store: Store, now: datetime, lease_until: datetime, limit: int) -> list[str]:
    """Take up to `limit` due pings, moving them to `lease_until` (as `claim_due` does)."""
    with _storage_errors("claiming WebSub pings"):
        found = store._claim(
            keys=[keys.WEBSUB_PINGS], args=[now.timestamp(), lease_until.timestamp(), limit]
        )
    return [str(u) for u in found]


# A claimed ping's outcome, unless the URL was queued again meanwhile (its score is no longer
# the claim's lease): then it stays queued, for the change that came after. ARGV: URL, the
# lease it was claimed with, and the retry time ("" when sent or given up).
_PING_DONE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
"""


def ping_done(store: Store, feed_url: str, lease_until: datetime, retry_at: datetime | None) -> int:
    """Record a claimed ping: sent (or given up) with `retry_at` None, else failed and tried
    again at `retry_at`. Returns the failures in a row (0 when sent)."""
    retry = "" if retry_at is None else str(_ts(retry_at))
    with _storage_errors("recording a WebSub ping"):
        found = store.client.eval(
            _PING_DONE,
            2,
            keys.WEBSUB_PINGS,
            keys.WEBSUB_PING_TRIES,
            feed_url,
            repr(float(lease_until.timestamp())),
            retry,
        )
    return int(found or 0)


def ping_failures(store: Store, feed_url: str) -> int:
    with _storage_errors("reading WebSub pings"):
        return int(store.client.hget(keys.WEBSUB_PING_TRIES, feed_url) or 0)


def pending_pings(store: Store) -> list[str]:
    with _storage_errors("reading WebSub pings"):
        return [str(u) for u in store.client.zrange(keys.WEBSUB_PINGS, 0, -1)]
