"""Every Redis key this package uses, built here and nowhere else: each key, its slot, and why.

A key is `agg:{<tag>}:<kind>:<name>`; Redis Cluster places it by the hash tag in braces.

On one Redis (`redis://`, the embedded one) every key has the tag `{agg}`: one node has no
slots to spread, and a poll's write (an entry, its indexes, its source's state) is one
MULTI/EXEC transaction, so a reader never sees half of it.

On Redis Cluster (`redis+cluster://`) the tags spread the data over the cluster's slots, and a
key shares a slot only with the keys that must change with it in one step:

- `entry`, `alias`, `gone` of one id: tag the entry id. The bulk of the data, spread evenly;
  an id's alias and tombstone are read with it.
- `canon` (a dedup claim): tag its digest. Claimed with SET NX on its own, so two sources in
  different slots never both claim one story.
- `index`, `version`, `rendered` of one feed: tag `i` + a digest of its kind and name. The
  cached render is read with the index's version in one round trip, and the version is bumped
  with the index in one script.
- a source's state, `:entries`, `:listed`, `:guids`, its WebSub record and lock: tag `s` + a
  digest of its name. They change together in one single-slot transaction.
- `host:*:inflight`, `:recent`: tag `h` + a digest of the host. The politeness script reads
  and writes both.
- `due`, `leases`, `reload`, `workers`, `worker:*`, the WebSub queues: tag `{agg}`. Small
  and global: the schedule script claims due sources from one sorted set (and keeps each
  claim's lease beside it, to tell a takeover).

Merged feeds (tags, categories, all) are each one sorted set in their own slot, written
idempotently after the entries they point at, so serving one reads one slot and then the
entries it lists (`mget_nonatomic`, one round trip per node). How a poll's write is ordered
across slots is `aggregator.store.staged`'s.
"""

from __future__ import annotations

import hashlib
from typing import Literal

PREFIX = "agg:{agg}:"

Kind = Literal["tag", "category", "all"]

CUT = "cut"  # the value of a `gone` tombstone this version writes

# Global keys: under `{agg}` on one node and on a cluster alike.
DUE = PREFIX + "due"  # sorted set: source name → when it is next due (epoch seconds)
RELOAD = PREFIX + "reload"  # counter: bumped by `aggregator reload`
LEASES = PREFIX + "leases"  # hash: source name → the due time its last claim set (a lease end)

# WebSub (aggregator/websub.py, aggregator/push.py): queues of the whole fleet.
WEBSUB_NAMES = PREFIX + "websub:names"  # set: every source with a subscription record
WEBSUB_INBOX = PREFIX + "websub:inbox"  # list: distributions the web took, for workers
WEBSUB_PINGED = PREFIX + "websub:pinged"  # hash: index key → the version last pinged
WEBSUB_PINGS = PREFIX + "websub:pings"  # sorted set: feed URL to ping → when (epoch seconds)
WEBSUB_PING_TRIES = PREFIX + "websub:ping-tries"  # hash: feed URL → failed pings in a row

# The fleet (aggregator/store/fleet.py): which workers run, and what each has done.
WORKERS = PREFIX + "workers"  # sorted set: worker id → when it last reported (epoch seconds)


def worker(worker_id: str) -> str:
    """Hash with a TTL: one worker's report (host, pid, started, polls, errors, …)."""
    return f"{PREFIX}worker:{worker_id}"


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()


def kind_of(key: str) -> str:
    """The kind of a key this module built: `entry`, `index`, `source`, …"""
    return key.partition("}:")[2].partition(":")[0]


class Layout:
    """The key map for one deployment: `clustered` spreads keys over slots (see above)."""

    def __init__(self, *, clustered: bool) -> None:
        self.clustered = clustered
        self.ALL = self.index("all")

    def _key(self, tag: str, rest: str) -> str:
        return f"agg:{{{tag}}}:{rest}" if self.clustered else PREFIX + rest

    def entry(self, entry_id: str) -> str:
        """String: the entry as `Entry.to_stored` writes it (compressed JSON)."""
        return self._key(entry_id, f"entry:{entry_id}")

    def alias(self, entry_id: str) -> str:
        """String: for an entry merged into another source's copy of the story, that copy's
        id."""
        return self._key(entry_id, f"alias:{entry_id}")

    def gone(self, entry_id: str) -> str:
        """String with a TTL: this id was cut by retention's `max_entries` (value `CUT`): not
        stored again while its source still lists it. Earlier versions wrote `1` here for age
        as well; such a tombstone is ignored, so what it hid comes back on the next poll."""
        return self._key(entry_id, f"gone:{entry_id}")

    def canon(self, key: str) -> str:
        """String: the id of the entry a dedup key (canonical link, global guid) belongs to."""
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=12).hexdigest()
        return self._key(digest, f"canon:{digest}")

    def index(self, kind: Kind, name: str = "") -> str:
        """Sorted set of entry ids by date, newest highest: one per tag, per category, and
        all."""
        rest = "index:all" if kind == "all" else f"index:{kind}:{name}"
        return self._key("i" + _digest(f"{kind}:{name}"), rest)

    @staticmethod
    def version(index_key: str) -> str:
        """Counter: bumped whenever the index `index_key` (from `index`) changes."""
        return index_key.replace(":index:", ":version:", 1)

    def rendered(self, kind: Kind, name: str, variant: str) -> str:
        """Hash with a TTL: a rendered feed (body, etag, last_modified) and the index version
        it was rendered from."""
        return self._key("i" + _digest(f"{kind}:{name}"), f"rendered:{kind}:{name}:{variant}")

    def source(self, name: str) -> str:
        """Hash: one source's polling state."""
        return self._key("s" + _digest(name), f"source:{name}")

    def source_entries(self, name: str) -> str:
        """Sorted set: the stored entries this source brought (its own, and those it merged
        into another source's copy of the story), by date; `keep_per_source` keeps its
        newest."""
        return self._key("s" + _digest(name), f"source:{name}:entries")

    def source_listed(self, name: str) -> str:
        """Sorted set: the same ids, scored by when the source last listed them: +inf for
        those its latest document lists (never removed by age), else the last time one did."""
        return self._key("s" + _digest(name), f"source:{name}:listed")

    def source_guids(self, name: str) -> str:
        """String: link → guid of the source's entries at its last poll (to spot churning
        guids), `models.guids_to_stored`; a hash of the same before that."""
        return self._key("s" + _digest(name), f"source:{name}:guids")

    def websub(self, name: str) -> str:
        """Hash: one source's subscription (`websub.Subscription.to_fields`)."""
        return self._key("s" + _digest(name), f"websub:source:{name}")

    def websub_lock(self, name: str) -> str:
        """String with a TTL: the worker making a request for this source's subscription."""
        return self._key("s" + _digest(name), f"websub:lock:{name}")

    def host_inflight(self, host: str) -> str:
        """Sorted set: tokens of requests to `host` under way, scored by when their slot
        lapses."""
        return self._key("h" + _digest(host), f"host:{host}:inflight")

    def host_recent(self, host: str) -> str:
        """Sorted set: tokens of requests to `host` started in the last minute, by start
        time."""
        return self._key("h" + _digest(host), f"host:{host}:recent")


ONE_NODE = Layout(clustered=False)
CLUSTER = Layout(clustered=True)

# One node's keys by name, for the tools and tests that read a single Redis directly.
ALL = ONE_NODE.ALL
entry = ONE_NODE.entry
alias = ONE_NODE.alias
gone = ONE_NODE.gone
canon = ONE_NODE.canon
index = ONE_NODE.index
version = Layout.version
rendered = ONE_NODE.rendered
source = ONE_NODE.source
source_entries = ONE_NODE.source_entries
source_listed = ONE_NODE.source_listed
source_guids = ONE_NODE.source_guids
websub = ONE_NODE.websub
websub_lock = ONE_NODE.websub_lock
host_inflight = ONE_NODE.host_inflight
host_recent = ONE_NODE.host_recent
