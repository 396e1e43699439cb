"""A real OTLP receiver for tests: OTLP/HTTP protobuf (aiohttp) and, on request, OTLP/gRPC
(grpc.aio), both on 127.0.0.1 random ports, decoding with `opentelemetry-proto`.

It keeps every span and every metric data point it was sent, flattened into plain
dataclasses, and the raw bytes of every export (to prove what is *not* in them).

The SDK's exporters run on background threads and block until the receiver answers, so a
test that serves this receiver on its event loop must flush the sidecar's telemetry off
that loop (`await asyncio.to_thread(sidecar.telemetry.flush)`), or it deadlocks. `collect`
does that, and waits for what the test expects to arrive.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_service
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_service
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

PROTOBUF = "application/x-protobuf"
_KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in trace_pb2.Span.SpanKind.items()}
_STATUS = {v: k.removeprefix("STATUS_CODE_") for k, v in trace_pb2.Status.StatusCode.items()}
_TEMPORALITY = {
    v: k.removeprefix("AGGREGATION_TEMPORALITY_")
    for k, v in metrics_pb2.AggregationTemporality.items()
}


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, kind)


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    name: str
    kind: str  # SERVER | CLIENT | INTERNAL | ...
    status: str  # UNSET | OK | ERROR
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class Point:
    """One metric data point as exported (cumulative unless the SDK was told otherwise)."""

    metric: str
    unit: str
    kind: str  # histogram | sum | gauge
    attributes: dict[str, Any]
    resource: dict[str, Any]
    time_ns: int
    value: float | None = None  # sum, gauge
    monotonic: bool | None = None  # sum
    temporality: str | None = None  # CUMULATIVE | DELTA (sum, histogram)
    count: int | None = None  # histogram
    sum: float | None = None  # histogram
    bounds: tuple[float, ...] = ()  # histogram
    buckets: tuple[int, ...] = ()  # histogram: len(bounds) + 1 counts

    def key(self) -> tuple[str, frozenset[tuple[str, str]]]:
        return self.metric, frozenset((k, repr(v)) for k, v in self.attributes.items())


@dataclass
class OtlpReceiver:
    grpc: bool = False  # also serve OTLP/gRPC
    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # every export body, as received
    exports: dict[str, int] = field(default_factory=dict)  # by signal and transport
    port: int = 0
    grpc_port: int = 0
    _runner: web.AppRunner | None = None
    _grpc_server: Any = None

    @property
    def endpoint(self) -> str:
        """The base URL for OTEL_EXPORTER_OTLP_ENDPOINT (http/protobuf)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    async def start(self) -> OtlpReceiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._http_traces)
        app.router.add_post("/v1/metrics", self._http_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()
        if self.grpc:
            await self._start_grpc()
        return self

    async def stop(self) -> None:
        if self._grpc_server is not None:
            await self._grpc_server.stop(None)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what arrived ----------------------------------------------------------------------

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        return sorted(
            (s for s in self.spans if s.parent_span_id == parent.span_id),
            key=lambda s: s.start_ns,
        )

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def latest(self, metric: str) -> list[Point]:
        """The newest point of each attribute set of `metric`: with cumulative temporality
        (the SDK's default) that is the running total since the sidecar started."""
        newest: dict[tuple[str, frozenset[tuple[str, str]]], Point] = {}
        for p in self.points:
            if p.metric != metric:
                continue
            seen = newest.get(p.key())
            if seen is None or seen.time_ns <= p.time_ns:
                newest[p.key()] = p
        return list(newest.values())

    def metric_names(self) -> set[str]:
        return {p.metric for p in self.points}

    def total(self, metric: str, **where: Any) -> float:
        """Sum of the latest values (counters) or counts (histograms) matching `where`
        (attribute names with dots written as `__`, e.g. sidecar__route="r")."""
        want = {k.replace("__", "."): v for k, v in where.items()}
        total = 0.0
        for p in self.latest(metric):
            if all(p.attributes.get(k) == v for k, v in want.items()):
                total += p.count if p.kind == "histogram" else (p.value or 0)  # type: ignore[operator]
        return total

    # -- decoding --------------------------------------------------------------------------

    def _traces(self, raw: bytes, transport: str) -> trace_service.ExportTraceServiceResponse:
        message = trace_service.ExportTraceServiceRequest()
        message.ParseFromString(raw)
        self.raw.append(raw)
        self.exports[f"traces/{transport}"] = self.exports.get(f"traces/{transport}", 0) + 1
        for rs in message.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        ReceivedSpan(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=_KINDS[s.kind],
                            status=_STATUS[s.status.code],
                            attributes=attributes(s.attributes),
                            resource=resource,
                            scope=ss.scope.name,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        return trace_service.ExportTraceServiceResponse()

    def _metrics(self, raw: bytes, transport: str) -> metrics_service.ExportMetricsServiceResponse:
        message = metrics_service.ExportMetricsServiceRequest()
        message.ParseFromString(raw)
        self.raw.append(raw)
        self.exports[f"metrics/{transport}"] = self.exports.get(f"metrics/{transport}", 0) + 1
        for rm in message.resource_metrics:
            resource = attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    self.points.extend(_points(m, resource))
        return metrics_service.ExportMetricsServiceResponse()

    # -- transports ------------------------------------------------------------------------

    async def _http(
        self, request: web.Request, decode: Callable[[bytes, str], Any]
    ) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"expected {PROTOBUF}")
        raw = await request.read()  # aiohttp has already undone Content-Encoding: gzip
        try:
            answer = decode(raw, "http")
        except DecodeError as exc:
            return web.Response(status=400, text=f"not an OTLP message: {exc}")
        return web.Response(body=answer.SerializeToString(), content_type=PROTOBUF)

    async def _http_traces(self, request: web.Request) -> web.Response:
        return await self._http(request, self._traces)

    async def _http_metrics(self, request: web.Request) -> web.Response:
        return await self._http(request, self._metrics)

    async def _start_grpc(self) -> None:
        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(  # the generated service's name
                self, request: trace_service.ExportTraceServiceRequest, context: Any
            ) -> trace_service.ExportTraceServiceResponse:
                return receiver._traces(request.SerializeToString(), "grpc")

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            async def Export(
                self, request: metrics_service.ExportMetricsServiceRequest, context: Any
            ) -> metrics_service.ExportMetricsServiceResponse:
                return receiver._metrics(request.SerializeToString(), "grpc")

        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
        self.grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._grpc_server = server


def _points(m: metrics_pb2.Metric, resource: dict[str, Any]) -> list[Point]:
    kind = m.WhichOneof("data")
    out: list[Point] = []
    if kind == "histogram":
        for p in m.histogram.data_points:
            out.append(
                Point(
                    m.name,
                    m.unit,
                    "histogram",
                    attributes(p.attributes),
                    resource,
                    p.time_unix_nano,
                    temporality=_TEMPORALITY[m.histogram.aggregation_temporality],
                    count=p.count,
                    sum=p.sum,
                    bounds=tuple(p.explicit_bounds),
                    buckets=tuple(p.bucket_counts),
                )
            )
    elif kind in ("sum", "gauge"):
        data = m.sum if kind == "sum" else m.gauge
        for p in data.data_points:
            number = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
            out.append(
                Point(
                    m.name,
                    m.unit,
                    kind,
                    attributes(p.attributes),
                    resource,
                    p.time_unix_nano,
                    value=number,
                    monotonic=m.sum.is_monotonic if kind == "sum" else None,
                    temporality=(
                        _TEMPORALITY[m.sum.aggregation_temporality] if kind == "sum" else None
                    ),
                )
            )
    return out


async def collect(
    telemetry: Any, receiver: OtlpReceiver, until: Callable[[], bool], within: float = 5.0
) -> None:
    """Flush `telemetry` (a sidecar's `Telemetry`) off the event loop until `until()` holds.

    More than one round may be needed: a stream's server span ends just after its last
    byte reached the client, so the first flush can come before it."""
    deadline = time.monotonic() + within
    while True:
        await asyncio.to_thread(telemetry.flush)
        if until():
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"telemetry did not arrive within {within}s: {len(receiver.spans)} span(s) "
                f"{sorted({s.name for s in receiver.spans})}, metrics "
                f"{sorted(receiver.metric_names())}"
            )
        await asyncio.sleep(0.02)
