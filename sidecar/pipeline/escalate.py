"""Stage: dispatch to the tier `select` chose, and climb the route's ladder when a verified
cascade rejects the answer.

A tier's targets are a fallback chain as a route's are (dispatch: retries, breakers,
hedging). A tier whose answers a cascade checks (`cascade:` on the route or the tier; the
top tier is never checked: there is nothing above it) has its answer read whole and judged
(pipeline/accept.py). An accepted answer goes on to validation as if it had come straight
from upstream; a rejected one is never shown: it is charged (the ledger counts it against
the `escalation` lever) and the next tier up is asked. A tier whose targets all fail
hands over to the next tier up too, so a tier that is down costs quality, not an outage.

Streams: a checked tier's stream is buffered and relayed, once accepted, as a normal
stream. The app's first token then waits for the cheap tier's whole answer (and, after an
escalation, for the next tier's first token): time to first token becomes time to the
cheap answer. `stream: passthrough` relays a checked tier's stream as it comes, unchecked:
no escalation once tokens have been sent.
"""

from __future__ import annotations

import logging

from sidecar.errors import FailedAttempt, TargetsExhausted, UpstreamError
from sidecar.pipeline.accept import CHECKS, deliver, judge, read
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.dispatch import dispatch
from sidecar.pipeline.ledger import ESCALATION, retag
from sidecar.pipeline.meter import charge_answer, charge_events
from sidecar.policy.model import Selection
from sidecar.providers.base import Reply
from sidecar.stores.state import StoreUnavailable

log = logging.getLogger("sidecar.select")


async def escalate(ctx: RequestContext) -> Reply:
    route = ctx.route
    assert route is not None
    chosen = route.select
    if chosen is None or ctx.tier_rank < 0:
        return await dispatch(ctx)
    first = rank = ctx.tier_rank
    top = len(chosen.tiers) - 1
    while True:
        tier = chosen.tiers[rank]
        accept = tier.accept if rank < top else None
        if accept is not None and ctx.stream and accept.stream == "passthrough":
            accept = None
        ctx.targets, ctx.tier, ctx.tier_rank = tier.targets, tier.name, rank
        asked = ctx.body
        ours = accept is not None and accept.min_logprob is not None and not asked.get("logprobs")
        if ours:
            ctx.body = {**asked, "logprobs": True}  # a new dict: the app's body is never changed
        try:
            reply = await dispatch(ctx)
        except TargetsExhausted:
            if rank == top:
                raise
            rank += 1
            continue
        finally:
            ctx.body = asked
        if accept is None:
            await _stuck(ctx, chosen, first)
            return reply
        try:
            judgement = judge(ctx, accept, await read(reply))
        except UpstreamError as exc:  # a stream that broke off before its end: the next tier
            _fail(ctx, tier.name, exc)
            rank += 1
            continue
        _count_checks(ctx, judgement.results)
        failed = judgement.failed
        telemetry = ctx.snapshot.telemetry
        outcome = {"sidecar.route": route.name, "sidecar.tier": tier.name}
        if failed is None:
            telemetry.cascade_answers.add(1, {**outcome, "outcome": "accepted"})
            await _stuck(ctx, chosen, first)
            return deliver(reply, judgement, strip=ours)
        telemetry.cascade_answers.add(1, {**outcome, "outcome": "escalated"})
        spent = len(ctx.spend)
        if judgement.buffered is None:
            charge_answer(ctx, reply.body)
        else:
            charge_events(ctx, judgement.buffered)
        for spend in ctx.spend[spent:]:
            retag(spend, ESCALATION)
            telemetry.escalation_cost.add(spend.cost, outcome)
        ctx.escalations += 1
        ctx.rejected.append(f"{tier.name}:{failed}")
        log.info(
            "route %s: tier %s's answer failed the %s check; asking tier %s",
            route.name,
            tier.name,
            failed,
            chosen.tiers[rank + 1].name,
        )
        rank += 1


def _fail(ctx: RequestContext, tier: str, error: UpstreamError) -> None:
    model = ctx.answered_by
    if model is not None:
        ctx.failures.append(FailedAttempt(model.name, model.provider, error))
    ctx.rejected.append(f"{tier}:incomplete")
    log.warning("route %s: tier %s's stream broke off (%s)", ctx.route.name, tier, error.message)  # type: ignore[union-attr]


def _count_checks(ctx: RequestContext, results: dict[str, str]) -> None:
    attrs = {"sidecar.route": ctx.route.name if ctx.route else "(none)", "sidecar.tier": ctx.tier}
    for check in CHECKS:
        result = results.get(check)
        if result is not None:
            ctx.snapshot.telemetry.cascade_checks.add(
                1, {**attrs, "sidecar.check": check, "result": result}
            )


async def _stuck(ctx: RequestContext, chosen: Selection, first: int) -> None:
    """A conversation that climbed to a higher tier stays there (`sticky`)."""
    if chosen.sticky is None or ctx.conversation is None or ctx.tier_rank <= first:
        return
    try:
        await ctx.snapshot.state.stick(ctx.conversation, ctx.tier_rank, chosen.sticky)
    except StoreUnavailable as exc:
        log.error("state store unavailable (%s): the conversation's tier is not kept", exc)
