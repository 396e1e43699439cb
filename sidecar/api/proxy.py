"""The handler shared by every ingress wire format: body in, pipeline, answer out.

A `Dialect` says how one ingress format (OpenAI's, Anthropic's) translates requests into
the internal shape and answers and errors back; everything else is the same for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sidecar.api.body import json_body
from sidecar.api.keys import HOLDER
from sidecar.errors import NotReady, SidecarError, UpstreamError
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.run import finish, run
from sidecar.providers.base import CHAT, Events, Reply
from sidecar.shadow.trial import launch
from sidecar.shapes import Shape
from sidecar.telemetry.recorder import OPERATION
from sidecar.telemetry.request import observe, trace_id

log = logging.getLogger("sidecar.api")

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    to_internal: Callable[[dict[str, Any]], dict[str, Any]]
    answer: Callable[[bytes], bytes]
    events: Callable[[Events], Events]
    error_body: Callable[[SidecarError], bytes]
    error_event: Callable[[str, str], bytes]  # (message, code)
    complete: bytes  # the event prefix that says a stream ended properly


def error_response(
    dialect: Dialect, error: SidecarError, headers: dict[str, str] | None = None
) -> web.Response:
    headers = dict(headers or {})
    if error.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
    return web.Response(
        body=dialect.error_body(error), status=error.status, headers=headers, content_type=JSON
    )


def not_ready() -> NotReady:
    return NotReady("no valid policy is loaded yet; see /status on the ops port", retry_after=1)


async def proxy(
    request: web.Request, operation: str, dialect: Dialect, shape: Shape
) -> web.StreamResponse:
    snapshot = request.app[HOLDER].current  # taken once: this request keeps it to its end
    if snapshot is None:
        return error_response(dialect, not_ready())
    try:
        body = dialect.to_internal(await json_body(request, shape))
    except SidecarError as exc:
        return error_response(dialect, exc)
    stream = operation == CHAT and body.get("stream") is True
    client_body = body
    if stream and not (body.get("stream_options") or {}).get("include_usage"):
        # Ask for the usage chunk so the request can be accounted; `meter` drops it again.
        body = {
            **body,
            "stream_options": {**(body.get("stream_options") or {}), "include_usage": True},
        }
    ctx = RequestContext(
        operation, body, request.headers, snapshot, stream=stream, client_body=client_body
    )
    name = f"{OPERATION.get(operation, operation)} {body.get('model')}"
    with snapshot.telemetry.server_span(request.headers, name) as span:
        ctx.trace_id = trace_id(span)
        status, error = 500, "internal"
        response: web.StreamResponse | None = None
        try:
            try:
                reply = await run(ctx)
            except SidecarError as exc:
                status, error = exc.status, exc.code
                response = error_response(dialect, exc, _headers(ctx))
                return response
            status, error = reply.status, None
            if reply.events is None:
                response = web.Response(
                    body=dialect.answer(reply.body),
                    status=reply.status,
                    headers=_headers(ctx),
                    content_type=JSON,
                )
                return response
            response, error = await _relay(request, reply, ctx, _headers(ctx), dialect)
            return response
        finally:
            ending = finish(ctx)  # in a task of its own: the app's disconnect cannot stop it
            try:
                # The answer's last byte waits until its slots are back and it is in the
                # cache: an app that asks again at once finds both. The books follow; the
                # connection's next request waits for them, as it always waited for this
                # handler, so an app asking in turn is admitted against its settled spend.
                await asyncio.shield(ending.freed)
                if response is not None:
                    await _send(request, response)
                await asyncio.shield(ending.done)
                if ctx.shadow is not None and status == 200 and error is None:
                    launch(ctx)  # a shadow trial's calls: the answer is out, its books written
            finally:
                observe(ctx, span, status, error)


async def _send(request: web.Request, response: web.StreamResponse) -> None:
    """End the answer here rather than by returning it to aiohttp, so that it follows
    `finish`'s first part; aiohttp's own send is a no-op then. An app that went away
    costs nothing: accounting goes on without it."""
    with contextlib.suppress(ConnectionResetError):  # aiohttp's ClientConnectionResetError is one
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()


def _headers(ctx: RequestContext) -> dict[str, str]:
    headers = ctx.response_headers()
    if ctx.trace_id is not None:
        headers["x-sidecar-trace-id"] = ctx.trace_id
    return headers


async def _relay(
    request: web.Request,
    reply: Reply,
    ctx: RequestContext,
    headers: dict[str, str],
    dialect: Dialect,
) -> tuple[web.StreamResponse, str | None]:
    """Pass events on as they arrive. A stream that breaks ends with an error event, never
    silently: the SDKs raise it, so a cut answer is never taken for a complete one. An app
    that goes away mid-stream ends the relay and the upstream call, quietly.
    Returns the response (ended by `_send`) and, when the stream broke, the error class."""
    assert reply.events is not None
    response = web.StreamResponse(
        headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    complete = False
    failure: bytes | None = None
    try:
        await response.prepare(request)
        async for batch in dialect.events(reply.events):
            await response.write(batch[0] if len(batch) == 1 else b"".join(batch))
            if ctx.first_chunk_at is None:
                ctx.first_chunk_at = time.monotonic()
            if not complete:
                complete = any(event.startswith(dialect.complete) for event in batch)
    except UpstreamError as exc:
        failure = dialect.error_event(_cut(ctx, exc.message), "upstream_stream_failed")
    except ConnectionResetError:  # the app went away; what it used is still accounted
        return response, None
    except Exception:  # our own bug: the app still learns its answer is cut, not complete
        log.exception("stream relay failed")
        failure = dialect.error_event(
            "the sidecar failed while relaying the stream; the answer is incomplete",
            "internal_error",
        )
    finally:
        await reply.aclose()
    if failure is None and not complete:
        failure = dialect.error_event(_cut(ctx, "ended early"), "upstream_stream_incomplete")
    if failure is None:
        return response, None
    log.warning("route %s: stream cut after it started", ctx.route.name if ctx.route else "?")
    with contextlib.suppress(ConnectionResetError):
        await response.write(failure)
    return response, "stream_broken"


def _cut(ctx: RequestContext, why: str) -> str:
    target = ctx.answered_by
    who = f"{target.name}@{target.provider}" if target else "upstream"
    return f"the stream from {who} broke off: {why}; the answer is incomplete"
