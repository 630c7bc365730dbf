"""Redis memory per stored entry, and where it goes.

Run by hand (not part of the test suite):

    python bench/memory.py [--entries 10000] [--sources 10] [--batch 20] [--seed 1]
                           [--zset-max-listpack-entries N] [--json PATH]

Starts a private redis-server (the one on PATH) on a free loopback port, builds `--entries`
realistic entries (1-3 KB of sanitized HTML content, Chinese, English and mixed sources, two
tags each, authors, summaries, some enclosures) through `aggregator.normalize.normalize`, as a
poll would, and saves them with `Store.save_poll` in batches of `--batch` per source-poll,
the sources taking turns. Then it compares Redis's `used_memory` growth (from a FLUSHALL
baseline) with the entries' own JSON (`len(entry.to_json().encode())`), breaks the growth down
by key kind (MEMORY USAGE of a sample of each kind, and the fall of `used_memory` when every key
of the kind is deleted), and measures what-ifs: the entry strings rewritten without default
fields, zlib-compressed, and zlib-compressed with a preset dictionary. Results go to stdout as
Markdown and, with `--json PATH`, as JSON; bench/MEMORY.md discusses them. Nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import redis
from procs import free_port, redis_server

from aggregator import keys
from aggregator.config import Source
from aggregator.models import Author, Enclosure, Entry, ParsedEntry, ParsedFeed
from aggregator.normalize import normalize
from aggregator.store import Store

# ------------------------------------------------------------------------------------------
# Realistic entries
# ------------------------------------------------------------------------------------------

# Article text is drawn word by word from two made-up vocabularies (Chinese words of 1-4
# characters from 2,500 CJK characters; English-like words weighted by letter frequency), with
# Zipf-distributed word frequencies as in real text. A fixed pool of real sentences would repeat
# inside one entry and compress far better than news does: this text compresses (zlib, per
# entry) about as real articles do, Chinese a little worse (~0.60 vs ~0.53), English ~0.49.
VOCABULARY = 6000
LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
LETTER_WEIGHTS = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8]
LETTER_WEIGHTS += [2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1]


class Words:
    """Two Zipf-weighted vocabularies and sentences made of them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        chars = [chr(c) for c in rng.sample(range(0x4E00, 0x9FA6), 2500)]
        self.zh = [
            "".join(rng.choice(chars) for _ in range(rng.choice((1, 2, 2, 2, 3, 4))))
            for _ in range(VOCABULARY)
        ]
        lengths = (2, 3, 3, 4, 5, 5, 6, 7, 8, 9)
        self.en = [
            "".join(rng.choices(LETTERS, LETTER_WEIGHTS, k=rng.choice(lengths)))
            for _ in range(VOCABULARY)
        ]
        self.cumulative = list(itertools.accumulate(1 / (i + 1) for i in range(VOCABULARY)))

    def _word(self, words: list[str]) -> str:
        at = bisect.bisect(self.cumulative, self.rng.random() * self.cumulative[-1])
        return words[min(at, VOCABULARY - 1)]

    def sentence(self, zh: bool) -> str:
        if zh:
            body = "".join(self._word(self.zh) for _ in range(self.rng.randint(8, 20)))
            return body + self.rng.choice("。。。，；！？")
        words = [self._word(self.en) for _ in range(self.rng.randint(8, 22))]
        return " ".join(words).capitalize() + "."

    def title(self, zh: bool) -> str:
        if zh:
            return "".join(self._word(self.zh) for _ in range(self.rng.randint(4, 9)))
        return " ".join(self._word(self.en) for _ in range(self.rng.randint(5, 11))).title()


ZH_NAMES = ["王晓明", "李娜", "张伟", "刘洋", "陈静", "本报记者"]
EN_NAMES = ["Jane Doe", "John Smith", "Alex Chen", "Maria Garcia", "Staff Reporter"]
TAG_POOL = ["经济日报新闻", "财经", "科技", "国内", "world", "tech", "business", "science"]
CATEGORIES = ["要闻", "国内", "财经", "科技", "国际", "社会"]


@dataclass(frozen=True, slots=True)
class Profile:
    """One source: its config, its host and its language mix (share of Chinese sentences)."""

    source: Source
    host: str
    zh_share: float
    zone: timezone


def profiles(count: int, rng: random.Random) -> list[Profile]:
    result = []
    for i in range(count):
        kind = i % 3  # Chinese, English, mixed sources take turns
        zh_share = (0.95, 0.0, 0.5)[kind]
        name = f"source-{i:02d}"
        tags = tuple(rng.sample(TAG_POOL, 2))
        host = f"news{i}.example.{'cn' if kind != 1 else 'com'}"
        source = Source(
            name=name,
            url=f"https://{host}/rss.xml",
            category=f"category-{i:02d}",
            tags=tags,
        )
        zone = timezone(timedelta(hours=8)) if kind != 1 else UTC
        result.append(Profile(source, host, zh_share, zone))
    return result


def _sentence(profile: Profile, words: Words) -> str:
    return words.sentence(words.rng.random() < profile.zh_share)


def html_content(profile: Profile, words: Words, serial: int) -> str:
    """1-3 KB (UTF-8) of typical article HTML: paragraphs, some markup, a link, an image."""
    rng = words.rng
    target = rng.randint(1024, 3072)
    parts: list[str] = []
    size = 0
    while size < target:
        sentences = " ".join(_sentence(profile, words) for _ in range(rng.randint(1, 3)))
        roll = rng.random()
        if roll < 0.1:
            block = f'<p><img src="/images/{serial}-{len(parts)}.jpg" alt="配图"></p>'
        elif roll < 0.2:
            block = f'<p>{sentences} <a href="/related/{serial}.html">相关阅读</a></p>'
        elif roll < 0.3:
            block = f"<p><strong>{sentences}</strong></p>"
        else:
            block = f"<p>{sentences}</p>"
        parts.append(block)
        size += len(block.encode())
    return "".join(parts)


def parsed_entry(profile: Profile, words: Words, serial: int, when: datetime) -> ParsedEntry:
    rng = words.rng
    zh = rng.random() < profile.zh_share
    link = f"https://{profile.host}/{when:%Y/%m/%d}/article-{serial}.html"
    if rng.random() < 0.3:
        link += "?utm_source=rss&utm_medium=feed"
    roll = rng.random()
    if roll < 0.5:
        guid = link
    elif roll < 0.8:
        guid = f"tag:{profile.host},{when:%Y}:{serial}"
    else:
        guid = str(1_000_000 + serial)
    title = words.title(zh)
    content = html_content(profile, words, serial)
    summary = ""
    if rng.random() < 0.6:
        summary = " ".join(_sentence(profile, words) for _ in range(2))
    authors: tuple[Author, ...] = ()
    if rng.random() < 0.7:
        name = rng.choice(ZH_NAMES if zh else EN_NAMES)
        email = f"editor{serial % 7}@{profile.host}" if rng.random() < 0.15 else ""
        authors = (Author(name=name, email=email),)
    enclosures: tuple[Enclosure, ...] = ()
    if rng.random() < 0.15:
        enclosures = (
            Enclosure(f"/media/{serial}.jpg", "image/jpeg", rng.randint(20_000, 400_000)),
        )
    categories = tuple(rng.sample(CATEGORIES, rng.randint(0, 2)))
    published = when.astimezone(profile.zone).replace(microsecond=0)
    updated = published + timedelta(hours=2) if rng.random() < 0.2 else None
    return ParsedEntry(
        guid=guid,
        link=link,
        title=title,
        content=content,
        summary=summary,
        authors=authors,
        published=published,
        updated=updated,
        enclosures=enclosures,
        categories=categories,
    )


def build_polls(
    total: int, sources: int, batch: int, seed: int, now: datetime
) -> list[tuple[Profile, list[Entry]]]:
    """Every poll in the order a scheduler would run them: sources take turns, each poll
    bringing `batch` new entries, newest last, dated over the last 30 days."""
    rng = random.Random(seed)
    people = profiles(sources, rng)
    words = Words(rng)
    per_source = [total // sources + (1 if i < total % sources else 0) for i in range(sources)]
    queues: list[list[list[Entry]]] = []
    serial = 0
    for profile, count in zip(people, per_source, strict=True):
        step = timedelta(days=30) / max(count, 1)
        start = now - timedelta(days=30)
        parsed = []
        for n in range(count):
            serial += 1
            parsed.append(parsed_entry(profile, words, serial, start + n * step))
        polls = []
        for first in range(0, count, batch):
            chunk = parsed[first : first + batch]
            feed = ParsedFeed(
                title=f"{profile.source.name} 新闻",
                link=f"https://{profile.host}/",
                format="rss20",
                entries=tuple(reversed(chunk)),  # documents list the newest first
            )
            polls.append(
                normalize(
                    profile.source,
                    feed,
                    feed_url=profile.source.url,
                    fetched_at=now,
                )
            )
        queues.append(polls)
    ordered: list[tuple[Profile, list[Entry]]] = []
    for round_ in range(max(len(q) for q in queues)):
        for profile, polls in zip(people, queues, strict=True):
            if round_ < len(polls):
                ordered.append((profile, polls[round_]))
    return ordered


def poll_state(profile: Profile, entries: Sequence[Entry], now: datetime) -> dict[str, Any]:
    """The state fields `update.Updater.poll` writes after a 200 with new entries."""
    return {
        "url": profile.source.url,
        "last_poll": now.timestamp(),
        "etag": f'W/"{random.getrandbits(64):016x}"',
        "last_modified": "Wed, 27 Nov 2026 11:00:00 GMT",
        "last_error": "",
        "failures": 0,
        "gone": 0,
        "last_success": now.timestamp(),
        "status": 200,
        "entries": len(entries),
        "final_url": profile.source.url,
        "id_mode": "guid",
        "body_hash": f"{random.getrandbits(96):024x}",
    }


# ------------------------------------------------------------------------------------------
# A private redis-server
# ------------------------------------------------------------------------------------------


@contextmanager
def redis_url(extra: Sequence[str] = ()) -> Iterator[str]:
    """The URL of a private redis-server in a temp folder, removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="aggregator-bench-memory-"))
    port = free_port()
    try:
        with redis_server(workdir, port, extra):
            yield f"redis://127.0.0.1:{port}/0"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------

KINDS = (
    "entry",
    "index:all",
    "index:category",
    "index:tag",
    "canon",
    "alias",
    "gone",
    "source",
    "source guids",
    "due",
    "version",
    "other",
)


def kind_of(key: str) -> str:
    rest = key.removeprefix(keys.PREFIX)
    if rest.startswith("entry:"):
        return "entry"
    if rest == "index:all":
        return "index:all"
    if rest.startswith("index:category:"):
        return "index:category"
    if rest.startswith("index:tag:"):
        return "index:tag"
    for prefix in ("canon", "alias", "gone", "version"):
        if rest.startswith(prefix + ":"):
            return prefix
    if rest.startswith("source:"):
        return "source guids" if rest.endswith(":guids") else "source"
    if rest == "due":
        return "due"
    return "other"


@dataclass
class KindStats:
    """One kind of key. `usage` is MEMORY USAGE (key name, value, dict entry) extrapolated
    from the sampled keys; `freed` is how much `used_memory` fell when every key of the kind
    was deleted, which also counts the expires-dict entry and hash-table shrinking."""

    keys: int = 0
    sampled: int = 0
    usage: float = 0.0
    payload: float = 0.0  # STRLEN of strings; zset members + 8 per score; hash fields + values
    elements: int = 0  # zset members or hash fields, over every key of the kind
    with_ttl: int = 0
    key_bytes: int = 0
    freed: int = 0
    encodings: dict[str, int] = field(default_factory=dict)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _chunks(items: Sequence[str], size: int = 1000) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def keys_by_kind(client: redis.Redis) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for key in client.scan_iter(match=keys.PREFIX + "*", count=1000):
        found[kind_of(str(key))].append(str(key))
    return {k: sorted(found[k]) for k in KINDS if k in found}


def inspect(client: redis.Redis, names: Sequence[str], sample: int, seed: int) -> KindStats:
    """MEMORY USAGE, encoding and payload of up to `sample` keys (every key of one kind has
    one type); TTLs and element counts over all of them."""
    stats = KindStats(keys=len(names), key_bytes=sum(len(n.encode()) for n in names))
    chosen = list(names) if len(names) <= sample else random.Random(seed).sample(names, sample)
    stats.sampled = len(chosen)
    type_ = str(client.type(names[0]))
    pipe = client.pipeline(transaction=False)
    for name in chosen:
        pipe.memory_usage(name, samples=0)
        pipe.object("encoding", name)
        if type_ == "string":
            pipe.strlen(name)
        elif type_ == "zset":
            pipe.zrange(name, 0, -1)
        else:
            pipe.hgetall(name)
    replies = pipe.execute()
    usage = payload = 0
    encodings: Counter[str] = Counter()
    for i in range(len(chosen)):
        size, encoding, value = replies[3 * i : 3 * i + 3]
        usage += int(size or 0)
        encodings[str(encoding)] += 1
        if isinstance(value, int):
            payload += value
        elif isinstance(value, list):
            payload += sum(len(str(m).encode()) + 8 for m in value)
        elif isinstance(value, dict):
            payload += sum(len(str(k).encode()) + len(str(v).encode()) for k, v in value.items())
    scale = len(names) / len(chosen)
    stats.usage = usage * scale
    stats.payload = payload * scale
    stats.encodings = dict(encodings.most_common())
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.pttl(name)
    stats.with_ttl = sum(1 for ttl in pipe.execute() if int(ttl) >= 0)
    if type_ in {"zset", "hash"}:
        pipe = client.pipeline(transaction=False)
        for name in names:
            if type_ == "zset":
                pipe.zcard(name)
            else:
                pipe.hlen(name)
        stats.elements = sum(int(count) for count in pipe.execute())
    return stats


def free_by_kind(client: redis.Redis, found: dict[str, list[str]]) -> tuple[dict[str, int], int]:
    """Delete every kind in turn and see `used_memory` fall. Returns the fall per kind and
    what is left above the empty server afterwards (hash tables not yet shrunk, clients)."""
    freed: dict[str, int] = {}
    for kind, names in found.items():
        time.sleep(0.3)  # let serverCron finish resizing hash tables first
        before = used_memory(client)
        for chunk in _chunks(names):
            client.delete(*chunk)
        time.sleep(0.3)
        freed[kind] = before - used_memory(client)
    return freed, used_memory(client)


def compact_json(raw: bytes) -> str:
    """Stored entry JSON without the fields at their defaults (None, "", [])."""
    data = {k: v for k, v in json.loads(raw).items() if v not in (None, "", [])}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def json_by_field(entries: Sequence[Entry]) -> dict[str, int]:
    """Bytes of `to_json()` spent on each field (`"name":value,`), summed over `entries`."""
    totals: Counter[str] = Counter()
    for entry in entries:
        for name, value in entry.to_dict().items():
            pair = json.dumps({name: value}, ensure_ascii=False, separators=(",", ":"))
            totals[name] += len(pair.encode()) - 1  # less the braces, plus a comma
    return dict(totals.most_common())


def size_class(size: int) -> int:
    """jemalloc 5's allocation for `size` bytes (16-byte quantum; four classes per doubling
    above 128 bytes). What Redis counts in used_memory is the class, not the request."""
    if size <= 8:
        return 8
    if size <= 128:
        return (size + 15) // 16 * 16
    step = 1 << ((size - 1).bit_length() - 3)
    return (size + step - 1) // step * step


def sds_size(length: int) -> int:
    """An sds string's request: header (by length) + bytes + NUL."""
    header = 1 if length < 32 else 3 if length < 256 else 5 if length < 65536 else 9
    return header + length + 1


def compressor(training: Sequence[bytes]) -> Callable[[bytes], bytes]:
    """zlib -6 with a preset dictionary: the JSON of `training` entries, up to zlib's 32 KB
    window, so field names, markup and frequent words become back-references. The training
    entries themselves are compressed without it (they would otherwise cost nothing)."""
    zdict = b"".join(training)[-32768:]
    held_out = set(training)

    def compress(raw: bytes) -> bytes:
        if raw in held_out:
            return zlib.compress(raw, 6)
        engine = zlib.compressobj(6, zdict=zdict)
        return engine.compress(raw) + engine.flush()

    return compress


def variants(originals: Sequence[bytes]) -> dict[str, Callable[[bytes], bytes]]:
    """Other ways to store the entry strings, by label."""
    step = max(len(originals) // 16, 1)  # ~16 entries from all sources make 32 KB
    compress_with_dictionary = compressor(originals[::step][:16])
    return {
        "entry JSON, plain (as stored before compression)": lambda raw: raw,
        "entry JSON without default-valued fields": lambda raw: compact_json(raw).encode(),
        "entry JSON compressed (zlib -6)": lambda raw: zlib.compress(raw, 6),
        "entry JSON compressed (zlib -6, 32 KB preset dictionary)": compress_with_dictionary,
    }


def what_ifs(url: str, names: Sequence[str]) -> dict[str, int]:
    """`used_memory` with every entry string replaced by each variant (then restored). The
    variants start from each entry's JSON (stored entries are compressed: `Entry.to_stored`)."""
    client = redis.Redis.from_url(url)
    try:
        originals: list[bytes] = []
        for chunk in _chunks(names):
            values = client.mget(chunk)
            assert all(isinstance(v, bytes) for v in values)
            originals += [v for v in values if isinstance(v, bytes)]
        plain = [Entry.from_stored(v).to_json().encode() for v in originals]
        results = {}
        for label, change in variants(plain).items():
            _set_all(client, names, [change(raw) for raw in plain])
            time.sleep(0.3)
            results[label] = int(client.info("memory")["used_memory"])
        _set_all(client, names, originals)
        return results
    finally:
        client.close()


def _set_all(client: redis.Redis, names: Sequence[str], values: Sequence[bytes]) -> None:
    pipe = client.pipeline(transaction=False)
    for name, value in zip(names, values, strict=True):
        pipe.set(name, value)
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()


@dataclass
class Result:
    entries: int
    sources: int
    batch: int
    polls: int
    zset_max_listpack_entries: int | None
    seconds_building: float
    seconds_saving: float
    json_bytes: int  # sum of len(entry.to_json().encode()), before saving
    compact_json_bytes: int  # the same without default-valued fields
    zlib_json_bytes: int  # zlib level 6 of to_json()
    baseline: int  # used_memory after FLUSHALL
    after: int  # used_memory after saving
    left: int  # used_memory after deleting every key
    what_ifs: dict[str, int]  # used_memory with entry strings changed so
    json_fields: dict[str, int]
    entry_rounding: int  # estimated size-class rounding of the entry strings' values
    info_after: dict[str, Any]
    memory_stats: dict[str, Any]
    kinds: dict[str, KindStats]
    redis_version: str
    allocator: str

    @property
    def growth(self) -> int:
        return self.after - self.baseline


def run(args: argparse.Namespace) -> Result:
    now = datetime.now(UTC).replace(microsecond=0)
    started = time.perf_counter()
    polls = build_polls(args.entries, args.sources, args.batch, args.seed, now)
    built = time.perf_counter() - started
    entries = [e for _, poll in polls for e in poll]
    blobs = [e.to_json().encode() for e in entries]
    extra: list[str] = []
    if args.zset_max_listpack_entries is not None:
        extra += ["--zset-max-listpack-entries", str(args.zset_max_listpack_entries)]
    with redis_url(extra) as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        client.flushall()
        baseline = used_memory(client)
        store = Store.from_url(url)
        due = now + timedelta(minutes=15)
        started = time.perf_counter()
        saved = 0
        for profile, poll in polls:
            guids = {e.link: e.guid for e in poll if e.link and e.guid}
            state = poll_state(profile, poll, now)
            saved += store.save_poll(profile.source.name, poll, state, due, guids=guids).new
        saving = time.perf_counter() - started
        store.close()
        if saved != len(entries):
            raise RuntimeError(f"stored {saved} new entries of {len(entries)}")
        time.sleep(0.3)
        info = dict(client.info("memory"))
        after = int(info["used_memory"])
        stats = dict(client.memory_stats())
        memory_stats = {**stats.pop("db.0", {}), **stats}
        found = keys_by_kind(client)
        changed = what_ifs(url, found["entry"])
        lengths = []
        for chunk in _chunks(found["entry"]):
            pipe = client.pipeline(transaction=False)
            for name in chunk:
                pipe.strlen(name)
            lengths += [int(n) for n in pipe.execute()]
        rounding = sum(size_class(sds_size(n)) - sds_size(n) for n in lengths)
        kinds = {k: inspect(client, names, args.sample, args.seed) for k, names in found.items()}
        freed, left = free_by_kind(client, found)
        for kind, value in freed.items():
            kinds[kind].freed = value
        version = str(client.info("server").get("redis_version", "?"))
        client.close()
    return Result(
        entries=len(entries),
        sources=args.sources,
        batch=args.batch,
        polls=len(polls),
        zset_max_listpack_entries=args.zset_max_listpack_entries,
        seconds_building=round(built, 2),
        seconds_saving=round(saving, 2),
        json_bytes=sum(map(len, blobs)),
        compact_json_bytes=sum(len(compact_json(b).encode()) for b in blobs),
        zlib_json_bytes=sum(len(zlib.compress(b, 6)) for b in blobs),
        baseline=baseline,
        after=after,
        left=left,
        what_ifs=changed,
        json_fields=json_by_field(entries),
        entry_rounding=rounding,
        info_after={
            k: info[k]
            for k in (
                "used_memory",
                "used_memory_dataset",
                "used_memory_overhead",
                "mem_fragmentation_ratio",
                "allocator_frag_ratio",
            )
            if k in info
        },
        memory_stats={
            k: memory_stats[k]
            for k in (
                "overhead.hashtable.main",
                "overhead.hashtable.expires",
                "clients.normal",
                "keys.count",
            )
            if k in memory_stats
        },
        kinds=kinds,
        redis_version=version,
        allocator=str(info.get("mem_allocator", "?")),
    )


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def report(result: Result, command: str) -> str:
    n = result.entries
    growth = result.growth
    json_total = result.json_bytes
    listpack = result.zset_max_listpack_entries
    lines = [
        f"Command: `{command}`",
        "",
        f"Redis {result.redis_version} ({result.allocator}), zset-max-listpack-entries "
        f"{listpack if listpack is not None else 'default (128)'}; {n:,} entries from "
        f"{result.sources} sources in {result.polls:,} polls of {result.batch} "
        f"(built in {result.seconds_building} s, saved in {result.seconds_saving} s).",
        "",
        "| measure | bytes | per entry | / JSON |",
        "| --- | ---: | ---: | ---: |",
        f"| entries' JSON, `len(entry.to_json().encode())` | {json_total:,} | "
        f"{json_total / n:,.0f} | 1.000 |",
        f"| `used_memory` growth (after saving − after FLUSHALL) | {growth:,} | "
        f"{growth / n:,.0f} | **{growth / json_total:.3f}** |",
        f"| entries' JSON without default-valued fields | {result.compact_json_bytes:,} | "
        f"{result.compact_json_bytes / n:,.0f} | {result.compact_json_bytes / json_total:.3f} |",
        f"| entries' JSON compressed (zlib -6, each alone) | {result.zlib_json_bytes:,} | "
        f"{result.zlib_json_bytes / n:,.0f} | {result.zlib_json_bytes / json_total:.3f} |",
        *(
            f"| what-if `used_memory` growth, {label} | {used - result.baseline:,} | "
            f"{(used - result.baseline) / n:,.0f} | {(used - result.baseline) / json_total:.3f} |"
            for label, used in result.what_ifs.items()
        ),
        "",
        f"**Redis bytes / JSON bytes = {growth / json_total:.3f}** (target ≤ 1.2); "
        f"{growth / n:,.0f} bytes per entry.",
        "",
        "| key kind | keys | elements | encoding | TTL | payload | MEMORY USAGE | freed by DEL |"
        " per entry | share | overhead/key | overhead/element |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    freed_total = 0
    for kind, s in result.kinds.items():
        freed_total += s.freed
        encodings = ", ".join(
            f"{e}" if len(s.encodings) == 1 else f"{e} ×{c}" for e, c in s.encodings.items()
        )
        overhead = s.freed - s.payload
        per_element = f"{overhead / s.elements:,.0f}" if s.elements else ""
        elements = f"{s.elements:,}" if s.elements else ""
        lines.append(
            f"| {kind} | {s.keys:,} | {elements} | {encodings} | {s.with_ttl:,} | "
            f"{s.payload:,.0f} | {s.usage:,.0f} | {s.freed:,} | {s.freed / n:,.1f} | "
            f"{s.freed / growth:.1%} | {overhead / s.keys:,.0f} | {per_element} |"
        )
    rest = growth - freed_total
    entry = result.kinds["entry"]
    key_name = len(keys.entry("0" * 16))
    stats = result.memory_stats
    lines += [
        f"| (not freed by DEL: hash tables, clients) | | | | | | | {rest:,} | {rest / n:,.1f} | "
        f"{rest / growth:.1%} | | |",
        "",
        f"Entry strings: {(entry.freed - entry.payload) / entry.keys:,.0f} bytes of overhead"
        f" per entry over the JSON itself, of which about {result.entry_rounding / n:,.0f}"
        " is jemalloc rounding the value up to its size class (estimated from each STRLEN),"
        f" {size_class(sds_size(key_name))} the key name's sds ({key_name} bytes), 16 the robj,"
        " 32 the dict entry, the rest sds headers.",
        "",
        'Entry JSON by field (bytes per entry, `"name":value,`): '
        + ", ".join(f"{k} {v / n:,.0f}" for k, v in result.json_fields.items())
        + ".",
        "",
        "MEMORY STATS after saving: " + ", ".join(f"{k}={v:,}" for k, v in stats.items()) + ".",
        "",
        "payload: STRLEN of strings; sorted-set members plus 8 bytes per score; hash fields"
        " plus values. MEMORY USAGE (key name, value, dict entry) is extrapolated from a"
        " sample per kind; freed by DEL is the fall of `used_memory` when every key of the"
        " kind is deleted (so it counts expires entries and table shrinking too). overhead ="
        " freed − payload.",
        "",
        "INFO memory after saving: "
        + ", ".join(f"{k}={v}" for k, v in result.info_after.items())
        + f"; after deleting every key: used_memory={result.left} "
        f"(baseline {result.baseline}).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Redis memory per stored entry.")
    parser.add_argument("--entries", type=int, default=10_000, help="entries to store")
    parser.add_argument("--sources", type=int, default=10, help="sources (one category each)")
    parser.add_argument("--batch", type=int, default=20, help="new entries per source-poll")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample", type=int, default=2000, help="keys per kind to inspect")
    parser.add_argument(
        "--zset-max-listpack-entries",
        type=int,
        help="start redis-server with this setting (default: the server's, 128)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    if min(args.entries, args.sources, args.batch, args.sample) < 1:
        parser.error("--entries, --sources, --batch and --sample must be positive")
    random.seed(args.seed)  # poll_state's etags and body hashes
    result = run(args)
    command = " ".join(["python bench/memory.py", *(sys.argv[1:] if argv is None else argv)])
    print(report(result, command))
    if args.json:
        data = {**asdict(result), "growth": result.growth, "command": command}
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
