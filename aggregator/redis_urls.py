"""Redis URLs as `settings.redis_url` and `AGGREGATOR_REDIS_URL` take them: which kind of
deployment a URL names, and a cluster URL's nodes. Pure: no I/O.

`redis+cluster://host:port` names a Redis Cluster by any one node; the client learns the others
from it. A node that is down when a process starts cannot teach it anything, so the URL may
name several, tried in turn: `redis+cluster://10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379`.
Credentials and options (`redis+cluster://user:secret@a:6379,b:6379/?ssl_cert_reqs=none`) apply
to every node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CLUSTER_SCHEME = "redis+cluster://"
DEFAULT_PORT = 6379
_SCHEMES = re.compile(r"^(redis|rediss|unix|redis\+cluster)://")
_CLUSTER = re.compile(r"^(?:(?P<user>[^@/?]*)@)?(?P<hosts>[^/?]*)(?P<rest>.*)$", re.S)


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A cluster URL taken apart: the first node as a `redis://` URL (credentials and options
    kept), and the other nodes named."""

    first: str
    others: tuple[tuple[str, int], ...]


def check(url: str) -> str:
    """`url` if it is a Redis URL we can use, else ValueError saying why."""
    if not _SCHEMES.match(url):
        raise ValueError("not a Redis URL (redis://, rediss://, unix:// or redis+cluster://)")
    if is_cluster(url):
        cluster(url)
    return url


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


def cluster(url: str) -> ClusterURL:
    """The nodes of a `redis+cluster://` URL; ValueError when one is not `host[:port]`."""
    parts = _CLUSTER.match(url.removeprefix(CLUSTER_SCHEME))
    assert parts is not None  # the pattern matches any text
    nodes = [_node(text) for text in parts["hosts"].split(",")]
    user = f"{parts['user']}@" if parts["user"] is not None else ""
    host, port = nodes[0]
    first = f"redis://{user}{_netloc(host, port)}{parts['rest']}"
    return ClusterURL(first, tuple(nodes[1:]))


def _node(text: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` → (host, port)."""
    found = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+)(?::(\d{1,5}))?", text.strip())
    if found is None or (found[2] is not None and not 0 < int(found[2]) < 65536):
        raise ValueError(f"a cluster node must be host or host:port, not {text!r}")
    return found[1].strip("[]"), int(found[2] or DEFAULT_PORT)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
