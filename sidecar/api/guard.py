"""The last resort around every handler of both listeners: an exception no handler
expected becomes a JSON 500 `internal_error` in the caller's wire format, logged once with
its traceback (it is the sidecar's bug), never aiohttp's plain-text "Server got itself in
trouble". aiohttp's own HTTP errors (a 413 from its body limit, say) get the same shape.

Handlers still answer every error they expect themselves: this is not how the API's
errors are made, only the net under them.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from sidecar.api.anthropic import ANTHROPIC
from sidecar.api.openai import OPENAI
from sidecar.api.proxy import Dialect, error_response
from sidecar.errors import Internal, InvalidRequest, SidecarError

log = logging.getLogger("sidecar.api")


def dialect_of(request: web.Request) -> Dialect:
    return ANTHROPIC if request.path == "/v1/messages" else OPENAI


@web.middleware
async def last_resort(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error: SidecarError = InvalidRequest(exc.reason, code="invalid_request", status=exc.status)
    except SidecarError as exc:
        error = exc
    except ConnectionError:
        raise  # the client went away: aiohttp drops the connection quietly
    except Exception:
        log.exception("%s %s: unexpected error", request.method, request.path)
        error = Internal()
    return error_response(dialect_of(request), error)
