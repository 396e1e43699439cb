"""`llm-sidecar worker`: a process that only runs jobs, for dedicated worker deployments.

It loads and watches the same policy folder as the sidecars and works the same queue
(`jobs.backend: redis` for workers in other pods; a shared SQLite file works for processes
on one host). No proxy listener: only the ops port, for the kubelet's probes. SIGTERM
stops claiming, gives jobs in flight `grace` seconds, and returns the rest to the queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.gc_tuning import tune_after_start
from sidecar.jobs.runtime import JobsRuntime
from sidecar.policy.watcher import watch
from sidecar.runtime import Runtime
from sidecar.telemetry.recorder import Telemetry

log = logging.getLogger("sidecar.jobs")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    policies: Path
    state_dir: Path = Path(".")
    workers: int | None = None  # default: the policy's jobs.workers
    ops_host: str = "0.0.0.0"
    ops_port: int = 8481  # 0: no ops listener
    ops_idle_timeout: float = 5.0
    ops_max_connections: int = 64
    grace: float = 30.0


async def run_worker(settings: WorkerSettings) -> None:
    from sidecar.app import SETTLE_GRACE, ops_app  # the server stack, when needed
    from sidecar.listeners import ConnectionLimits, listen, serve

    telemetry = Telemetry(os.environ)
    holder = Runtime(settings.policies, None, settings.state_dir, telemetry)
    await holder.reload()
    snapshot = holder.current
    if snapshot is not None and snapshot.policy.jobs is None:
        log.warning("the policy has no `jobs:` section: nothing to work on until it does")
    jobs = JobsRuntime(holder, settings.state_dir, settings.workers)
    await jobs.start()
    stop_watching = asyncio.Event()
    watcher = asyncio.create_task(watch(holder.policy, stop_watching))
    lifecycle: dict[str, Any] = {"draining": False}
    runner: web.AppRunner | None = None
    if settings.ops_port:
        sock = listen(settings.ops_host, settings.ops_port)
        limits = ConnectionLimits(settings.ops_idle_timeout, settings.ops_max_connections)
        runner = await serve(ops_app(holder, lifecycle, ""), sock, limits, 1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker running, policies from %s", settings.policies)
    tune_after_start()
    await stop.wait()
    log.info("signal received: finishing jobs for up to %.0fs", settings.grace)
    lifecycle["draining"] = True
    await jobs.stop(settings.grace)
    await holder.stores.settlements.drain(SETTLE_GRACE)  # the books of the last jobs
    stop_watching.set()
    await watcher
    if runner is not None:
        await runner.cleanup()
    await holder.close()
    await asyncio.to_thread(telemetry.shutdown)
    log.info("stopped")
