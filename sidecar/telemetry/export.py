"""Periodic OTLP export of the metrics `/stats` also reads.

The SDK's own way, a `PeriodicExportingMetricReader`, gives every reader its own storage,
and the request path's instruments are our own (telemetry/instruments.py). Here one
collection serves both: this thread collects every OTEL_METRIC_EXPORT_INTERVAL ms and hands
the (cumulative) data to the OTLP exporter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

log = logging.getLogger("sidecar.telemetry")


class MetricExport:
    def __init__(
        self,
        collect: Callable[[], MetricsData | None],
        exporter: MetricExporter,
        interval: float,
        timeout: float,
    ) -> None:
        self.exporter = exporter
        self._collect = collect
        self._interval = interval
        self._timeout_ms = timeout * 1000
        self._lock = threading.Lock()  # the exporter is never called concurrently
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otel-metric-export", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.export()

    def export(self) -> bool:
        """Collect now and export; blocks until the exporter is done (off the event loop)."""
        with self._lock:
            try:
                data = self._collect()
                if data is None:
                    return True
                result = self.exporter.export(data, timeout_millis=self._timeout_ms)
            except Exception:
                log.exception("telemetry: metric export failed")
                return False
            return result is MetricExportResult.SUCCESS

    def close(self) -> None:
        """Stop the ticker, export one last time, release the exporter. Callers that must
        not wait on an unreachable collector call `exporter.shutdown()` from elsewhere: it
        ends the exporter's retries."""
        self._stop.set()
        self._thread.join()
        self.export()
        self.exporter.shutdown()
