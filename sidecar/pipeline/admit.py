"""Stage: admission. Limits first (waiting in line if their queue allows), then budgets.

Everything taken is recorded on the context and given back by `account.finish`, which
the handler runs in a `finally`: every reserve is matched by a settle or a release.

A limit applies per scope value (each user, each team, ...; `values:` narrows it). Its
request and token rates are GCRA allowances of `N` per minute; tokens are charged with the
request's estimated input and corrected with the real total afterwards. A `reject` budget
holds the request's worst-case cost (estimated input at the route's dearest input price,
plus `max_tokens` at its dearest output price) until the answer settles it, so concurrent
requests cannot jointly overspend: spend can exceed the limit only by the gap between the
estimate and the truth of requests in flight. A request without `max_tokens` has no worst
case; its hold assumes what the route's answers really use (the 95th percentile of recent
ones, `stores/answer_sizes.py`), 4096 tokens before the route has answered.
`downgrade` and `alert` budgets never refuse.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from sidecar.errors import BudgetExceeded, RateLimited, StateUnavailable
from sidecar.pipeline.context import RequestContext
from sidecar.policy.model import Budget, Limit, Retry, Target
from sidecar.stores import keys
from sidecar.stores.state import Hold, StoreUnavailable
from sidecar.tokens import estimate_request

log = logging.getLogger("sidecar.admit")

_DEFAULT_MAX_OUTPUT = 4096  # no max_tokens, and the route has not answered yet
_SLOT_POLL = 0.05  # a slot freed by another replica is noticed this fast


def scope_value(ctx: RequestContext, scope: str) -> str:
    if scope == "user":
        return ctx.user or "(none)"
    if scope == "team":
        return ctx.team or "(none)"
    if scope == "route":
        return ctx.route.name if ctx.route else "(none)"
    if scope == "key":
        return ctx.app_key or "(none)"
    if scope == "model":
        return ctx.answered_by.name if ctx.answered_by else "(none)"
    return "*"


async def admit(ctx: RequestContext) -> None:
    route = ctx.route
    assert route is not None
    rules = ctx.snapshot.policy.admission.get(route.name)
    if rules is None:
        return
    ctx.estimate_in = estimate_request(ctx.body)
    try:
        for limit in rules.limits:
            value = scope_value(ctx, limit.scope)
            if limit.values is None or value in limit.values:
                await _pass_limit(ctx, limit, value)
        if rules.budgets:
            await _check_budgets(ctx, rules.budgets)
    except StoreUnavailable as exc:
        if ctx.snapshot.policy.state.on_error == "closed":
            raise StateUnavailable(
                f"state store unavailable ({exc}); refusing (on_error: closed)", retry_after=1.0
            ) from None
        log.error("state store unavailable (%s); admitting anyway (on_error: open)", exc)
    except (RateLimited, BudgetExceeded) as exc:
        ctx.snapshot.telemetry.rejections.add(
            1, {"sidecar.route": route.name, "error.type": exc.code}
        )
        # A refused request does not count against rates: give them back, then the slots.
        rates = [t for t in ctx.taken if t[0] in ("rate", "tokens")]
        ctx.taken = [t for t in ctx.taken if t[0] not in ("rate", "tokens")]
        await _give_back(ctx, rates)
        await release(ctx)
        raise
    except BaseException:
        await release(ctx)
        raise


async def _pass_limit(ctx: RequestContext, limit: Limit, value: str) -> None:
    name = f"{limit.name}:{value}"
    line = ctx.snapshot.stores.lines.get(name)
    if not len(line):
        wait = await _take(ctx, limit, name)
        if wait == 0.0:
            return
        if limit.queue_max_wait <= 0:
            raise _limited(limit, value, wait)
    if len(line) >= limit.queue_max_size:
        raise RateLimited(
            f"limit '{limit.name}' for {limit.scope} '{value}': its queue is full",
            retry_after=1.0,
            code="queue_full",
        )
    ticket = line.join(ctx.priority)
    joined = time.monotonic()
    deadline = joined + limit.queue_max_wait
    telemetry = ctx.snapshot.telemetry
    span_cm = telemetry.span("admission wait", **{"sidecar.limit": limit.name})
    span_cm.__enter__()
    try:
        while True:
            wait = None
            if line.is_head(ticket):
                wait = await _take(ctx, limit, name)
                if wait == 0.0:
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                raise _limited(limit, value, wait)
            ticket.event.clear()
            try:
                async with asyncio.timeout(
                    min(wait or _SLOT_POLL, left) if line.is_head(ticket) else left
                ):
                    await ticket.event.wait()
            except TimeoutError:
                pass
    finally:
        line.leave(ticket)
        telemetry.queue_wait.record(time.monotonic() - joined, {"sidecar.limit": limit.name})
        span_cm.__exit__(None, None, None)


async def _take(ctx: RequestContext, limit: Limit, name: str) -> float | None:
    """Take one request's share of every part of `limit`: 0.0 if all were free, else the
    seconds to wait (None: until a slot frees); what was taken is given back then."""
    state = ctx.snapshot.state
    taken: list[tuple[str, str, float, float]] = []
    try:
        if limit.requests_per_minute:
            key = f"r:{name}"
            wait = await state.take_rate(key, 1.0, limit.requests_per_minute, 60.0)
            if wait:
                return wait
            taken.append(("rate", key, 1.0, limit.requests_per_minute))
        if limit.tokens_per_minute:
            key = f"t:{name}"
            cost = min(float(ctx.estimate_in), limit.tokens_per_minute)
            wait = await state.take_rate(key, cost, limit.tokens_per_minute, 60.0)
            if wait:
                await _give_back(ctx, taken)
                return wait
            taken.append(("tokens", key, cost, limit.tokens_per_minute))
        if limit.max_concurrent:
            key = f"s:{name}"
            lease = uuid.uuid4().hex
            ttl = (ctx.route.timeout if ctx.route else 120.0) + 60.0
            if not await state.acquire_slot(key, limit.max_concurrent, lease, ttl):
                await _give_back(ctx, taken)
                return None
            taken.append(("slot", key, 0.0, 0.0))
            ctx.taken.append(("slot", key, 0.0, 0.0))
            ctx.taken.append(("lease", lease, 0.0, 0.0))
            taken.pop()
    except BaseException:
        await _give_back(ctx, taken)
        raise
    ctx.taken.extend(taken)
    return 0.0


async def _give_back(ctx: RequestContext, taken: list[tuple[str, str, float, float]]) -> None:
    state = ctx.snapshot.state
    for kind, key, amount, limit in taken:
        if kind in ("rate", "tokens"):
            await state.adjust_rate(key, -amount, limit, 60.0)
    taken.clear()


def _limited(limit: Limit, value: str, wait: float | None) -> RateLimited:
    """The refusal; counted once here, whatever path led to it."""
    return RateLimited(
        f"limit '{limit.name}' for {limit.scope} '{value}' is reached", retry_after=wait or 1.0
    )


async def _check_budgets(ctx: RequestContext, budgets: tuple[Budget, ...]) -> None:
    state = ctx.snapshot.state
    now = time.time()
    hard: list[tuple[Budget, str, float]] = []
    for budget in budgets:
        value = scope_value(ctx, budget.scope)
        if budget.values is not None and value not in budget.values:
            continue
        key, end, _ = keys.row(budget.window, budget.scope, value, now)
        ctx.snapshot.telemetry.budgets.seen(budget, value, end, ctx.snapshot.policy.telemetry)
        if budget.on_exceed == "reject":
            hard.append((budget, key, end))
            continue
        spent, held = await state.spent(key)
        if spent + held < budget.limit_usd:
            continue
        ctx.snapshot.telemetry.budget_events.add(
            1, {"sidecar.budget": budget.name, "event": budget.on_exceed}
        )
        if budget.on_exceed == "downgrade" and budget.downgrade_to is not None:
            ctx.downgraded_by = budget.name
            ctx.targets = (
                Target(budget.downgrade_to, ctx.targets[0].retry if ctx.targets else Retry()),
            )
        elif await state.once(f"alerted:{key}:{budget.name}", end - now):
            log.warning(
                "budget %s: %s '%s' spent %.4f of %.4f USD this %s (on_exceed: alert)",
                budget.name,
                budget.scope,
                value,
                spent,
                budget.limit_usd,
                budget.window,
            )
    if not hard:
        return
    output, why = _held_output(ctx)
    amount = _worst_case_cost(ctx, output)
    hold = Hold(uuid.uuid4().hex, tuple(k for _, k, _ in hard), amount, now + _hold_ttl(ctx))
    over = await state.reserve(hold, tuple(b.limit_usd for b, _, _ in hard))
    if over >= 0:
        budget, key, end = hard[over]
        value = scope_value(ctx, budget.scope)
        raise BudgetExceeded(
            f"budget '{budget.name}' for {budget.scope} '{value}' ({budget.limit_usd:g} USD per "
            f"{budget.window}) has no room for this request's hold of {amount:.6g} USD "
            f"({ctx.estimate_in} input tokens estimated, {output} output tokens: {why})",
            retry_after=max(1.0, end - now),
        )
    ctx.hold = hold


def _held_output(ctx: RequestContext) -> tuple[int, str]:
    """The output tokens a hold assumes, and why (for the refusal's message)."""
    body = ctx.body
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(asked, int | float) and asked > 0:
        # The provider stops there: a true worst case (the route's cap, when it set one).
        why = "the route's max_output_tokens" if ctx.output_capped else "its max_tokens"
        return int(asked), why
    assert ctx.route is not None
    high = ctx.snapshot.stores.answer_sizes.high(ctx.route.name)
    if high is not None:
        return high, f"no max_tokens; 95% of route '{ctx.route.name}' answers use no more"
    return _DEFAULT_MAX_OUTPUT, f"no max_tokens, and route '{ctx.route.name}' has no answers yet"


def _worst_case_cost(ctx: RequestContext, output: int) -> float:
    prices = [t.model.price for t in ctx.targets]
    price_in = max((p.input for p in prices), default=0.0)
    price_out = max((p.output for p in prices), default=0.0)
    return (ctx.estimate_in * price_in + output * price_out) / 1e6


def note_output(ctx: RequestContext) -> None:
    """After the answer: its length, for the holds of the route's next requests. Only whole
    answers from upstream count (not a cache hit, not a stream cut short)."""
    if ctx.route is not None and ctx.answers and ctx.finish_reasons:
        ctx.snapshot.stores.answer_sizes.note(ctx.route.name, ctx.output_tokens)


def _hold_ttl(ctx: RequestContext) -> float:
    if ctx.hold_for is not None:  # a line that waits for a provider batch
        return ctx.hold_for
    return (ctx.route.timeout if ctx.route else 120.0) + 60.0


async def release(ctx: RequestContext) -> None:
    """Give back concurrency slots. Rates stay spent (a request that ran counts)."""
    state = ctx.snapshot.state
    lines = ctx.snapshot.stores.lines
    taken, ctx.taken = ctx.taken, []
    lease = ""
    for kind, key, _, _ in reversed(taken):
        if kind == "lease":
            lease = key
        elif kind == "slot":
            try:
                await state.release_slot(key, lease)
            except StoreUnavailable as exc:
                log.error("state store unavailable (%s); slot %s expires on its own", exc, key)
            lines.wake(key[2:])
    ctx.taken = [t for t in taken if t[0] == "tokens"]  # corrected by account, then dropped
