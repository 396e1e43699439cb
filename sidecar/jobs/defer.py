"""A job line held for a provider batch: the worker's side of `batch: provider`.

A worker runs a claimed job through the pipeline with a `ProviderDeferral`. After routing,
the route's `batch:` policy and the request's `x-sidecar-batch` header say whether it may
wait; then it is admitted as any request (its budget hold made to last until the batch
can have answered), looked up in the cache (a hit is answered at once), and, instead of
being dispatched, stored as a `Line` in its group (route, model, operation) with what
admission took and its request in its provider's own format. The job is `deferred`: no
worker holds it. jobs/provider_batches.py submits the group; jobs/land.py brings the
answer back through the rest of the pipeline.

A line runs as a call instead when no target can take it: no target's provider has a
batch API for its operation (or its circuit is open), or its request cannot be translated.
"""

from __future__ import annotations

import logging
import time

from sidecar.errors import UpstreamError
from sidecar.jobs.lines import Line
from sidecar.jobs.model import Job
from sidecar.jobs.queue import JobQueue
from sidecar.pipeline.cache import land
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.run import Deferred
from sidecar.policy.model import Target
from sidecar.providers.base import Call
from sidecar.providers.batches import BatchApi

log = logging.getLogger("sidecar.jobs")

HEADER = "x-sidecar-batch"  # provider: ask for a provider batch; sync: run as a call
WINDOW = 24 * 3600.0  # what the providers take, at most, to finish a batch
SLACK = 3600.0  # polling, resubmission: a hold outlives the batch by this much


class ProviderDeferral:
    def __init__(self, queue: JobQueue, job: Job) -> None:
        self.queue = queue
        self.job = job

    def plan(self, ctx: RequestContext) -> bool:
        policy = ctx.route.batch if ctx.route else None
        if policy is None:
            return False
        asked = (ctx.headers.get(HEADER) or "").lower()
        if asked == "sync" or (policy.mode == "allowed" and asked != "provider"):
            return False
        if _target(ctx) is None:
            return False
        ctx.hold_for = policy.max_wait + WINDOW + SLACK
        return True

    async def hand_over(self, ctx: RequestContext) -> None:
        found = _target(ctx)  # again: a downgrading budget may have changed the targets
        if found is None:
            return
        target, api = found
        model = target.model
        call = Call(ctx.operation, ctx.body, model.upstream, False, ctx.native)
        try:
            payload = api.payload(call)
        except UpstreamError:
            return  # the call will say what is wrong with it
        assert ctx.route is not None
        hold = ctx.hold
        line = Line(
            job_id=self.job.id,
            route=ctx.route.name,
            model=model.name,
            provider=model.provider,
            operation=ctx.operation,
            payload=payload.decode(),
            batch_id=self.job.batch_id,
            hold=None if hold is None else [hold.id, list(hold.keys), hold.amount, hold.expires_at],
            tokens=[[key, n, limit] for kind, key, n, limit in ctx.taken if kind == "tokens"]
            or None,
            cache_key=ctx.cache_key if ctx.cache == "miss" else None,
            spent=[
                [s.model.name, s.input_tokens, s.output_tokens, s.cached, s.written, s.purpose]
                for s in ctx.spend
            ]
            or None,
        )
        if not await self.queue.defer(self.job, line):
            log.warning("job %s: lease lost before it was deferred; abandoned", self.job.id)
            raise Deferred  # its hold and rates are freed by `finish`: the line is not ours
        # The line keeps what admission took until its answer lands; only slots go back now.
        ctx.hold = None
        ctx.taken = [t for t in ctx.taken if t[0] != "tokens"]
        land(ctx, None)  # identical requests waiting on it ask for themselves
        log.debug("job %s: deferred for a provider batch of %s", self.job.id, model.name)
        raise Deferred


def _target(ctx: RequestContext) -> tuple[Target, BatchApi] | None:
    """The first target whose provider batches this operation and whose circuit is closed."""
    breakers = ctx.snapshot.stores.breakers
    for target in ctx.targets:
        api = getattr(ctx.snapshot.providers.get(target.model.provider), "batches", None)
        if api is None or ctx.operation not in api.operations:
            continue
        if target.model.circuit is not None:
            state = breakers.get(target.model.name).seen_at(time.monotonic())
            if state == "open":
                continue
        return target, api
    return None
