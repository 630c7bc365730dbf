"""WebSub's records in Redis: subscriptions, distributions waiting for a worker, publish
pings. What the records mean is aggregator/websub.py's; these functions only keep them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aggregator import keys
from aggregator.store.base import _storage_errors, _text, _ts

if TYPE_CHECKING:
    from aggregator.store import Store

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
            pipe.hgetall(store.keys.websub(name))
        return [{str(k): str(v) for k, v in r.items()} for r in pipe.execute()]


def subscribed_names(store: Store) -> list[str]:
    with _storage_errors("reading WebSub subscriptions"):
        return sorted(str(n) for n in store.client.smembers(keys.WEBSUB_NAMES))


def change_subscription(store: Store, name: str, change: Any) -> dict[str, str] | None:
    """Replace `name`'s record with `change(current)` (a mapping of fields; None leaves it),
    in one transaction guarded by WATCH: a verification and a worker's request never
    overwrite each other. Returns what was written."""
    key = store.keys.websub(name)

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
        pipe = store._batch()
        pipe.delete(store.keys.websub(name))
        pipe.srem(keys.WEBSUB_NAMES, name)
        pipe.execute()


def lock_subscription(store: Store, name: str, owner: str, seconds: int) -> bool:
    """Whether this worker may make requests for `name`'s subscription now (SET NX EX)."""
    with _storage_errors(f"locking the WebSub subscription of {name}"):
        return bool(store.client.set(store.keys.websub_lock(name), owner, nx=True, ex=seconds))


def unlock_subscription(store: Store, name: str, owner: str) -> None:
    with _storage_errors(f"unlocking the WebSub subscription of {name}"):
        key = store.keys.websub_lock(name)
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
        found = store._mget([store.keys.version(k) for k in index_keys], binary=False)
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


# Due pings (KEYS[1]) up to ARGV[1], at most ARGV[3], moved to their lease ARGV[2].
_CLAIM_PINGS = """
local urls = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, url in ipairs(urls) do redis.call('ZADD', KEYS[1], ARGV[2], url) end
return urls
"""


def claim_pings(store: Store, now: datetime, lease_until: datetime, limit: int) -> list[str]:
    """Take up to `limit` due pings, moving them to `lease_until` (as `claim_due` does for
    sources)."""
    with _storage_errors("claiming WebSub pings"):
        found = store.client.eval(
            _CLAIM_PINGS, 1, keys.WEBSUB_PINGS, now.timestamp(), lease_until.timestamp(), limit
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
