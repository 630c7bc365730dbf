"""Web: the merged feeds, the HTML pages and the health endpoints. The only module that imports
Flask. It reads the store and renders; it never fetches.

`create_app()` does nothing at import time: it reads the configuration (from the environment
unless given one), opens the store, and attaches both, as a `Site`, under
`app.extensions["aggregator"]`. Production: `gunicorn 'aggregator.web:create_app()'`.

Reload: given a config loader (the default when no config is given), the app looks at the
reload counter `aggregator reload` bumps at most once every `reload_check` seconds, on the
requests it serves, and re-reads feeds.yaml when it moved; so does a process told to by
`Site.request_reload` (SIGHUP to `aggregator web`). A file with problems is refused and the
running configuration kept. Every process checks for itself, so this holds for waitress, for
each gunicorn worker and for the web half of `aggregator run` alike.

Links: with `settings.public_url` set, every self and page link starts with it; without, with
the scheme, host and port the request came to (X-Forwarded-Proto, -Host and -Port believed only
from an address in `settings.trusted_proxies`). Rendered feeds are cached per base URL.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import hashlib
import ipaddress
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar, cast
from urllib.parse import quote

from flask import Blueprint, Flask, Response, abort, current_app, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.http import http_date, parse_date, parse_etags, remove_entity_headers
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import BaseConverter

from aggregator import __version__, keys, metrics, opml, urls, websub
from aggregator import config as config_module
from aggregator import store as store_module
from aggregator.config import Config
from aggregator.errors import ConfigError, StorageError
from aggregator.export import BACK, HOME_TITLE
from aggregator.render import FORMATS, MEDIA_TYPES, FeedInfo, Format, Fragments, render_stored
from aggregator.services import open_store
from aggregator.store import Distribution, FeedRead, Rendered, Store
from aggregator.websub import Subscription

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_AGE_CAP = 3600  # Cache-Control max-age of a feed: its sources' shortest interval, ≤ 1 h

bp = Blueprint("aggregator", __name__)


@dataclass(frozen=True, slots=True)
class Memo:
    """A rendered feed held by this web process: its bytes and headers, the index version it
    shows, and when that version was last checked against Redis."""

    version: int
    body: bytes
    headers: tuple[tuple[str, str], ...]  # pairs: werkzeug's Headers takes them faster than a dict
    checked: float
    etag: str
    modified: datetime | None  # the Last-Modified header's time (whole seconds)
    # The WSGI status and headers of the 200 and of the 304, as werkzeug gives `_response`'s
    # (`_wsgi`): what `_answer_kept` answers with.
    whole: tuple[str, tuple[tuple[str, str], ...]]
    unchanged: tuple[str, tuple[tuple[str, str], ...]]


class Memos:
    """The feeds this process served last, bounded (least recently used go first)."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._items: OrderedDict[tuple[object, ...], Memo] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...]) -> Memo | None:
        with self._lock:
            memo = self._items.get(key)
            if memo is not None:
                self._items.move_to_end(key)
            return memo

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def put(self, key: tuple[object, ...], memo: Memo) -> None:
        with self._lock:
            self._items[key] = memo
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Services:
    """What one configuration serves with: replaced whole on reload, never changed."""

    config: Config
    store: Store
    fingerprint: str  # of everything in the config that shows in a rendered feed
    version_check: float  # seconds a process serves a feed before asking Redis if it changed
    memos: Memos
    tags: frozenset[str]
    categories: frozenset[str]
    # Feed requests `_answer_kept` may answer, by the environ values that decide the answer
    # (`_route`): the memo's key and the format. Renewed with the memos on reload.
    routes: dict[tuple[object, ...], tuple[tuple[object, ...], Format]]


def _fingerprint(config: Config) -> str:
    """Cached renderings are keyed by this, so a changed title or public_url is never served
    from a rendering made before the change."""
    shown = {
        "public_url": config.settings.public_url,
        "hub": config.settings.websub_hub,
        "tags": {k: dataclasses.asdict(v) for k, v in config.tags.items()},
        "categories": {k: dataclasses.asdict(v) for k, v in config.categories.items()},
        "version": __version__,
    }
    blob = json.dumps(shown, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def _new_services(config: Config, store: Store, version_check: float) -> Services:
    return Services(
        config,
        store,
        _fingerprint(config),
        version_check,
        Memos(),  # a memo's headers (Cache-Control) and bytes come from the config it was made by
        frozenset(config.tag_names()),
        frozenset(config.category_names()),
        {},
    )


class Site:
    """The services this web process serves with now, renewed when feeds.yaml is reloaded."""

    def __init__(
        self,
        services: Services,
        load_config: Callable[[], Config] | None,
        reload_check: float,
    ) -> None:
        self.services = services
        self.store = services.store
        # Rendered entries outlive a reload: they show nothing from feeds.yaml.
        self.fragments = Fragments()
        self._load_config = load_config
        self._reload_check = reload_check
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._asked = False
        self._version = self._reload_version() if load_config is not None else None

    @property
    def memos(self) -> Memos:
        return self.services.memos

    def request_reload(self) -> None:
        """Re-read feeds.yaml before the next request. Safe in a signal handler."""
        self._asked = True

    def current(self) -> Services:
        """The services to answer a request with, after a reload when one is due."""
        if self._load_config is None:
            return self.services
        if not self._asked and time.monotonic() - self._checked < self._reload_check:
            return self.services
        # One thread looks; the others answer with what there is meanwhile.
        if self._lock.acquire(blocking=False):
            try:
                self._check()
            finally:
                self._lock.release()
        return self.services

    def _check(self) -> None:
        self._checked = time.monotonic()
        asked, self._asked = self._asked, False
        version = self._reload_version()
        if not asked and (version is None or version == self._version):
            return
        self._version = version if version is not None else self._version
        self._reload()

    def _reload_version(self) -> int | None:
        try:
            return self.store.reload_version()
        except StorageError as err:
            log.warning("cannot read the reload counter: %s", err)
            return None

    def _reload(self) -> None:
        assert self._load_config is not None
        try:
            config = self._load_config()
        except ConfigError as err:
            log.error("reload refused, keeping the running configuration: %s", err)
            return
        old = self.services.config
        if config.settings.redis_url != old.settings.redis_url:
            log.warning("settings.redis_url changed in %s: restart to use it", config.path)
        self.services = _new_services(config, self.store, self.services.version_check)
        log.info("reloaded %s: %d sources", config.path, len(config.sources))


def site(app: Flask) -> Site:
    return cast(Site, app.extensions["aggregator"])


def services() -> Services:
    """This request's services: one configuration from its start to its end, whatever a
    reload does meanwhile."""
    return _services(request.environ)


# Kept in the WSGI environ, which a feed's view reads anyway: `g` and `current_app`, each a
# context-variable lookup behind a proxy, showed in a cached feed's profile.
_SITE = "aggregator.site"
_SERVICES = "aggregator.services"


def _services(environ: WSGIEnvironment) -> Services:
    found = environ.get(_SERVICES)
    if found is None:
        served = environ.get(_SITE) or site(current_app)
        found = environ[_SERVICES] = served.current()
    return cast(Services, found)


class _Tail(BaseConverter):
    """Everything after `/tags/`, slashes included (a name may hold `/`): the view reads the
    path itself (aggregator/urls.py)."""

    regex = ".*"
    part_isolating = False


class _ForwardedBy:
    """X-Forwarded-Proto, -Host and -Port (werkzeug's ProxyFix), believed only when the
    request comes from an address in settings.trusted_proxies: anyone else could make our
    self links point anywhere."""

    def __init__(self, app: WSGIApplication, served: Site) -> None:
        self._direct = app
        self._proxied = ProxyFix(app, x_for=0, x_proto=1, x_host=1, x_port=1)
        self._site = served

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ[_SITE] = self._site
        trusted = self._site.services.config.settings.trusted_proxies
        proxied = bool(trusted) and _address_in(environ.get("REMOTE_ADDR"), trusted)
        answer = _answer_kept(self._site, environ, start_response, proxied)
        if answer is not None:
            return answer
        return (self._proxied if proxied else self._direct)(environ, start_response)


# Everything request.scheme, request.host and request.script_root are read from.
_BASE_FROM = ("wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "SCRIPT_NAME")


# A feed served from this process's memory is answered here, before Flask's routing and
# request context (more than the view's own work on such a request): by the route the view
# recorded for the same environ values, while its memo is fresh. Anything else (a memo due
# for its version check, a reload, an unknown route, a method other than GET and HEAD) goes
# through Flask as before.
_ROUTE = "aggregator.route"
_ROUTE_FROM = ("PATH_INFO", "REQUEST_URI", "RAW_URI", "QUERY_STRING", *_BASE_FROM)
_FORWARDED = ("HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT")


def _route(environ: WSGIEnvironment, proxied: bool) -> tuple[object, ...]:
    """Everything that decides which feed a GET answers with, and its links: the path as
    sent and decoded, the query, where the request came to, and what a trusted proxy says."""
    route = tuple(environ.get(name) for name in _ROUTE_FROM)
    if proxied:
        return (*route, *(environ.get(name) for name in _FORWARDED))
    return route


def _answer_kept(
    served: Site, environ: WSGIEnvironment, start_response: StartResponse, proxied: bool
) -> Iterable[bytes] | None:
    """The answer `_feed` would give from a fresh memo, counted as it counts it; else None."""
    method = environ.get("REQUEST_METHOD")
    if method != "GET" and method != "HEAD":
        return None
    route = environ[_ROUTE] = _route(environ, proxied)
    routes = served.services.routes
    kept = routes.get(route)
    if kept is None:
        return None
    found = environ[_SERVICES] = served.current()  # the reload check every request makes
    if found.routes is not routes:
        return None  # reloaded: the names the route was read by may have gone
    memo = found.memos.get(kept[0])
    if memo is None or time.monotonic() - memo.checked > found.version_check:
        return None
    metrics.CACHE_HIT.inc()
    if _answered(memo, environ, kept[1]):
        start_response(memo.unchanged[0], list(memo.unchanged[1]))
        return []
    start_response(memo.whole[0], list(memo.whole[1]))
    return [] if method == "HEAD" else [memo.body]


def _address_in(
    address: object, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return False  # a Unix socket, or no address at all
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 from a dual-stack socket is 10.0.0.1
    return any(ip in network for network in networks)


VERSION_CHECK = 1.0
RELOAD_CHECK = 1.0


def create_app(
    config: Config | None = None,
    store: Store | None = None,
    *,
    load_config: Callable[[], Config] | None = None,
    version_check: float = VERSION_CHECK,
    reload_check: float = RELOAD_CHECK,
) -> Flask:
    """The web app. A feed is served from this process's memory for up to `version_check`
    seconds before Redis is asked whether it changed. With `load_config` (the environment's
    feeds.yaml when no `config` is given either), `aggregator reload` reaches this app within
    `reload_check` seconds."""
    metrics.made()  # listed at /metrics from the start (and in gunicorn's files)
    app = Flask(__name__)
    if config is None:
        load_config = load_config or config_module.from_environ
        config = load_config()
    if store is None:
        store, embedded = open_store(config)
        if embedded is not None:
            atexit.register(embedded.stop)
    found = Site(_new_services(config, store, version_check), load_config, reload_check)
    app.extensions["aggregator"] = found
    app.jinja_env.globals["media"] = {f: MEDIA_TYPES[f].split(";")[0] for f in FORMATS}
    app.jinja_env.globals["formats"] = FORMATS
    app.url_map.converters["tail"] = _Tail
    app.register_blueprint(bp)
    app.register_error_handler(StorageError, _storage_unavailable)
    app.register_error_handler(HTTPException, _plain_error)
    app.wsgi_app = _ForwardedBy(app.wsgi_app, found)  # type: ignore[method-assign]
    return app


def _plain_error(err: HTTPException) -> Response:
    return Response(
        f"{err.code} {err.name}: {err.description}\n", status=err.code, mimetype="text/plain"
    )


def _storage_unavailable(err: StorageError) -> Response:
    metrics.REDIS_ERRORS.inc()
    return Response(
        f"503 Service Unavailable: {err}\n",
        status=503,
        mimetype="text/plain",
        headers={"Retry-After": "5"},
    )


def _page() -> int:
    raw = request.args.get("page", "1")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        abort(400, "page must be a whole number from 1")
    return value


def _limit() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        abort(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    if value < 1:
        abort(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return min(value, MAX_LIMIT)


def _format(fmt: str) -> Format:
    """`fmt` as a feed format, or a 404 naming the formats there are."""
    if fmt not in FORMATS:
        abort(404, f"unknown feed format {fmt!r}: use .atom, .rss or .json")
    return fmt


def _exists(found: Services, kind: keys.Kind, name: str) -> bool:
    """A tag or category in feeds.yaml, or one with entries stored (from before a reload)."""
    names = found.tags if kind == "tag" else found.categories
    return name in names or found.store.count(kind, name) > 0


# What werkzeug makes of a request's query string and of its scheme, host and mount point,
# kept by the environ values they come from: reading them through `request` was most of what
# a cached feed's view cost. Bounded by clearing: the keys are whatever clients send.
_KEPT = 1024
_paging_kept: dict[str, tuple[int, int]] = {}
_bases_kept: dict[tuple[object, ...], str] = {}
K = TypeVar("K")
V = TypeVar("V")


def _keep(table: dict[K, V], key: K, value: V) -> V:
    """`table[key] = value`, the table emptied first when it holds `_KEPT`."""
    if len(table) >= _KEPT:
        table.clear()
    table[key] = value
    return value


def _paging(environ: WSGIEnvironment) -> tuple[int, int]:
    """This request's (page, limit), or a 400 saying what is wrong with them."""
    query = environ.get("QUERY_STRING")
    if not query:  # most readers ask for the first page at the default size
        return 1, DEFAULT_LIMIT
    found = _paging_kept.get(query)
    if found is None:
        found = _keep(_paging_kept, query, (_page(), _limit()))
    return found


def base_url() -> str:
    """Where links point: settings.public_url, else the scheme, host and port this request
    came to (and the prefix the app is mounted under)."""
    return _base(services(), request.environ)


def _base(found: Services, environ: WSGIEnvironment) -> str:
    configured = found.config.settings.public_url
    if configured:
        return configured.rstrip("/")
    key = tuple(environ.get(name) for name in _BASE_FROM)
    base = _bases_kept.get(key)
    if base is None:
        scheme = request.scheme if request.scheme in ("http", "https") else "http"
        # Werkzeug gives "" for a Host header with characters no host name has.
        host = request.host or _server_host(environ)
        base = _keep(_bases_kept, key, f"{scheme}://{host}{quote(request.script_root)}")
    return base


def _server_host(environ: WSGIEnvironment) -> str:
    name = str(environ.get("SERVER_NAME") or "localhost")
    port = str(environ.get("SERVER_PORT") or "")
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    default = "443" if request.scheme == "https" else "80"
    return name if port in ("", default) else f"{name}:{port}"


def _info(
    kind: keys.Kind, name: str, page: int = 1, has_next: bool = False, limit: int | None = None
) -> FeedInfo:
    cfg = services().config
    settings = cfg.settings
    if kind == "all":
        title, description = "All entries", "Every entry from every source"
        path, html_path = "/all", "/"
    else:
        meta = (cfg.tags if kind == "tag" else cfg.categories).get(name)
        title = cfg.tag_title(name) if kind == "tag" else cfg.category_title(name)
        description = (meta.description if meta else None) or title
        path = html_path = urls.name_path("tags" if kind == "tag" else "categories", name)
    return FeedInfo(
        title=title,
        description=description,
        base_url=base_url(),
        path=path,
        html_path=html_path,
        hub=settings.websub_hub,
        page=page,
        has_next=has_next,
        limit=limit if limit != DEFAULT_LIMIT else None,
    )


def _max_age(kind: keys.Kind, name: str) -> int:
    """Readers need not ask again sooner than the feed's fastest source can change it."""
    cfg = services().config
    sources = [
        s
        for s in cfg.enabled_sources
        if kind == "all"
        or (kind == "tag" and name in s.tags)
        or (kind == "category" and s.category_name == name)
    ]
    shortest = min((cfg.interval(s) for s in sources), default=MAX_AGE_CAP)
    return int(min(shortest, MAX_AGE_CAP))


def _feed(
    environ: WSGIEnvironment,
    found: Services,
    kind: keys.Kind,
    name: str,
    fmt: str,
    routed: bool = True,
) -> Response:
    """The feed as a response. `routed`: the request's path names this feed whatever is
    stored (so `_answer_kept` may answer the same request from the memo without asking)."""
    feed_format = _format(fmt)
    page, limit = _paging(environ)
    base = _base(found, environ)
    key = (kind, name, feed_format, page, limit, base)
    now = time.monotonic()
    memo = found.memos.get(key)
    if memo is None or now - memo.checked > found.version_check:
        # At most one Redis round trip a second per feed and web process while nothing
        # changes; a new version is rendered once and shared through Redis.
        where = hashlib.blake2b(base.encode("utf-8"), digest_size=6).hexdigest()
        variant = f"{feed_format}:{page}:{limit}:{found.fingerprint}:{where}"
        # One entry more than asked tells whether an older page exists (RFC 5005 "next").
        read = found.store.read_feed(
            kind, name, variant, memo.version if memo else None, (page - 1) * limit, limit + 1
        )
        if memo is None or memo.version != read.version:
            memo = _memo(kind, name, feed_format, page, limit, now, variant, read)
        else:
            memo = dataclasses.replace(memo, checked=now)
            metrics.CACHE_HIT.inc()
        found.memos.put(key, memo)
    else:
        metrics.CACHE_HIT.inc()
    route = environ.get(_ROUTE)
    if route is not None and routed:
        _keep(found.routes, route, (key, feed_format))
    return _response(memo.body, memo.headers, _answered(memo, environ, feed_format))


def _answered(memo: Memo, environ: WSGIEnvironment, fmt: Format) -> bool:
    """Whether the answer is a 304, counted as a feed request of its format and status."""
    unchanged = _not_modified(memo, environ)
    metrics.feed_answered(fmt, 304 if unchanged else 200)
    return unchanged


def _response(body: bytes, headers: Sequence[tuple[str, str]], unchanged: bool) -> Response:
    if unchanged:
        response = Response(status=304, headers=headers)
        del response.headers["Content-Type"]
        return response
    return Response(body, headers=headers)


def _wsgi(
    body: bytes, headers: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, tuple[tuple[str, str], ...]], tuple[str, tuple[tuple[str, str], ...]]]:
    """The WSGI status and headers werkzeug gives `_response`'s 200 and 304 (which loses
    the entity headers, RFC 9110 §15.4.5), made by hand: werkzeug's objects cost more than
    the rest of the memo."""
    unchanged = [(k, v) for k, v in headers if k != "Content-Type"]
    remove_entity_headers(unchanged)
    whole = (*headers, ("Content-Length", str(len(body))))
    return ("200 OK", whole), ("304 NOT MODIFIED", tuple(unchanged))


def _not_modified(memo: Memo, environ: WSGIEnvironment) -> bool:
    """RFC 9110 §13.1: If-None-Match (weak comparison) decides when sent; else
    If-Modified-Since against the newest entry. (Werkzeug's make_conditional does this and
    more, at a cost that showed on every cached request.)"""
    tags = environ.get("HTTP_IF_NONE_MATCH")  # what request.headers reads, without building it
    if tags is not None:
        return parse_etags(tags).contains_weak(memo.etag)
    since = environ.get("HTTP_IF_MODIFIED_SINCE")
    if since is None or memo.modified is None:
        return False
    when = parse_date(since)
    return when is not None and memo.modified <= when


def _memo(
    kind: keys.Kind,
    name: str,
    fmt: Format,
    page: int,
    limit: int,
    now: float,
    variant: str,
    read: FeedRead,
) -> Memo:
    """The feed as of now: from the rendering cached in Redis for the index's current version,
    else rendered here and cached there for every other web process. Renderings differ by the
    base URL their links start with (`variant`)."""
    cached = read.cached
    if cached is None:
        found = read.entries or []
        if page > 1 and not found:
            abort(404, f"page {page} is past the end of this feed")
        info = _info(kind, name, page, len(found) > limit, limit)
        # Entries this process rendered before, for this format and base URL, are joined as
        # they were written; only the others are decoded and written.
        made = render_stored(fmt, info, found[:limit], site(current_app).fragments)
        when = http_date(made.modified) if made.modified else ""
        cached = Rendered(read.version, made.body, made.etag, when)
        # Written before the answer: a process asked next, even by the same reader, finds it.
        services().store.cache_render(kind, name, variant, cached)
        metrics.FEED_RENDERS.labels(fmt).inc()
        metrics.CACHE_MISS.inc()
    else:
        metrics.CACHE_HIT.inc()
    assert cached.body is not None
    headers = {
        "Content-Type": MEDIA_TYPES[fmt],
        "ETag": f'"{cached.etag}"',
        "Cache-Control": f"public, max-age={_max_age(kind, name)}",
    }
    if cached.last_modified:
        headers["Last-Modified"] = cached.last_modified
    hub = services().config.settings.websub_hub
    if hub:
        # WebSub §4: the hub and the topic in Link headers, which subscribers read first.
        self_url = _info(kind, name, page, limit=limit).url(fmt, page)
        headers["Link"] = f'<{hub}>; rel="hub", <{self_url}>; rel="self"'
    modified = parse_date(cached.last_modified) if cached.last_modified else None
    pairs = tuple(headers.items())
    whole, unchanged = _wsgi(cached.body, pairs)
    return Memo(cached.version, cached.body, pairs, now, cached.etag, modified, whole, unchanged)


@bp.get("/all.<fmt>")
def all_feed(fmt: str) -> Response:
    environ = request.environ
    return _feed(environ, _services(environ), "all", "", fmt)


# One rule per folder takes the whole rest of the path: a name may hold dots and slashes, and
# only the path as sent tells `%2E` from `.` (aggregator/urls.py). No merging of slashes and no
# redirects: `a//b` and `a/` are names too.
@bp.get("/tags/<tail:tail>", merge_slashes=False, strict_slashes=False)
def tag_feed_or_page(tail: str) -> Response | str:
    return _named("tag", "/tags/")


@bp.get("/categories/<tail:tail>", merge_slashes=False, strict_slashes=False)
def category_feed_or_page(tail: str) -> Response | str:
    return _named("category", "/categories/")


def _named(kind: keys.Kind, prefix: str) -> Response | str:
    """The feed or the page the path names: the first reading of it that names a known tag
    (or category), so a path typed with literal dots still finds its name."""
    environ = request.environ
    found = _services(environ)
    readings = _readings(
        prefix,
        environ.get("SCRIPT_NAME"),
        environ.get("PATH_INFO"),
        environ.get("REQUEST_URI"),
        environ.get("RAW_URI"),
    )
    names = found.tags if kind == "tag" else found.categories
    for index, reading in enumerate(readings):
        if _exists(found, kind, reading.name):
            if reading.fmt is None:
                return _listing(kind, reading.name)
            # The first reading, named in feeds.yaml: no stored count decided it.
            routed = index == 0 and reading.name in names
            return _feed(environ, found, kind, reading.name, reading.fmt, routed)
    split = urls.extension(urls.raw_tail(environ, prefix))
    if split is not None and _exists(found, kind, split[0]):
        _format(split[1])  # a known name with an unknown format: say which formats there are
    abort(404, f"no {kind} named {readings[0].name!r}")


@functools.lru_cache(maxsize=_KEPT)
def _readings(
    prefix: str, script: object, path: object, request_uri: object, raw_uri: object
) -> tuple[urls.Reading, ...]:
    """`urls.readings` of the request path after `prefix`, kept by the environ values it is
    read from (`urls.raw_tail`): pure, and a cost on every request otherwise."""
    given = {
        "SCRIPT_NAME": script,
        "PATH_INFO": path,
        "REQUEST_URI": request_uri,
        "RAW_URI": raw_uri,
    }
    environ = {k: v for k, v in given.items() if v is not None}  # as absent as they were
    return tuple(urls.readings(urls.raw_tail(environ, prefix), FORMATS))


@dataclass(frozen=True, slots=True)
class Listed:
    """One tag or category as the index page shows it."""

    name: str
    title: str
    description: str
    count: int
    newest: datetime | None
    info: FeedInfo


def _listed(kind: keys.Kind, names: list[str]) -> list[Listed]:
    cfg = services().config
    summaries = services().store.summaries([(kind, n) for n in names])
    out = []
    for name, (count, newest) in zip(names, summaries, strict=True):
        info = _info(kind, name)
        meta = (cfg.tags if kind == "tag" else cfg.categories).get(name)
        description = (meta.description if meta else None) or ""
        out.append(Listed(name, info.title, description, count, newest, info))
    return out


@bp.get("/")
def index() -> str:
    cfg, store = services().config, services().store
    return render_template(
        "index.html",
        tags=_listed("tag", cfg.tag_names()),
        categories=_listed("category", cfg.category_names()),
        all_info=_info("all", ""),
        entries=store.entries("all", limit=20),
    )


def _listing(kind: keys.Kind, name: str) -> str:
    page, limit = _page(), _limit()
    found = services().store.entries(kind, name, limit=limit + 1, offset=(page - 1) * limit)
    if page > 1 and not found:
        abort(404, f"page {page} is past the end of this list")
    return render_template(
        "listing.html",
        info=_info(kind, name, page, len(found) > limit, limit),
        entries=found[:limit],
    )


@bp.get("/entries/<entry_id>")
def entry_page(entry_id: str) -> str:
    cfg = services().config
    entry = services().store.entry(entry_id)
    if entry is None:
        abort(404, f"no entry {entry_id!r}")
    return render_template(
        "entry.html",
        entry=entry,
        category_info=_info("category", entry.category),
        back=BACK,
        category_title=cfg.category_title(entry.category),
        home_title=HOME_TITLE,
    )


@bp.get("/sources.opml")
def sources_opml() -> Response:
    cfg, store = services().config, services().store
    site_url = cfg.settings.public_url or base_url() + "/"
    body = opml.render(cfg, opml.known_feeds(cfg, store), site_url)
    response = Response(body, content_type=opml.MEDIA_TYPE)
    response.set_etag(hashlib.sha256(body).hexdigest()[:32])
    response.make_conditional(request)
    return response


@bp.get("/healthz")
def healthz() -> Response:
    return Response("ok\n", mimetype="text/plain")


@bp.get("/readyz")
def readyz() -> Response:
    # The store itself, not `services()`: a probe must answer at once, and the reload check
    # that `services()` may make would wait out a cluster's failover before saying anything.
    if site(current_app).store.ping():
        return Response("ready\n", mimetype="text/plain")
    return Response("redis unreachable\n", status=503, mimetype="text/plain")


@bp.get("/metrics")
def metrics_text() -> Response:
    """This process's metrics; under gunicorn with PROMETHEUS_MULTIPROC_DIR, every worker's,
    summed (aggregator/metrics.py)."""
    body, media_type = metrics.exposition()
    return Response(body, content_type=media_type)


# --- WebSub callback: /websub/<source>/<token> ---------------------------------------------
# The web process only answers the hub: it confirms or refuses a verification of intent and
# hands a signed distribution to Redis; workers do the rest (aggregator/push.py).


@bp.get("/websub/<source>/<token>")
def websub_verify(source: str, token: str) -> Response:
    """Verification of intent (WebSub §5.3) and denial (§5.2): the challenge echoed with 200
    only for the mode, topic and token of a request of ours; else 404."""
    params = {k: v for k, v in request.args.items() if k.startswith("hub.")}
    now = time.time()
    verdicts: list[websub.Verdict] = []

    def change(current: dict[str, str]) -> dict[str, str] | None:
        verdict = websub.verify(Subscription.from_fields(current), token, params, now)
        verdicts[:] = [verdict]
        return verdict.record.to_fields() if verdict.record is not None else None

    store_module.change_subscription(services().store, source, change)
    verdict = verdicts[0] if verdicts else websub.NOT_OURS
    if verdict.status == 200 and verdict.record is not None:
        log.info("websub %s: %s verified", source, params.get("hub.mode", ""))
    return Response(verdict.body, status=verdict.status, mimetype="text/plain")


@bp.post("/websub/<source>/<token>")
def websub_distribution(source: str, token: str) -> Response:
    """Content distribution (WebSub §7): a body signed with the subscription's secret goes to
    Redis for a worker, and is answered at once. A bad or missing signature is acknowledged
    and ignored (§8: "subscribers MUST still return a 2xx success response"); an unknown or
    old token is 410 Gone, which tells the hub the subscription is over (§7); a body over
    max_bytes is 413. None of them stores anything."""
    found = services()
    limit = found.config.settings.max_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        return Response("413 body over max_bytes\n", status=413, mimetype="text/plain")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        return Response("413 body over max_bytes\n", status=413, mimetype="text/plain")
    (raw,) = store_module.subscriptions(found.store, [source])
    sub = Subscription.from_fields(raw)
    why = websub.refusal(sub, token, request.headers.get("X-Hub-Signature", ""), body)
    if why == "unknown subscription":
        return Response("410 no such subscription\n", status=410, mimetype="text/plain")
    if why is not None:
        log.warning("websub %s: distribution ignored: %s", source, why)
        return Response(status=202)
    store_module.push_distribution(
        found.store,
        Distribution(source, token, request.headers.get("Content-Type", ""), time.time(), body),
    )
    return Response(status=202)
