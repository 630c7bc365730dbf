"""`aggregator.dates.parse_date`: the source's own offset is kept; feedparser's UTC struct_time is
only a fallback, read as UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from aggregator.dates import CHINA_TZ, clamp_future, parse_date


def tz(hours: int, minutes: int = 0) -> timezone:
    sign = -1 if hours < 0 else 1
    return timezone(timedelta(hours=hours, minutes=sign * minutes))


# --- RFC 822 / RFC 2822 (RSS 2.0 pubDate) --------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "iso"),
    [
        (
            "Tue, 05 Apr 2022 05:50:27 +0800",
            datetime(2022, 4, 5, 5, 50, 27, tzinfo=tz(8)),
            "2022-04-05T05:50:27+08:00",
        ),
        (
            "Tue, 20 Feb 2024 14:30:00 -0500",
            datetime(2024, 2, 20, 14, 30, tzinfo=tz(-5)),
            "2024-02-20T14:30:00-05:00",
        ),
        (
            "Fri, 01 Mar 2024 10:00:00 GMT",
            datetime(2024, 3, 1, 10, 0, tzinfo=UTC),
            "2024-03-01T10:00:00+00:00",
        ),
        # RFC 2822 §3.3: -0000 is UTC with no word on the local zone; still aware, still UTC.
        (
            "Fri, 01 Mar 2024 10:00:00 -0000",
            datetime(2024, 3, 1, 10, 0, tzinfo=UTC),
            "2024-03-01T10:00:00+00:00",
        ),
        (
            "Mon, 15 Jan 2024 08:00:00 +0000",
            datetime(2024, 1, 15, 8, 0, tzinfo=UTC),
            "2024-01-15T08:00:00+00:00",
        ),
        (
            "Thu, 07 Mar 2024 23:59:59 +0530",
            datetime(2024, 3, 7, 23, 59, 59, tzinfo=tz(5, 30)),
            "2024-03-07T23:59:59+05:30",
        ),
        # No weekday is allowed by RFC 2822.
        (
            "05 Apr 2022 05:50:27 +0800",
            datetime(2022, 4, 5, 5, 50, 27, tzinfo=tz(8)),
            "2022-04-05T05:50:27+08:00",
        ),
        # Obsolete named zones (RFC 822 §5.1) map to their offsets.
        (
            "Fri, 01 Mar 2024 10:00:00 EST",
            datetime(2024, 3, 1, 10, 0, tzinfo=tz(-5)),
            "2024-03-01T10:00:00-05:00",
        ),
    ],
)
def test_rfc822_keeps_offset(raw: str, expected: datetime, iso: str) -> None:
    value = parse_date(raw)
    assert value is not None
    assert value.tzinfo is not None
    assert value == expected
    assert value.utcoffset() == expected.utcoffset()
    assert value.isoformat() == iso


def test_rfc822_offset_is_not_converted_to_utc() -> None:
    value = parse_date("Tue, 05 Apr 2022 05:50:27 +0800")
    assert value is not None
    # Same instant as 21:50:27 UTC the day before, but written the way the source wrote it.
    assert value == datetime(2022, 4, 4, 21, 50, 27, tzinfo=UTC)
    assert (value.day, value.hour) == (5, 5)


def test_rfc822_surrounding_whitespace_ignored() -> None:
    value = parse_date("\n   Fri, 01 Mar 2024 10:00:00 GMT \t")
    assert value is not None
    assert value.isoformat() == "2024-03-01T10:00:00+00:00"


# --- RFC 3339 / W3C-DTF (Atom, RSS 1.0 dc:date, JSON Feed) ---------------------------------


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        ("2024-03-22T21:00:00Z", "2024-03-22T21:00:00+00:00"),
        ("2024-03-05T16:45:00-04:00", "2024-03-05T16:45:00-04:00"),
        ("2024-03-01T09:30:00+09:00", "2024-03-01T09:30:00+09:00"),
        ("2024-05-10T09:15:00+05:30", "2024-05-10T09:15:00+05:30"),
        ("2024-04-18T07:15:00-07:00", "2024-04-18T07:15:00-07:00"),
        # fractional seconds, with Z and with offsets, 1 to 6 digits
        ("2024-03-05T16:45:00.5Z", "2024-03-05T16:45:00.500000+00:00"),
        ("2024-03-05T16:45:00.123Z", "2024-03-05T16:45:00.123000+00:00"),
        ("2024-03-05T16:45:00.123456+08:00", "2024-03-05T16:45:00.123456+08:00"),
        ("2024-03-05T16:45:00.250-03:00", "2024-03-05T16:45:00.250000-03:00"),
        # no seconds (W3C-DTF allows hh:mm)
        ("2024-03-05T16:45Z", "2024-03-05T16:45:00+00:00"),
        # lowercase "t" is allowed by RFC 3339 §5.6 (NOTE under the ABNF)
        ("2024-03-05t16:45:00+08:00", "2024-03-05T16:45:00+08:00"),
    ],
)
def test_rfc3339_keeps_offset(raw: str, iso: str) -> None:
    value = parse_date(raw)
    assert value is not None
    assert value.isoformat() == iso


# RFC 3339 §5.6 (NOTE under the ABNF): "T" and "Z" may be lowercase. With no feedparser fallback
# (JSON Feed), a refused date would be lost.
@pytest.mark.parametrize("raw", ["2024-03-05T16:45:00z", "2024-03-05t16:45:00.5z"])
def test_rfc3339_lowercase_z(raw: str) -> None:
    value = parse_date(raw)
    assert value is not None
    assert value.replace(microsecond=0).isoformat() == "2024-03-05T16:45:00+00:00"


def test_date_only_is_midnight_utc() -> None:
    value = parse_date("2024-03-05")
    assert value == datetime(2024, 3, 5, tzinfo=UTC)
    assert value is not None and value.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        ("2024-03-05 16:45:00+08:00", "2024-03-05T16:45:00+08:00"),
        ("2024-03-05 16:45:00Z", "2024-03-05T16:45:00+00:00"),
        ("2024-03-05 16:45:00.75-02:00", "2024-03-05T16:45:00.750000-02:00"),
    ],
)
def test_space_separated_iso(raw: str, iso: str) -> None:
    value = parse_date(raw)
    assert value is not None
    assert value.isoformat() == iso


@pytest.mark.parametrize("raw", ["2024-03-05T16:45:00", "2024-03-05 16:45:00"])
def test_iso_without_offset_is_utc(raw: str) -> None:
    assert parse_date(raw) == datetime(2024, 3, 5, 16, 45, tzinfo=UTC)
    value = parse_date(raw)
    assert value is not None and value.tzinfo is not None


# --- garbage and the fallback --------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "   ",
        "garbage",
        "yesterday",
        "2024-13-45",
        "2024-02-30T10:00:00Z",
        "Mon, 32 Foo 2024 10:00:00 +0000",
        "2024-03-05T25:00:00Z",
    ],
)
def test_garbage_is_none(raw: str | None) -> None:
    assert parse_date(raw) is None


FALLBACK = time.struct_time((2024, 1, 2, 3, 4, 5, 1, 2, 0))


@pytest.mark.parametrize("raw", [None, "", "garbage", "the 3rd of January"])
def test_fallback_struct_time_used_as_utc(raw: str | None) -> None:
    value = parse_date(raw, FALLBACK)
    assert value == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert value is not None
    assert value.isoformat() == "2024-01-02T03:04:05+00:00"


def test_fallback_ignores_local_timezone_and_dst_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # A struct_time claiming DST, read on a machine far from UTC, is still taken as UTC.
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    try:
        value = parse_date("???", time.struct_time((2024, 7, 1, 12, 0, 0, 0, 183, 1)))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert value is not None
    assert value.isoformat() == "2024-07-01T12:00:00+00:00"


def test_raw_string_wins_over_fallback() -> None:
    value = parse_date("Tue, 05 Apr 2022 05:50:27 +0800", FALLBACK)
    assert value is not None
    assert value.isoformat() == "2022-04-05T05:50:27+08:00"


def test_fallback_out_of_range_is_none() -> None:
    huge = time.struct_time((99999, 1, 1, 0, 0, 0, 0, 1, 0))
    assert parse_date("garbage", huge) is None


# --- Chinese sources ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        # CST on these feeds is China Standard Time, not US Central (RFC 822 §5.1's -06:00)
        ("Tue, 05 Apr 2022 05:50:27 CST", "2022-04-05T05:50:27+08:00"),
        ("05 Apr 2022 05:50 CST", "2022-04-05T05:50:00+08:00"),
        ("2024-01-01 08:30:00 CST", "2024-01-01T08:30:00+08:00"),
        ("2024年01月01日 08:30 CST", "2024-01-01T08:30:00+08:00"),
    ],
)
def test_cst_is_china(raw: str, iso: str) -> None:
    value = parse_date(raw)
    assert value is not None
    assert value.isoformat() == iso


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        ("2024年01月01日", "2024-01-01T00:00:00+08:00"),
        ("2024年1月1日", "2024-01-01T00:00:00+08:00"),
        ("2024 年 1 月 1 日", "2024-01-01T00:00:00+08:00"),
        ("2024年12月31日 08:30", "2024-12-31T08:30:00+08:00"),
        ("2024年01月01日 08:30:00", "2024-01-01T08:30:00+08:00"),
        ("2024年01月01日08:30", "2024-01-01T08:30:00+08:00"),
        ("2024年01月01日 08：30：05", "2024-01-01T08:30:05+08:00"),  # full-width colons
        ("2024/01/01", "2024-01-01T00:00:00+08:00"),
        ("2024/1/1 8:30:00", "2024-01-01T08:30:00+08:00"),
        ("2024/1/1 8:30", "2024-01-01T08:30:00+08:00"),
        ("2024-1-1 8:30", "2024-01-01T08:30:00+08:00"),
        ("2024.1.1 23:59:59", "2024-01-01T23:59:59+08:00"),
        ("2024-01-01 08:30:00", "2024-01-01T08:30:00+08:00"),
        ("2024-01-01", "2024-01-01T00:00:00+08:00"),
        ("Tue, 05 Apr 2022 05:50:27", "2022-04-05T05:50:27+08:00"),
        # a zone written is a zone kept
        ("2024/1/1 8:30:00 +0900", "2024-01-01T08:30:00+09:00"),
        ("2024年01月01日 08:30 +08:00", "2024-01-01T08:30:00+08:00"),
        ("2024/01/01 08:30:00Z", "2024-01-01T08:30:00+00:00"),
        ("2024/01/01 08:30:00 GMT", "2024-01-01T08:30:00+00:00"),
        ("2024-01-01T08:30:00Z", "2024-01-01T08:30:00+00:00"),
        ("Fri, 01 Mar 2024 10:00:00 -0000", "2024-03-01T10:00:00+00:00"),  # RFC 2822 §3.3
    ],
)
def test_chinese_and_slash_forms_in_the_default_zone(raw: str, iso: str) -> None:
    value = parse_date(raw, default_tz=CHINA_TZ)
    assert value is not None
    assert value.isoformat() == iso


@pytest.mark.parametrize(
    "raw", ["2024年01月01日 08:30", "2024/1/1 8:30:00", "2024-01-01 08:30:00", "2024-01-01"]
)
def test_no_zone_defaults_to_utc(raw: str) -> None:
    value = parse_date(raw)
    assert value is not None
    assert value.utcoffset() == timedelta(0)


FEEDPARSER_CURRENT_MONTH = time.struct_time((2031, 11, 1, 0, 0, 0, 5, 305, 0))


@pytest.mark.parametrize(
    "raw",
    [
        "2024年01月01日",
        "2024/1/1 8:30:00",
        "2024年01月01日 08:30",
    ],
)
def test_raw_string_wins_over_feedparser_s_current_month(raw: str) -> None:
    """feedparser 6.0.14 reads these as the first of the current month."""
    value = parse_date(raw, FEEDPARSER_CURRENT_MONTH, default_tz=CHINA_TZ)
    assert value is not None
    assert (value.year, value.month, value.day) == (2024, 1, 1)


@pytest.mark.parametrize(
    "raw",
    ["2024年13月01日", "2024年02月30日", "2024/02/30", "2024/1/1 25:00", "2024/1/1 8:30 +2500"],
)
def test_invalid_chinese_or_slash_date_is_none_never_feedparser_s_guess(raw: str) -> None:
    assert parse_date(raw, FEEDPARSER_CURRENT_MONTH) is None


@pytest.mark.parametrize("raw", ["2024/01-01", "2024年01月", "01/02/2024", "2024/01/01 08"])
def test_not_quite_dates(raw: str) -> None:
    assert parse_date(raw) is None


# --- dates in the future ---------------------------------------------------------------------

FETCHED = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def test_clamp_future_keeps_dates_within_tolerance() -> None:
    for value in (
        datetime(2023, 6, 1, tzinfo=CHINA_TZ),
        FETCHED,
        FETCHED + timedelta(hours=23),
        datetime(2024, 1, 2, 20, 0, tzinfo=CHINA_TZ),  # = 12:00 UTC on the 2nd: exactly a day
    ):
        assert clamp_future(value, FETCHED) == (value, False)


def test_clamp_future_clamps_to_fetch_time_in_the_value_s_offset() -> None:
    value = datetime(2031, 11, 1, 8, 0, tzinfo=CHINA_TZ)  # a misparse into the future
    clamped, changed = clamp_future(value, FETCHED)
    assert changed
    assert clamped == FETCHED
    assert clamped.isoformat() == "2024-01-01T20:00:00+08:00"


def test_clamp_future_tolerance() -> None:
    value = FETCHED + timedelta(hours=2)
    assert clamp_future(value, FETCHED, tolerance=timedelta(hours=1)) == (FETCHED, True)
    assert clamp_future(value, FETCHED, tolerance=timedelta(hours=3)) == (value, False)
