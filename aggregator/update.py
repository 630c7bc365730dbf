"""The per-source update: fetch → parse → normalize → store, for one source or many at once.

This is where the stages meet; each stays ignorant of the others. A source's failure is
recorded on that source (status, reason, failures in a row, next due time with backoff) and
never stops the others. Parsing is CPU-bound pure Python, so it can run in a process pool
handed in by the caller; the fetches are asynchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from aggregator import identity, metrics, schedule
from aggregator.batch import Batcher
from aggregator.bounded import ParsePool
from aggregator.config import Config, Source
from aggregator.errors import ParseError, SourceError, StorageError
from aggregator.models import (
    LISTING,
    Entry,
    FetchResult,
    NotModified,
    RetentionRule,
    SourceState,
    Validators,
)
from aggregator.store import (
    Address,
    HostSlot,
    HostSlotRequest,
    Retained,
    SaveResult,
    StateWrite,
    Store,
)

if TYPE_CHECKING:
    # Only polling processes fetch: parse-pool workers, which import this module for
    # `store_changed`, never load the HTTP client (its runtime's threads would count against
    # their address-space bound).
    from aggregator.fetch import Fetcher

log = logging.getLogger(__name__)

REDIS_THREADS = 32
MAX_POLLS = 256  # polls under way at once in one process (`poll_many`)
# Bytes of fetched documents that may wait for the parse stage in one `poll_many` (see
# `_Turns`): a poll whose document does not fit waits, holding its turn, for room.
PARSE_WAITING_BYTES = 64 << 20

Clock = Callable[[], datetime]
GONE = datetime(9999, 1, 1, tzinfo=UTC)  # the due time of a source that answered 410
NO_VALIDATORS = Validators()
# What a parse-pool worker runs (`store_changed`): its pool's forkserver loads these once.
PARSE_MODULES = ("aggregator.update", "aggregator.parse", "aggregator.normalize")


def use_enough_threads() -> None:
    """Redis calls run in the loop's default thread pool (`asyncio.to_thread`); its default
    size, cpu count + 4, would queue a thousand concurrent polls' round trips behind six
    threads. Waiting on Redis releases the GIL, so more threads mean more calls in flight."""
    loop = asyncio.get_running_loop()
    if not getattr(loop, "_aggregator_threads", False):
        loop.set_default_executor(ThreadPoolExecutor(max_workers=REDIS_THREADS))
        loop._aggregator_threads = True  # type: ignore[attr-defined]


def _hash(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=65536)
def _host(url: str) -> str:
    """The host a URL's requests count against (cached: every poll asks, and urlsplit's own
    cache holds only the last few URLs)."""
    return (urlsplit(url).hostname or "").lower()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one poll of one source did; `ok` is False when it failed."""

    source: str
    ok: bool
    status: int = 0
    entries: int = 0
    new: int = 0  # added, and seen by subscribers now (not cut by retention)
    updated: int = 0
    not_modified: bool = False
    error: str = ""
    seconds: float = 0.0
    merged: int = 0  # copies of stories another source had brought: filed with those
    filtered: int = 0  # refused by the source's include/exclude
    cut: int = 0  # left out by retention's max_entries


@dataclass(frozen=True, slots=True)
class Processed:
    """One document's entries, and what it taught us about the source's guids."""

    entries: list[Entry]
    id_mode: str
    guid_problem: str | None
    guids: dict[str, str]  # link → guid, remembered for the next poll
    ttl: float | None = None  # RSS <ttl>, in seconds
    future_dated: int = 0  # entries dated far ahead of the fetch, clamped to it
    refused: tuple[str, ...] = ()  # ids of the entries the source's filters refused

    @property
    def count(self) -> int:
        """Entries in the document: those kept and those the filters refused."""
        return len(self.entries) + len(self.refused)


def process(
    source: Source,
    body: bytes,
    url: str,
    content_type: str,
    fetched_at: datetime,
    id_mode: str = identity.GUID,
    previous_guids: Mapping[str, str] | None = None,
) -> Processed:
    """Parse and normalize one fetched document. Pure, and picklable for a process pool.
    A source whose guids turn out unusable switches to link identity, for good."""
    # Loaded here: only parse-pool workers parse (their forkserver preloads these), and a
    # polling process whose documents all answer 304 never needs them.
    from aggregator.normalize import future_dated, normalize
    from aggregator.parse import parse

    feed = parse(body, url, content_type)
    pairs = [(e.guid, e.link) for e in feed.entries]
    problem = identity.guid_problem(pairs, previous_guids or {})
    if problem is not None:
        id_mode = identity.LINK
    refused: list[str] = []
    entries = normalize(
        source,
        feed,
        feed_url=url,
        fetched_at=fetched_at,
        source_title=source.title or "",
        id_mode=id_mode,
        refused=refused,
    )
    guids = identity.guids_by_link(pairs)
    return Processed(
        entries,
        id_mode,
        problem,
        guids,
        feed.ttl,
        future_dated(feed, fetched_at),
        tuple(refused),
    )


@dataclass(frozen=True, slots=True)
class Changed:
    """A document that changed since the last poll, and what the poll knows besides."""

    source: Source
    fetched: FetchResult
    fetched_at: datetime
    id_mode: str  # the source's identity mode so far
    state: dict[str, str | int | float]  # what the poll records, but for the entries
    interval: float  # the source's configured interval, in seconds
    retention: RetentionRule
    listed_at: float | None = None  # when the previous document was last confirmed
    refilter: bool = False  # the filing changed: take back what the filters refuse now


@dataclass(frozen=True, slots=True)
class Stored:
    """What storing a changed document did."""

    entries: int
    new: int
    updated: int
    merged: int = 0
    filtered: int = 0
    cut: int = 0
    # Measured where the work ran (a parse-pool worker) and counted by the polling process,
    # whose metrics are the ones served: the time, not counting the wait for a free worker.
    seconds: float = 0.0
    retries: int = 0  # transactions made again: what they read changed meanwhile


def store_changed(store: Store | Address, changed: Changed) -> Stored:
    """Parse, normalize and save one changed document, then keep its category to retention.
    Run in a parse-pool worker (given the store's address), this is all the work a poll does
    with entries: the polling process only fetches and sends the bytes here. A source whose
    guids turn out unusable switches to link identity, for good."""
    target = store if isinstance(store, Store) else Store.at(store)
    source, fetched, now = changed.source, changed.fetched, changed.fetched_at
    started, conflicts = time.perf_counter(), metrics.conflicts()
    try:
        processed = process(
            source,
            fetched.body,
            fetched.final_url,
            fetched.content_type,
            now,
            changed.id_mode,
            target.previous_guids(source.name),
        )
        if changed.refilter:
            from aggregator.normalize import refused_by_filters

            target.drop_entries(
                source.name, refused_by_filters(source, target.source_entries(source.name))
            )
        state = {
            **changed.state,
            "entries": processed.count,
            "id_mode": processed.id_mode,
            "future_dated": processed.future_dated,
            "listing": LISTING,
            "filing": source.filing_key,
        }
        if processed.guid_problem:
            state["id_note"] = f"ids from links: {processed.guid_problem}"
        interval = schedule.polite_interval(changed.interval, fetched.max_age, processed.ttl)
        result = target.save_poll(
            source.name,
            processed.entries,
            state,
            schedule.next_due(now, interval),
            guids=processed.guids,
            listed_at=changed.listed_at,
        )
        retained = target.enforce_retention(
            source.category_name, changed.retention, now, source=source.name
        )
    except BaseException:
        if target is not store:
            target.forget()  # a bound may have cut a Redis reply short: reconnect next time
        raise
    # In this process's own registry too: counted again only from another process.
    retries = metrics.conflicts() - conflicts if target is not store else 0
    done = _stored(processed, result, retained)
    return dataclasses.replace(done, seconds=time.perf_counter() - started, retries=retries)


def _stored(processed: Processed, result: SaveResult, retained: Retained) -> Stored:
    """What a saved document did, as subscribers see it: the document's entries that
    max_entries cut at once are not new, they are cut."""
    cut = set(retained.cut)
    listed = {e.id for e in processed.entries} | set(result.new_ids)
    return Stored(
        entries=processed.count,
        new=len(set(result.new_ids) - cut),
        updated=result.updated,
        merged=result.merged,
        filtered=len(processed.refused),
        cut=result.cut + len(listed & cut),
    )


@dataclass(eq=False, slots=True)
class _Slot:
    """A poll's request slot of one host (settings.per_host, counted in Redis across workers)
    and this process's gate for that host, held from before the slot is asked for until it
    has been given back (`Updater._give_back`): once, however the poll ends."""

    host: str
    gate: asyncio.Semaphore  # acquired before this object is made
    # 128 random bits (uuid4 has 122) without making a UUID object: that showed in the
    # profile of a warm round.
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    taken: bool = False  # Redis counts the slot against the host
    open: bool = True  # not given back yet: the gate is held


class _Budget:
    """Bytes that may be taken at once, handed out first come first served. One take larger
    than the whole budget still goes, alone, so that no document waits forever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    async def take(self, size: int) -> None:
        if not self._waiting and self._fits(size):
            self.used += size
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((size, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.give(size)  # granted as the waiter was cancelled: pass it on
            else:
                self._waiting.remove((size, granted))
                self._grant()  # it may have been first in line, holding up those behind it
            raise

    def give(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting:
            first, granted = self._waiting[0]
            if self._fits(first):
                self._waiting.popleft()
                self.used += first
                granted.set_result(None)
            else:
                break


class _Turns:
    """`poll_many`'s bounds: polls under way at once, and bytes of fetched documents waiting
    for (or in) the parse stage. A poll whose document goes to the parse stage gives up its
    turn once the document has room there: held while it waits for a busy parse pool, turns
    would all end up with changed documents, and the polls that need no parse (304s, most
    of a cycle) would start one at a time as documents are parsed, each then paying a Redis
    batch of its own instead of sharing one with hundreds."""

    def __init__(self, polls: int, parse_bytes: int = PARSE_WAITING_BYTES) -> None:
        self.polls = asyncio.Semaphore(polls)
        self.parsing = _Budget(parse_bytes)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[_Turn]:
        await self.polls.acquire()
        turn = _Turn(self)
        try:
            yield turn
        finally:
            turn.leave()


@dataclass(eq=False, slots=True)
class _Turn:
    """One poll's turn among `_Turns.polls`, given back once: when the poll ends, or when it
    hands its document to the parse stage (`parse`)."""

    turns: _Turns
    held: bool = True

    def leave(self) -> None:
        if self.held:
            self.held = False
            self.turns.polls.release()

    @contextlib.asynccontextmanager
    async def parse(self, size: int) -> AsyncIterator[None]:
        """Wait for `size` bytes of room in the parse stage, then give up the turn; the room
        is given back when the block ends."""
        await self.turns.parsing.take(size)
        try:
            self.leave()
            yield
        finally:
            self.turns.parsing.give(size)


class Updater:
    def __init__(
        self,
        config: Config,
        store: Store,
        fetcher: Fetcher,
        *,
        executor: Executor | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.config = config
        self.store = store
        self.fetcher = fetcher
        self.executor = executor
        self.clock = clock
        # This process's share of each host's slots: only as many polls as a host may have
        # under way ask Redis for a slot; the rest wait here, costing no Redis calls.
        self._host_gates: dict[str, asyncio.Semaphore] = {}
        # The host each source's last poll here fetched from: where the next one takes its
        # slot before it reads the source's state (see `_start`).
        self._fetch_hosts: dict[str, str] = {}
        # The small Redis calls of concurrent polls, each kind sent together (group commit):
        # one thread hop and one round trip per batch instead of per poll. A poll that gets a
        # 304 makes two: `_start_polls` and `_finish_polls`; the others are for the rest.
        self._start_polls: Batcher[tuple[str, HostSlotRequest], tuple[SourceState, float]] = (
            Batcher(store.start_polls)
        )
        self._finish_polls: Batcher[tuple[StateWrite, HostSlot | None], None] = Batcher(
            store.finish_polls
        )
        self._take_slots: Batcher[HostSlotRequest, float] = Batcher(store.take_host_slots)
        self._release_slots: Batcher[HostSlot, None] = Batcher(store.release_host_slots)

    async def poll(self, source: Source) -> Outcome:
        """Poll one source now and record the result. Never raises for the source's own faults;
        a StorageError (Redis gone) does propagate: nothing could be recorded."""
        return await self._poll(source, None)

    async def _poll(self, source: Source, turn: _Turn | None) -> Outcome:
        """`poll`, within `poll_many`'s `turn` (None: alone)."""
        started = time.perf_counter()
        previous, slot = await self._start(source)
        now = self.clock()
        interval = self.config.interval(source)
        url = previous.fetch_url(source.url)
        state: dict[str, str | int | float] = {"url": url, "last_poll": now.timestamp()}

        def outcome(ok: bool, status: int, **values: Any) -> Outcome:
            seconds = time.perf_counter() - started
            return metrics.polled(Outcome(source.name, ok, status, seconds=seconds, **values))

        # A document read under an earlier version, or under another filing (filters, tags,
        # category, title), is read whole again: what it lists must be recorded, its entries
        # filed anew, what the filters refuse taken back.
        filing = source.filing_key
        whole = previous.listing != LISTING or previous.filing != filing
        try:
            with metrics.FETCH_SECONDS.time():
                validators = NO_VALIDATORS if whole else previous.validators
                fetched = await self.fetcher.fetch(url, validators)
            # The server's new validators are kept only once this answer has been read whole:
            # after a parse failure the next poll must fetch the document again, not get a 304.
            succeeded: dict[str, str | int | float] = {
                "etag": fetched.validators.etag,
                "last_modified": fetched.validators.last_modified,
                "last_error": "",
                "failures": 0,
                "gone": 0,
                "last_success": now.timestamp(),
            }
            if fetched.moved_to:
                state.update(url=fetched.moved_to, moved_to=fetched.moved_to, moved_from=source.url)
            elif url != previous.moved_to:
                state.update(moved_to="", moved_from="")  # feeds.yaml names a new URL
            unchanged = isinstance(fetched, NotModified) or (
                not whole
                and not fetched.validators.etag
                and not fetched.validators.last_modified
                and _hash(fetched.body) == previous.body_hash
            )
            if unchanged:
                # RFC 9110 §15.4.5: a 304 costs no parse and no write but the state's; a body
                # equal to the last one from a server without validators is treated alike.
                state.update(succeeded)
                state["status"] = 304 if isinstance(fetched, NotModified) else fetched.status
                due = schedule.next_due(now, schedule.polite_interval(interval, fetched.max_age))
                await self._give_back(slot, (source.name, state, due))
                if previous.age_check is not None and now.timestamp() >= previous.age_check:
                    # An entry it stopped listing has come of age: the document did not
                    # change, but retention has work (a 304 lists only what it listed).
                    await asyncio.to_thread(self._retain, source, now)
                return outcome(
                    True, int(state["status"]), entries=previous.entries, not_modified=True
                )
            assert isinstance(fetched, FetchResult)
            await self._give_back(slot)  # a slot is never held while a document is parsed
            changed = Changed(
                source,
                fetched,
                now,
                previous.id_mode,
                {
                    **state,
                    **succeeded,
                    "status": fetched.status,
                    "final_url": fetched.final_url,
                    "body_hash": _hash(fetched.body),
                },
                interval,
                self.config.settings.retention.rule,
                listed_at=previous.last_success.timestamp() if previous.last_success else None,
                refilter=previous.filing != filing,
            )
            if turn is None:
                stored = await self._store_changed(changed)
            else:
                async with turn.parse(len(fetched.body)):
                    stored = await self._store_changed(changed)
            metrics.stored(stored.seconds, stored.retries)
        except SourceError as err:
            return await self._failed(source, err, previous.failures + 1, now, state, slot, outcome)
        finally:
            await self._give_back(slot)  # unless it was: a poll that raised gives it back here
        return outcome(
            True,
            fetched.status,
            entries=stored.entries,
            new=stored.new,
            updated=stored.updated,
            merged=stored.merged,
            filtered=stored.filtered,
            cut=stored.cut,
        )

    def _retain(self, source: Source, now: datetime) -> None:
        rule = self.config.settings.retention.rule
        self.store.enforce_retention(source.category_name, rule, now, source=source.name)

    async def _failed(
        self,
        source: Source,
        err: SourceError,
        failures: int,
        now: datetime,
        state: dict[str, str | int | float],
        slot: _Slot,
        outcome: Callable[..., Outcome],
    ) -> Outcome:
        status = getattr(err, "status", None) or 0
        state.update(status=status, last_error=str(err), failures=failures)
        if status == 410:
            # RFC 9110 §15.5.11: gone for good. Stop polling on schedule and say so;
            # `aggregator poll NAME` still tries it, and a success revives it.
            state.update(gone=1, last_error=f"{err} (no longer polled: the server says gone)")
            due = GONE
        else:
            due = schedule.next_due(
                now,
                self.config.interval(source),
                failures,
                retry_after=getattr(err, "retry_after", None),
            )
        await self._give_back(slot, (source.name, state, due))
        return outcome(False, status, error=str(err))

    async def _start(self, source: Source) -> tuple[SourceState, _Slot]:
        """The source's state, and a request slot of the host its poll fetches from: one
        batched call for both. Which URL a poll fetches is in the state (a remembered
        permanent redirect), so the slot is taken for the host of the last poll here, else of
        the configured URL; when the state names another (rare: a new redirect, or the first
        poll here of a moved source), that slot goes back unused and the right one is taken."""
        slot = await self._enter(self._fetch_hosts.get(source.name) or _host(source.url))
        try:
            previous, wait = await self._start_polls((source.name, self._slot_request(slot)))
            slot.taken = wait <= 0
            host = self._fetch_hosts[source.name] = _host(previous.fetch_url(source.url))
            if host != slot.host:
                await self._give_back(slot, started=False)
                slot = await self._enter(host)
                wait = await self._take(slot)
            while wait > 0:
                await asyncio.sleep(min(wait, 5.0))
                wait = await self._take(slot)
        except BaseException:
            await self._give_back(slot)
            raise
        return previous, slot

    async def _enter(self, host: str) -> _Slot:
        """Wait for this process's share of `host`'s slots (settings.per_host): only as many
        polls as the host may have under way ask Redis for a slot."""
        gate = self._host_gates.get(host)
        if gate is None:
            gate = self._host_gates[host] = asyncio.Semaphore(
                self.config.settings.per_host.concurrency
            )
        await gate.acquire()
        return _Slot(host, gate)

    def _slot_request(self, slot: _Slot) -> HostSlotRequest:
        limits = self.config.settings.per_host
        lease = self.config.settings.timeout + 30
        return HostSlotRequest(
            slot.host, slot.token, time.time(), lease, limits.concurrency, limits.per_minute
        )

    async def _take(self, slot: _Slot) -> float:
        """Ask Redis for the slot: 0 when it is ours, else the seconds to wait."""
        wait = await self._take_slots(self._slot_request(slot))
        slot.taken = wait <= 0
        return wait

    async def _give_back(
        self, slot: _Slot, write: StateWrite | None = None, *, started: bool = True
    ) -> None:
        """Give `slot` back unless it already was, then release its gate; with `write`, in
        the transaction that records the poll (which is made either way). `started=False`:
        no request was made with it. Should Redis fail meanwhile, the slot lapses with its
        lease: it is never given back twice."""
        release = (slot.host, slot.token) if slot.open and slot.taken else None
        gate = slot.gate if slot.open else None
        slot.open = False
        try:
            if write is not None:
                await self._finish_polls((write, release))
            elif release is not None and started:
                await self._release_slots(release)
            elif release is not None:
                # Rare (see `_start`): not worth a batch of its own.
                await asyncio.to_thread(self.store.release_host_slots, [release], started=False)
        finally:
            if gate is not None:
                gate.release()

    async def _store_changed(self, changed: Changed) -> Stored:
        """`store_changed` in the parse pool (so that this process, which runs every poll's
        I/O, spends no CPU on entries), else in a thread."""
        url = changed.fetched.final_url
        executor, address = self.executor, self.store.address
        # A worker process reaches the store by its address; a thread shares this one.
        target: Store | Address = self.store
        if isinstance(executor, ParsePool | ProcessPoolExecutor) and address is not None:
            target = address
        try:
            if isinstance(executor, ParsePool) and target is address:
                # A parse past its time or memory bound, or one that killed its worker, comes
                # back as ParseError(final_url, reason): recorded like any parse failure.
                return await executor.run(url, store_changed, target, changed)
            if executor is not None:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(executor, store_changed, target, changed)
            return await asyncio.to_thread(store_changed, target, changed)
        except (SourceError, StorageError):
            # As raised, wherever that was: a Redis failure while saving is a StorageError
            # (store.py says so) that reaches the caller as one, never a parse error; a
            # worker's ParseError keeps its one-line text (SourceError.__reduce__).
            raise
        except Exception as err:
            if type(err).__module__.partition(".")[0] == "redis":
                # Redis failing in a way store.py does not wrap (redis-py's cluster errors
                # are no RedisError; a worker connects on first use): still Redis, so
                # retryable and the caller's to see, never this source's parse failure.
                raise StorageError(
                    f"Redis failed while saving {changed.source.name}: {err}"
                ) from err
            # A bug of ours met by this document: recorded on this source like any parse
            # failure (so one odd feed never stops the rest), and logged with its traceback.
            log.exception("parsing %s failed unexpectedly", url)
            raise ParseError(url, "internal error") from err

    async def poll_many(
        self,
        sources: Iterable[Source],
        on_done: Callable[[Outcome], Awaitable[None] | None] | None = None,
        *,
        max_polls: int = MAX_POLLS,
    ) -> list[Outcome]:
        """Poll every source concurrently, at most `max_polls` at once; outcomes in the order
        given. A StorageError propagates once every poll has ended (none is left running)."""

        use_enough_threads()
        turns = _Turns(max_polls, PARSE_WAITING_BYTES)

        async def one(source: Source) -> Outcome:
            async with turns.turn() as turn:
                outcome = await self._poll(source, turn)
            if on_done is not None:
                maybe = on_done(outcome)
                if maybe is not None:
                    await maybe
            return outcome

        ended = await asyncio.gather(*(one(s) for s in sources), return_exceptions=True)
        failures = [r for r in ended if isinstance(r, BaseException)]
        if failures:
            raise first_failure(failures)
        return cast(list[Outcome], ended)  # no failures: every one is an Outcome


def first_failure(failures: Sequence[BaseException]) -> BaseException:
    """Which of the failures of one cycle to raise: a cancellation or an exit first, then a
    StorageError (Redis is gone: what the caller can act on), else the first."""
    for failure in failures:
        if not isinstance(failure, Exception):
            return failure
    return next((f for f in failures if isinstance(f, StorageError)), failures[0])


# --- WebSub content distribution -------------------------------------------------------------


def discovery(body: bytes, url: str, content_type: str) -> tuple[tuple[str, ...], str]:
    """The WebSub hubs and self URL a document names (WebSub §4), read in the parse pool as
    a poll's documents are (pool workers import this module, not the push one)."""
    from aggregator.parse import parse, parse_xml_feed

    feed = parse(body, url, content_type)
    if not feed.format.startswith("json"):
        # feedparser_rs leaves out the href of a link to an IP address (127.0.0.1 among
        # them); feedparser reads links as written, and discovery is rare enough for it.
        feed = parse_xml_feed(body, url, content_type, fast=False)
    return feed.hubs, feed.self_url


def store_distributed(
    store: Store | Address,
    source: Source,
    body: bytes,
    url: str,
    content_type: str,
    received: datetime,
    retention: RetentionRule,
) -> Stored:
    """Save a document a hub pushed for `source` (WebSub §7) through the path a poll's takes:
    `process` (parse, identity, normalize, the source's filters), `Store.save_poll` (dedup,
    indexes, tombstones) and retention, run where a poll's are (the parse pool: the same
    bounds). `url` is the subscription's topic, what relative links resolve against.

    Only what it carries changes: the source's due time, validators, guid memory and the URL
    it polls stay the poll's, so a distribution never moves or redirects polling. Entries the
    last poll listed and this document does not are recorded as listed until now; the next
    poll lists them again."""
    target = store if isinstance(store, Store) else Store.at(store)
    try:
        (previous,) = target.source_states([source.name])
        processed = process(
            source,
            body,
            url,
            content_type,
            received,
            previous.id_mode,
            target.previous_guids(source.name),
        )
        state: dict[str, str | int | float] = {
            "last_push": received.timestamp(),
            "id_mode": processed.id_mode,
        }
        if processed.guid_problem:
            state["id_note"] = f"ids from links: {processed.guid_problem}"
        result = target.save_poll(
            source.name, processed.entries, state, None, listed_at=received.timestamp()
        )
        retained = target.enforce_retention(
            source.category_name, retention, received, source=source.name
        )
    except BaseException:
        if target is not store:
            target.forget()
        raise
    return _stored(processed, result, retained)
