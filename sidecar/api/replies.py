"""Errors on the wire, in OpenAI's shape, for JSON answers and inside SSE streams."""

from __future__ import annotations

import math

import orjson
from aiohttp import web

from sidecar.errors import SidecarError

JSON = "application/json"


def error_response(error: SidecarError, headers: dict[str, str] | None = None) -> web.Response:
    headers = dict(headers or {})
    if error.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
    return web.Response(body=error.body(), status=error.status, headers=headers, content_type=JSON)


def error_event(message: str, code: str, type_: str = "server_error") -> bytes:
    """An SSE event the official SDKs raise as an APIError (they look for an `error` key)."""
    body = {"error": {"message": message, "type": type_, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"
