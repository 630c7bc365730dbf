"""feeds.yaml and the environment, read and validated once into frozen objects.

Each option is typed and checked on its own, then one pass checks what spans several (duplicate
names). A bad file is refused whole with every problem named by its place, e.g.
`sources[3].url: not an http(s) URL`; nothing is ever half-applied. This module does no I/O but
reading the file it is given; `from_environ` is the one place `os.environ` is read.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from aggregator import __version__, config_cache, redis_urls
from aggregator.errors import ConfigError
from aggregator.models import RetentionRule
from aggregator.text import xml_text

if TYPE_CHECKING:
    from pydantic import TypeAdapter

ENV_CONFIG = "AGGREGATOR_CONFIG"
ENV_REDIS_URL = "AGGREGATOR_REDIS_URL"
DEFAULT_CONFIG_PATH = "feeds.yaml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3}
_NAME = re.compile(r"^[a-z0-9_-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_duration(value: Any) -> float:
    """`30s`, `15m`, `2h`, `1d`, or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 2h, 1d)")
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


def parse_size(value: Any) -> int:
    """`10MB`, `512KiB`, `2000` (bytes) → bytes."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"not a size: {value!r} (use e.g. 512KB, 10MB)")
        unit = (match[2] or "").lower()
        factor = _SIZE_UNITS[unit[:1]] if unit else 1
        if "i" in unit:
            factor = {"k": 1024, "m": 1024**2, "g": 1024**3}[unit[0]]
        size = int(float(match[1]) * factor)
    if size <= 0:
        raise ValueError("must be more than zero")
    return size


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value, re.IGNORECASE):
        raise ValueError("not an http(s) URL")
    return value


def _redis_url(value: str) -> str:
    return redis_urls.check(value)


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("use only a-z, 0-9, '_' and '-'")
    return value


def _label(value: str) -> str:
    """Tags and categories are any Unicode text, but not blank or with control characters."""
    if not value.strip():
        raise ValueError("must not be blank")
    if value in {".", ".."}:
        # Browsers remove a path segment `.` or `..`, percent-encoded too (WHATWG URL
        # "single-dot segment"), so the name's page could not be linked to.
        raise ValueError(f"{value!r} cannot be a name: browsers drop it from URLs")
    if value != value.strip():
        raise ValueError("must not start or end with white space")
    if _CONTROL.search(value) or xml_text(value) != value:
        raise ValueError("must not contain control characters or others XML cannot carry")
    return value


def _pattern(value: str) -> str:
    if value.startswith("re:"):
        # Imported for the patterns that need it: most files have none, and every command
        # that reads feeds.yaml would pay for the import.
        import regex

        try:
            regex.compile(value[3:])
        except regex.error as err:
            raise ValueError(f"bad regular expression {value[3:]!r}: {err}") from err
    elif not value.strip():
        raise ValueError("must not be blank")
    return value


def _network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError as err:
        raise ValueError(
            f"not an IP address or network: {value!r} (e.g. 10.0.0.1, 10.0.0.0/8, ::1)"
        ) from err


class _Check:
    """An option's own check, run by pydantic before its type is checked (a duration's text
    becomes seconds) or after. A marker rather than pydantic's validators, so that the classes
    below are plain dataclasses: a configuration read from `config_cache` imports no pydantic."""

    __slots__ = ("check", "before")

    def __init__(self, check: Callable[[Any], Any], *, before: bool = False) -> None:
        self.check = check
        self.before = before

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        inner = handler(source)
        if self.before:
            return core_schema.no_info_before_validator_function(self.check, inner)
        return core_schema.no_info_after_validator_function(self.check, inner)


class _AtLeast:
    """An integer option's lower bound, checked (and worded) as pydantic's own `ge`."""

    __slots__ = ("least",)

    def __init__(self, least: int) -> None:
        self.least = least

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.int_schema(ge=self.least)


Duration = Annotated[float, _Check(parse_duration, before=True)]
Size = Annotated[int, _Check(parse_size, before=True)]
HttpUrl = Annotated[str, _Check(_http_url)]
Label = Annotated[str, _Check(_label)]
Pattern = Annotated[str, _Check(_pattern)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, _Check(_network, before=True)]
Positive = Annotated[int, _AtLeast(1)]
Count = Annotated[int, _AtLeast(0)]

# Unknown keys are refused (a misspelt option would otherwise do nothing, silently).
_STRICT: Any = {"extra": "forbid"}


@dataclass(frozen=True)
class Retention:
    __pydantic_config__: ClassVar[Any] = _STRICT
    max_entries: Positive = 1000
    max_age: Duration = 90 * 86400.0
    keep_per_source: Count = 50

    @property
    def rule(self) -> RetentionRule:
        return RetentionRule(self.max_entries, self.max_age, self.keep_per_source)


@dataclass(frozen=True)
class PerHost:
    __pydantic_config__: ClassVar[Any] = _STRICT
    concurrency: Positive = 2
    per_minute: Positive = 30


@dataclass(frozen=True)
class Settings:
    __pydantic_config__: ClassVar[Any] = _STRICT
    redis_url: Annotated[str, _Check(_redis_url)] | None = None
    data_dir: str = ".aggregator"
    # None: links are built from each request's own scheme, host and port (web.py).
    public_url: HttpUrl | None = None
    default_interval: Duration = 15 * 60.0
    min_interval: Duration = 60.0
    timeout: Duration = 20.0
    max_bytes: Size = 10 * 1000**2
    user_agent: str = ""
    retention: Retention = field(default_factory=Retention)
    per_host: PerHost = field(default_factory=PerHost)
    block_private_addresses: bool = False
    # Proxies whose X-Forwarded-Proto, -Host and -Port are believed (web.py).
    trusted_proxies: tuple[Network, ...] = ()
    # A WebSub hub advertised in our feeds and pinged when one changes (aggregator/push.py);
    # it is told our feeds' URLs, so it needs public_url (`_cross_checks`).
    websub_hub: HttpUrl | None = None

    @property
    def agent(self) -> str:
        if self.user_agent:
            return self.user_agent
        if self.public_url:
            return f"aggregator/{__version__} (+{self.public_url})"
        return f"aggregator/{__version__}"


@dataclass(frozen=True)
class Source:
    __pydantic_config__: ClassVar[Any] = _STRICT
    name: Annotated[str, _Check(_name)]
    url: HttpUrl
    category: Label | None = None
    tags: tuple[Label, ...] = ()
    title: str | None = None
    interval: Duration | None = None
    include: tuple[Pattern, ...] = ()
    exclude: tuple[Pattern, ...] = ()
    enabled: bool = True
    # Subscribe when the source advertises a WebSub hub (aggregator/push.py); polled as a
    # safety net meanwhile.
    websub: bool = False

    @property
    def category_name(self) -> str:
        return self.category or self.name

    @functools.cached_property  # a hash, read on every poll of the source
    def filing_key(self) -> str:
        """A fingerprint of what of this source's configuration shapes its stored entries:
        its filters, category, tags and title ("" when none is set). A poll that finds it
        changed reads the document whole, so the entries are filed anew and what the filters
        now refuse is taken back, though the server would answer 304."""
        if not (self.include or self.exclude or self.category or self.tags or self.title):
            return ""
        parts = (
            "include", *self.include, "exclude", *self.exclude,
            "category", self.category or "", "tags", *self.tags, "title", self.title or "",
        )  # fmt: skip
        blob = "\n".join(parts)
        return hashlib.blake2b(blob.encode("utf-8"), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Meta:
    __pydantic_config__: ClassVar[Any] = _STRICT
    title: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class _File:
    __pydantic_config__: ClassVar[Any] = _STRICT
    settings: Settings = field(default_factory=Settings)
    sources: tuple[Source, ...] = ()
    categories: dict[Label, Meta] = field(default_factory=dict)
    tags: dict[Label, Meta] = field(default_factory=dict)


_checkers: dict[type[Any], TypeAdapter[Any]] = {}


def _checker(kind: type[Any]) -> TypeAdapter[Any]:
    """pydantic's validator for one of the classes above, built on first use: only a
    configuration that is not in `config_cache` pays pydantic's import."""
    found = _checkers.get(kind)
    if found is None:
        from pydantic import TypeAdapter

        found = _checkers[kind] = TypeAdapter(kind)
    return found


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; `path` is the file it came from."""

    settings: Settings
    sources: tuple[Source, ...]
    categories: Mapping[str, Meta]
    tags: Mapping[str, Meta]
    path: Path
    data_dir: Path
    # name → source: a worker looks up every source it claims (a thousand a round).
    _by_name: Mapping[str, Source] = field(init=False, repr=False, compare=False)
    # A worker's WebSub tick reads them every second: made once, not a thousand checks a tick.
    _enabled: tuple[Source, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {s.name: s for s in self.sources})
        object.__setattr__(self, "_enabled", tuple(s for s in self.sources if s.enabled))

    def source(self, name: str) -> Source:
        return self._by_name[name]

    @property
    def enabled_sources(self) -> tuple[Source, ...]:
        return self._enabled

    def interval(self, source: Source) -> float:
        """The source's interval, never below the politeness floor `min_interval`."""
        wanted = source.interval or self.settings.default_interval
        return max(wanted, self.settings.min_interval)

    def category_names(self) -> list[str]:
        return sorted({s.category_name for s in self.sources} | set(self.categories))

    def tag_names(self) -> list[str]:
        return sorted({t for s in self.sources for t in s.tags} | set(self.tags))

    def category_title(self, category: str) -> str:
        meta = self.categories.get(category)
        return (meta.title if meta and meta.title else None) or category

    def tag_title(self, tag: str) -> str:
        meta = self.tags.get(tag)
        return (meta.title if meta and meta.title else None) or tag


def _place(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "constrained-")) or part in {"str", "float", "int"}:
            continue  # pydantic's names for the validator that failed, not places in the file
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _message(error: Any) -> str:
    if error["type"] in {"extra_forbidden", "unexpected_keyword_argument"}:
        return "unknown key"
    if error["type"] in {"missing", "missing_argument"}:
        return "required"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _cross_checks(raw: dict[str, Any]) -> list[str]:
    """Checks that span several options. They read the raw mapping, so they are reported even
    when some source also has a problem of its own."""
    problems: list[str] = []
    settings = raw.get("settings")
    if isinstance(settings, dict) and settings.get("websub_hub") and not settings.get("public_url"):
        problems.append(
            "settings.websub_hub: needs settings.public_url: the hub is told our feeds' URLs, "
            "which only public_url gives"
        )
    sources = raw.get("sources")
    if not isinstance(sources, list):
        return problems
    seen: dict[str, int] = {}
    for index, source in enumerate(sources):
        name = source.get("name") if isinstance(source, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(
                f"sources[{index}].name: duplicate name {name!r} (also sources[{seen[name]}])"
            )
        else:
            seen[name] = index
    return problems


def _read_yaml(text: str, path: Path) -> Any:
    """libyaml's safe loader when PyYAML has it (a feeds.yaml of 1,000 sources in 0.15 s, the
    pure-Python one in 0.36 s); ConfigError with the place of a syntax error."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        try:
            return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
        except yaml.YAMLError:
            # The pure-Python loader says where and what more precisely: ask it for the error.
            return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(top level)"
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([f"{where}: not valid YAML: {problem}"], str(path)) from err


def _validate(kind: type[Any], raw: Any) -> tuple[Any, list[str]]:
    """`raw` checked into `kind`, or None and every problem pydantic found, by place."""
    from pydantic import ValidationError

    try:
        return _checker(kind).validate_python(raw), []
    except ValidationError as err:
        return None, [f"{_place(e['loc'])}: {_message(e)}" for e in err.errors()]


def check_source(values: Mapping[str, Any]) -> Source:
    """One source as feeds.yaml would list it, checked; ValueError naming every problem."""
    source, problems = _validate(Source, dict(values))
    if problems:
        raise ValueError("; ".join(problems))
    assert isinstance(source, Source)
    return source


def parse(text: str, path: Path, redis_url: str | None = None) -> Config:
    """Validate the text of a feeds.yaml; raise ConfigError listing every problem."""
    raw = _read_yaml(text, path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): must be a mapping with settings and sources"], str(path))
    problems = _cross_checks(raw)
    data, invalid = _validate(_File, raw)
    if invalid or problems:
        raise ConfigError(invalid + problems, str(path))
    assert isinstance(data, _File)
    settings = data.settings
    if redis_url:
        try:
            settings = replace(settings, redis_url=_redis_url(redis_url))
        except ValueError as err:
            raise ConfigError([f"{ENV_REDIS_URL}: {err}"], str(path)) from err
    data_dir = Path(settings.data_dir)
    if not data_dir.is_absolute():
        data_dir = path.parent / data_dir
    return Config(
        settings=settings,
        sources=data.sources,
        categories=dict(data.categories),
        tags=dict(data.tags),
        path=path,
        data_dir=data_dir,
    )


# What a kept configuration depends on besides the file: the code that checks it.
_CHECKED_BY = (__file__, redis_urls.__file__, sys.modules[RetentionRule.__module__].__file__ or "")


def load(path: Path, redis_url: str | None = None, cache_dir: Path | None = None) -> Config:
    """The configuration in `path`; with `cache_dir`, kept there once checked and read back
    while the file, `redis_url` and the checking code are unchanged (`config_cache`)."""
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise ConfigError([f"cannot read the file: {err.strerror or err}"], str(path)) from err
    key = config_cache.Key(str(path), redis_url or "", blob, _CHECKED_BY)
    if cache_dir is not None:
        kept = config_cache.read(cache_dir, key)
        if isinstance(kept, Config):
            return kept
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError([f"not UTF-8 text: {err}"], str(path)) from err
    config = parse(text, path, redis_url)
    if cache_dir is not None:
        config_cache.write(cache_dir, key, config)
    return config


def config_path(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(ENV_CONFIG) or DEFAULT_CONFIG_PATH)


def from_environ(path: Path | None = None) -> Config:
    """Load the configuration the environment points at. The one reader of `os.environ`:
    `AGGREGATOR_CONFIG` names the file, `AGGREGATOR_REDIS_URL` wins over `settings.redis_url`,
    and the checked configuration is kept under `XDG_CACHE_HOME` (`config_cache`)."""
    environ = os.environ
    return load(
        path or config_path(environ),
        environ.get(ENV_REDIS_URL) or None,
        config_cache.directory(environ),
    )
