"""OTLP trace export with a faster span encoder.

The SDK's exporters build a protobuf message object per span, per attribute and per
value before serialising: about 94 µs per span here, on a thread that shares the GIL
with the event loop, so with every request traced it was the largest single cost of
tracing (`bench/telemetry.py`). This writes the same `ExportTraceServiceRequest` straight
to protobuf wire bytes, reusing the bytes of attribute pairs that repeat from span to span
(route, model, provider, operation names), and lets the SDK's exporters do everything
else: endpoint, headers, TLS, compression, timeouts and retries, both protocols. A unit
test decodes its output with `opentelemetry-proto` and compares it with the SDK encoder's.

The exporters have no public hook for their encoder. The gRPC one turns spans into a
message in `_translate_data`; the HTTP one serialises inline in `export` and then hands
bytes to its `_client`. `fast_exporter` uses those only when they are there, and returns
the SDK exporter unchanged when they are not, so an SDK upgrade can cost speed, never spans.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("sidecar.telemetry")

_SMALL = [bytes([n]) for n in range(128)]
_CACHE_LIMIT = 4096  # attribute pairs remembered per field; cleared when full
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags in trace.proto


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 128 else _varint(n)) + payload


def _any_value(value: Any) -> bytes:
    """An AnyValue message body."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _len(b"\x0a", value.encode())
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{value} does not fit an int64")
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, bytes):
        return _len(b"\x3a", value)
    if value is None:
        return b""
    if isinstance(value, Sequence):
        return _len(b"\x2a", b"".join(_len(b"\x0a", _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        pairs = b"".join(_len(b"\x0a", _key_value(str(k), v)) for k, v in value.items())
        return _len(b"\x32", pairs)
    raise TypeError(f"invalid attribute type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _len(b"\x0a", key.encode()) + _len(b"\x12", _any_value(value))


class _Attributes:
    """Encodes the `repeated KeyValue` field `tag` of some message. Pairs with a string or
    integer value are remembered (per type: True == 1), since most of a span's attributes
    repeat across requests."""

    __slots__ = ("_ints", "_strs", "_tag")

    def __init__(self, tag: bytes) -> None:
        self._tag = tag
        self._strs: dict[tuple[str, str], bytes] = {}
        self._ints: dict[tuple[str, int], bytes] = {}

    def __call__(self, attributes: Mapping[str, Any] | None) -> bytes:
        if not attributes:
            return b""
        items = _plain(attributes).items()
        parts = []
        for key, value in items:
            kind = type(value)
            cache = self._strs if kind is str else self._ints if kind is int else None
            if cache is not None:
                done = cache.get((key, value))
                if done is None:
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    done = cache[(key, value)] = self._pair(key, value)
                if done:
                    parts.append(done)
            else:
                parts.append(self._pair(key, value))
        return b"".join(parts)

    def _pair(self, key: str, value: Any) -> bytes:
        try:
            return _len(self._tag, _key_value(key, value))
        except (TypeError, ValueError) as exc:  # as the SDK's encoder: skip it, say so
            log.warning("telemetry: attribute %s not exported: %s", key, exc)
            return b""


_SPAN_ATTRIBUTES = _Attributes(b"\x4a")  # Span.attributes = 9
_EVENT_ATTRIBUTES = _Attributes(b"\x1a")  # Event.attributes = 3
_LINK_ATTRIBUTES = _Attributes(b"\x22")  # Link.attributes = 4
_PLAIN_ATTRIBUTES = _Attributes(b"\x0a")  # Resource.attributes = 1
_SCOPE_ATTRIBUTES = _Attributes(b"\x1a")  # InstrumentationScope.attributes = 3


def _plain(attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    """The dict inside the SDK's BoundedAttributes, which iterates in Python (a call per
    key) where a dict iterates in C."""
    inner = getattr(attributes, "_dict", None)
    return inner if type(inner) is dict else attributes


def _count(tag: bytes, n: int) -> bytes:
    return tag + _varint(n) if n else b""


def _flags(parent: Any) -> bytes:
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    return struct.pack("<I", flags)


def _span(span: ReadableSpan) -> bytes:
    ctx = span.get_span_context()
    assert ctx is not None
    parts = [
        b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + ctx.span_id.to_bytes(8, "big"),
    ]
    if ctx.trace_state:
        state = ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())
        parts.append(_len(b"\x1a", state.encode()))
    parent = span.parent
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_len(b"\x2a", span.name.encode()))
    parts.append(b"\x30" + _SMALL[span.kind.value + 1])
    parts.append(struct.pack("<BQBQ", 0x39, span.start_time or 0, 0x41, span.end_time or 0))
    # A ReadableSpan's `attributes` wraps them in a proxy, its `events` and `links` copy.
    parts.append(_SPAN_ATTRIBUTES(getattr(span, "_attributes", None) or span.attributes))
    parts.append(_count(b"\x50", span.dropped_attributes))
    for event in span.events if getattr(span, "_events", True) else ():
        body = struct.pack("<BQ", 0x09, event.timestamp)
        if event.name:
            body += _len(b"\x12", event.name.encode())
        body += _EVENT_ATTRIBUTES(event.attributes) + _count(b"\x20", event.dropped_attributes)
        parts.append(_len(b"\x5a", body))
    parts.append(_count(b"\x60", span.dropped_events))
    for link in span.links if getattr(span, "_links", True) else ():
        body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")
        body += b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
        body += _LINK_ATTRIBUTES(link.attributes) + _count(b"\x28", link.dropped_attributes)
        body += b"\x35" + _flags(link.context)
        parts.append(_len(b"\x6a", body))
    parts.append(_count(b"\x70", span.dropped_links))
    status = b""
    if span.status.description:
        status += _len(b"\x12", span.status.description.encode())
    status += _count(b"\x18", span.status.status_code.value)
    parts.append(_len(b"\x7a", status))
    parts.append(b"\x85\x01" + _flags(parent))  # flags = 16, fixed32
    return b"".join(parts)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An `ExportTraceServiceRequest`, grouped by resource and then by scope as the
    SDK's encoder groups them."""
    # By identity: a Resource hashes by dumping its attributes to JSON, and every span of
    # a provider shares the same object. Equal resources that are distinct objects are
    # still one group.
    grouped: dict[int, tuple[Any, dict[Any, list[bytes]]]] = {}
    for span in spans:
        _, scopes = grouped.setdefault(id(span.resource), (span.resource, {}))
        scopes.setdefault(span.instrumentation_scope or None, []).append(_span(span))
    merged: dict[Any, dict[Any, list[bytes]]] = {}
    for resource, scopes in grouped.values():
        into = merged.setdefault(resource, {})
        for scope, encoded in scopes.items():
            into.setdefault(scope, []).extend(encoded)
    out = []
    for resource, scopes in merged.items():
        body = _len(b"\x0a", _PLAIN_ATTRIBUTES(resource.attributes))
        for scope, encoded in scopes.items():
            head = b""
            if scope is not None:
                if scope.name:
                    head += _len(b"\x0a", scope.name.encode())
                if scope.version:
                    head += _len(b"\x12", scope.version.encode())
                head += _SCOPE_ATTRIBUTES(scope.attributes)
            scope_spans = _len(b"\x0a", head) + b"".join(_len(b"\x12", s) for s in encoded)
            if scope is not None and scope.schema_url:
                scope_spans += _len(b"\x1a", scope.schema_url.encode())
            body += _len(b"\x12", scope_spans)
        if resource.schema_url:
            body += _len(b"\x1a", resource.schema_url.encode())
        out.append(_len(b"\x0a", body))
    return b"".join(out)


class _HttpExporter(SpanExporter):
    """The SDK's OTLP/HTTP span exporter with this encoder in front of its HTTP client."""

    def __init__(self, sdk: Any) -> None:
        self._sdk = sdk

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._sdk._shutdown:
            return SpanExportResult.FAILURE
        try:
            data = encode_spans(spans)
        except Exception:
            log.exception("telemetry: encoding %d span(s) failed", len(spans))
            return SpanExportResult.FAILURE
        result = self._sdk._client.export(data)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._sdk.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self._sdk.force_flush(timeout_millis))


def fast_exporter(sdk: SpanExporter) -> SpanExporter:
    """`sdk` with the faster encoder when its internals are the ones this was written
    against; `sdk` itself otherwise."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    if isinstance(sdk, HttpExporter) and hasattr(sdk, "_client") and hasattr(sdk, "_shutdown"):
        return _HttpExporter(sdk)
    if isinstance(sdk, GrpcExporter) and hasattr(sdk, "_translate_data"):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        def translate(data: Sequence[ReadableSpan]) -> Any:
            # upb parses in C: far cheaper than building the message in Python.
            return ExportTraceServiceRequest.FromString(encode_spans(data))

        sdk._translate_data = translate  # type: ignore[method-assign]
        return sdk
    log.info("telemetry: using the SDK's own span encoder for %s", type(sdk).__name__)
    return sdk
