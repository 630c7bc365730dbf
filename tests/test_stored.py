"""The stored form of an entry (`Entry.to_stored` / `from_stored`): the entry's values as a JSON
array, compressed with Zstandard and the shipped dictionary behind a marker byte; what was
written before it (zstd and zlib of the JSON object, plain JSON) still reads."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
import zstandard

from aggregator.models import (
    DICT_MARK,
    STORED_FIELDS,
    ZLIB_MARK,
    ZSTD_MARK,
    Author,
    Enclosure,
    Entry,
    Origin,
)

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


def test_stored_form_is_the_dictionary_form_and_smaller_than_the_json() -> None:
    e = entry()
    blob = e.to_stored()
    assert blob[:1] == DICT_MARK
    assert len(blob) < len(e.to_json().encode("utf-8")) / 4
    # The keys are not written, and the frame reads only with the shipped dictionary.
    assert list(STORED_FIELDS) == list(e.to_dict())
    assert b'"content"' not in e.stored_fields()
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS).decompress(blob[1:])


def test_the_dictionary_saves_bytes_on_a_typical_entry() -> None:
    """An entry without the repetition of the one above: what the dictionary is for."""
    e = entry(
        content="<p>Hobby kernel authors are experimenting with memory-safe driver code.</p>",
        summary="Memory-safe drivers",
        title="A Quick Look at Memory-Safe Drivers",
    )
    as_before = ZSTD_MARK + zstandard.ZstdCompressor(level=1).compress(e.to_json_bytes())
    assert len(e.to_stored()) < 0.8 * len(as_before)


# Written by to_stored at DICT_MARK's introduction, for entry(): whatever changes the field
# list, the dictionary file or the frame format breaks it, and with it every stored entry.
DICT_FORM_OF_ENTRY = bytes.fromhex(
    "036006108d060034075b22616263222c226a6a7262222c2c5b74a087e9a2982026203c3e636e2f6120e6"
    "9198e8a681e5bca0e4b8897a637a617d312d30325430333a30343a3035677b22736f75726365223a226f"
    "74686572222c226964223a2278797a222c22223a2274616773223a5b227432225d7d5d2c2264225d1c00"
    "7035c8d2714d34585fbe8c99104079e73845c4c051205b62f6c107f5b8c086cd990c894b89094818f51d"
    "e6611ca61ef3f7bca7b0503a0684239503639e6cb11cc6170573a0770efa3f0205845d00f25d58a9ed05"
    "0a6b1408a604"
)


def test_the_dictionary_form_written_before_still_reads() -> None:
    assert Entry.from_stored(DICT_FORM_OF_ENTRY) == entry()


def test_json_bytes_is_the_same_json() -> None:
    e = entry()
    assert json.loads(e.to_json_bytes()) == json.loads(e.to_json()) == e.to_dict()


def test_what_was_stored_before_still_reads() -> None:
    e = entry()
    as_zstd = ZSTD_MARK + zstandard.ZstdCompressor(level=1).compress(e.to_json().encode("utf-8"))
    assert Entry.from_stored(as_zstd) == e
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
