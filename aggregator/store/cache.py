"""Rendered feeds cached in Redis, each beside the version of the index it was rendered
from (one slot on a cluster: the feed's tag), so one round trip tells whether it is current,
and on one node brings the entries to render it from when it is not.
"""

from __future__ import annotations

import dataclasses
import functools

from redis.commands.core import Script

from aggregator import keys
from aggregator.store.base import DAY, StoreBase, _storage_errors


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered feed as cached: the index version it reflects, and the response parts
    (`body` is None on a miss)."""

    version: int
    body: bytes | None = None
    etag: str = ""
    last_modified: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class FeedRead:
    """What `read_feed` found: the index's version and, unless that is the version the
    reader holds already, the rendering cached for it, or failing that the page's entries as
    stored (`Entry.to_stored`, newest first) to render it from."""

    version: int
    cached: Rendered | None = None
    entries: list[bytes] | None = None


# One round trip for what serving a feed asks of its slot: the index's version; when the
# reader holds another, the rendering cached for it (only when made from that version, which
# is asked first: a stale one is as big as a fresh one, hundreds of KB for a long feed, and
# copying it into the script took longer than the rest of a miss's reads); failing that, the
# page's entry ids. All three keys carry the feed's tag: one slot on a cluster. On one node
# every key shares `{agg}`, and the script reads the entries too (ARGV[4], their keys'
# prefix): a cluster keeps them in their own slots, read after.
_READ = """
local version = redis.call('GET', KEYS[1]) or '0'
if version == ARGV[1] then
  return {version}
end
if redis.call('HGET', KEYS[2], 'version') == version then
  local found = redis.call('HMGET', KEYS[2], 'body', 'etag', 'last_modified')
  if found[1] then
    return {version, found[1], found[2], found[3]}
  end
end
local ids = redis.call('ZREVRANGE', KEYS[3], ARGV[2], ARGV[3])
if ARGV[4] == '' or #ids == 0 then
  return {version, ids}
end
local names = {}
for i, id in ipairs(ids) do
  names[i] = ARGV[4] .. id
end
return {version, ids, redis.call('MGET', unpack(names))}
"""


class Cache(StoreBase):
    @functools.cached_property
    def _read(self) -> Script:
        return self.binary.register_script(_READ)

    def read_feed(
        self,
        kind: keys.Kind,
        name: str,
        variant: str,
        held: int | None,
        offset: int,
        limit: int,
    ) -> FeedRead:
        """The index's version; unless it is `held`, the rendering `variant` cached for it,
        else up to `limit` entries from `offset` as stored. One round trip on one node; on
        a cluster one more when entries are read (`mget_nonatomic`)."""
        index = self.keys.index(kind, name)
        names = [self.keys.version(index), self.keys.rendered(kind, name, variant), index]
        prefix = "" if self.clustered else self.keys.entry("")
        args = ["" if held is None else held, offset, offset + limit - 1, prefix]
        with _storage_errors(f"reading the {kind} {name}"):
            found = self._riding(lambda: self._read(keys=names, args=args))
            version = int(found[0])
            if len(found) == 1:
                return FeedRead(version)
            if len(found) == 4:
                cached = Rendered(version, found[1], found[2].decode(), found[3].decode())
                return FeedRead(version, cached)
            if len(found) == 3:
                raw = found[2]
            else:
                raw = self._mget([self.keys.entry(i.decode()) for i in found[1]])
        return FeedRead(version, entries=[r for r in raw if r])

    def cache_render(
        self, kind: keys.Kind, name: str, variant: str, rendered: Rendered, ttl: int = DAY
    ) -> None:
        key = self.keys.rendered(kind, name, variant)
        with _storage_errors(f"caching the {kind} {name}"):
            pipe = self.binary.pipeline(transaction=True)
            pipe.hset(
                key,
                mapping={
                    "version": rendered.version,
                    "body": rendered.body or b"",
                    "etag": rendered.etag,
                    "last_modified": rendered.last_modified,
                },
            )
            pipe.expire(key, ttl)
            pipe.execute()
