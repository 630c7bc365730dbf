"""The `aggregator` command (also `python -m aggregator`): see DESIGN.md for each subcommand."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aggregator import __version__
from aggregator import config as config_module
from aggregator.config import Config
from aggregator.errors import AggregatorError, ConfigError
from aggregator.fetch import Fetcher
from aggregator.scheduler import Worker, parse_pool
from aggregator.services import open_store
from aggregator.store import Store
from aggregator.update import Outcome, Updater

console = Console(soft_wrap=True)
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
    for column in ("source", "status", "entries", "new", "updated", "time"):
        table.add_column(column, justify="right" if column not in ("source", "status") else "left")
    for o in outcomes:
        status = "not modified" if o.not_modified else (f"HTTP {o.status}" if o.ok else o.error)
        table.add_row(
            o.source,
            status if o.ok else f"[red]{status}[/red]",
            str(o.entries),
            str(o.new),
            str(o.updated),
            f"{o.seconds:.2f}s",
        )
    console.print(table)
    failed = sum(not o.ok for o in outcomes)
    console.print(
        f"{len(outcomes) - failed} ok, {failed} failed, {sum(o.new for o in outcomes)} new entries",
        highlight=False,
    )
    if failed == len(outcomes):
        sys.exit(1)


async def _poll_all(
    config: Config, store: Store, sources: list[config_module.Source]
) -> list[Outcome]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with parse_pool() as executor, Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("polling", total=len(sources))
        async with Fetcher(config.settings) as fetcher:
            updater = Updater(config, store, fetcher, executor=executor)

            def advance(outcome: Outcome) -> None:
                bar.update(task, advance=1, description=outcome.source)

            return await updater.poll_many(sources, advance)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@main.command()
def status() -> None:
    """One row per source: last poll, HTTP status, entries, next due, last error."""
    config = _config()
    with _store(config) as store:
        states = store.source_states([s.name for s in config.sources])
    table = Table(title="Sources (times in UTC)")
    for column in (
        "source",
        "enabled",
        "last poll",
        "status",
        "entries",
        "stored",
        "next due",
        "last error",
    ):
        table.add_column(column)
    for source, state in zip(config.sources, states, strict=True):
        table.add_row(
            source.name,
            "yes" if source.enabled else "no",
            _when(state.last_poll),
            str(state.status or "-"),
            str(state.entries),
            str(state.stored),
            _when(state.next_due) if source.enabled else "-",
            state.last_error or "",
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


def _serve(config: Config, store: Store, host: str, port: int) -> object:
    from waitress import create_server

    from aggregator.web import create_app

    server = create_server(create_app(config, store), host=host, port=port, threads=8)
    console.print(f"serving on http://{host}:{port}/", highlight=False)
    return server


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def web(host: str, port: int) -> None:
    """Web only (production: gunicorn 'aggregator.web:create_app()')."""
    _logging()
    config = _config()
    with _store(config) as store:
        server = _serve(config, store, host, port)
        try:
            server.run()  # type: ignore[attr-defined]
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
        server = _serve(config, store, host, port)
        thread = threading.Thread(target=server.run, name="web", daemon=True)  # type: ignore[attr-defined]
        thread.start()
        try:
            Worker(config_module.from_environ, store, config=config).run()
        finally:
            server.close()  # type: ignore[attr-defined]
