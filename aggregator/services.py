"""Opening the store a configuration points at: its Redis URL, or the embedded Redis.

Shared by the command line and the web app so both find the same Redis the same way.
"""

from __future__ import annotations

from aggregator.config import Config
from aggregator.embedded import EmbeddedRedis
from aggregator.store import Lifetimes, Store


def open_store(config: Config) -> tuple[Store, EmbeddedRedis | None]:
    """The store, and the embedded server when one was started or joined (stop it when done:
    it only stops a server it started itself)."""
    lifetimes = Lifetimes.for_max_age(config.settings.retention.max_age)
    if config.settings.redis_url:
        return Store.from_url(config.settings.redis_url, lifetimes), None
    embedded = EmbeddedRedis(config.data_dir)
    url = embedded.start()
    return Store.from_url(url, lifetimes), embedded
