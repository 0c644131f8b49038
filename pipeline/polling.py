"""When to poll a feed next: backoff after failures, an interval fitted to its publishing rate, auto-disabling."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

RATE_SAMPLE = 20  # newest dated items whose spacing sets the interval
POLLS_PER_GAP = 2  # polls per mean gap between items: a new item waits about half a gap to be seen
GONE = 410


def adapted_interval(published: Iterable[datetime | None], minimum: timedelta, maximum: timedelta) -> timedelta:
    """Half the mean gap between a feed's newest dated items, within [minimum, maximum]; `minimum` when
    fewer than two items are dated (nothing to go by: poll as often as allowed)."""
    dates = sorted((moment for moment in published if moment is not None), reverse=True)[:RATE_SAMPLE]
    if len(dates) < 2:
        return minimum
    gap = (dates[0] - dates[-1]) / (len(dates) - 1)
    return max(minimum, min(maximum, gap / POLLS_PER_GAP))


def backoff_delay(failures: int, base: timedelta, cap: timedelta) -> timedelta:
    """The wait after the `failures`-th consecutive failed poll: `base`, doubling each time, at most `cap`."""
    return min(cap, base * 2 ** min(max(0, failures - 1), 30))


def disable_reason(http_status: int | None, failures: int, max_failures: int, error: str | None) -> str | None:
    """Why a feed is to be disabled after this failed poll, or None to keep polling it."""
    if http_status == GONE:
        return "HTTP 410 Gone: the publisher removed the feed"
    if failures >= max_failures:
        return f"{failures} consecutive failed polls; last: {error or 'failed'}"
    return None
