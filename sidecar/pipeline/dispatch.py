"""Stage: send the request to the route's targets, in order, until one answers.

Each request has one deadline (the route's `timeout`); every attempt gets what is left of
it, capped by its provider's `timeout`. A connection error, a timeout, a 5xx, a 429 or a
provider refusing our credentials moves on (after `retry.attempts` tries of one target);
any other 4xx is the request's own fault and goes back to the client at once. A stream
counts as answered only once its first event has arrived, so a stream that fails before
then falls over to the next target without the client seeing anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from sidecar.errors import (
    CLIENT,
    PROTOCOL,
    TIMEOUT,
    FailedAttempt,
    TargetsExhausted,
    UpstreamError,
    UpstreamRejected,
)
from sidecar.pipeline.context import RequestContext
from sidecar.providers.base import Call, Reply

log = logging.getLogger("sidecar.dispatch")


async def dispatch(ctx: RequestContext) -> Reply:
    route = ctx.route
    assert route is not None
    policy = ctx.snapshot.policy
    deadline = ctx.deadline
    for target in route.targets:
        provider = ctx.snapshot.providers[target.provider]
        provider_timeout = policy.providers[target.provider].timeout
        for attempt in range(route.retry.attempts):
            if attempt:
                pause = route.retry.backoff * 2 ** (attempt - 1)
                if time.monotonic() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TargetsExhausted(route.name, ctx.failures, " before the route's timeout")
            budget = min(left, provider_timeout)
            ctx.attempts += 1
            call = Call(ctx.operation, ctx.body, target.upstream, ctx.stream)
            reply: Reply | None = None
            try:
                async with asyncio.timeout(budget):
                    reply = await provider.send(call)
                    if reply.events is not None:
                        await _first_event(reply)
            except (UpstreamError, TimeoutError) as exc:
                if reply is not None:
                    await reply.aclose()
                error = (
                    exc
                    if isinstance(exc, UpstreamError)
                    else UpstreamError(TIMEOUT, f"no answer within {budget:.3g}s")
                )
                if error.kind == CLIENT:
                    raise UpstreamRejected(
                        error.status or 400,
                        error.raw_body,
                        f"{target.name}@{target.provider} refused the request ({error.message})",
                    ) from None
                ctx.failures.append(FailedAttempt(target.name, target.provider, error))
                log.warning(
                    "route %s: %s@%s failed (%s)",
                    route.name,
                    target.name,
                    target.provider,
                    error.message,
                )
                continue
            ctx.answered_by = target
            return reply
    raise TargetsExhausted(route.name, ctx.failures)


async def _first_event(reply: Reply) -> None:
    """Wait for the stream's first event, and put it back in front of the rest."""
    assert reply.events is not None
    rest = reply.events
    try:
        first = await anext(rest)
    except StopAsyncIteration:
        raise UpstreamError(PROTOCOL, "stream ended before its first event") from None
    reply.events = _prepend(first, rest)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
