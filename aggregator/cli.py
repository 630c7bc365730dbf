"""The `aggregator` command (also `python -m aggregator`): see DESIGN.md for each subcommand."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aggregator import __version__, export, keys, opml, push
from aggregator import config as config_module
from aggregator.config import Config
from aggregator.errors import AggregatorError, ConfigError, StorageError
from aggregator.fetch import Fetcher
from aggregator.pollers import Pollers, processes_for
from aggregator.scheduler import Worker, parse_pool
from aggregator.services import open_store
from aggregator.store import Store
from aggregator.update import Outcome, Updater

if TYPE_CHECKING:
    from aggregator.web import Site

# Piped or captured output is not squeezed into 80 columns: tables stay readable in a file.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(soft_wrap=True, width=_WIDTH)
errors = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    sys.exit(code)


def _config() -> Config:
    try:
        return config_module.from_environ()
    except ConfigError as err:
        errors.print(f"{err.path}: {len(err.problems)} problem(s)", highlight=False)
        for problem in err.problems:
            errors.print(f"  {problem}", highlight=False, markup=False)
        sys.exit(1)


@contextmanager
def _store(config: Config) -> Iterator[Store]:
    try:
        store, embedded = open_store(config)
    except AggregatorError as err:
        _fail(str(err))
    try:
        yield store
    finally:
        store.close()
        if embedded is not None:
            embedded.stop()


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every tick at INFO


@click.group()
@click.version_option(__version__, prog_name="aggregator")
def main() -> None:
    """Poll the feeds listed in feeds.yaml and republish them merged per tag.

    The configuration file is ./feeds.yaml, or the path in AGGREGATOR_CONFIG;
    AGGREGATOR_REDIS_URL overrides settings.redis_url.
    """


@main.command()
def check() -> None:
    """Validate feeds.yaml; exit 1 and list the problems."""
    config = _config()
    enabled = len(config.enabled_sources)
    console.print(
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
    with _store(config) as store:
        outcomes = asyncio.run(_poll_all(config, store, sources))
    table = Table(title=f"Polled {len(outcomes)} sources")
    for column in ("source", "status", *_COUNTS, "time"):
        table.add_column(column, justify="right" if column not in ("source", "status") else "left")
    for o in outcomes:
        status = "not modified" if o.not_modified else (f"HTTP {o.status}" if o.ok else o.error)
        table.add_row(
            escape(o.source),
            escape(status) if o.ok else f"[red]{escape(status)}[/red]",
            *(str(getattr(o, column)) for column in _COUNTS),
            f"{o.seconds:.2f}s",
        )
    console.print(table)
    failed = sum(not o.ok for o in outcomes)

    def total(column: str) -> int:
        return sum(getattr(o, column) for o in outcomes)

    # "new" is what subscribers can see now; what else the documents held is said apart.
    console.print(
        f"{len(outcomes) - failed} ok, {failed} failed, {total('new')} new entries, "
        f"{total('merged')} merged, {total('filtered')} filtered, "
        f"{total('cut')} cut by max_entries",
        highlight=False,
    )
    if failed == len(outcomes):
        sys.exit(1)


# The poll table's count columns: Outcome's fields of the same names.
_COUNTS = ("entries", "new", "updated", "merged", "filtered", "cut")


async def _poll_all(
    config: Config, store: Store, sources: list[config_module.Source]
) -> list[Outcome]:
    """Every source polled once, with a progress bar: in poller processes when there are
    enough sources to keep more than one core busy (aggregator/pollers.py), else here."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    processes = processes_for(len(sources))
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("polling", total=len(sources))

        def advance(outcome: Outcome) -> None:
            bar.update(task, advance=1, description=outcome.source)

        if processes > 1 and store.address is not None:
            with Pollers(config, store.address, processes) as pollers:
                return await pollers.poll_many(sources, advance)
        with parse_pool() as executor:
            async with Fetcher(config.settings) as fetcher:
                updater = Updater(config, store, fetcher, executor=executor)
                return await updater.poll_many(sources, advance)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@main.command()
def status() -> None:
    """One row per source: last poll, HTTP status, entries, next due, last error."""
    config = _config()
    with _store(config) as store:
        states = store.source_states([s.name for s in config.sources])
        pushes = push.status_notes(config, store)
    table = Table(title="Sources (times in UTC)")
    for column in ("source", "enabled", "last poll", "status", "entries", "stored", "next due"):
        table.add_column(column, no_wrap=True)
    table.add_column("notes")
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
        table.add_row(
            source.name,
            "yes" if source.enabled else "no",
            _when(state.last_poll),
            str(state.status or "-"),
            str(state.entries),
            str(state.stored),
            due,
            "\n".join(notes),
        )
    console.print(table)


@main.command()
def reload() -> None:
    """Make running workers apply the current feeds.yaml."""
    config = _config()
    with _store(config) as store:
        version = store.request_reload()
    console.print(f"asked workers to reload {config.path} (version {version})", highlight=False)


@main.command()
def worker() -> None:
    """Scheduler only; start as many as you like on one Redis."""
    _logging()
    config = _config()
    with _store(config) as store:
        Worker(config_module.from_environ, store, config=config).run()


def _serve(config: Config, store: Store, host: str, port: int) -> tuple[Any, Site]:
    """A waitress server for the web app, and the app's site (for reloading it). The app
    re-reads feeds.yaml on `aggregator reload`, as the workers do."""
    from waitress import create_server

    from aggregator.web import create_app, site

    app = create_app(config, store, load_config=config_module.from_environ)
    server = create_server(app, host=host, port=port, threads=8)
    console.print(f"serving on http://{host}:{server.effective_port}/", highlight=False)
    return server, site(app)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def web(host: str, port: int) -> None:
    """Web only (production: gunicorn 'aggregator.web:create_app()'). SIGHUP reloads
    feeds.yaml, as `aggregator reload` does."""
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
    _logging()
    config = _config()
    with _store(config) as store:
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
    config = _config()
    kind: keys.Kind = "tag" if tag is not None else "category" if category is not None else "all"
    name = tag if tag is not None else category or ""
    with _store(config) as store:
        known = config.tag_names() if kind == "tag" else config.category_names()
        if kind != "all" and name not in known and store.count(kind, name) == 0:
            _fail(escape(f"no {kind} named {name!r}"))
        try:
            result = export.export_jekyll(store, config, out, kind, name)
        except StorageError as err:
            _fail(escape(str(err)))
        except OSError as err:
            _fail(escape(f"cannot write to {out}: {err}"))
    renamed = f", {result.renamed} moved to a new date" if result.renamed else ""
    console.print(
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
    config = _config()
    known: dict[str, opml.KnownFeed] = {}
    try:
        store, embedded = open_store(config)
    except AggregatorError as err:
        errors.print(f"warning: no htmlUrl or feed titles: {err}", highlight=False, markup=False)
    else:
        try:
            known = opml.known_feeds(config, store)
        except StorageError as err:
            errors.print(
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
    try:
        outlines = opml.parse(file.read())
    except opml.OpmlError as err:
        _fail(escape(f"{file.name}: {err}"))
    if not outlines:
        _fail(escape(f"{file.name}: no outlines with an xmlUrl"))
    config = _config() if merge else None
    conversion = opml.to_sources(outlines, config.sources if config else ())
    for reason in conversion.refused:
        errors.print(f"left out {reason}", highlight=False, markup=False)
    if config is None:
        if not conversion.sources:
            _fail(escape(f"{file.name}: no outline could become a source"))
        try:
            click.echo(opml.sources_document(conversion.sources), nl=False)
        except opml.OpmlError as err:
            _fail(escape(str(err)))
        return
    if not conversion.sources:
        console.print(f"nothing to add to {config.path}", highlight=False, markup=False)
        return
    path = config.path.resolve()
    try:
        text = path.read_bytes().decode("utf-8")
        merged = opml.merge(text, config.path, conversion.sources)
        _replace(path, merged.encode("utf-8"))
    except (opml.OpmlError, ConfigError) as err:
        _fail(escape(f"{err}; add these by hand:\n{opml.sources_block(conversion.sources, 2)}"))
    except (OSError, UnicodeDecodeError) as err:
        _fail(escape(f"cannot update {config.path}: {err}"))
    names = ", ".join(s["name"] for s in conversion.sources)
    console.print(
        f"added {len(conversion.sources)} sources to {config.path}: {names}\n"
        "run `aggregator reload` to make running workers poll them",
        highlight=False,
        markup=False,
    )


def _replace(path: Path, data: bytes) -> None:
    """Write `path` through a temporary file and a rename, keeping its permissions: a crash
    leaves the old file or the new one, never half of either."""
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
