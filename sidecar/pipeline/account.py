"""Stages after the answer: meter the tokens it used, price them, settle what admission
took. `meter` runs as the answer leaves (for a stream, as its events pass); `finish`
runs once the client has it all, or the request failed, from the handler's `finally`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from sidecar.pipeline.admit import release, scope_value
from sidecar.pipeline.context import RequestContext
from sidecar.policy.model import Price
from sidecar.providers.base import Reply
from sidecar.stores import keys
from sidecar.stores.state import StoreUnavailable, Usage
from sidecar.tokens import count_text

log = logging.getLogger("sidecar.account")

USAGE_SCOPES = ("global", "user", "team", "route", "model", "key")


def cost_usd(price: Price, input_tokens: int, output_tokens: int, cached_tokens: int) -> float:
    cached_price = price.input if price.cached_input is None else price.cached_input
    fresh = max(0, input_tokens - cached_tokens)
    return (fresh * price.input + cached_tokens * cached_price + output_tokens * price.output) / 1e6


def meter(ctx: RequestContext, reply: Reply) -> Reply:
    """Read usage off a JSON answer now; wrap a stream so its usage chunk is read as it
    passes (and dropped, when only the sidecar asked for it)."""
    if reply.events is not None:
        reply.events = _metered(ctx, reply.events)
        return reply
    try:
        answer = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        answer = {}
    usage = answer.get("usage") if isinstance(answer, dict) else None
    ctx.finish_reasons = _finish_reasons(answer)
    if isinstance(usage, dict) and usage:
        _take_usage(ctx, usage)
    else:
        _estimate(ctx, _answer_text(answer))
    _price(ctx)
    return reply


def _finish_reasons(answer: Any) -> list[str]:
    try:
        return [str(c["finish_reason"]) for c in answer["choices"] if c.get("finish_reason")]
    except (KeyError, TypeError, AttributeError):
        return []


def _take_usage(ctx: RequestContext, usage: dict[str, Any]) -> None:
    details = usage.get("prompt_tokens_details") or {}
    ctx.input_tokens = int(usage.get("prompt_tokens") or 0)
    ctx.output_tokens = int(usage.get("completion_tokens") or 0)
    ctx.cached_tokens = int(details.get("cached_tokens") or 0)
    ctx.usage_known = True


def _estimate(ctx: RequestContext, text: str) -> None:
    from sidecar.tokens import estimate_request

    ctx.input_tokens = ctx.estimate_in or estimate_request(ctx.body)
    ctx.output_tokens = count_text(text) if text else 0
    ctx.usage_known = False


def _answer_text(answer: Any) -> str:
    try:
        return "".join(str(c["message"].get("content") or "") for c in answer["choices"])
    except (KeyError, TypeError, AttributeError):
        return ""


def _price(ctx: RequestContext) -> None:
    model = ctx.answered_by
    if model is not None:
        ctx.cost_usd = cost_usd(model.price, ctx.input_tokens, ctx.output_tokens, ctx.cached_tokens)


async def _metered(ctx: RequestContext, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    wants_usage = bool((ctx.client_body.get("stream_options") or {}).get("include_usage"))
    chunks = 0
    try:
        async for event in events:
            if b'"usage"' in event and event.startswith(b"data: {"):
                chunk = orjson.loads(event[6:])
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    _take_usage(ctx, usage)
                    if not wants_usage and not chunk.get("choices"):
                        continue  # the sidecar asked for it, not the client
            elif event.startswith(b"data: {"):
                chunks += 1
                if b'"finish_reason":"' in event:
                    ctx.finish_reasons += _finish_reasons(orjson.loads(event[6:]))
            yield event
    finally:
        if not ctx.usage_known:
            ctx.input_tokens = ctx.estimate_in
            ctx.output_tokens = chunks  # a content chunk is about one token
        _price(ctx)


async def finish(ctx: RequestContext) -> None:
    """Settle everything admission took and record the request's usage. Never raises:
    the answer has been given; a store that is down costs a log line, not the request."""
    snapshot = ctx.snapshot
    state = snapshot.state
    try:
        await release(ctx)
        total = ctx.input_tokens + ctx.output_tokens
        for kind, key, charged, limit in ctx.taken:
            if kind == "tokens" and total != charged:
                await state.adjust_rate(key, total - charged, limit, 60.0)
        ctx.taken = []
        if ctx.route is None:
            return
        now = time.time()
        rows = []
        for scope in USAGE_SCOPES:
            value = scope_value(ctx, scope)
            for window in keys.WINDOWS:
                key, _, expires = keys.row(window, scope, value, now)
                rows.append((key, expires))
        usage = Usage(
            1, ctx.input_tokens, ctx.output_tokens, ctx.cached_tokens, ctx.cost_usd or 0.0
        )
        await state.settle(ctx.hold, tuple(rows), usage)
        ctx.hold = None
        await _warn(ctx, now)
    except StoreUnavailable as exc:
        log.error("state store unavailable (%s): this request's usage is not recorded", exc)
    except Exception:
        log.exception("accounting failed")


async def _warn(ctx: RequestContext, now: float) -> None:
    rules = ctx.snapshot.policy.admission.get(ctx.route.name) if ctx.route else None
    if rules is None:
        return
    for budget in rules.budgets:
        if budget.warn_at is None:
            continue
        value = scope_value(ctx, budget.scope)
        if budget.values is not None and value not in budget.values:
            continue
        key, end, _ = keys.row(budget.window, budget.scope, value, now)
        spent, _ = await ctx.snapshot.state.spent(key)
        if spent >= budget.warn_at * budget.limit_usd and await ctx.snapshot.state.once(
            f"warned:{key}:{budget.name}", end - now
        ):
            log.warning(
                "budget %s: %s '%s' has spent %.4f of %.4f USD this %s (warn_at %.0f%%)",
                budget.name,
                budget.scope,
                value,
                spent,
                budget.limit_usd,
                budget.window,
                budget.warn_at * 100,
            )
