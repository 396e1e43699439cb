"""Stage: meter the tokens an answer used and price them, onto the request context.

`meter` runs as the answer leaves (for a stream, as its events pass); validation charges
each answer it discards the same way, so every answer paid for is counted. What is
metered here is recorded (usage rows, spend) by `account.record` once the request ends.
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.judge import StreamJudge, judge
from sidecar.pipeline.ledger import charge
from sidecar.pipeline.prepare import priced_trim
from sidecar.policy.model import Model
from sidecar.providers.base import Events, Reply
from sidecar.tokens import count_text, estimate_request


def meter(ctx: RequestContext, reply: Reply) -> Reply:
    """Charge a JSON answer now; wrap a stream so its usage chunk is read as it passes
    (and dropped, when only the sidecar asked for it). An answer that took more than one
    call (validation discarded the others) reports the usage of all of them, as its cost
    header does."""
    if reply.events is not None:
        reply.events = _metered(ctx, reply.events)
        return reply
    answer = charge_answer(ctx, reply.body)
    if ctx.output != "default":  # the policy's answer, not a model's: nothing to judge
        judge(ctx, answer)
    if ctx.answers > 1 and isinstance(answer, dict) and "usage" in answer:
        answer["usage"] = _totals(ctx)
        reply.body = orjson.dumps(answer)
    return reply


def _totals(ctx: RequestContext, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request's usage so far (plus `extra`, an answer not charged yet)."""
    extra = extra or {}
    prompt = ctx.input_tokens + int(extra.get("prompt_tokens") or 0)
    completion = ctx.output_tokens + int(extra.get("completion_tokens") or 0)
    cached = ctx.cached_tokens + int(
        (extra.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def charge_answer(ctx: RequestContext, body: bytes) -> Any:
    """Add one JSON answer's tokens and cost to the request (validation retries call this
    for each answer they discard, so every answer paid for is accounted). Returns the
    answer, parsed."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = {}
    ctx.finish_reasons = _finish_reasons(answer)
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if isinstance(usage, dict) and usage:
        _charge_usage(ctx, usage)
    else:
        _charge(
            ctx,
            ctx.estimate_in or estimate_request(ctx.body),
            count_text(_answer_text(answer)),
            0,
            0,
            False,
        )
    return answer


def charge_events(ctx: RequestContext, events: list[bytes]) -> None:
    """The same for a buffered stream."""
    chunks = 0
    for event in events:
        if not event.startswith(b"data: {"):
            continue
        chunk = orjson.loads(event[6:])
        if isinstance(chunk.get("usage"), dict):
            _charge_usage(ctx, chunk["usage"])
            return
        chunks += 1
    _charge(ctx, ctx.estimate_in or estimate_request(ctx.body), chunks, 0, 0, False)


def charge_unused(ctx: RequestContext, model: Model, body: bytes | None, purpose: str) -> None:
    """A call whose answer is not used (a losing hedge): charged at its usage when its
    answer arrived, else at the request's estimated input tokens, the least a provider
    bills for a call it had started. Its tokens are not the request's; its cost is."""
    usage: Any = None
    if body is not None:
        try:
            usage = orjson.loads(body).get("usage")
        except (orjson.JSONDecodeError, AttributeError):
            usage = None
    if isinstance(usage, dict) and usage:
        charge(ctx, model, *_counts(usage), purpose=purpose, written_1h=_written_1h(usage))
    else:
        charge(ctx, model, ctx.estimate_in or estimate_request(ctx.body), 0, purpose=purpose)


def _finish_reasons(answer: Any) -> list[str]:
    try:
        return [str(c["finish_reason"]) for c in answer["choices"] if c.get("finish_reason")]
    except (KeyError, TypeError, AttributeError):
        return []


def _charge_usage(ctx: RequestContext, usage: dict[str, Any]) -> None:
    _charge(ctx, *_counts(usage), True, _written_1h(usage))


def _counts(usage: dict[str, Any]) -> tuple[int, int, int, int]:
    """(input, output, cached, written) tokens from an OpenAI-shaped usage object; cache
    writes are Anthropic's, where its adapter puts them."""
    details = usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
        int(details.get("cache_creation_tokens") or 0),
    )


def _written_1h(usage: dict[str, Any]) -> int:
    """Of the cache writes, those to Anthropic's hour-long cache (its adapter says)."""
    return int((usage.get("prompt_tokens_details") or {}).get("cache_creation_1h_tokens") or 0)


def _charge(
    ctx: RequestContext,
    input_tokens: int,
    output_tokens: int,
    cached: int,
    written: int,
    known: bool,
    written_1h: int = 0,
) -> None:
    first = ctx.answers == 0
    if first and known and ctx.trim_chars is not None:
        priced_trim(ctx, input_tokens)
    ctx.answers += 1
    ctx.input_tokens += input_tokens
    ctx.output_tokens += output_tokens
    ctx.cached_tokens += cached
    ctx.usage_known = known if first else (ctx.usage_known and known)
    if ctx.answered_by is not None:
        batch, ctx.batched = ctx.batched, False  # a provider batch's answer: only the first
        model = ctx.answered_by
        charge(
            ctx,
            model,
            input_tokens,
            output_tokens,
            cached,
            written,
            batch=batch,
            written_1h=written_1h,
        )


def _answer_text(answer: Any) -> str:
    try:
        return "".join(str(c["message"].get("content") or "") for c in answer["choices"])
    except (KeyError, TypeError, AttributeError):
        return ""


async def _metered(ctx: RequestContext, events: Events) -> Events:
    """Also: an app that asked for the usage chunk gets one even from an upstream that
    sent none (many local servers), from the sidecar's own estimate and marked so."""
    wants_usage = bool((ctx.client_body.get("stream_options") or {}).get("include_usage"))
    discarded = ctx.answers > 0  # answers validation paid for and threw away
    judged = StreamJudge() if ctx.output != "default" else None
    chunks = 0
    usage: dict[str, Any] | None = None
    try:
        async for batch in events:
            out: list[bytes] = []
            for event in batch:
                if b'"usage"' in event and event.startswith(b"data: {"):
                    chunk = orjson.loads(event[6:])
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                        if not wants_usage and not chunk.get("choices"):
                            continue  # the sidecar asked for it, not the client
                        if discarded:
                            chunk["usage"] = _totals(ctx, usage)
                            event = b"data: " + orjson.dumps(chunk) + b"\n\n"
                elif event.startswith(b"data: [DONE]") and usage is None and wants_usage:
                    out.append(_estimated(ctx, chunks))
                elif event.startswith(b"data: {"):
                    chunks += 1
                    chunk = judged.feed(ctx, event) if judged and judged.reading else None
                    if b'"finish_reason":"' in event:
                        if chunk is None:
                            chunk = orjson.loads(event[6:])
                        ctx.finish_reasons += _finish_reasons(chunk)
                out.append(event)
            if out:
                yield out
    finally:
        if usage is not None:
            _charge_usage(ctx, usage)
        else:
            _charge(ctx, ctx.estimate_in or estimate_request(ctx.body), chunks, 0, 0, False)
        if judged is not None:
            judged.end(ctx)


def _estimated(ctx: RequestContext, chunks: int) -> bytes:
    """The usage chunk the upstream did not send: one token per content chunk."""
    guess = {
        "prompt_tokens": ctx.estimate_in or estimate_request(ctx.body),
        "completion_tokens": chunks,
    }
    chunk = {
        "id": "",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": _totals(ctx, guess),
        "x_sidecar_usage": "estimated",
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"
