"""The request pipeline, in order. Read this file to know what happens to a request.

    identify caller → match route → prepare (normalise, trim to the input budget, cap the
      output) → admit (limits, queue, budgets) → cache lookup
      → select (the route's tier: rules, classifier, sticky conversations)
      → enforce (ask providers for schema-shaped output)
      → escalate: dispatch (retries, fallback, breakers, hedging) to the tier, and up the
        route's tiers while a cascade's checks reject the answer
      → validate (schema; refined retries, fallback, default) → meter
      → sample (a route's shadow trial: keep this answer to compare with a candidate's)
    … a JSON answer is stored in the cache, then goes out (a stream goes out as it comes) …
    finish: release what admit took, store in the cache (what is left to store) — the
      answer's last byte waits for these two — then note the answer for the app's
      feedback, account (usage, spend, holds, token-rate corrections), then, detached,
      verify a sampled semantic cache hit
    … after the answer's last byte: a sampled request's shadow calls (shadow/trial.py)

A job line that may wait for a provider batch (jobs/defer.py) comes with a `Deferral`: it
runs the stages up to dispatch, then is handed over instead of dispatched (`Deferred`);
when its provider batch answers, `resume` runs the stages after dispatch on its answer.

Each stage is a plain function over the request context, so adding one is one line here.
`finish` runs from the handler's `finally` (api/proxy.py, jobs/execute.py) whatever
happened, so every reservation admission makes is settled or released; it runs in a task
the handler's cancellation cannot reach (a client that disconnects cancels its handler),
so an answer that was produced is always accounted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from sidecar.errors import SidecarError
from sidecar.pipeline import verify
from sidecar.pipeline.account import record
from sidecar.pipeline.admit import admit, note_output, release
from sidecar.pipeline.cache import land, lookup, remember, store
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.enforce import enforce
from sidecar.pipeline.escalate import escalate
from sidecar.pipeline.identify import identify
from sidecar.pipeline.meter import meter
from sidecar.pipeline.prepare import prepare
from sidecar.pipeline.recent import index_answer
from sidecar.pipeline.route import route
from sidecar.pipeline.select import select
from sidecar.pipeline.validate import validate
from sidecar.providers.base import Reply
from sidecar.shadow.sample import sample

__all__ = ["Deferral", "Deferred", "Ending", "finish", "resume", "run"]


class Deferral(Protocol):
    """A job line that may wait for a provider batch instead of being dispatched."""

    def plan(self, ctx: RequestContext) -> bool:
        """After routing: will it wait (then its budget hold must last as long)?"""
        ...

    async def hand_over(self, ctx: RequestContext) -> None:
        """Before dispatch: store it for its provider batch and raise `Deferred`, or
        return (no target can take it now) to have it dispatched."""
        ...


class Deferred(Exception):  # an outcome, not an error
    """The line waits for a provider batch; its answer comes back through `resume`."""


async def run(ctx: RequestContext, deferral: Deferral | None = None) -> Reply:
    identify(ctx)
    route(ctx)
    if deferral is not None and not deferral.plan(ctx):
        deferral = None
    prepare(ctx)
    await admit(ctx)
    hit = await lookup(ctx)
    if hit is not None:
        return hit
    try:
        await select(ctx)
        enforce(ctx)
        if deferral is not None:
            await deferral.hand_over(ctx)  # to the chosen tier's targets
        reply = await escalate(ctx)
    except SidecarError as exc:
        land(ctx, exc)  # identical requests waiting on this one's answer share its failure
        raise
    return await resume(ctx, reply)


async def resume(ctx: RequestContext, reply: Reply) -> Reply:
    """The stages after dispatch, on an answer: a dispatched one, or a deferred line's from
    its provider batch (jobs/land.py rebuilt its context: route, hold, cache key, model)."""
    try:
        reply = await validate(ctx, reply)
    except SidecarError as exc:
        land(ctx, exc)
        raise
    reply = remember(ctx, reply)
    return sample(ctx, meter(ctx, reply))


@dataclass(frozen=True, slots=True)
class Ending:
    """A request's settling, under way. Await either through `asyncio.shield`."""

    freed: asyncio.Future[None]  # slots given back, the answer cached: it may go out now
    done: asyncio.Task[None]  # and the books written


def finish(ctx: RequestContext) -> Ending:
    note_output(ctx)  # how long the route's answers are, for the next budget holds
    freed = asyncio.get_running_loop().create_future()
    return Ending(freed, ctx.snapshot.stores.settlements.start(_settle(ctx, freed)))


async def _settle(ctx: RequestContext, freed: asyncio.Future[None]) -> None:
    """One task, so the books follow at once: with an in-process store they are written
    before the answer goes out; with a remote one, while it goes out."""
    try:
        try:
            await release(ctx)  # first: a slot never waits on a cache or usage write
        finally:
            await store(ctx)  # which also wakes the requests waiting on this one's answer
    finally:
        freed.set_result(None)
    await index_answer(ctx)  # for the app's feedback: first, it may come at once
    await record(ctx)
    verify.start(ctx)  # a sampled semantic hit, checked against the upstream, detached
