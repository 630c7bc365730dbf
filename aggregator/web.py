"""Web: the merged feeds, the HTML pages and the health endpoints. The only module that imports
Flask. It reads the store and renders; it never fetches.

`create_app()` does nothing at import time: it reads the configuration (from the environment
unless given one), opens the store, and attaches both under `app.extensions["aggregator"]`.
Production: `gunicorn 'aggregator.web:create_app()'`.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from urllib.parse import quote

from flask import Blueprint, Flask, Response, abort, current_app, render_template, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.http import http_date, parse_date, parse_etags

from aggregator import __version__, keys, opml
from aggregator import config as config_module
from aggregator.config import Config
from aggregator.errors import StorageError
from aggregator.export import BACK, HOME_TITLE
from aggregator.render import FORMATS, MEDIA_TYPES, FeedInfo, Format, last_modified, render
from aggregator.services import open_store
from aggregator.store import Rendered, Store

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_AGE_CAP = 3600  # Cache-Control max-age of a feed: its sources' shortest interval, ≤ 1 h

FEED_REQUESTS = Counter("aggregator_feed_requests", "Feed requests served", ["format", "status"])
FEED_RENDERS = Counter("aggregator_feed_renders", "Feeds rendered (cache misses)", ["format"])

bp = Blueprint("aggregator", __name__)


@dataclass(frozen=True, slots=True)
class Memo:
    """A rendered feed held by this web process: its bytes and headers, the index version it
    shows, and when that version was last checked against Redis."""

    version: int
    body: bytes
    headers: dict[str, str]
    checked: float
    etag: str
    modified: datetime | None  # the Last-Modified header's time (whole seconds)


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
    config: Config
    store: Store
    fingerprint: str  # of everything in the config that shows in a rendered feed
    version_check: float  # seconds a process serves a feed before asking Redis if it changed
    memos: Memos
    tags: frozenset[str]
    categories: frozenset[str]


def _fingerprint(config: Config) -> str:
    """Cached renderings are keyed by this, so a changed title or public_url is never served
    from a rendering made before the change."""
    shown = {
        "public_url": config.settings.public_url,
        "hub": config.settings.websub_hub,
        "tags": {k: v.model_dump() for k, v in config.tags.items()},
        "categories": {k: v.model_dump() for k, v in config.categories.items()},
        "version": __version__,
    }
    blob = json.dumps(shown, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def services() -> Services:
    return cast(Services, current_app.extensions["aggregator"])


VERSION_CHECK = 1.0


def create_app(
    config: Config | None = None,
    store: Store | None = None,
    *,
    version_check: float = VERSION_CHECK,
) -> Flask:
    """The web app. A feed is served from this process's memory for up to `version_check`
    seconds before Redis is asked whether it changed."""
    app = Flask(__name__)
    if config is None:
        config = config_module.from_environ()
    if store is None:
        store, embedded = open_store(config)
        if embedded is not None:
            atexit.register(embedded.stop)
    app.extensions["aggregator"] = Services(
        config,
        store,
        _fingerprint(config),
        version_check,
        Memos(),
        frozenset(config.tag_names()),
        frozenset(config.category_names()),
    )
    app.jinja_env.globals["media"] = {f: MEDIA_TYPES[f].split(";")[0] for f in FORMATS}
    app.jinja_env.globals["formats"] = FORMATS
    app.register_blueprint(bp)
    app.register_error_handler(StorageError, _storage_unavailable)
    app.register_error_handler(HTTPException, _plain_error)
    return app


def _plain_error(err: HTTPException) -> Response:
    return Response(
        f"{err.code} {err.name}: {err.description}\n", status=err.code, mimetype="text/plain"
    )


def _storage_unavailable(err: StorageError) -> Response:
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
    if fmt not in FORMATS:
        abort(404, f"unknown feed format {fmt!r}: use .atom, .rss or .json")
    return fmt


def _known(kind: keys.Kind, name: str) -> None:
    found = services()
    names = found.tags if kind == "tag" else found.categories
    if name not in names and found.store.count(kind, name) == 0:
        abort(404, f"no {kind} named {name!r}")


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
        folder = "tags" if kind == "tag" else "categories"
        path = html_path = f"/{folder}/{quote(name, safe='')}"
    return FeedInfo(
        title=title,
        description=description,
        public_url=settings.public_url,
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


def _feed(kind: keys.Kind, name: str, fmt: str) -> Response:
    feed_format = _format(fmt)
    # Most readers ask for the first page at the default size: no query string to parse.
    page, limit = (_page(), _limit()) if request.query_string else (1, DEFAULT_LIMIT)
    found = services()
    key = (kind, name, feed_format, page, limit)
    now = time.monotonic()
    memo = found.memos.get(key)
    if memo is None or now - memo.checked > found.version_check:
        # At most one Redis round trip a second per feed and web process while nothing
        # changes; a new version is rendered once and shared through Redis.
        if kind != "all":
            _known(kind, name)
        version = found.store.index_version(kind, name)
        if memo is None or memo.version != version:
            memo = _memo(kind, name, feed_format, page, limit, now)
        else:
            memo = dataclasses.replace(memo, checked=now)
        found.memos.put(key, memo)
    if _not_modified(memo):
        response = Response(status=304, headers=memo.headers)
        del response.headers["Content-Type"]
    else:
        response = Response(memo.body, headers=memo.headers)
    FEED_REQUESTS.labels(feed_format, str(response.status_code)).inc()
    return response


def _not_modified(memo: Memo) -> bool:
    """RFC 9110 §13.1: If-None-Match (weak comparison) decides when sent; else
    If-Modified-Since against the newest entry. (Werkzeug's make_conditional does this and
    more, at a cost that showed on every cached request.)"""
    tags = request.headers.get("If-None-Match")
    if tags is not None:
        return parse_etags(tags).contains_weak(memo.etag)
    since = request.headers.get("If-Modified-Since")
    if since is None or memo.modified is None:
        return False
    when = parse_date(since)
    return when is not None and memo.modified <= when


def _memo(kind: keys.Kind, name: str, fmt: Format, page: int, limit: int, now: float) -> Memo:
    """The feed as of now: from the rendering cached in Redis for the index's current version,
    else rendered here and cached there for every other web process."""
    store = services().store
    variant = f"{fmt}:{page}:{limit}:{services().fingerprint}"
    cached = store.cached_render(kind, name, variant)
    if cached.body is None:
        # One entry more than asked tells whether an older page exists (RFC 5005 "next").
        found = store.entries(kind, name, limit=limit + 1, offset=(page - 1) * limit)
        if page > 1 and not found:
            abort(404, f"page {page} is past the end of this feed")
        entries = found[:limit]
        body = render(fmt, _info(kind, name, page, len(found) > limit, limit), entries)
        modified = last_modified(entries)
        cached = Rendered(
            cached.version,
            body,
            # The ETag is a hash of the bytes: identical data gives it on every worker.
            hashlib.sha256(body).hexdigest()[:32],
            http_date(modified) if modified else "",
        )
        store.cache_render(kind, name, variant, cached)
        FEED_RENDERS.labels(fmt).inc()
    assert cached.body is not None
    headers = {
        "Content-Type": MEDIA_TYPES[fmt],
        "ETag": f'"{cached.etag}"',
        "Cache-Control": f"public, max-age={_max_age(kind, name)}",
    }
    if cached.last_modified:
        headers["Last-Modified"] = cached.last_modified
    modified = parse_date(cached.last_modified) if cached.last_modified else None
    return Memo(cached.version, cached.body, headers, now, cached.etag, modified)


@bp.get("/all.<fmt>")
def all_feed(fmt: str) -> Response:
    return _feed("all", "", fmt)


@bp.get("/tags/<path:name>.<fmt>")
def tag_feed(name: str, fmt: str) -> Response:
    return _feed("tag", name, fmt)


@bp.get("/categories/<path:name>.<fmt>")
def category_feed(name: str, fmt: str) -> Response:
    return _feed("category", name, fmt)


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


@bp.get("/tags/<path:name>")
def tag_page(name: str) -> str:
    return _listing("tag", name)


@bp.get("/categories/<path:name>")
def category_page(name: str) -> str:
    return _listing("category", name)


def _listing(kind: keys.Kind, name: str) -> str:
    _known(kind, name)
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
    body = opml.render(cfg, opml.known_feeds(cfg, store))
    response = Response(body, content_type=opml.MEDIA_TYPE)
    response.set_etag(hashlib.sha256(body).hexdigest()[:32])
    response.make_conditional(request)
    return response


@bp.get("/healthz")
def healthz() -> Response:
    return Response("ok\n", mimetype="text/plain")


@bp.get("/readyz")
def readyz() -> Response:
    if services().store.ping():
        return Response("ready\n", mimetype="text/plain")
    return Response("redis unreachable\n", status=503, mimetype="text/plain")


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
