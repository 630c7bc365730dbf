"""Builds `aggregator/entries.dict`, the Zstandard dictionary stored entries are compressed
with (`Entry.to_stored`, marker 0x03).

    python bench/entry_dictionary.py

It is raw content, not a trained dictionary: the stored form (`Entry.stored_fields`) of every
entry of the test fixtures (tests/data/feeds and tests/data/readme: English and Chinese, RSS
1 and 2, Atom, JSON Feed), normalized as a poll would, filed under two categories. Given the
42 of tests/data/feeds, zstd's trainer did worse than the samples themselves (bench/MEMORY.md).
It is NOT built from the benchmark's generated farm, whose small vocabulary would flatter the
figure.

The file is part of the stored format: entries written with it read only with the same bytes.
Never rebuild it in place; a new dictionary goes to a new file behind a new marker byte.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator.config import Source  # noqa: E402
from aggregator.models import Entry  # noqa: E402
from aggregator.normalize import normalize  # noqa: E402
from aggregator.parse import parse  # noqa: E402

SAMPLES = (ROOT / "tests/data/feeds", ROOT / "tests/data/readme")


def sample_entries() -> list[Entry]:
    entries: list[Entry] = []
    for folder in SAMPLES:
        for path in sorted(folder.iterdir()):
            if path.suffix not in (".xml", ".rdf", ".json"):
                continue
            url = f"https://feeds.example.org/{path.name}"
            kind = "application/feed+json" if path.suffix == ".json" else "application/xml"
            feed = parse(path.read_bytes(), url=url, content_type=kind)
            for category in ("news", "科技"):
                source = Source(name=path.stem, url=url, tags=("tech", "标签"), category=category)
                entries += normalize(
                    source, feed, feed_url=url, fetched_at=datetime(2024, 6, 1, tzinfo=UTC)
                )
    return entries


def main() -> int:
    entries = sample_entries()
    data = b"".join(e.stored_fields() for e in entries)
    out = ROOT / "aggregator/entries.dict"
    out.write_bytes(data)
    print(f"{out.relative_to(ROOT)}: {len(data):,} bytes from {len(entries)} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
