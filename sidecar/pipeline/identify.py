"""Stage 1: who is calling. Headers set by the app's platform win over the body's `user`."""

from __future__ import annotations

from sidecar.pipeline.context import RequestContext


def identify(ctx: RequestContext) -> None:
    headers = ctx.headers
    user = headers.get("x-sidecar-user")
    if user is None:
        body_user = ctx.body.get("user")
        user = body_user if isinstance(body_user, str) and body_user else None
    ctx.user = user
    ctx.team = headers.get("x-sidecar-team")
