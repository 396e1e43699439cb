"""A provider batch's results, landed: each line's answer goes through the rest of the
pipeline as its own request would (validate, cache, meter at the batch price, account: its
budget hold settled, its token estimates corrected), and its job gets the outcome, its
webhook and, for the last line of a batch of ours, the batch's output files.

A line's outcome is written only while its job is still `submitted` (`JobQueue.land`), and
only the writer accounts it: a result landed twice (a poller taken over mid-way) counts
once. A line the provider refused (a 4xx) fails with the provider's error, unbilled; a
line it did not run (expired, cancelled, failed, errored on its side) goes down the
route's `unfinished:` path: resubmitted (at most `MAX_SUBMISSIONS` provider batches in
all), run as a call (`x-sidecar-batch: sync`), or failed with the provider's reason. Lines
of a batch of ours being cancelled are cancelled; lines the sidecar itself had the
provider cancel for another batch's sake are resubmitted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.errors import SidecarError, UpstreamError
from sidecar.jobs.execute import job_context
from sidecar.jobs.lines import Line, Submission, release_line
from sidecar.jobs.model import CANCELLED, DEAD, FAILED, SUBMITTED, SUCCEEDED, Job
from sidecar.jobs.queue import JobQueue
from sidecar.jobs.webhooks import Webhooks
from sidecar.jobs.worker import RETRYABLE, ended, ending
from sidecar.pipeline.enforce import enforce
from sidecar.pipeline.identify import identify
from sidecar.pipeline.ledger import charge
from sidecar.pipeline.route import route
from sidecar.pipeline.run import finish, resume
from sidecar.policy.model import JobsConfig
from sidecar.providers.base import Call, Reply
from sidecar.providers.batches import BatchApi, BatchState, LineResult
from sidecar.runtime import Snapshot
from sidecar.stores.state import StoreUnavailable
from sidecar.telemetry.request import observe
from sidecar.tokens import estimate_request

log = logging.getLogger("sidecar.jobs")

MAX_SUBMISSIONS = 3  # provider batches a line may go into under `unfinished: resubmit`
RENEW_EVERY = 100  # lines landed between renewals of the submission's lease
BATCH_HEADER = "x-sidecar-batch"


@dataclass
class Landing:
    """One submission's results, being landed."""

    snapshot: Snapshot
    queue: JobQueue
    webhooks: Webhooks
    config: JobsConfig
    submission: Submission
    api: BatchApi | None
    state: BatchState | None  # None: the provider never took the lines
    reason: str  # why lines without a result were not run
    outcomes: Counter[str] = field(default_factory=Counter)
    _cancelled: dict[str, bool] = field(default_factory=dict)

    async def land(
        self, results: list[LineResult], renew: Callable[[], Awaitable[bool]]
    ) -> Counter[str] | None:
        """Every line's outcome; None when the submission's lease was lost meanwhile (its
        new holder lands the rest)."""
        by_id = {r.custom_id: r for r in results}
        refused = dict(self.state.line_errors) if self.state is not None else {}
        for n, (line, job) in enumerate(await self.queue.submission_lines(self.submission.id)):
            if n and n % RENEW_EVERY == 0 and not await renew():
                return None
            result = by_id.get(line.job_id)
            try:
                outcome = await self._one(line, job, result, refused.get(line.position))
            except StoreUnavailable:
                raise
            except Exception:  # a bug of ours: the line runs as a call rather than stay stuck
                log.exception("job %s: landing its provider batch answer failed", job.id)
                headers = {**job.headers, BATCH_HEADER: "sync"}
                outcome = "sync"
                if await self.queue.return_line(job.id, "landing failed", headers):
                    await release_line(self.snapshot.state, line)
            self.outcomes[outcome] += 1
        return self.outcomes

    async def _one(
        self, line: Line, job: Job, result: LineResult | None, refusal: str | None
    ) -> str:
        if result is not None and result.status == 200 and result.body is not None:
            return await self._answered(line, job, result.body)
        if result is not None and result.status is not None and _refused(result.status):
            return await self._refused(line, job, result.status, result.error or {})
        if refusal is not None:
            error = {"message": refusal, "type": "invalid_request_error", "code": "invalid_line"}
            return await self._refused(line, job, 400, error)
        if result is None:
            reason = self.reason
        elif result.reason is not None:
            reason = result.reason
        else:
            reason = str((result.error or {}).get("message") or f"HTTP {result.status}")
        return await self._unfinished(line, job, reason)

    async def _answered(self, line: Line, job: Job, raw: bytes) -> str:
        snapshot = self.snapshot
        ctx = job_context(snapshot, line.operation, job.request, job.headers, job.app_key)
        status, error = 200, None
        try:
            identify(ctx)
            route(ctx)
        except SidecarError as exc:  # the policy changed meanwhile: its model is gone
            return await self._refused(line, job, exc.status, orjson.loads(exc.body())["error"])
        model = snapshot.policy.models.get(line.model)
        ctx.attempts, ctx.answered_by, ctx.batched = 1, model, True
        ctx.hold, ctx.estimate_in = line.held(), estimate_request(job.request)
        ctx.taken = [("tokens", key, float(n), float(limit)) for key, n, limit in line.tokens or ()]
        if line.cache_key is not None and ctx.route is not None and ctx.route.cache is not None:
            ctx.cache, ctx.cache_key = "miss", line.cache_key
        for name, tokens_in, tokens_out, cached, written, purpose in line.spent or ():
            paid = snapshot.policy.models.get(name)  # before it was deferred: its lookup
            if paid is not None:
                charge(ctx, paid, tokens_in, tokens_out, cached, written, purpose=purpose)
        enforce(ctx)
        try:
            assert self.api is not None
            upstream = model.upstream if model is not None else line.model
            call = Call(line.operation, ctx.body, upstream, False, ctx.native)
            reply = await resume(ctx, Reply(body=self.api.answer(raw, call)))
            job.result = orjson.loads(reply.body)
            ending(job, SUCCEEDED, 200, None)
        except UpstreamError as exc:  # an answer we cannot read: as if it never came
            return await self._unfinished(line, job, f"its answer was unreadable ({exc.message})")
        except SidecarError as exc:  # validation refused it, or its retries failed
            status, error = exc.status, exc.code
            outcome = DEAD if exc.status in RETRYABLE else FAILED
            ending(job, outcome, exc.status, orjson.loads(exc.body())["error"])
        job.response_headers = {
            **ctx.response_headers(),
            BATCH_HEADER: self.submission.provider_batch_id or "",
        }
        if not await self.queue.land(job, SUBMITTED):
            return "landed elsewhere"  # its books are the other lander's
        try:
            await asyncio.shield(finish(ctx).done)
        finally:
            observe(ctx, None, status, error)
        await ended(self.queue, self.webhooks, job, self.config)
        return job.status

    async def _refused(self, line: Line, job: Job, status: int, error: dict[str, Any]) -> str:
        ending(job, FAILED, status, error)
        return await self._close(line, job, "refused")

    async def _unfinished(self, line: Line, job: Job, reason: str) -> str:
        if await self._batch_cancelled(job.batch_id):
            message = f"the batch was cancelled ({reason})"
            ending(job, CANCELLED, None, {"message": message, "code": "batch_cancelled"})
            return await self._close(line, job, "cancelled")
        found = self.snapshot.policy.routes.get(line.route)
        path = found.batch.unfinished if found is not None and found.batch else "sync"
        ours = self.submission.cancel_sent  # cancelled for another batch: not its fault
        if ours or (path == "resubmit" and line.submissions < MAX_SUBMISSIONS):
            await self.queue.return_line(job.id, reason)
            return "resubmitted"
        if path == "sync":
            headers = {**job.headers, BATCH_HEADER: "sync"}
            if await self.queue.return_line(job.id, reason, headers):
                await release_line(self.snapshot.state, line)
            return "sync"
        message = f"not answered through the provider's batch: {reason}"
        error = {"message": message, "type": "server_error", "code": "provider_batch_unfinished"}
        ending(job, FAILED, None, error)
        return await self._close(line, job, "failed")

    async def _close(self, line: Line, job: Job, outcome: str) -> str:
        """Write an outcome that used nothing: the line's hold goes back."""
        if not await self.queue.land(job, SUBMITTED):
            return "landed elsewhere"
        await release_line(self.snapshot.state, line)
        await ended(self.queue, self.webhooks, job, self.config)
        return outcome

    async def _batch_cancelled(self, batch_id: str | None) -> bool:
        if batch_id is None:
            return False
        if batch_id not in self._cancelled:
            batch = await self.queue.get_batch(batch_id)
            status = (batch or {}).get("status")
            self._cancelled[batch_id] = status in ("cancelling", "cancelled")
        return self._cancelled[batch_id]


def _refused(status: int) -> bool:
    """The request's own fault: the provider would refuse it again."""
    return 400 <= status < 500 and status not in RETRYABLE
