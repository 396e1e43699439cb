"""What one request reports when it ends: its span's attributes and its metrics.

Metric attributes are bounded: route, model, provider, status class and error type come
from the policy and our own error tree; the user appears only when the policy's
`telemetry.user_attribute` allows it, capped per process (the usage API is the exact
per-user record).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode

from sidecar.pipeline.context import RequestContext
from sidecar.telemetry.recorder import OPERATION


def observe(ctx: RequestContext, span: Span | None, status: int, error: str | None) -> None:
    tel = ctx.snapshot.telemetry
    config = ctx.snapshot.policy.telemetry
    elapsed = time.monotonic() - ctx.started
    route = ctx.route.name if ctx.route else "(none)"
    model = ctx.answered_by
    operation = OPERATION.get(ctx.operation, ctx.operation)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": str(ctx.client_body.get("model", "")),
        "sidecar.route": route,
        "http.response.status_code": status,
    }
    if model is not None:
        attrs["gen_ai.provider.name"] = ctx.snapshot.policy.providers[model.provider].type
        attrs["gen_ai.response.model"] = model.upstream
        attrs["sidecar.model"] = model.name
    if error is not None:
        attrs["error.type"] = error
    tel.duration.record(elapsed, attrs)
    tel.requests.add(1, attrs)
    if ctx.attempts > 1:
        tel.retries.add(ctx.attempts - 1, {"sidecar.route": route})
    if ctx.failures and model is not None:
        tel.fallbacks.add(
            1, {"sidecar.route": route, "sidecar.fallback_reason": ctx.failures[-1].error.kind}
        )
    if ctx.first_chunk_at is not None:
        tel.ttft.record(ctx.first_chunk_at - ctx.started, attrs)
    if model is not None:
        token_attrs = {k: v for k, v in attrs.items() if k != "http.response.status_code"}
        if config.user_attribute:
            token_attrs["sidecar.user"] = tel.user_attribute(ctx.user, config.max_users)
        tel.tokens.record(ctx.input_tokens, {**token_attrs, "gen_ai.token.type": "input"})
        tel.tokens.record(ctx.output_tokens, {**token_attrs, "gen_ai.token.type": "output"})
        if ctx.cost_usd:
            tel.cost.add(ctx.cost_usd, {"sidecar.route": route, "sidecar.model": model.name})
    if span is None:
        return
    span.set_attributes(attrs)
    span.set_attribute("sidecar.policy_version", ctx.snapshot.version)
    span.set_attribute("sidecar.attempts", ctx.attempts)
    if ctx.user and config.identity_in_spans:
        span.set_attribute("enduser.id", ctx.user)
    if ctx.team and config.identity_in_spans:
        span.set_attribute("sidecar.team", ctx.team)
    if model is not None:
        span.set_attribute("gen_ai.usage.input_tokens", ctx.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", ctx.output_tokens)
        if ctx.cost_usd is not None:
            span.set_attribute("sidecar.cost_usd", ctx.cost_usd)
        if ctx.finish_reasons:
            span.set_attribute("gen_ai.response.finish_reasons", ctx.finish_reasons)
    if ctx.failures and model is not None:
        span.set_attribute("sidecar.fallback_reason", ctx.failures[-1].error.kind)
    if ctx.downgraded_by:
        span.set_attribute("sidecar.downgraded_by", ctx.downgraded_by)
    if status >= 500 or error is not None:
        span.set_status(Status(StatusCode.ERROR))


def trace_id(span: Span | None) -> str | None:
    if span is None:
        return None
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
