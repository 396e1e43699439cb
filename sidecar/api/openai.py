"""The OpenAI-compatible surface: chat completions (JSON and SSE), embeddings, models.

OpenAI's shape is the internal one, so this dialect translates nothing.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from sidecar.api.keys import HOLDER
from sidecar.api.proxy import JSON, Dialect, error_response, not_ready, proxy
from sidecar.errors import InvalidRequest, SidecarError
from sidecar.providers.base import CHAT, EMBEDDINGS, Events
from sidecar.shapes import CHAT_SHAPE, EMBEDDINGS_SHAPE

ENDPOINTS = (
    "POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models, POST /v1/messages, "
    "POST /v1/feedback, /v1/jobs, /v1/files, /v1/batches"
)


def _same(body: dict[str, Any]) -> dict[str, Any]:
    return body


def _same_bytes(raw: bytes) -> bytes:
    return raw


def _same_events(events: Events) -> Events:
    return events


def error_event(message: str, code: str) -> bytes:
    """An SSE event the official SDKs raise as an APIError (they look for an `error` key)."""
    body = {"error": {"message": message, "type": "server_error", "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _error_body(error: SidecarError) -> bytes:
    return error.body()


OPENAI = Dialect(
    "openai", _same, _same_bytes, _same_events, _error_body, error_event, b"data: [DONE]"
)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await proxy(request, CHAT, OPENAI, CHAT_SHAPE)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await proxy(request, EMBEDDINGS, OPENAI, EMBEDDINGS_SHAPE)


async def models(request: web.Request) -> web.Response:
    snapshot = request.app[HOLDER].current
    if snapshot is None:
        return error_response(OPENAI, not_ready())
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
    return error_response(OPENAI, error)
