"""The Anthropic Messages surface: `POST /v1/messages`, JSON and streaming, so the official
`anthropic` SDK works against the sidecar and routes through the same policies."""

from __future__ import annotations

import contextlib

import orjson
from aiohttp import web

from sidecar.api import anthropic_wire
from sidecar.api.proxy import Dialect, proxy
from sidecar.errors import SidecarError, UpstreamRejected
from sidecar.providers.base import CHAT, Events, translated
from sidecar.shapes import MESSAGES_SHAPE

# Our error codes → Anthropic's error types, so the SDK raises the usual exception.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    408: "invalid_request_error",
    415: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "output_invalid",  # no Anthropic type says it: the sidecar's own code
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def _error_body(error: SidecarError) -> bytes:
    message = error.message
    if isinstance(error, UpstreamRejected):
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            message = orjson.loads(error.raw_body)["error"]["message"]  # the provider's words
    kind = _TYPES.get(error.status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def _error_event(message: str, code: str) -> bytes:
    return anthropic_wire.error_event(message)


def _events(events: Events) -> Events:
    return translated(anthropic_wire.stream(events), "stream event")


ANTHROPIC = Dialect(
    "anthropic",
    anthropic_wire.request,
    anthropic_wire.response,
    _events,
    _error_body,
    _error_event,
    b"event: message_stop",
)


async def messages(request: web.Request) -> web.StreamResponse:
    return await proxy(request, CHAT, ANTHROPIC, MESSAGES_SHAPE)
