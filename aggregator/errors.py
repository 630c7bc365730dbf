"""The exception tree: one root, and what each branch means to the caller.

A `SourceError` (fetch or parse) belongs to one source: it is recorded on that source and never
stops the others. A `StorageError` is retryable: the web answers it with 503. A `ConfigError`
carries every problem found, so a bad feeds.yaml is refused whole. "Not modified" is not an
error: it is the `NotModified` value in `aggregator.models`.
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(AggregatorError):
    """feeds.yaml (or the environment) is invalid; `problems` lists each one by its place."""

    def __init__(self, problems: list[str], path: str = "") -> None:
        self.problems = problems
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{len(problems)} problem(s): " + "; ".join(problems))


class SourceError(AggregatorError):
    """A source could not be polled. `str()` is one line a person reads: the stage, the URL,
    the reason and, for a parse error, the cause's own message (`detail`)."""

    kind = "error"
    shows_cause = True

    def __init__(self, url: str, reason: str, *, detail: str | None = None) -> None:
        self.url = url
        self.reason = reason
        # None: worked out from the chained cause whenever asked; "": nothing to add.
        self._detail = detail
        super().__init__(url, reason)

    @property
    def detail(self) -> str:
        """One line about the cause ("SAXParseException: <unknown>:2:16: no element found"),
        or "" when there is nothing a person would be helped by."""
        if self._detail is not None:
            return self._detail
        cause = self.__cause__
        if not self.shows_cause or cause is None or not str(cause):
            return ""
        return one_line(f"{type(cause).__name__}: {cause}", MAX_DETAIL)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling drops __cause__, and a process pool puts the worker's whole traceback in
        # its place: the detail travels as text, worked out where the cause still is.
        return (type(self), self.args, {**self.__dict__, "_detail": self.detail})

    def __str__(self) -> str:
        detail = self.detail
        suffix = f": {detail}" if detail else ""
        return one_line(f"{self.kind} {self.url}: {self.reason}{suffix}")


class FetchError(SourceError):
    """The HTTP request failed: network, status, size, timeout or a refused address. Its
    reason says it all in words (`connection refused by 127.0.0.1:9`): the HTTP client's
    chain of causes goes to the debug log, never into `str()`."""

    kind = "fetch"
    shows_cause = False

    def __init__(
        self, url: str, reason: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(url, reason)
        self.status = status
        self.retry_after = retry_after  # seconds the server asked us to wait (429, 503)


class ParseError(SourceError):
    """The body was fetched but is not a feed we can read."""

    kind = "parse"


class StorageError(AggregatorError):
    """Redis could not be reached or refused a command. Retryable."""


MAX_DETAIL = 300  # characters of a cause kept in a message; the debug log has the rest


def one_line(text: str, limit: int | None = None) -> str:
    """`text` on one line (each run of whitespace, newlines included, made one space), cut
    to `limit` characters: it is stored as a source's last error and shown in a table row."""
    flat = " ".join(text.split())
    if limit is None or len(flat) <= limit:
        return flat
    return flat[: limit - 1] + "…"
