"""Stage 1: who is calling. Headers set by the app's platform win over the body's `user`.

The app's own bearer token (which the sidecar never forwards) identifies the calling
app for `key`-scoped limits and budgets; only a hash of it is kept.
"""

from __future__ import annotations

import hashlib

from sidecar.pipeline.context import RequestContext

PRIORITIES = {"high": 0, "normal": 1, "low": 2}


def identify(ctx: RequestContext) -> None:
    headers = ctx.headers
    auth = headers.get("authorization") or headers.get("x-api-key")
    if auth:
        token = auth.removeprefix("Bearer ").strip()
        ctx.app_key = hashlib.sha256(token.encode()).hexdigest()[:16]
    priority = headers.get("x-sidecar-priority")
    if priority is not None:
        ctx.priority = PRIORITIES.get(priority.lower(), 1)
    user = headers.get("x-sidecar-user")
    if user is None:
        body_user = ctx.body.get("user")
        user = body_user if isinstance(body_user, str) and body_user else None
    ctx.user = user
    ctx.team = headers.get("x-sidecar-team")
