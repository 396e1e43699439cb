"""Run one request through the live pipeline without HTTP: what a worker does with a job.

The same `pipeline.run` and `finish` as `api/proxy.py`, so a job gets its route, limits,
budgets, cache, output validation, accounting and telemetry like a live request. Jobs ask
at priority `low`: in a limit's waiting line they stand behind live traffic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

from sidecar.errors import SidecarError
from sidecar.jobs.model import CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.run import Deferral, Deferred, finish, run
from sidecar.providers.base import CHAT, EMBEDDINGS
from sidecar.runtime import Snapshot
from sidecar.telemetry.recorder import OPERATION
from sidecar.telemetry.request import observe

OPERATIONS = {CHAT_ENDPOINT: CHAT, EMBEDDINGS_ENDPOINT: EMBEDDINGS}


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    body: bytes
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)  # the x-sidecar-* a client would see
    deferred: bool = False  # waiting for a provider batch: nothing to write now

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


WAITING = Outcome(202, b"", deferred=True)


def job_context(
    snapshot: Snapshot,
    operation: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    app_key: str | None,
) -> RequestContext:
    """A job's request as the pipeline sees it: its caller's identity, at priority low.

    `app_key` is the caller's key hash as `identify` made it when the job was submitted:
    the bearer token itself is never stored with a job."""
    request_headers = CIMultiDict(headers)
    request_headers["x-sidecar-priority"] = "low"
    ctx = RequestContext(operation, body, request_headers, snapshot, client_body=body)
    ctx.app_key = app_key
    return ctx


async def execute(
    snapshot: Snapshot,
    operation: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    app_key: str | None = None,
    job_id: str | None = None,
    deferral: Deferral | None = None,
) -> Outcome:
    """One request, start to end; never raises a `SidecarError` (it becomes the outcome).
    With a `deferral`, it may stop before dispatch to wait for a provider batch: `WAITING`
    (its metrics are recorded when its answer lands)."""
    ctx = job_context(snapshot, operation, body, headers, app_key)
    name = f"{OPERATION.get(operation, operation)} {body.get('model')}"
    with snapshot.telemetry.server_span(ctx.headers, name) as span:
        if span is not None and job_id is not None:
            span.set_attribute("sidecar.job.id", job_id)
        status, error = 500, "internal"
        try:
            try:
                reply = await run(ctx, deferral)
            except Deferred:
                status = 0
                return WAITING
            except SidecarError as exc:
                status, error = exc.status, exc.code
                return Outcome(exc.status, exc.body(), exc.retry_after, ctx.response_headers())
            status, error = reply.status, None
            assert reply.events is None, "jobs never stream"
            return Outcome(reply.status, reply.body, None, ctx.response_headers())
        finally:
            try:  # a job cancelled at shutdown is still accounted (the sidecar drains it)
                await asyncio.shield(finish(ctx).done)
            finally:
                if status:
                    observe(ctx, span, status, error)
