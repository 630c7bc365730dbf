"""feeds.yaml and the environment, read and validated once into frozen objects.

Each option is typed and checked on its own, then one pass checks what spans several (duplicate
names). A bad file is refused whole with every problem named by its place, e.g.
`sources[3].url: not an http(s) URL`; nothing is ever half-applied. This module does no I/O but
reading the file it is given; `from_environ` is the one place `os.environ` is read.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from aggregator import __version__, redis_urls
from aggregator.errors import ConfigError
from aggregator.models import RetentionRule
from aggregator.text import xml_text

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


def _not_built(reason: str) -> Any:
    """A validator refusing a key of a feature not built yet, whatever its value, saying so
    (DESIGN.md: a setting the config accepts has effect)."""

    def refuse(value: Any) -> Any:
        raise ValueError(f"not supported yet: {reason}")

    return BeforeValidator(refuse)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Label = Annotated[str, AfterValidator(_label)]
Pattern = Annotated[str, AfterValidator(_pattern)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Retention(_Frozen):
    max_entries: int = Field(1000, gt=0)
    max_age: Duration = 90 * 86400.0
    keep_per_source: int = Field(50, ge=0)

    @property
    def rule(self) -> RetentionRule:
        return RetentionRule(self.max_entries, self.max_age, self.keep_per_source)


class PerHost(_Frozen):
    concurrency: int = Field(2, gt=0)
    per_minute: int = Field(30, gt=0)


class Settings(_Frozen):
    redis_url: Annotated[str, AfterValidator(_redis_url)] | None = None
    data_dir: str = ".aggregator"
    # None: links are built from each request's own scheme, host and port (web.py).
    public_url: HttpUrl | None = None
    default_interval: Duration = 15 * 60.0
    min_interval: Duration = 60.0
    timeout: Duration = 20.0
    max_bytes: Size = 10 * 1000**2
    user_agent: str = ""
    retention: Retention = Field(default_factory=Retention)
    per_host: PerHost = Field(default_factory=PerHost)
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


class Source(_Frozen):
    name: Annotated[str, AfterValidator(_name)]
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

    @property
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


class Meta(_Frozen):
    title: str | None = None
    description: str | None = None


class _File(_Frozen):
    settings: Settings = Field(default_factory=Settings)
    sources: tuple[Source, ...] = ()
    categories: dict[Label, Meta] = {}
    tags: dict[Label, Meta] = {}


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
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
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


# libyaml's safe loader reads a feeds.yaml of 1,000 sources in 0.15 s, the pure-Python one in
# 0.36 s: that is most of what `aggregator status` takes.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        # The pure-Python loader says where and what more precisely: ask it for the error.
        return yaml.safe_load(text)


def parse(text: str, path: Path, redis_url: str | None = None) -> Config:
    """Validate the text of a feeds.yaml; raise ConfigError listing every problem."""
    try:
        raw = _read_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(top level)"
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([f"{where}: not valid YAML: {problem}"], str(path)) from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): must be a mapping with settings and sources"], str(path))
    problems = _cross_checks(raw)
    try:
        data = _File.model_validate(raw)
    except ValidationError as err:
        problems[:0] = [f"{_place(e['loc'])}: {_message(e)}" for e in err.errors()]
        raise ConfigError(problems, str(path)) from err
    if problems:
        raise ConfigError(problems, str(path))
    settings = data.settings
    if redis_url:
        try:
            settings = settings.model_copy(update={"redis_url": _redis_url(redis_url)})
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


def load(path: Path, redis_url: str | None = None) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"cannot read the file: {err.strerror or err}"], str(path)) from err
    except UnicodeDecodeError as err:
        raise ConfigError([f"not UTF-8 text: {err}"], str(path)) from err
    return parse(text, path, redis_url)


def config_path(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(ENV_CONFIG) or DEFAULT_CONFIG_PATH)


def from_environ(path: Path | None = None) -> Config:
    """Load the configuration the environment points at. The one reader of `os.environ`:
    `AGGREGATOR_CONFIG` names the file, `AGGREGATOR_REDIS_URL` wins over `settings.redis_url`."""
    environ = os.environ
    return load(path or config_path(environ), environ.get(ENV_REDIS_URL) or None)
