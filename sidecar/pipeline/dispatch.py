"""Stage: send the request to the route's targets until one answers.

Each request has one deadline (the route's `timeout`); every attempt gets what is left of
it, capped by its provider's `timeout` (or, for a stream's first event, the route's
`first_token_timeout`). Per target: a failure whose class is in `retry.on` is retried after
a backoff, or after the provider's `Retry-After` when that fits the deadline; any failover
class then moves on to the next target. A 4xx that is the request's own fault goes back to
the client at once. A target whose circuit is open is skipped without a network call.

A stream counts as answered once its first event has arrived, so a stream that fails
before then falls over without the client noticing. With `hedge`, a target that has not
answered by `hedge.after` gets company: the next target starts too, the first answer wins
and the others are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from opentelemetry.trace import SpanKind

from sidecar.errors import (
    BREAKER_KINDS,
    BUSY,
    CIRCUIT_OPEN,
    CLIENT,
    PROTOCOL,
    TIMEOUT,
    FailedAttempt,
    TargetsExhausted,
    UpstreamError,
    UpstreamRejected,
)
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.ledger import HEDGE
from sidecar.pipeline.meter import charge_unused
from sidecar.policy.model import ProviderConfig, Target
from sidecar.providers.base import Call, Events, Provider, Reply
from sidecar.telemetry.attempt import answered, server
from sidecar.telemetry.recorder import OPERATION, fail

log = logging.getLogger("sidecar.dispatch")


class _TargetFailed(Exception):
    """This target is done for this request; the failures are in the context."""


async def dispatch(ctx: RequestContext) -> Reply:
    route = ctx.route
    assert route is not None
    if route.hedge is not None and len(ctx.targets) > 1:
        return await _hedged(ctx)
    for target in ctx.targets:
        try:
            reply = await _try_target(ctx, target)
        except _TargetFailed:
            continue
        ctx.answered_by = target.model
        return reply
    raise TargetsExhausted(route.name, ctx.failures)


async def _try_target(ctx: RequestContext, target: Target) -> Reply:
    """Up to `retry.attempts` calls to one target; its reply, or _TargetFailed."""
    model = target.model
    circuit = model.circuit
    breaker = ctx.snapshot.stores.breakers.get(model.name) if circuit is not None else None
    provider = ctx.snapshot.providers[model.provider]
    config = ctx.snapshot.policy.providers[model.provider]
    route = ctx.route
    assert route is not None
    first_wait = route.first_token_timeout if ctx.stream and route.first_token_timeout else None
    retry = target.retry
    for attempt in range(1, retry.attempts + 1):
        now = time.monotonic()
        left = ctx.deadline - now
        if left <= 0:
            _fail(ctx, target, UpstreamError(TIMEOUT, "the route's timeout ran out"))
            raise _TargetFailed
        if breaker is not None and not breaker.allow(circuit, now):  # type: ignore[arg-type]
            _fail(ctx, target, UpstreamError(CIRCUIT_OPEN, "circuit open, skipped"))
            raise _TargetFailed
        budget = min(left, first_wait or config.timeout)
        ctx.attempts += 1
        failed: bool | None = None
        try:
            reply = await _attempt(ctx, target, provider, budget, config)
            failed = False
            return reply
        except UpstreamError as error:
            if error.kind == CLIENT:
                failed = False  # the provider is fine; the request is not
                raise UpstreamRejected(
                    error.status or 400,
                    error.raw_body,
                    f"{model.name}@{model.provider} refused the request ({error.message})",
                ) from None
            failed = error.kind in BREAKER_KINDS or None
            if error.kind == BUSY:
                ctx.attempts -= 1  # skipped at our own door: no call went out
            _fail(ctx, target, error)
            if attempt == retry.attempts or error.kind not in retry.on:
                raise _TargetFailed from None
            pause = retry.pause(attempt, random.random())
            if error.retry_after is not None:
                pause = max(pause, error.retry_after)
            if time.monotonic() + pause >= ctx.deadline:
                raise _TargetFailed from None  # waiting would miss the deadline: move on
            await asyncio.sleep(pause)
        finally:
            if breaker is not None:
                breaker.record(circuit, failed, time.monotonic())  # type: ignore[arg-type]
    raise _TargetFailed


async def _attempt(
    ctx: RequestContext, target: Target, provider: Provider, budget: float, config: ProviderConfig
) -> Reply:
    """One upstream call, in its own client span; every failure as an UpstreamError."""
    model = target.model
    telemetry = ctx.snapshot.telemetry
    with telemetry.span(
        f"{OPERATION.get(ctx.operation, ctx.operation)} {model.upstream}",
        SpanKind.CLIENT,
        end_on_exit=False,  # `answered` ends it once the answer is in; failures below
        **{
            "gen_ai.operation.name": OPERATION.get(ctx.operation, ctx.operation),
            "gen_ai.provider.name": config.type,
            "gen_ai.request.model": model.upstream,
            **server(config.base_url),
            "sidecar.provider": model.provider,
            "sidecar.model": model.name,
            "sidecar.attempt": ctx.attempts,
        },
    ) as span:
        called_at = time.monotonic()
        reply: Reply | None = None
        answered_ok = False
        try:
            async with asyncio.timeout(budget):
                call = Call(
                    ctx.operation,
                    ctx.body,
                    model.upstream,
                    ctx.stream,
                    ctx.native,
                    target.prompt_cache,
                )
                if model.embeddings is None:
                    reply = await provider.send(call)
                else:  # merged with concurrent calls for the same model
                    reply = await ctx.snapshot.stores.micro_batches.send(
                        provider, call, model.embeddings
                    )
                if reply.events is not None:
                    await _first_event(reply)
            answered_ok = True
        except (UpstreamError, TimeoutError) as exc:
            if reply is not None:
                await reply.aclose()
            error = (
                exc
                if isinstance(exc, UpstreamError)
                else UpstreamError(TIMEOUT, f"no answer within {budget:.3g}s")
            )
            fail(span, error.kind)
            if error.status is not None and span is not None:
                span.set_attribute("http.response.status_code", error.status)
            telemetry.attempts.add(1, {"sidecar.model": model.name, "outcome": error.kind})
            raise error from None
        finally:
            if span is not None and not answered_ok:  # failed, or cancelled (a lost hedge)
                span.end()
        assert reply is not None
        telemetry.attempts.add(1, {"sidecar.model": model.name, "outcome": "ok"})
        return answered(span, reply, called_at)


def _fail(ctx: RequestContext, target: Target, error: UpstreamError) -> None:
    model = target.model
    ctx.failures.append(FailedAttempt(model.name, model.provider, error))
    if error.kind != CIRCUIT_OPEN:
        route = ctx.route.name if ctx.route else "?"
        log.warning("route %s: %s@%s failed (%s)", route, model.name, model.provider, error.message)


async def _hedged(ctx: RequestContext) -> Reply:
    """Race targets: the next one starts when the running ones are slower than
    `hedge.after` (up to `hedge.max` extra), or at once when one fails."""
    route = ctx.route
    assert route is not None
    assert route.hedge is not None
    waiting = list(ctx.targets)
    running: set[asyncio.Task[Reply]] = set()
    racing: dict[asyncio.Task[Reply], Target] = {}
    extra = 0

    def launch() -> None:
        target = waiting.pop(0)
        task = asyncio.create_task(_try_target(ctx, target))
        running.add(task)
        racing[task] = target

    launch()
    try:
        while running:
            can_hedge = bool(waiting) and extra < route.hedge.max
            done, _ = await asyncio.wait(
                running,
                timeout=route.hedge.after if can_hedge else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:  # slow: start the next target beside the running ones
                extra += 1
                launch()
                continue
            for task in done:
                running.discard(task)
                try:
                    reply = task.result()
                except _TargetFailed:
                    if not running and waiting:
                        launch()
                    continue
                await _abandon(running, racing, ctx)
                ctx.answered_by = racing[task].model
                return reply
    finally:
        await _abandon(running, racing, None)
    raise TargetsExhausted(route.name, ctx.failures)


async def _abandon(
    tasks: set[asyncio.Task[Reply]],
    racing: dict[asyncio.Task[Reply], Target],
    won: RequestContext | None,
) -> None:
    """Cancel the losers of a race; close any answer that arrived anyway. When the race
    was `won`, each loser was a call in flight paid for against the hedge lever (a race
    nobody won, as when the app went away, charges nothing, like any cancelled call)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        model = racing[task].model
        try:
            reply = await task
        except asyncio.CancelledError:
            if won is not None:
                charge_unused(won, model, None, HEDGE)
            continue
        except (_TargetFailed, UpstreamRejected):
            continue
        if won is not None:
            charge_unused(won, model, reply.body if reply.events is None else None, HEDGE)
        await reply.aclose()
    tasks.clear()


async def _first_event(reply: Reply) -> None:
    """Wait for the stream's first events, and put them back in front of the rest."""
    assert reply.events is not None
    rest = reply.events
    try:
        first = await anext(rest)
    except StopAsyncIteration:
        raise UpstreamError(PROTOCOL, "stream ended before its first event") from None
    reply.events = _prepend(first, rest)


async def _prepend(first: list[bytes], rest: Events) -> Events:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
