"""A checked feeds.yaml kept between commands, as Python keeps a module's bytecode.

Reading and checking feeds.yaml (PyYAML, then pydantic: their imports most of it) is a tenth of
a second of every command, while the file rarely changes between two runs from cron. The
checked configuration is kept in one file per feeds.yaml path and read back while the file's
bytes, the Redis URL from the environment and the modules that check it are the same; anything
else (a changed byte, a newer release, an unreadable or foreign file) reads feeds.yaml anew.
Only a valid configuration is kept, so a broken file is reported on every run.

The files are pickles, read only from a folder that belongs to the user running the command
and that no one else may write to (like the rest of `~/.cache`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aggregator import __version__

log = logging.getLogger(__name__)

# Changed whenever what is kept changes shape beyond what the checking modules' files show.
_FORMAT = 1
# Files kept, one per feeds.yaml path (and Redis URL): the most recently written stay.
KEEP = 16
# A file: this mark, the key's SHA-256 digest, then the pickled configuration.
_HEAD = b"aggregator-config\n"
_DIGEST = 32


@dataclass(frozen=True, slots=True)
class Key:
    """What a kept configuration was made from."""

    path: str  # as given: a relative data_dir is resolved against it
    redis_url: str
    blob: bytes  # the file's bytes
    checked_by: tuple[str, ...]  # the modules whose code decides the result

    def name(self) -> str:
        where = f"{self.path}\0{self.redis_url}".encode()
        return f"config-{hashlib.blake2b(where, digest_size=8).hexdigest()}.pickle"

    def digest(self) -> bytes:
        h = hashlib.sha256(f"{_FORMAT}\0{__version__}\0{self.path}\0{self.redis_url}".encode())
        for module in self.checked_by:
            try:
                st = os.stat(module)
            except OSError:
                continue
            h.update(f"\0{module}\0{st.st_mtime_ns}\0{st.st_size}".encode())
        h.update(b"\0")
        h.update(self.blob)
        return h.digest()


def directory(environ: Mapping[str, str]) -> Path | None:
    """`$XDG_CACHE_HOME/aggregator`, by default `~/.cache/aggregator`; None without a home."""
    base = environ.get("XDG_CACHE_HOME")
    if not base:
        home = environ.get("HOME")
        if not home:
            return None
        base = os.path.join(home, ".cache")
    return Path(base) / "aggregator"


def _ours(st: os.stat_result) -> bool:
    """Owned by this user, and writable by no one else."""
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read(folder: Path, key: Key) -> object | None:
    """The configuration kept for `key`, or None."""
    file = folder / key.name()
    try:
        with open(file, "rb") as f:
            if not (_ours(os.stat(folder)) and _ours(os.fstat(f.fileno()))):
                log.debug("config cache: %s is not this user's alone; not read", file)
                return None
            # The key's digest first, alone: a file kept for another key (an older release,
            # an edited feeds.yaml) is never unpickled further.
            if f.read(len(_HEAD)) != _HEAD or f.read(_DIGEST) != key.digest():
                return None
            kept: object = pickle.load(f)  # noqa: S301 - a file only this user can write
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - a damaged file is read past, never fatal
        log.debug("config cache: %s unreadable (%s); reading feeds.yaml", file, err)
        return None
    return kept


def write(folder: Path, key: Key, value: object) -> None:
    """Keep `value` for `key`; a folder that cannot be written to only costs the next run."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _ours(os.stat(folder)):
            log.debug("config cache: %s is not this user's alone; not written", folder)
            return
        import tempfile  # here: a read, every command's case, does not need it

        fd, temp = tempfile.mkstemp(dir=folder, prefix=".config-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_HEAD + key.digest())
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temp, folder / key.name())
        except BaseException:
            os.unlink(temp)
            raise
        _prune(folder)
    except OSError as err:
        log.debug("config cache: cannot write to %s (%s)", folder, err)


def _prune(folder: Path) -> None:
    """All but the KEEP most recently written files removed: a folder that saw many
    feeds.yaml paths (tests, trials) does not grow without bound."""
    files = sorted(folder.glob("config-*.pickle"), key=lambda f: f.stat().st_mtime_ns)
    for old in files[:-KEEP]:
        old.unlink(missing_ok=True)
