"""Prometheus exposition of this process's metrics: `/metrics` on the ops port.

What is scraped is the collection OTLP export and `/stats` use (`Telemetry.collect`: the
request path's own instruments and the SDK's gauges), translated by the OpenTelemetry
Prometheus exporter (opentelemetry-exporter-prometheus) and written by prometheus_client.
So names follow the specification's OTLP → Prometheus mapping, the one the Collector's
Prometheus exporter applies (`sidecar.cost` in USD → `sidecar_cost_USD_total`), and the
Grafana dashboard reads either path.

The exporter's reader normally collects from a MeterProvider it is registered with, but the
request path's instruments are not the SDK's (telemetry/instruments.py). So this reader is
given our collection through the hook a MeterProvider uses to wire a reader up
(`_set_collect_callback`); each scrape collects once, then the exporter translates.

Resource attributes are on `target_info`, as the mapping has it; the `k8s.*` ones are also
labels on every series, as the Collector config here copies them, so the dashboard's pod
filter (`k8s_pod_name`) works with a direct scrape too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import MetricsData
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


class PrometheusScrape:
    def __init__(self, collect: Callable[[], MetricsData | None]) -> None:
        self._registry = CollectorRegistry()
        self._reader = PrometheusMetricReader(
            registry=self._registry,
            resource_attribute_filter=lambda key: key.startswith("k8s."),
            # One scope, "llm-sidecar", unversioned: its otel_scope_* labels would tell nothing
            # and cost about a fifth of a scrape's CPU, which is mostly writing labels.
            scope_info_enabled=False,
        )

        def provide(reader: Any, timeout_millis: float = 10_000) -> MetricsData | None:
            return collect()

        self._reader._set_collect_callback(provide)
        self._lock = threading.Lock()  # the exporter queues what it collected per scrape

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition in the format `accept` asks for (Prometheus' text format unless
        it asks for OpenMetrics), and its content type. Blocks: call it off the loop."""
        encode, content_type = choose_encoder(accept)
        with self._lock:
            return encode(self._registry), content_type

    def close(self) -> None:
        self._reader.shutdown()
