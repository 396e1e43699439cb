"""Names of state keys, and the UTC calendar windows that spend is counted in.

A usage row is `u:{window}:{bucket}:{scope}:{value}`; a budget over the same scope and
window reads that same row, so spend is counted once and every budget sees it.
"""

from __future__ import annotations

import datetime as dt
import functools

WINDOWS = ("hour", "day", "week", "month", "total")
# How long a row outlives its window, for the usage API to look back on.
_KEEP = {"hour": 7 * 86400, "day": 90 * 86400, "week": 400 * 86400, "month": 800 * 86400}
_FOREVER = 10 * 365 * 86400


def bucket(window: str, now: float) -> tuple[str, float]:
    """The bucket name of `window` at `now` (UTC), and when it ends."""
    if window == "total":
        return "all", now + _FOREVER
    name, end = _bucket(window, int(now))
    if now >= end:  # only at the very edge of a second
        name, end = _bucket(window, int(now) + 1)
    return name, end


@functools.lru_cache(maxsize=64)
def _bucket(window: str, second: int) -> tuple[str, float]:
    """Pure, so cached: a request computes five windows for six scopes."""
    t = dt.datetime.fromtimestamp(second, dt.UTC)
    if window == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%dT%H"), (start + dt.timedelta(hours=1)).timestamp()
    if window == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), (start + dt.timedelta(days=1)).timestamp()
    if window == "week":
        start = (t - dt.timedelta(days=t.weekday())).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}", (start + dt.timedelta(days=7)).timestamp()
    if window == "month":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (start + dt.timedelta(days=32)).replace(day=1)
        return start.strftime("%Y-%m"), nxt.timestamp()
    raise ValueError(f"unknown window {window!r}")


def row(window: str, scope: str, value: str, now: float) -> tuple[str, float, float]:
    """(key, window end, expires_at) of the usage row for one scope value."""
    name, end = bucket(window, now)
    return f"u:{window}:{name}:{scope}:{value}", end, end + _KEEP.get(window, _FOREVER)
