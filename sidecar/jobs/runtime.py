"""This process's side of the jobs system: the queue it opened and the workers it runs.

It follows the policy's `jobs:` section as reloads change it (checked every second): a
new backend opens a new queue, a new worker count restarts the workers (their jobs go
back to the queue first); other settings apply from the next job on. Without a `jobs:`
section nothing is opened and the jobs API answers 404. It also sweeps for webhooks
left `pending` by a process that stopped before delivering them, and deletes finished jobs
older than `jobs.retention`, so the queue's file or Redis memory does not grow for ever.
Where workers run, so does the submitter of provider batches (jobs/provider_batches.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from sidecar.jobs.backends import open_queue
from sidecar.jobs.provider_batches import ProviderBatches
from sidecar.jobs.queue import JobQueue
from sidecar.jobs.webhooks import Webhooks
from sidecar.jobs.worker import Workers
from sidecar.policy.model import JobsConfig
from sidecar.runtime import Runtime
from sidecar.stores.state import StoreUnavailable

log = logging.getLogger("sidecar.jobs")

FOLLOW_EVERY = 1.0
SWEEP_EVERY = 30.0
STALE_WEBHOOK = 120.0  # pending this long without a try: its sender is gone
PURGE_BATCH = 500  # jobs deleted per store call; a sweep makes at most PURGE_ROUNDS calls
PURGE_ROUNDS = 20


class JobsRuntime:
    def __init__(self, holder: Runtime, state_dir: Path, workers: int | None = None) -> None:
        self.holder = holder
        self.state_dir = state_dir
        self.workers_override = workers  # `llm-sidecar worker --workers N`
        self.config: JobsConfig | None = None
        self.queue: JobQueue | None = None
        self.webhooks: Webhooks | None = None
        self.workers: Workers | None = None
        self.submitter: ProviderBatches | None = None  # provider batches, beside the workers
        self._follower: asyncio.Task[None] | None = None
        self._swept = float("-inf")  # the first tick sweeps
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.reconcile()
        self._follower = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_EVERY)
            try:
                await self.reconcile()
                if time.monotonic() - self._swept > SWEEP_EVERY:
                    await self.sweep_webhooks()
                    await self.purge_finished()
            except Exception:
                log.exception("jobs: following the policy failed")

    def _count(self, config: JobsConfig | None) -> int:
        if config is None:
            return 0
        return config.workers if self.workers_override is None else self.workers_override

    async def reconcile(self) -> None:
        async with self._lock:
            snapshot = self.holder.current
            config = snapshot.policy.jobs if snapshot is not None else None
            old = self.config
            if config == old and (config is None or self.queue is not None):
                return
            moved = (config and config.queue_key) != (old and old.queue_key)
            if self.workers is not None and (moved or self._count(config) != self.workers.count):
                await self._stop_workers(grace=5.0)
            if moved or self.queue is None:
                await self._close_queue()
                if config is not None:
                    try:
                        self.queue = await open_queue(config, self.state_dir)
                    except StoreUnavailable as exc:
                        log.error("jobs: cannot open the queue (%s); will retry", exc)
                        return  # self.config stays old: the next tick tries again
                    self.webhooks = Webhooks(self.queue)
                    log.info("jobs: %s queue open", config.backend)
            self.config = config
            count = self._count(config)
            if self.workers is None and self.queue is not None and self.webhooks and count:
                self.workers = Workers(self.holder, self.queue, self.webhooks, count)
                self.workers.start()
                self.submitter = ProviderBatches(self.holder, self.queue, self.webhooks)
                self.submitter.start()
                log.info("jobs: %d worker(s) running", count)

    async def _stop_workers(self, grace: float) -> None:
        if self.submitter is not None:
            await self.submitter.stop()
            self.submitter = None
        if self.workers is not None:
            await self.workers.stop(grace)
            self.workers = None

    async def sweep_webhooks(self) -> None:
        self._swept = time.monotonic()
        if self.queue is None or self.webhooks is None or self.config is None:
            return
        try:
            stale = await self.queue.take_webhooks(time.time() - STALE_WEBHOOK, 100)
        except StoreUnavailable as exc:
            log.error("jobs: webhook sweep failed (%s)", exc)
            return
        for job in stale:
            self.webhooks.send(job, self.config)

    async def purge_finished(self) -> int:
        """Delete what finished more than `retention` ago, in bounded steps: every process
        sweeps, and a backlog (a retention just shortened) is worked off over a few sweeps
        instead of in one long transaction that would hold up claims."""
        queue, config = self.queue, self.config
        if queue is None or config is None or config.retention <= 0:
            return 0
        purged = 0
        try:
            for _ in range(PURGE_ROUNDS):
                done = await queue.purge_finished(time.time() - config.retention, PURGE_BATCH)
                purged += done
                if done < PURGE_BATCH:
                    break
        except StoreUnavailable as exc:
            log.error("jobs: purging finished jobs failed (%s)", exc)
        if purged:
            log.info("jobs: deleted %d job(s) finished over %gs ago", purged, config.retention)
        return purged

    async def _close_queue(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.close(grace=2.0)
            self.webhooks = None
        if self.queue is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.queue.close()
            self.queue = None

    async def stop_workers(self, grace: float) -> None:
        """No more claims; jobs in flight get `grace`, the rest go back to the queue."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        async with self._lock:
            await self._stop_workers(grace)

    async def close(self) -> None:
        """Webhooks in flight get a moment, then the queue closes (after the API stopped)."""
        async with self._lock:
            await self._close_queue()

    async def stop(self, grace: float) -> None:
        await self.stop_workers(grace)
        await self.close()
