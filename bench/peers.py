"""The peers of bench/poll.py, each run as a whole process as a cron job would run it:

    python bench/peers.py reader DB URLS_FILE   # reader: add the feeds, update_feeds once
    python bench/peers.py feedparser DIR        # feedparser.parse of every file, 2 processes

Each prints the entries it holds or parsed, for the benchmark to check.
"""

from __future__ import annotations

import sys
from multiprocessing import Pool
from pathlib import Path

READER_WORKERS = 8
FEEDPARSER_PROCESSES = 2


def reader(db: str, urls_file: str) -> int:
    from reader import make_reader

    r = make_reader(db)
    for url in Path(urls_file).read_text().split():
        r.add_feed(url, exist_ok=True)
    r.update_feeds(workers=READER_WORKERS, scheduled=False)
    broken = sum(1 for f in r.get_feeds() if f.last_exception is not None)
    print(f"entries {r.get_entry_counts().total} broken {broken}")
    r.close()
    return 1 if broken else 0


def _parse(path: Path) -> int:
    import feedparser

    return len(feedparser.parse(path.read_bytes()).entries)  # its defaults: sanitize, resolve


def feedparser_alone(folder: str) -> int:
    files = sorted(Path(folder).iterdir())  # JSON Feed too: feedparser finds no entries there
    with Pool(FEEDPARSER_PROCESSES) as pool:
        parsed = sum(pool.map(_parse, files, chunksize=8))
    print(f"entries {parsed}")
    return 0


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    sys.exit(reader(*args) if what == "reader" else feedparser_alone(*args))
