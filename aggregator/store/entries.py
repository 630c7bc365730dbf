"""Entries: a poll's save (new, changed and merged entries with their indexes and dedup
claims), the reads that serve feeds, and taking back what a source's filters now refuse.

Each entry is a JSON string carrying the digest of what its source said; a sorted set per
category, per tag and one for everything orders entry ids by date. Cross-source deduplication
keeps a claim per canonical link or global guid pointing at the entry, and an alias from each
merged source's id to it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aggregator import keys
from aggregator.identity import dedup_keys
from aggregator.keys import Layout
from aggregator.models import Entry, Origin, entry_digest, guids_to_stored
from aggregator.store.base import StoreBase, _storage_errors, _text, _ts
from aggregator.store.schedule import _queue_state


class Entries(StoreBase):
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
        """Write one poll's result in one transaction (on a cluster, in `staged`'s order):
        new entries with their indexes and dedup keys; changed ones (digest differs) in place,
        keeping their first-seen time and other sources, with `updated` set when the source
        gave none; a story another source already brought merged into that entry; the
        source's state, next due time and guid memory. Unchanged entries and those cut by
        max_entries (tombstoned) are not written. What the document lists is remembered for
        retention; `listed_at` is when the previous document was last confirmed (a 304
        confirms it), the time the entries it listed and this one does not were last
        listed."""
        return self._transaction(  # type: ignore[no-any-return]
            f"saving {source}",
            lambda pipe: _SavePlan(self, pipe, source).run(
                entries, state, next_due, guids, listed_at
            ),
        )

    def drop_entries(self, source: str, ids: Sequence[str]) -> int:
        """Take back what `source` brought of the entries `ids` (its filters now refuse them):
        an entry only it brought is deleted with every trace; one another source brought
        too stays for that source. Returns how many were deleted."""
        if not ids:
            return 0
        listed, own = self.keys.source_listed(source), self.keys.source_entries(source)

        def attempt(pipe: Any) -> int:
            pipe.watch(*map(self.keys.entry, ids))
            stored = pipe.mget(list(map(self.keys.entry, ids)))
            pipe.multi()
            touched: set[str] = set()
            deleted = 0
            for ident, raw in zip(ids, stored, strict=True):
                entry = Entry.from_stored(raw) if raw else None
                if entry is not None and entry.sources == (source,):
                    _queue_forget(self.keys, pipe, entry, touched, tombstone=None)
                    deleted += 1
                else:
                    pipe.zrem(listed, ident)
                    pipe.zrem(own, ident)
            for key in touched:
                pipe.incr(self.keys.version(key))
            return deleted

        return self._transaction(f"removing filtered entries of {source}", attempt)  # type: ignore[no-any-return]

    def source_entries(self, source: str) -> list[Entry]:
        """Every stored entry `source` brought, newest first."""
        with _storage_errors(f"reading the entries of {source}"):
            ids = [str(i) for i in self.client.zrevrange(self.keys.source_entries(source), 0, -1)]
            raw = self._mget([self.keys.entry(i) for i in ids])
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
                for i in self.client.zrevrange(
                    self.keys.index(kind, name), offset, offset + limit - 1
                )
            ]
            if not ids:
                return []
            raw = self._mget([self.keys.entry(i) for i in ids])
        return [Entry.from_stored(r) for r in raw if r]

    def entry(self, entry_id: str) -> Entry | None:
        with _storage_errors(f"reading entry {entry_id}"):
            raw = self.binary.get(self.keys.entry(entry_id))
        return Entry.from_stored(raw) if raw else None

    def count(self, kind: keys.Kind, name: str = "") -> int:
        with _storage_errors(f"counting {kind} {name}"):
            return int(self.client.zcard(self.keys.index(kind, name)))

    def summaries(
        self, indexes: Sequence[tuple[keys.Kind, str]]
    ) -> list[tuple[int, datetime | None]]:
        """(entry count, newest entry's date) of each index, in one round trip."""
        with _storage_errors("summarizing indexes"):
            pipe = self.client.pipeline(transaction=False)
            for kind, name in indexes:
                pipe.zcard(self.keys.index(kind, name))
                pipe.zrevrange(self.keys.index(kind, name), 0, 0, withscores=True)
            replies = pipe.execute()
        out: list[tuple[int, datetime | None]] = []
        for count, newest in zip(replies[::2], replies[1::2], strict=True):
            when = datetime.fromtimestamp(float(newest[0][1]), UTC) if newest else None
            out.append((int(count), when))
        return out


def _indexes(k: Layout, entry: Entry) -> set[str]:
    return {
        k.ALL,
        *(k.index("category", c) for c in entry.all_categories),
        *(k.index("tag", t) for t in entry.all_tags),
    }


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


def _queue_forget(
    k: Layout, pipe: Any, entry: Entry, touched: set[str], *, tombstone: int | None
) -> None:
    """Queue the deletion of `entry` with every trace: its index entries (their keys added to
    `touched`, whose versions the caller bumps), its sources' memory of it, the aliases of the
    copies merged into it and its dedup claims; with `tombstone` (seconds), a tombstone for
    each of its ids, so that a source still listing it does not bring it back."""
    pipe.delete(k.entry(entry.id))
    for index in _indexes(k, entry):
        touched.add(index)
        pipe.zrem(index, entry.id)
    for source in entry.sources:
        pipe.zrem(k.source_listed(source), entry.id)
        pipe.zrem(k.source_entries(source), entry.id)
    for origin in entry.merged:
        pipe.delete(k.alias(origin.id))
    for key in dedup_keys(entry.link, entry.guid):
        pipe.delete(k.canon(key))
    if tombstone is not None:
        for ident in (entry.id, *(o.id for o in entry.merged)):
            pipe.set(k.gone(ident), keys.CUT, ex=tombstone)


class _SavePlan:
    """One attempt at saving one poll: read under WATCH, decide, queue the writes."""

    def __init__(self, store: StoreBase, pipe: Any, source: str) -> None:
        self.store = store
        self.k = store.keys
        # redis-py's Pipeline is typed for bytes or str replies alike; ours are str
        # (decode_responses=True), so it is used untyped here.
        self.pipe: Any = pipe
        self.source = source
        self.pending: dict[str, Entry] = {}  # entries to write, by id, in their final form
        self.indexes: list[tuple[str, float, str]] = []  # (index key, score, id) to add
        self.unindex: list[tuple[str, str]] = []  # (index key, id) to remove
        self.listed: dict[str, float] = {}  # stored id → date, of what this document lists
        self.owners: dict[str, str | None] = {}  # dedup claim → the entry id it points at

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
        claims = {e.id: [self.k.canon(d) for d in dedup_keys(e.link, e.guid)] for e in entries}
        canon_keys = list(dict.fromkeys(k for ks in claims.values() for k in ks))
        listed_key = self.k.source_listed(self.source)
        watched = [
            *map(self.k.entry, ids),
            *map(self.k.alias, ids),
            *map(self.k.gone, ids),
            *canon_keys,
        ]
        pipe.watch(listed_key, *watched)
        previously = [str(_text(i)) for i in pipe.zrangebyscore(listed_key, "+inf", "+inf")]
        stored = pipe.mget(list(map(self.k.entry, ids))) if ids else []
        aliases = [_text(a) for a in pipe.mget(list(map(self.k.alias, ids)))] if ids else []
        gone = [_text(g) for g in pipe.mget(list(map(self.k.gone, ids)))] if ids else []
        owners = self.owners = (
            dict(zip(canon_keys, map(_text, pipe.mget(canon_keys)), strict=True))
            if canon_keys
            else {}
        )
        loaded = {
            e.id: Entry.from_stored(raw) for e, raw in zip(entries, stored, strict=True) if raw
        }
        targets = {t for t in (*aliases, *owners.values()) if t and t not in loaded}
        if targets:
            target_keys = [self.k.entry(t) for t in targets]
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
                pipe.expire(self.k.gone(entry.id), self.store.lifetimes.tombstone)
                cut += 1
                continue
            if tombstone is not None:
                pipe.delete(self.k.gone(entry.id))  # an earlier version's: it hides nothing now
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
                    merged += self._merge(target, entry, fresh=alias is None)
                    continue
                if target.id not in in_document and target.id not in self.pending:
                    # The same story under a new id from the same source (its guid changed):
                    # it is still that source's entry, so its changes apply to the stored one.
                    pipe.set(self.k.alias(entry.id), target.id)
                    same = dataclasses.replace(entry, id=target.id)
                    updated += self._update(target, same, claims[entry.id])
                    continue
                # Listed beside it in one document: a distinct entry that shares its link
                # (a podcast's episodes all linking to the show's page).
                if alias:
                    pipe.delete(self.k.alias(entry.id))
            self._add(entry, claims[entry.id], owners, loaded)
            new_ids.append(entry.id)

        # One command per key, not per entry: a cold poll of 20 entries in 4 indexes is a
        # handful of commands instead of a hundred.
        if self.pending:
            pipe.mset({self.k.entry(e.id): e.to_stored() for e in self.pending.values()})
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
            pipe.incr(self.k.version(index))  # cached renderings of this index are stale now
        self._queue_listing(previously, listed_at)
        _queue_state(self.k, pipe, self.source, state, next_due, len(new_ids))
        if guids is not None:
            # SET replaces the hash earlier versions kept there, in the same step.
            if guids:
                pipe.set(self.k.source_guids(self.source), guids_to_stored(guids))
            else:
                pipe.delete(self.k.source_guids(self.source))
        return SaveResult(len(new_ids), updated, merged, cut, tuple(new_ids))

    def _queue_listing(self, previously: Sequence[str], listed_at: float | None) -> None:
        """Record what this document lists (settings.retention ages only what a source no
        longer lists): its entries listed now, and for each one the last document listed but
        this one does not, when it was last listed (the previous poll that confirmed it)."""
        listed_key = self.k.source_listed(self.source)
        if self.listed:
            self.pipe.zadd(listed_key, dict.fromkeys(self.listed, float("inf")))
            self.pipe.zadd(self.k.source_entries(self.source), self.listed)
        dropped = [i for i in previously if i not in self.listed]
        if dropped:
            when = listed_at if listed_at is not None else _ts(datetime.now(UTC))
            self.pipe.zadd(listed_key, dict.fromkeys(dropped, when))

    def _index(self, entry: Entry, score_of: Entry | None = None) -> None:
        score = _ts((score_of or entry).date)
        self.indexes += [(index, score, entry.id) for index in sorted(_indexes(self.k, entry))]

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
            if self.store.clustered:
                # Written in steps there: what a crash between them left out is added again.
                self._index(current)
                self._claim(
                    current.id, [k for k in claims if self.owners.get(k) in (None, current.id)]
                )
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
        for index in sorted(_indexes(self.k, current) - _indexes(self.k, changed)):
            self.unindex.append((index, changed.id))
        self._index(changed)
        self._claim(changed.id, claims)
        return 1

    def _merge(self, target: Entry, incoming: Entry, *, fresh: bool) -> int:
        """`incoming` is a copy of `target`'s story from this source: file the target where
        this source files it too, remember where it came from, and fill in what the target
        lacks and this copy has. Counts 1 when this copy was not merged before (`fresh`: it
        had no alias; on a cluster an earlier attempt of this save may have recorded the
        origin in the target and stopped before writing the alias)."""
        self.pipe.set(self.k.alias(incoming.id), target.id)
        self.listed[target.id] = _ts(target.date)
        known = any(o.id == incoming.id for o in target.merged)
        origin = Origin(self.source, incoming.id, incoming.category, incoming.tags)
        combined = _best_of(
            target if known else dataclasses.replace(target, merged=(*target.merged, origin)),
            incoming,
        )
        if combined == target:
            if self.store.clustered:
                self._index(target)  # as in `_update`: repairs what a crash left out
            return 1 if fresh else 0
        self.pending[combined.id] = combined
        self._index(combined)
        return 1 if fresh or not known else 0


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
