"""settings.block_private_addresses, enforced by the Fetcher against real local servers.

Every test stays on this machine: the feed server is on 127.0.0.1, and a policy that allows
127.0.0.1 (and nothing else private) stands in for "a public host" where one is needed; names
are looked up through the Fetcher's resolver seam, never a DNS server."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from ipaddress import ip_address, ip_network

import pytest
import yaml

from aggregator.addresses import AddressPolicy, IPAddress
from aggregator.config import Settings
from aggregator.errors import FetchError
from aggregator.fetch import Fetcher, Resolver, resolve
from aggregator.models import FetchResult, NotModified
from aggregator.store import Store
from tests.conftest import FEEDS, ConfigWriter, FeedServer, Route
from tests.test_end_to_end import cli

SETTING = "(settings.block_private_addresses)"
ONLY_127_0_0_1 = AddressPolicy(allowed=(ip_network("127.0.0.1/32"),))


def guarded(**overrides: object) -> Settings:
    return Settings(**{"timeout": 3, "block_private_addresses": True, **overrides})


class Listener:
    """A TCP listener on `host` that counts the connections made to it and answers none."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.sock.settimeout(0.05)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def other_loopback() -> Iterator[Listener]:
    """A listener on 127.0.0.2: the private service a source or a redirect points at."""
    listener = Listener("127.0.0.2")
    yield listener
    listener.close()


class Names:
    """The resolver seam: a table of names, and the lookups asked of it."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = {name: [ip_address(a) for a in found] for name, found in table.items()}
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


def fetch(
    url: str,
    settings: Settings,
    policy: AddressPolicy | None = None,
    resolver: Resolver | None = None,
) -> FetchResult | NotModified:
    async def go() -> FetchResult | NotModified:
        extra = {"resolver": resolver} if resolver is not None else {}
        async with Fetcher(settings, addresses=policy, **extra) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(go())


def refused(url: str, policy: AddressPolicy | None = None, resolver: Resolver | None = None) -> str:
    with pytest.raises(FetchError) as info:
        fetch(url, guarded(), policy, resolver)
    err = info.value
    assert err.url == url and err.status is None
    return str(err)


# --- literal addresses -------------------------------------------------------------------------


def test_a_source_on_127_0_0_1_is_refused_and_never_asked(feed_server: FeedServer) -> None:
    url = feed_server.url("rss2.xml")
    assert refused(url) == f"fetch {url}: refused: 127.0.0.1 is a loopback address {SETTING}"
    assert feed_server.requests == []


def test_with_the_setting_off_nothing_changes(feed_server: FeedServer) -> None:
    names = Names({})  # asked nothing: the shared client resolves as it always did
    off = guarded(block_private_addresses=False)
    result = fetch(feed_server.url("rss2.xml"), off, AddressPolicy(), names)
    assert isinstance(result, FetchResult)
    assert result.body == (FEEDS / "rss2.xml").read_bytes()
    assert len(feed_server.requests) == 1
    result = fetch(f"http://localhost:{feed_server.port}/atom.xml", off, AddressPolicy(), names)
    assert isinstance(result, FetchResult) and len(feed_server.requests) == 2
    assert names.asked == []


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("127.0.0.2", "127.0.0.2 is a loopback address"),
        ("127.2", "127.0.0.2 is a loopback address"),  # how the HTTP client reads it
        ("0x7f.0.0.2", "127.0.0.2 is a loopback address"),
        ("2130706434", "127.0.0.2 is a loopback address"),
        ("[::ffff:127.0.0.2]", "[::ffff:7f00:2] leads to 127.0.0.2, a loopback address"),
    ],
)
def test_every_spelling_of_a_literal_address_is_refused(
    other_loopback: Listener, host: str, words: str
) -> None:
    url = f"http://{host}:{other_loopback.port}/feed.xml"
    assert refused(url, ONLY_127_0_0_1).endswith(f": refused: {words} {SETTING}")
    assert other_loopback.connections == 0


def test_an_allowed_literal_address_is_fetched(feed_server: FeedServer) -> None:
    result = fetch(feed_server.url("atom.xml"), guarded(), ONLY_127_0_0_1)
    assert isinstance(result, FetchResult)
    assert result.body == (FEEDS / "atom.xml").read_bytes()


# --- redirects ---------------------------------------------------------------------------------


def test_a_redirect_to_a_private_address_is_refused(
    feed_server: FeedServer, other_loopback: Listener
) -> None:
    inside = f"http://127.0.0.2:{other_loopback.port}/admin"
    feed_server.routes["/moved"] = Route(status=302, headers={"Location": inside})
    url = feed_server.url("moved")
    assert refused(url, ONLY_127_0_0_1) == (
        f"fetch {url}: refused: 127.0.0.2 is a loopback address {SETTING}"
    )
    assert [r.path for r in feed_server.requests] == ["/moved"]
    assert other_loopback.connections == 0


def test_a_redirect_to_a_name_that_resolves_inside_is_refused(
    feed_server: FeedServer, other_loopback: Listener
) -> None:
    names = Names({"feeds.test": ["127.0.0.1"], "intranet.test": ["127.0.0.2"]})
    feed_server.routes["/moved"] = Route(
        status=301, headers={"Location": f"http://intranet.test:{other_loopback.port}/"}
    )
    url = f"http://feeds.test:{feed_server.port}/moved"
    assert refused(url, ONLY_127_0_0_1, names) == (
        f"fetch {url}: refused: intranet.test resolves to 127.0.0.2,"
        f" which is a loopback address {SETTING}"
    )
    assert names.asked == ["feeds.test", "intranet.test"]
    assert [r.path for r in feed_server.requests] == ["/moved"]
    assert other_loopback.connections == 0


# --- names -------------------------------------------------------------------------------------


def test_a_name_is_resolved_once_and_the_connection_pinned_to_that_address(
    feed_server: FeedServer,
) -> None:
    # feeds.test resolves nowhere but through the seam (.test is reserved, RFC 6761): had
    # the HTTP client looked the name up again, as a rebinding attack would need, the
    # fetch would fail instead of reaching the address checked.
    names = Names({"feeds.test": ["127.0.0.1"]})
    url = f"http://feeds.test:{feed_server.port}/rss2.xml"
    result = fetch(url, guarded(), ONLY_127_0_0_1, names)
    assert isinstance(result, FetchResult)
    assert result.body == (FEEDS / "rss2.xml").read_bytes()
    assert names.asked == ["feeds.test"]
    assert feed_server.requests[-1].headers["Host"] == f"feeds.test:{feed_server.port}"


def test_a_name_with_one_private_address_among_others_is_refused(
    feed_server: FeedServer,
) -> None:
    names = Names({"mixed.test": ["127.0.0.1", "10.0.0.5"]})
    url = f"http://mixed.test:{feed_server.port}/rss2.xml"
    assert refused(url, ONLY_127_0_0_1, names).endswith(
        f"refused: mixed.test resolves to 10.0.0.5, which is a private address {SETTING}"
    )
    assert feed_server.requests == []


@pytest.mark.parametrize("host", ["localhost", "LocalHost.", "feeds.localhost"])
def test_localhost_is_refused_without_a_lookup(feed_server: FeedServer, host: str) -> None:
    names = Names({})
    url = f"http://{host}:{feed_server.port}/rss2.xml"
    message = refused(url, ONLY_127_0_0_1, names)
    assert message.endswith(f"names this machine {SETTING}")
    assert names.asked == [] and feed_server.requests == []


def test_a_name_that_does_not_resolve() -> None:
    names = Names({})
    url = "http://nonexistent.invalid/feed.xml"
    assert refused(url, ONLY_127_0_0_1, names) == (
        f"fetch {url}: DNS lookup failed for nonexistent.invalid"
    )


def test_the_system_resolver() -> None:
    # localhost, from the hosts file: no DNS server is asked.
    found = asyncio.run(resolve("localhost", 80))
    assert found and all(a.is_loopback for a in found)
    assert len(found) == len(set(found))


# --- end to end ---------------------------------------------------------------------------------


def test_poll_and_status_show_the_refusal(
    write_config: ConfigWriter, feed_server: FeedServer, environ: dict[str, str], store: Store
) -> None:
    url = feed_server.url("rss2.xml")
    write_config.write([{"name": "inside", "url": url}], settings={"block_private_addresses": True})
    assert yaml.safe_load(write_config.path.read_text())["settings"]["block_private_addresses"]
    env = {**environ, "AGGREGATOR_CONFIG": str(write_config.path)}
    env["AGGREGATOR_REDIS_URL"] = write_config.redis_url
    reason = f"fetch {url}: refused: 127.0.0.1 is a loopback address {SETTING}"

    polled = cli("poll", env=env)
    assert polled.returncode == 1, polled.stdout + polled.stderr  # every poll failed
    assert reason in cells(polled.stdout)
    assert "0 ok, 1 failed" in polled.stdout
    assert feed_server.requests == []

    shown = cli("status", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"1 failure(s) in a row: {reason}" in cells(shown.stdout)
    (state,) = store.source_states(["inside"])
    assert state.last_error == reason  # stored as one line


def cells(table: str) -> str:
    """A printed table's text with its borders gone and wrapped cells joined again."""
    for border in "│┃┏┓┗┛┡┩└┘━─┬┴┼╇╈┳┻":
        table = table.replace(border, " ")
    return " ".join(table.split())
