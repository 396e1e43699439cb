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
from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from sidecar.telemetry.batch_lines import LineGauges
from sidecar.telemetry.budgets import BudgetGauges
from sidecar.telemetry.export import MetricExport
from sidecar.telemetry.instruments import Counter, ExplicitHistogram, SumOf
from sidecar.telemetry.setup import (
    DURATION_BUCKETS,
    SCORE_BUCKETS,
    TOKEN_BUCKETS,
    TTFT_BUCKETS,
    build,
    genai_latest,
)

SCOPE = "llm-sidecar"
OPERATION = {"chat": "chat", "embeddings": "embeddings"}
PROVIDER_NAME = {"openai": "openai", "anthropic": "anthropic", "mock": "mock"}
_CIRCUIT_VALUE = {"closed": 0, "half-open": 1, "open": 2}


class Telemetry:
    def __init__(self, env: Mapping[str, str]) -> None:
        providers = build(env)
        self._tracer_provider = providers.tracer
        self._meter_provider = providers.meter
        self._span_exporter = providers.span_exporter
        self._metric_export = (
            MetricExport(
                self.collect,
                providers.metric_exporter,
                providers.export_interval,
                providers.export_timeout,
            )
            if providers.metric_exporter is not None
            else None
        )
        self.reader = providers.local
        self.started_at = time.time()
        self.tracing = self._tracer_provider is not None
        self.tracer = (
            self._tracer_provider.get_tracer(SCOPE)
            if self._tracer_provider is not None
            else trace.NoOpTracer()
        )
        self._resource = providers.resource
        meter = self._meter_provider.get_meter(SCOPE)
        self.duration = ExplicitHistogram(
            "gen_ai.client.operation.duration",
            "s",
            DURATION_BUCKETS,
            "GenAI operation duration",
        )
        self.tokens = ExplicitHistogram(
            "gen_ai.client.token.usage", "{token}", TOKEN_BUCKETS, "Tokens used per request"
        )
        # The sidecar is the provider's client: a stream's first chunk is measured by the
        # client convention (its buckets are the duration's). The model-server name it was
        # exported under before stays alongside for existing dashboards, unless
        # OTEL_SEMCONV_STABILITY_OPT_IN has `gen_ai_latest_experimental`: then only the
        # latest conventions are emitted, as the GenAI conventions' transition plan says.
        self.ttfc = ExplicitHistogram(
            "gen_ai.client.operation.time_to_first_chunk",
            "s",
            DURATION_BUCKETS,
            "Time to receive the first chunk of a streamed answer",
        )
        self.ttft = (
            None
            if genai_latest(env)
            else ExplicitHistogram(
                "gen_ai.server.time_to_first_token",
                "s",
                TTFT_BUCKETS,
                "Time to the first streamed chunk (deprecated: see time_to_first_chunk)",
            )
        )
        self.requests = Counter("sidecar.requests", "{request}")
        self.attempts = Counter("sidecar.upstream.attempts", "{attempt}")
        self.retries = Counter("sidecar.retries", "{retry}")
        self.fallbacks = Counter("sidecar.fallbacks", "{fallback}")
        self.cost = Counter("sidecar.cost", "USD")
        self.cost_saved = Counter(
            "sidecar.cost.saved", "USD", "Saved per lever; negative: spent", monotonic=False
        )
        # Baseline = cost + saved: summed when collected, so a request records one less.
        self.cost_baseline = SumOf(
            "sidecar.cost.baseline",
            "USD",
            "What the requests would have cost at their routes' baselines",
            (self.cost, self.cost_saved),
            drop="sidecar.lever",
        )
        self.rejections = Counter("sidecar.ratelimit.rejections", "{request}")
        self.queue_wait = ExplicitHistogram("sidecar.queue.wait", "s", DURATION_BUCKETS)
        self.budget_events = Counter("sidecar.budget.events", "{event}")
        self.cache = Counter(
            "sidecar.cache.lookups", "{lookup}", "Requests on routes with a cache, by result"
        )
        self.saved = Counter(
            "sidecar.cache.saved", "USD", "What cache hits saved: their answers' first cost"
        )
        self.outputs = Counter("sidecar.output.validations", "{output}")
        self.batch_finished = Counter(
            "sidecar.batch.lines.finished", "{line}", "Provider batch lines landed, by outcome"
        )
        self.trimmed = Counter(
            "sidecar.prompt.trimmed", "{message}", "Messages removed before sending"
        )
        self.trimmed_tokens = Counter(
            "sidecar.prompt.trimmed_tokens", "{token}", "Input tokens removed, estimated"
        )
        # Model selection (pipeline/select.py, escalate.py): which tier answered and why,
        # what a cascade's checks said, and what its rejected answers cost.
        self.tiers = Counter(
            "sidecar.selection.requests", "{request}", "Answered requests by tier and reason"
        )
        self.cascade_answers = Counter(
            "sidecar.cascade.answers", "{answer}", "Checked answers: accepted or escalated"
        )
        self.cascade_checks = Counter(
            "sidecar.cascade.checks", "{check}", "Acceptance checks by tier, check and result"
        )
        self.escalation_cost = Counter(
            "sidecar.cascade.escalation.cost", "USD", "What rejected answers cost"
        )
        self.cache_verifications = Counter(
            "sidecar.cache.verifications",
            "{check}",
            "Semantic hits checked against the upstream, by result (agree, disagree, error)",
        )
        # Quality (telemetry/quality.py): what the app can see of its answers, what it
        # said of them, and shadow trials of other models on its requests.
        self.signals = Counter(
            "sidecar.quality.signals", "{answer}", "Answers cut off, refused or empty"
        )
        self.feedback = Counter("sidecar.feedback", "{feedback}", "App feedback on answers")
        self.feedback_score = ExplicitHistogram(
            "sidecar.feedback.score", "1", SCORE_BUCKETS, "App feedback scores, 0 (bad) to 1"
        )
        self.shadow_pairs = Counter(
            "sidecar.shadow.comparisons", "{comparison}", "Shadow answers compared"
        )
        self.shadow_skipped = Counter(
            "sidecar.shadow.skipped", "{request}", "Sampled requests not shadowed, and why"
        )
        self.shadow_duration = ExplicitHistogram(
            "sidecar.shadow.duration",
            "s",
            DURATION_BUCKETS,
            "Latency of shadow candidates and of the primary answers they shadow",
        )
        self.shadow_cost = Counter(
            "sidecar.shadow.cost", "USD", "Cost of shadow calls and of the answers they shadow"
        )
        self.shadow_running = Counter(
            "sidecar.shadow.running", "{call}", "Shadow calls in flight", monotonic=False
        )
        self._own: list[Counter | ExplicitHistogram] = [
            v for v in vars(self).values() if isinstance(v, Counter | ExplicitHistogram)
        ]
        self._circuits: Any = None
        self.circuit_state = meter.create_observable_gauge(
            "sidecar.circuit.state",
            callbacks=[self._observe_circuits],
            description="0 closed, 1 half-open, 2 open",
        )
        self._caches: Any = None
        meter.create_observable_gauge(
            "sidecar.cache.agreement",
            callbacks=[self._observe_agreement],
            description="Verified semantic hits that agree with the upstream (last window)",
        )
        meter.create_observable_gauge(
            "sidecar.cache.similarity",
            callbacks=[self._observe_similarity],
            description="The similarity a semantic hit needs now (raised by low agreement)",
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
        self.batch_lines = LineGauges()
        meter.create_observable_gauge(
            "sidecar.batch.lines",
            callbacks=[self.batch_lines.observe_count],
            unit="{line}",
            description="Lines waiting for a provider batch (deferred) or in one (submitted)",
        )
        meter.create_observable_gauge(
            "sidecar.batch.line.age",
            callbacks=[self.batch_lines.observe_age],
            unit="s",
            description="How long the oldest deferred (or submitted) line has waited",
        )
        # Budget gauges are read from the store at least as often as metrics are exported.
        self.refresh_every = min(10.0, providers.export_interval)
        self._users: set[str] = set()
        self._scrape: Any = None  # the Prometheus exposition, made at the first scrape
        self._scrape_lock = threading.Lock()

    def watch_circuits(self, breakers: Any) -> None:
        self._circuits = breakers

    def _observe_circuits(self, options: CallbackOptions) -> Iterator[Observation]:
        if self._circuits is None:
            return
        for name, info in self._circuits.describe().items():
            yield Observation(_CIRCUIT_VALUE[info["state"]], {"sidecar.target": name})

    def watch_caches(self, caches: Any) -> None:
        self._caches = caches

    def _observe_agreement(self, options: CallbackOptions) -> Iterator[Observation]:
        for name, info in self._caches.agreements.describe().items() if self._caches else ():
            if info["agreement"] is not None:
                yield Observation(info["agreement"], {"sidecar.cache": name})

    def _observe_similarity(self, options: CallbackOptions) -> Iterator[Observation]:
        for name, info in self._caches.agreements.describe().items() if self._caches else ():
            yield Observation(info["effective_similarity"], {"sidecar.cache": name})

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
        """The request's span, continuing the app's `traceparent` when it sent one.

        A span that is not sampled is not made current: nothing under it would be
        recorded (`span` makes no children then), and attaching and detaching it was most
        of what an unsampled request paid for tracing. Its trace id still goes back to
        the app."""
        if not self.tracing:
            yield None
            return
        span = self.tracer.start_span(name, context=extract(headers), kind=SpanKind.SERVER)
        if not span.is_recording():
            yield span
            return
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            yield span

    @contextmanager
    def span(
        self,
        name: str,
        kind: SpanKind = SpanKind.INTERNAL,
        *,
        end_on_exit: bool = True,
        **attributes: Any,
    ) -> Iterator[Span | None]:
        """A child of the current span; none when that is not recording (not sampled):
        its children would not be sampled either, and making them costs as much as a
        request's own pipeline work when most requests go unsampled. With `end_on_exit`
        false the caller ends it (an attempt's span lasts as long as its stream)."""
        if not self.tracing or not trace.get_current_span().is_recording():
            yield None
            return
        with self.tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
            end_on_exit=end_on_exit,
        ) as span:
            yield span

    def collect(self) -> MetricsData | None:
        """Everything measured so far: the request path's own instruments and the SDK's
        (the observable gauges), as one scope of one resource."""
        now = time.time_ns()
        ours = [m for m in (i.collect(now) for i in self._own) if m is not None]
        data = self.reader.get_metrics_data()
        sdk = (
            [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
            if data
            else []
        )
        if not ours and not sdk:
            return None
        scope = ScopeMetrics(InstrumentationScope(SCOPE), [*ours, *sdk], "")
        return MetricsData([ResourceMetrics(self._resource, [scope], "")])

    def stats(self) -> dict[str, Any]:
        """The cumulative metrics of this process, as plain JSON (for `llm-sidecar top`)."""
        data = self.collect()
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

    def scrape(self, accept: str) -> tuple[bytes, str]:
        """`/metrics`: the Prometheus exposition of `collect`, in the format `accept` asks
        for, and its content type. The exporter (about 3 MB) is loaded at the first scrape,
        so a sidecar nothing scrapes does not carry it. Blocks: call it off the loop."""
        with self._scrape_lock:
            if self._scrape is None:
                from sidecar.telemetry.prometheus import PrometheusScrape

                self._scrape = PrometheusScrape(self.collect)
        return self._scrape.render(accept)  # type: ignore[no-any-return]

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
        if self._scrape is not None:
            self._scrape.close()


def _thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, name="otel-shutdown", daemon=True)
    thread.start()
    return thread


def fail(span: Span | None, error_type: str) -> None:
    if span is not None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR))
