"""schedule.next_due / schedule.backoff: pure decisions on plain values (no Redis, no clock)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from aggregator.schedule import JITTER, MAX_BACKOFF, backoff, next_due

NOW = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
DAY = 86400.0


def delay(due: datetime, now: datetime = NOW) -> float:
    return (due - now).total_seconds()


# --- no failures: exactly one interval, no jitter -------------------------------------------


@pytest.mark.parametrize("interval", [1.0, 60.0, 900.0, 3600.0, 2 * DAY])
def test_no_failures_is_now_plus_interval_exactly(interval: float) -> None:
    # The rng must not even be consulted: a healthy source is due one interval later, exactly.
    rng = random.Random(1)
    state = rng.getstate()
    assert next_due(NOW, interval, 0, rng=rng) == NOW + timedelta(seconds=interval)
    assert rng.getstate() == state
    assert next_due(NOW, interval) == NOW + timedelta(seconds=interval)


def test_negative_failures_count_as_none() -> None:
    assert next_due(NOW, 300.0, -3) == NOW + timedelta(seconds=300)
    assert backoff(300.0, -3) == 300.0


def test_keeps_the_time_zone_of_now() -> None:
    plus8 = datetime(2024, 3, 1, 20, 0, tzinfo=timezone(timedelta(hours=8)))
    due = next_due(plus8, 600.0)
    assert due.utcoffset() == timedelta(hours=8)
    assert due == plus8 + timedelta(minutes=10)


# --- exponential backoff ---------------------------------------------------------------------


def test_backoff_doubles_with_each_failure() -> None:
    assert backoff(60.0, 0) == 60.0
    assert backoff(60.0, 1) == 60.0
    assert backoff(60.0, 2) == 120.0
    assert backoff(60.0, 3) == 240.0
    assert backoff(60.0, 4) == 480.0


def test_backoff_is_capped_at_one_day() -> None:
    assert backoff(3600.0, 5) == 16 * 3600.0
    assert backoff(3600.0, 6) == MAX_BACKOFF == DAY  # 32 h would be over a day
    assert backoff(3600.0, 25) == DAY
    assert backoff(1.0, 17) == 2.0**16  # 65536 s, under a day
    assert backoff(1.0, 18) == DAY  # 131072 s would be over a day


@pytest.mark.parametrize("failures", [10**3, 10**6, 10**18, 2**63, 10**100])
def test_huge_failure_count_does_not_overflow(failures: int) -> None:
    assert backoff(60.0, failures) == DAY
    due = next_due(NOW, 60.0, failures, rng=random.Random(5))
    assert 0.9 * DAY <= delay(due) <= DAY


@pytest.mark.parametrize("failures", [1, 2, 3])
def test_next_due_doubles_with_seeded_jitter(failures: int) -> None:
    interval = 100.0
    expected_spread = random.Random(42).uniform(-JITTER, JITTER)
    due = next_due(NOW, interval, failures, rng=random.Random(42))
    expected = interval * 2 ** (failures - 1) * (1 + expected_spread)
    assert delay(due) == pytest.approx(expected, abs=1e-5)


def test_failures_one_two_three_double_with_the_same_jitter() -> None:
    delays = [delay(next_due(NOW, 100.0, f, rng=random.Random(7))) for f in (1, 2, 3)]
    assert delays[1] == pytest.approx(2 * delays[0], abs=1e-5)
    assert delays[2] == pytest.approx(4 * delays[0], abs=1e-5)


def test_jitter_stays_within_ten_percent_and_actually_spreads() -> None:
    rng = random.Random(2024)
    interval = 1000.0
    seen = []
    for failures in (1, 2, 3, 4):
        base = interval * 2 ** (failures - 1)
        for _ in range(500):
            d = delay(next_due(NOW, interval, failures, rng=rng))
            assert base * (1 - JITTER) - 1e-6 <= d <= base * (1 + JITTER) + 1e-6
            seen.append(d / base)
    # Jitter really spreads the retries (both sides of the nominal delay, most of the band).
    assert min(seen) < 0.92 and max(seen) > 1.08
    assert len({round(s, 6) for s in seen}) > 100


def test_jitter_is_reproducible_with_a_seed() -> None:
    a = [next_due(NOW, 60.0, 3, rng=random.Random(99)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert next_due(NOW, 60.0, 3, rng=random.Random(100)) != a[0]


def test_jitter_never_goes_over_the_one_day_cap() -> None:
    rng = random.Random(3)
    delays = [delay(next_due(NOW, 3600.0, 20, rng=rng)) for _ in range(300)]
    assert all(DAY * (1 - JITTER) - 1e-6 <= d <= DAY + 1e-6 for d in delays)
    assert max(delays) == pytest.approx(DAY)  # upward jitter is clipped to the cap


def test_default_rng_is_used_when_none_given() -> None:
    random.seed(11)
    first = next_due(NOW, 500.0, 2)
    random.seed(11)
    assert next_due(NOW, 500.0, 2) == first
    assert 900.0 <= delay(first) <= 1100.0


@pytest.mark.parametrize("interval", [2 * DAY, 7 * DAY])
def test_next_due_agrees_with_backoff_for_intervals_over_a_day(interval: float) -> None:
    # Regression (HEAD f9bfc11): backoff() caps at max(1 day, interval) but next_due clamped
    # to 1 day, so a failing weekly source was retried within a day while backoff() said 7
    # days, and a failing source was polled more often than a healthy one.
    nominal = backoff(interval, 1)
    assert nominal == interval
    for seed in range(20):
        d = delay(next_due(NOW, interval, 1, rng=random.Random(seed)))
        assert nominal * (1 - JITTER) <= d <= nominal * (1 + JITTER)
    assert backoff(interval, 30) == interval
    assert interval * (1 - JITTER) <= delay(next_due(NOW, interval, 30)) <= interval
