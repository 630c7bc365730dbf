"""feeds.yaml validation: typed options, every problem by its place, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator import config, redis_urls
from aggregator.errors import ConfigError


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, Path("feeds.yaml"))
    return info.value.problems


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        (45, 45),
        ("1.5h", 5400),
        ("250ms", 0.25),
        ("90", 90),
    ],
)
def test_durations(raw: object, seconds: float) -> None:
    assert config.parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["soon", "-5m", "0", "5 parsecs", True, ""])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ValueError):
        config.parse_duration(raw)


@pytest.mark.parametrize(
    ("raw", "size"),
    [("10MB", 10_000_000), ("512KB", 512_000), ("1MiB", 1_048_576), (2000, 2000), ("3 mb", 3e6)],
)
def test_sizes(raw: object, size: int) -> None:
    assert config.parse_size(raw) == size


def test_every_problem_is_listed_by_its_place() -> None:
    found = problems(
        "settings: {timeout: forever, max_bytes: lots, retention: {max_entries: 0}}\n"
        "sources:\n"
        "  - {name: ok, url: 'https://a.example/', tags: ['', ' x', \"a\\x01\"]}\n"
        "  - {name: two, url: 'https://b.example/', include: ['re:(unclosed']}\n"
        "  - {name: ok, url: 'https://c.example/', surprise: 1}\n"
        "categories: {'': {title: x}}\n"
    )
    expected = [
        "settings.timeout: not a duration",
        "settings.max_bytes: not a size",
        "settings.retention.max_entries:",
        "sources[0].tags[0]: must not be blank",
        "sources[0].tags[1]: must not start or end with white space",
        "sources[0].tags[2]: must not contain control characters",
        "sources[1].include[0]: bad regular expression",
        "sources[2].surprise: unknown key",
        "sources[2].name: duplicate name 'ok' (also sources[0])",
    ]
    for wanted in expected:
        assert any(p.startswith(wanted) for p in found), (wanted, found)


def test_not_yaml_and_not_a_mapping() -> None:
    assert problems("sources: [")[0].startswith("line 1, column")
    assert problems("- just\n- a list\n") == [
        "(top level): must be a mapping with settings and sources"
    ]


def test_defaults_and_derived_values(tmp_path: Path) -> None:
    loaded = config.parse(
        "settings: {min_interval: 5m}\n"
        "sources:\n"
        "  - {name: a, url: 'https://a.example/', interval: 1m, tags: [财经]}\n"
        "  - {name: b, url: 'https://b.example/', category: news, enabled: false}\n"
        "tags: {财经: {title: 财经新闻}}\n",
        tmp_path / "feeds.yaml",
    )
    a, b = loaded.sources
    assert loaded.interval(a) == 300  # raised to the politeness floor
    assert loaded.interval(b) == 900
    assert a.category_name == "a" and b.category_name == "news"
    assert loaded.enabled_sources == (a,)
    assert loaded.data_dir == tmp_path / ".aggregator"
    assert loaded.tag_title("财经") == "财经新闻" and loaded.tag_title("other") == "other"
    assert loaded.settings.agent.startswith("aggregator/")


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text("settings: {redis_url: 'redis://file:6379/0'}\n", encoding="utf-8")
    monkeypatch.setenv(config.ENV_CONFIG, str(path))
    monkeypatch.setenv(config.ENV_REDIS_URL, "redis://env:6379/1")
    loaded = config.from_environ()
    assert loaded.path == path
    assert loaded.settings.redis_url == "redis://env:6379/1"
    monkeypatch.setenv(config.ENV_REDIS_URL, "http://not-redis/")
    with pytest.raises(ConfigError, match="AGGREGATOR_REDIS_URL"):
        config.from_environ()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.yaml")


def test_websub_keys_are_accepted_and_a_hub_needs_public_url() -> None:
    found = problems(
        "settings: {websub_hub: 'https://hub.example/'}\n"
        "sources:\n"
        "  - {name: a, url: 'https://a.example/', websub: true}\n"
        "  - {name: b, url: 'https://b.example/', websub: false}\n"
    )
    assert found == [
        "settings.websub_hub: needs settings.public_url: the hub is told our feeds' URLs, "
        "which only public_url gives",
    ]
    accepted = config.parse(
        "settings: {websub_hub: 'https://hub.example/', public_url: 'https://a.example'}\n"
        "sources: [{name: a, url: 'https://a.example/', websub: true}]\n",
        Path("feeds.yaml"),
    )
    assert accepted.settings.websub_hub == "https://hub.example/"
    assert accepted.sources[0].websub


def test_websub_false_is_accepted(tmp_path: Path) -> None:
    loaded = config.parse(
        "sources: [{name: a, url: 'https://a.example/', websub: false}]\n", tmp_path / "f.yaml"
    )
    assert loaded.sources[0].websub is False


def test_public_url_is_optional_and_trusted_proxies_are_addresses(tmp_path: Path) -> None:
    loaded = config.parse(
        "settings: {trusted_proxies: ['10.0.0.1/8', '::1', 127.0.0.1]}\n", tmp_path / "f.yaml"
    )
    assert loaded.settings.public_url is None
    assert [str(n) for n in loaded.settings.trusted_proxies] == [
        "10.0.0.0/8",
        "::1/128",
        "127.0.0.1/32",
    ]
    assert problems("settings: {trusted_proxies: [proxy.local]}\n") == [
        "settings.trusted_proxies[0]: not an IP address or network: 'proxy.local' "
        "(e.g. 10.0.0.1, 10.0.0.0/8, ::1)"
    ]
    assert problems("settings: {public_url: 'ftp://x'}\n") == [
        "settings.public_url: not an http(s) URL"
    ]


@pytest.mark.parametrize("name", [".", ".."])
def test_names_browsers_drop_from_urls_are_refused(name: str) -> None:
    # A path segment "." or "..", percent-encoded or not, is removed by browsers (WHATWG URL).
    found = problems(f"sources: [{{name: a, url: 'https://a.example/', tags: ['{name}']}}]\n")
    assert found == [f"sources[0].tags[0]: {name!r} cannot be a name: browsers drop it from URLs"]


@pytest.mark.parametrize(
    ("url", "first", "others"),
    [
        ("redis+cluster://10.0.0.1:7000", "redis://10.0.0.1:7000", ()),
        ("redis+cluster://a", "redis://a:6379", ()),
        (
            "redis+cluster://u:pw@a:7000,b:7001,[::1]:7002/?ssl_cert_reqs=none",
            "redis://u:pw@a:7000/?ssl_cert_reqs=none",
            (("b", 7001), ("::1", 7002)),
        ),
    ],
)
def test_a_cluster_url_names_one_node_or_several(
    url: str, first: str, others: tuple[tuple[str, int], ...]
) -> None:
    assert (
        config.parse(f"settings: {{redis_url: '{url}'}}", Path("f.yaml")).settings.redis_url == url
    )
    nodes = redis_urls.cluster(url)
    assert (nodes.first, nodes.others) == (first, others)


@pytest.mark.parametrize(
    "url",
    ["redis+cluster://", "redis+cluster://a:7000,,b:7001", "redis+cluster://a:99999", "x://a"],
)
def test_a_bad_redis_url_is_refused_by_its_place(url: str) -> None:
    assert problems(f"settings: {{redis_url: '{url}'}}")[0].startswith("settings.redis_url:")
