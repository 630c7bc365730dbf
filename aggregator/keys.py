"""Every Redis key this package uses, built here and nowhere else.

All keys share one hash tag, `{agg}`: an entry, the indexes it sits in and its source's state
change together in one Lua script, and Redis Cluster runs a multi-key command only when every key
hashes to the same slot. One slot caps how far a single aggregator's data shards, and keeps the
guarantee that a reader never sees half a write.
"""

from __future__ import annotations

from typing import Literal

PREFIX = "agg:{agg}:"

Kind = Literal["tag", "category", "all"]

DIGESTS = PREFIX + "digests"  # hash: entry id → digest of what the source said
DUE = PREFIX + "due"  # sorted set: source name → when it is next due (epoch seconds)
RELOAD = PREFIX + "reload"  # counter: bumped by `aggregator reload`
ALL = PREFIX + "index:all"  # sorted set of every entry id by date


def entry(entry_id: str) -> str:
    return f"{PREFIX}entry:{entry_id}"


def index(kind: Kind, name: str = "") -> str:
    """Sorted set of entry ids by date, newest highest: one per tag, per category, and all."""
    if kind == "all":
        return ALL
    return f"{PREFIX}index:{kind}:{name}"


def source(name: str) -> str:
    """Hash: one source's polling state."""
    return f"{PREFIX}source:{name}"
