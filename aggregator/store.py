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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from aggregator import keys
from aggregator.errors import StorageError
from aggregator.identity import dedup_keys
from aggregator.models import Entry, Origin, SourceState, Validators, entry_digest

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
MAX_ATTEMPTS = 8
DAY = 86400


@dataclasses.dataclass(frozen=True, slots=True)
class SaveResult:
    new: int
    updated: int
    merged: int = 0


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
    """How long dedup keys and tombstones live (seconds); both outlast retention's max_age so a
    story is recognized, and an expired one stays expired, for as long as it can matter."""

    canon: int = 97 * DAY
    tombstone: int = 97 * DAY

    @classmethod
    def for_max_age(cls, max_age: float) -> Lifetimes:
        seconds = int(max_age) + 7 * DAY
        return cls(canon=seconds, tombstone=max(seconds, 30 * DAY))


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
    except redis.RedisError as err:
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
            for _ in range(MAX_ATTEMPTS):
                with self.binary.pipeline(transaction=True) as pipe:
                    try:
                        result = attempt(pipe)
                        pipe.execute()
                        return result
                    except redis.WatchError:
                        continue
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
    ) -> SaveResult:
        """Write one poll's result in one transaction: new entries with their indexes and dedup
        keys; changed ones (digest differs) in place, keeping their first-seen time and other
        sources, with `updated` set when the source gave none; a story another source already
        brought merged into that entry; the source's state, next due time and guid memory.
        Unchanged entries and expired ones (tombstoned) are not written."""
        return self._transaction(  # type: ignore[no-any-return]
            f"saving {source}",
            lambda pipe: _SavePlan(self, pipe, source).run(entries, state, next_due, guids),
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
        self, category: str, max_entries: int, max_age: float, now: datetime
    ) -> int:
        """Keep at most `max_entries` entries no older than `max_age` seconds in `category`.
        An entry leaving its only category is deleted with every index entry, alias and dedup
        claim, and its ids are tombstoned; one still filed elsewhere only leaves this
        category. Returns how many left the category."""
        index = keys.index("category", category)
        cutoff = _ts(now - timedelta(seconds=max_age))
        with _storage_errors(f"checking retention of {category}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.zcard(index)
            pipe.zrangebyscore(index, "-inf", f"({cutoff}", start=0, num=1)
            count, old = pipe.execute()
        if count <= max_entries and not old:
            return 0

        def attempt(pipe: Any) -> int:
            pipe.watch(index)
            victims = [
                str(_text(v))
                for v in dict.fromkeys(
                    [
                        *pipe.zrangebyscore(index, "-inf", f"({cutoff}"),
                        *pipe.zrevrange(index, max_entries, -1),
                    ]
                )
            ]
            if not victims:
                pipe.multi()
                return 0
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
                    continue
                pipe.delete(keys.entry(victim))
                touched.add(keys.ALL)
                pipe.zrem(keys.ALL, victim)
                for tag in entry.all_tags:
                    touched.add(keys.index("tag", tag))
                    pipe.zrem(keys.index("tag", tag), victim)
                for origin in entry.merged:
                    pipe.delete(keys.alias(origin.id))
                for ident in (victim, *(o.id for o in entry.merged)):
                    pipe.set(keys.gone(ident), 1, ex=self.lifetimes.tombstone)
            for key in touched:
                pipe.incr(keys.version(key))
            return len(victims)

        return self._transaction(f"enforcing retention of {category}", attempt)  # type: ignore[no-any-return]

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
        with _storage_errors("reading source states"):
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                _queue_state_read(pipe, name)
            replies = pipe.execute()
        return [_state(name, replies[2 * i], replies[2 * i + 1]) for i, name in enumerate(names)]

    def previous_guids(self, source: str) -> dict[str, str]:
        """link → guid of the source's entries at its last full poll."""
        with _storage_errors(f"reading the guids of {source}"):
            reply = self.client.hgetall(keys.source_guids(source))
        return {str(k): str(v) for k, v in reply.items()}

    # --- scheduling -----------------------------------------------------------------------

    def sync_sources(self, names: Sequence[str], now: datetime) -> None:
        """Make the due set hold exactly `names`: new sources are due now, gone ones leave."""
        with _storage_errors("syncing sources"):
            present: set[str] = {str(n) for n in self.client.zrange(keys.DUE, 0, -1)}
            pipe = self.client.pipeline(transaction=True)
            gone = present - set(names)
            if gone:
                pipe.zrem(keys.DUE, *gone)
            if names:
                pipe.zadd(keys.DUE, {n: now.timestamp() for n in names}, nx=True)
            pipe.execute()

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
        the source's state and the request's wait (0 when the slot is ours)."""
        if not starts:
            return []
        requests = [request for _, request in starts]
        action = f"reading source states of {_some(n for n, _ in starts)} and taking their slots"
        with _storage_errors(action):
            pipe = self.client.pipeline(transaction=False)
            for name, request in starts:
                _queue_state_read(pipe, name)
                self._queue_host_slot(pipe, request)
            replies = pipe.execute(raise_on_error=False)
            states, dues = replies[0::3], replies[1::3]
            waits = self._host_slot_waits(requests, replies[2::3])
            self._raise_first_error(requests, waits, [*states, *dues, *waits])
        return [
            (_state(name, data, due), float(wait))
            for (name, _), data, due, wait in zip(starts, states, dues, waits, strict=True)
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
    """Queue the writes that record one poll: its state fields, the entries it added (`new`,
    and `stored` counting them all), and its next due time unless None (left as it is)."""
    pipe.hset(keys.source(source), mapping={**state, "new": new})
    if new:
        pipe.hincrby(keys.source(source), "stored", new)
    if next_due is not None:
        pipe.zadd(keys.DUE, {source: _ts(next_due)})


def _queue_release(pipe: Any, slot: HostSlot, started: bool = True) -> None:
    """Queue the giving back of one request slot (see `Store.release_host_slots`)."""
    host, token = slot
    pipe.zrem(keys.host_inflight(host), token)
    if not started:
        pipe.zrem(keys.host_recent(host), token)


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
        stored=int(data.get("stored") or 0),
        validators=Validators(data.get("etag", ""), data.get("last_modified", "")),
        id_mode=data.get("id_mode") or "guid",
        moved_to=data.get("moved_to", ""),
        moved_from=data.get("moved_from", ""),
        gone=data.get("gone") == "1",
        body_hash=data.get("body_hash", ""),
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

    def run(
        self,
        entries: Sequence[Entry],
        state: Mapping[str, str | int | float],
        next_due: datetime | None,
        guids: Mapping[str, str] | None,
    ) -> SaveResult:
        pipe, lifetimes = self.pipe, self.store.lifetimes
        ids = [e.id for e in entries]
        claims = {e.id: [keys.canon(k) for k in dedup_keys(e.link, e.guid)] for e in entries}
        canon_keys = list(dict.fromkeys(k for ks in claims.values() for k in ks))
        watched = [*map(keys.entry, ids), *map(keys.alias, ids), *map(keys.gone, ids), *canon_keys]
        if watched:
            pipe.watch(*watched)
        stored = pipe.mget(list(map(keys.entry, ids))) if ids else []
        aliases = [_text(a) for a in pipe.mget(list(map(keys.alias, ids)))] if ids else []
        gone = pipe.mget(list(map(keys.gone, ids))) if ids else []
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

        new = updated = merged = 0
        for entry, was_gone, alias in zip(entries, gone, aliases, strict=True):
            if was_gone:
                # Still in the source's document: keep it expired for as long as it is listed.
                pipe.expire(keys.gone(entry.id), lifetimes.tombstone)
                continue
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
                if target.source == self.source:
                    # The same story under a new id from the same source (its guid changed):
                    # it is still that source's entry, so its changes apply to the stored one.
                    pipe.set(keys.alias(entry.id), target.id)
                    same = dataclasses.replace(entry, id=target.id)
                    updated += self._update(target, same, claims[entry.id])
                else:
                    merged += self._merge(target, entry)
                continue
            self._add(entry, claims[entry.id], owners)
            new += 1

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
        _queue_state(pipe, self.source, state, next_due, new)
        if guids is not None:
            pipe.delete(keys.source_guids(self.source))
            if guids:
                pipe.hset(keys.source_guids(self.source), mapping=dict(guids))
        return SaveResult(new, updated, merged)

    def _index(self, entry: Entry, score_of: Entry | None = None) -> None:
        score = _ts((score_of or entry).date)
        self.indexes += [(index, score, entry.id) for index in sorted(_indexes(entry))]

    def _claim(self, entry_id: str, claims: list[str]) -> None:
        for key in claims:
            self.pipe.set(key, entry_id, ex=self.store.lifetimes.canon)

    def _add(self, entry: Entry, claims: list[str], owners: dict[str, str | None]) -> None:
        stored = dataclasses.replace(entry, digest=entry.digest or entry_digest(entry), merged=())
        self.pending[entry.id] = stored
        self._index(stored)
        unclaimed = [k for k in claims if owners.get(k) in (None, entry.id)]
        self._claim(entry.id, unclaimed)
        for key in unclaimed:
            owners[key] = entry.id  # later entries of this batch merge into this one

    def _update(self, current: Entry, incoming: Entry, claims: list[str]) -> int:
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
        self.pending[changed.id] = changed
        for index in sorted(_indexes(current) - _indexes(changed)):
            self.unindex.append((index, changed.id))
        self._index(changed)
        self._claim(changed.id, claims)
        return 1

    def _merge(self, target: Entry, incoming: Entry) -> int:
        """`incoming` is a copy of `target`'s story from this source: file the target where
        this source files it too, and remember where it came from."""
        self.pipe.set(keys.alias(incoming.id), target.id)
        if any(o.id == incoming.id for o in target.merged):
            return 0
        origin = Origin(self.source, incoming.id, incoming.category, incoming.tags)
        combined = dataclasses.replace(target, merged=(*target.merged, origin))
        self.pending[combined.id] = combined
        self._index(combined)
        return 1
