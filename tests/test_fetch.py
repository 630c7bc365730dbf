"""Fetcher against real HTTP servers on 127.0.0.1: the `feed_server` fixture, plus a tiny raw
socket server in this module for bodies sent without a Content-Length."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
from pyreqwest import exceptions as http_errors

from aggregator.config import Settings
from aggregator.errors import FetchError, SourceError
from aggregator.fetch import MAX_REDIRECTS, Fetcher, describe
from aggregator.models import FetchResult, NotModified, Validators
from tests.conftest import FEEDS, FeedServer, Route, free_port

MB = 1000**2
TLS = Path(__file__).parent / "data" / "tls"
NO_VALIDATORS = Validators()


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"timeout": 2, "max_bytes": 5 * MB}
    values.update(overrides)
    return Settings(**values)


def fetch(
    url: str, validators: Validators = NO_VALIDATORS, config: Settings | None = None
) -> FetchResult | NotModified:
    async def go() -> FetchResult | NotModified:
        async with Fetcher(config or settings()) as fetcher:
            return await fetcher.fetch(url, validators)

    return asyncio.run(go())


def fetch_error(url: str, config: Settings | None = None) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetch(url, config=config)
    return info.value


def ok(result: FetchResult | NotModified) -> FetchResult:
    assert isinstance(result, FetchResult), result
    return result


# --- a raw server for bodies without Content-Length ------------------------------------------


class RawServer:
    """Answers every connection with `head` then `body_chunks()` and closes. No Content-Length:
    the body ends when the connection closes (or with the last chunk, when chunked)."""

    def __init__(self, head: bytes, body_chunks: Callable[[], Iterator[bytes]]) -> None:
        self.head = head
        self.body_chunks = body_chunks
        self.sent = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str = "feed.xml") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def _serve(self) -> None:
        self.listener.settimeout(0.05)
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        more = conn.recv(65536)
                        if not more:
                            break
                        data += more
                    conn.sendall(self.head)
                    for chunk in self.body_chunks():
                        conn.sendall(chunk)
                        self.sent += len(chunk)
                except OSError:
                    pass  # the client hung up early, as it should for an oversized body

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()


def zeros(total: int, size: int = 64 * 1024) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        left = total
        while left > 0:
            n = min(size, left)
            yield b"<" * n
            left -= n

    return chunks


def chunked(inner: Callable[[], Iterator[bytes]]) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        for piece in inner():
            yield b"%x\r\n" % len(piece) + piece + b"\r\n"
        yield b"0\r\n\r\n"

    return chunks


CLOSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nConnection: close\r\n\r\n"
CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\n"
    b"Connection: close\r\n\r\n"
)


StartRaw = Callable[[bytes, Callable[[], Iterator[bytes]]], RawServer]


@pytest.fixture
def raw_server() -> Iterator[StartRaw]:
    servers: list[RawServer] = []

    def start(head: bytes, body: Callable[[], Iterator[bytes]]) -> RawServer:
        server = RawServer(head, body)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedServer]:
    server = FeedServer(tmp_path_factory.mktemp("www"))
    yield server
    server.close()


@pytest.fixture
def feed_server(shared_server: FeedServer) -> FeedServer:
    """conftest's FeedServer, but one per module (its shutdown costs up to 0.5 s a test), reset
    to the fixture feeds, no routes and no recorded requests before each test."""
    root = shared_server.root
    shutil.rmtree(root)
    shutil.copytree(FEEDS, root)
    shared_server.routes.clear()
    shared_server.requests.clear()
    shared_server.etags = True
    return shared_server


@pytest.fixture
def own_feed_server(tmp_path: Path) -> Iterator[FeedServer]:
    """A FeedServer of the test's own, for a test that leaves a slow request behind."""
    server = FeedServer(tmp_path)
    yield server
    server.close()


# --- 200 ------------------------------------------------------------------------------------


def test_200_body_content_type_and_validators(feed_server: FeedServer) -> None:
    url = feed_server.url("rss2.xml")
    result = ok(fetch(url))
    assert result.status == 200
    assert result.url == url
    assert result.final_url == url
    body = (FEEDS / "rss2.xml").read_bytes()
    assert result.body == body
    assert result.content_type == "application/xml"
    expected_etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
    modified = formatdate((feed_server.root / "rss2.xml").stat().st_mtime, usegmt=True)
    assert result.validators == Validators(etag=expected_etag, last_modified=modified)


def test_content_type_passed_through(feed_server: FeedServer) -> None:
    feed_server.routes["/j"] = Route(
        headers={"Content-Type": "application/feed+json; charset=utf-8"}, body=b"{}"
    )
    result = ok(fetch(feed_server.url("j")))
    assert result.content_type == "application/feed+json; charset=utf-8"
    assert result.body == b"{}"
    assert result.validators == Validators()  # none were sent


def test_empty_200_body(feed_server: FeedServer) -> None:
    feed_server.routes["/empty"] = Route(headers={"Content-Type": "text/xml"}, body=b"")
    result = ok(fetch(feed_server.url("empty")))
    assert (result.status, result.body, result.content_type) == (200, b"", "text/xml")


def test_conditional_get_gets_not_modified(feed_server: FeedServer) -> None:
    url = feed_server.url("atom.xml")
    first = ok(fetch(url))
    assert "If-None-Match" not in feed_server.requests[-1].headers
    second = fetch(url, first.validators)
    assert isinstance(second, NotModified)
    assert second.url == url
    assert second.validators.etag == first.validators.etag
    # The 304 carried no Last-Modified: the one we sent is kept.
    assert second.validators.last_modified == first.validators.last_modified
    sent = feed_server.requests[-1]
    assert sent.status == 304
    assert sent.headers["If-None-Match"] == first.validators.etag
    assert sent.headers["If-Modified-Since"] == first.validators.last_modified


def test_changed_feed_with_old_validators_is_fetched_again(feed_server: FeedServer) -> None:
    url = feed_server.copy("rss2.xml", "changing.xml")
    first = ok(fetch(url))
    feed_server.put("changing.xml", b"<rss version='2.0'><channel/></rss>")
    second = ok(fetch(url, first.validators))
    assert second.body == b"<rss version='2.0'><channel/></rss>"
    assert second.validators.etag != first.validators.etag


def test_user_agent_and_accept_sent(feed_server: FeedServer) -> None:
    custom = settings(user_agent="TestBot/9.9 (+http://bot.test)")
    ok(fetch(feed_server.url("rss2.xml"), config=custom))
    headers = feed_server.requests[-1].headers
    assert headers["User-Agent"] == custom.agent == "TestBot/9.9 (+http://bot.test)"
    assert "application/atom+xml" in headers["Accept"]

    default = settings(public_url="http://agg.test")
    ok(fetch(feed_server.url("rss2.xml"), config=default))
    agent = feed_server.requests[-1].headers["User-Agent"]
    assert agent == default.agent
    assert agent.startswith("aggregator/") and "http://agg.test" in agent


def test_cookies_are_never_sent_back(feed_server: FeedServer) -> None:
    feed_server.routes["/cookie"] = Route(
        headers={"Set-Cookie": "session=abc; Path=/"}, body=b"<rss/>"
    )

    # "localhost", not 127.0.0.1: a normal cookie jar ignores cookies of IP hosts, so only a
    # host name shows whether the jar is the dummy one. (It resolves locally, no internet.)
    base = f"http://localhost:{feed_server.port}"

    async def go() -> None:
        async with Fetcher(settings()) as fetcher:
            await fetcher.fetch(f"{base}/cookie")
            await fetcher.fetch(f"{base}/cookie")
            await fetcher.fetch(f"{base}/rss2.xml")

    asyncio.run(go())
    assert len(feed_server.requests) == 3
    assert all("Cookie" not in r.headers for r in feed_server.requests)


# --- redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_followed(feed_server: FeedServer, status: int) -> None:
    target = feed_server.url("feed.json")
    feed_server.routes["/moved"] = Route(status=status, headers={"Location": target})
    result = ok(fetch(feed_server.url("moved")))
    assert result.url == feed_server.url("moved")
    assert result.final_url == target
    assert result.body == (FEEDS / "feed.json").read_bytes()
    assert result.content_type == "application/feed+json"
    assert [r.status for r in feed_server.requests] == [status, 200]


def test_redirect_chain_with_relative_location(feed_server: FeedServer) -> None:
    feed_server.routes["/a"] = Route(status=301, headers={"Location": "/b"})
    feed_server.routes["/b"] = Route(status=302, headers={"Location": "rss1.rdf"})
    result = ok(fetch(feed_server.url("a")))
    assert result.final_url == feed_server.url("rss1.rdf")
    assert result.body == (FEEDS / "rss1.rdf").read_bytes()
    ua = [r.headers["User-Agent"] for r in feed_server.requests]
    assert ua == [settings().agent] * 3  # every hop identifies us


def test_redirect_loop_is_a_fetch_error(feed_server: FeedServer) -> None:
    feed_server.routes["/loop"] = Route(status=302, headers={"Location": "/loop"})
    url = feed_server.url("loop")
    err = fetch_error(url)
    assert "redirects" in str(err)
    assert url in str(err)
    assert len(feed_server.requests) <= MAX_REDIRECTS + 1  # it stopped, did not spin


def redirect_chain(server: FeedServer, hops: int) -> str:
    for i in range(hops):
        nxt = f"/hop{i + 1}" if i + 1 < hops else "/rss2.xml"
        server.routes[f"/hop{i}"] = Route(status=302, headers={"Location": nxt})
    return server.url("hop0")


def test_a_few_redirects_are_fine(feed_server: FeedServer) -> None:
    result = ok(fetch(redirect_chain(feed_server, 3)))
    assert result.final_url == feed_server.url("rss2.xml")


def test_more_than_max_redirects_is_an_error(feed_server: FeedServer) -> None:
    err = fetch_error(redirect_chain(feed_server, MAX_REDIRECTS + 1))
    assert f"more than {MAX_REDIRECTS} redirects" in str(err)


def test_exactly_max_redirects_are_followed(feed_server: FeedServer) -> None:
    result = ok(fetch(redirect_chain(feed_server, MAX_REDIRECTS)))
    assert result.final_url == feed_server.url("rss2.xml")


# --- HTTP errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410, 500, 503])
def test_error_status_is_a_fetch_error_with_status(feed_server: FeedServer, status: int) -> None:
    feed_server.routes["/bad"] = Route(status=status, body=b"nope")
    url = feed_server.url("bad")
    err = fetch_error(url)
    assert err.status == status
    assert isinstance(err, SourceError)
    assert err.url == url
    assert url in str(err) and str(status) in str(err)


def test_missing_file_is_404(feed_server: FeedServer) -> None:
    url = feed_server.url("no-such-feed.xml")
    err = fetch_error(url)
    assert err.status == 404
    assert str(err).startswith(f"fetch {url}: HTTP 404")


# --- size limits ----------------------------------------------------------------------------


def test_declared_body_over_max_bytes(feed_server: FeedServer) -> None:
    feed_server.routes["/big"] = Route(body=b"x" * 3000)
    url = feed_server.url("big")
    err = fetch_error(url, settings(max_bytes=2000))
    assert "max_bytes" in str(err) and "3000" in str(err)
    assert err.status == 200
    assert url in str(err)
    # At the limit exactly it is fine.
    feed_server.routes["/fits"] = Route(body=b"y" * 2000)
    assert ok(fetch(feed_server.url("fits"), config=settings(max_bytes=2000))).body == b"y" * 2000


def test_declared_body_one_byte_over_max_bytes(feed_server: FeedServer) -> None:
    feed_server.routes["/over"] = Route(body=b"z" * 1001)
    err = fetch_error(feed_server.url("over"), settings(max_bytes=1000))
    assert "1001" in str(err)


@pytest.mark.parametrize(
    ("head", "framing"),
    [(CLOSE_HEAD, lambda b: b), (CHUNKED_HEAD, chunked)],
    ids=["connection-close", "chunked"],
)
def test_undeclared_body_over_max_bytes(
    raw_server: Callable[..., RawServer],
    head: bytes,
    framing: Callable[[Callable[[], Iterator[bytes]]], Callable[[], Iterator[bytes]]],
) -> None:
    # 20 MB on offer with no Content-Length; max_bytes is 1 MB. The fetcher must stop reading
    # soon after the cap instead of buffering the lot.
    server = raw_server(head, framing(zeros(20 * MB)))
    url = server.url()
    err = fetch_error(url, settings(max_bytes=1 * MB))
    assert "over max_bytes" in str(err)
    assert url in str(err)
    server.close()
    assert server.sent < 10 * MB


@pytest.mark.parametrize(
    ("head", "framing"),
    [(CLOSE_HEAD, lambda b: b), (CHUNKED_HEAD, chunked)],
    ids=["connection-close", "chunked"],
)
def test_undeclared_body_under_max_bytes_is_read_whole(
    raw_server: Callable[..., RawServer],
    head: bytes,
    framing: Callable[[Callable[[], Iterator[bytes]]], Callable[[], Iterator[bytes]]],
) -> None:
    server = raw_server(head, framing(zeros(300_000, size=7000)))
    result = ok(fetch(server.url(), config=settings(max_bytes=300_000)))
    assert result.body == b"<" * 300_000
    assert result.content_type == "application/xml"


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """50 MB of zeros, gzip-compressed (about 50 KB), built without holding the 50 MB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MB)
    parts = [packer.compress(block) for _ in range(50)]
    parts.append(packer.flush())
    return b"".join(parts)


def test_gzip_bomb_stops_at_max_bytes_without_blowing_memory(
    feed_server: FeedServer, gzip_bomb: bytes
) -> None:
    assert len(gzip_bomb) < 200_000
    feed_server.routes["/bomb.xml"] = Route(
        headers={"Content-Type": "application/xml", "Content-Encoding": "gzip"}, body=gzip_bomb
    )
    url = feed_server.url("bomb.xml")
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(FetchError) as info:
            fetch(url, config=settings(max_bytes=1 * MB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "over max_bytes" in str(info.value)
    assert feed_server.requests[-1].headers.get("Accept-Encoding", "").find("gzip") >= 0
    # Decompressing the lot would need 50 MB (plus a copy); a streaming cap needs a few MB.
    assert peak < 12 * MB, f"peak {peak / MB:.1f} MB"


def test_small_gzip_body_is_decompressed(feed_server: FeedServer) -> None:
    plain = (FEEDS / "rss2.xml").read_bytes()
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    feed_server.routes["/gz.xml"] = Route(
        headers={"Content-Type": "application/xml", "Content-Encoding": "gzip"},
        body=packer.compress(plain) + packer.flush(),
    )
    assert ok(fetch(feed_server.url("gz.xml"))).body == plain


def test_brotli_is_offered_decoded_and_capped(feed_server: FeedServer) -> None:
    import brotli

    plain = (FEEDS / "rss2.xml").read_bytes()
    feed_server.routes["/br.xml"] = Route(
        headers={"Content-Type": "application/xml", "Content-Encoding": "br"},
        body=brotli.compress(plain),
    )
    assert ok(fetch(feed_server.url("br.xml"))).body == plain
    assert "br" in feed_server.requests[-1].headers.get("Accept-Encoding", "")
    feed_server.routes["/brbomb.xml"] = Route(
        headers={"Content-Type": "application/xml", "Content-Encoding": "br"},
        body=brotli.compress(b"<" * (20 * MB)),
    )
    err = fetch_error(feed_server.url("brbomb.xml"), settings(max_bytes=MB))
    assert "over max_bytes" in str(err)


# --- network failures -----------------------------------------------------------------------


def test_timeout(own_feed_server: FeedServer) -> None:
    own_feed_server.routes["/slow"] = Route(body=b"late", delay=0.9)
    url = own_feed_server.url("slow")
    started = time.monotonic()
    err = fetch_error(url, settings(timeout=0.3))
    elapsed = time.monotonic() - started
    assert str(err) == f"fetch {url}: timed out after 0.3 s"
    assert url in str(err)
    assert err.status is None
    assert elapsed < 0.85  # gave up at the timeout, did not wait for the answer
    # Let the server's late answer (to a closed socket) finish inside this test.
    deadline = time.monotonic() + 5
    while not own_feed_server.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)


def test_connection_refused(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/feed.xml"
    with caplog.at_level(logging.DEBUG, logger="aggregator.fetch"):
        err = fetch_error(url)
    assert str(err) == f"fetch {url}: connection refused by 127.0.0.1:{port}"
    assert err.status is None
    assert err.__cause__ is not None
    # The whole chain of causes is for the debug log, not for the person reading status.
    assert "Connection refused (os error 111)" in caplog.text
    assert "os error" not in str(err) and "causes" not in str(err)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_connection_refused_over_ipv6() -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]
    url = f"http://[::1]:{port}/feed.xml"
    assert str(fetch_error(url)) == f"fetch {url}: connection refused by [::1]:{port}"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers on them."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_times_out(silent_server: int) -> None:
    url = f"http://127.0.0.1:{silent_server}/feed.xml"
    err = fetch_error(url, settings(timeout=0.5))
    assert str(err) == f"fetch {url}: timed out after 0.5 s"


def test_https_to_a_plain_http_server(feed_server: FeedServer) -> None:
    url = f"https://127.0.0.1:{feed_server.port}/rss2.xml"
    assert str(fetch_error(url)) == (
        f"fetch {url}: TLS handshake with 127.0.0.1:{feed_server.port} failed:"
        " the server does not answer in TLS"
    )


@pytest.fixture
def self_signed_server() -> Iterator[int]:
    """A TLS server on 127.0.0.1 presenting a certificate nobody signed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TLS / "self-signed.pem", TLS / "self-signed.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(65536)
                except (OSError, ssl.SSLError):
                    pass  # the client refuses the certificate: the point of the test

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def test_a_self_signed_certificate(self_signed_server: int) -> None:
    url = f"https://127.0.0.1:{self_signed_server}/feed.xml"
    assert str(fetch_error(url)) == (
        f"fetch {url}: TLS certificate of 127.0.0.1 is not signed by a trusted authority"
    )


def test_a_body_cut_short(raw_server: StartRaw) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 1000\r\n\r\n"
    server = raw_server(head, lambda: iter([b"<rss>"]))
    url = server.url()
    assert str(fetch_error(url)) == (
        f"fetch {url}: connection to 127.0.0.1:{server.port} closed before the response"
        " was complete"
    )


def chain(*messages: str) -> dict[str, list[dict[str, str]]]:
    return {"causes": [{"message": m} for m in messages]}


SENDING = "error sending request for url (https://feeds.example.com/rss)"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            http_errors.ConnectError(
                "connection error",
                chain(
                    SENDING,
                    "client error (Connect)",
                    "invalid peer certificate: "
                    'certificate not valid for name "feeds.example.com"; certificate is'
                    ' only valid for DnsName("cdn.example.net")',
                ),
            ),
            "TLS certificate not valid for feeds.example.com",
        ),
        (
            http_errors.ConnectError(
                "connection error",
                chain(SENDING, "client error (Connect)", "invalid peer certificate: Expired"),
            ),
            "TLS certificate of feeds.example.com has expired",
        ),
        (
            http_errors.ReadError(
                "read error",
                chain(SENDING, "connection error", "Connection reset by peer (os error 104)"),
            ),
            "connection reset by feeds.example.com:443",
        ),
        (
            http_errors.ConnectError(
                "connection error",
                chain(
                    SENDING,
                    "client error (Connect)",
                    "tcp connect error",
                    "Network is unreachable (os error 101)",
                ),
            ),
            "no route to feeds.example.com:443",
        ),
        (
            http_errors.ConnectError(
                "connection error",
                chain(SENDING, "client error (Connect)", "Something new (os error 999)"),
            ),
            "connection to feeds.example.com:443 failed: Something new",
        ),
        (
            # As the system resolver reports a name it cannot find (the suite asks no DNS
            # server: this chain is the one reqwest gives for nonexistent.invalid).
            http_errors.ConnectError(
                "connection error",
                chain(
                    SENDING,
                    "client error (Connect)",
                    "dns error",
                    "failed to lookup address information: Name or service not known",
                ),
            ),
            "DNS lookup failed for feeds.example.com",
        ),
        (
            http_errors.ConnectError("connection error", {"causes": None}),
            "connection to feeds.example.com:443 failed: connection error",
        ),
    ],
    ids=["name", "expired", "reset", "unreachable", "unknown", "dns", "no-causes"],
)
def test_describe_reads_the_chain_of_causes(error: http_errors.PyreqwestError, reason: str) -> None:
    assert describe(error, "https://feeds.example.com/rss") == reason


def test_fetch_outside_the_context_manager_is_refused() -> None:
    async def go() -> None:
        await Fetcher(settings()).fetch("http://127.0.0.1:1/")

    with pytest.raises(RuntimeError, match="async context manager"):
        asyncio.run(go())


def test_one_fetcher_serves_several_requests(feed_server: FeedServer) -> None:
    async def go() -> list[FetchResult | NotModified]:
        async with Fetcher(settings()) as fetcher:
            return list(
                await asyncio.gather(
                    fetcher.fetch(feed_server.url("rss2.xml")),
                    fetcher.fetch(feed_server.url("atom.xml")),
                    fetcher.fetch(feed_server.url("feed.json")),
                )
            )

    results = [ok(r) for r in asyncio.run(go())]
    assert [r.body for r in results] == [
        (FEEDS / name).read_bytes() for name in ("rss2.xml", "atom.xml", "feed.json")
    ]


def drip(piece: bytes, pause: float, count: int) -> Callable[[], Iterator[bytes]]:
    """A body sent slowly: `count` pieces, `pause` seconds apart."""

    def chunks() -> Iterator[bytes]:
        for _ in range(count):
            yield piece
            time.sleep(pause)

    return chunks


def test_body_over_the_cap_sent_slowly_stops_at_the_cap(raw_server: StartRaw) -> None:
    server = raw_server(CLOSE_HEAD, drip(b"<" * 1000, 0.02, 500))
    started = time.monotonic()
    err = fetch_error(server.url(), settings(max_bytes=20_000, timeout=30))
    assert "over max_bytes" in str(err)
    assert time.monotonic() - started < 5  # at the cap (~0.4 s), not after the whole 10 s
    assert server.sent < 100_000


def test_slow_drip_under_the_cap_hits_the_total_timeout(raw_server: StartRaw) -> None:
    server = raw_server(CLOSE_HEAD, drip(b"<", 0.1, 100))
    started = time.monotonic()
    err = fetch_error(server.url(), settings(timeout=1))
    assert "timed out" in str(err)
    assert time.monotonic() - started < 3


# --- the HTTP client is loaded only by a process that fetches ------------------------------


def test_the_command_line_does_not_load_the_http_client() -> None:
    # Parse-pool workers import whatever the main module imports, and pyreqwest reserves a
    # gigabyte of address space when loaded: their memory bound would leave them none.
    code = "import sys, aggregator.cli; print('pyreqwest' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- what servers get wrong -----------------------------------------------------------------


def test_a_redirect_to_a_malformed_url_is_an_invalid_url(feed_server: FeedServer) -> None:
    feed_server.routes["/to-nowhere"] = Route(status=302, headers={"Location": "http://[::1/x"})
    url = feed_server.url("to-nowhere")
    err = fetch_error(url)
    assert "invalid URL" in str(err)
    assert url in str(err)


NOT_ASCII_HEAD = (
    b'HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nETag: "caf\xc3\xa9"\r\n'
    b"Last-Modified: Fri, 27 Nov 2026 10:00:00 GMT\r\nConnection: close\r\n\r\n"
)
# A folded header line (obsolete in RFC 9112 §5.2) and a space before a header's colon.
OLD_FORMS_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nX-Note: first\r\n  second\r\n"
    b'ETag : "v1"\r\nConnection: close\r\n\r\n'
)


@pytest.mark.parametrize(
    ("head", "validators"),
    [
        # A header that is not ASCII is read as absent, the others as sent.
        (NOT_ASCII_HEAD, Validators("", "Fri, 27 Nov 2026 10:00:00 GMT")),
        (OLD_FORMS_HEAD, Validators('"v1"', "")),
    ],
    ids=["not-ascii", "old-forms"],
)
def test_headers_servers_get_wrong_are_read(
    raw_server: StartRaw, head: bytes, validators: Validators
) -> None:
    server = raw_server(head, lambda: iter([b"<rss version='2.0'><channel/></rss>"]))
    result = ok(fetch(server.url()))
    assert result.body == b"<rss version='2.0'><channel/></rss>"
    assert result.content_type == "application/xml"
    assert result.validators == validators
