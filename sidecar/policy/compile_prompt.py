"""Compile the prompt economy: a route's `prompt` and `max_output_tokens` (what
pipeline/prepare.py does to a request), and how each of its targets is asked to cache the
prompt prefix (`prompt_cache` on the route and the model, `prompt_cache_key` on an
OpenAI-compatible provider), resolved per target so an attempt reads one field."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sidecar.policy.model import Model, PromptCache, PromptPolicy, ProviderConfig

# The shortest prefix Anthropic caches, per model (its prompt-caching docs, "cache
# limitations", as of 2026): a breakpoint on a shorter prefix is ignored without an error
# or a write, so a model not listed gets 1,024 and `min_tokens` on the model overrides it.
# Matched as a part of the provider's model name (Bedrock and Vertex prefix and suffix it).
ANTHROPIC_MIN_TOKENS = (
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-7", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
)
DEFAULT_MIN_TOKENS = 1024


def _mode(raw: Any) -> tuple[bool, dict[str, Any]]:
    """`auto` | `off` | {mode, ...}: (on, the mapping's other settings)."""
    if raw is None:
        return True, {}
    if isinstance(raw, str):
        return raw == "auto", {}
    return raw.get("mode", "auto") == "auto", raw


def model_cache(body: dict[str, Any], upstream: str) -> tuple[bool, int]:
    """A model's (prompt caching allowed, minimum cacheable prefix in tokens)."""
    on, raw = _mode(body.get("prompt_cache"))
    if "min_tokens" in raw:
        return on, int(raw["min_tokens"])
    found = next((n for part, n in ANTHROPIC_MIN_TOKENS if part in upstream), None)
    return on, found or DEFAULT_MIN_TOKENS


def route_cache(body: dict[str, Any]) -> tuple[bool, str | None]:
    """A route's (prompt caching on, Anthropic ttl: "1h" or None for the default 5m)."""
    on, raw = _mode(body.get("prompt_cache"))
    ttl = raw.get("ttl")
    return on, "1h" if ttl == "1h" else None


def target_cache(
    route: str, rule: tuple[bool, str | None], model: Model, provider: ProviderConfig | None
) -> PromptCache | None:
    """What one target's attempts ask of its provider's prompt cache, or None."""
    on, ttl = rule
    if not on or not model.prompt_cache or provider is None:
        return None
    if provider.type == "anthropic":
        return PromptCache(route, model.cache_min_tokens, ttl)
    if provider.type == "openai" and provider.prompt_cache_key:
        return PromptCache(route, key=True)
    return None  # OpenAI-compatible servers cache on their own, or not at all


def default_cache_key(kind: str, base_url: str) -> bool:
    """`prompt_cache_key` unless the policy says: OpenAI's own API takes it; other
    OpenAI-compatible servers may reject a field they do not know."""
    return kind == "openai" and urlsplit(base_url).hostname == "api.openai.com"


def missing_1h_price(rule: tuple[bool, str | None], model: Model, provider: str) -> str | None:
    """An hour-long cache write costs twice the input price at Anthropic: a priced model
    asked for it must say so, or the ledger would price its writes as 5-minute ones."""
    on, ttl = rule
    price = model.price
    if not on or ttl != "1h" or provider != "anthropic" or not price.input:
        return None
    if price.cache_write_1h is not None or not model.prompt_cache:
        return None
    return (
        f"prompt_cache ttl 1h, but model '{model.name}' has no price.cache_write_1h "
        "(Anthropic bills hour-long cache writes at twice the input price)"
    )


def prompt_policy(body: dict[str, Any]) -> PromptPolicy | None:
    prompt = body.get("prompt") or {}
    cap = body.get("max_output_tokens")
    if not prompt and cap is None:
        return None
    limit, mode = (cap, "cap") if not isinstance(cap, dict) else (cap["limit"], cap.get("mode"))
    normalize = set(prompt.get("normalize") or ())
    return PromptPolicy(
        max_input_tokens=prompt.get("max_input_tokens"),
        keep_first=prompt.get("strategy", "drop_oldest") == "keep_first",
        whitespace="whitespace" in normalize,
        duplicate_system="duplicate_system" in normalize,
        max_output_tokens=limit,
        output_mode=mode or "cap",
    )
