"""Build tracing and metrics from the standard OpenTelemetry environment variables.

OTEL_EXPORTER_OTLP_ENDPOINT (or the _TRACES_/_METRICS_ variants) turns export on;
OTEL_EXPORTER_OTLP_PROTOCOL picks grpc or http/protobuf (the default); OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_METRIC_EXPORT_INTERVAL/_TIMEOUT and OTEL_SDK_DISABLED=true
(no tracing, no export; `/stats` keeps counting) are read from the environment given; the
SDK reads the rest itself from os.environ (OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*, exporter
headers and timeouts). Without OTEL_TRACES_SAMPLER traces are sampled parent-based at 10 %,
not the SDK's trace-everything (see `_default_sampler`). Kubernetes
pod, namespace and node come from the downward-API variables K8S_POD_NAME,
K8S_NAMESPACE_NAME and K8S_NODE_NAME when the chart sets them. Metrics are exported with
cumulative temporality (the reader that serves `/stats` is the one exported).
OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental drops the names kept from earlier
GenAI conventions (`genai_latest`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased

from sidecar import __version__
from sidecar.telemetry.otlp_spans import fast_exporter

log = logging.getLogger("sidecar.telemetry")

# Bucket boundaries from the GenAI semantic conventions.
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
SCORE_BUCKETS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # app feedback, 0 (thumbs down) to 1 (up)
TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
# Finer at the low end, where a gateway's own overhead and first tokens live.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

DEFAULT_TRACE_RATIO = 0.1

_K8S = {
    "K8S_POD_NAME": "k8s.pod.name",
    "K8S_NAMESPACE_NAME": "k8s.namespace.name",
    "K8S_NODE_NAME": "k8s.node.name",
    "K8S_POD_UID": "k8s.pod.uid",
}


def _on(env: Mapping[str, str], *names: str) -> bool:
    return any(env.get(n) for n in names)


def resource(env: Mapping[str, str]) -> Resource:
    """Ours, then the downward API's, then OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME:
    later wins. Read from `env` here, because `Resource.create` lets the attributes it is
    given override the ones it reads from os.environ itself."""
    attrs: dict[str, str] = {"service.name": "llm-sidecar", "service.version": __version__}
    attrs.update({attr: env[var] for var, attr in _K8S.items() if env.get(var)})
    attrs.update(_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    if env.get("OTEL_SERVICE_NAME"):
        attrs["service.name"] = env["OTEL_SERVICE_NAME"]
    return Resource.create(attrs)


def _pairs(text: str) -> dict[str, str]:
    """`key1=value1,key2=value2` (values percent-encoded), as the specification has it."""
    out = {}
    for item in text.split(","):
        key, sep, val = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(val.strip())
    return out


@dataclass(frozen=True, slots=True)
class Providers:
    tracer: TracerProvider | None  # None: no trace export configured (or the SDK disabled)
    meter: MeterProvider
    local: InMemoryMetricReader  # the SDK's instruments (observable gauges)
    span_exporter: SpanExporter | None  # kept to cut its retries short at shutdown
    metric_exporter: MetricExporter | None  # None: no metric export configured
    export_interval: float  # seconds between metric exports
    export_timeout: float
    resource: Resource


def build(env: Mapping[str, str]) -> Providers:
    """Providers for this process. Metrics always go to the in-process reader (for
    `/stats` and `llm-sidecar top`); OTLP export only when an endpoint is configured."""
    local = InMemoryMetricReader()
    disabled = env.get("OTEL_SDK_DISABLED", "").lower() == "true"
    res = resource(env)
    tracer_provider = None
    span_exporter = None
    metric_exporter = None
    if not disabled and _on(
        env, "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    ):
        metric_exporter = _metric_exporter(env)
        log.info("telemetry: exporting metrics over OTLP (%s)", _protocol(env, "METRICS"))
    if not disabled and _on(
        env, "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        span_exporter = fast_exporter(_span_exporter(env))
        tracer_provider = TracerProvider(resource=res, sampler=_default_sampler(env))
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        log.info(
            "telemetry: exporting traces over OTLP (%s), sampler %s",
            _protocol(env, "TRACES"),
            tracer_provider.sampler.get_description(),
        )
    # No exemplars: sampling them looks up the current span on every measurement, and the
    # request path records several per request.
    meter = MeterProvider(
        resource=res,
        metric_readers=[local],
        exemplar_filter=AlwaysOffExemplarFilter(),
    )
    # With OTEL_SDK_DISABLED=true in os.environ the SDK hands out no-op meters; here it
    # means no tracing and no export, while `/stats` and `llm-sidecar top` keep counting.
    meter._disabled = False
    return Providers(
        tracer_provider,
        meter,
        local,
        span_exporter,
        metric_exporter,
        millis(env, "OTEL_METRIC_EXPORT_INTERVAL", 60000) / 1000,
        millis(env, "OTEL_METRIC_EXPORT_TIMEOUT", 30000) / 1000,
        res,
    )


def genai_latest(env: Mapping[str, str]) -> bool:
    """Whether OTEL_SEMCONV_STABILITY_OPT_IN (a comma-separated list) asks for the latest
    experimental GenAI conventions only, dropping names emitted for earlier versions."""
    values = env.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")
    return "gen_ai_latest_experimental" in {v.strip() for v in values}


def _default_sampler(env: Mapping[str, str]) -> Sampler | None:
    """Without OTEL_TRACES_SAMPLER: the app's sampled traces whole, and a tenth of the
    requests that come without one. The SDK's own default traces every request, which
    costs a busy sidecar a third to a half of its throughput (bench/telemetry.py); set
    OTEL_TRACES_SAMPLER=parentbased_always_on for that. None: the SDK reads the variable."""
    if env.get("OTEL_TRACES_SAMPLER") or os.environ.get("OTEL_TRACES_SAMPLER"):
        return None
    return ParentBased(TraceIdRatioBased(DEFAULT_TRACE_RATIO))


def millis(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name) or os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("telemetry: %s=%r is not a positive number of ms; using %g", name, raw, default)
        return default
    return value


def _protocol(env: Mapping[str, str], signal: str) -> str:
    return (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )


def _endpoint(env: Mapping[str, str], signal: str, grpc: bool) -> str | None:
    """The endpoint from `env` (not only os.environ), as the exporters would derive it."""
    own = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if own:
        return own
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None
    return base if grpc else f"{base.rstrip('/')}/v1/{signal}"


def _span_exporter(env: Mapping[str, str]):  # type: ignore[no-untyped-def]  # noqa: ANN202
    grpc = _protocol(env, "TRACES") == "grpc"
    if grpc:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=_endpoint(env, "traces", grpc))


def _metric_exporter(env: Mapping[str, str]):  # type: ignore[no-untyped-def]  # noqa: ANN202
    grpc = _protocol(env, "METRICS") == "grpc"
    if grpc:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    return OTLPMetricExporter(endpoint=_endpoint(env, "metrics", grpc))
