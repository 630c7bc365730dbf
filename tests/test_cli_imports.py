"""The commands people wait for load only what they use: `--help` no library at all, `status`
and `check` neither the HTTP client, the parsers, the scheduler nor the web framework."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ConfigWriter, FeedServer

HEAVY = (
    "redis",
    "pyreqwest",
    "feedparser",
    "apscheduler",
    "flask",
    "rich",
    "pydantic",
    "asyncio",
    "prometheus_client",
)
PROBE = """
import json, sys
from aggregator.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


def loaded(args: list[str], env: dict[str, str] | None = None) -> list[str]:
    code = PROBE.format(heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
    )
    return list(json.loads(result.stderr.strip().splitlines()[-1]))


def test_help_loads_no_library() -> None:
    assert loaded(["--help"]) == []
    assert loaded(["export", "--help"]) == []


def test_status_and_check_load_neither_client_nor_parsers(
    write_config: ConfigWriter, feed_server: FeedServer, environ: dict[str, str]
) -> None:
    write_config.write([{"name": "a", "url": feed_server.url("rss2.xml")}])
    env = dict(
        environ,
        AGGREGATOR_CONFIG=str(write_config.path),
        AGGREGATOR_REDIS_URL=write_config.redis_url,
    )
    for command in ("status", "check"):
        found = set(loaded([command], env))
        assert not found & {"pyreqwest", "feedparser", "apscheduler", "flask"}, (command, found)
        assert "prometheus_client" not in found, (command, found)


def test_a_poll_counts_no_metrics(
    write_config: ConfigWriter, feed_server: FeedServer, environ: dict[str, str]
) -> None:
    """`aggregator poll` serves no /metrics: it neither counts nor imports prometheus_client,
    nor the parsers when every source answers 304."""
    write_config.write([{"name": "a", "url": feed_server.url("rss2.xml")}])
    env = dict(
        environ,
        AGGREGATOR_CONFIG=str(write_config.path),
        AGGREGATOR_REDIS_URL=write_config.redis_url,
    )
    loaded(["poll"], env)  # stores the feed; the next poll meets a 304
    found = set(loaded(["poll", "a"], env))
    assert "pyreqwest" in found  # it did poll
    assert not found & {"prometheus_client", "feedparser", "apscheduler", "flask"}, found
