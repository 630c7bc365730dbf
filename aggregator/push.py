"""Push: WebSub's requests and deliveries, run by `aggregator worker` (never by the web process).

As a subscriber, for every enabled source with `websub: true`: discover its hub and topic (a GET
of the source, WebSub §4), ask the hub with a new callback token and secret (§5.1), renew at
80 % of the granted lease, unsubscribe when the source goes or stops wanting push, and save
the distributions the web process took (§7) through the path a poll's documents take. While a
subscription is live the source is polled as a safety net only, at a long interval; a poll
that finds entries push never delivered marks it broken, back to the normal interval.

As a publisher, with `settings.websub_hub`: every tick, the versions of every tag, category and
`all` are compared with those last pinged (atomically: of many workers, one takes each change);
each changed feed's URLs, one per format, are pinged (`hub.mode=publish`, `hub.url`) once per
change after a short window that gathers the changes of one poll, retried with backoff while
the hub fails.

The decisions are aggregator/websub.py's; this module makes the requests and keeps the records.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeAlias, TypeVar

from aggregator import keys, websub
from aggregator import store as store_module
from aggregator.bounded import ParsePool
from aggregator.config import Config, Source
from aggregator.errors import AggregatorError, FetchError, SourceError
from aggregator.fetch import Fetcher
from aggregator.models import FetchResult
from aggregator.store import Address, Distribution, Store
from aggregator.update import Clock, Outcome, Stored, discovery, store_distributed, utcnow
from aggregator.websub import Subscription

log = logging.getLogger(__name__)

T = TypeVar("T")
# The subscriptions to look after, sorted, and each one's record ({} for none).
Records = tuple[list[str], list[dict[str, str]]]


@dataclass(frozen=True, slots=True)
class _Failed:
    """A read that raised, kept to be raised where its result is used."""

    error: Exception


Read: TypeAlias = T | _Failed  # a read's result, or its failure

LOCK_SECONDS = 120  # a worker's hold on one source's subscription while it asks the hub
DELIVERIES = 32  # distributions saved per tick
PINGS = 64  # pings sent per tick
PING_TRIES = 8  # a ping the hub keeps refusing is dropped after this many
PING_LEASE = 120.0
PING_WINDOW = 2.0  # seconds a change waits for the others of its poll before the ping


class Push:
    """One worker's WebSub duties; `tick` runs them once."""

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
        self.owner = uuid.uuid4().hex

    @functools.cached_property
    def _wanted(self) -> dict[str, Source]:
        """The enabled sources that want push, by name: made once, not on every tick from a
        thousand sources."""
        return {s.name: s for s in self.config.enabled_sources if s.websub}

    async def tick(self) -> None:
        """Save the distributions waiting, take the subscriptions' next steps. Failures are
        logged, never raised: the next tick tries again."""
        # The reads the steps start from (the distributions waiting, the subscriptions) in one
        # thread hop: a tick runs every second, and on a worker with nothing to push those
        # reads are all it does, each hop costing as much as its call.
        inbox, records = await asyncio.to_thread(self._reads)
        steps = (functools.partial(self.deliver, inbox), functools.partial(self.manage, records))
        for step in (*steps, self.publish):
            try:
                await step()
            except AggregatorError as err:
                log.error("websub: %s", err)
            except Exception:
                log.exception("websub step crashed")

    # --- distributions -----------------------------------------------------------------------

    def _reads(self) -> tuple[Read[list[Distribution]], Read[Records]]:
        """In a thread: `deliver`'s and `manage`'s reads, each its result or its failure
        (raised by its step, so that each step fails alone as before)."""
        return _read(self._inbox), _read(self._records)

    def _inbox(self) -> list[Distribution]:
        return store_module.take_distributions(self.store, DELIVERIES)

    def _records(self) -> Records:
        """Every subscription to look after (of the enabled sources that want push, and
        those Redis knows), sorted, and each one's record."""
        names = sorted(self._wanted.keys() | set(store_module.subscribed_names(self.store)))
        return names, store_module.subscriptions(self.store, names)

    async def deliver(self, inbox: Read[list[Distribution]]) -> int:
        """Save what hubs pushed (the web process checked the token and the signature, and
        took the bodies to Redis), as taken off the inbox (`inbox`). Returns how many were
        saved."""
        items = _result(inbox)
        saved = 0
        for item in items:
            try:
                source = self.config.source(item.source)
            except KeyError:
                continue  # removed from feeds.yaml since the hub sent it
            (raw,) = await asyncio.to_thread(store_module.subscriptions, self.store, [source.name])
            sub = Subscription.from_fields(raw)
            # Still the subscription the web process checked it against: never another's.
            if sub is None or sub.state != "live" or sub.token != item.token:
                continue
            if not (source.enabled and source.websub):
                continue
            try:
                stored = await self._pooled(
                    sub.topic,
                    store_distributed,
                    source,
                    item.body,
                    sub.topic,
                    item.content_type,
                    datetime.fromtimestamp(item.received, self.clock().tzinfo),
                    self.config.settings.retention.rule,
                )
            except SourceError as err:
                log.warning("websub %s: distribution not read: %s", source.name, err)
                continue
            saved += 1
            log.info(
                "websub %s: distribution of %d entries, %d new, %d updated",
                source.name,
                stored.entries,
                stored.new,
                stored.updated,
            )
            await self._change(source.name, _delivered(sub.token, item.received))
        return saved

    async def _pooled(self, url: str, fn: Callable[..., Stored], *args: Any) -> Stored:
        """`fn(store, *args)` where a poll's parsing runs (the parse pool's bounds)."""
        executor, address = self.executor, self.store.address
        target: Store | Address = self.store
        if isinstance(executor, ParsePool | ProcessPoolExecutor) and address is not None:
            target = address
        if isinstance(executor, ParsePool) and target is address:
            return await executor.run(url, fn, target, *args)
        if executor is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, fn, target, *args)
        return await asyncio.to_thread(fn, target, *args)

    async def _parsed(self, url: str, fn: Callable[..., T], *args: Any) -> T:
        executor = self.executor
        if isinstance(executor, ParsePool):
            return await executor.run(url, fn, *args)
        if executor is not None:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        return await asyncio.to_thread(fn, *args)

    # --- publishing ------------------------------------------------------------------------

    async def publish(self) -> int:
        """Queue a ping for each feed whose index changed since it was last pinged, and send
        the pings that are due. Returns how many reached the hub."""
        hub = self.config.settings.websub_hub
        public_url = self.config.settings.public_url
        if not hub or not public_url:
            return 0
        indexes: list[tuple[keys.Kind, str]] = [("all", "")]
        indexes += [("tag", t) for t in self.config.tag_names()]
        indexes += [("category", c) for c in self.config.category_names()]
        index_keys = {self.store.keys.index(kind, name): (kind, name) for kind, name in indexes}
        versions = await asyncio.to_thread(
            store_module.index_versions, self.store, list(index_keys)
        )
        current = {k: v for k, v in zip(index_keys, versions, strict=True) if v > 0}
        changed = await asyncio.to_thread(store_module.claim_changes, self.store, current)
        now = self.clock()
        urls = [u for key in changed for u in websub.feed_urls(public_url, *index_keys[key])]
        if urls:
            when = now + timedelta(seconds=PING_WINDOW)
            await asyncio.to_thread(store_module.queue_pings, self.store, urls, when)
        lease = now + timedelta(seconds=PING_LEASE)
        due = await asyncio.to_thread(store_module.claim_pings, self.store, now, lease, PINGS)
        sent = await asyncio.gather(*(self._ping(hub, url, lease) for url in due))
        return sum(sent)

    async def _ping(self, hub: str, url: str, lease: datetime) -> bool:
        form = {"hub.mode": "publish", "hub.url": url}
        try:
            status = await self.fetcher.post_form(hub, form)
            reason = "" if 200 <= status < 300 else f"{hub} answered HTTP {status}"
        except FetchError as err:
            reason = str(err)
        if not reason:
            await asyncio.to_thread(store_module.ping_done, self.store, url, lease, None)
            return True
        failures = await asyncio.to_thread(store_module.ping_failures, self.store, url) + 1
        if failures >= PING_TRIES:
            log.error("websub: gave up pinging %s for %s: %s", hub, url, reason)
            retry = None
        else:
            log.warning("websub: ping of %s for %s failed: %s", hub, url, reason)
            retry = self.clock() + timedelta(seconds=websub.retry_delay(failures))
        await asyncio.to_thread(store_module.ping_done, self.store, url, lease, retry)
        return False

    # --- subscriptions ----------------------------------------------------------------------

    async def manage(self, records: Read[Records]) -> None:
        """Take each subscription's next step (websub.plan) from `records`, each source's
        under a lock so that of several workers one asks its hub."""
        now = self.clock().timestamp()
        wanted = self._wanted
        names, fields = _result(records)
        public_url = self.config.settings.public_url
        steps = []
        for name, raw in zip(names, fields, strict=True):
            sub = Subscription.from_fields(raw)
            action = websub.plan(sub, name in wanted, public_url, now)
            if action != "none":
                steps.append(self._step(name, wanted.get(name), sub, action))
        await asyncio.gather(*steps)

    async def _step(
        self, name: str, source: Source | None, sub: Subscription | None, action: str
    ) -> None:
        locked = await asyncio.to_thread(
            store_module.lock_subscription, self.store, name, self.owner, LOCK_SECONDS
        )
        if not locked:
            return
        try:
            if action == "subscribe" and source is not None:
                await self._subscribe(source, sub)
            elif action == "renew" and sub is not None:
                await self._renew(name, sub)
            elif action == "unsubscribe" and sub is not None:
                await self._unsubscribe(name, sub)
            elif action == "forget":
                await asyncio.to_thread(store_module.forget_subscription, self.store, name)
            elif action == "catch_up" and sub is not None:
                # Push brings what is published from now on; one poll brings what came
                # before. Only from the poll after it does a new entry mean push failed.
                await self._move_due(name, self.clock(), later=False)
                asked = self.clock().timestamp()
                await self._change(name, _if_same(sub, lambda s: replace(s, catchup_at=asked)))
            elif action == "fall_back" and sub is not None:
                interval = self.config.interval(source) if source is not None else 0.0
                when = self.clock() + timedelta(seconds=interval)
                await self._move_due(name, when, later=False)
                await self._change(name, _if_same(sub, lambda s: replace(s, stretched=False)))
        except AggregatorError as err:
            log.error("websub %s: %s", name, err)
        except Exception:
            log.exception("websub %s: %s crashed", name, action)
        finally:
            await asyncio.to_thread(store_module.unlock_subscription, self.store, name, self.owner)

    async def _subscribe(self, source: Source, sub: Subscription | None) -> None:
        now = self.clock().timestamp()
        stretched = sub.stretched if sub is not None else False
        try:
            fetched = await self.fetcher.fetch(source.url)
            assert isinstance(fetched, FetchResult)  # no validators sent: never a 304
            hubs, self_url = await self._parsed(
                fetched.final_url,
                discovery,
                fetched.body,
                fetched.final_url,
                fetched.content_type,
            )
        except SourceError as err:
            base = replace(sub or Subscription(), state="failed", stretched=stretched)
            record = websub.failed(base, f"discovery failed: {err}", now)
            await self._change(source.name, _if_same(sub, lambda _: record))
            return
        found = websub.discover(fetched.links, hubs, self_url, fetched.final_url)
        if found is None:
            reason = f"{source.url} advertises no WebSub hub"
            await self._change(
                source.name, _if_same(sub, lambda _: websub.without_hub(reason, now, stretched))
            )
            return
        public_url = self.config.settings.public_url or ""
        record = websub.requested(sub, found.hub, found.topic, public_url, source.name, now)
        # Saved before asking: a hub may verify before it answers (§5.1.2).
        if await self._change(source.name, _if_same(sub, lambda _: record)) is None:
            return
        await self._ask(source.name, record, "subscribe")
        log.info("websub %s: asked %s for %s", source.name, found.hub, found.topic)

    async def _renew(self, name: str, sub: Subscription) -> None:
        record = websub.renewing(sub, self.clock().timestamp())
        if await self._change(name, _if_same(sub, lambda _: record)) is None:
            return
        await self._ask(name, record, "subscribe")

    async def _unsubscribe(self, name: str, sub: Subscription) -> None:
        record = websub.leaving(sub, self.clock().timestamp())
        if await self._change(name, _if_same(sub, lambda _: record)) is None:
            return
        await self._ask(name, record, "unsubscribe")

    async def _ask(self, name: str, record: Subscription, mode: str) -> None:
        """Send a (un)subscription request (§5.1); on failure, record why (unless the hub
        has verified meanwhile)."""
        form = {"hub.mode": mode, "hub.topic": record.topic, "hub.callback": record.callback}
        if mode == "subscribe":
            form["hub.lease_seconds"] = str(websub.LEASE_REQUESTED)
            form["hub.secret"] = record.secret
        try:
            status = await self.fetcher.post_form(record.hub, form)
            reason = "" if 200 <= status < 300 else f"{record.hub} answered HTTP {status}"
        except FetchError as err:
            reason = str(err)
        if not reason:
            return
        log.warning("websub %s: %s request failed: %s", name, mode, reason)
        if mode == "unsubscribe":
            return  # our callback answers 410 from now on, and the lease runs out (§7)
        now = self.clock().timestamp()
        token = record.token
        await self._change(
            name,
            lambda s: (
                websub.failed(s, reason, now)
                if s.token == token and s.pending == "subscribe"
                else None
            ),
        )

    async def after_poll(self, source: Source, outcome: Outcome) -> None:
        """Once a source with a live subscription was polled: the first poll that started
        after it went live (the catch-up) arms the safety net; later ones that find new
        entries mean push failed (broken: its normal interval again), else the next poll is
        put off to the safety net's interval."""
        (raw,) = await asyncio.to_thread(store_module.subscriptions, self.store, [source.name])
        sub = Subscription.from_fields(raw)
        if sub is None or sub.state != "live" or not sub.catchup_at or not outcome.ok:
            return
        now = self.clock()
        if not sub.armed and now.timestamp() - outcome.seconds < sub.catchup_at:
            return  # under way before the catch-up was asked for: it proves nothing
        interval = self.config.interval(source)
        if sub.armed and outcome.new > 0:
            log.warning(
                "websub %s: a safety-net poll found %d entries %s never pushed",
                source.name,
                outcome.new,
                sub.hub,
            )
            record = replace(websub.broken(sub, now.timestamp()), stretched=False)
            if await self._change(source.name, _if_same(sub, lambda _: record)) is not None:
                await self._move_due(source.name, now + timedelta(seconds=interval), later=False)
            return
        record = replace(sub, armed=True, stretched=True)
        if await self._change(source.name, _if_same(sub, lambda _: record)) is not None:
            safety = websub.safety_interval(interval)
            await self._move_due(source.name, now + timedelta(seconds=safety), later=True)

    async def _move_due(self, name: str, when: datetime, *, later: bool) -> None:
        await asyncio.to_thread(store_module.move_due, self.store, name, when, later=later)

    async def _change(
        self, name: str, change: Callable[[Subscription], Subscription | None]
    ) -> dict[str, str] | None:
        """Save `change(current record)` unless it is None, atomically."""

        def fields(current: Mapping[str, str]) -> dict[str, str] | None:
            changed = change(Subscription.from_fields(current) or Subscription())
            return changed.to_fields() if changed is not None else None

        return await asyncio.to_thread(store_module.change_subscription, self.store, name, fields)


def _read(call: Callable[[], T]) -> Read[T]:
    try:
        return call()
    except Exception as err:
        return _Failed(err)


def _result(read: Read[T]) -> T:
    if isinstance(read, _Failed):
        raise read.error
    return read


def _delivered(token: str, when: float) -> Callable[[Subscription], Subscription | None]:
    def apply(current: Subscription) -> Subscription | None:
        if current.token != token or current.state != "live":
            return None
        return replace(current, delivered=when)

    return apply


def _if_same(
    expected: Subscription | None, change: Callable[[Subscription], Subscription]
) -> Callable[[Subscription], Subscription | None]:
    """`change`, only if the record is still the one the step was planned on."""

    def apply(current: Subscription) -> Subscription | None:
        if current != (expected or Subscription()):
            return None
        return change(current)

    return apply
