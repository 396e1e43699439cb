"""The request pipeline, in order. Read this file to know what happens to a request.

    identify caller → match route → [admit] → [cache lookup] → dispatch → [validate] → [account]

Stages in brackets arrive with later work; each is a plain function over the request
context, so adding one is one line here.
"""

from __future__ import annotations

from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.dispatch import dispatch
from sidecar.pipeline.identify import identify
from sidecar.pipeline.route import route
from sidecar.providers.base import Reply


async def run(ctx: RequestContext) -> Reply:
    identify(ctx)
    route(ctx)
    return await dispatch(ctx)
