"""A checked feeds.yaml kept between commands (aggregator/config_cache.py): read back while
nothing it came from changed, never in place of an edit, never from a folder others can write
to. Commands run as users run them, with the session's XDG_CACHE_HOME (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from aggregator import config as config_module
from aggregator import config_cache
from tests.readme_support import Site, standard_sources, table_rows, tech_items, titles

# What a command sees of its configuration, and whether it had to import the checkers.
_PROBE = """
import json, sys
from aggregator import config
c = config.from_environ()
print(json.dumps({
    "sources": [s.name for s in c.sources],
    "tags": {s.name: list(s.tags) for s in c.sources},
    "redis_url": c.settings.redis_url,
    "pydantic": "pydantic" in sys.modules,
    "yaml": "yaml" in sys.modules,
}))
"""


def _probe(site: Site, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env or site.env,
        text=True,
        capture_output=True,
        timeout=60,
        check=True,
    )
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def _kept(site: Site) -> list[Path]:
    folder = Path(site.env["XDG_CACHE_HOME"]) / "aggregator"
    return sorted(folder.glob("config-*.pickle")) if folder.exists() else []


def test_a_command_after_the_first_reads_the_checked_configuration(site: Site) -> None:
    site.write(standard_sources(site))
    before = set(_kept(site))
    polled = site.poll()
    assert polled.returncode == 0, polled.stderr
    assert polled.counts["ok"] == 2
    kept = set(_kept(site)) - before
    assert kept, "the first command keeps what it checked"
    for file in kept:  # the user's alone
        assert file.stat().st_mode & 0o777 == 0o600
        assert file.parent.stat().st_mode & 0o777 == 0o700
    # The next command reads it back: neither PyYAML nor pydantic is imported.
    seen = _probe(site)
    assert seen["sources"] == ["jingjiribao", "tech"]
    assert seen["tags"]["jingjiribao"] == ["经济日报新闻", "财经"]
    assert (seen["pydantic"], seen["yaml"]) == (False, False)
    again = site.poll()
    assert again.returncode == 0, again.stderr
    assert again.counts["new entries"] == 0  # the same sources, the same state in Redis
    assert set(table_rows(site.status_text())) == {"jingjiribao", "tech"}


def test_an_edit_is_read_at_once(site: Site) -> None:
    sources = standard_sources(site)
    site.write(sources)
    assert site.poll().returncode == 0
    assert _probe(site)["pydantic"] is False
    sources[1]["tags"] = ["science"]
    site.write([*sources, {"name": "more", "url": site.serve("more.xml", b"<rss/>")}])
    seen = _probe(site)
    assert seen["sources"] == ["jingjiribao", "tech", "more"]
    assert seen["tags"]["tech"] == ["science"]
    assert seen["pydantic"] is True  # checked anew
    checked = site.cli("check")
    assert checked.returncode == 0, checked.stderr
    assert "3 sources" in checked.stdout
    # What a subscriber sees: the next poll files tech's entries under the new tag.
    assert site.poll().counts["ok"] >= 2
    science = site.web().ok("/tags/science.atom").feed()
    assert sorted(titles(science)) == sorted(item.title for item in tech_items())


def test_a_broken_edit_is_reported_on_every_run(site: Site) -> None:
    site.write(standard_sources(site))
    assert site.cli("check").returncode == 0
    site.path.write_text(site.path.read_text(encoding="utf-8") + "  - oops: [\n", "utf-8")
    for _ in range(2):
        done = site.cli("check")
        assert done.returncode == 1
        assert "not valid YAML" in done.stderr
        assert "Traceback" not in done.stderr


def test_the_redis_url_from_the_environment_is_kept_apart(site: Site) -> None:
    site.write(standard_sources(site))
    assert _probe(site)["redis_url"] == site.redis_url
    other = dict(site.env, AGGREGATOR_REDIS_URL="redis://127.0.0.1:1/0")
    assert _probe(site, other)["redis_url"] == "redis://127.0.0.1:1/0"
    assert _probe(site)["redis_url"] == site.redis_url


def test_a_relative_data_dir_follows_the_path_given(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    for place in ("a", "b"):
        (tmp_path / place).mkdir()
        (tmp_path / place / "feeds.yaml").write_text("sources: []\n", encoding="utf-8")
    one = config_module.load(tmp_path / "a" / "feeds.yaml", None, folder)
    two = config_module.load(tmp_path / "b" / "feeds.yaml", None, folder)
    assert one.data_dir == tmp_path / "a" / ".aggregator"
    assert two.data_dir == tmp_path / "b" / ".aggregator"


def _valid(tmp_path: Path) -> Path:
    path = tmp_path / "feeds.yaml"
    path.write_text(
        "sources:\n  - name: a\n    url: https://a.example/feed.xml\n    tags: [标签]\n",
        encoding="utf-8",
    )
    return path


def test_a_damaged_file_is_read_past_and_replaced(tmp_path: Path) -> None:
    folder, path = tmp_path / "cache", _valid(tmp_path)
    first = config_module.load(path, None, folder)
    (kept,) = folder.glob("config-*.pickle")
    kept.write_bytes(b"not a pickle")
    assert config_module.load(path, None, folder) == first
    assert kept.read_bytes() != b"not a pickle"


def test_a_folder_others_can_write_to_is_never_read(tmp_path: Path) -> None:
    folder, path = tmp_path / "cache", _valid(tmp_path)
    config_module.load(path, None, folder)
    key = config_cache.Key(str(path), "", path.read_bytes(), ())
    config_cache.write(folder, key, "planted")
    assert config_cache.read(folder, key) == "planted"
    os.chmod(folder, 0o777)
    assert config_cache.read(folder, key) is None
    os.chmod(folder, 0o700)
    os.chmod(folder / key.name(), 0o666)
    assert config_cache.read(folder, key) is None


def test_changed_checking_code_is_a_new_key(tmp_path: Path) -> None:
    module = tmp_path / "checker.py"
    module.write_text("x = 1\n", encoding="utf-8")
    key = config_cache.Key("feeds.yaml", "", b"sources: []\n", (str(module),))
    before = key.digest()
    module.write_text("x = 22\n", encoding="utf-8")
    assert key.digest() != before


def test_an_unusable_cache_folder_costs_nothing_but_time(site: Site, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("", encoding="utf-8")
    env = dict(site.env, XDG_CACHE_HOME=str(blocked))
    site.write(standard_sources(site))
    done = site.poll(env=env)
    assert done.returncode == 0, done.stderr
    assert done.counts["ok"] == 2
    assert done.stderr == ""


def test_the_folder_keeps_the_most_recent_files(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    keys = [config_cache.Key(f"feeds{i}.yaml", "", b"", ()) for i in range(config_cache.KEEP + 4)]
    for number, key in enumerate(keys):
        config_cache.write(folder, key, number)
        os.utime(folder / key.name(), ns=(number * 10**9, number * 10**9))
    assert len(list(folder.glob("config-*.pickle"))) == config_cache.KEEP
    assert config_cache.read(folder, keys[-1]) == len(keys) - 1
    assert config_cache.read(folder, keys[0]) is None


_UNPICKLED: list[str] = []


def _unpickled(tag: str) -> str:
    _UNPICKLED.append(tag)
    return tag


class _Tracked:
    """Records every time it is unpickled."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _unpickled, (self.tag,)


def test_a_file_kept_for_another_key_is_never_unpickled(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    before = config_cache.Key("feeds.yaml", "", b"sources: []\n", ())
    after = config_cache.Key("feeds.yaml", "", b"sources: []\n# edited\n", ())
    assert before.name() == after.name()  # one file per path: the edit replaces it
    config_cache.write(folder, before, _Tracked("kept"))
    _UNPICKLED.clear()
    assert config_cache.read(folder, after) is None
    assert _UNPICKLED == []
    assert config_cache.read(folder, before) == "kept"
    assert _UNPICKLED == ["kept"]
