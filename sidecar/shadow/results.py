"""A shadow trial's results in the state store, and the report made of them.

One tally row per route, candidate and UTC day (`s|ROUTE|CANDIDATE|YYYY-MM-DD`, kept
`KEEP_DAYS`), so every replica adds to the same numbers and a report covers the last N
days. A row's fields are counts and sums: comparisons, agreements by method, validity,
errors, samples skipped at the spend limit, the candidate's and the primary's cost, and
both latencies as histogram buckets (2^(1/4) apart: p50 and p95 within about 9 %).
`report` turns them into what `llm-sidecar shadow` shows: the agreement rate with its
Wilson score interval (95 %), which stays honest at small samples and near 0 or 1, where
the normal approximation does not.
"""

from __future__ import annotations

import datetime as dt
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.shadow.compare import Agreement

PREFIX = "s|"
KEEP_DAYS = 35
Z95 = 1.959964
BOUNDS = tuple(0.005 * 2 ** (i / 4) for i in range(64))  # 5 ms to about 350 s


def key(route: str, candidate: str, now: float) -> tuple[str, float]:
    """The row of `route`'s trial of `candidate` today, and when it expires. `|` cannot be
    part of a route or model name, so a key splits back unambiguously."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).date()
    ends = dt.datetime.combine(day + dt.timedelta(days=KEEP_DAYS + 1), dt.time(), dt.UTC)
    return f"{PREFIX}{route}|{candidate}|{day.isoformat()}", ends.timestamp()


def compared(
    agreement: Agreement,
    valid: bool | None,
    seconds: float,
    primary_seconds: float,
    cost: float,
    primary_cost: float,
) -> dict[str, float]:
    """The fields one comparison adds."""
    fields: dict[str, float] = {
        "n": 1,
        "agree": int(agreement.agree),
        "exact": int(agreement.exact),
        "cost": cost,
        "primary_cost": primary_cost,
        f"c{bisect_left(BOUNDS, seconds)}": 1,
        f"p{bisect_left(BOUNDS, primary_seconds)}": 1,
    }
    if agreement.json_equal is not None:
        fields["json_n"] = 1
        fields["json_equal"] = int(agreement.json_equal)
    if agreement.similarity is not None:
        fields["sem_n"] = 1
        fields["sem_sum"] = agreement.similarity
        fields["sem_agree"] = int(agreement.agree)
    if valid is not None:
        fields["valid_n"] = 1
        fields["valid"] = int(valid)
    return fields


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - margin) / scale), min(1.0, (centre + margin) / scale)


def quantile(row: Mapping[str, float], side: str, q: float) -> float | None:
    """The q-quantile of one side's latency buckets, interpolated inside its bucket."""
    counts = [row.get(f"{side}{i}", 0.0) for i in range(len(BOUNDS) + 1)]
    total = sum(counts)
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for i, n in enumerate(counts):
        if n > 0 and seen + n >= rank:
            if i == len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[i - 1] if i else 0.0
            return lower + (BOUNDS[i] - lower) * (rank - seen) / n
        seen += n
    return BOUNDS[-1]


def days(now: float, count: int) -> list[str]:
    """The last `count` UTC days, today included, oldest first."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    return [(today - dt.timedelta(days=i)).isoformat() for i in range(count - 1, -1, -1)]


def sums(
    rows: Mapping[str, Mapping[str, float]], within: Iterable[str]
) -> dict[tuple[str, str], dict[str, float]]:
    """Rows added up per (route, candidate) over the days `within`."""
    wanted = set(within)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for name, row in rows.items():
        route, candidate, day = name[len(PREFIX) :].rsplit("|", 2)
        if day not in wanted:
            continue
        total = out.setdefault((route, candidate), {})
        for field, value in row.items():
            total[field] = total.get(field, 0.0) + value
    return out


def _rate(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def candidate_report(
    route: str, candidate: str, row: Mapping[str, float], route_usd_per_day: float | None
) -> dict[str, Any]:
    n = row.get("n", 0.0)
    low, high = wilson(row.get("agree", 0.0), n)
    cost = _rate(row.get("cost", 0.0), n)
    primary = _rate(row.get("primary_cost", 0.0), n)
    share = 1 - cost / primary if cost is not None and primary else None
    return {
        "route": route,
        "candidate": candidate,
        "samples": int(n + row.get("errors", 0.0)),
        "compared": int(n),
        "errors": int(row.get("errors", 0.0)),
        "skipped_at_limit": int(row.get("skipped_limit", 0.0)),
        "agreement": {
            "rate": _rate(row.get("agree", 0.0), n),
            "low": low if n else None,
            "high": high if n else None,
            "exact": _rate(row.get("exact", 0.0), n),
            "json_equal": _rate(row.get("json_equal", 0.0), row.get("json_n", 0.0)),
            "semantic": _rate(row.get("sem_agree", 0.0), row.get("sem_n", 0.0)),
            "mean_similarity": _rate(row.get("sem_sum", 0.0), row.get("sem_n", 0.0)),
        },
        "validity": _rate(row.get("valid", 0.0), row.get("valid_n", 0.0)),
        "latency": {
            "p50": quantile(row, "c", 0.5),
            "p95": quantile(row, "c", 0.95),
            "primary_p50": quantile(row, "p", 0.5),
            "primary_p95": quantile(row, "p", 0.95),
        },
        "cost_per_request": cost,
        "primary_cost_per_request": primary,
        "projected_saving": {
            "share": share,
            "usd_per_1k_requests": (primary - cost) * 1000
            if cost is not None and primary
            else None,
            "usd_per_day": share * route_usd_per_day
            if share is not None and route_usd_per_day is not None
            else None,
        },
    }
