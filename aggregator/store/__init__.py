"""Store: entries, their indexes and per-source state in Redis. The only package that imports
redis.

Layout (key names and slots in `aggregator.keys`): each entry is a JSON string carrying the
digest of what its source said; a sorted set per category, per tag and one for everything
orders entry ids by date; a hash per source keeps its polling state; one sorted set keeps every
source's next due time. Cross-source deduplication keeps a claim per canonical link or global
guid pointing at the entry, and an alias from each merged source's id to it; retention leaves a
tombstone with a TTL so an entry cut by max_entries and still listed is not stored again.

One room per concern: `base` (connections, errors, the transaction loop), `staged` (writes on
a cluster), `entries`, `retention`, `schedule`, `hosts`, `cache`, `subscriptions` (WebSub),
`fleet` (the workers' reports).
Every multi-key write is one MULTI/EXEC transaction guarded by WATCH on the keys it read on one
Redis, and staged in a crash-safe order on Redis Cluster. Every Redis failure surfaces as
StorageError.
"""

from __future__ import annotations

from aggregator.store.base import DAY, MAX_ATTEMPTS, Address, Lifetimes, connect
from aggregator.store.cache import Cache, FeedRead, Rendered
from aggregator.store.entries import Entries, SaveResult
from aggregator.store.fleet import Fleet, WorkerReport
from aggregator.store.hosts import HostSlot, HostSlotRequest
from aggregator.store.retention import Retained, Retention
from aggregator.store.schedule import Schedule, StateWrite
from aggregator.store.subscriptions import (
    INBOX_LIMIT,
    Distribution,
    change_subscription,
    claim_changes,
    claim_pings,
    forget_subscription,
    index_versions,
    lock_subscription,
    move_due,
    pending_pings,
    ping_done,
    ping_failures,
    push_distribution,
    queue_pings,
    subscribed_names,
    subscriptions,
    take_distributions,
    unlock_subscription,
)


class Store(Entries, Retention, Schedule, Cache, Fleet):
    """The whole store: every concern's methods on one connection pair."""


__all__ = [
    "DAY",
    "INBOX_LIMIT",
    "MAX_ATTEMPTS",
    "Address",
    "Distribution",
    "FeedRead",
    "HostSlot",
    "HostSlotRequest",
    "Lifetimes",
    "Rendered",
    "Retained",
    "SaveResult",
    "StateWrite",
    "Store",
    "change_subscription",
    "claim_changes",
    "claim_pings",
    "connect",
    "forget_subscription",
    "index_versions",
    "lock_subscription",
    "move_due",
    "pending_pings",
    "ping_done",
    "ping_failures",
    "push_distribution",
    "queue_pings",
    "subscribed_names",
    "subscriptions",
    "take_distributions",
    "unlock_subscription",
    "WorkerReport",
]
