"""Rendered feeds cached in Redis, each beside the version of the index it was rendered
from (one slot on a cluster: the feed's tag), so one round trip tells whether it is current.
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


# The rendering only when it was made from the index's current version: a stale one is as
# big as a fresh one (hundreds of KB for a long feed), and on a miss it was read only to be
# dropped. Both keys carry the feed's tag: one slot on a cluster.
_CURRENT = """
local version = redis.call('GET', KEYS[1]) or '0'
local found = redis.call('HMGET', KEYS[2], 'version', 'body', 'etag', 'last_modified')
if found[1] == version then
  return {version, found[2], found[3], found[4]}
end
return {version}
"""


class Cache(StoreBase):
    @functools.cached_property
    def _current(self) -> Script:
        return self.binary.register_script(_CURRENT)

    def cached_render(self, kind: keys.Kind, name: str, variant: str) -> Rendered:
        """The index's current version and, when one was stored for exactly that version,
        the rendered feed. One round trip."""
        index = self.keys.index(kind, name)
        names = [self.keys.version(index), self.keys.rendered(kind, name, variant)]
        with _storage_errors(f"reading the cached {kind} {name}"):
            found = self._riding(lambda: self._current(keys=names))
        version = int(found[0])
        if len(found) == 4 and found[1] is not None:
            return Rendered(version, found[1], found[2].decode(), found[3].decode())
        return Rendered(version)

    def index_version(self, kind: keys.Kind, name: str = "") -> int:
        """The index's version: it grows with every change of the index."""
        with _storage_errors(f"reading the version of {kind} {name}"):
            return int(self.client.get(self.keys.version(self.keys.index(kind, name))) or 0)

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
