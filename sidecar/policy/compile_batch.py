"""Compile the batching keys: a route's `batch:` (provider batch APIs for deferrable lines),
a model's `price.batch` (what those cost) and its `embeddings:` (micro-batched calls)."""

from __future__ import annotations

from typing import Any

from sidecar.policy.entry import seconds
from sidecar.policy.model import BatchPolicy, MicroBatch, Price


def batch_policy(raw: str | dict[str, Any] | None) -> BatchPolicy | None:
    """`batch: provider`, or the long form with its thresholds."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return BatchPolicy(mode=raw)
    default = BatchPolicy()
    return BatchPolicy(
        mode=raw.get("mode", default.mode),
        max_lines=raw.get("max_lines", default.max_lines),
        max_wait=seconds(raw.get("max_wait"), default.max_wait),
        unfinished=raw.get("unfinished", default.unfinished),
    )


def micro_batch(raw: dict[str, Any] | None) -> MicroBatch | None:
    if raw is None:
        return None
    default = MicroBatch()
    return MicroBatch(
        window=seconds(raw.get("batch_window"), default.window),
        max_inputs=raw.get("max_inputs", default.max_inputs),
    )


def batch_prices(raw: float | dict[str, Any] | None) -> dict[str, Any]:
    """`Price` fields: `batch: 0.5` is a share of the normal prices; a mapping is the
    provider's own batch prices (cached reads and writes at its `input` unless given)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        return {"batch": float(raw)}
    explicit = Price(
        input=float(raw["input"]),
        output=float(raw["output"]),
        cached_input=float(raw["cached_input"]) if "cached_input" in raw else None,
        cache_write=float(raw["cache_write"]) if "cache_write" in raw else None,
    )
    return {"batch_prices": explicit}
