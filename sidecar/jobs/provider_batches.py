"""The submitter: deferred lines to the providers' batch APIs, and their answers back.

It runs beside the workers, in every process that has them, and keeps all its state in
the queue store, so any of them can do any step and a restarted one picks up where a dead
one stopped:

- group: a group of deferred lines (route, model, operation) that holds the route's
  `batch.max_lines`, or whose oldest line waited `batch.max_wait`, is moved into a new
  `Submission` in one store step (no line is ever in two) and submitted;
- submit: the submission is marked as attempted before the provider is called, then gets
  the provider's batch id. A call cut off (a timeout, a dropped connection, a process
  killed mid-call) leaves it in doubt: the next attempt first asks the provider whether
  it has it (`BatchApi.find`), so a line is never submitted twice. A 429 or 5xx waits
  (Retry-After first) and tries again; a refusal sends the lines down their path;
- poll: every `jobs.batch_poll`, doubling while nothing changes up to `batch_poll_max`
  (a 429's Retry-After is waited out); a cancel asked for is passed on;
- land: an ended batch's results go to jobs/land.py.

A submission is leased while a process works on it (the job queue's visibility timeout);
a process that dies leaves it to the next one when the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sidecar.errors import CLIENT, CONNECT, PROTOCOL, TIMEOUT, UpstreamError
from sidecar.jobs.land import Landing
from sidecar.jobs.lines import DONE, PENDING, SUBMITTING, Group, Line, Submission
from sidecar.jobs.model import new_id, new_lease
from sidecar.jobs.queue import JobQueue
from sidecar.jobs.webhooks import Webhooks
from sidecar.policy.model import BatchPolicy, JobsConfig
from sidecar.providers.batches import BatchApi, BatchState
from sidecar.runtime import Runtime, Snapshot
from sidecar.stores.state import StoreUnavailable

log = logging.getLogger("sidecar.jobs.batches")

TURNS = 4  # submissions worked on at once by this process
IN_DOUBT = frozenset({CONNECT, TIMEOUT, PROTOCOL})  # the provider may have created it
NOW = BatchPolicy(max_wait=0.0)  # a group whose route lost its `batch:` goes at once


def pause(config: JobsConfig, polls: int, retry_after: float | None = None) -> float:
    wait = min(config.batch_poll_max, config.batch_poll * 2 ** min(polls, 20))
    return max(wait, retry_after or 0.0)


class ProviderBatches:
    def __init__(self, holder: Runtime, queue: JobQueue, webhooks: Webhooks) -> None:
        self.holder = holder
        self.queue = queue
        self.webhooks = webhooks
        self._turns: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="provider-batches")

    async def stop(self) -> None:
        """Turns in flight are cancelled: their leases run out and another process (or
        this one, restarted) takes over; nothing is lost."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        for task in self._turns:
            task.cancel()
        await asyncio.gather(*self._turns, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            snapshot = self.holder.current
            config = snapshot.policy.jobs if snapshot is not None else None
            tick = 1.0
            if snapshot is not None and config is not None:
                tick = min(1.0, config.poll_interval * 4)
                try:
                    await self.tick(snapshot, config)
                except StoreUnavailable as exc:
                    log.error("provider batches: the queue failed (%s); retrying", exc)
                except Exception:
                    log.exception("provider batches: a tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), tick)

    async def tick(self, snapshot: Snapshot, config: JobsConfig) -> None:
        now = time.time()
        groups = await self.queue.deferred_groups()
        await self._measure(snapshot, groups)
        for group in groups:
            route_name, model_name, operation = group.parts
            route = snapshot.policy.routes.get(route_name)
            policy = route.batch if route is not None and route.batch is not None else NOW
            if group.count < policy.max_lines and now - group.oldest < policy.max_wait:
                continue
            if len(self._turns) >= TURNS:
                break
            model = snapshot.policy.models.get(model_name)
            submission = Submission(
                id=new_id("subm_"),
                route=route_name,
                model=model_name,
                provider=model.provider if model is not None else "",
                operation=operation,
                lease=new_lease(),
            )
            lease_for = config.visibility_timeout
            lines = await self.queue.open_submission(submission, policy.max_lines, lease_for)
            if lines:
                submission.provider = lines[0].provider
                self._start(self._submit(submission, lines))
        while len(self._turns) < TURNS:
            claimed = await self.queue.claim_submission(new_lease(), config.visibility_timeout)
            if claimed is None:
                break
            self._start(self._turn(claimed))

    def _start(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._turns.add(task)
        task.add_done_callback(self._turns.discard)

    async def _measure(self, snapshot: Snapshot, groups: list[Group]) -> None:
        """The gauges: lines deferred and submitted, and how long the oldest has waited."""
        open_ = await self.queue.open_submissions()
        snapshot.telemetry.batch_lines.update(
            deferred=(sum(g.count for g in groups), min((g.oldest for g in groups), default=None)),
            submitted=(
                sum(s.lines for s in open_),
                min((s.submitted_at or s.created_at for s in open_), default=None),
            ),
        )

    # -- one submission's turn ------------------------------------------------------------

    def _config(self) -> tuple[Snapshot, JobsConfig] | None:
        snapshot = self.holder.current
        if snapshot is None or snapshot.policy.jobs is None:
            return None
        return snapshot, snapshot.policy.jobs

    async def _turn(self, submission: Submission) -> None:
        try:
            if submission.status == SUBMITTING:
                await self._submit(submission, None)
            else:
                await self._poll(submission)
        except StoreUnavailable as exc:
            log.error("submission %s: the queue failed (%s); later", submission.id, exc)
        except Exception:
            log.exception("submission %s: its turn failed; later", submission.id)

    def _api(self, snapshot: Snapshot, submission: Submission) -> BatchApi | None:
        api = getattr(snapshot.providers.get(submission.provider), "batches", None)
        return api if api is not None and submission.operation in api.operations else None

    async def _save(self, submission: Submission, config: JobsConfig, due: float | None) -> bool:
        saved = await self.queue.save_submission(submission, due, config.visibility_timeout)
        if not saved:
            log.warning("submission %s: its lease was taken over; leaving it", submission.id)
        return saved

    async def _submit(self, submission: Submission, lines: list[Line] | None) -> None:
        found = self._config()
        if found is None:
            return
        snapshot, config = found
        api = self._api(snapshot, submission)
        if lines is None:
            lines = [line for line, _ in await self.queue.submission_lines(submission.id)]
        if api is None or not lines:
            why = f"provider '{submission.provider}' has no batch API for {submission.operation}"
            await self._end(snapshot, config, submission, None, None, why if lines else "")
            return
        submission.lines = max(submission.lines, len(lines))
        if submission.attempted_at is not None:  # a call that may have made it: look first
            try:
                made = await api.find(submission.id, submission.attempted_at, len(lines))
            except UpstreamError as exc:
                await self._later(submission, config, exc)
                return
            if made is not None:
                await self._submitted(submission, config, made)
                return
        submission.attempted_at = time.time()
        if not await self._save(submission, config, None):
            return
        try:
            made = await api.submit(
                submission.id,
                submission.operation,
                [(line.job_id, line.payload.encode()) for line in lines],
            )
        except UpstreamError as exc:
            if exc.kind == CLIENT:  # refused outright: nothing was created
                reason = f"the provider refused the batch ({exc.message})"
                await self._end(snapshot, config, submission, api, None, reason)
                return
            if exc.kind not in IN_DOUBT:  # 429, 5xx, overloaded: it was not created
                submission.attempted_at = None
            await self._later(submission, config, exc)
            return
        await self._submitted(submission, config, made)

    async def _submitted(self, submission: Submission, config: JobsConfig, made: str) -> None:
        submission.provider_batch_id, submission.status = made, PENDING
        submission.submitted_at, submission.polls, submission.last_error = time.time(), 0, None
        log.info(
            "submission %s: %d line(s) in %s batch %s",
            submission.id,
            submission.lines,
            submission.provider,
            made,
        )
        await self._save(submission, config, time.time() + config.batch_poll)

    async def _later(self, submission: Submission, config: JobsConfig, exc: UpstreamError) -> None:
        submission.last_error = exc.message
        submission.polls += 1
        log.warning("submission %s: %s; trying again later", submission.id, exc.message)
        await self._save(
            submission, config, time.time() + pause(config, submission.polls, exc.retry_after)
        )

    async def _poll(self, submission: Submission) -> None:
        found = self._config()
        if found is None:
            return
        snapshot, config = found
        api = self._api(snapshot, submission)
        if api is None or submission.provider_batch_id is None:
            why = f"provider '{submission.provider}' has no batch API any more"
            await self._end(snapshot, config, submission, None, None, why)
            return
        batch_id = submission.provider_batch_id
        try:
            state = await api.poll(batch_id)
            if submission.cancel and not submission.cancel_sent and not state.ended:
                await api.cancel(batch_id)
                submission.cancel_sent = True
                log.info("submission %s: asked %s to cancel it", submission.id, batch_id)
        except UpstreamError as exc:
            await self._later(submission, config, exc)
            return
        moved = (state.status, state.counts) != (submission.provider_status, submission.counts)
        submission.provider_status, submission.counts = state.status, state.counts
        submission.last_error = None
        if not state.ended:
            submission.polls = 0 if moved else submission.polls + 1
            await self._save(submission, config, time.time() + pause(config, submission.polls))
            return
        await self._end(snapshot, config, submission, api, state, state.reason or "")

    async def _end(
        self,
        snapshot: Snapshot,
        config: JobsConfig,
        submission: Submission,
        api: BatchApi | None,
        state: BatchState | None,
        reason: str,
    ) -> None:
        """Land what the provider answered and send the rest down their path."""
        results = []
        if api is not None and state is not None and submission.provider_batch_id is not None:
            try:
                results = await api.results(submission.provider_batch_id, state)
            except UpstreamError as exc:
                await self._later(submission, config, exc)
                return
        missing = reason or f"missing from the results of {submission.provider_batch_id}"
        landing = Landing(
            snapshot, self.queue, self.webhooks, config, submission, api, state, missing
        )
        outcomes = await landing.land(results, lambda: self._save(submission, config, None))
        if outcomes is None:
            return  # its new holder lands the rest
        for outcome, n in outcomes.items():
            snapshot.telemetry.batch_finished.add(
                n, {"sidecar.provider": submission.provider, "outcome": outcome}
            )
        submission.status, submission.finished_at = DONE, time.time()
        submission.reason = reason or None
        await self._save(submission, config, time.time())
        log.info("submission %s: ended (%s)", submission.id, dict(outcomes) or "no lines")
