"""Date windows and look-back ranges (pure): property tests and the edge cases by name."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from flows.windows import DateWindow, resolve_dates, split_windows
from hypothesis import given, settings
from hypothesis import strategies as st

from scenestore.errors import InvalidRequestError

dates = st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 12, 31))
units = st.sampled_from(["day", "week", "month"])


@settings(deadline=None)  # a 40-year range in 1-day windows is slow on a busy machine
@given(a=dates, b=dates, unit=units, length=st.integers(1, 14))
def test_windows_cover_the_range_exactly_once_in_order(a, b, unit, length):
    start, end = min(a, b), max(a, b)
    windows = split_windows(start, end, unit=unit, length=length)
    assert windows[0].start == start and windows[-1].end == end
    for w in windows:
        assert w.start <= w.end
    for prev, nxt in zip(windows, windows[1:], strict=False):
        assert nxt.start == prev.end + timedelta(days=1)  # contiguous, no overlap, no gap
    assert sum(w.days for w in windows) == (end - start).days + 1


@settings(deadline=None)
@given(a=dates, b=dates, length=st.integers(1, 30))
def test_day_and_week_windows_are_full_except_the_last(a, b, length):
    start, end = min(a, b), max(a, b)
    for unit, days in (("day", length), ("week", 7 * length)):
        windows = split_windows(start, end, unit=unit, length=length)
        assert all(w.days == days for w in windows[:-1])
        assert windows[-1].days <= days


@settings(deadline=None)
@given(a=dates, b=dates, length=st.integers(1, 12))
def test_month_windows_follow_the_calendar(a, b, length):
    start, end = min(a, b), max(a, b)
    windows = split_windows(start, end, unit="month", length=length)
    for w in windows[1:]:
        assert w.start.day == 1
    for w in windows[:-1]:
        assert (w.end + timedelta(days=1)).day == 1  # ends on a month's last day
        months = (w.end.year - w.start.year) * 12 + w.end.month - w.start.month + 1
        assert months == length


def test_monthly_windows_of_a_quarter():
    assert [w.label for w in split_windows(date(2024, 1, 15), date(2024, 3, 10))] == [
        "2024-01-15..2024-01-31",
        "2024-02-01..2024-02-29",
        "2024-03-01..2024-03-10",
    ]


def test_one_day_range_is_one_window():
    assert split_windows(date(2024, 6, 1), date(2024, 6, 1), unit="week") == [
        DateWindow(date(2024, 6, 1), date(2024, 6, 1))
    ]


def test_windows_reach_the_last_representable_day():
    assert split_windows(date(9999, 12, 1), date.max, unit="week", length=2)[-1].end == date.max
    assert split_windows(date(9999, 11, 5), date.max, unit="month", length=3)[-1].end == date.max


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": date(2024, 2, 1), "end": date(2024, 1, 1)}, "before start date"),
        ({"start": date(2024, 1, 1), "end": date(2024, 2, 1), "length": 0}, "window length 0"),
        ({"start": date(2024, 1, 1), "end": date(2024, 2, 1), "unit": "year"}, "unit 'year'"),
    ],
)
def test_bad_windows_are_refused(kwargs, match):
    start, end = kwargs.pop("start"), kwargs.pop("end")
    with pytest.raises(InvalidRequestError, match=match):
        split_windows(start, end, **kwargs)


def test_lookback_ends_on_the_reference_day():
    assert resolve_dates(None, None, lookback_days=3, today=date(2024, 6, 10)) == DateWindow(
        date(2024, 6, 7), date(2024, 6, 10)
    )


def test_lookback_counts_back_from_an_explicit_end():
    window = resolve_dates(None, date(2024, 6, 5), lookback_days=2, today=date(2030, 1, 1))
    assert window == DateWindow(date(2024, 6, 3), date(2024, 6, 5))


def test_explicit_dates_win_over_the_lookback():
    window = resolve_dates(date(2024, 6, 1), date(2024, 6, 2), lookback_days=30,
                           today=date(2030, 1, 1))
    assert window == DateWindow(date(2024, 6, 1), date(2024, 6, 2))


def test_a_start_alone_runs_to_the_reference_day():
    window = resolve_dates(date(2024, 6, 1), None, lookback_days=None, today=date(2024, 6, 3))
    assert window == DateWindow(date(2024, 6, 1), date(2024, 6, 3))


@pytest.mark.parametrize(
    ("start", "end", "lookback", "match"),
    [
        (None, None, None, "No start date and no lookback_days"),
        (date(2024, 6, 9), None, None, "before start date"),  # start after today
        (None, None, -1, "Invalid lookback_days -1"),
        (None, date(1, 1, 2), 5, "reaches before year 1"),
    ],
)
def test_bad_ranges_are_refused(start, end, lookback, match):
    with pytest.raises(InvalidRequestError, match=match):
        resolve_dates(start, end, lookback_days=lookback, today=date(2024, 6, 1))
