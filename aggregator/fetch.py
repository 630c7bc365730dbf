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
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from aggregator.config import Settings
from aggregator.errors import FetchError
from aggregator.models import FetchResult, NotModified, Validators

if TYPE_CHECKING:
    from pyreqwest.client import Client
    from pyreqwest.response import Response

ACCEPT = (
    "application/atom+xml, application/rss+xml, application/feed+json, application/rdf+xml;q=0.9,"
    " application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5"
)
MAX_REDIRECTS = 5
REDIRECTS = frozenset((301, 302, 303, 307, 308))
PERMANENT = frozenset((301, 308))  # RFC 9110 §15.4.2, §15.4.9
NO_VALIDATORS = Validators()
CLOSE_GRACE_SECONDS = 0.05


class Fetcher:
    """An HTTP client shared by every poll of one process. Use as `async with Fetcher(...)`."""

    def __init__(self, settings: Settings, *, max_connections: int = 256) -> None:
        self._settings = settings
        self._max_connections = max_connections
        self._client: Client | None = None

    async def __aenter__(self) -> Fetcher:
        # Loaded here, not with the module: pyreqwest reserves a gigabyte of address space
        # when imported, which would break the address-space bound of the parse pool's
        # workers (aggregator/bounded.py), and they import whatever the main module does.
        from pyreqwest.client import ClientBuilder

        settings = self._settings
        self._client = (
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
            .build()
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
            # pyreqwest's thread lets go of the client's Python objects just after close()
            # returns; a process that exits meanwhile may abort in its finalization
            # ("PyGILState_Release ... finalizing": 3 of 30 short scripts here, none of 100
            # with a 20 ms wait).
            await asyncio.sleep(CLOSE_GRACE_SECONDS)

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
            raise FetchError(url, f"timed out after {settings.timeout:g}s") from err
        except Exception as err:
            failure = _failure(url, err)
            if failure is None:
                raise
            raise failure from err

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
        )


def _header(response: Response, name: str) -> str:
    """A header's value; "" when absent or not text (bytes outside ASCII, which pyreqwest
    will not decode: a server's mistake, read as if the header were not there)."""
    try:
        return response.get_header(name) or ""
    except ValueError:
        return ""


def _failure(url: str, err: Exception) -> FetchError | None:
    """The FetchError for one of the HTTP client's own errors; None for any other."""
    from pyreqwest import exceptions as http_errors  # loaded already: a Fetcher is open

    if isinstance(err, http_errors.DecodeError):
        return FetchError(url, "bad response: could not decode the body")
    # pyreqwest refuses a URL it cannot parse (the source's, or a redirect's) with a
    # ValueError (its BuilderError is one), as urljoin does a malformed IPv6 host.
    if isinstance(err, ValueError):
        return FetchError(url, "invalid URL")
    if isinstance(err, http_errors.PyreqwestError):
        return FetchError(url, "connection failed")
    return None


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
