"""The running sidecar: two listeners, the runtime (policy in force and what it runs on), the
watcher, and shutdown order.

The proxy listens on loopback (only the pod's own app may reach it); the ops listener
serves health and status on all interfaces for the kubelet, so it takes fewer connections
at once and closes idle ones sooner (sidecar/listeners.py). On stop: readiness turns
false, the listeners close, requests in flight (streams too) get `drain_timeout` to finish,
the accounting of answered requests gets `SETTLE_GRACE`, shadow calls still running
`SHADOW_GRACE` (none starts once stopping began), then stores and provider connections
close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.api import anthropic as anthropic_api
from sidecar.api import batches as batches_api
from sidecar.api import feedback as feedback_api
from sidecar.api import jobs as jobs_api
from sidecar.api import openai as openai_api
from sidecar.api import ops
from sidecar.api import shadow as shadow_api
from sidecar.api import usage as usage_api
from sidecar.api.guard import last_resort
from sidecar.api.keys import HOLDER, JOBS, LIFECYCLE, LIMITS, USAGE_TOKEN, BodyLimits
from sidecar.gc_tuning import tune_after_start
from sidecar.jobs.runtime import JobsRuntime
from sidecar.listeners import ConnectionLimits, listen, serve
from sidecar.policy.watcher import watch
from sidecar.runtime import Runtime
from sidecar.telemetry.recorder import Telemetry

log = logging.getLogger("sidecar")

SETTLE_GRACE = 10.0  # at shutdown: for answered requests to record usage (a few store calls)
SHADOW_GRACE = 1.0  # at shutdown: for shadow calls still running; then they are cancelled


@dataclass(frozen=True, slots=True)
class Settings:
    policies: Path
    host: str = "127.0.0.1"
    port: int = 8480
    ops_host: str = "0.0.0.0"
    ops_port: int = 8481
    drain_timeout: float = 30.0
    max_body: int = 32 * 1024 * 1024  # images in requests are far above aiohttp's 1 MiB
    # Connections that never finish a request (sidecar/listeners.py, api/body.py):
    idle_timeout: float = 30.0  # keep-alive idle, and the deadline for a request's header
    body_timeout: float = 30.0  # from a request's header to the end of its body
    ops_idle_timeout: float = 5.0
    ops_max_connections: int = 64  # the ops port listens on all interfaces
    state_dir: Path = Path(".")  # where a sqlite state file with a relative path lives
    usage_token: str = ""  # bearer token for /usage on the ops port; "" leaves it open
    watch: bool = True


def proxy_app(
    holder: Runtime, lifecycle: dict[str, Any], limits: BodyLimits, jobs: JobsRuntime
) -> web.Application:
    app = web.Application(client_max_size=limits.max_bytes, middlewares=[last_resort])
    app[HOLDER] = holder
    app[LIMITS] = limits
    app[LIFECYCLE] = lifecycle
    app[JOBS] = jobs
    app.router.add_post("/v1/chat/completions", openai_api.chat_completions)
    app.router.add_post("/v1/embeddings", openai_api.embeddings)
    app.router.add_get("/v1/models", openai_api.models)
    app.router.add_post("/v1/messages", anthropic_api.messages)
    app.router.add_post("/v1/feedback", feedback_api.feedback)
    add_jobs_routes(app)
    app.router.add_route("*", "/{tail:.*}", openai_api.unknown_endpoint)
    return app


def add_jobs_routes(app: web.Application) -> None:
    """Async jobs and OpenAI's Files and Batch API (sidecar/jobs)."""
    app.router.add_post("/v1/jobs", jobs_api.submit)
    app.router.add_get("/v1/jobs", jobs_api.listing)
    app.router.add_get("/v1/jobs/{job_id}", jobs_api.get)
    app.router.add_post("/v1/files", batches_api.upload)
    app.router.add_get("/v1/files/{file_id}", batches_api.file_info)
    app.router.add_delete("/v1/files/{file_id}", batches_api.delete_file)
    app.router.add_get("/v1/files/{file_id}/content", batches_api.file_content)
    app.router.add_post("/v1/batches", batches_api.create)
    app.router.add_get("/v1/batches", batches_api.listing)
    app.router.add_get("/v1/batches/{batch_id}", batches_api.retrieve)
    app.router.add_post("/v1/batches/{batch_id}/cancel", batches_api.cancel)


def ops_app(holder: Runtime, lifecycle: dict[str, Any], usage_token: str) -> web.Application:
    app = web.Application(middlewares=[last_resort])
    app[HOLDER] = holder
    app[USAGE_TOKEN] = usage_token
    app[LIFECYCLE] = lifecycle
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/status", ops.status)
    app.router.add_get("/usage", usage_api.usage)
    app.router.add_get("/stats", ops.stats)
    app.router.add_get("/metrics", ops.metrics)
    app.router.add_post("/cache/purge", usage_api.purge_cache)
    app.router.add_get("/shadow", shadow_api.shadow)
    return app


class Sidecar:
    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.telemetry = Telemetry(os.environ if env is None else env)
        self.holder = Runtime(settings.policies, env, settings.state_dir, self.telemetry)
        self.jobs = JobsRuntime(self.holder, settings.state_dir)
        self.lifecycle: dict[str, Any] = {"draining": False}
        self._runners: list[web.AppRunner] = []
        self._ports: list[int] = []
        self._stop_watching = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def ops_port(self) -> int:
        return self._ports[1]

    async def start(self) -> None:
        s = self.settings
        await self.holder.reload()
        await self.jobs.start()
        proxy = proxy_app(
            self.holder, self.lifecycle, BodyLimits(s.max_body, s.body_timeout), self.jobs
        )
        ops = ops_app(self.holder, self.lifecycle, s.usage_token)
        ops_limits = ConnectionLimits(s.ops_idle_timeout, s.ops_max_connections)
        for app, host, port, limits, drain in (
            (proxy, s.host, s.port, ConnectionLimits(s.idle_timeout), s.drain_timeout),
            (ops, s.ops_host, s.ops_port, ops_limits, 1.0),
        ):
            sock = listen(host, port)
            self._ports.append(int(sock.getsockname()[1]))
            self._runners.append(await serve(app, sock, limits, drain))
        if s.watch:
            self._watcher = asyncio.create_task(watch(self.holder.policy, self._stop_watching))
            await asyncio.sleep(0)  # the watcher's first step sets up the watch; then one
            await self.holder.reload()  # more read catches what changed before it did
        self._gauges = asyncio.create_task(self._refresh_budget_gauges())
        log.info(
            "listening on http://%s:%d (ops on %s:%d), policies from %s",
            s.host,
            self.port,
            s.ops_host,
            self.ops_port,
            s.policies,
        )

    async def stop(self) -> None:
        self.lifecycle["draining"] = True
        self.holder.stores.shadows.closed = True  # answers still going out start no trials
        self._stop_watching.set()
        proxy, ops_runner = self._runners
        # Jobs in flight get the drain time too, alongside requests; then back to the queue.
        jobs = asyncio.create_task(self.jobs.stop_workers(self.settings.drain_timeout))
        await proxy.cleanup()  # stops accepting, then waits for requests in flight
        await ops_runner.cleanup()
        await jobs
        # The books of the last answers, before the stores they are written to close.
        await self.holder.stores.settlements.drain(SETTLE_GRACE)
        await self.holder.stores.shadows.drain(SHADOW_GRACE)
        await self.jobs.close()
        if self._watcher is not None:
            await self._watcher
        if self._gauges is not None:
            self._gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauges
        await self.holder.close()
        await asyncio.to_thread(self.telemetry.shutdown)  # flushes spans and metrics
        log.info("stopped")

    async def _refresh_budget_gauges(self) -> None:
        while True:
            await asyncio.sleep(self.telemetry.refresh_every)
            try:
                await self.holder.refresh_budget_gauges()
            except Exception:  # a gauge must never stop for good
                log.exception("budget gauges: refresh failed")

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        tune_after_start()
        await stop.wait()
        log.info("signal received: draining for up to %.0fs", self.settings.drain_timeout)
        await self.stop()
