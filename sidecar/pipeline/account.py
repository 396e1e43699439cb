"""The books, once a request has ended: its usage rows, its budget hold turned into spend,
its token-rate estimates corrected, budget warnings. Runs last in `run.finish`, after
admission's slots are back and the answer is cached, in a task no client can cancel.
"""

from __future__ import annotations

import functools
import logging
import time

from sidecar.pipeline.admit import scope_value
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.ledger import usage
from sidecar.stores import keys
from sidecar.stores.state import StoreUnavailable, Usage

log = logging.getLogger("sidecar.account")

USAGE_SCOPES = ("global", "user", "team", "route", "model", "key")


async def record(ctx: RequestContext) -> None:
    """Record the request's usage and settle its hold. Never raises: the answer has been
    given; a store that is down costs a log line, not the request."""
    snapshot = ctx.snapshot
    state = snapshot.state
    try:
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
        rows = usage_rows(int(now), tuple(scope_value(ctx, scope) for scope in USAGE_SCOPES))
        await state.settle(ctx.hold, tuple(rows), usage(ctx))
        ctx.hold = None
        await _warn(ctx, now)
    except StoreUnavailable as exc:
        log.error("state store unavailable (%s): this request's usage is not recorded", exc)
    except Exception:
        log.exception("accounting failed")


async def record_extra(ctx: RequestContext) -> None:
    """Calls made for a request after its books were written (a semantic hit checked
    against the upstream, pipeline/verify.py), from a context of their own: their tokens,
    cost and (negative) ledger saving go to the request's usage rows, but the request is
    not counted again. Never raises."""
    if not ctx.spend:
        return
    try:
        row = usage(ctx)
        row.requests = 0
        values = tuple(scope_value(ctx, scope) for scope in USAGE_SCOPES)
        await ctx.snapshot.state.settle(None, usage_rows(int(time.time()), values), row)
    except StoreUnavailable as exc:
        log.error("state store unavailable (%s): a verification's cost is not recorded", exc)


@functools.lru_cache(maxsize=1024)
def usage_rows(second: int, values: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
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
