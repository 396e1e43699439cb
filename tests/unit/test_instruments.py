"""The request path's own counters and histograms must export exactly what the
OpenTelemetry SDK would have for the same measurements: the SDK is the oracle here."""

from __future__ import annotations

import random
import threading
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from sidecar.telemetry.instruments import Counter, ExplicitHistogram
from sidecar.telemetry.setup import TOKEN_BUCKETS

ROUTES = ({"sidecar.route": "a", "gen_ai.token.type": "input"}, {"sidecar.route": "b"})


def sdk_points(kind: str, measurements: list[tuple[float, dict[str, Any]]]) -> dict[Any, Any]:
    reader = InMemoryMetricReader()
    view = View(instrument_name="x", aggregation=ExplicitBucketHistogramAggregation(TOKEN_BUCKETS))
    views = [view] if kind == "histogram" else []
    meter = MeterProvider(metric_readers=[reader], views=views).get_meter("t")
    if kind == "histogram":
        histogram = meter.create_histogram("x", unit="{token}")
        for value, attrs in measurements:
            histogram.record(value, attrs)
    else:
        counter = meter.create_counter("x", unit="{token}")
        for value, attrs in measurements:
            counter.add(value, attrs)
    data = reader.get_metrics_data()
    assert data is not None
    [metric] = data.resource_metrics[0].scope_metrics[0].metrics
    return _by_attributes(metric)


def _by_attributes(metric: Any) -> dict[Any, Any]:
    out = {}
    for p in metric.data.data_points:
        key = frozenset(p.attributes.items())
        if hasattr(p, "bucket_counts"):
            out[key] = (
                p.count,
                p.sum,
                p.min,
                p.max,
                list(p.bucket_counts),
                list(p.explicit_bounds),
            )
        else:
            out[key] = p.value
    return out


def test_histogram_buckets_count_sum_min_max_match_the_sdk_including_values_on_a_bound():
    rng = random.Random(7)
    values = [1, 4, 16, 0, 5, 4096, 67108864, 10**9] + [rng.randint(0, 100_000) for _ in range(500)]
    measurements = [(v, ROUTES[i % 2]) for i, v in enumerate(values)]
    ours = ExplicitHistogram("x", "{token}", TOKEN_BUCKETS)
    for value, attrs in measurements:
        ours.record(value, attrs)
    metric = ours.collect(1)
    assert metric is not None
    assert (metric.name, metric.unit) == ("x", "{token}")
    assert _by_attributes(metric) == sdk_points("histogram", measurements)


def test_counter_sums_per_attribute_set_match_the_sdk_whatever_the_key_order():
    measurements = [(1, {"a": "1", "b": "2"}), (2, {"b": "2", "a": "1"}), (0.5, {"a": "x"})]
    ours = Counter("x", "{token}")
    for value, attrs in measurements:
        ours.add(value, attrs)
    metric = ours.collect(1)
    assert metric is not None
    assert _by_attributes(metric) == sdk_points("counter", measurements)
    assert metric.data.is_monotonic


def test_a_collection_during_recording_is_always_self_consistent():
    """Collection runs on the exporter's thread while the loop records."""
    histogram = ExplicitHistogram("x", "s", (0.1, 1.0))
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            histogram.record(0.5, {"r": "a"})

    writer = threading.Thread(target=record)
    writer.start()
    try:
        for _ in range(200):
            metric = histogram.collect(1)
            for p in metric.data.data_points if metric else ():
                assert sum(p.bucket_counts) == p.count
                assert p.sum == 0.5 * p.count
    finally:
        stop.set()
        writer.join()
