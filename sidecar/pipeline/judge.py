"""What the app can see is wrong with an answer: cut off (finish reason `length`), a
refusal (the provider's `refusal` field, a `content_filter` finish, or the policy's refusal
patterns at the start of the text), or empty (no text, no tool call, no refusal).

Judged once, on the answer the app gets, as `meter` reads it: the JSON answer it parses
anyway, or a stream's first chunks — only until `REFUSAL_SPAN` characters of text (or a
tool call) have passed, so a long stream is not parsed chunk by chunk for this. The
verdict goes to `ctx.signals`; telemetry/quality.py counts it per route, model and tier.
Model selection's cascades ask `refused` the same question of a cheap tier's answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from sidecar.policy.model import REFUSAL_SPAN, QualityConfig

if TYPE_CHECKING:
    from sidecar.pipeline.context import RequestContext

TRUNCATED, REFUSAL, EMPTY = "truncated", "refusal", "empty"
SIGNALS = (TRUNCATED, REFUSAL, EMPTY)


def refused(quality: QualityConfig, text: str) -> bool:
    """Does `text` read as a refusal by the policy's patterns?"""
    return quality.refusal is not None and quality.refusal.search(text[:REFUSAL_SPAN]) is not None


def signals(
    quality: QualityConfig, text: str, tools: bool, refusal: bool, finish_reasons: list[str]
) -> tuple[str, ...]:
    out: list[str] = []
    if "length" in finish_reasons:
        out.append(TRUNCATED)
    if refusal or "content_filter" in finish_reasons or (text and refused(quality, text)):
        out.append(REFUSAL)
    elif not tools and not text.strip():
        out.append(EMPTY)
    return tuple(out)


def judge(ctx: RequestContext, answer: Any) -> None:
    """A JSON answer (parsed), with `ctx.finish_reasons` already read from it."""
    try:
        message = answer["choices"][0].get("message") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        return
    content = message.get("content")
    ctx.answer_id = str(answer.get("id") or "")
    ctx.signals = signals(
        ctx.snapshot.policy.quality,
        content if isinstance(content, str) else "",
        bool(message.get("tool_calls")),
        bool(message.get("refusal")),
        ctx.finish_reasons,
    )


class StreamJudge:
    """Reads a stream's chunks while `reading`; `end` gives the verdict."""

    __slots__ = ("reading", "refusal", "text", "tools")

    def __init__(self) -> None:
        self.reading = True
        self.text = ""
        self.tools = False
        self.refusal = False

    def feed(self, ctx: RequestContext, event: bytes) -> Any:
        """One `data: {…}` event; returns the chunk, parsed (None when it is not JSON)."""
        try:
            chunk = orjson.loads(event[6:])
            if not ctx.answer_id:
                ctx.answer_id = str(chunk.get("id") or "")
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if isinstance(content, str):
                    self.text += content
                self.tools = self.tools or bool(delta.get("tool_calls"))
                self.refusal = self.refusal or bool(delta.get("refusal"))
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            self.reading = False  # not a shape we read; the stream itself goes on
            return None
        if self.tools or len(self.text) >= REFUSAL_SPAN:
            self.reading = False
        return chunk

    def end(self, ctx: RequestContext) -> None:
        ctx.signals = signals(
            ctx.snapshot.policy.quality, self.text, self.tools, self.refusal, ctx.finish_reasons
        )
