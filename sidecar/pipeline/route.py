"""Stage 2: which route serves this request, from the `model` the app asked for.

Routes for one model are disjoint by construction (checked at compile time), so the first
conditional route that matches is the only one; otherwise the unconditional default.
"""

from __future__ import annotations

from sidecar.errors import InvalidRequest, ModelNotFound
from sidecar.pipeline.context import RequestContext
from sidecar.policy.model import Route


def route(ctx: RequestContext) -> None:
    model = ctx.body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", code="missing_model")
    policy = ctx.snapshot.policy
    routes = policy.by_model.get(model)
    chosen = _select(ctx, routes.conditional, routes.default) if routes else None
    if chosen is None:
        known = ", ".join(policy.public_models) or "none"
        raise ModelNotFound(f"model '{model}' is not served here; available models: {known}")
    ctx.route = chosen
    ctx.targets = chosen.targets


def _select(
    ctx: RequestContext, conditional: tuple[Route, ...], default: Route | None
) -> Route | None:
    for candidate in conditional:
        for c in candidate.conditions:
            if c.kind == "header":
                value = ctx.headers.get(c.key)
            elif c.kind == "user":
                value = ctx.user
            else:
                value = ctx.team
            if value not in c.values:
                break
        else:
            return candidate
    return default
