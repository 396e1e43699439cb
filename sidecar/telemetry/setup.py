"""Build tracing and metrics from the standard OpenTelemetry environment variables.

OTEL_EXPORTER_OTLP_ENDPOINT (or the _TRACES_/_METRICS_ variants) turns export on;
OTEL_EXPORTER_OTLP_PROTOCOL picks grpc or http/protobuf (the default); OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG) and OTEL_METRIC_EXPORT_INTERVAL are
read by the SDK itself; OTEL_SDK_DISABLED=true turns everything off. Kubernetes pod,
namespace and node come from the downward-API variables K8S_POD_NAME, K8S_NAMESPACE_NAME
and K8S_NODE_NAME when the chart sets them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sidecar import __version__

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

_K8S = {
    "K8S_POD_NAME": "k8s.pod.name",
    "K8S_NAMESPACE_NAME": "k8s.namespace.name",
    "K8S_NODE_NAME": "k8s.node.name",
    "K8S_POD_UID": "k8s.pod.uid",
}


def _on(env: Mapping[str, str], *names: str) -> bool:
    return any(env.get(n) for n in names)


def resource(env: Mapping[str, str]) -> Resource:
    attrs: dict[str, str] = {"service.name": "llm-sidecar", "service.version": __version__}
    attrs.update({attr: env[var] for var, attr in _K8S.items() if env.get(var)})
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over these.
    return Resource.create(attrs)


def views() -> list[View]:
    return [
        View(
            instrument_name="gen_ai.client.operation.duration",
            aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS),
        ),
        View(
            instrument_name="gen_ai.client.token.usage",
            aggregation=ExplicitBucketHistogramAggregation(TOKEN_BUCKETS),
        ),
        View(
            instrument_name="gen_ai.server.time_to_first_token",
            aggregation=ExplicitBucketHistogramAggregation(TTFT_BUCKETS),
        ),
        View(
            instrument_name="sidecar.queue.wait",
            aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS),
        ),
    ]


def build(
    env: Mapping[str, str],
) -> tuple[TracerProvider | None, MeterProvider, InMemoryMetricReader]:
    """Providers for this process. Metrics always go to the in-process reader (for
    `/stats` and `llm-sidecar top`); OTLP export only when an endpoint is configured."""
    local = InMemoryMetricReader()
    disabled = env.get("OTEL_SDK_DISABLED", "").lower() == "true"
    res = resource(env)
    readers: list[MetricReader] = [local]
    tracer_provider = None
    if not disabled and _on(
        env, "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    ):
        readers.append(PeriodicExportingMetricReader(_metric_exporter(env)))
    if not disabled and _on(
        env, "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        tracer_provider = TracerProvider(resource=res)
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(env)))
        log.info("telemetry: exporting traces over OTLP (%s)", _protocol(env, "TRACES"))
    return (
        tracer_provider,
        MeterProvider(resource=res, metric_readers=readers, views=views()),
        local,
    )


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
