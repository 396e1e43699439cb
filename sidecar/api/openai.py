"""The OpenAI-compatible surface: chat completions (JSON and SSE), embeddings, models."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from sidecar.api.keys import HOLDER
from sidecar.api.replies import JSON, error_event, error_response
from sidecar.errors import InvalidRequest, NotReady, SidecarError, UpstreamError
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.run import run
from sidecar.providers.base import CHAT, EMBEDDINGS, Reply

log = logging.getLogger("sidecar.api")

ENDPOINTS = "POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models"
_DONE = b"data: [DONE]"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, CHAT)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _proxy(request, EMBEDDINGS)


async def models(request: web.Request) -> web.Response:
    snapshot = request.app[HOLDER].current
    if snapshot is None:
        return error_response(_not_ready())
    created = int(snapshot.loaded_at)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "llm-sidecar"}
        for name in snapshot.policy.public_models
    ]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}),
        content_type=JSON,
        headers={"x-sidecar-policy-version": snapshot.version},
    )


async def unknown_endpoint(request: web.Request) -> web.Response:
    error = InvalidRequest(
        f"{request.method} {request.path} is not an endpoint of this sidecar ({ENDPOINTS})",
        code="unknown_endpoint",
    )
    error.status = 404
    return error_response(error)


async def _proxy(request: web.Request, operation: str) -> web.StreamResponse:
    snapshot = request.app[HOLDER].current  # taken once: this request keeps it to its end
    if snapshot is None:
        return error_response(_not_ready())
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        too_large = InvalidRequest(f"request body is too large ({exc.text})", code="body_too_large")
        too_large.status = 413
        return error_response(too_large)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return error_response(
            InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json")
        )
    if not isinstance(body, dict):
        return error_response(
            InvalidRequest("request body must be a JSON object", code="invalid_json")
        )
    ctx = RequestContext(
        operation,
        body,
        request.headers,
        snapshot,
        stream=operation == CHAT and body.get("stream") is True,
    )
    try:
        reply = await run(ctx)
    except SidecarError as exc:
        return error_response(exc, ctx.response_headers())
    headers = ctx.response_headers()
    if reply.events is None:
        return web.Response(
            body=reply.body, status=reply.status, headers=headers, content_type=JSON
        )
    return await _relay(request, reply, ctx, headers)


async def _relay(
    request: web.Request, reply: Reply, ctx: RequestContext, headers: dict[str, str]
) -> web.StreamResponse:
    """Pass events on as they arrive. A stream that breaks ends with an error event, never
    silently: the SDKs raise it, so a cut answer is never taken for a complete one."""
    assert reply.events is not None
    response = web.StreamResponse(
        headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    await response.prepare(request)
    complete = False
    failure: bytes | None = None
    try:
        async for event in reply.events:
            await response.write(event)
            if event.startswith(_DONE):
                complete = True
    except UpstreamError as exc:
        failure = error_event(_cut(ctx, exc.message), "upstream_stream_failed")
    finally:
        await reply.aclose()
    if failure is None and not complete:
        failure = error_event(_cut(ctx, "ended without [DONE]"), "upstream_stream_incomplete")
    if failure is not None:
        log.warning("route %s: stream cut after it started", ctx.route.name if ctx.route else "?")
        await response.write(failure)
    await response.write_eof()
    return response


def _cut(ctx: RequestContext, why: str) -> str:
    target = ctx.answered_by
    who = f"{target.name}@{target.provider}" if target else "upstream"
    return f"the stream from {who} broke off: {why}; the answer is incomplete"


def _not_ready() -> NotReady:
    return NotReady("no valid policy is loaded yet; see /status on the ops port", retry_after=1)
