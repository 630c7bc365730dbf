"""The store's ground floor: connections, Redis failures as StorageError, and the loop that
runs a write until nobody else changed what it read.

On one Redis a write is one MULTI/EXEC transaction guarded by WATCH on the keys it read (if
another worker wrote them meanwhile, the plan is made again). On Redis Cluster the same plan
is applied by `staged.Staged`, slot group by slot group, in an order that a crash at any step
leaves repairable, with compare-and-set where WATCH would have guarded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

import hiredis
import redis
from redis._parsers.encoders import Encoder
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import PythonRespSerializer
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from aggregator import keys, metrics, redis_urls
from aggregator.errors import StorageError
from aggregator.store.staged import Staged

T = TypeVar("T")
MAX_ATTEMPTS = 32  # a save that keeps conflicting: retried with backoff, about 5 s at most
DAY = 86400
# A cluster client rides through a failover (a replica promoted within a few seconds): it
# retries a command on connection errors and MOVED a few times with a growing wait, asking for
# the slot map again; reads of many slots and staged writes (pipelines, whose own refresh may
# lag) are tried again from the start with the slot map asked for anew, for up to
# FAILOVER_SECONDS.
CLUSTER_RETRIES = 4
FAILOVER_SECONDS = 20.0
_NODE_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    RedisClusterException,
)


@dataclasses.dataclass(frozen=True, slots=True)
class Lifetimes:
    """How long tombstones live (seconds) after their source last listed the entry: they
    outlast retention's max_age, so an entry cut by max_entries stays out while it is listed.
    Dedup claims live as long as the entry they point at: retention deletes them with it."""

    tombstone: int = 97 * DAY

    @classmethod
    def for_max_age(cls, max_age: float) -> Lifetimes:
        return cls(tombstone=max(int(max_age) + 7 * DAY, 30 * DAY))


@dataclasses.dataclass(frozen=True, slots=True)
class Address:
    """Where a store is: enough to connect to it again from another process."""

    url: str
    lifetimes: Lifetimes


_OPEN: dict[Address, Any] = {}  # `StoreBase.at`: one store per address in each process


def connect(url: str, *, text: bool = True) -> redis.Redis | RedisCluster:
    """A client for `url`; `redis+cluster://host:port` selects Redis Cluster. `text` clients
    answer str; the others bytes (stored entries are compressed)."""
    if redis_urls.is_cluster(url):
        # A cluster client asks for the slot map as it is made, of the URL's nodes in turn:
        # none reachable, that is a StorageError like any other Redis failure.
        with _storage_errors(f"connecting to the cluster at {url}"):
            nodes = redis_urls.cluster(url)
            return RedisCluster.from_url(
                nodes.first,
                startup_nodes=[ClusterNode(h, p) for h, p in nodes.others],  # type: ignore[no-untyped-call]
                decode_responses=text,
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1), CLUSTER_RETRIES),
            )
    return redis.Redis.from_url(
        url, decode_responses=text, health_check_interval=30, command_packer=_PACKER
    )


class _Packer:
    """Commands into RESP by hiredis alone. redis-py's own packer (HiredisRespSerializer)
    first encodes every argument in Python, which was half of what a worker's poll cost in
    redis-py (about 60 of 130 µs); hiredis packs str (UTF-8, as redis-py does), int and float
    (written as `repr` writes them, as redis-py does) and memoryview itself. What it refuses
    (bytearray; bool, None or another type) goes to redis-py's packer, which encodes it or
    raises its own DataError, as before. So does a command with a bytes argument over
    `_LARGE` (a rendered feed written back): hiredis copies it into one new buffer, and then
    into a Python bytes object, where redis-py's packer hands the argument to the socket as it
    is (half a millisecond against a few µs for 278 KB, the buffers' fresh pages included)."""

    def __init__(self, fallback: PythonRespSerializer) -> None:
        self._fallback = fallback

    def pack(self, *args: Any) -> list[bytes]:
        for arg in args:
            if type(arg) is bytes and len(arg) > _LARGE:
                return list(self._fallback.pack(*args))  # type: ignore[no-untyped-call]
        name = args[0]
        # A command named in two words ("SCRIPT LOAD") is sent as two arguments.
        if isinstance(name, str):
            if " " in name:
                args = (*name.split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return list(self._fallback.pack(*args))  # type: ignore[no-untyped-call]


_LARGE = 1 << 16

# redis-py's defaults: its buffer cutoff, and UTF-8 (strict) for every client here.
_ENCODER = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]
_PACKER = _Packer(PythonRespSerializer(6000, _ENCODER.encode))


def _text(value: bytes | str | None) -> str | None:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (redis.RedisError, RedisClusterException) as err:
        # RedisClusterException (no slot map, no node reachable) is not a RedisError.
        raise StorageError(f"Redis failed while {action}: {err}") from err


def _some(names: Iterable[str]) -> str:
    """Names for an error message: `a`, or `a and 4 more` for a batch."""
    first, *rest = names
    return f"{first} and {len(rest)} more" if rest else first


def _ts(value: datetime) -> float:
    return round(value.timestamp(), 6)


def _dt(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


class StoreBase:
    """`client` answers str; `binary` (same server) answers bytes, for the compressed entries
    and the transactions that read them. `keys` is the key map for this deployment."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        binary: redis.Redis | RedisCluster,
        lifetimes: Lifetimes | None = None,
    ) -> None:
        self.client = client
        self.binary = binary
        self.lifetimes = lifetimes or Lifetimes()
        self.address: Address | None = None  # set by `from_url`
        self.clustered = isinstance(client, RedisCluster)
        self.keys = keys.CLUSTER if self.clustered else keys.ONE_NODE

    @classmethod
    def from_url(cls, url: str, lifetimes: Lifetimes | None = None) -> Self:
        store = cls(connect(url), connect(url, text=False), lifetimes)
        store.address = Address(url, store.lifetimes)
        return store

    @classmethod
    def at(cls, address: Address) -> Self:
        """This process's store at `address`, connected once (for pool workers: a Store's
        connections cannot cross a process boundary, its address can)."""
        found = _OPEN.get(address)
        if found is None:
            found = _OPEN[address] = cls.from_url(address.url, address.lifetimes)
        return found

    def forget(self) -> None:
        """Drop this process's connections after a call was cut short (a time bound may have
        stopped it between a command and its reply): the next use reconnects."""
        if self.address is not None:
            _OPEN.pop(self.address, None)
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        self.client.close()
        self.binary.close()

    def ping(self) -> bool:
        """Whether Redis answers; on a cluster, whether every slot is served."""
        if isinstance(self.client, RedisCluster):
            return _serves_every_slot(self.client)
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def _transaction(self, action: str, attempt: Any) -> Any:
        """Run `attempt(pipe)` (WATCH, read, MULTI, queue writes) until EXEC succeeds; on a
        cluster, until `Staged` applied it with nothing it read changed meanwhile (a staged
        write cut short by a failover is made again: each of its steps is idempotent)."""
        with _storage_errors(action):
            for tries in range(MAX_ATTEMPTS):
                pipe = Staged(self.binary) if self.clustered else self.binary.pipeline(True)
                with pipe:
                    try:
                        return self._riding(functools.partial(_apply, attempt, pipe))
                    except redis.WatchError:
                        metrics.conflicted()
                        # Many sources saving one story at once keep conflicting if they
                        # retry in step: each waits a random while, longer every time.
                        time.sleep(random.uniform(0, min(0.25, 0.002 * 2**tries)))
        raise StorageError(f"{action}: the data kept changing under us; try again")

    def _riding(self, call: Callable[[], T]) -> T:
        """`call()`; on a cluster, made again while a failover lasts (connection errors,
        CLUSTERDOWN), with the slot map asked for anew each time, for up to
        FAILOVER_SECONDS."""
        if not isinstance(self.binary, RedisCluster):
            return call()
        deadline = time.monotonic() + FAILOVER_SECONDS
        wait = 0.1
        while True:
            try:
                return call()
            except _NODE_ERRORS:
                if time.monotonic() > deadline:
                    raise
                metrics.FAILOVER.inc()
            time.sleep(wait)
            wait = min(wait * 2, 1.0)
            for client in (self.client, self.binary):
                with contextlib.suppress(*_NODE_ERRORS):
                    client.nodes_manager.initialize()  # type: ignore[union-attr]

    def _batch(self, *, binary: bool = False) -> Any:
        """A pipeline of writes to many slots: one MULTI/EXEC on one node; on a cluster, one
        pipeline per node (each command atomic on its own key)."""
        client = self.binary if binary else self.client
        return client.pipeline(transaction=not self.clustered)

    def _mget(self, names: Sequence[str], *, binary: bool = True) -> list[Any]:
        """MGET; on a cluster, one per slot, sent together (`mget_nonatomic`)."""
        if not names:
            return []
        client: Any = self.binary if binary else self.client
        if self.clustered:
            return self._riding(lambda: list(client.mget_nonatomic(list(names))))
        return list(client.mget(list(names)))


def _apply(attempt: Any, pipe: Any) -> Any:
    """One attempt of a transaction: plan on `pipe`, then apply what it queued."""
    pipe.reset()  # what an attempt cut short queued
    result = attempt(pipe)
    pipe.execute()
    return result


def _serves_every_slot(client: RedisCluster) -> bool:
    """Asked of the first node that answers at once (no retries: a readiness check must not
    wait out a failover): the cluster's state is ok and no master holding slots is judged
    failing, not even by this node alone (`fail?`) in the seconds before a replica is
    promoted."""
    for node in client.get_nodes():  # type: ignore[no-untyped-call]
        probe = redis.Redis(
            host=node.host,
            port=node.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),  # redis-py's default retries would wait seconds
        )
        try:
            info = _text(probe.execute_command("CLUSTER", "INFO")) or ""  # type: ignore[no-untyped-call]
            nodes = _text(probe.execute_command("CLUSTER", "NODES")) or ""  # type: ignore[no-untyped-call]
        except redis.RedisError:
            continue
        finally:
            probe.close()
        if "cluster_state:ok" not in info:
            return False
        for line in nodes.splitlines():
            fields = line.split()
            flags = fields[2] if len(fields) > 2 else ""
            if "master" in flags and "fail" in flags and len(fields) > 8:
                return False
        return True
    return False
