"""Store against a real, private redis-server (the `store`/`redis_url` fixtures)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from aggregator import keys
from aggregator.errors import StorageError
from aggregator.models import Author, Entry, Validators, entry_digest
from aggregator.store import (
    MAX_ATTEMPTS,
    HostSlot,
    HostSlotRequest,
    SaveResult,
    StateWrite,
    Store,
)
from aggregator.store import entries as store_entries
from tests.conftest import free_port

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
PLUS8 = timezone(timedelta(hours=8))
MINUS5 = timezone(timedelta(hours=-5))


def make_entry(
    entry_id: str,
    *,
    source: str = "src",
    category: str = "news",
    tags: tuple[str, ...] = ("t1",),
    content: str = "<p>body</p>",
    published: datetime | None = None,
    updated: datetime | None = None,
    first_seen: datetime = T0,
    title: str | None = None,
) -> Entry:
    return Entry(
        id=entry_id,
        source=source,
        category=category,
        tags=tags,
        title=title if title is not None else f"Title {entry_id}",
        link=f"https://example.test/{entry_id}",
        content=content,
        summary="summary",
        first_seen=first_seen,
        authors=(Author(name="Ann"),),
        published=published,
        updated=updated,
    )


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def ids(entries: list[Entry]) -> list[str]:
    return [e.id for e in entries]


def index_ids(raw: redis.Redis, key: str) -> list[str]:
    return [str(i) for i in raw.zrevrange(key, 0, -1)]


def scores(raw: redis.Redis, key: str) -> dict[str, float]:
    pairs: list[tuple[str, float]] = raw.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    return {str(member): float(score) for member, score in pairs}


STATE: dict[str, str | int | float] = {"url": "https://example.test/feed", "status": 200}


# --- save_poll: new entries ------------------------------------------------------------------


def test_new_entries_are_indexed_newest_first_by_date(store: Store, raw: redis.Redis) -> None:
    # Entry.date is published, else updated, else first_seen; ordering is by the instant,
    # whatever offset each one was written in.
    a = make_entry("a", published=datetime(2024, 5, 1, 18, 0, tzinfo=PLUS8))  # 10:00Z
    b = make_entry("b", updated=datetime(2024, 5, 1, 6, 30, tzinfo=MINUS5))  # 11:30Z
    c = make_entry("c", first_seen=datetime(2024, 5, 1, 11, 0, tzinfo=UTC))  # 11:00Z
    d = make_entry(
        "d",
        published=datetime(2024, 5, 1, 9, 0, tzinfo=UTC),
        updated=datetime(2024, 5, 1, 23, 0, tzinfo=UTC),  # ignored: published wins
        tags=("t2",),
    )
    result = store.save_poll("src", [a, b, c, d], STATE, T0 + timedelta(minutes=15))
    assert result == SaveResult(new=4, updated=0)

    newest_first = ["b", "c", "a", "d"]
    assert ids(store.entries("all")) == newest_first
    assert ids(store.entries("category", "news")) == newest_first
    assert ids(store.entries("tag", "t1")) == ["b", "c", "a"]
    assert ids(store.entries("tag", "t2")) == ["d"]
    assert store.entries("tag", "nope") == []
    assert store.count("all") == 4
    assert store.count("category", "news") == 4
    assert store.count("tag", "t1") == 3
    assert store.count("tag", "t2") == 1
    assert store.count("category", "other") == 0
    # The score is the entry's date as epoch seconds.
    assert raw.zscore(keys.ALL, "a") == pytest.approx(a.date.timestamp(), abs=1e-6)
    assert raw.zscore(keys.ALL, "b") == pytest.approx(b.date.timestamp(), abs=1e-6)


def test_entry_indexed_in_its_category_and_every_tag(store: Store) -> None:
    e = make_entry("multi", category="科技", tags=("经济日报新闻", "财经", "x y"))
    assert store.save_poll("src", [e], STATE, None) == SaveResult(1, 0)
    for tag in ("经济日报新闻", "财经", "x y"):
        assert ids(store.entries("tag", tag)) == ["multi"]
    assert ids(store.entries("category", "科技")) == ["multi"]
    assert ids(store.entries("all")) == ["multi"]
    assert store.count("category", "news") == 0


def test_entry_round_trips_with_offsets_kept(store: Store) -> None:
    e = make_entry(
        "rt",
        published=datetime(2024, 5, 1, 20, 15, 30, 123456, tzinfo=PLUS8),
        first_seen=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        content="<p>经济 ünïcode</p>",
    )
    store.save_poll("src", [e], STATE, None)
    got = store.entry("rt")
    assert got == dataclasses.replace(e, digest=entry_digest(e))
    assert got is not None and got.published is not None
    assert got.published.utcoffset() == timedelta(hours=8)
    assert store.entry("missing") is None


def test_entries_limit_and_offset(store: Store) -> None:
    batch = [make_entry(f"e{i}", published=T0 + timedelta(minutes=i)) for i in range(7)]
    store.save_poll("src", batch, STATE, None)
    assert ids(store.entries("all", limit=3)) == ["e6", "e5", "e4"]
    assert ids(store.entries("all", limit=3, offset=3)) == ["e3", "e2", "e1"]
    assert ids(store.entries("all", limit=3, offset=6)) == ["e0"]
    assert store.entries("all", limit=3, offset=7) == []
    assert ids(store.entries("tag", "t1", limit=50)) == [f"e{i}" for i in range(6, -1, -1)]


def test_entries_skips_an_index_member_whose_entry_is_gone(store: Store, raw: redis.Redis) -> None:
    store.save_poll("src", [make_entry("a", published=T0), make_entry("b")], STATE, None)
    raw.delete(keys.entry("a"))
    assert ids(store.entries("all")) == ["b"]


# --- save_poll: unchanged, changed, moved entries --------------------------------------------


def test_saving_the_same_entries_again_rewrites_nothing(store: Store, raw: redis.Redis) -> None:
    a = make_entry("a", published=T0 - timedelta(hours=1))
    b = make_entry("b")  # dated by first_seen
    assert store.save_poll("src", [a, b], STATE, None) == SaveResult(2, 0)
    blobs = {i: store.binary.get(keys.entry(i)) for i in ("a", "b")}
    all_scores = scores(raw, keys.ALL)

    # Mark the stored copy of "a" without touching its digest: a rewrite would erase the mark.
    marked = dataclasses.replace(Entry.from_stored(blobs["a"] or b""), title="MARK")
    store.binary.set(keys.entry("a"), marked.to_stored())

    # The next poll sees the same entries, but "now" (first_seen) has moved on.
    later = T0 + timedelta(hours=3)
    again = [dataclasses.replace(a, first_seen=later), dataclasses.replace(b, first_seen=later)]
    assert store.save_poll("src", again, STATE, None) == SaveResult(0, 0)

    assert store.entry("a") == marked
    assert store.binary.get(keys.entry("b")) == blobs["b"]
    got_b = store.entry("b")
    assert got_b is not None and got_b.first_seen == T0
    assert scores(raw, keys.ALL) == all_scores
    state = store.source_states(["src"])[0]
    assert (state.new_entries, state.stored) == (0, 2)


def test_changed_entry_is_updated_and_keeps_first_seen(store: Store, raw: redis.Redis) -> None:
    first = make_entry("a", content="<p>v1</p>", first_seen=T0)
    other = make_entry("b", first_seen=T0 - timedelta(days=1))
    assert store.save_poll("src", [first, other], STATE, None) == SaveResult(2, 0)

    later = T0 + timedelta(hours=5)
    changed = make_entry("a", content="<p>v2</p>", first_seen=later)
    same = dataclasses.replace(other, first_seen=later)
    assert store.save_poll("src", [changed, same], STATE, None) == SaveResult(new=0, updated=1)

    got = store.entry("a")
    assert got is not None
    assert got.content == "<p>v2</p>"
    assert got.first_seen == T0
    assert got.digest == entry_digest(changed)
    # The source gave no dates: the change is stamped as an update when we saw it, and the
    # entry is dated (and scored) by that.
    assert got.updated == later
    assert raw.zscore(keys.ALL, "a") == pytest.approx(later.timestamp(), abs=1e-6)
    assert store.count("all") == 2
    assert ids(store.entries("tag", "t1")) == ["a", "b"]
    state = store.source_states(["src"])[0]
    assert (state.new_entries, state.stored) == (0, 2)


def test_changed_date_moves_the_entry_in_every_index(store: Store) -> None:
    a = make_entry("a", published=T0)
    b = make_entry("b", published=T0 + timedelta(hours=1))
    store.save_poll("src", [a, b], STATE, None)
    assert ids(store.entries("all")) == ["b", "a"]
    moved = dataclasses.replace(a, published=T0 + timedelta(hours=2))
    assert store.save_poll("src", [moved, b], STATE, None) == SaveResult(0, 1)
    assert ids(store.entries("all")) == ["a", "b"]
    assert ids(store.entries("tag", "t1")) == ["a", "b"]
    assert ids(store.entries("category", "news")) == ["a", "b"]


def test_changing_tags_moves_the_entry_between_tag_indexes(store: Store, raw: redis.Redis) -> None:
    e = make_entry("a", tags=("old", "kept"))
    keep = make_entry("b", tags=("old",))
    store.save_poll("src", [e, keep], STATE, None)
    assert set(index_ids(raw, keys.index("tag", "old"))) == {"a", "b"}

    retagged = dataclasses.replace(e, tags=("kept", "new"))
    assert store.save_poll("src", [retagged, keep], STATE, None) == SaveResult(0, 1)

    assert index_ids(raw, keys.index("tag", "old")) == ["b"]  # no orphan "a" left behind
    assert index_ids(raw, keys.index("tag", "kept")) == ["a"]
    assert index_ids(raw, keys.index("tag", "new")) == ["a"]
    assert store.count("tag", "old") == 1
    assert set(index_ids(raw, keys.ALL)) == {"a", "b"}
    got = store.entry("a")
    assert got is not None and got.tags == ("kept", "new")


def test_changing_category_moves_the_entry(store: Store, raw: redis.Redis) -> None:
    e = make_entry("a", category="before", tags=("only",))
    store.save_poll("src", [e], STATE, None)
    moved = dataclasses.replace(e, category="after", tags=())
    assert store.save_poll("src", [moved], STATE, None) == SaveResult(0, 1)
    assert not raw.exists(keys.index("category", "before"))
    assert not raw.exists(keys.index("tag", "only"))
    assert index_ids(raw, keys.index("category", "after")) == ["a"]
    assert index_ids(raw, keys.ALL) == ["a"]


# --- save_poll: the source's state ----------------------------------------------------------


def test_state_and_next_due_written_with_the_entries(store: Store, raw: redis.Redis) -> None:
    due = T0 + timedelta(minutes=15, microseconds=250000)
    state: dict[str, str | int | float] = {
        "url": "https://example.test/feed.xml",
        "status": 200,
        "last_poll": T0.timestamp(),
        "last_success": T0.timestamp(),
        "last_error": "",
        "failures": 0,
        "entries": 2,
        "etag": '"abc123"',
        "last_modified": "Wed, 01 May 2024 11:00:00 GMT",
    }
    entries = [make_entry("a"), make_entry("b")]
    assert store.save_poll("src", entries, state, due) == SaveResult(2, 0)

    (got,) = store.source_states(["src"])
    assert got.name == "src"
    assert got.url == "https://example.test/feed.xml"
    assert got.status == 200
    assert got.last_poll == T0
    assert got.last_success == T0
    assert got.last_error == ""
    assert got.failures == 0
    assert got.entries == 2
    assert got.new_entries == 2
    assert got.stored == 2
    assert got.validators == Validators('"abc123"', "Wed, 01 May 2024 11:00:00 GMT")
    assert got.next_due is not None
    assert abs((got.next_due - due).total_seconds()) < 1e-3
    assert raw.zscore(keys.DUE, "src") == pytest.approx(due.timestamp(), abs=1e-5)

    # A second poll with one new entry: `new` is this poll's, `stored` accumulates.
    later_due = due + timedelta(minutes=15)
    result = store.save_poll("src", [*entries, make_entry("c")], {"entries": 3}, later_due)
    assert result == SaveResult(1, 0)
    (got,) = store.source_states(["src"])
    assert (got.entries, got.new_entries, got.stored) == (3, 1, 3)
    assert got.next_due is not None and abs((got.next_due - later_due).total_seconds()) < 1e-3
    assert got.url == "https://example.test/feed.xml"  # fields not given are kept


def test_save_state_records_a_failure_without_entries(store: Store) -> None:
    store.save_poll("src", [make_entry("a")], {"status": 200}, T0)
    retry = T0 + timedelta(minutes=2)
    store.save_state(
        "src", {"status": 500, "last_error": "fetch x: HTTP 500", "failures": 1}, retry
    )
    (got,) = store.source_states(["src"])
    assert (got.status, got.failures, got.last_error) == (500, 1, "fetch x: HTTP 500")
    assert (got.new_entries, got.stored) == (0, 1)
    assert got.next_due is not None and abs((got.next_due - retry).total_seconds()) < 1e-3
    assert store.count("all") == 1


def test_next_due_none_leaves_the_due_time_alone(store: Store, raw: redis.Redis) -> None:
    store.save_state("src", {"status": 200}, T0)
    store.save_state("src", {"status": 304}, None)
    assert raw.zscore(keys.DUE, "src") == pytest.approx(T0.timestamp())
    assert store.source_states(["src"])[0].status == 304


def test_source_states_of_an_unknown_source_are_empty(store: Store) -> None:
    (got,) = store.source_states(["never"])
    assert got.name == "never"
    assert (got.status, got.failures, got.stored, got.next_due) == (0, 0, 0, None)
    assert got.validators == Validators()
    assert store.source_states([]) == []


def test_finish_polls_records_many_polls_at_once(store: Store, raw: redis.Redis) -> None:
    store.save_poll("a", [make_entry("x", source="a")], {"status": 200, "etag": '"1"'}, T0)
    store.save_state("c", {"status": 200}, T0)
    later = T0 + timedelta(minutes=15)
    polls: list[StateWrite] = [
        ("a", {"status": 304, "failures": 0}, later),
        ("b", {"status": 503, "last_error": "fetch b: HTTP 503", "failures": 2}, later),
        ("c", {"status": 304}, None),  # its due time stays
    ]
    store.finish_polls([(poll, None) for poll in polls])
    a, b, c = store.source_states(["a", "b", "c"])
    assert (a.status, a.validators.etag, a.new_entries, a.stored) == (304, '"1"', 0, 1)
    assert (b.status, b.failures, b.last_error) == (503, 2, "fetch b: HTTP 503")
    assert (b.new_entries, b.stored) == (0, 0)
    assert c.status == 304
    assert raw.zscore(keys.DUE, "a") == pytest.approx(later.timestamp())
    assert raw.zscore(keys.DUE, "b") == pytest.approx(later.timestamp())
    assert raw.zscore(keys.DUE, "c") == pytest.approx(T0.timestamp())
    assert store.finish_polls([]) == []


def test_finish_polls_a_failing_write_fails_the_batch(store: Store, raw: redis.Redis) -> None:
    raw.set(keys.source("b"), "not a hash")  # this source's HSET fails inside the transaction
    polls: list[StateWrite] = [
        ("a", {"status": 304}, T0),
        ("b", {"status": 304}, T0),
        ("c", {"status": 304}, T0),
    ]
    with pytest.raises(StorageError, match="saving a and 2 more"):
        store.finish_polls([(poll, None) for poll in polls])
    # EXEC does not roll back a command that failed on its own: the others were written.
    assert [s.status for s in store.source_states(["a", "c"])] == [304, 304]


def test_previous_guids_reads_each_sources_own(store: Store) -> None:
    entry = make_entry("x", source="a")
    store.save_poll("a", [entry], {}, T0, guids={"https://a.example/1": "g1"})
    store.save_poll("c", [], {}, T0, guids={"https://c.example/1": "g3", "https://c.example/2": ""})
    assert [store.previous_guids(s) for s in ("c", "b", "a")] == [
        {"https://c.example/1": "g3", "https://c.example/2": ""},
        {},
        {"https://a.example/1": "g1"},
    ]


def test_guid_memory_is_one_compressed_string_and_the_old_hash_still_reads(store: Store) -> None:
    links = {
        f"https://a.example/2024/story-{n}.html": f"https://a.example/?p={n}" for n in range(20)
    }
    store.save_poll("a", [], {}, T0, guids=links)
    key = keys.source_guids("a")
    assert store.binary.type(key) == b"string"
    assert len(store.binary.get(key) or b"") < len(str(links)) / 3
    assert store.previous_guids("a") == links
    # What earlier versions wrote: a hash, read as it is and replaced by the next poll.
    store.binary.delete(key)
    store.binary.hset(key, mapping={"https://a.example/old": "g-old"})
    assert store.previous_guids("a") == {"https://a.example/old": "g-old"}
    store.save_poll("a", [], {}, T0, guids=links)
    assert store.binary.type(key) == b"string"
    assert store.previous_guids("a") == links
    store.save_poll("a", [], {}, T0, guids={})
    assert store.previous_guids("a") == {}


# --- host slots ------------------------------------------------------------------------------


def slot(host: str, token: str, now: float = 1000.0, concurrency: int = 2) -> HostSlotRequest:
    return HostSlotRequest(host, token, now, lease=30, concurrency=concurrency, per_minute=100)


def test_take_host_slots_counts_the_requests_of_one_batch_against_each_other(
    store: Store,
) -> None:
    requests = [slot("h.example", "t1"), slot("h.example", "t2"), slot("h.example", "t3")]
    requests.append(slot("other.example", "o1"))  # another host is not held up
    waits = store.take_host_slots(requests)
    assert waits[:2] == [0, 0] and waits[3] == 0
    assert waits[2] > 0
    # Given back, in one batch with one never held: the host has room again.
    assert store.release_host_slots([("h.example", "t1"), ("h.example", "t2"), ("x", "y")]) == [
        None,
        None,
        None,
    ]
    assert store.take_host_slots([slot("h.example", "t3", 1001.0)]) == [0]
    assert store.take_host_slots([]) == [] and store.release_host_slots([]) == []


def test_take_host_slots_applies_the_per_minute_limit_within_a_batch(store: Store) -> None:
    requests = [HostSlotRequest("h.example", f"t{i}", 1000.0 + i, 30, 10, 2) for i in range(3)]
    first, second, third = store.take_host_slots(requests)
    assert (first, second) == (0, 0)
    assert 57 <= third <= 59  # the oldest start (1000) leaves the window at 1060; now is 1002


def test_take_host_slots_reloads_a_script_the_server_lost(store: Store, raw: redis.Redis) -> None:
    assert store.take_host_slots([slot("h.example", "t1")]) == [0]
    raw.script_flush()  # as after a restart of Redis
    waits = store.take_host_slots([slot("h.example", "t2"), slot("h.example", "t3")])
    assert waits[0] == 0 and waits[1] > 0  # each ran once: t1 and t2 hold both slots
    assert raw.zrange(keys.host_inflight("h.example"), 0, -1) == ["t1", "t2"]


def test_a_slot_given_back_unused_leaves_the_per_minute_count_too(
    store: Store, raw: redis.Redis
) -> None:
    assert store.take_host_slots([slot("h.example", "t1"), slot("h.example", "t2")]) == [0, 0]
    store.release_host_slots([("h.example", "t1")])
    store.release_host_slots([("h.example", "t2")], started=False)
    assert raw.zcard(keys.host_inflight("h.example")) == 0
    assert raw.zrange(keys.host_recent("h.example"), 0, -1) == ["t1"]  # t1 made its request


# --- starting and finishing polls --------------------------------------------------------------


def test_start_polls_reads_states_and_takes_slots_in_one_round_trip(
    store: Store, raw: redis.Redis
) -> None:
    store.save_state("a", {"status": 304, "failures": 2}, T0)
    starts = [("a", slot("h.example", "t1")), ("b", slot("h.example", "t2"))]
    starts.append(("c", slot("h.example", "t3")))  # the host's two slots are taken by then
    (a, wait_a), (b, wait_b), (c, wait_c) = store.start_polls(starts)
    assert (a.name, a.status, a.failures) == ("a", 304, 2)
    assert a.next_due is None  # a poll does not read its due time: `source_states` does
    assert (b.name, b.status, b.next_due) == ("b", 0, None) and c.name == "c"
    assert (wait_a, wait_b) == (0, 0) and wait_c > 0
    assert raw.zrange(keys.host_inflight("h.example"), 0, -1) == ["t1", "t2"]
    assert store.start_polls([]) == []


def test_start_polls_reloads_a_script_the_server_lost(store: Store, raw: redis.Redis) -> None:
    raw.script_flush()  # as after a restart of Redis
    ((state, wait),) = store.start_polls([("a", slot("h.example", "t1"))])
    assert (state.name, wait) == ("a", 0)
    assert raw.zrange(keys.host_inflight("h.example"), 0, -1) == ["t1"]


def test_start_polls_that_fails_gives_back_the_slots_it_took(
    store: Store, raw: redis.Redis
) -> None:
    raw.set(keys.source("b"), "not a hash")  # this source's state cannot be read
    starts = [("a", slot("h.example", "t1")), ("b", slot("h.example", "t2"))]
    with pytest.raises(StorageError, match="reading source states of a and 1 more"):
        store.start_polls(starts)
    # No caller learns it holds a slot: none is left held.
    assert raw.zcard(keys.host_inflight("h.example")) == 0


def test_finish_polls_records_states_and_gives_back_slots_together(
    store: Store, raw: redis.Redis
) -> None:
    assert store.take_host_slots([slot("h.example", "t1"), slot("h.example", "t2")]) == [0, 0]
    later = T0 + timedelta(minutes=15)
    polls: list[tuple[StateWrite, HostSlot | None]] = [
        (("a", {"status": 304}, later), ("h.example", "t1")),
        (("b", {"status": 500, "failures": 1}, later), None),  # its slot went back before
    ]
    assert store.finish_polls(polls) == [None, None]
    a, b = store.source_states(["a", "b"])
    assert (a.status, a.next_due, b.status, b.failures) == (304, later, 500, 1)
    assert raw.zrange(keys.host_inflight("h.example"), 0, -1) == ["t2"]
    assert store.finish_polls([]) == []


def test_finish_polls_gives_back_the_slot_even_when_the_state_write_fails(
    store: Store, raw: redis.Redis
) -> None:
    assert store.take_host_slots([slot("h.example", "t1")]) == [0]
    raw.set(keys.source("a"), "not a hash")
    with pytest.raises(StorageError, match="saving a"):
        store.finish_polls([(("a", {"status": 304}, T0), ("h.example", "t1"))])
    # EXEC does not roll back: the slot went back; the caller must not give it back again.
    assert raw.zcard(keys.host_inflight("h.example")) == 0


# --- scheduling ------------------------------------------------------------------------------


def test_claim_due_takes_only_due_sources_and_leases_them(store: Store, raw: redis.Redis) -> None:
    store.sync_sources(["a", "b", "c"], T0)
    store.save_state("c", {"status": 200}, T0 + timedelta(hours=1))  # not due yet
    now = T0 + timedelta(seconds=1)
    lease = now + timedelta(minutes=10)

    claimed = store.claim_due(now, lease, 10)
    assert sorted(claimed) == ["a", "b"]
    for name in ("a", "b"):
        assert raw.zscore(keys.DUE, name) == pytest.approx(lease.timestamp(), abs=1e-5)
    assert raw.zscore(keys.DUE, "c") == pytest.approx((T0 + timedelta(hours=1)).timestamp())

    assert store.claim_due(now, lease, 10) == []  # leased: nobody else gets them
    # Once the lease runs out they are due again.
    after = lease + timedelta(seconds=1)
    assert sorted(store.claim_due(after, after + timedelta(minutes=10), 10)) == ["a", "b"]


def test_claim_due_respects_the_limit(store: Store, raw: redis.Redis) -> None:
    store.save_state("early", {}, T0 - timedelta(minutes=2))
    store.save_state("mid", {}, T0 - timedelta(minutes=1))
    store.save_state("late", {}, T0)
    lease = T0 + timedelta(minutes=5)
    assert store.claim_due(T0, lease, 0) == []
    assert store.claim_due(T0, lease, -1) == []
    assert raw.zcard(keys.DUE) == 3
    assert store.claim_due(T0, lease, 2) == ["early", "mid"]  # most overdue first
    assert store.claim_due(T0, lease, 2) == ["late"]
    assert store.claim_due(T0, lease, 2) == []


def test_sync_sources_adds_new_removes_gone_keeps_due_times(store: Store, raw: redis.Redis) -> None:
    store.sync_sources(["a", "b"], T0)
    assert raw.zrange(keys.DUE, 0, -1, withscores=True) == [
        ("a", T0.timestamp()),
        ("b", T0.timestamp()),
    ]
    a_due = T0 + timedelta(minutes=30)
    store.save_state("a", {"status": 200}, a_due)

    now = T0 + timedelta(minutes=1)
    store.sync_sources(["a", "c"], now)
    due = scores(raw, keys.DUE)
    assert due == {"a": pytest.approx(a_due.timestamp()), "c": now.timestamp()}

    store.sync_sources([], now)
    assert raw.zcard(keys.DUE) == 0


def test_reload_counter(store: Store) -> None:
    assert store.reload_version() == 0
    assert store.request_reload() == 1
    assert store.request_reload() == 2
    assert store.reload_version() == 2


# --- optimistic concurrency: all or nothing --------------------------------------------------


def snapshot(store: Store) -> dict[str, Any]:
    """Every key and its value, as bytes (stored entries are compressed)."""
    client: Any = store.binary
    out: dict[str, Any] = {}
    for key in sorted(k.decode() for k in client.keys("*")):
        kind = client.type(key)
        if kind == b"string":
            out[key] = client.get(key)
        elif kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = kind
    return out


def interleave(monkeypatch: pytest.MonkeyPatch, write: Any, times: int) -> list[int]:
    """Run `write` (a real Redis write by "another worker") after a save has read under WATCH
    and queued its writes, just before EXEC, the first `times` times."""
    real = store_entries._SavePlan.run
    calls = [0]

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] <= times:
            write()
        return result

    monkeypatch.setattr(store_entries._SavePlan, "run", run)
    return calls


def test_conflict_leaves_nothing_half_written(
    store: Store, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = make_entry("base", tags=("old",))
    store.save_poll("src", [base], {"status": 200, "entries": 1}, T0)
    before = snapshot(store)
    other = make_entry("b", source="elsewhere", content="<p>theirs</p>")

    # "Another worker" stores entry b between our read and our EXEC. Entry a comes first in
    # the batch and is free of conflict: it must not be written either, nor the retag of
    # `base`, nor the state, nor the due time.
    def other_worker() -> None:
        store.binary.set(keys.entry("b"), other.to_stored())

    calls = interleave(monkeypatch, other_worker, times=1)
    batch = [make_entry("a"), make_entry("b"), dataclasses.replace(base, tags=("new",))]
    with store.binary.pipeline(transaction=True) as pipe:
        store_entries._SavePlan(store, pipe, "src").run(
            batch, {"status": 201, "entries": 3}, T0 + timedelta(hours=1), None, None
        )
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert calls[0] == 1

    after = snapshot(store)
    assert after.pop(keys.entry("b")) == other.to_stored()
    assert after == before
    assert not raw.exists(keys.entry("a"))
    assert index_ids(raw, keys.index("tag", "old")) == ["base"]
    assert not raw.exists(keys.index("tag", "new"))
    assert store.source_states(["src"])[0].status == 200


def test_save_poll_retries_after_a_concurrent_identical_write(
    redis_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [make_entry("a"), make_entry("b", published=T0 + timedelta(minutes=1))]
    other = Store.from_url(redis_url)
    try:
        # Another worker polls the same feed and saves the same entries first.
        calls = interleave(
            monkeypatch, lambda: other.save_poll("src", entries, {"status": 200}, T0), 1
        )
        result = store.save_poll("src", entries, {"status": 200}, T0)
    finally:
        other.close()
    # ours, the other worker's (run inside ours), and our retry
    assert calls[0] == 3
    assert result == SaveResult(0, 0)  # nothing left for us to write
    assert ids(store.entries("all")) == ["b", "a"]
    assert store.source_states(["src"])[0].stored == 2  # counted once, not twice


def test_save_poll_gives_up_with_storage_error_when_always_conflicting(
    store: Store, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = [0]

    def keep_changing() -> None:
        counter[0] += 1
        raw.set(keys.alias("a"), f"elsewhere-{counter[0]}")

    calls = interleave(monkeypatch, keep_changing, times=10**6)
    with pytest.raises(StorageError, match="kept changing"):
        store.save_poll("src", [make_entry("a")], {"status": 200}, T0)
    assert calls[0] == MAX_ATTEMPTS
    assert not raw.exists(keys.entry("a"))
    assert not raw.exists(keys.source("src"))
    assert raw.zscore(keys.DUE, "src") is None


# --- Redis unreachable ------------------------------------------------------------------------


@pytest.fixture
def dead_store() -> Iterator[Store]:
    s = Store.from_url(f"redis://127.0.0.1:{free_port()}/0")
    yield s
    s.close()


def test_unreachable_redis_raises_storage_error(dead_store: Store) -> None:
    calls: list[Callable[[], object]] = [
        lambda: dead_store.save_poll("src", [make_entry("a")], {"status": 200}, T0),
        lambda: dead_store.save_state("src", {"status": 200}, T0),
        lambda: dead_store.previous_guids("src"),
        lambda: dead_store.take_host_slots([slot("h.example", "t")]),
        lambda: dead_store.start_polls([("src", slot("h.example", "t"))]),
        lambda: dead_store.finish_polls([(("src", {"status": 304}, T0), ("h.example", "t"))]),
        lambda: dead_store.release_host_slots([("h.example", "t")]),
        lambda: dead_store.entries("all"),
        lambda: dead_store.entry("a"),
        lambda: dead_store.count("tag", "t1"),
        lambda: dead_store.source_states(["src"]),
        lambda: dead_store.sync_sources(["a"], T0),
        lambda: dead_store.claim_due(T0, T0, 5),
        lambda: dead_store.reload_version(),
    ]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, redis.RedisError)
        assert isinstance(info.value.__cause__, redis.ConnectionError)
    assert dead_store.ping() is False


def test_ping_true_when_reachable(store: Store) -> None:
    assert store.ping() is True


def test_entries_are_stored_compressed_and_plain_json_still_reads(store: Store) -> None:
    import zstandard

    from aggregator.models import DICT_MARK, ZSTD_MARK

    e = make_entry("z", content="<p>" + "经济日报 " * 200 + "</p>")
    store.save_poll("src", [e], STATE, None)
    blob = store.binary.get(keys.entry("z"))
    assert isinstance(blob, bytes) and blob[:1] == DICT_MARK  # the codec: tests/test_stored.py
    store.binary.set(keys.entry("z"), e.to_json().encode())  # as written before compression
    assert store.entry("z") == e
    as_zstd = ZSTD_MARK + zstandard.ZstdCompressor(level=1).compress(e.to_json_bytes())
    store.binary.set(keys.entry("z"), as_zstd)  # as written before the dictionary
    assert store.entry("z") == e


def test_finish_polls_sends_one_due_write_and_one_release_per_host(
    store: Store, raw: redis.Redis
) -> None:
    """redis-py's work is per command: a batch of polls writes every due time in one ZADD and
    gives back each host's slots in one ZREM, with the same effect as one of each per poll."""
    later = T0 + timedelta(minutes=15)
    slots = [("one.example", "t1"), ("two.example", "t2"), ("one.example", "t3")]
    for host, token in slots:
        assert store.take_host_slot(host, token, T0.timestamp(), 60, 5, 60) == 0
    polls: list[tuple[StateWrite, HostSlot | None]] = [
        (("a", {"status": 304}, later), slots[0]),
        (("b", {"status": 304}, later + timedelta(seconds=1)), slots[1]),
        (("c", {"status": 304}, None), slots[2]),
        (("a", {"status": 200}, later + timedelta(seconds=2)), None),  # its last poll's wins
    ]
    raw.config_resetstat()
    store.finish_polls(polls)
    stats = raw.info("commandstats")
    assert stats["cmdstat_zadd"]["calls"] == 1
    assert stats["cmdstat_zrem"]["calls"] == 2
    assert raw.zscore(keys.DUE, "a") == pytest.approx((later + timedelta(seconds=2)).timestamp())
    assert raw.zscore(keys.DUE, "b") == pytest.approx((later + timedelta(seconds=1)).timestamp())
    assert raw.zscore(keys.DUE, "c") is None
    assert [s.status for s in store.source_states(["a", "b", "c"])] == [200, 304, 304]
    for host in ("one.example", "two.example"):
        assert raw.zcard(keys.ONE_NODE.host_inflight(host)) == 0


def test_start_polls_runs_the_slot_script_once_per_host(store: Store, raw: redis.Redis) -> None:
    """A batch's requests to one host go to the script together, still counted in order."""
    hosts = ["h.example", "o.example", "h.example", "h.example", "o.example"]
    starts = [(f"s{i}", slot(host, f"t{i}")) for i, host in enumerate(hosts)]
    raw.config_resetstat()
    waits = [wait for _, wait in store.start_polls(starts)]
    assert raw.info("commandstats")["cmdstat_evalsha"]["calls"] == 2
    assert waits[:2] == [0, 0] and waits[2] == 0 and waits[3] > 0 and waits[4] == 0
    assert raw.zrange(keys.host_inflight("h.example"), 0, -1) == ["t0", "t2"]
    assert raw.zrange(keys.host_inflight("o.example"), 0, -1) == ["t1", "t4"]
