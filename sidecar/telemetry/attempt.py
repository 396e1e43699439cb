"""What one upstream attempt reports: its client span, per the GenAI client conventions.

The span is opened by dispatch around the call and carries, besides the request side, where
the call went (`server.address`, `server.port`: from the provider's `base_url`, never its
userinfo) and, once the answer is in, which model answered and the tokens the provider
reported for it (`gen_ai.response.model`, `gen_ai.usage.*`). A JSON answer is complete when
the call returns; a stream's span stays open until its last event, so the span covers the
whole call and its usage chunk. Only recording (sampled) spans cost anything here: the
answer is read for the span only then.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry.trace import Span

from sidecar.providers.base import Events, Reply

_PORTS = {"https": 443, "http": 80}


@functools.lru_cache(maxsize=256)
def server(base_url: str) -> Mapping[str, Any]:
    """`server.address` and `server.port` of a provider's base URL (empty when it has no
    host, as a mock provider's). Cached: base URLs are few and fixed per policy."""
    parts = urlsplit(base_url)
    if not parts.hostname:
        return {}
    port = parts.port or _PORTS.get(parts.scheme)
    return {"server.address": parts.hostname, **({"server.port": port} if port else {})}


def answered(span: Span | None, reply: Reply, called_at: float) -> Reply:
    """Hand `reply` on; its span ends now (JSON), or after the stream's last event or when
    the stream is closed before that (cut, abandoned by a hedge it lost, the app gone)."""
    if span is None:
        return reply
    if reply.events is None:
        try:
            answer = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            answer = None
        _describe(span, answer if isinstance(answer, dict) else {})
        span.end()
        return reply
    span.set_attribute("gen_ai.response.time_to_first_chunk", time.monotonic() - called_at)
    usage_chunk: dict[str, Any] = {}
    ended = False

    def end() -> None:
        nonlocal ended
        if not ended:
            ended = True
            _describe(span, usage_chunk)
            span.end()

    reply.events = _watched(reply.events, usage_chunk, end)
    reply.on_close = _then(end, reply.on_close)
    return reply


async def _watched(events: Events, usage_chunk: dict[str, Any], end: Callable[[], None]) -> Events:
    """Pass the events on, keeping the usage chunk for the span; end it with the stream."""
    try:
        async for batch in events:
            for event in batch:
                if b'"usage"' in event and event.startswith(b"data: {"):
                    chunk = orjson.loads(event[6:])
                    if isinstance(chunk.get("usage"), dict):
                        usage_chunk.update(chunk)
            yield batch
    finally:
        end()
        await events.aclose()  # type: ignore[attr-defined]


def _then(first: Callable[[], None], then: Callable[[], None] | None) -> Callable[[], None]:
    def both() -> None:
        first()
        if then is not None:
            then()

    return both


def _describe(span: Span, answer: Mapping[str, Any]) -> None:
    """The answer's model and the tokens the provider reported (none: not set)."""
    attributes: dict[str, Any] = {}
    if isinstance(answer.get("model"), str) and answer["model"]:
        attributes["gen_ai.response.model"] = answer["model"]
    usage = answer.get("usage")
    if isinstance(usage, dict):
        for ours, theirs in (("input", "prompt_tokens"), ("output", "completion_tokens")):
            if isinstance(usage.get(theirs), int):
                attributes[f"gen_ai.usage.{ours}_tokens"] = usage[theirs]
    if attributes:
        span.set_attributes(attributes)
