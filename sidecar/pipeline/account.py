"""Stages after the answer: meter the tokens it used, price them, settle what admission
took. `meter` runs as the answer leaves (for a stream, as its events pass); `finish`
runs once the client has it all, or the request failed, from the handler's `finally`.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import orjson

from sidecar.pipeline.admit import release, scope_value
from sidecar.pipeline.cache import store
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.pricing import cost_usd
from sidecar.providers.base import Events, Reply
from sidecar.stores import keys
from sidecar.stores.state import StoreUnavailable, Usage
from sidecar.tokens import count_text, estimate_request

log = logging.getLogger("sidecar.account")

USAGE_SCOPES = ("global", "user", "team", "route", "model", "key")


def meter(ctx: RequestContext, reply: Reply) -> Reply:
    """Charge a JSON answer now; wrap a stream so its usage chunk is read as it passes
    (and dropped, when only the sidecar asked for it)."""
    if reply.events is not None:
        reply.events = _metered(ctx, reply.events)
    else:
        charge_answer(ctx, reply.body)
    return reply


def charge_answer(ctx: RequestContext, body: bytes) -> None:
    """Add one JSON answer's tokens and cost to the request (validation retries call this
    for each answer they discard, so every answer paid for is accounted)."""
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
            False,
        )


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
    _charge(ctx, ctx.estimate_in or estimate_request(ctx.body), chunks, 0, False)


def _finish_reasons(answer: Any) -> list[str]:
    try:
        return [str(c["finish_reason"]) for c in answer["choices"] if c.get("finish_reason")]
    except (KeyError, TypeError, AttributeError):
        return []


def _charge_usage(ctx: RequestContext, usage: dict[str, Any]) -> None:
    details = usage.get("prompt_tokens_details") or {}
    _charge(
        ctx,
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
        True,
    )


def _charge(
    ctx: RequestContext, input_tokens: int, output_tokens: int, cached: int, known: bool
) -> None:
    first = ctx.answers == 0
    ctx.answers += 1
    ctx.input_tokens += input_tokens
    ctx.output_tokens += output_tokens
    ctx.cached_tokens += cached
    ctx.usage_known = known if first else (ctx.usage_known and known)
    model = ctx.answered_by
    if model is not None:
        cost = cost_usd(model.price, input_tokens, output_tokens, cached)
        ctx.cost_usd = cost if ctx.cost_usd is None else ctx.cost_usd + cost


def _answer_text(answer: Any) -> str:
    try:
        return "".join(str(c["message"].get("content") or "") for c in answer["choices"])
    except (KeyError, TypeError, AttributeError):
        return ""


async def _metered(ctx: RequestContext, events: Events) -> Events:
    wants_usage = bool((ctx.client_body.get("stream_options") or {}).get("include_usage"))
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
                elif event.startswith(b"data: {"):
                    chunks += 1
                    if b'"finish_reason":"' in event:
                        ctx.finish_reasons += _finish_reasons(orjson.loads(event[6:]))
                out.append(event)
            if out:
                yield out
    finally:
        if usage is not None:
            _charge_usage(ctx, usage)
        else:
            _charge(ctx, ctx.estimate_in or estimate_request(ctx.body), chunks, 0, False)


async def finish(ctx: RequestContext) -> None:
    """Settle everything admission took and record the request's usage. Never raises:
    the answer has been given; a store that is down costs a log line, not the request."""
    snapshot = ctx.snapshot
    state = snapshot.state
    try:
        await store(ctx)
        await release(ctx)
        total = ctx.input_tokens + ctx.output_tokens
        for kind, key, charged, limit in ctx.taken:
            if kind == "tokens" and total != charged:
                await state.adjust_rate(key, total - charged, limit, 60.0)
        ctx.taken = []
        if ctx.route is None or (ctx.attempts == 0 and ctx.cache not in ("hit", "semantic-hit")):
            # Refused before any upstream call: nothing was used; only free its hold.
            if ctx.hold is not None:
                await state.settle(ctx.hold, (), Usage(0))
                ctx.hold = None
            return
        now = time.time()
        rows = _rows(int(now), tuple(scope_value(ctx, scope) for scope in USAGE_SCOPES))
        usage = Usage(
            1,
            ctx.input_tokens,
            ctx.output_tokens,
            ctx.cached_tokens,
            ctx.cost_usd or 0.0,
            ctx.saved_usd,
        )
        await state.settle(ctx.hold, tuple(rows), usage)
        ctx.hold = None
        await _warn(ctx, now)
    except StoreUnavailable as exc:
        log.error("state store unavailable (%s): this request's usage is not recorded", exc)
    except Exception:
        log.exception("accounting failed")


@functools.lru_cache(maxsize=1024)
def _rows(second: int, values: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """Every usage row a request adds to: 6 scopes x 5 windows. Pure, so cached: requests
    from the same caller in the same second share the work."""
    return tuple(
        (key, expires)
        for scope, value in zip(USAGE_SCOPES, values, strict=True)
        for window in keys.WINDOWS
        for key, _, expires in (keys.row(window, scope, value, float(second)),)
    )


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
