"""Date ranges for the flows: look-back ranges and backfill windows (pure, no I/O).

The library validates one date range (:func:`scenestore.aoi.check_date_range`); the flows need
two more things: the range a scheduled run covers when it is given a look-back instead of
dates, and a long range cut into windows that each become one flow run.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from scenestore.aoi import check_date_range
from scenestore.errors import InvalidRequestError

#: Units a backfill window can be measured in.
WindowUnit = Literal["day", "week", "month"]

#: Longest look-back a scheduled run accepts, in days.
MAX_LOOKBACK_DAYS = 3660


@dataclass(frozen=True, order=True)
class DateWindow:
    """A closed range of sensing days.

    Attributes:
        start: First day (inclusive).
        end: Last day (inclusive).
    """

    start: date
    end: date

    @property
    def label(self) -> str:
        """``YYYY-MM-DD..YYYY-MM-DD``, used in flow run names and reports."""
        return f"{self.start.isoformat()}..{self.end.isoformat()}"

    @property
    def days(self) -> int:
        """Number of days in the window."""
        return (self.end - self.start).days + 1


def resolve_dates(
    start: date | None,
    end: date | None,
    *,
    lookback_days: int | None,
    today: date,
) -> DateWindow:
    """Return the range a run covers: explicit dates, or a look-back ending on ``today``.

    Args:
        start: First day, or None.
        end: Last day (inclusive), or None (``today`` when a start or look-back is given).
        lookback_days: When ``start`` is None, start this many days before ``end``.
        today: The reference day, e.g. the scheduled start of a run (so a late or retried
            run covers the days it was scheduled for, not the day it happened to run).

    Raises:
        InvalidRequestError: If neither a start nor a look-back is given, the look-back is
            out of range, or the end is before the start.
    """
    if lookback_days is not None and not 0 <= lookback_days <= MAX_LOOKBACK_DAYS:
        raise InvalidRequestError(
            f"Invalid lookback_days {lookback_days!r}; expected 0 to {MAX_LOOKBACK_DAYS} days."
        )
    last = end if end is not None else today
    if start is None:
        if lookback_days is None:
            raise InvalidRequestError(
                "No start date and no lookback_days; expected a start date (and optionally an "
                "end date) or lookback_days for a rolling range ending today."
            )
        if lookback_days > (last - date.min).days:
            raise InvalidRequestError(
                f"lookback_days {lookback_days} reaches before year 1 from {last.isoformat()}; "
                "expected a shorter look-back."
            )
        first = last - timedelta(days=lookback_days)
    else:
        first = start
    check_date_range(first, last)
    return DateWindow(first, last)


def split_windows(
    start: date, end: date, *, unit: WindowUnit = "month", length: int = 1
) -> list[DateWindow]:
    """Cut ``start..end`` into consecutive windows of ``length`` days, weeks or months.

    Month windows follow the calendar: the first runs from ``start`` to the end of its month
    (of the ``length``-th month), the others start on the 1st. Day and week windows are
    counted from ``start``. The last window ends on ``end``. The windows cover the range
    exactly once, in order.

    Raises:
        InvalidRequestError: If ``end`` is before ``start``, ``length`` is below 1 or the unit
            is unknown.
    """
    check_date_range(start, end)
    if not isinstance(length, int) or length < 1:
        raise InvalidRequestError(f"Invalid window length {length!r}; expected an integer >= 1.")
    if unit not in ("day", "week", "month"):
        raise InvalidRequestError(
            f"Invalid window unit {unit!r}; expected 'day', 'week' or 'month'."
        )
    windows = []
    first = start
    while True:
        if unit == "month":
            last = _month_end(first, length - 1, cap=end)
        else:
            days = length * (7 if unit == "week" else 1) - 1
            # Compare spans rather than adding first: near date.max the sum would overflow.
            last = end if days >= (end - first).days else first + timedelta(days=days)
        windows.append(DateWindow(first, last))
        if last == end:
            return windows
        first = last + timedelta(days=1)


def _month_end(day: date, months_after: int, *, cap: date) -> date:
    """Last day of the month ``months_after`` months after ``day``'s month, at most ``cap``."""
    index = day.year * 12 + (day.month - 1) + months_after
    year, month = divmod(index, 12)
    if year > cap.year:
        return cap
    return min(cap, date(year, month + 1, calendar.monthrange(year, month + 1)[1]))


__all__ = ["MAX_LOOKBACK_DAYS", "DateWindow", "WindowUnit", "resolve_dates", "split_windows"]
