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
    """A source could not be polled. `str()` names the URL and the chained cause."""

    kind = "error"

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(url, reason)

    def __str__(self) -> str:
        cause = self.__cause__
        suffix = f": {type(cause).__name__}: {cause}" if cause and str(cause) else ""
        return f"{self.kind} {self.url}: {self.reason}{suffix}"


class FetchError(SourceError):
    """The HTTP request failed: network, status, size or timeout."""

    kind = "fetch"

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
