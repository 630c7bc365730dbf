"""Every Redis key this package uses, built here and nowhere else.

All keys share one hash tag, `{agg}`: an entry, the indexes it sits in and its source's state
change together in one MULTI/EXEC transaction, and Redis Cluster runs a multi-key transaction
only when every key hashes to the same slot. One slot caps how far a single aggregator's data
shards, and keeps the guarantee that a reader never sees half a write.
"""

from __future__ import annotations

import hashlib
from typing import Literal

PREFIX = "agg:{agg}:"

Kind = Literal["tag", "category", "all"]

DUE = PREFIX + "due"  # sorted set: source name → when it is next due (epoch seconds)
RELOAD = PREFIX + "reload"  # counter: bumped by `aggregator reload`
ALL = PREFIX + "index:all"  # sorted set of every entry id by date


def entry(entry_id: str) -> str:
    """String: the entry as `Entry.to_stored` writes it (compressed JSON)."""
    return f"{PREFIX}entry:{entry_id}"


def alias(entry_id: str) -> str:
    """String: for an entry merged into another source's copy of the story, that copy's id."""
    return f"{PREFIX}alias:{entry_id}"


def canon(key: str) -> str:
    """String: the id of the entry a dedup key (canonical link, global guid) belongs to."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=12).hexdigest()
    return f"{PREFIX}canon:{digest}"


CUT = "cut"  # the value of a `gone` tombstone this version writes


def gone(entry_id: str) -> str:
    """String with a TTL: this id was cut by retention's `max_entries` (value `CUT`): not
    stored again while its source still lists it. Earlier versions wrote `1` here for age as
    well; such a tombstone is ignored, so what it hid comes back on the next poll."""
    return f"{PREFIX}gone:{entry_id}"


def index(kind: Kind, name: str = "") -> str:
    """Sorted set of entry ids by date, newest highest: one per tag, per category, and all."""
    if kind == "all":
        return ALL
    return f"{PREFIX}index:{kind}:{name}"


def version(index_key: str) -> str:
    """Counter: bumped whenever the index `index_key` (from `index`) changes."""
    return index_key.replace(":index:", ":version:", 1)


def rendered(kind: Kind, name: str, variant: str) -> str:
    """Hash with a TTL: a rendered feed (body, etag, last_modified) and the index version it
    was rendered from."""
    return f"{PREFIX}rendered:{kind}:{name}:{variant}"


def source(name: str) -> str:
    """Hash: one source's polling state."""
    return f"{PREFIX}source:{name}"


def host_inflight(host: str) -> str:
    """Sorted set: tokens of requests to `host` under way, scored by when their slot lapses."""
    return f"{PREFIX}host:{host}:inflight"


def host_recent(host: str) -> str:
    """Sorted set: tokens of requests to `host` started in the last minute, by start time."""
    return f"{PREFIX}host:{host}:recent"


def source_entries(name: str) -> str:
    """Sorted set: the stored entries this source brought (its own, and those it merged into
    another source's copy of the story), by date; `keep_per_source` keeps its newest."""
    return f"{PREFIX}source:{name}:entries"


def source_listed(name: str) -> str:
    """Sorted set: the same ids, scored by when the source last listed them: +inf for those
    its latest document lists (never removed by age), else the last time one did."""
    return f"{PREFIX}source:{name}:listed"


def source_guids(name: str) -> str:
    """Hash: link → guid of the source's entries at its last poll (to spot churning guids)."""
    return f"{PREFIX}source:{name}:guids"


# --- WebSub (aggregator/websub.py, aggregator/push.py) ----------------------------------------
# In the same slot as the rest: a poll's due time and a subscription's record change together
# with nothing else, but one tag keeps the whole layout in one place for Redis Cluster.

WEBSUB_NAMES = PREFIX + "websub:names"  # set: every source with a subscription record
WEBSUB_INBOX = PREFIX + "websub:inbox"  # list: distributions the web took, for workers
WEBSUB_PINGED = PREFIX + "websub:pinged"  # hash: index key → the version last pinged
WEBSUB_PINGS = PREFIX + "websub:pings"  # sorted set: feed URL to ping → when (epoch seconds)
WEBSUB_PING_TRIES = PREFIX + "websub:ping-tries"  # hash: feed URL → failed pings in a row


def websub(name: str) -> str:
    """Hash: one source's subscription (`websub.Subscription.to_fields`)."""
    return f"{PREFIX}websub:source:{name}"


def websub_lock(name: str) -> str:
    """String with a TTL: the worker making a request for this source's subscription."""
    return f"{PREFIX}websub:lock:{name}"


# --- The fleet (aggregator/fleet.py): which workers run, and what each has done -------------

WORKERS = PREFIX + "workers"  # sorted set: worker id → when it last reported (epoch seconds)


def worker(worker_id: str) -> str:
    """Hash with a TTL: one worker's report (host, pid, started, polls, errors, …)."""
    return f"{PREFIX}worker:{worker_id}"
