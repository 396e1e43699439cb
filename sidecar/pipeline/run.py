"""The request pipeline, in order. Read this file to know what happens to a request.

    identify caller → match route → admit (limits, queue, budgets) → cache lookup
      → dispatch (retries, fallback, breakers, hedging)
      → validate (schema; refined retries, fallback, default) → meter
    … a JSON answer is stored in the cache, then goes out (a stream goes out as it comes) …
    finish: store in the cache (what is left to store), account (cost, saved, spend,
      token-rate corrections) and release what admit took

Each stage is a plain function over the request context, so adding one is one line here.
`finish` runs from the handler's `finally` once the answer has been sent (api/proxy.py),
so every reservation admission makes is settled or released, whatever happened, and the
app never waits on the bookkeeping.
"""

from __future__ import annotations

from sidecar.pipeline.account import finish, meter
from sidecar.pipeline.admit import admit
from sidecar.pipeline.cache import lookup, remember
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.dispatch import dispatch
from sidecar.pipeline.identify import identify
from sidecar.pipeline.route import route
from sidecar.pipeline.validate import enforce, validate
from sidecar.providers.base import Reply

__all__ = ["finish", "run"]


async def run(ctx: RequestContext) -> Reply:
    identify(ctx)
    route(ctx)
    await admit(ctx)
    hit = await lookup(ctx)
    if hit is not None:
        return hit
    enforce(ctx)
    reply = await dispatch(ctx)
    reply = await validate(ctx, reply)
    reply = remember(ctx, reply)
    return meter(ctx, reply)
