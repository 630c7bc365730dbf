"""Fetch: one HTTP GET per source, with the limits a polite and robust client keeps.

It sends the stored validators (RFC 9110 §13.1: If-None-Match, If-Modified-Since) and answers a
304 with `NotModified`; it enforces the timeout, the body size cap while streaming (a body is never
buffered beyond `max_bytes`, after decompression, so a gzip bomb stops early too), the redirect
limit and the User-Agent. It does not parse, and it knows nothing of Redis.

feedparser's own fetching is never used: it has no timeout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType

import aiohttp

from aggregator.config import Settings
from aggregator.errors import FetchError
from aggregator.models import FetchResult, NotModified, Validators

ACCEPT = (
    "application/atom+xml, application/rss+xml, application/feed+json, application/rdf+xml;q=0.9,"
    " application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5"
)
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
NO_VALIDATORS = Validators()


class Fetcher:
    """An HTTP client shared by every poll of one process. Use as `async with Fetcher(...)`."""

    def __init__(self, settings: Settings, *, max_connections: int = 100) -> None:
        self._settings = settings
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        settings = self._settings
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=settings.per_host.concurrency,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=settings.timeout,
                connect=min(settings.timeout, 10.0),
                sock_read=settings.timeout,
            ),
            headers={"User-Agent": settings.agent, "Accept": ACCEPT},
            # Cookies are never sent to feeds; a shared jar would leak them between sources.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(
        self, url: str, validators: Validators = NO_VALIDATORS
    ) -> FetchResult | NotModified:
        """GET `url`; raise FetchError (with the URL and cause) for anything but 2xx or 304."""
        if self._session is None:
            raise RuntimeError("use Fetcher as an async context manager")
        headers: dict[str, str] = {}
        if validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        limit = self._settings.max_bytes
        try:
            async with self._session.get(
                url,
                headers=headers,
                # aiohttp gives up when the count *reaches* max_redirects: allow one more.
                max_redirects=MAX_REDIRECTS + 1,
                allow_redirects=True,
            ) as response:
                got = Validators(
                    etag=response.headers.get("ETag", ""),
                    last_modified=response.headers.get("Last-Modified", ""),
                )
                moved_to = _moved_to(response)
                max_age = _max_age(response.headers.get("Cache-Control", ""))
                if response.status == 304:
                    # A 304 may omit validators; keep the ones we sent (RFC 9110 §15.4.5).
                    return NotModified(
                        url,
                        Validators(
                            etag=got.etag or validators.etag,
                            last_modified=got.last_modified or validators.last_modified,
                        ),
                        moved_to=moved_to,
                        max_age=max_age,
                    )
                if not 200 <= response.status < 300:
                    raise FetchError(
                        url,
                        f"HTTP {response.status} {response.reason or ''}".strip(),
                        response.status,
                        retry_after(response.headers.get("Retry-After", ""), datetime.now(UTC)),
                    )
                declared = response.content_length
                if declared is not None and declared > limit:
                    raise FetchError(
                        url,
                        f"body of {declared} bytes is over max_bytes ({limit})",
                        response.status,
                    )
                body = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK):
                    body += chunk
                    if len(body) > limit:
                        raise FetchError(url, f"body is over max_bytes ({limit})", response.status)
                return FetchResult(
                    url=url,
                    final_url=str(response.url),
                    status=response.status,
                    content_type=response.headers.get("Content-Type", ""),
                    body=bytes(body),
                    validators=got,
                    moved_to=moved_to,
                    max_age=max_age,
                )
        except FetchError:
            raise
        except aiohttp.TooManyRedirects as err:
            raise FetchError(url, f"more than {MAX_REDIRECTS} redirects") from err
        except TimeoutError as err:
            raise FetchError(url, f"timed out after {self._settings.timeout:g}s") from err
        except aiohttp.InvalidURL as err:
            raise FetchError(url, "invalid URL") from err
        except aiohttp.NonHttpUrlRedirectClientError as err:
            raise FetchError(url, "redirected to a URL that is not http(s)") from err
        except aiohttp.ClientResponseError as err:
            raise FetchError(url, f"bad response: {err.message}", err.status) from err
        except aiohttp.ClientError as err:
            raise FetchError(url, "connection failed") from err


def _moved_to(response: aiohttp.ClientResponse) -> str:
    """Where the leading run of permanent redirects (301, 308; RFC 9110 §15.4.2, §15.4.9)
    ends: the URL to poll from now on. A temporary redirect (302, 303, 307) on the way stops
    the run: what lies behind it may change back."""
    hops = [*response.history, response]
    moved = ""
    for hop, following in zip(hops, hops[1:], strict=False):
        if hop.status not in (301, 308):
            break
        moved = str(following.url)
    return moved


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
