"""The `aggregator` command (also `python -m aggregator`): see DESIGN.md for each subcommand.

Each command imports what it uses when it runs, not when this module loads: `aggregator --help`
or `status` should not pay for the HTTP client, the parse pool, the scheduler and the exporters
(cron runs these commands, and a person waits for them)."""

from __future__ import annotations

import atexit
import functools
import gc
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import click

from aggregator import __version__, table

if TYPE_CHECKING:
    from rich.console import Console

    from aggregator.config import Config, Source
    from aggregator.store import Store, WorkerReport
    from aggregator.update import Outcome
    from aggregator.web import Site


@functools.cache
def _out() -> Console:
    from rich.console import Console

    # Piped or captured output is not squeezed into 80 columns: tables stay readable in a file.
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


@functools.cache
def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _write(text: str) -> None:
    """Plain text to standard output, as it is (no markup, no wrapping)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _fail(message: str, code: int = 1) -> NoReturn:
    _err().print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    sys.exit(code)


def _config() -> Config:
    from aggregator import config as config_module
    from aggregator.errors import ConfigError

    try:
        return config_module.from_environ()
    except ConfigError as err:
        _err().print(f"{err.path}: {len(err.problems)} problem(s)", highlight=False)
        for problem in err.problems:
            _err().print(f"  {problem}", highlight=False, markup=False)
        sys.exit(1)


@contextmanager
def _store(config: Config, *, wait: bool = False) -> Iterator[Store]:
    """The store `config` names; with `wait` (a long-running worker), Redis out of reach is
    waited for, said in a log line now and then, rather than a failure."""
    from aggregator.errors import AggregatorError
    from aggregator.services import open_store

    for attempt in itertools.count():
        try:
            store, embedded = open_store(config)
            if not wait or store.ping():
                break
            store.close()
            if embedded is not None:
                embedded.stop()
            problem = f"Redis at {config.settings.redis_url or config.data_dir} does not answer"
        except AggregatorError as err:
            if not wait:
                _fail(str(err))
            problem = str(err)
        _wait_for_redis(problem, attempt)
    # The imports are done (see _Commands.invoke). Their objects live as long as the process:
    # frozen, no collection walks them again (the first one after gc.enable() would walk every
    # one of them, 25 ms of `status`), and forked pollers share their pages (gc.freeze's docs).
    gc.freeze()
    gc.enable()
    try:
        yield store
    finally:
        store.close()
        if embedded is not None:
            embedded.stop()


def _wait_for_redis(problem: str, attempt: int) -> None:
    """Say why the worker cannot start yet, and wait: 1 s, doubling up to 30 s."""
    import logging
    import time

    wait = min(30.0, 2.0**attempt)
    logging.getLogger("aggregator.worker").warning("%s; trying again in %.0f s", problem, wait)
    time.sleep(wait)


def _logging(*, debug: bool = False) -> None:
    """Log lines to stderr at INFO (a command called before keeps its choice); with `debug`,
    this package's DEBUG lines too: the detail behind each one-line failure (the HTTP
    client's chain of causes, a failed command's traceback)."""
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every tick at INFO
    if debug:
        logging.getLogger("aggregator").setLevel(logging.DEBUG)


@functools.cache
def _freeze_at_exit() -> None:
    """At exit, the interpreter's own collections over every object the imports made took
    50 ms of a short command (a sixth of `aggregator status`): frozen first (gc.freeze), they
    are skipped. Nothing is lost: the process's memory goes back to the system as it ends."""
    atexit.register(gc.freeze)


class _Commands(click.Group):
    """The command group: a failure this package names (Redis out of reach, a file it cannot
    write) ends the command with one line on stderr and exit 1, never a traceback; the
    traceback goes to the debug log."""

    def invoke(self, ctx: click.Context) -> Any:
        from aggregator.errors import AggregatorError

        # Importing a command's stack (pydantic, redis-py) and reading feeds.yaml make a few
        # hundred thousand objects and no garbage: the cyclic collector's passes over them
        # were about 5 % of `aggregator status`. It runs again once the store is open
        # (`_store`), before any polling or serving, or when the command ends.
        gc.disable()
        _freeze_at_exit()
        try:
            return super().invoke(ctx)
        except AggregatorError as err:
            import logging

            logging.getLogger(__name__).debug("%s failed", ctx.invoked_subcommand, exc_info=True)
            _fail(_escape(str(err)))
        finally:
            gc.enable()


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="aggregator")
@click.option(
    "--debug",
    is_flag=True,
    help="Also log the detail behind each failure (causes, tracebacks) to stderr.",
)
def main(debug: bool) -> None:
    """Poll the feeds listed in feeds.yaml and republish them merged per tag.

    The configuration file is ./feeds.yaml, or the path in AGGREGATOR_CONFIG;
    AGGREGATOR_REDIS_URL overrides settings.redis_url.
    """
    if debug:
        _logging(debug=True)


@main.command()
def check() -> None:
    """Validate feeds.yaml; exit 1 and list the problems."""
    config = _config()
    enabled = len(config.enabled_sources)
    _out().print(
        f"{config.path}: OK, {len(config.sources)} sources ({enabled} enabled), "
        f"{len(config.category_names())} categories, {len(config.tag_names())} tags",
        highlight=False,
    )


@main.command()
@click.argument("names", nargs=-1)
def poll(names: tuple[str, ...]) -> None:
    """Poll now, once: every enabled source, or the NAMES given."""
    config = _config()
    known = {s.name for s in config.sources}
    unknown = [n for n in names if n not in known]
    if unknown:
        _fail(f"no source named {', '.join(map(repr, unknown))} in {config.path}", 2)
    sources = (
        [config.source(n) for n in dict.fromkeys(names)] if names else list(config.enabled_sources)
    )
    if not sources:
        _fail(f"no enabled sources in {config.path}")
    import asyncio

    from aggregator import metrics

    metrics.stop_counting()  # no one can read this command's counts: it serves no /metrics

    with _store(config) as store:
        outcomes = asyncio.run(_poll_all(config, store, sources))
    rows = [
        (
            o.source,
            "not modified" if o.not_modified else (f"HTTP {o.status}" if o.ok else o.error),
            *(str(getattr(o, column)) for column in _COUNTS),
            f"{o.seconds:.2f}s",
        )
        for o in outcomes
    ]
    headers = ("source", "status", *_COUNTS, "time")
    right = frozenset(range(2, len(headers)))
    _write(table.render(f"Polled {len(outcomes)} sources", headers, rows, right))
    failed = sum(not o.ok for o in outcomes)

    def total(column: str) -> int:
        return sum(getattr(o, column) for o in outcomes)

    # "new" is what subscribers can see now; what else the documents held is said apart.
    _write(
        f"{len(outcomes) - failed} ok, {failed} failed, {total('new')} new entries, "
        f"{total('merged')} merged, {total('filtered')} filtered, "
        f"{total('cut')} cut by max_entries\n"
    )
    if failed == len(outcomes):
        sys.exit(1)


# The poll table's count columns: Outcome's fields of the same names.
_COUNTS = ("entries", "new", "updated", "merged", "filtered", "cut")


async def _poll_all(config: Config, store: Store, sources: list[Source]) -> list[Outcome]:
    """Every source polled once: in poller processes when there are enough sources to keep
    more than one core busy (aggregator/pollers.py), else here."""
    from aggregator.pollers import Pollers, processes_for

    processes = processes_for(len(sources))
    if processes > 1 and store.address is not None:
        # Started before the progress bar's thread: with no other thread running, the
        # pollers are forked from this process, their imports already done.
        with Pollers(config, store.address, processes) as pollers, _progress(sources) as advance:
            return await pollers.poll_many(sources, advance)
    from aggregator.bounded import ParsePool
    from aggregator.fetch import Fetcher
    from aggregator.update import PARSE_MODULES, Updater

    # The parse pool starts its processes with the first changed document: a poll whose
    # documents all answer 304 never starts them. (Not scheduler.parse_pool: importing the
    # scheduler loads APScheduler and the push stack, a third of a one-source poll's time.)
    pool = ParsePool(max_workers=os.cpu_count() or 1, preload=PARSE_MODULES)
    with pool as executor, _progress(sources) as advance:
        async with Fetcher(config.settings) as fetcher:
            updater = Updater(config, store, fetcher, executor=executor)
            return await updater.poll_many(sources, advance)


@contextmanager
def _progress(sources: list[Source]) -> Iterator[Callable[[Outcome], None]]:
    """A progress bar on a terminal, for more than one source; elsewhere (cron, a pipe) or
    for one source, nothing: rich's progress costs a short command more than it shows."""
    if len(sources) < 2 or not sys.stdout.isatty():
        yield lambda outcome: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_out(), transient=True) as bar:
        task = bar.add_task("polling", total=len(sources))
        yield lambda outcome: bar.update(task, advance=1, description=outcome.source)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@main.command()
def status() -> None:
    """One row per source: last poll, HTTP status, entries, next due, last error."""
    config = _config()
    with _store(config) as store:
        states = store.source_states([s.name for s in config.sources])
        workers = store.workers_seen(datetime.now(UTC))
        # websub decides the notes from the stored records: the push stack (HTTP client,
        # updater) is not status's to load.
        from aggregator import store as store_module
        from aggregator import websub

        # Only the sources that want push or have a record (most have neither): a thousand
        # empty reads cost redis-py more than the notes are worth.
        recorded = set(store_module.subscribed_names(store))
        names = [s.name for s in config.sources if s.websub or s.name in recorded]
        records = dict(zip(names, store_module.subscriptions(store, names), strict=True))
        pushes = websub.status_notes(config, records)
    rows = []
    for source, state in zip(config.sources, states, strict=True):
        notes = []
        if state.fetch_url(source.url) != source.url:
            notes.append(f"moved permanently: {source.url} → {state.moved_to}")
        if state.failures:
            notes.append(f"{state.failures} failure(s) in a row: {state.last_error}")
        elif state.gone:
            notes.append(state.last_error)
        if state.id_mode != "guid":
            notes.append("entries identified by link: its guids are unusable")
        notes += [pushes[source.name]] if source.name in pushes else []
        if not source.enabled:
            due = "-"
        elif state.gone:
            due = "never (gone)"
        else:
            due = _when(state.next_due)
        rows.append(
            (
                source.name,
                "yes" if source.enabled else "no",
                _when(state.last_poll),
                str(state.status or "-"),
                str(state.entries),
                str(state.stored),
                due,
                "\n".join(notes),
            )
        )
    headers = ("source", "enabled", "last poll", "status", "entries", "stored", "next due", "notes")
    _write(table.render("Sources (times in UTC)", headers, rows))
    _write(_fleet(workers))


def _fleet(workers: list[WorkerReport]) -> str:
    """The workers seen in the last minute, one row each, or one line saying there are none."""
    if not workers:
        return "No workers seen in the last minute.\n"
    rows = [
        (
            w.worker_id,
            w.host,
            str(w.pid),
            _when(w.started),
            str(w.polls),
            str(w.errors),
            _when(w.last_seen),
        )
        for w in workers
    ]
    headers = ("worker", "host", "pid", "started", "polls", "errors", "last seen")
    return table.render("Workers (seen in the last minute)", headers, rows, frozenset({2, 4, 5}))


@main.command()
def reload() -> None:
    """Make running workers apply the current feeds.yaml."""
    config = _config()
    with _store(config) as store:
        version = store.request_reload()
    _out().print(f"asked workers to reload {config.path} (version {version})", highlight=False)


@main.command()
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    metavar="P",
    help="Serve this worker's Prometheus metrics on port P (all interfaces); off by default.",
)
def worker(metrics_port: int | None) -> None:
    """Scheduler only; start as many as you like on one Redis."""
    from aggregator import config as config_module
    from aggregator.scheduler import Worker

    _logging()
    config = _config()
    from aggregator import metrics

    if metrics_port is None:
        metrics.stop_counting()  # no one can read them: count nothing, import no prometheus
    else:
        from prometheus_client import start_http_server

        metrics.made()
        try:
            start_http_server(metrics_port)
        except OSError as err:
            _fail(_escape(f"cannot serve metrics on port {metrics_port}: {err.strerror or err}"))
    with _store(config, wait=True) as store:
        Worker(config_module.from_environ, store, config=config).run()


def _serve(config: Config, store: Store, host: str, port: int) -> tuple[Any, Site]:
    """A waitress server for the web app, and the app's site (for reloading it). The app
    re-reads feeds.yaml on `aggregator reload`, as the workers do."""
    from waitress import create_server

    from aggregator import config as config_module
    from aggregator.web import create_app, site

    app = create_app(config, store, load_config=config_module.from_environ)
    # waitress drops X-Forwarded-* itself unless told whom to trust; the app decides that
    # (settings.trusted_proxies), so the headers reach it as sent.
    server = create_server(
        app, host=host, port=port, threads=8, clear_untrusted_proxy_headers=False
    )
    _out().print(f"serving on http://{host}:{server.effective_port}/", highlight=False)
    return server, site(app)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def web(host: str, port: int) -> None:
    """Web only (production: gunicorn 'aggregator.web:create_app()'). SIGHUP reloads
    feeds.yaml, as `aggregator reload` does."""
    import signal

    _logging()
    config = _config()
    with _store(config) as store:
        server, served = _serve(config, store, host, port)
        signal.signal(signal.SIGHUP, lambda _signum, _frame: served.request_reload())
        try:
            server.run()
        except KeyboardInterrupt:
            pass


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def run(host: str, port: int) -> None:
    """Scheduler and web in one process: the quick start."""
    import threading

    from aggregator import config as config_module
    from aggregator.scheduler import Worker

    _logging()
    config = _config()
    with _store(config, wait=True) as store:
        server, _ = _serve(config, store, host, port)
        thread = threading.Thread(target=server.run, name="web", daemon=True)
        thread.start()
        try:
            Worker(config_module.from_environ, store, config=config).run()
        finally:
            server.close()


@main.group("export")
def export_group() -> None:
    """Write the stored entries out for other tools."""


@export_group.command("jekyll")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The Jekyll site: posts go to DIR/_posts.",
    metavar="DIR",
)
@click.option("--tag", default=None, help="Only this tag's entries.")
@click.option("--category", default=None, help="Only this category's entries.")
def export_jekyll(out: Path, tag: str | None, category: str | None) -> None:
    """Write posts in the seed's format: DIR/_posts/YYYY-MM-DD-<id>.html.

    Unchanged posts are not rewritten; a post whose entry changed is.
    """
    if tag is not None and category is not None:
        raise click.UsageError("give --tag or --category, not both")
    from aggregator import export, keys
    from aggregator.errors import StorageError

    config = _config()
    kind: keys.Kind = "tag" if tag is not None else "category" if category is not None else "all"
    name = tag if tag is not None else category or ""
    with _store(config) as store:
        known = config.tag_names() if kind == "tag" else config.category_names()
        if kind != "all" and name not in known and store.count(kind, name) == 0:
            _fail(_escape(f"no {kind} named {name!r}"))
        try:
            result = export.export_jekyll(store, config, out, kind, name)
        except StorageError as err:
            _fail(_escape(str(err)))
        except OSError as err:
            _fail(_escape(f"cannot write to {out}: {err}"))
    renamed = f", {result.renamed} moved to a new date" if result.renamed else ""
    _out().print(
        f"{result.total} posts in {out / export.POSTS}: {result.new} new, "
        f"{result.updated} updated, {result.unchanged} unchanged{renamed}",
        highlight=False,
        markup=False,
    )


@main.group("opml")
def opml_group() -> None:
    """The sources as OPML 2.0, and OPML back to feeds.yaml sources."""


@opml_group.command("export")
def opml_export() -> None:
    """Print every source as OPML 2.0, in one folder per category."""
    from aggregator import opml
    from aggregator.errors import AggregatorError, StorageError
    from aggregator.services import open_store

    config = _config()
    known: dict[str, opml.KnownFeed] = {}
    try:
        store, embedded = open_store(config)
    except AggregatorError as err:
        _err().print(f"warning: no htmlUrl or feed titles: {err}", highlight=False, markup=False)
    else:
        try:
            known = opml.known_feeds(config, store)
        except StorageError as err:
            _err().print(
                f"warning: no htmlUrl or feed titles: {err}", highlight=False, markup=False
            )
        finally:
            store.close()
            if embedded is not None:
                embedded.stop()
    sys.stdout.buffer.write(opml.render(config, known))
    sys.stdout.buffer.flush()


@opml_group.command("import")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--merge",
    is_flag=True,
    help="Add the sources to the feeds.yaml in use (AGGREGATOR_CONFIG) instead of printing them.",
)
def opml_import(file: BinaryIO, merge: bool) -> None:
    """Turn an OPML file (FILE, or - for stdin) into feeds.yaml source entries.

    Each outline with an xmlUrl becomes a source, its category the outline's category
    attribute, else the folder outline around it. The entries are printed as YAML; with
    --merge they are appended to the sources list of feeds.yaml, the rest of the file kept
    as it is. A feed already configured (same URL, or the same name) is left out.
    """
    from aggregator import opml
    from aggregator.errors import ConfigError

    try:
        outlines = opml.parse(file.read())
    except opml.OpmlError as err:
        _fail(_escape(f"{file.name}: {err}"))
    if not outlines:
        _fail(_escape(f"{file.name}: no outlines with an xmlUrl"))
    config = _config() if merge else None
    conversion = opml.to_sources(outlines, config.sources if config else ())
    for reason in conversion.refused:
        _err().print(f"left out {reason}", highlight=False, markup=False)
    if config is None:
        if not conversion.sources:
            _fail(_escape(f"{file.name}: no outline could become a source"))
        try:
            click.echo(opml.sources_document(conversion.sources), nl=False)
        except opml.OpmlError as err:
            _fail(_escape(str(err)))
        return
    if not conversion.sources:
        _out().print(f"nothing to add to {config.path}", highlight=False, markup=False)
        return
    path = config.path.resolve()
    try:
        text = path.read_bytes().decode("utf-8")
        merged = opml.merge(text, config.path, conversion.sources)
        _replace(path, merged.encode("utf-8"))
    except (opml.OpmlError, ConfigError) as err:
        _fail(_escape(f"{err}; add these by hand:\n{opml.sources_block(conversion.sources, 2)}"))
    except (OSError, UnicodeDecodeError) as err:
        _fail(_escape(f"cannot update {config.path}: {err}"))
    names = ", ".join(s["name"] for s in conversion.sources)
    _out().print(
        f"added {len(conversion.sources)} sources to {config.path}: {names}\n"
        "run `aggregator reload` to make running workers poll them",
        highlight=False,
        markup=False,
    )


def _replace(path: Path, data: bytes) -> None:
    """Write `path` through a temporary file and a rename, keeping its permissions: a crash
    leaves the old file or the new one, never half of either."""
    import tempfile

    mode = path.stat().st_mode & 0o777
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
