"""Retention (settings.retention): by age per source, from when it last listed an entry;
by count per category. What goes is deleted with every trace (entries.py's `_queue_forget`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aggregator.keys import Layout
from aggregator.models import Entry, RetentionRule
from aggregator.store.base import StoreBase, _storage_errors, _text, _ts
from aggregator.store.entries import _queue_forget


class Retention(StoreBase):
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
        listed, own = self.keys.source_listed(source), self.keys.source_entries(source)
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
                _queue_age_check(self.keys, pipe, source, due)
                pipe.execute()
                return []

        def attempt(pipe: Any) -> list[str]:
            pipe.watch(listed, own)
            unlisted = pipe.zrangebyscore(listed, "-inf", "(inf", withscores=True)
            candidates, due = _age_plan(unlisted, pipe.zrevrange(own, 0, keep - 1), oldest, rule)
            if candidates:
                pipe.watch(*map(self.keys.entry, candidates))
            stored = pipe.mget(list(map(self.keys.entry, candidates))) if candidates else []
            held = {
                ident
                for ident, raw in zip(candidates, stored, strict=True)
                if raw
                and _held_elsewhere(self.keys, pipe, Entry.from_stored(raw), source, oldest, keep)
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
                _queue_forget(self.keys, pipe, Entry.from_stored(raw), touched, tombstone=None)
                gone.append(ident)
            for key in touched:
                pipe.incr(self.keys.version(key))
            _queue_age_check(self.keys, pipe, source, due)
            return gone

        return self._transaction(f"enforcing retention of {source}", attempt)  # type: ignore[no-any-return]

    def _cap(self, category: str, max_entries: int) -> list[str]:
        index = self.keys.index("category", category)
        with _storage_errors(f"checking retention of {category}"):
            if int(self.client.zcard(index)) <= max_entries:
                return []

        def attempt(pipe: Any) -> list[str]:
            pipe.watch(index)
            victims = [str(_text(v)) for v in pipe.zrevrange(index, max_entries, -1)]
            if not victims:
                pipe.multi()
                return []
            entry_keys = [self.keys.entry(v) for v in victims]
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
                _queue_forget(self.keys, pipe, entry, touched, tombstone=self.lifetimes.tombstone)
            for key in touched:
                pipe.incr(self.keys.version(key))
            return victims

        return self._transaction(f"enforcing retention of {category}", attempt)  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True, slots=True)
class Retained:
    """What one run of retention removed: `aged`, entries no source had listed for max_age;
    `cut`, entries over the category's max_entries."""

    aged: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()


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


def _queue_age_check(k: Layout, pipe: Any, source: str, due: float | None) -> None:
    if due is None:
        pipe.hdel(k.source(source), "age_check")
    else:
        pipe.hset(k.source(source), "age_check", due)


def _held_elsewhere(
    k: Layout, pipe: Any, entry: Entry, source: str, oldest: float, keep: int
) -> bool:
    """Whether a source of `entry` other than `source` still keeps it: listed it at `oldest`
    or later, or counts it among its newest `keep`. (Read under WATCH: one call each.)"""
    for other in entry.sources:
        if other == source:
            continue
        seen = pipe.zscore(k.source_listed(other), entry.id)
        if seen is not None and float(seen) >= oldest:
            return True
        rank = pipe.zrevrank(k.source_entries(other), entry.id) if keep else None
        if rank is not None and rank < keep:
            return True
    return False
