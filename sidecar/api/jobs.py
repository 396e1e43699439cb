"""The jobs API: submit one request to run later, then poll it (or get a webhook).

    POST /v1/jobs       {request, endpoint?, callback_url?, metadata?, priority?, deadline?}
                        → 202 {id, status: queued, ...}
    GET  /v1/jobs/{id}  → status, result, error, attempts, timings
    GET  /v1/jobs       ?status=queued|running|succeeded|failed|dead|cancelled&limit=N

A job is checked as far as it can be at submit — its model must route, its webhook host
must be allowed — so a mistake is a 4xx now, not a failed job later.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from sidecar.api.body import json_body
from sidecar.api.keys import HOLDER, JOBS
from sidecar.api.openai import OPENAI
from sidecar.api.proxy import JSON, error_response, not_ready
from sidecar.errors import InvalidRequest, SidecarError, StateUnavailable
from sidecar.jobs.execute import OPERATIONS
from sidecar.jobs.model import CHAT_ENDPOINT, ENDPOINTS, PRIORITIES, STATUSES, Job, new_id
from sidecar.jobs.queue import JobQueue
from sidecar.jobs.webhooks import refusal
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.identify import identify
from sidecar.pipeline.route import route
from sidecar.policy.durations import parse_duration
from sidecar.policy.model import JobsConfig, Policy
from sidecar.providers.base import CHAT
from sidecar.runtime import Snapshot
from sidecar.shapes import JOB_SHAPE
from sidecar.stores.state import StoreUnavailable

# Headers a job keeps for the pipeline: identity and trace context, plus whatever headers
# the policy's routes match on. Credentials never: `identify`'s hash of the key is kept.
# `x-sidecar-batch` (provider | sync) asks for a provider batch, or for none (jobs/defer.py).
KEPT = frozenset(
    {"x-sidecar-user", "x-sidecar-team", "x-sidecar-batch", "traceparent", "tracestate"}
)
NEVER = frozenset({"authorization", "x-api-key", "api-key", "cookie", "proxy-authorization"})


class NotFound(InvalidRequest):
    status = 404


def not_found(message: str, code: str = "not_found") -> NotFound:
    return NotFound(message, code=code)


def context(request: web.Request) -> tuple[Snapshot, JobsConfig, JobQueue]:
    snapshot = request.app[HOLDER].current
    if snapshot is None:
        raise not_ready()
    runtime = request.app[JOBS]
    config = snapshot.policy.jobs
    if config is None:
        raise not_found(
            "jobs are not enabled: add a `jobs:` section to the policy", "jobs_disabled"
        )
    if runtime.queue is None:
        raise StateUnavailable("the job queue is not open yet", retry_after=1)
    return snapshot, config, runtime.queue


def _route_header_names(policy: Policy) -> set[str]:
    return {c.key for r in policy.routes.values() for c in r.conditions if c.kind == "header"}


def caller(headers: CIMultiDictProxy[str], snapshot: Snapshot) -> tuple[dict[str, str], str | None]:
    """What a job keeps of its caller: the headers the pipeline reads, and the hash
    `identify` makes of the app's key (the key itself is never stored)."""
    ctx = RequestContext(CHAT, {}, headers, snapshot)
    identify(ctx)
    keep = KEPT | _route_header_names(snapshot.policy)
    kept = {
        k.lower(): v for k, v in headers.items() if k.lower() in keep and k.lower() not in NEVER
    }
    return kept, ctx.app_key


def routable(
    headers: CIMultiDictProxy[str], snapshot: Snapshot, endpoint: str, body: dict[str, Any]
) -> None:
    """Raise now what the job would fail with later: no model, or a model nothing serves."""
    ctx = RequestContext(OPERATIONS[endpoint], body, headers, snapshot)
    identify(ctx)
    route(ctx)


def _deadline(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return time.time() + parse_duration(value)
        except ValueError:
            pass
    raise InvalidRequest(
        "deadline must be a unix time in seconds or a duration such as 10m", code="invalid_deadline"
    )


def job_from(
    body: dict[str, Any], request: web.Request, snapshot: Snapshot, config: JobsConfig
) -> Job:
    payload = body.get("request")
    endpoint = body.get("endpoint", CHAT_ENDPOINT)
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint must be one of {', '.join(ENDPOINTS)}", code="invalid_endpoint"
        )
    if not isinstance(payload, dict):
        raise InvalidRequest("'request' must be the request body, an object", code="invalid_job")
    if payload.get("stream"):
        raise InvalidRequest("a job cannot stream: drop `stream`", code="invalid_job")
    callback = body.get("callback_url")
    if callback is not None:
        why = refusal(callback, config.webhook_allow) if isinstance(callback, str) else "not a URL"
        if why is not None:
            raise InvalidRequest(f"callback_url refused: {why}", code="webhook_host_denied")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be an object", code="invalid_job")
    priority = body.get("priority", "normal")
    if priority not in PRIORITIES:
        raise InvalidRequest(f"priority must be one of {', '.join(PRIORITIES)}", code="invalid_job")
    routable(request.headers, snapshot, endpoint, payload)
    headers, app_key = caller(request.headers, snapshot)
    return Job(
        id=new_id("job_"),
        endpoint=endpoint,
        request=payload,
        headers=headers,
        app_key=app_key,
        priority=PRIORITIES[priority],
        callback_url=callback,
        metadata=metadata,
        deadline=_deadline(body.get("deadline")),
    )


def answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON, headers=headers)


def failure(exc: SidecarError | StoreUnavailable) -> web.Response:
    if isinstance(exc, StoreUnavailable):
        exc = StateUnavailable(f"the job queue is unavailable: {exc}", retry_after=1)
    return error_response(OPENAI, exc)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answered(handler: Handler) -> Handler:
    """A job or batch endpoint: a refusal or a queue that is down is answered in OpenAI's
    error shape, like every other endpoint's."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (SidecarError, StoreUnavailable) as exc:
            return failure(exc)

    return guarded


@answered
async def submit(request: web.Request) -> web.Response:
    snapshot, config, queue = context(request)
    job = job_from(await json_body(request, JOB_SHAPE), request, snapshot, config)
    await queue.submit([job])
    return answer(job.view(), 202, {"location": f"/v1/jobs/{job.id}"})


@answered
async def get(request: web.Request) -> web.Response:
    _, _, queue = context(request)
    job = await queue.get(request.match_info["job_id"])
    if job is None:
        raise not_found(f"no job '{request.match_info['job_id']}'", "job_not_found")
    return answer(job.view())


@answered
async def listing(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    _, _, queue = context(request)
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", code="invalid_status")
    try:
        limit = max(1, min(1000, int(request.query.get("limit", "100"))))
    except ValueError:
        raise InvalidRequest("limit must be a number", code="invalid_limit") from None
    jobs = await queue.list(status, limit + 1)
    data = [job.view(with_result=False) for job in jobs[:limit]]
    return answer({"object": "list", "data": data, "has_more": len(jobs) > limit})
