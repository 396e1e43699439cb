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

from sidecar.errors import BUSY, CIRCUIT_OPEN
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.ledger import HITS
from sidecar.telemetry import quality
from sidecar.telemetry.recorder import OPERATION


def observe(ctx: RequestContext, span: Span | None, status: int, error: str | None) -> None:
    tel = ctx.snapshot.telemetry
    config = ctx.snapshot.policy.telemetry
    elapsed = time.monotonic() - ctx.started
    route = ctx.route.name if ctx.route else "(none)"
    model = ctx.answered_by
    operation = OPERATION.get(ctx.operation, ctx.operation)
    requested = str(ctx.client_body.get("model", ""))
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        # Unrouted requests name any model they like: not a bounded metric attribute.
        "gen_ai.request.model": requested if ctx.route else "(unrouted)",
        "sidecar.route": route,
        "http.response.status_code": status,
    }
    if model is not None:
        attrs["gen_ai.provider.name"] = ctx.snapshot.policy.providers[model.provider].type
        attrs["gen_ai.response.model"] = model.upstream
        attrs["sidecar.model"] = model.name
        if ctx.signals:
            quality.signals(tel, route, model.name, ctx.tier, ctx.signals)
    if ctx.tier is not None:
        attrs["sidecar.tier"] = ctx.tier
    if error is not None:
        attrs["error.type"] = error
    tel.duration.record(elapsed, attrs)
    tel.requests.add(1, attrs)
    retries = _retries(ctx)
    if retries:
        tel.retries.add(retries, {"sidecar.route": route})
    reason = _fallback_reason(ctx)
    if reason is not None:
        tel.fallbacks.add(1, {"sidecar.route": route, "sidecar.fallback_reason": reason})
    if ctx.first_chunk_at is not None:
        first = ctx.first_chunk_at - ctx.started
        tel.ttfc.record(first, attrs)
        if tel.ttft is not None:
            tel.ttft.record(first, attrs)
    if ctx.tier is not None and model is not None:
        tel.tiers.add(
            1,
            {
                "sidecar.route": route,
                "sidecar.tier": ctx.tier,
                "sidecar.tier.reason": ctx.tier_reason,
            },
        )
    ledger = ctx.ledger
    if ctx.cache is not None:  # the route has a cache: what its lookup found
        looked = {"sidecar.route": route, "result": ctx.cache}
        if ctx.cache_reason is not None:  # bypass, ineligible, a refused near miss: why
            looked["reason"] = ctx.cache_reason
        tel.cache.add(1, looked)
        if ledger is not None and ctx.cache in HITS:  # a hit saves its cache lever
            tel.saved.add(ledger.lever("cache"), {"sidecar.route": route})
    cost_attrs: dict[str, Any] | None = None
    if model is not None:
        token_attrs = {k: v for k, v in attrs.items() if k != "http.response.status_code"}
        cost_attrs = {"sidecar.route": route, "sidecar.model": model.name}
        if config.user_attribute:
            user = tel.user_attribute(ctx.user, config.max_users)
            token_attrs["sidecar.user"] = cost_attrs["sidecar.user"] = user
        tel.tokens.record(ctx.input_tokens, {**token_attrs, "gen_ai.token.type": "input"})
        tel.tokens.record(ctx.output_tokens, {**token_attrs, "gen_ai.token.type": "output"})
        if ctx.cost_usd:
            tel.cost.add(ctx.cost_usd, cost_attrs)
    if ledger is not None and ledger.saved:  # (sidecar.cost.baseline is cost + saved)
        if cost_attrs is None:  # a cache hit: no model answered; a lookup may have cost
            cost_attrs = {"sidecar.route": route}
            if config.user_attribute:
                cost_attrs["sidecar.user"] = tel.user_attribute(ctx.user, config.max_users)
            if ctx.cost_usd:
                tel.cost.add(ctx.cost_usd, cost_attrs)
        for lever, usd in ledger.by_lever().items():
            tel.cost_saved.add(usd, {**cost_attrs, "sidecar.lever": lever})
    if span is None or not span.is_recording():
        return
    # One call: each set_attribute takes the span's lock and cleans its value.
    extra: dict[str, Any] = {
        "gen_ai.request.model": requested,  # a span may say what was asked
        "sidecar.policy_version": ctx.snapshot.version,
        "sidecar.attempts": ctx.attempts,
    }
    if ctx.user and config.identity_in_spans:
        extra["enduser.id"] = ctx.user
    if ctx.team and config.identity_in_spans:
        extra["sidecar.team"] = ctx.team
    if model is not None:
        extra["gen_ai.usage.input_tokens"] = ctx.input_tokens
        extra["gen_ai.usage.output_tokens"] = ctx.output_tokens
        if ctx.cost_usd is not None:
            extra["sidecar.cost_usd"] = ctx.cost_usd
    if ledger is not None:
        extra["sidecar.baseline_usd"] = ledger.baseline_usd
        extra["sidecar.saved_usd"] = ledger.saved_usd
        if ctx.finish_reasons:
            extra["gen_ai.response.finish_reasons"] = ctx.finish_reasons
    if reason is not None:
        extra["sidecar.fallback_reason"] = reason
    if ctx.downgraded_by:
        extra["sidecar.downgraded_by"] = ctx.downgraded_by
    if ctx.tier is not None:
        extra["sidecar.tier"] = ctx.tier
        extra["sidecar.tier.reason"] = ctx.tier_reason or ""
        extra["sidecar.escalations"] = ctx.escalations
        if ctx.rejected:
            extra["sidecar.cascade.rejected"] = ctx.rejected
    if ctx.signals:
        extra["sidecar.quality.signals"] = list(ctx.signals)
    span.set_attributes({**attrs, **extra})
    if status >= 500 or error is not None:
        span.set_status(Status(StatusCode.ERROR))


def _retries(ctx: RequestContext) -> int:
    """Calls beyond the first to each model: same-target retries (and validation
    retries), not the first call to a fallback target."""
    called = {f.model for f in ctx.failures if f.error.kind not in (CIRCUIT_OPEN, BUSY)}
    if ctx.answered_by is not None:
        called.add(ctx.answered_by.name)
    return max(0, ctx.attempts - len(called))


def _fallback_reason(ctx: RequestContext) -> str | None:
    """Why another model answered: the last failure of a model other than the one that
    did. None when there was no answer, or it came from the first model tried (after
    retries, perhaps)."""
    if ctx.answered_by is None:
        return None
    for failure in reversed(ctx.failures):
        if failure.model != ctx.answered_by.name:
            return failure.error.kind
    return None


def trace_id(span: Span | None) -> str | None:
    if span is None:
        return None
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
