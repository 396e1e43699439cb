"""What tokens cost, from a model's `price` (USD per one million tokens)."""

from __future__ import annotations

from sidecar.policy.model import Price


def cost_usd(price: Price, input_tokens: int, output_tokens: int, cached_tokens: int) -> float:
    cached_price = price.input if price.cached_input is None else price.cached_input
    fresh = max(0, input_tokens - cached_tokens)
    return (fresh * price.input + cached_tokens * cached_price + output_tokens * price.output) / 1e6
