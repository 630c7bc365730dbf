"""Fetch: one HTTP GET per source, with the limits a polite and robust client keeps.

It sends the stored validators (RFC 9110 §13.1: If-None-Match, If-Modified-Since) and answers a
304 with `NotModified`; it enforces the timeout, the body size cap while streaming (a body is never
buffered beyond `max_bytes`, after decompression, so a gzip bomb stops early too), the redirect
limit and the User-Agent. It does not parse, and it knows nothing of Redis.

The HTTP client is pyreqwest (Rust's reqwest and hyper): requests, responses, pooling and
decompression run on a thread of its own, outside the GIL, so a cycle of a thousand 304s leaves
this process's event loop little to do (1,000 conditional GETs: 0.24 s against aiohttp's
0.37 s here, `bench/http_clients.py`).
Redirects are followed here, hop by hop, to tell permanent ones from temporary ones and to
refuse any that leaves http(s). feedparser's own fetching is never used: it has no timeout.

With `settings.block_private_addresses`, each hop's host is resolved here, once, judged by
`aggregator.addresses`, and the request is sent by a client pinned to the address judged
(reqwest's static resolution: it does no lookup of its own, so a second DNS answer cannot
point the connection elsewhere). A refused hop makes no request. With the setting off, nothing
of this runs: the shared client resolves and connects as it always did.

A failure is a `FetchError` whose reason is one line a person reads ("connection refused by
127.0.0.1:9", "DNS lookup failed for feeds.example.com"); the HTTP client's chain of causes
goes to the debug log.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from aggregator.addresses import AddressPolicy, IPAddress, parse_address
from aggregator.config import Settings
from aggregator.errors import FetchError
from aggregator.models import FetchResult, NotModified, Validators

if TYPE_CHECKING:
    from pyreqwest.client import Client, ClientBuilder
    from pyreqwest.exceptions import PyreqwestError
    from pyreqwest.response import Response

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

ACCEPT = (
    "application/atom+xml, application/rss+xml, application/feed+json, application/rdf+xml;q=0.9,"
    " application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5"
)
MAX_REDIRECTS = 5
REDIRECTS = frozenset((301, 302, 303, 307, 308))
PERMANENT = frozenset((301, 308))  # RFC 9110 §15.4.2, §15.4.9
NO_VALIDATORS = Validators()
CLOSE_GRACE_SECONDS = 0.02
PINNED_CLIENTS = 128  # clients pinned to one checked address each, the most recent kept


_closed_at: float | None = None


def _settle_before_exit() -> None:
    """pyreqwest's thread lets go of a closed client's Python objects just after close()
    returns; a process that exits meanwhile may abort in its finalization
    ("PyGILState_Release ... finalizing": 3 of 30 short scripts here, none of 100 with a
    20 ms wait). The wait is owed at exit only, and what the process does after closing
    (storing, printing its summary) counts towards it: a command that closes its client and
    exits soon after waits the rest, one that goes on waits nothing."""
    global _closed_at
    if _closed_at is None:
        atexit.register(_wait_for_close)
    _closed_at = time.monotonic()


def _wait_for_close() -> None:
    if _closed_at is not None:
        time.sleep(max(0.0, _closed_at + CLOSE_GRACE_SECONDS - time.monotonic()))


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses `host` resolves to, in the system resolver's order, each once. Raises
    OSError (socket.gaierror) when it resolves to none."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: dict[IPAddress, None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = parse_address(str(sockaddr[0]))
            if address is not None:
                found[address] = None
    return list(found)


class Fetcher:
    """An HTTP client shared by every poll of one process. Use as `async with Fetcher(...)`."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_connections: int = 256,
        addresses: AddressPolicy | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        """`addresses` is the policy `settings.block_private_addresses` enforces (by default,
        every address not globally reachable is refused); `resolver` looks hosts up for it.
        Neither is used with the setting off."""
        self._settings = settings
        self._max_connections = max_connections
        self._client: Client | None = None
        self._guard = (addresses or AddressPolicy()) if settings.block_private_addresses else None
        self._resolve = resolver
        self._pinned: OrderedDict[tuple[str, IPAddress], Client] = OrderedDict()

    async def __aenter__(self) -> Fetcher:
        self._client = self._builder().build()
        return self

    def _builder(self) -> ClientBuilder:
        """A client builder with every setting a fetch keeps."""
        # Loaded here, not with the module: pyreqwest reserves a gigabyte of address space
        # when imported, which would break the address-space bound of the parse pool's
        # workers (aggregator/bounded.py), and they import whatever the main module does.
        from pyreqwest.client import ClientBuilder

        settings = self._settings
        return (
            ClientBuilder()
            .user_agent(settings.agent)
            .default_headers({"Accept": ACCEPT})
            .max_connections(self._max_connections)
            .timeout(timedelta(seconds=settings.timeout))
            .connect_timeout(timedelta(seconds=min(settings.timeout, 10.0)))
            .follow_redirects(False)  # followed in `fetch`, which must see every hop
            .gzip(True)
            .deflate(True)
            .brotli(True)
            # Cookies are never sent to feeds; a shared jar would leak them between sources.
            .default_cookie_store(False)
            .no_proxy()  # like a feed reader: no proxy unless configured (none can be, yet)
            # Servers of feeds are not all strict: read the header forms hyper would refuse.
            .http1_allow_obsolete_multiline_headers_in_responses(True)
            .http1_allow_spaces_after_header_name_in_responses(True)
            .http1_ignore_invalid_headers_in_responses(True)
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            pinned = list(self._pinned.values())
            self._pinned.clear()
            for client in (self._client, *pinned):
                await client.close()
            self._client = None
            _settle_before_exit()

    async def fetch(
        self, url: str, validators: Validators = NO_VALIDATORS
    ) -> FetchResult | NotModified:
        """GET `url`; raise FetchError (with the URL and cause) for anything but 2xx or 304."""
        client = self._client
        if client is None:
            raise RuntimeError("use Fetcher as an async context manager")
        settings = self._settings
        deadline = time.monotonic() + settings.timeout  # for every hop together
        hop_url, hops, moved, permanent = url, 0, "", True
        try:
            while True:
                if self._guard is not None:  # settings.block_private_addresses
                    client = await self._checked_client(self._guard, url, hop_url, deadline)
                request = client.get(hop_url)
                if validators.etag:
                    request = request.header("If-None-Match", validators.etag)
                if validators.last_modified:
                    request = request.header("If-Modified-Since", validators.last_modified)
                if hops:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    request = request.timeout(timedelta(seconds=left))
                async with request.build_streamed() as response:
                    status = response.status
                    if status in REDIRECTS and (location := _header(response, "Location")):
                        hops += 1
                        if hops > MAX_REDIRECTS:
                            raise FetchError(url, f"more than {MAX_REDIRECTS} redirects", status)
                        hop_url = urljoin(hop_url, location.strip())
                        if urlsplit(hop_url).scheme not in ("http", "https"):
                            raise FetchError(url, "redirected to a URL that is not http(s)")
                        # The leading run of permanent redirects is where to poll from now on;
                        # a temporary one on the way ends it: what lies behind may change back.
                        permanent = permanent and status in PERMANENT
                        if permanent:
                            moved = hop_url
                        continue
                    return await self._answer(url, hop_url, response, validators, moved)
        except FetchError:
            raise
        except TimeoutError as err:  # pyreqwest's timeouts are TimeoutErrors too
            log.debug("fetch %s (at %s) timed out: %r", url, hop_url, err)
            raise FetchError(url, f"timed out after {settings.timeout:g} s") from err
        except Exception as err:
            failure = _failure(url, hop_url, err)
            if failure is None:
                raise
            log.debug("fetch %s (at %s) failed: %r", url, hop_url, err)
            raise failure from err

    async def _checked_client(
        self, guard: AddressPolicy, url: str, hop_url: str, deadline: float
    ) -> Client:
        """A client that connects only to an address `guard` allows for `hop_url`'s host;
        FetchError (no request made) when the host is refused or does not resolve."""
        from pyreqwest.http import Url

        # The host as the HTTP client reads it (WHATWG URL rules: "127.1" and "0x7f.0.0.1"
        # are 127.0.0.1 to it, so they must be to this check too).
        parsed = Url(hop_url)
        host = parsed.host_str or ""
        literal = parse_address(host)
        if literal is not None:
            if why := guard.refuse_address(host, literal):
                raise FetchError(url, why)
            assert self._client is not None
            return self._client  # nothing to resolve: it connects to this very address
        if why := guard.refuse_name(host):
            raise FetchError(url, why)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            async with asyncio.timeout(left):
                found = await self._resolve(host, parsed.port_or_known_default or 0)
        except OSError as err:
            if isinstance(err, TimeoutError):
                raise
            log.debug("fetch %s: looking up %s failed: %r", url, host, err)
            raise FetchError(url, f"DNS lookup failed for {host}") from err
        if not found:
            raise FetchError(url, f"DNS lookup failed for {host}")
        if why := guard.refuse_resolved(host, found):
            raise FetchError(url, why)
        return self._pinned_client(host, found[0])

    def _pinned_client(self, host: str, address: IPAddress) -> Client:
        """A client that sends requests for `host` to `address` and nowhere else; one per
        pair, the most recently used kept (each has its own connection pool)."""
        key = (host, address)
        client = self._pinned.get(key)
        if client is not None:
            self._pinned.move_to_end(key)
            return client
        # Port 0: the port of each request's URL (hyper's rule for a resolved address).
        client = self._pinned[key] = self._builder().resolve(host, str(address), 0).build()
        if len(self._pinned) > PINNED_CLIENTS:
            # Dropped, not closed: a request may still be under way on it; it goes once
            # the last one holding it does.
            self._pinned.popitem(last=False)
        return client

    async def _answer(
        self,
        url: str,
        final_url: str,
        response: Response,
        sent: Validators,
        moved_to: str,
    ) -> FetchResult | NotModified:
        """The result of the last hop's `response`: its body read up to max_bytes."""
        status = response.status

        def header(name: str) -> str:
            return _header(response, name)

        got = Validators(etag=header("ETag"), last_modified=header("Last-Modified"))
        max_age = _max_age(header("Cache-Control"))
        if status == 304:
            # A 304 may omit validators; keep the ones we sent (RFC 9110 §15.4.5).
            return NotModified(
                url,
                Validators(
                    etag=got.etag or sent.etag,
                    last_modified=got.last_modified or sent.last_modified,
                ),
                moved_to=moved_to,
                max_age=max_age,
            )
        if not 200 <= status < 300:
            reason = f"HTTP {status} {_phrase(status)}".strip()
            raise FetchError(
                url, reason, status, retry_after(header("Retry-After"), datetime.now(UTC))
            )
        limit = self._settings.max_bytes
        declared = _content_length(header("Content-Length"))
        if declared is not None and declared > limit:
            raise FetchError(url, f"body of {declared} bytes is over max_bytes ({limit})", status)
        body = bytearray()
        reader = response.body_reader
        while (chunk := await reader.read_chunk()) is not None:
            body += chunk
            if len(body) > limit:
                raise FetchError(url, f"body is over max_bytes ({limit})", status)
        return FetchResult(
            url=url,
            final_url=final_url,
            status=status,
            content_type=header("Content-Type"),
            body=bytes(body),
            validators=got,
            moved_to=moved_to,
            max_age=max_age,
            links=_links(response),
        )

    async def post_form(self, url: str, form: Mapping[str, str]) -> int:
        """POST `form`, form-encoded, to a WebSub hub (a subscription request, WebSub §5.1;
        a publish ping) under the limits a poll keeps: the timeout, the User-Agent and
        settings.block_private_addresses. A redirect is not followed: WebSub §5.1 says a
        request is made to the hub's URL. Returns the status; FetchError when there is none."""
        client = self._client
        if client is None:
            raise RuntimeError("use Fetcher as an async context manager")
        deadline = time.monotonic() + self._settings.timeout
        try:
            if self._guard is not None:
                client = await self._checked_client(self._guard, url, url, deadline)
            request = client.post(url).form(dict(form))
            async with request.build_streamed() as response:
                return int(response.status)
        except FetchError:
            raise
        except TimeoutError as err:
            raise FetchError(url, f"timed out after {self._settings.timeout:g} s") from err
        except Exception as err:
            failure = _failure(url, url, err)
            if failure is None:
                raise
            log.debug("post %s failed: %r", url, err)
            raise failure from err


def _links(response: Response) -> str:
    """Every Link header field of `response`, joined as one (RFC 9110 §5.3)."""
    try:
        return ", ".join(v for v in response.get_header_all("Link") if v)
    except ValueError:
        return ""


def _header(response: Response, name: str) -> str:
    """A header's value; "" when absent or not text (bytes outside ASCII, which pyreqwest
    will not decode: a server's mistake, read as if the header were not there)."""
    try:
        return response.get_header(name) or ""
    except ValueError:
        return ""


def _failure(url: str, hop_url: str, err: Exception) -> FetchError | None:
    """The FetchError for one of the HTTP client's own errors at `hop_url`; None for any
    other."""
    from pyreqwest import exceptions as http_errors  # loaded already: a Fetcher is open

    if isinstance(err, http_errors.PyreqwestError) and not isinstance(err, ValueError):
        return FetchError(url, describe(err, hop_url))
    # pyreqwest refuses a URL it cannot parse (the source's, or a redirect's) with a
    # ValueError (its BuilderError is one), as urljoin does a malformed IPv6 host.
    if isinstance(err, ValueError):
        return FetchError(url, "invalid URL")
    return None


def describe(err: PyreqwestError, hop_url: str) -> str:
    """One line a person reads for an error of the HTTP client at `hop_url`, from its class
    and its chain of causes (reqwest's, hyper's, rustls' and the OS's messages, outermost
    first: "error sending request", "client error (Connect)", "tcp connect error",
    "Connection refused (os error 111)")."""
    from pyreqwest import exceptions as http_errors

    details = getattr(err, "details", None) or {}
    causes = [str(c.get("message", "")) for c in details.get("causes") or []]
    chain = " | ".join(causes).lower()
    last = _without_os_code(causes[-1]) if causes else err.message
    host, where = _place(hop_url)
    if "dns error" in chain or "error resolving dns" in chain:
        return f"DNS lookup failed for {host}"
    if "connection refused" in chain:
        return f"connection refused by {where}"
    if "connection reset" in chain:
        return f"connection reset by {where}"
    if any(s in chain for s in ("network is unreachable", "no route", "host is unreachable")):
        return f"no route to {where}"
    if "invalid peer certificate" in chain:
        return _certificate(host, chain, last)
    if "corrupt message" in chain or "invalidcontenttype" in chain:
        return f"TLS handshake with {where} failed: the server does not answer in TLS"
    if "tls" in chain or "handshake" in chain or "alert" in chain:
        return f"TLS handshake with {where} failed: {last}"
    if "error reading a body" in chain or "incomplete" in chain or "connection closed" in chain:
        return f"connection to {where} closed before the response was complete"
    if isinstance(err, http_errors.DecodeError):
        return "bad response: could not decode the body"
    return f"connection to {where} failed: {last}"


def _certificate(host: str, chain: str, last: str) -> str:
    """What is wrong with a server's TLS certificate, from rustls' (webpki's) words."""
    if "not valid for name" in chain or "notvalidforname" in chain:
        return f"TLS certificate not valid for {host}"
    if "expired" in chain:
        return f"TLS certificate of {host} has expired"
    if "notvalidyet" in chain:
        return f"TLS certificate of {host} is not valid yet"
    if "unknownissuer" in chain or "causedasendentity" in chain:
        return f"TLS certificate of {host} is not signed by a trusted authority"
    if "revoked" in chain:
        return f"TLS certificate of {host} has been revoked"
    return f"TLS certificate of {host} refused: {last.removeprefix('invalid peer certificate: ')}"


def _place(hop_url: str) -> tuple[str, str]:
    """The host of `hop_url` and its `host:port`, as the HTTP client reads them."""
    from pyreqwest.http import Url

    try:
        parsed = Url(hop_url)
    except ValueError:
        return hop_url, hop_url
    host = parsed.host_str or ""
    port = parsed.port_or_known_default
    return host, f"{host}:{port}" if port else host


def _without_os_code(message: str) -> str:
    """ "Connection refused (os error 111)" without its errno, which tells a person nothing."""
    head, sep, tail = message.rpartition(" (os error ")
    return head if sep and tail.rstrip(")").isdigit() else message


def _phrase(status: int) -> str:
    """The standard reason phrase of `status` ("Not Found"), or "" for a code without one."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _content_length(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _max_age(cache_control: str) -> float | None:
    """`max-age` (or `s-maxage`, which speaks to shared caches like us) of a Cache-Control
    header, in seconds (RFC 9111 §5.2.2.1)."""
    found: float | None = None
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        if name.lower() in ("max-age", "s-maxage"):
            try:
                seconds = float(int(value.strip().strip('"')))
            except ValueError:
                continue
            if seconds >= 0 and (found is None or name.lower() == "s-maxage"):
                found = seconds
    return found


def retry_after(value: str, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date
    (RFC 9110 §10.2.3). None when absent or unreadable."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)
