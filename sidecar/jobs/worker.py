"""Workers: claim a job, run it through the pipeline, settle it — and nothing twice.
(A job on a route with `batch:` may instead be deferred for a provider batch: jobs/defer.py.)

Each worker is one task looping claim → execute → settle. While a job runs, its lease is
renewed every third of the visibility timeout; if a renewal is refused (the worker was
presumed dead and the job taken over), the run is abandoned and its result never
written. Outcomes:

    2xx                      → succeeded
    429, 5xx (retryable)     → queued again after backoff; dead after max_attempts
    other 4xx                → failed (the request itself is wrong: retrying won't help)

Graceful stop: no new claims; jobs in flight get `grace` seconds, then are cancelled and
released back to the queue with their attempt given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from typing import Any

import orjson

from sidecar.jobs import batches
from sidecar.jobs.defer import ProviderDeferral
from sidecar.jobs.execute import OPERATIONS, Outcome, execute
from sidecar.jobs.model import DEAD, FAILED, SUCCEEDED, Job
from sidecar.jobs.queue import JobQueue
from sidecar.jobs.webhooks import Webhooks
from sidecar.policy.model import JobsConfig
from sidecar.runtime import Runtime
from sidecar.stores.state import StoreUnavailable

log = logging.getLogger("sidecar.jobs")

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 300.0


def process_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _error(message: str, code: str) -> dict[str, Any]:
    return {"message": message, "type": "server_error", "code": code}


def _error_of(body: bytes) -> dict[str, Any]:
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    return error if isinstance(error, dict) else _error("the request failed", "request_failed")


def backoff(config: JobsConfig, attempts: int, retry_after: float | None) -> float:
    pause = min(MAX_BACKOFF, config.retry_backoff * 2 ** max(0, attempts - 1))
    pause *= 0.5 + random.random() / 2  # spread retries of a failed burst
    return max(pause, retry_after or 0.0)


def ending(job: Job, status: str, code: int | None, error: dict[str, Any] | None) -> None:
    """Fill in a job's outcome, before the write that makes it final."""
    job.status, job.status_code, job.error = status, code, error
    job.finished_at = time.time()
    if job.callback_url is not None:
        job.webhook = {"status": "pending", "attempts": 0, "last_status": None}


async def ended(queue: JobQueue, webhooks: Webhooks, job: Job, config: JobsConfig) -> None:
    """After a job's outcome was written: its webhook, and its batch's output once it is
    the last line to finish."""
    if job.status != SUCCEEDED:
        log.info("job %s: %s (%s)", job.id, job.status, (job.error or {}).get("code"))
    if job.callback_url is not None:
        webhooks.send(job, config)
    if job.batch_id is not None and not await queue.batch_unfinished(job.batch_id):
        await batches.current(queue, job.batch_id)  # the last job finalizes


class Workers:
    def __init__(self, holder: Runtime, queue: JobQueue, webhooks: Webhooks, count: int) -> None:
        self.holder = holder
        self.queue = queue
        self.webhooks = webhooks
        self.count = count
        self.name = process_name()
        self._stopping = asyncio.Event()
        self._stop_waiter: asyncio.Task[Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._stop_waiter = asyncio.create_task(self._stopping.wait())
        self._tasks = [
            asyncio.create_task(self._loop(f"{self.name}-{n}"), name=f"jobs-worker-{n}")
            for n in range(self.count)
        ]

    def _config(self) -> JobsConfig | None:
        snapshot = self.holder.current
        return snapshot.policy.jobs if snapshot is not None else None

    async def _pause(self, seconds: float, wake: asyncio.Future[Any] | None = None) -> None:
        assert self._stop_waiter is not None
        waits: set[asyncio.Future[Any]] = {self._stop_waiter}
        if wake is not None:
            waits.add(wake)
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        if wake is not None:
            wake.cancel()  # no-op when done; awaiting collects its outcome either way
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                await wake

    async def _loop(self, worker: str) -> None:
        while not self._stopping.is_set():
            config = self._config()
            if config is None:
                await self._pause(1.0)
                continue
            try:
                job = await self.queue.claim(worker, config.visibility_timeout)
            except StoreUnavailable as exc:
                log.error("jobs: cannot claim (%s); retrying", exc)
                await self._pause(1.0)
                continue
            if job is None:
                wake = asyncio.ensure_future(self.queue.wait(config.poll_interval))
                await self._pause(config.poll_interval * 4, wake)
                continue
            try:
                await self._run(job, config)
            except StoreUnavailable as exc:
                log.error("job %s: the queue failed (%s); it will be taken back later", job.id, exc)
            except Exception:  # a bug must not end the worker; the lease runs out instead
                log.exception("job %s: the worker failed; it will be taken back later", job.id)

    async def _run(self, job: Job, config: JobsConfig) -> None:
        snapshot = self.holder.current
        if job.attempts > config.max_attempts:
            message = f"its worker stopped before finishing it {job.attempts - 1} times"
            await self._settle(job, DEAD, None, _error(message, "worker_lost"), config)
            return
        if job.deadline is not None and time.time() > job.deadline:
            message = "the job did not start before its deadline"
            await self._settle(job, FAILED, None, _error(message, "deadline_exceeded"), config)
            return
        if snapshot is None or job.endpoint not in OPERATIONS:
            message = f"endpoint {job.endpoint} cannot run"
            await self._settle(job, FAILED, None, _error(message, "invalid_endpoint"), config)
            return
        deferral = ProviderDeferral(self.queue, job)  # on routes with `batch:`
        task = asyncio.create_task(
            execute(
                snapshot,
                OPERATIONS[job.endpoint],
                job.request,
                job.headers,
                job.app_key,
                job.id,
                deferral,
            )
        )
        try:
            outcome = await self._supervise(job, task, config)
        except asyncio.CancelledError:  # graceful stop ran out of time: back to the queue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(StoreUnavailable):
                await self.queue.release(job)
                log.info("job %s: returned to the queue at shutdown", job.id)
            raise
        if outcome is not None and not outcome.deferred:  # deferred: the line's now
            await self._record(job, outcome, config)

    async def _supervise(
        self, job: Job, task: asyncio.Task[Outcome], config: JobsConfig
    ) -> Outcome | None:
        """The outcome, renewing the lease meanwhile; None when the lease was lost."""
        while True:
            done, _ = await asyncio.wait({task}, timeout=config.visibility_timeout / 3)
            if done:
                try:
                    return task.result()
                except Exception:
                    log.exception("job %s: the pipeline raised", job.id)
                    body = orjson.dumps({"error": _error("internal error", "internal_error")})
                    return Outcome(500, body)
            try:
                renewed = await self.queue.renew(job, config.visibility_timeout)
            except StoreUnavailable as exc:
                log.error("job %s: cannot renew its lease (%s)", job.id, exc)
                continue
            if not renewed:
                log.warning("job %s: lease lost to another worker; abandoning this run", job.id)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                return None

    async def _record(self, job: Job, outcome: Outcome, config: JobsConfig) -> None:
        job.response_headers = outcome.headers
        if outcome.ok:
            try:
                result = orjson.loads(outcome.body)
            except orjson.JSONDecodeError:
                result = outcome.body.decode(errors="replace")
            job.result = result
            await self._settle(job, SUCCEEDED, outcome.status, None, config)
            return
        error = _error_of(outcome.body)
        if outcome.status in RETRYABLE and job.attempts < config.max_attempts:
            job.status_code, job.error = outcome.status, error
            delay = backoff(config, job.attempts, outcome.retry_after)
            if await self.queue.retry(job, delay):
                log.info(
                    "job %s: attempt %d got %d; retrying in %.2fs",
                    job.id,
                    job.attempts,
                    outcome.status,
                    delay,
                )
            return
        status = DEAD if outcome.status in RETRYABLE else FAILED
        await self._settle(job, status, outcome.status, error, config)

    async def _settle(
        self,
        job: Job,
        status: str,
        code: int | None,
        error: dict[str, Any] | None,
        config: JobsConfig,
    ) -> None:
        ending(job, status, code, error)
        if not await self.queue.settle(job):
            log.warning("job %s: lease lost before its result was written; discarded", job.id)
            return
        await ended(self.queue, self.webhooks, job, config)

    async def stop(self, grace: float) -> None:
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._stop_waiter is not None:
            await self._stop_waiter
