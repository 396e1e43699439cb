"""`llm-sidecar top`'s arithmetic: percentiles interpolated within histogram buckets, and
windows as differences between two polls of cumulative metrics."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.top import Histogram, histogram, render, window

BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16)


def h(*buckets: int) -> Histogram:
    return Histogram(BOUNDS, list(buckets))


def test_a_quantile_is_interpolated_inside_the_bucket_that_holds_its_rank():
    ten_in_one = h(0, 0, 0, 10, 0, 0)  # all in (0.04, 0.08]
    assert ten_in_one.quantile(0.5) == pytest.approx(0.06)
    assert ten_in_one.quantile(0.9) == pytest.approx(0.076)
    spread = h(50, 0, 0, 0, 49, 1)  # half at the bottom, a tail, one beyond the last bound
    assert spread.quantile(0.5) == pytest.approx(0.01)
    assert 0.08 < spread.quantile(0.95) <= 0.16  # type: ignore[operator]
    assert spread.quantile(0.999) == 0.16  # beyond the last bound: the last bound
    assert h(0, 0, 0, 0, 0, 0).quantile(0.5) is None


def test_a_percentile_is_not_an_average():
    # 99 fast requests and one very slow one: the mean would be ~0.17 s.
    skewed = Histogram((*BOUNDS, 20.0), [99, 0, 0, 0, 0, 0, 1])
    assert skewed.quantile(0.5) < 0.01  # type: ignore[operator]


def _stats(at: float, buckets: list[int], requests: int, retries: int = 0) -> dict[str, Any]:
    attrs = {"sidecar.route": "r", "http.response.status_code": 200}
    return {
        "at": at,
        "started_at": 0.0,
        "metrics": {
            "gen_ai.client.operation.duration": {
                "unit": "s",
                "points": [
                    {
                        "attributes": attrs,
                        "count": sum(buckets),
                        "sum": 0.05 * sum(buckets),
                        "bounds": list(BOUNDS),
                        "buckets": buckets,
                    }
                ],
            },
            "sidecar.requests": {
                "unit": "{request}",
                "points": [{"attributes": attrs, "value": requests}],
            },
            "sidecar.retries": {
                "unit": "{retry}",
                "points": [{"attributes": {}, "value": retries}],
            },
        },
        "circuits": {"a": {"state": "open", "consecutive_failures": 5, "trips": 1}},
        "queues": {},
        "policy_version": "abc123",
    }


def test_a_window_is_the_difference_of_two_polls():
    before = _stats(10.0, [100, 0, 0, 0, 0, 0], 100, retries=4)  # fast, long ago
    after = _stats(12.0, [100, 0, 0, 20, 0, 0], 120, retries=7)  # 20 slow ones since
    win = window(after, before)
    recent = histogram(win, "gen_ai.client.operation.duration")
    assert recent.count == 20
    assert 0.04 < recent.quantile(0.5) <= 0.08  # type: ignore[operator]
    # over everything the median is still fast
    assert histogram(after["metrics"], "gen_ai.client.operation.duration").quantile(0.5) < 0.01  # type: ignore[operator]
    assert win["sidecar.retries"]["points"][0]["value"] == 3


def test_a_restarted_sidecar_counts_from_zero_again():
    before = _stats(10.0, [100, 0, 0, 0, 0, 0], 100)
    after = _stats(12.0, [0, 0, 5, 0, 0, 0], 5)
    assert histogram(window(after, before), "gen_ai.client.operation.duration").count == 5


def test_render_shows_rates_percentiles_and_circuits():
    before = _stats(10.0, [0, 0, 0, 0, 0, 0], 0)
    after = _stats(12.0, [0, 0, 0, 20, 0, 0], 20)
    text = render(after, before, "http://ops", 2.0)
    assert "requests  10.0/s (20)" in text
    assert "p50 60ms" in text
    row = next(line for line in text.splitlines() if line.startswith("r "))
    assert row.split()[:4] == ["r", "10.0", "0.0%", "60ms"]
    assert "open" in next(line for line in text.splitlines() if line.startswith("a "))
