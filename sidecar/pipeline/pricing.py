"""What tokens cost, from a model's `price` (USD per one million tokens)."""

from __future__ import annotations

from sidecar.policy.model import Price


def cost_usd(
    price: Price,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    written_tokens: int = 0,
    batch: bool = False,
    written_1h: int = 0,
) -> float:
    """`input_tokens` counts every input token, those read from and written to the
    provider's prompt cache included (as OpenAI's `prompt_tokens` does); `written_1h` of
    the `written_tokens` went to Anthropic's hour-long cache (priced `cache_write_1h`).
    `batch`: through the provider's batch API, at the model's explicit batch prices or its
    batch share."""
    if batch and price.batch_prices is not None:
        price, batch = price.batch_prices, False
    fresh = max(0, input_tokens - cached_tokens - written_tokens)
    cost = fresh * price.input + output_tokens * price.output
    if cached_tokens:
        cost += cached_tokens * (price.input if price.cached_input is None else price.cached_input)
    if written_tokens:
        write = price.input if price.cache_write is None else price.cache_write
        cost += (written_tokens - written_1h) * write
        if written_1h:
            cost += written_1h * (write if price.cache_write_1h is None else price.cache_write_1h)
    return (cost * price.batch if batch else cost) / 1e6
