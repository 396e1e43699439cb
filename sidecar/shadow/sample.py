"""Stage: draw which answered requests a route's shadow trial copies, and keep the primary
answer of those it does, for the comparison that follows once the answer is out.

One random draw per request on a route with `shadow:`, nothing on others. A JSON answer is
kept by reference; a stream is collected as it passes (only when sampled) and put back
together at its end.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.synth import assemble
from sidecar.providers.base import CHAT, Events, Reply


@dataclass(slots=True)
class Capture:
    """The primary answer of a sampled request."""

    body: bytes | None = None  # a JSON answer, in the internal (OpenAI) shape
    events: list[bytes] = field(default_factory=list)  # a stream's events
    complete: bool = False  # a stream that reached [DONE]
    ended: float = 0.0  # monotonic: when the primary answer was complete

    def answer(self) -> dict[str, Any] | None:
        """The primary answer as a completion, None when there is none to compare with."""
        try:
            if self.body is not None:
                parsed = orjson.loads(self.body)
                return parsed if isinstance(parsed, dict) else None
            return assemble(self.events) if self.complete else None
        except (orjson.JSONDecodeError, TypeError, AttributeError):
            return None


def sample(ctx: RequestContext, reply: Reply) -> Reply:
    route = ctx.route
    shadow = route.shadow if route is not None else None
    if shadow is None or ctx.operation != CHAT or random.random() >= shadow.sample:
        return reply
    capture = Capture()
    ctx.shadow = capture
    if reply.events is None:
        capture.body = reply.body
        capture.ended = time.monotonic()
    else:
        reply.events = _collected(capture, reply.events)
    return reply


async def _collected(capture: Capture, events: Events) -> Events:
    async for batch in events:
        capture.events += batch
        yield batch
    capture.ended = time.monotonic()
    capture.complete = bool(capture.events) and capture.events[-1].startswith(b"data: [DONE]")
