"""Stage: prepare what the providers are sent, by the route's `prompt` and
`max_output_tokens` (policy/compile_prompt.py), before admission sizes the request.

    normalise (opt-in) → trim to `prompt.max_input_tokens` (opt-in) → cap the output

The client's body is never changed: `ctx.body` becomes a new one (`ctx.client_body` stays
the app's, and the answer cache keys on it). Admission then estimates the trimmed input and
holds budgets for the capped output. What was removed is counted in `ctx.trimmed_tokens`
(the ledger's `trim` lever) and `ctx.trimmed_messages` (`x-sidecar-trimmed`), and in the
`sidecar.prompt.trimmed*` metrics. A request that cannot fit even with every older turn
dropped is a 400 naming the budget.

Prompt caching is not here: it depends on the target, so the provider adapters shape it per
attempt (providers/prompt_cache.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.errors import InvalidRequest
from sidecar.pipeline.context import RequestContext
from sidecar.pipeline.normalize import normalize
from sidecar.pipeline.trim import TooLong, message_chars, trim
from sidecar.providers.base import CHAT
from sidecar.tokens import request_overhead


def prepare(ctx: RequestContext) -> None:
    route = ctx.route
    assert route is not None
    policy = route.prompt
    if policy is None or ctx.operation != CHAT:
        return
    body = ctx.body
    changed: dict[str, Any] = {}
    messages = body.get("messages")
    dropped = tokens = chars = 0
    if isinstance(messages, list) and (policy.whitespace or policy.duplicate_system):
        normalized = normalize(messages, policy.whitespace, policy.duplicate_system)
        if normalized is not None:
            messages = changed["messages"] = normalized.messages
            dropped, tokens, chars = normalized.dropped, normalized.tokens, normalized.chars
    if isinstance(messages, list) and policy.max_input_tokens is not None:
        overhead = request_overhead(body)
        try:
            trimmed = trim(messages, policy.max_input_tokens, overhead, policy.keep_first)
        except TooLong as exc:
            raise InvalidRequest(
                f"route '{route.name}' sends at most {policy.max_input_tokens} input tokens "
                f"(prompt.max_input_tokens); this request's system prompt and last turn "
                f"alone are about {exc.needed} (estimated), and older turns are all that "
                "may be dropped",
                code="prompt_too_long",
            ) from None
        if trimmed is not None:
            changed["messages"] = trimmed.messages
            dropped += trimmed.dropped
            tokens += trimmed.tokens
            chars += trimmed.chars
    if policy.max_output_tokens is not None:
        changed.update(_capped(body, policy.max_output_tokens, policy.output_mode == "cap"))
        ctx.output_capped = True
    if not changed:
        return
    ctx.body = {**body, **changed}
    if tokens or chars:
        kept = sum(message_chars(m) for m in ctx.body.get("messages") or ())
        kept += len(orjson.dumps(body["tools"])) if body.get("tools") else 0
        ctx.trimmed_tokens += tokens
        ctx.trim_chars = (chars, kept)
        ctx.trimmed_messages = dropped
        attributes = {"sidecar.route": route.name}
        telemetry = ctx.snapshot.telemetry
        telemetry.trimmed_tokens.add(tokens, attributes)
        if dropped:
            telemetry.trimmed.add(dropped, attributes)


def _capped(body: Any, limit: int, cap: bool) -> dict[str, int]:
    """`max_tokens` when the app sent no limit; with `cap`, a lower one for any above."""
    asked = {
        k: body[k]
        for k in ("max_completion_tokens", "max_tokens")
        if isinstance(body.get(k), int) and body[k] > 0
    }
    if not asked:
        return {"max_tokens": limit}
    return {k: limit for k, v in asked.items() if v > limit} if cap else {}


def priced_trim(ctx: RequestContext, input_tokens: int) -> None:
    """Once the provider has counted what was sent, what was removed is priced at the same
    tokens per character (the estimator's 4 characters a token is within 3% on English
    prose, 12-23% over on chat requests and JSON, and half the truth on Chinese:
    bench/estimator.py)."""
    removed, kept = ctx.trim_chars or (0, 0)
    if removed and kept and input_tokens:
        ctx.trimmed_tokens = round(removed * input_tokens / kept)
