"""Rendered feeds cached in Redis, each beside the version of the index it was rendered
from (one slot on a cluster: the feed's tag), so one round trip tells whether it is current.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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


class Cache(StoreBase):
    def cached_render(self, kind: keys.Kind, name: str, variant: str) -> Rendered:
        """The index's current version and, when one was stored for exactly that version,
        the rendered feed. One round trip."""

        def read() -> list[Any]:
            pipe = self.binary.pipeline(transaction=False)
            pipe.get(self.keys.version(self.keys.index(kind, name)))
            pipe.hgetall(self.keys.rendered(kind, name, variant))
            return list(pipe.execute())

        with _storage_errors(f"reading the cached {kind} {name}"):
            version, cached = self._riding(read)
        version = int(version or 0)
        if cached and int(cached.get(b"version", -1)) == version:
            return Rendered(
                version,
                cached[b"body"],
                cached[b"etag"].decode(),
                cached[b"last_modified"].decode(),
            )
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
