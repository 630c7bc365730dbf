"""aggregator/urls.py on plain values: the links we print, and request paths read back."""

from __future__ import annotations

from typing import Any

import pytest

from aggregator import urls
from aggregator.urls import Reading

FORMATS = ("atom", "rss", "json")


def environ(path_info: str, raw: str | None, script_name: str = "") -> dict[str, Any]:
    """A WSGI environ as servers build it: PATH_INFO decoded, as latin-1 text (PEP 3333)."""
    env: dict[str, Any] = {
        "SCRIPT_NAME": script_name.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path_info.encode("utf-8").decode("latin-1"),
    }
    if raw is not None:
        env["REQUEST_URI"] = raw
    return env


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("node.js", "/tags/node%2Ejs"),
        ("3.15晚会", "/tags/3%2E15%E6%99%9A%E4%BC%9A"),
        ("a/b c", "/tags/a%2Fb%20c"),
        ("100%?#", "/tags/100%25%3F%23"),
        ("x.atom", "/tags/x%2Eatom"),
    ],
)
def test_printed_paths_have_no_literal_dot_or_slash_in_the_name(name: str, path: str) -> None:
    assert urls.name_path("tags", name) == path
    tail = path.removeprefix("/tags/")
    assert urls.readings(tail, FORMATS) == [Reading(name, None)]
    assert urls.readings(tail + ".rss", FORMATS)[0] == Reading(name, "rss")


def test_raw_path_from_each_server_key_and_the_absolute_form() -> None:
    decoded = "/tags/x.atom.json"
    for key in ("REQUEST_URI", "RAW_URI"):
        env = environ(decoded, None) | {key: "/tags/x%2Eatom.json?limit=5"}
        assert urls.raw_tail(env, "/tags/") == "x%2Eatom.json"
    absolute = environ(decoded, "http://agg.example:8000/tags/x%2Eatom.json")
    assert urls.raw_tail(absolute, "/tags/") == "x%2Eatom.json"


def test_mounted_under_a_prefix() -> None:
    env = environ("/tags/財經.atom", "/news%20site/tags/%E8%B2%A1%E7%B6%93.atom", "/news site")
    tail = urls.raw_tail(env, "/tags/")
    assert tail == "%E8%B2%A1%E7%B6%93.atom"
    assert urls.readings(tail, FORMATS)[0] == Reading("財經", "atom")


@pytest.mark.parametrize(
    "raw",
    [None, "", "/tags/something%2Eelse", "/elsewhere/x%2Eatom"],
    ids=["missing", "empty", "rewritten", "other-prefix"],
)
def test_without_a_raw_path_that_matches_every_dot_is_literal(raw: str | None) -> None:
    env = environ("/tags/x.atom", raw)
    tail = urls.raw_tail(env, "/tags/")
    assert tail == "x.atom"
    # both readings, best first: the feed of "x", then the page of "x.atom"
    assert urls.readings(tail, FORMATS) == [Reading("x", "atom"), Reading("x.atom", None)]


def test_a_decoded_percent_stays_itself() -> None:
    env = environ("/tags/100%.json", None)
    assert urls.readings(urls.raw_tail(env, "/tags/"), FORMATS)[0] == Reading("100%", "json")


def test_invalid_escapes_and_bytes_that_are_not_utf8() -> None:
    env = environ("/tags/a%zz", "/tags/a%zz")
    assert urls.readings(urls.raw_tail(env, "/tags/"), FORMATS) == [Reading("a%zz", None)]
    assert urls.decode("%FF") == "\ufffd"
