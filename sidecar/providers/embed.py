"""Embeddings through our own provider layer, for the sidecar's own use (a tier
classifier's examples at reload, a request's last message before the call): the same
adapters, keys, timeouts and connection pools as the app's calls, so an embedder is
configured once, in the policy, and every call to it can be accounted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from sidecar.errors import PROTOCOL, TIMEOUT, UpstreamError
from sidecar.providers.base import EMBEDDINGS, Call, Provider

BATCH = 128  # inputs per call: providers cap a call's inputs (OpenAI: 2,048)


async def embed(
    provider: Provider, upstream: str, texts: list[str], per_call: float
) -> tuple[Any, int]:
    """Unit vectors (a float32 array, one row per text) and the input tokens billed.
    Raises UpstreamError (classified, as dispatch's) for any failure."""
    import numpy as np  # only routes with a classifier need it

    rows: list[list[float]] = []
    tokens = 0
    for start in range(0, len(texts), BATCH):
        chunk = texts[start : start + BATCH]
        try:
            async with asyncio.timeout(per_call):
                reply = await provider.send(Call(EMBEDDINGS, {"input": chunk}, upstream, False))
        except TimeoutError:
            raise UpstreamError(TIMEOUT, f"no embeddings within {per_call:g}s") from None
        try:
            answer = orjson.loads(reply.body)
            data = sorted(answer["data"], key=lambda d: d.get("index", 0))
            got = [list(map(float, d["embedding"])) for d in data]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(PROTOCOL, f"malformed embeddings ({type(exc).__name__})") from None
        if len(got) != len(chunk) or len({len(v) for v in got}) > 1:
            raise UpstreamError(PROTOCOL, "embeddings: wrong number or sizes of vectors")
        rows += got
        tokens += int((answer.get("usage") or {}).get("prompt_tokens") or 0)
    vectors = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms, tokens
