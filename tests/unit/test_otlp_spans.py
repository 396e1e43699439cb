"""The fast span encoder must produce what the SDK's OTLP encoder produces, decoded with
opentelemetry-proto: the SDK is the oracle, on spans with every feature a span can have."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http
from opentelemetry.propagate import extract
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from sidecar.telemetry import otlp_spans
from sidecar.telemetry.otlp_spans import encode_spans, fast_exporter

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def tracer(keep: Keep, service: str, scope: str, version: str | None = None) -> trace.Tracer:
    provider = TracerProvider(resource=Resource.create({"service.name": service, "n": 1}))
    provider.add_span_processor(SimpleSpanProcessor(keep))
    return provider.get_tracer(scope, version, schema_url="https://opentelemetry.io/schemas/1")


def decoded(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(encode_spans(spans))


def test_every_span_feature_encodes_as_the_sdk_encodes_it():
    keep = Keep()
    a = tracer(keep, "one", "llm-sidecar", "1.2.3")
    b = tracer(keep, "two", "other")
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque,x=1"}
    with a.start_as_current_span("chat r", context=extract(headers), kind=SpanKind.SERVER) as s:
        s.set_attributes(
            {
                "str": "é and ü",
                "yes": True,
                "no": False,
                "one": 1,  # equal to True, must stay an int
                "negative": -42,
                "big": 2**62,
                "float": 0.1,
                "strs": ("stop", "length"),
                "ints": (1, 2, 3),
                "empty": "",
            }
        )
        s.add_event("retry", {"attempt": 2, "why": "5xx"})
        s.add_event("bare")
        with a.start_as_current_span(
            "chat m",
            kind=SpanKind.CLIENT,
            links=[Link(s.get_span_context(), {"k": "v"})],
        ) as c:
            c.set_status(Status(StatusCode.ERROR, "upstream said no"))
    with b.start_as_current_span("internal", kind=SpanKind.INTERNAL):
        pass
    with a.start_as_current_span("ok") as ok:
        ok.set_status(Status(StatusCode.OK))
    assert len(keep.spans) == 4
    ours = decoded(keep.spans)
    assert ours == sdk_encode(keep.spans)
    assert len(ours.resource_spans) == 2
    server = ours.resource_spans[0].scope_spans[0].spans[1]
    assert server.trace_state == "vendor=opaque,x=1"
    assert server.flags == 0x300  # its parent is remote


def test_cached_attribute_pairs_stay_right_past_the_cache_limit():
    keep = Keep()
    t = tracer(keep, "svc", "s")
    for i in range(otlp_spans._CACHE_LIMIT + 50):
        with t.start_as_current_span("x", attributes={"user": f"u{i % 4200}", "n": i}):
            pass
    assert decoded(keep.spans) == sdk_encode(keep.spans)
    assert decoded(keep.spans) == sdk_encode(keep.spans)  # now from the cache


def test_both_sdk_exporters_get_the_fast_encoder():
    http = fast_exporter(Http(endpoint="http://127.0.0.1:9/v1/traces"))
    assert isinstance(http, otlp_spans._HttpExporter)
    grpc = fast_exporter(Grpc(endpoint="127.0.0.1:9", insecure=True))
    keep = Keep()
    with tracer(keep, "svc", "s").start_as_current_span("x", attributes={"a": 1}):
        pass
    assert grpc._translate_data(keep.spans) == sdk_encode(keep.spans)  # type: ignore[attr-defined]
    http.shutdown()
    grpc.shutdown()
