"""The tracer and the instruments the pipeline reports through, and the per-request
record written when a request ends. Attribute names follow the OpenTelemetry GenAI
semantic conventions (`gen_ai.*`); ours are `sidecar.*`. Keys never appear: spans and
metrics are built from policy names, token counts and error classes only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import extract
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from sidecar.telemetry.budgets import BudgetGauges
from sidecar.telemetry.setup import build, millis

OPERATION = {"chat": "chat", "embeddings": "embeddings"}
PROVIDER_NAME = {"openai": "openai", "anthropic": "anthropic", "mock": "mock"}
_CIRCUIT_VALUE = {"closed": 0, "half-open": 1, "open": 2}


class Telemetry:
    def __init__(self, env: Mapping[str, str]) -> None:
        providers = build(env)
        self._tracer_provider = providers.tracer
        self._meter_provider = providers.meter
        self._span_exporter = providers.span_exporter
        self._metric_export = providers.metric_export
        self.reader = providers.local
        self.started_at = time.time()
        self.tracing = self._tracer_provider is not None
        self.tracer = (
            self._tracer_provider.get_tracer("llm-sidecar")
            if self._tracer_provider is not None
            else trace.NoOpTracer()
        )
        meter = self._meter_provider.get_meter("llm-sidecar")
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration"
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per request"
        )
        self.ttft = meter.create_histogram(
            "gen_ai.server.time_to_first_token",
            unit="s",
            description="Time to the first streamed chunk",
        )
        self.requests = meter.create_counter("sidecar.requests", unit="{request}")
        self.attempts = meter.create_counter("sidecar.upstream.attempts", unit="{attempt}")
        self.retries = meter.create_counter("sidecar.retries", unit="{retry}")
        self.fallbacks = meter.create_counter("sidecar.fallbacks", unit="{fallback}")
        self.cost = meter.create_counter("sidecar.cost", unit="USD")
        self.rejections = meter.create_counter("sidecar.ratelimit.rejections", unit="{request}")
        self.queue_wait = meter.create_histogram("sidecar.queue.wait", unit="s")
        self.budget_events = meter.create_counter("sidecar.budget.events", unit="{event}")
        self.cache = meter.create_counter("sidecar.cache.lookups", unit="{lookup}")
        self.saved = meter.create_counter("sidecar.cache.saved", unit="USD")
        self.outputs = meter.create_counter("sidecar.output.validations", unit="{output}")
        self._circuits: Any = None
        self.circuit_state = meter.create_observable_gauge(
            "sidecar.circuit.state",
            callbacks=[self._observe_circuits],
            description="0 closed, 1 half-open, 2 open",
        )
        self.budgets = BudgetGauges()
        self.budget_spend = meter.create_observable_gauge(
            "sidecar.budget.spend",
            callbacks=[self.budgets.observe_spend],
            unit="USD",
            description="Spent in the budget's current window (all replicas)",
        )
        self.budget_remaining = meter.create_observable_gauge(
            "sidecar.budget.remaining",
            callbacks=[self.budgets.observe_remaining],
            unit="USD",
            description="Limit minus spent and held in the budget's current window",
        )
        # Budget gauges are read from the store at least as often as metrics are exported.
        self.refresh_every = min(10.0, millis(env, "OTEL_METRIC_EXPORT_INTERVAL", 60000) / 1000)
        self._users: set[str] = set()

    def watch_circuits(self, breakers: Any) -> None:
        self._circuits = breakers

    def _observe_circuits(self, options: CallbackOptions) -> Iterator[Observation]:
        if self._circuits is None:
            return
        for name, info in self._circuits.describe().items():
            yield Observation(_CIRCUIT_VALUE[info["state"]], {"sidecar.target": name})

    def user_attribute(self, user: str | None, cap: int) -> str:
        """The user as a metric attribute, with at most `cap` distinct values per process."""
        if user is None:
            return "(none)"
        if user in self._users:
            return user
        if len(self._users) < cap:
            self._users.add(user)
            return user
        return "(other)"

    @contextmanager
    def server_span(self, headers: Mapping[str, str], name: str) -> Iterator[Span | None]:
        """The request's span, continuing the app's `traceparent` when it sent one."""
        if not self.tracing:
            yield None
            return
        with self.tracer.start_as_current_span(
            name,
            context=extract(headers),
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    @contextmanager
    def span(
        self, name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any
    ) -> Iterator[Span | None]:
        if not self.tracing:
            yield None
            return
        with self.tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def stats(self) -> dict[str, Any]:
        """The cumulative metrics of this process, as plain JSON (for `llm-sidecar top`)."""
        data = self.reader.get_metrics_data()
        out: dict[str, Any] = {"at": time.time(), "started_at": self.started_at, "metrics": {}}
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    points = []
                    for p in metric.data.data_points:
                        point: dict[str, Any] = {"attributes": dict(p.attributes or {})}
                        if hasattr(p, "bucket_counts"):
                            point.update(
                                count=p.count,
                                sum=p.sum,
                                bounds=list(p.explicit_bounds),
                                buckets=list(p.bucket_counts),
                            )
                        else:
                            point["value"] = p.value
                        points.append(point)
                    out["metrics"][metric.name] = {"unit": metric.unit, "points": points}
        return out

    def flush(self, timeout: float = 5.0) -> bool:
        """Export what was recorded so far, now. Blocks on the exporters' threads: call it
        off the event loop (a receiver served by the same loop would never answer)."""
        ok = True
        if self._tracer_provider is not None:
            ok = self._tracer_provider.force_flush(int(timeout * 1000))
        if self._metric_export is not None:
            ok = self._metric_export.export() and ok
        return ok

    def shutdown(self, timeout: float = 2.0) -> None:
        """Flush and stop the exporters, giving up after about `timeout` seconds.

        The SDK's own shutdown waits up to 30 s for the span exporter, which retries an
        unreachable collector for its whole 10 s export timeout: a pod's exit must not
        wait on a collector that is down. Spans and metrics still unsent then are lost.
        Traces and metrics shut down side by side, so the bound holds for both."""
        deadline = time.monotonic() + timeout
        stopping: list[tuple[threading.Thread, Any]] = []
        if self._tracer_provider is not None:
            stopping.append((_thread(self._tracer_provider.shutdown), self._span_exporter))
        if self._metric_export is not None:
            stopping.append((_thread(self._metric_export.close), self._metric_export.exporter))
        for thread, exporter in stopping:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive() and exporter is not None:
                exporter.shutdown()  # ends its retry wait; the thread then finishes
        self._meter_provider.shutdown()  # only the in-process reader: nothing to wait for


def _thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, name="otel-shutdown", daemon=True)
    thread.start()
    return thread


def fail(span: Span | None, error_type: str) -> None:
    if span is not None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR))
