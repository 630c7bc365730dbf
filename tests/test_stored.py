"""The stored form of an entry (`Entry.to_stored` / `from_stored`): Zstandard-compressed
JSON behind a marker byte; what was written before it (zlib, plain JSON) still reads."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from aggregator.models import ZLIB_MARK, ZSTD_MARK, Author, Enclosure, Entry, Origin

CST = timezone(timedelta(hours=8))


def entry(**changes: object) -> Entry:
    values: dict[str, object] = {
        "id": "abc",
        "source": "jjrb",
        "category": "财经",
        "tags": ("经济日报新闻", "t"),
        "title": "标题 & <title>",
        "link": "https://example.cn/a",
        "content": "<p>" + "经济日报 " * 300 + "</p>",
        "summary": "摘要",
        "first_seen": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "authors": (Author("张三", "z@example.cn", "https://example.cn/z"),),
        "published": datetime(2022, 4, 5, 5, 50, 27, tzinfo=CST),
        "updated": None,
        "enclosures": (Enclosure("https://example.cn/a.mp3", "audio/mpeg", 12),),
        "categories": ("财经",),
        "source_title": "经济日报",
        "source_link": "https://example.cn/",
        "guid": "g-1",
        "merged": (Origin("other", "xyz", "news", ("t2",)),),
        "digest": "d" * 24,
    }
    values.update(changes)
    return Entry(**values)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field_and_the_offset() -> None:
    e = entry()
    back = Entry.from_stored(e.to_stored())
    assert back == e
    assert back.published is not None and back.published.utcoffset() == timedelta(hours=8)


def test_stored_form_is_zstd_and_smaller_than_the_json() -> None:
    e = entry()
    blob = e.to_stored()
    assert blob[:1] == ZSTD_MARK
    assert len(blob) < len(e.to_json().encode("utf-8")) / 4


def test_json_bytes_is_the_same_json() -> None:
    e = entry()
    assert json.loads(e.to_json_bytes()) == json.loads(e.to_json()) == e.to_dict()


def test_what_was_stored_before_still_reads() -> None:
    e = entry()
    as_zlib = ZLIB_MARK + zlib.compress(e.to_json().encode("utf-8"), 1)
    assert Entry.from_stored(as_zlib) == e
    assert Entry.from_stored(e.to_json().encode("utf-8")) == e
    assert Entry.from_stored(e.to_json()) == e


@pytest.mark.parametrize(
    "text",
    [
        "lone \ud800 surrogate",  # orjson refuses it: the fallback encoder writes it
        "ctrl \x1f and \u2028 line sep",  # orjson escapes these itself
    ],
)
def test_text_json_finds_hard_still_round_trips(text: str) -> None:
    e = entry(source_title=text)
    assert Entry.from_stored(e.to_stored()) == e
