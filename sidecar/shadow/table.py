"""`llm-sidecar shadow [--route R] [--days N]`: the ops port's /shadow as a table for people.

One block per route: its primary answers (latency, cost per request, spend per day) and,
per candidate, the sample size, the agreement rate with its 95 % Wilson interval (and by
method), validity against the route's schema, latency, cost per request, and what the
route would save by switching — per request and per day at its recent spend.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.top import aligned
from sidecar.usage_table import read_ops


def show(ops: str, route: str | None, days: int, as_json: bool) -> int:
    query = {"days": str(days), **({"route": route} if route else {})}
    body = read_ops(ops, "/shadow", query, "shadow")
    if body is None:
        return 1
    print(json.dumps(body, indent=2) if as_json else table(body))
    return 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f}ms" if x < 1 else f"{x:.2f}s"


def _usd(x: float | None, digits: int = 6) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


HEADER = [
    "CANDIDATE",
    "SAMPLES",
    "AGREE",
    "95% CI",
    "EXACT",
    "JSON",
    "SEMANTIC",
    "VALID",
    "P50",
    "P95",
    "USD/REQ",
    "SAVING",
    "USD/DAY",
    "ERRORS",
    "AT LIMIT",
]


def _row(c: dict[str, Any]) -> list[str]:
    agreement, latency, saving = c["agreement"], c["latency"], c["projected_saving"]
    interval = (
        f"{100 * agreement['low']:.1f}-{100 * agreement['high']:.1f}%"
        if agreement["low"] is not None
        else "-"
    )
    return [
        c["candidate"],
        str(c["compared"]),
        _pct(agreement["rate"]),
        interval,
        _pct(agreement["exact"]),
        _pct(agreement["json_equal"]),
        _pct(agreement["semantic"]),
        _pct(c["validity"]),
        _s(latency["p50"]),
        _s(latency["p95"]),
        _usd(c["cost_per_request"]),
        _pct(saving["share"]),
        _usd(saving["usd_per_day"], 2),
        str(c["errors"]),
        str(c["skipped_at_limit"]),
    ]


def table(body: dict[str, Any]) -> str:
    span = body["days"]
    lines = [f"shadow trials, {span[0]} to {span[-1]} (UTC)"]
    if not body["routes"]:
        lines += ["", "(no route has a shadow trial)"]
    for name, route in body["routes"].items():
        candidates = route["candidates"]
        first = candidates[0] if candidates else None
        primary = (
            f"primary p50 {_s(first['latency']['primary_p50'])} "
            f"p95 {_s(first['latency']['primary_p95'])}, "
            f"{_usd(first['primary_cost_per_request'])} USD/request"
            if first and first["compared"]
            else "no samples yet"
        )
        limit = route["max_usd_per_day"]
        spend = f"shadow spend today {route['spent_today_usd']:.4f}" + (
            f" of {limit:g} USD" if limit is not None else " USD"
        )
        per_day = route["route_usd_per_day"]
        lines += [
            "",
            f"route {name}: {primary}; route spend "
            f"{_usd(per_day, 2) + ' USD/day' if per_day is not None else '-'}; {spend}"
            + ("" if route["configured"] else " (no longer in the policy)"),
        ]
        rows = [_row(c) for c in candidates]
        lines += aligned(HEADER, rows) if candidates else ["(no candidates)"]
    lines += [
        "",
        "AGREE: exact, JSON-equal for structured output, or semantically similar (when an "
        "embedding model is set), with its 95% Wilson interval. SAVING: the candidate's cost "
        "per request against the primary's; USD/DAY at the route's recent daily spend.",
    ]
    return "\n".join(lines)
