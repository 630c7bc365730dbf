"""Writes on Redis Cluster, where one poll's keys span slots and MULTI/EXEC cannot cover them.

`Staged` stands in for a WATCH/MULTI pipeline, so that one plan (entries.py, retention.py)
serves both deployments. Before `multi()` its reads go straight to the cluster (MGET as
`mget_nonatomic`) and it remembers what it read of entries and dedup claims; after, it records
the writes, and `execute()` applies them in this order, each step one pipeline per node and
each write idempotent, so that a crash at any step leaves a state the next poll repairs:

1. what the source lists gains ids (its `:listed`, `:entries`): a crash after leaves ids the
   next poll finds again, or ages out as no longer listed;
2. ids leave the indexes they no longer belong in;
3. dedup claims: a new claim is SET NX with a short TTL (in flight), a claim whose entry is
   gone is taken over only once it has no TTL; a claim taken meanwhile is a conflict, and the
   plan is made again, finding the other source's entry to merge into;
4. entries, each compare-and-set against what was read (another writer changed it: a
   conflict, as WATCH would have raised);
5. the claims lose their TTL (the entries they point at exist now); aliases, tombstones and
   deleted entries;
6. indexes gain ids, by a script that bumps the feed's version only when the index changed,
   so a reader sees an entry only once it is whole; a plan on a cluster re-adds every entry
   its document lists, which repairs an index a crash left short;
7. the source's state (validators last of all: a crash before makes the next poll read the
   document again), its guid memory, the ids it let go, and WebSub records: one single-slot
   transaction per slot;
8. the rest: the schedule, host slots, the fleet's queues.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import WatchError

from aggregator import keys

# Lua's unpack() gives at most about 8,000 values at once ("too many results to unpack"): a
# document listing thousands of entries has its index writes sent in parts of this many.
UNPACK_AT_ONCE = 1000
IN_FLIGHT_MS = 30_000  # a claim whose entry is not written yet; a crashed writer's lapses

# Each returns 1 when done, 0 on a conflict.
_ENTRY_CAS = """
local v = redis.call('GET', KEYS[1])
if v then
  if redis.sha1hex(v) ~= ARGV[1] then return 0 end
elseif ARGV[1] ~= '' then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
# A claim already ours and still in flight (a crashed write of this entry took it) gets a new
# in-flight time: else it could lapse between this write's claim and its settling, and another
# source claim the story meanwhile and store a second copy.
_CLAIM_NEW = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('PTTL', KEYS[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
_CLAIM_TAKEOVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('PTTL', KEYS[1]) ~= -1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
_CLAIM_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('PTTL', KEYS[1]) > 0 then
  redis.call('DEL', KEYS[1])
end
return 1
"""
_CLAIM_SETTLE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PERSIST', KEYS[1]) end
return 1
"""
# ZADD that answers which members it added (ARGV score, member, ...).
_LIST_ADD = """
local added = {}
for i = 1, #ARGV, 2 do
  if redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    table.insert(added, ARGV[i + 1])
  end
end
return added
"""
# Index changes with the version bump they cause: KEYS index, version; ARGV score, id, ...
_INDEX_ADD = """
local n = redis.call('ZADD', KEYS[1], 'CH', unpack(ARGV))
if n > 0 then redis.call('INCR', KEYS[2]) end
return 1
"""
_INDEX_REMOVE = """
if redis.call('ZREM', KEYS[1], unpack(ARGV)) > 0 then redis.call('INCR', KEYS[2]) end
return 1
"""

Write = tuple[str, tuple[Any, ...], dict[str, Any]]  # (command, args, kwargs)
Script = tuple[str, str, list[Any]]  # (script, its one key, its args)


def _text(value: Any) -> str | None:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class Staged:
    """A WATCH/MULTI pipeline's stand-in on a cluster client (see the module's notes)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.read: dict[str, Any] = {}  # entry and claim keys → the value read (None: absent)
        self.writes: list[Write] = []
        self.queued = False
        self.unindexed: list[Write] = []  # step 2's writes, whose version bumps are done
        self.claimed: list[tuple[str, str]] = []  # step 3's claims (key, owner), settled in 5
        self.listed_new: list[tuple[str, list[Any]]] = []  # step 1's additions, by key

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    def reset(self) -> None:
        self.read.clear()
        self.writes.clear()
        self.queued = False
        self.unindexed = []
        self.claimed = []
        self.listed_new = []

    def watch(self, *names: str) -> None:
        """Nothing to do: what is read is checked when written."""

    def multi(self) -> None:
        self.queued = True

    def mget(self, names: list[str]) -> list[Any]:
        values = list(self.client.mget_nonatomic(names)) if names else []
        for name, value in zip(names, values, strict=True):
            if keys.kind_of(name) in ("entry", "canon"):
                self.read[name] = value
        return values

    def __getattr__(self, command: str) -> Any:
        if not self.queued:
            return getattr(self.client, command)  # a read: answered now

        def record(*args: Any, **kwargs: Any) -> None:
            if command == "mset":
                for name, value in args[0].items():
                    self.writes.append(("set", (name, value), {}))
            elif command == "delete":
                self.writes.extend(("delete", (name,), {}) for name in args)
            else:
                self.writes.append((command, args, kwargs))

        return record

    # --- applying ---------------------------------------------------------------------------

    # The steps of `execute`, in order: each applies the writes `_step` gives it.
    STEPS = (
        "_listing",
        "_unindex",
        "_claims",
        "_entries",
        "_settle",
        "_index",
        "_per_slot",
        "_plain",
    )

    def execute(self) -> None:
        steps: list[list[Write]] = [[] for _ in self.STEPS]
        for write in self.writes:
            steps[_step(write)].append(write)
        self.unindexed = steps[1]
        try:
            for name, writes in zip(self.STEPS, steps, strict=True):
                getattr(self, name)(writes)
        except WatchError:
            # A conflict: the plan is made again. What this attempt alone added to the
            # source's listing goes (the next plan may merge those entries elsewhere).
            self._plain([("zrem", (key, *ids), {}) for key, ids in self.listed_new if ids])
            raise

    def _plain(self, writes: list[Write]) -> list[Any]:
        """The writes in one pipeline (one round trip per node), in order."""
        if not writes:
            return []
        pipe = self.client.pipeline(transaction=False)
        for command, args, kwargs in writes:
            getattr(pipe, command)(*args, **kwargs)
        return list(pipe.execute())

    def _checked(self, calls: list[Script]) -> None:
        """Run one-key scripts in one pipeline; any 0 reply is a conflict."""
        if not calls:
            return
        pipe = self.client.pipeline(transaction=False)
        for script, name, args in calls:
            pipe.execute_command("EVAL", script, 1, name, *args)
        if not all(int(r) for r in pipe.execute()):
            raise WatchError("a key this write read was changed meanwhile")

    def _listing(self, writes: list[Write]) -> None:
        """ZADDs to a source's `:listed`/`:entries`, remembering which ids each one added."""
        calls: list[Write] = []
        for command, args, kwargs in writes:
            if command != "zadd" or kwargs:
                raise ValueError(f"a listing write must be a plain ZADD, not {command} {kwargs}")
            members: list[Any] = []
            for member, score in args[1].items():
                members += [score, member]
            calls.append(("execute_command", ("EVAL", _LIST_ADD, 1, args[0], *members), {}))
        for (_, args, _), added in zip(writes, self._plain(calls), strict=True):
            self.listed_new.append((args[0], [_text(a) for a in added]))

    def _unindex(self, writes: list[Write]) -> None:
        self._indexes(writes, _INDEX_REMOVE)

    def _index(self, writes: list[Write]) -> None:
        self._indexes(writes, _INDEX_ADD, self.unindexed)

    def _claims(self, writes: list[Write]) -> None:
        calls: list[Script] = []
        claimed = []
        for _, (name, owner), _ in writes:
            owner = str(_text(owner))
            before = _text(self.read.get(name))
            claimed.append((name, owner))
            if before is None:
                calls.append((_CLAIM_NEW, name, [owner, IN_FLIGHT_MS]))
            elif before != owner:
                calls.append((_CLAIM_TAKEOVER, name, [before, owner, IN_FLIGHT_MS]))
        try:
            self._checked(calls)
        except WatchError:
            # Give back the claims taken in flight: two sources each holding a claim the
            # other wants would otherwise wait for the TTL.
            self._plain(
                [("execute_command", ("EVAL", _CLAIM_RELEASE, 1, n, o), {}) for n, o in claimed]
            )
            raise
        self.claimed = claimed

    def _entries(self, writes: list[Write]) -> None:
        calls: list[Script] = []
        plain: list[Write] = []
        for write in writes:
            name, value = write[1]
            if name not in self.read:
                plain.append(write)
                continue
            before = self.read[name]
            expected = hashlib.sha1(before).hexdigest() if before is not None else ""
            calls.append((_ENTRY_CAS, name, [expected, value]))
        self._checked(calls)
        self._plain(plain)

    def _settle(self, writes: list[Write]) -> None:
        settle: list[Write] = [
            ("execute_command", ("EVAL", _CLAIM_SETTLE, 1, name, owner), {})
            for name, owner in self.claimed
        ]
        self._plain([*settle, *writes])

    def _indexes(self, writes: list[Write], script: str, dropped: Sequence[Write] = ()) -> None:
        """Index changes as scripts that bump the index's version when it changed; a
        version bump the plan asked for of an index changed here is the script's."""
        changed = {args[0] for command, args, _ in [*writes, *dropped] if command != "incr"}
        calls: list[Write] = []
        for command, args, _ in writes:
            name = args[0]
            if command == "incr":
                if keys.Layout.version(name) not in {keys.Layout.version(c) for c in changed}:
                    calls.append(("incr", (name,), {}))
                continue
            members: list[Any] = []
            if command == "zadd":
                mapping: Mapping[Any, float] = args[1]
                for member, score in mapping.items():
                    members += [score, member]
            else:
                members = list(args[1:])
            step = UNPACK_AT_ONCE - UNPACK_AT_ONCE % (2 if command == "zadd" else 1)
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                version = keys.Layout.version(name)
                calls.append(("execute_command", ("EVAL", script, 2, name, version, *chunk), {}))
        self._plain(calls)

    def _per_slot(self, writes: list[Write]) -> None:
        """One transaction per slot: the writes of one source (or WebSub record) together."""
        groups: dict[int, list[Write]] = {}
        for write in writes:
            groups.setdefault(self.client.keyslot(write[1][0]), []).append(write)
        for group in groups.values():
            pipe = self.client.pipeline(transaction=True)
            for command, args, kwargs in group:
                getattr(pipe, command)(*args, **kwargs)
            pipe.execute()


def _step(write: Write) -> int:
    """Which of `execute`'s steps (0-based) a write belongs to, by its command and key."""
    command, args, _ = write
    kind = keys.kind_of(args[0])
    if kind == "source":
        return 0 if command == "zadd" else 6
    if kind == "websub":
        return 6
    if kind in ("index", "version"):
        return 1 if command == "zrem" else 5
    if kind == "canon":
        return 2 if command == "set" else 4
    if kind == "entry":
        return 3 if command == "set" else 4
    if kind in ("alias", "gone"):
        return 4
    return 7
