"""Store: entries, their indexes and per-source state in Redis. The only module that imports redis.

Layout (key names in `aggregator.keys`): each entry is a JSON string; a sorted set per category,
per tag and one for everything orders entry ids by date; a hash keeps each entry's digest; a
hash per source keeps its polling state; one sorted set keeps every source's next due time.
A poll's writes go through one Lua script (`upsert.lua`), so an entry, its indexes and its
source's state change together or not at all. Every Redis failure surfaces as StorageError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.resources import files

import redis
from redis.cluster import RedisCluster

from aggregator import keys
from aggregator.errors import StorageError
from aggregator.models import Entry, SourceState, Validators, entry_digest

_UPSERT = files("aggregator").joinpath("upsert.lua").read_text(encoding="utf-8")
_CLAIM = """
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, name in ipairs(names) do redis.call('ZADD', KEYS[1], ARGV[2], name) end
return names
"""
MAX_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True, slots=True)
class SaveResult:
    new: int
    updated: int


def connect(url: str) -> redis.Redis | RedisCluster:
    """A client for `url`; `redis+cluster://host:port` selects Redis Cluster."""
    if url.startswith("redis+cluster://"):
        return RedisCluster.from_url(
            "redis://" + url.removeprefix("redis+cluster://"), decode_responses=True
        )
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


@contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as err:
        raise StorageError(f"Redis failed while {action}: {err}") from err


def _ts(value: datetime | None) -> str:
    return f"{value.timestamp():.6f}" if value is not None else ""


def _dt(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


class Store:
    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self.client = client
        self._upsert = client.register_script(_UPSERT)
        self._claim = client.register_script(_CLAIM)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(connect(url))

    def close(self) -> None:
        self.client.close()

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    # --- writes ---------------------------------------------------------------------------

    def save_poll(
        self,
        source: str,
        entries: Sequence[Entry],
        state: Mapping[str, str | int | float],
        next_due: datetime | None,
    ) -> SaveResult:
        """Write one poll's entries (new and changed ones only) with the source's state and
        next due time, atomically. An unchanged entry is not rewritten; a changed one keeps its
        first-seen time and moves between indexes if its category or tags changed."""
        for _ in range(MAX_ATTEMPTS):
            with _storage_errors(f"saving {source}"):
                result = self._try_save(source, entries, state, next_due)
            if result is not None:
                return result
        raise StorageError(f"saving {source}: entries kept changing under us; try again")

    def _try_save(
        self,
        source: str,
        entries: Sequence[Entry],
        state: Mapping[str, str | int | float],
        next_due: datetime | None,
    ) -> SaveResult | None:
        digests = [entry_digest(e) for e in entries]
        current: list[str | None] = (
            [_str(d) for d in self.client.hmget(keys.DIGESTS, [e.id for e in entries])]
            if entries
            else []
        )
        changed = [
            e.id
            for e, d, c in zip(entries, digests, current, strict=True)
            if c is not None and c != d
        ]
        old: dict[str, Entry] = {}
        if changed:
            for raw in self.client.mget([keys.entry(i) for i in changed]):
                if raw:
                    stored_entry = Entry.from_json(raw)
                    old[stored_entry.id] = stored_entry
        key_list = [keys.DIGESTS, keys.source(source), keys.DUE]
        positions: dict[str, int] = {}

        def pos(key: str) -> int:
            if key not in positions:
                key_list.append(key)
                positions[key] = len(key_list)  # Lua is 1-based
            return positions[key]

        args: list[str | int | float] = [source, _ts(next_due), len(state)]
        for field, value in state.items():
            args += [field, value]
        writes: list[str | int | float] = []
        count = 0
        for entry, digest, stored in zip(entries, digests, current, strict=True):
            if stored == digest:
                continue
            previous: Entry | None = old.get(entry.id)
            if previous is not None:
                entry = dataclasses.replace(entry, first_seen=previous.first_seen)
            add = _indexes(entry)
            remove = _indexes(previous) - add if previous is not None else set()
            writes += [
                entry.id,
                stored or "",
                digest,
                entry.to_json(),
                f"{entry.date.timestamp():.6f}",
                pos(keys.entry(entry.id)),
                len(add),
            ]
            writes += [pos(k) for k in sorted(add)]
            writes += [len(remove)] + [pos(k) for k in sorted(remove)]
            count += 1
        result = self._upsert(keys=key_list, args=[*args, count, *writes])
        if int(result[0]) == -1:
            return None
        return SaveResult(new=int(result[0]), updated=int(result[1]))

    def save_state(
        self, source: str, state: Mapping[str, str | int | float], next_due: datetime | None
    ) -> None:
        """Record a poll that stored no entries (not modified, or failed)."""
        self.save_poll(source, (), state, next_due)

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
            raw = self.client.mget([keys.entry(i) for i in ids])
        return [Entry.from_json(r) for r in raw if r]

    def entry(self, entry_id: str) -> Entry | None:
        with _storage_errors(f"reading entry {entry_id}"):
            raw = self.client.get(keys.entry(entry_id))
        return Entry.from_json(raw) if raw else None

    def count(self, kind: keys.Kind, name: str = "") -> int:
        with _storage_errors(f"counting {kind} {name}"):
            return int(self.client.zcard(keys.index(kind, name)))

    def source_states(self, names: Sequence[str]) -> list[SourceState]:
        with _storage_errors("reading source states"):
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(keys.source(name))
                pipe.zscore(keys.DUE, name)
            replies = pipe.execute()
        return [_state(name, replies[2 * i], replies[2 * i + 1]) for i, name in enumerate(names)]

    def validators(self, source: str) -> Validators:
        with _storage_errors(f"reading {source}"):
            etag, modified = self.client.hmget(keys.source(source), ["etag", "last_modified"])
        return Validators(str(etag or ""), str(modified or ""))

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

    def reload_version(self) -> int:
        with _storage_errors("reading the reload counter"):
            return int(self.client.get(keys.RELOAD) or 0)

    def request_reload(self) -> int:
        with _storage_errors("asking workers to reload"):
            return int(self.client.incr(keys.RELOAD))


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _indexes(entry: Entry) -> set[str]:
    return {
        keys.ALL,
        keys.index("category", entry.category),
        *(keys.index("tag", t) for t in entry.tags),
    }


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
    )
